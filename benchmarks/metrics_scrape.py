"""Scrape cost with big stores, and the message path with and without counting.

    python -m benchmarks.metrics_scrape [--bonds 1000000] [--dead-letters 100000]

Starts its own redis-server (stack.processes.RedisServer) and uses the local or
embedded PostgreSQL in a database of its own (dropped afterwards). It fills
Redis with bonds, the bond stream and a consumer group, and PostgreSQL with dead
letters and pending outbox rows, then times whole scrapes (the collector and
the HTTP exporter). The exporter never scans keys, so its cost does not follow
the number of bonds. Then it runs IngestService.messages in process, batches
of 100 unique messages, alternating rounds with the scripts as shipped and with
their counter lines removed. Prints a table and writes
benchmarks/results/metrics_scrape.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import generate_latest
from sqlalchemy import create_engine, text

from services.core import scripts
from services.core.clients import close_all, get_redis, session_factory
from services.core.settings import Settings
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from services.metrics import collector, exporter
from stack.discovery import app_database_url, ensure_database, ensure_services, migrate
from stack.processes import RedisServer
from tasks import names

RESULTS = Path(__file__).parent / "results" / "metrics_scrape.json"
DB_NAME = "vigil_bench_metrics"
COUNTED_SCRIPTS = ("ingest_gate", "apply_detection")
BOND = (
    '{{"user_id":"{u}","phase":"dormant","prev_phase":"dormant","archetype":"unknown",'
    '"phase_entered_at":0,"turn_count":0,"peak_nodes":{{}},"risk_level":"low",'
    '"daily_msg_cap":0,"daily_msg_count":3,"daily_msg_reset_at":0,"egg_status":"none",'
    '"notes":[],"last_updated":0}}'
)


def fill_redis(server: RedisServer, settings: Settings, bonds: int, stream_entries: int) -> None:
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for start in range(0, bonds, 10_000):
        pipe.mset(
            {
                f"{settings.bond_prefix}{u}": BOND.format(u=u)
                for u in range(start, min(bonds, start + 10_000))
            }
        )
        pipe.execute()
    for i in range(stream_entries):
        pipe.xadd(settings.stream_bond, {"data": '{"topic":"bond.risk_change"}'})
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    client.xgroup_create(settings.stream_bond, "alerts", id="0")
    client.execute_command(
        "XREADGROUP", "GROUP", "alerts", "c1", "COUNT", 5000, "STREAMS", settings.stream_bond, ">"
    )
    client.close()


def fill_postgres(database_url: str, dead_letters: int, pending_outbox: int) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO dead_letters (task_name, reason, details, payload, user_id) "
                "SELECT (ARRAY[:a, :b, :c])[1 + i % 3], "
                "(ARRAY['rejected', 'failed'])[1 + i % 2], '[]', "
                "'{\"message_id\": \"m' || i || '\"}', 'u' || (i % 50000) "
                "FROM generate_series(1, :n) AS i"
            ),
            {
                "a": names.INGEST_MESSAGE,
                "b": names.INGEST_DETECTION,
                "c": names.INGEST_MESSAGES,
                "n": dead_letters,
            },
        )
        conn.execute(
            text(
                "INSERT INTO outbox (envelope_id, stream, topic, body) "
                "SELECT gen_random_uuid(), 'vigil:stream:user', 'user.erased', '{}' "
                "FROM generate_series(1, :n)"
            ),
            {"n": pending_outbox},
        )
        conn.execute(text("ANALYZE dead_letters; ANALYZE outbox"))
    engine.dispose()


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    fn()  # warm: connections, script cache, plans
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "median_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
        "max_ms": round(times[-1], 2),
        "runs": runs,
    }


def scrape_timings(settings: Settings, runs: int) -> dict[str, Any]:
    reg = collector.registry(collector.for_settings(settings, names.QUEUES))
    out = {"collector": timed(lambda: generate_latest(reg), runs)}
    server, thread = exporter.start(reg, "127.0.0.1", 0, None)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    with httpx.Client() as http:
        out["http"] = timed(lambda: http.get(url).raise_for_status(), runs)
        out["bytes"] = len(http.get(url).content)
    server.shutdown()
    thread.join(timeout=5)
    return out


def _without_counter_lines(name: str) -> str:
    body = SHIPPED_SOURCE(name)
    if name not in COUNTED_SCRIPTS:
        return body
    return "\n".join(
        line for line in body.splitlines() if "count_metric(" not in line or "function" in line
    )


SHIPPED_SOURCE = scripts.source


def use_scripts(counting: bool) -> None:
    """Swap the script text the loader sends (and its sha) for the next calls."""
    scripts.source = SHIPPED_SOURCE if counting else _without_counter_lines  # type: ignore[assignment]
    scripts.sha.cache_clear()


def message_path(settings: Settings, sessions, rounds: int, per_round: int) -> dict[str, Any]:
    client = get_redis(settings)
    service = IngestService(client, settings, sessions, LexiconDetector())
    sent_at = datetime(2026, 11, 22, 10, 0, tzinfo=UTC).isoformat()
    results: dict[str, list[float]] = {"with_counters": [], "without_counters": []}

    def run_round() -> float:
        tag = uuid.uuid4().hex[:8]
        batches = [
            [
                {
                    "message_id": f"{tag}-{b}-{i}",
                    "user_id": f"bench{(b * 100 + i) % 5000}",
                    "guild_id": "g1",
                    "text": "I feel so alone and hopeless tonight" if i % 10 == 0 else "hi there",
                    "sent_at": sent_at,
                }
                for i in range(100)
            ]
            for b in range(per_round // 100)
        ]
        start = time.perf_counter()
        for batch in batches:
            service.messages(batch)
        return per_round / (time.perf_counter() - start)

    for counting in (True, False):  # warm both scripts
        use_scripts(counting)
        run_round()
    for _ in range(rounds):
        for counting, label in ((True, "with_counters"), (False, "without_counters")):
            use_scripts(counting)
            results[label].append(run_round())
    use_scripts(True)
    client.close()
    out: dict[str, Any] = {
        label: {
            "median_msgs_per_s": round(statistics.median(values)),
            "rounds_msgs_per_s": [round(v) for v in values],
        }
        for label, values in results.items()
    }
    with_c = out["with_counters"]["median_msgs_per_s"]
    without = out["without_counters"]["median_msgs_per_s"]
    out["difference_pct"] = round(100 * (with_c - without) / without, 1)
    spread = [100 * (max(v) - min(v)) / statistics.median(v) for v in results.values()]
    out["round_spread_pct"] = round(max(spread), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_scrape")
    parser.add_argument("--bonds", type=int, default=1_000_000)
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--pending-outbox", type=int, default=1_000)
    parser.add_argument("--stream-entries", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages-per-round", type=int, default=5_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vigil-bench-metrics-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        found = ensure_services(redis_url=server.url(0), database_url=None, data_dir=Path(tmp))
        database_url = app_database_url(found.database_url, DB_NAME)
        admin = create_engine(
            app_database_url(found.database_url, "postgres"), isolation_level="AUTOCOMMIT"
        )
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}"'))
            ensure_database(database_url)
            migrate(database_url)
            settings = Settings(
                redis_url=server.url(0),
                broker_url=server.url(1),
                database_url=database_url,
                embedded="never",
            )
            started = time.perf_counter()
            fill_redis(server, settings, args.bonds, args.stream_entries)
            fill_postgres(database_url, args.dead_letters, args.pending_outbox)
            filled_s = time.perf_counter() - started
            keys_in_redis = server.client().dbsize()
            scrape = scrape_timings(settings, args.scrapes)
            sessions = session_factory(settings)
            path = message_path(settings, sessions, args.rounds, args.messages_per_round)
        finally:
            close_all()
            with admin.connect() as conn:
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
                    ),
                    {"d": DB_NAME},
                )
                conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}"'))
            admin.dispose()
            server.stop()
            found.stop_started()

    report = {
        "stores": {
            "bonds": args.bonds,
            "redis_keys": keys_in_redis,
            "bond_stream_entries": args.stream_entries,
            "dead_letters": args.dead_letters,
            "pending_outbox_rows": args.pending_outbox,
            "fill_seconds": round(filled_s, 1),
        },
        "scrape": scrape,
        "message_path": path,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    s, sc, mp = report["stores"], report["scrape"], report["message_path"]
    rows = [
        (
            "stores",
            f"{s['bonds']:,} bonds, {s['redis_keys']:,} Redis keys, "
            f"{s['dead_letters']:,} dead letters, {s['pending_outbox_rows']:,} pending outbox rows",
        ),
        (
            "scrape, collector",
            "median {median_ms} ms, p95 {p95_ms} ms, max {max_ms} ms".format(**sc["collector"]),
        ),
        (
            "scrape, HTTP /metrics",
            "median {median_ms} ms, p95 {p95_ms} ms, max {max_ms} ms".format(**sc["http"])
            + f", {sc['bytes']:,} bytes",
        ),
        ("messages/s with counters", f"{mp['with_counters']['median_msgs_per_s']:,}"),
        ("messages/s without counters", f"{mp['without_counters']['median_msgs_per_s']:,}"),
        (
            "difference",
            f"{mp['difference_pct']:+.1f}% (rounds spread up to {mp['round_spread_pct']:.1f}%)",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    raise SystemExit(main())
