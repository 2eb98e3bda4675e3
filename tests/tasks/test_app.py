"""The Celery application's process hooks."""

from __future__ import annotations

import os
import subprocess
import sys

FREEZE_CHECK = """
import gc
from celery.signals import worker_init, worker_process_init, worker_ready
import tasks.app
before = len(gc.get_objects())
worker_init.send(sender=None)
after_init = gc.get_freeze_count()
kept = [[i] for i in range(50_000)]  # lists are always tracked
worker_ready.send(sender=None)
worker_process_init.send(sender=None)
print(before, after_init, gc.get_freeze_count(), len(gc.get_objects()))
"""


def test_a_worker_freezes_what_start_up_built(test_env):
    """worker_init (before the pool forks), worker_ready and worker_process_init
    each move the process's objects out of the collector's reach, so a full
    collection walks only what tasks create."""
    run = subprocess.run(
        [sys.executable, "-c", FREEZE_CHECK],
        env={**os.environ, **test_env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    before, after_init, after_ready, still_tracked = map(int, run.stdout.split())
    assert after_init >= 0.9 * before
    assert after_ready >= after_init + 50_000  # what was built after start-up, frozen too
    assert still_tracked < 0.01 * after_ready
