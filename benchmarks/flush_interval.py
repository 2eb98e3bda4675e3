"""Flush interval of buffered single-message ingest: what each value costs.

    python -m benchmarks.flush_interval [--intervals 0.005,0.01,0.02,0.05] [--rounds 2]
                                        [--messages 8000]

For each ``VIGIL_INGEST_FLUSH_INTERVAL_S`` a fresh worker (the production
config, as in ``benchmarks.run``) drains a pre-filled queue of single-message
tasks; the values take turns for ``--rounds`` rounds, because this machine's
speed drifts more within minutes than some of the differences measured. Then
each value gets a latency run at the same offered rate: half the lowest median
throughput. Prints a table and writes ``benchmarks/results/flush_interval.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.contenders import FULL, Contender, latency, throughput
from benchmarks.harness import DEFAULT_PG_URL, Bench
from tasks.names import INGEST_MESSAGE

RESULTS = Path(__file__).parent / "results" / "flush_interval.json"


def _contender(interval: str, tag: str, messages: int) -> Contender:
    return Contender(
        f"flush{interval.replace('.', '_')}_{tag}",
        f"flush interval {interval} s",
        INGEST_MESSAGE,
        0,
        messages,
        worker_env={"VIGIL_INGEST_FLUSH_INTERVAL_S": interval},
    )


def measure(bench: Bench, intervals: list[str], rounds: int, messages: int) -> dict[str, Any]:
    one_run = replace(FULL, runs=1, single=messages)
    runs: dict[str, list[dict[str, Any]]] = {interval: [] for interval in intervals}
    for round_no in range(rounds):
        for interval in intervals:
            contender = _contender(interval, f"r{round_no}", messages)
            bench.start_worker(contender.worker_env, tag=contender.key)
            throughput(bench, contender, one_run)
            runs[interval].append(
                {"msgs_per_s": contender.msgs_per_s, "cpu_us_per_msg": contender.cpu_us_per_msg}
            )
    medians = {
        interval: statistics.median(run["msgs_per_s"] for run in runs[interval])
        for interval in intervals
    }
    rate = min(medians.values()) / 2
    rows = []
    for interval in intervals:
        contender = _contender(interval, "lat", messages)
        bench.start_worker(contender.worker_env, tag=contender.key)
        contender.msgs_per_s = rate * 2  # latency() offers half of it
        latency(bench, contender, one_run)
        rows.append(
            {
                "interval_s": float(interval),
                "msgs_per_s_runs": [run["msgs_per_s"] for run in runs[interval]],
                "msgs_per_s": medians[interval],
                "cpu_us_per_msg": statistics.median(
                    run["cpu_us_per_msg"]["total"] for run in runs[interval]
                ),
                "latency": contender.latency,
            }
        )
    return {"rounds": rounds, "messages_per_run": messages, "latency_rate": rate, "rows": rows}


def table(result: dict[str, Any]) -> str:
    lines = [
        f"latency at {result['latency_rate']:.0f} msg/s offered, for every interval",
        "",
        "| flush interval s | msgs/s (median) | runs | CPU us/msg | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lat = row["latency"]
        lines.append(
            f"| {row['interval_s']} | {row['msgs_per_s']:.0f} "
            f"| {', '.join(f'{rate:.0f}' for rate in row['msgs_per_s_runs'])} "
            f"| {row['cpu_us_per_msg']:.0f} | {lat.get('p50_ms')} | {lat.get('p99_ms')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.flush_interval", description=__doc__
    )
    parser.add_argument("--intervals", default="0.005,0.01,0.02,0.05")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--messages", type=int, default=FULL.single, help="per throughput run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--pg-url", default=os.environ.get("VIGIL_BENCH_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--database", default="vigil_bench_flush")
    args = parser.parse_args(argv)
    intervals = [value.strip() for value in args.intervals.split(",") if value.strip()]
    with tempfile.TemporaryDirectory(prefix="vigil-bench-flush-") as tmp:
        bench = Bench(Path(tmp), args.pg_url, args.database)
        try:
            result = measure(bench, intervals, args.rounds, args.messages)
        finally:
            bench.close()
    result["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
