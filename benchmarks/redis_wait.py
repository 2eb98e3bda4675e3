"""What ``VIGIL_REDIS_WAIT_REPLICAS=1`` costs: the ingest pipeline with and
without ``WAIT 1`` on a master with one replica, both private ``redis-server``s
on loopback.

    python -m benchmarks.redis_wait [--buffers 200] [--repeats 3]

Runs ``IngestService.messages`` in process (the worker's per-buffer call:
two pipelines, each ending with WAIT when it is on) over buffers of 100
messages and of 1 message, alternating WAIT 0 and WAIT 1 round by round so
drift hits both alike. Prints a table and writes
``benchmarks/results/redis_wait.json``. Messages carry no observations and
none is rejected, so PostgreSQL is never contacted. Loopback replication is
the best case: across machines WAIT adds the network round trip to the
replica and back.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from services.core.settings import Settings
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from stack.processes import HOST, RedisServer
from stack.topologies import free_ports

RESULTS = Path(__file__).parent / "results" / "redis_wait.json"
# Loopback ports this benchmark may take for its two servers.
PORTS = range(26450, 26500)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TEXTS = ("hello there", "I feel sad today", "bad day but fine", "thanks, feeling better")


def buffer(
    tag: str, size: int, users: int = 10, user_tag: str | None = None
) -> list[dict[str, Any]]:
    """``size`` new messages over ``users`` users in turn (ids ``{user_tag}u<n>``,
    ``user_tag`` defaulting to ``tag``); no observations, so nothing reaches
    PostgreSQL."""
    user_tag = tag if user_tag is None else user_tag
    return [
        {
            "message_id": f"{tag}-{n}",
            "platform": "discord",
            "guild_id": "g1",
            "channel_id": "c1",
            "user_id": f"{user_tag}u{n % users}",
            "text": TEXTS[n % len(TEXTS)],
            "sent_at": (T0 + timedelta(seconds=n)).isoformat(),
        }
        for n in range(size)
    ]


def measure(service: IngestService, size: int, buffers: int, tag: str) -> list[float]:
    """Seconds per buffer, for ``buffers`` buffers of ``size`` new messages."""
    took = []
    for b in range(buffers):
        msgs = buffer(f"{tag}b{b}", size)
        started = time.perf_counter()
        service.messages(msgs)
        took.append(time.perf_counter() - started)
    return took


def summary(took: list[float], size: int) -> dict[str, float]:
    ordered = sorted(took)
    return {
        "buffer_p50_ms": round(statistics.median(ordered) * 1000, 3),
        "buffer_p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
        "messages_per_s": round(size * len(took) / sum(took)),
    }


def run(buffers: int, repeats: int) -> dict[str, Any]:
    sessions = sessionmaker(create_engine("postgresql+psycopg://unused@127.0.0.1:1/unused"))
    master_port, replica_port = free_ports(2, PORTS)
    with tempfile.TemporaryDirectory() as tmp:
        master = RedisServer(Path(tmp) / "master", master_port, appendonly=True).start()
        replica = RedisServer(Path(tmp) / "replica", replica_port, appendonly=True).start()
        try:
            replica.client().replicaof(HOST, master_port)
            deadline = time.monotonic() + 30
            while replica.client().info("replication").get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise TimeoutError("the replica did not sync within 30 s")
                time.sleep(0.1)
            client = master.client()
            services = {
                wait: IngestService(
                    client,
                    Settings(redis_wait_replicas=wait, redis_url=master.url(0)),
                    sessions,
                    LexiconDetector(),
                )
                for wait in (0, 1)
            }
            took: dict[tuple[int, int], list[float]] = {}
            for size in (100, 1):
                for repeat in range(repeats):
                    for wait, service in services.items():
                        tag = f"s{size}r{repeat}w{wait}"
                        took.setdefault((size, wait), []).extend(
                            measure(service, size, buffers, tag)
                        )
            version = client.info("server")["redis_version"]
        finally:
            replica.stop()
            master.stop()
    rows = [
        {"buffer": size, "wait_replicas": wait, **summary(values, size)}
        for (size, wait), values in sorted(took.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]
    return {
        "redis_version": version,
        "buffers_per_row": buffers * repeats,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": rows,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"Redis {result['redis_version']}, master + 1 replica on loopback, "
        f"{result['buffers_per_row']} buffers per row",
        "| buffer | WAIT | buffer p50 ms | buffer p99 ms | messages/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['buffer']} | {row['wait_replicas']} | {row['buffer_p50_ms']} | "
            f"{row['buffer_p99_ms']} | {row['messages_per_s']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buffers", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = run(args.buffers, args.repeats)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
