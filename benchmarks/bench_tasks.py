"""Benchmark-only tasks, loaded into a worker with ``-I benchmarks.bench_tasks``.

They register on vigil's own app, so they run with the same task class, pool,
serializer, acks and events as the production tasks they are compared with;
production code never imports this module.

Two optional instruments, switched on by the harness through the environment:
the round-trip counter (``counters.py``), and with ``VIGIL_BENCH_PROFILE_DIR``
cProfile in the pool's parent and children, dumped on shutdown, for the "where
does the time go" summary.
"""

from __future__ import annotations

import cProfile
import json
import os
from pathlib import Path
from typing import Any

from celery.signals import (
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from benchmarks import counters
from benchmarks.names import BENCH_NOOP, BENCH_SEED_STYLE, BENCH_SEED_STYLE_BATCH
from benchmarks.seed_style import SeedStyleIngest
from services.core.clients import get_redis
from services.core.settings import get_settings
from services.ingest import detector
from tasks.app import app

# -- tasks ----------------------------------------------------------------------------


@app.task(name=BENCH_NOOP, time_limit=60, soft_time_limit=50)
def noop(publish: str | None = None, **_: Any) -> dict[str, Any]:
    """Celery's ceiling. With ``publish`` it XADDs one entry (one round trip) so
    the latency run has something to see on the stream."""
    if publish is not None:
        settings = get_settings()
        get_redis(settings).xadd(
            settings.stream_bond,
            {"data": json.dumps({"correlation_id": publish})},
            maxlen=settings.stream_maxlen,
            approximate=True,
        )
    return {"status": "ok"}


def _seed() -> SeedStyleIngest:
    settings = get_settings()
    return SeedStyleIngest(get_redis(settings), settings, detector.from_settings(settings))


@app.task(name=BENCH_SEED_STYLE, time_limit=60, soft_time_limit=50)
def seed_style(**payload: Any) -> dict[str, Any]:
    return _seed().message(payload)


@app.task(name=BENCH_SEED_STYLE_BATCH, time_limit=60, soft_time_limit=50)
def seed_style_batch(messages: list[Any]) -> dict[str, Any]:
    outcomes = _seed().messages(messages)
    return {"status": "ok", "accepted": sum(o["status"] == "accepted" for o in outcomes)}


# -- round-trip counter ---------------------------------------------------------------

counters.install_from_env()


# -- profiler -------------------------------------------------------------------------

_PROFILE_DIR = os.environ.get("VIGIL_BENCH_PROFILE_DIR")
_profile: dict[str, cProfile.Profile] = {}


def _start(role: str) -> None:
    prof = cProfile.Profile()
    prof.enable()
    _profile[role] = prof


def _dump(role: str) -> None:
    prof = _profile.pop(role, None)
    if prof is not None and _PROFILE_DIR:
        prof.disable()
        prof.dump_stats(str(Path(_PROFILE_DIR) / f"{role}-{os.getpid()}.prof"))


if _PROFILE_DIR:

    @worker_ready.connect
    def _parent_start(**_: Any) -> None:
        _start("parent")

    @worker_shutdown.connect
    def _parent_dump(**_: Any) -> None:
        _dump("parent")

    @worker_process_init.connect
    def _child_start(**_: Any) -> None:
        _start("child")

    @worker_process_shutdown.connect
    def _child_dump(**_: Any) -> None:
        _dump("child")
