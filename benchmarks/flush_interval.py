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
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.contenders import FULL, Contender, alternating, latency
from benchmarks.harness import DEFAULT_PG_URL, Bench
from tasks.names import INGEST_MESSAGE

RESULTS = Path(__file__).parent / "results" / "flush_interval.json"


def measure(bench: Bench, intervals: list[str], rounds: int, messages: int) -> dict[str, Any]:
    variants = {interval: {"VIGIL_INGEST_FLUSH_INTERVAL_S": interval} for interval in intervals}
    measured = alternating(bench, variants, messages, rounds)
    rate = min(row["msgs_per_s"] for row in measured.values()) / 2
    rows = []
    for interval, env in variants.items():
        contender = Contender(
            f"flush{interval.replace('.', '_')}_lat", interval, INGEST_MESSAGE, 0, messages,
            worker_env=env,
        )  # fmt: skip
        bench.start_worker(env, tag=contender.key)
        contender.msgs_per_s = rate * 2  # latency() offers half of it
        latency(bench, contender, replace(FULL, single=messages))
        row = measured[interval]
        rows.append(
            {
                "interval_s": float(interval),
                "msgs_per_s_runs": row["msgs_per_s_runs"],
                "msgs_per_s": row["msgs_per_s"],
                "cpu_us_per_msg": row["total_cpu_us_per_msg"],
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
