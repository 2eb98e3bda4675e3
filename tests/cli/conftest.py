"""CliRunner against the real stores and worker of tests/conftest.py."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import app
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from tests.builders import detection, message, observation
from worker.settle import Ingest


class Vigil:
    def __init__(self) -> None:
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int = 0):
        result = self.runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == code, (result.exit_code, result.output)
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self(*args, "--json", code=code).stdout)


@pytest.fixture
def vigil(test_env, monkeypatch) -> Vigil:
    from cli import common

    # Not a terminal: rich would assume 80 columns and elide table cells.
    monkeypatch.setattr(common.console, "width", 200)
    return Vigil()


T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
SAD = "I feel so alone and hopeless tonight"


def msg(i: int, text: str = SAD, user: str = "501", **kw) -> dict:
    return message(i, text, user=user, **kw)


_det_ids = itertools.count()


def det(i: int, user: str = "501", **observations: str) -> dict:
    return detection(
        i,
        # Ids that do not embed the user id, as a frontend's usually do not: the
        # dedupe markers keyed by them outlive an erasure (they hold nothing else).
        id=f"d{next(_det_ids)}",
        user=user,
        guild_id="g1",
        observed_at=(T0 + timedelta(minutes=i)).isoformat(),
        severity="low",
        phase="watch",
        observations=[observation(p, v) for p, v in observations.items()],
    )


def alternating(user: str, n: int = 6) -> list[dict]:
    """Detections that make ``user``'s identity a multi-actor suspect."""
    return [
        det(i, user, typing_cadence=("burst", "steady")[i % 2], locale=("en", "pt")[i % 2])
        for i in range(n)
    ]


@pytest.fixture
def ingest(state_redis, db, settings) -> IngestService:
    """The real pipeline, in process: fills the stores the commands read."""
    return Ingest(IngestService(state_redis, settings, db, LexiconDetector()))
