"""Names of the benchmark-only tasks and the worker's idle queue.

Production task names come from ``tasks.names``; these exist only in a worker
started with ``-I benchmarks.bench_tasks``.
"""

from __future__ import annotations

BENCH_NOOP = "vigil.bench.noop"
# Registered on a bare Celery app (benchmarks/bare_app.py), not on vigil's.
BENCH_BARE_NOOP = "vigil.bench.bare_noop"
BENCH_SEED_STYLE = "vigil.bench.seed_style"
BENCH_SEED_STYLE_BATCH = "vigil.bench.seed_style_batch"

# The benchmark worker starts consuming only this queue, which nothing is sent
# to; the harness switches the ingest queue on and off with remote control.
IDLE_QUEUE = "bench.idle"
