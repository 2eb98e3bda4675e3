"""Small helpers shared by test modules."""

from __future__ import annotations

import threading
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


def capture_events(app, stop: threading.Event, out: list[dict[str, Any]]) -> threading.Thread:
    """Collect every Celery event ``app`` sees into ``out`` until ``stop`` is set."""
    ready = threading.Event()

    def run() -> None:
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={"*": out.append})
            ready.set()
            while not stop.is_set():
                try:
                    recv.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue
                except OSError:
                    continue

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


# What the ingest tasks pass to IngestService: the tasks a rejected item replays through.
INGEST_TASKS = {"message_task": names.INGEST_MESSAGE, "detection_task": names.INGEST_DETECTION}
