"""The multi-actor correlator on a million ``attribution_state`` rows.

Rows are made set-based in PostgreSQL (``INSERT ... SELECT`` over
``generate_series``), with one identity row per five primitives for the FK and
a small, seeded-random share of rows in ``multi_actor``. The database must be a
migrated one of the benchmark's own: loading truncates the attribution tables.

Run alone with ``python -m benchmarks.correlator DATABASE_URL [ROWS]``.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

PRIMITIVES = ("ja3", "tz_offset", "typing_cadence", "client_build", "locale")
# Per-row chance of multi_actor; an identity needs two of five, so about 0.4 %
# of identities end up suspected.
MULTI_ACTOR_SHARE = 0.02


def load(database_url: str, rows: int, share: float = MULTI_ACTOR_SHARE) -> dict[str, Any]:
    identities = max(1, rows // len(PRIMITIVES))
    engine = create_engine(database_url)
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE outbox, correlator_fired, attribution_state, observations,"
                " actors, identities CASCADE"
            )
        )
        conn.execute(text("SELECT setseed(0.42)"))
        conn.execute(
            text(
                "INSERT INTO identities (id)"
                " SELECT md5('bench' || g)::uuid FROM generate_series(1, :n) AS g"
            ),
            {"n": identities},
        )
        conn.execute(
            text(
                """
                INSERT INTO attribution_state (
                    identity_id, primitive, kind, current_value, state, confidence,
                    observation_count, last_change_ts, last_observation_ts)
                SELECT md5('bench' || g)::uuid, p.name,
                       CASE WHEN p.name = 'typing_cadence' THEN 'numeric' ELSE 'categorical' END,
                       'v' || (g % 17),
                       CASE WHEN random() < :share THEN 'multi_actor'
                            ELSE (ARRAY['stable', 'stable', 'stable', 'drifting',
                                        'conflicted', 'unknown'])[1 + floor(random() * 6)::int]
                       END,
                       round(random()::numeric, 3), 3 + (g % 40),
                       now() - make_interval(secs => g % 86400), now()
                FROM generate_series(1, :n) AS g
                CROSS JOIN unnest(CAST(:prims AS text[])) AS p(name)
                """
            ),
            {"n": identities, "share": share, "prims": list(PRIMITIVES)},
        )
    load_s = time.perf_counter() - started
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # Fresh rows need a vacuum before the planner trusts the visibility map
        # (index-only scans) and statistics; the beat job sees an autovacuumed table.
        conn.execute(text("VACUUM ANALYZE identities"))
        conn.execute(text("VACUUM ANALYZE attribution_state"))
        counts = conn.execute(
            text(
                "SELECT count(*) AS total, count(*) FILTER (WHERE state = 'multi_actor') AS multi"
                " FROM attribution_state"
            )
        ).one()
    engine.dispose()
    return {
        "rows": int(counts.total),
        "identities": identities,
        "multi_actor_rows": int(counts.multi),
        "load_s": round(load_s, 2),
    }


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def measure(database_url: str, runs: int = 7, redis_client=None, settings=None) -> dict[str, Any]:
    """Time the correlator's query and, when a Redis client is given, whole ticks."""
    from services.attribution import repository as repo

    engine = create_engine(database_url)
    sessions = sessionmaker(bind=engine, expire_on_commit=False)
    out: dict[str, Any] = {}
    with sessions() as session:
        repo.list_multi_actor_identities(session, 2)  # warm the cache once
        samples, found = [], []
        for _ in range(runs):
            started = time.perf_counter()
            found = repo.list_multi_actor_identities(session, 2)
            samples.append(time.perf_counter() - started)
        out["query_ms_median"] = _median_ms(samples)
        out["query_ms_all"] = [round(sample * 1000, 2) for sample in samples]
        out["suspected_identities"] = len(found)
        plan = session.execute(
            text("EXPLAIN (ANALYZE, BUFFERS) " + repo._MULTI_ACTOR.text), {"at_least": 2}
        ).scalars()
        out["plan"] = list(plan)
    if redis_client is not None and settings is not None:
        from services.attribution import correlator

        started = time.perf_counter()
        first = correlator.run(sessions, settings, redis_client)
        out["first_tick_ms"] = round((time.perf_counter() - started) * 1000, 1)
        out["first_tick"] = {k: v for k, v in first.items() if k != "relay"}
        ticks = []
        for _ in range(runs):
            started = time.perf_counter()
            result = correlator.run(sessions, settings, redis_client)
            ticks.append(time.perf_counter() - started)
        out["steady_tick_ms_median"] = _median_ms(ticks)
        out["steady_tick"] = result
    engine.dispose()
    return out


def plan_summary(plan: list[str]) -> list[str]:
    """The plan's node lines and its timing lines, without buffer detail."""
    keep = []
    for line in plan:
        stripped = line.strip()
        if stripped.startswith(("Buffers:", "Planning:")) or not stripped:
            continue
        keep.append(line.rstrip())
    return keep


def main(argv: list[str]) -> None:
    url = argv[0]
    rows = int(argv[1]) if len(argv) > 1 else 1_000_000
    print(load(url, rows))
    result = measure(url)
    print("\n".join(plan_summary(result.pop("plan"))))
    print(result)


if __name__ == "__main__":
    main(sys.argv[1:])
