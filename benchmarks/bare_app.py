"""The bare Celery contender: Celery's defaults plus late acks, no task events,
kombu's stock Redis transport. What a user would run without vigil's config;
started with ``celery -A benchmarks.bare_app worker``."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from benchmarks.names import BENCH_BARE_NOOP

app = Celery("vigil-bench-bare", broker=os.environ["VIGIL_BROKER_URL"])
app.conf.update(task_acks_late=True, worker_send_task_events=False)


@app.task(name=BENCH_BARE_NOOP)
def bare_noop(**_: Any) -> None:
    """No work: Celery's own cost per task with its defaults."""
