"""Small helpers shared by test modules."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tasks import names


def wait_for(predicate: Callable[[], Any], timeout: float = 120.0, what: str = "condition"):
    """Poll until ``predicate`` returns something truthy; the effect, not a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# What the ingest tasks pass to IngestService: the tasks a rejected item replays through.
INGEST_TASKS = {"message_task": names.INGEST_MESSAGE, "detection_task": names.INGEST_DETECTION}
