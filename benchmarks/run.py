"""Benchmark harness: ``python -m benchmarks.run [--quick] [--skip-correlator]``.

One run on this machine, with real Redis, PostgreSQL and Celery workers, of the
contenders in contenders.py (Celery's no-op ceiling, the seed-style pipeline
and vigil's tasks, one message and a batch per task) and of the correlator on
a million attribution rows (correlator.py).

All contenders run on one worker (same pool, concurrency, prefetch and
settings as production) against a private broker and a private state Redis
(harness.py). Absolute numbers move with the machine's load; the ratios,
measured minutes apart in the same run, are the result (report.py). See
README.md for the method.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import celery

from benchmarks import correlator as correlator_bench
from benchmarks.contenders import (
    FULL,
    MESSAGES_PER_USER,
    QUICK,
    SMOKE,
    Sizes,
    contenders_for,
    events_ab,
    latency,
    throughput,
)
from benchmarks.harness import DEFAULT_PG_URL, Bench
from benchmarks.profiling import profile_paths
from benchmarks.report import RESULTS, markdown, ratios_and_targets, write_results

METHOD = {
    "throughput": "queue pre-filled, then the worker starts consuming; time from "
    "its first take to an empty queue and no unacked message (acks are late, so "
    "every effect is written); median of runs of several seconds each (see sizes)",
    "latency": "paced producer at half the median rate; time from send to the "
    "envelope with the message's correlation_id being read from the stream; the "
    "benchmark process freezes its garbage collector's objects for the run, so "
    "its own pauses are not counted",
    "round_trips": "requests written to the state Redis by the worker processes "
    "(one per command, one per pipeline), counted client-side",
    "server_commands": "INFO commandstats delta on the state Redis, commands "
    "inside Lua scripts included",
    "cpu": "user+system CPU from /proc of the worker (parent and pool "
    "children), the broker and the state redis-server, per message, median of "
    "runs; far less sensitive than rates to other load on the machine",
    "memory": f"used_memory delta on the first run / users "
    f"({MESSAGES_PER_USER} messages per user, markers and stream entries "
    "included)",
}
WORKER = (
    "prefork -c 2, production celeryconfig (buffered ingest, prefetch 2 x flush_every, "
    "acks late, task events), private broker and state redis-server; the bare no-op "
    "runs on a Celery app with its defaults plus late acks, no events, stock kombu"
)


def run(
    sizes: Sizes,
    *,
    mode: str,
    out_dir: Path,
    pg_admin_url: str,
    db_name: str,
    skip_correlator: bool = False,
    profile: bool = True,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        bench = Bench(Path(tmp), pg_admin_url, db_name)
        try:
            contenders = contenders_for(sizes)
            for contender in contenders:
                if bench.worker is None or (contender.bare, contender.worker_env) != (
                    bench.bare,
                    bench.worker_env,
                ):
                    bench.start_worker(contender.worker_env, tag=contender.key, bare=contender.bare)
                print(f"[bench] {contender.label}: throughput", flush=True)
                throughput(bench, contender, sizes)
                if contender.bare:
                    continue  # the bare no-op publishes nothing to wait for
                print(f"[bench] {contender.label}: latency at half load", flush=True)
                latency(bench, contender, sizes)
                if contender.key == "vigil_single":
                    print(f"[bench] {contender.label}: latency at 1 msg/s", flush=True)
                    latency(bench, contender, sizes, fixed_rate=1.0)
                print(
                    f"[bench]   {contender.msgs_per_s:.0f} msg/s, {contender.latency}", flush=True
                )
            by_key = {contender.key: contender for contender in contenders}
            print("[bench] task events per request against per buffer", flush=True)
            events = events_ab(bench, sizes)
            prof = None
            if profile:
                print("[bench] profiling the vigil paths", flush=True)
                prof = profile_paths(bench, [by_key["vigil_single"], by_key["vigil_batch"]])
            bench.stop_worker()
            corr = None
            if not skip_correlator:
                print(f"[bench] correlator on {sizes.correlator_rows} rows", flush=True)
                corr = correlator_section(bench, sizes)
            ratios, targets = ratios_and_targets(by_key, corr)
            result = {
                "mode": mode,
                "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "celery": celery.__version__,
                    "redis_server": bench.state.version(),
                },
                "worker": WORKER,
                "method": METHOD,
                "sizes": asdict(sizes),
                "contenders": {contender.key: asdict(contender) for contender in contenders},
                "ratios": ratios,
                "targets": targets,
                "events_ab": events,
                "correlator": corr,
                "profile": prof,
            }
        finally:
            bench.close()
    write_results(result, out_dir)
    return result


def correlator_section(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    try:
        loaded = correlator_bench.load(bench.database_url, sizes.correlator_rows)
        measured = correlator_bench.measure(
            bench.database_url,
            runs=sizes.correlator_runs,
            redis_client=bench.state.client(),
            settings=bench.settings,
        )
    except ImportError as exc:
        return {"error": f"correlator not importable: {exc}"}
    measured["plan_summary"] = correlator_bench.plan_summary(measured.pop("plan"))
    return {**loaded, **measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-correlator", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("VIGIL_BENCH_PG_URL", DEFAULT_PG_URL),
        help="a PostgreSQL server URL the benchmark may create a database on",
    )
    parser.add_argument("--database", default=os.environ.get("VIGIL_BENCH_PG_DB", "vigil_bench"))
    args = parser.parse_args(argv)
    sizes, mode = (SMOKE, "smoke") if args.smoke else (QUICK, "quick") if args.quick else (
        FULL, "full")  # fmt: skip
    result = run(
        sizes,
        mode=mode,
        out_dir=args.out,
        pg_admin_url=args.pg_url,
        db_name=args.database,
        skip_correlator=args.skip_correlator,
        profile=not (args.no_profile or args.quick or args.smoke),
    )
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
