"""A worker killed with SIGKILL in the middle of 10,000 single-message tasks.

Run on both brokers vigil supports, with the shipped delivery settings. With
RabbitMQ the broker itself holds unacked deliveries and redelivers them when
the connection drops, so nothing may be lost and recovery is quick. Celery's
Redis transport keeps one BRPOP outstanding: Redis may already have popped
the next task into the worker's socket, not yet recorded as unacked, when the
worker dies. That one task (one message on this path) is lost; everything
recorded as unacked comes back after the visibility timeout. Nothing may ever
be counted twice.
"""

from __future__ import annotations

import json
import time

import pytest

from services.core.settings import Settings

from .conftest import BROKER_DB, make_app, wait_for
from .helpers import burst, diff, run_reference, send_burst, snapshot

pytestmark = pytest.mark.faults

SINGLES = 10_000
# From the kill to every message applied, and how many may be missing, per broker.
RECOVERY_BOUND_S = {"redis": 180, "amqp": 60}
MISSING_ALLOWED = {"redis": 1, "amqp": 0}


def _daily_counts(state_redis, settings: Settings, tag: str) -> dict[str, int]:
    """Each single-message user's daily count: one bond per message of the burst."""
    prefix = f"{settings.bond_prefix}{tag}s"
    bond_keys = list(state_redis.scan_iter(match=f"{prefix}*", count=5000))
    counts: dict[str, int] = {}
    for key, raw in zip(bond_keys, state_redis.mget(bond_keys) if bond_keys else [], strict=True):
        if raw:
            counts[key] = int(json.loads(raw).get("daily_msg_count", 0))
    return counts


def test_kill9_mid_burst_bounds_loss_doubles_and_recovery(fresh, procs, broker):
    kind = broker["kind"]
    _, singles = burst(0, 0, SINGLES)
    expected = run_reference(fresh, [], singles)
    settings = fresh.settings()
    # The workers run with the shipped delivery settings: nothing in env overrides them.
    assert not any(name.startswith("VIGIL_VISIBILITY") for name in fresh.env())
    shipped = Settings()
    state_redis = fresh.redis.client()
    app = make_app(broker["url"], fresh.state_url)
    env = fresh.env(VIGIL_BROKER_URL=broker["url"])
    applied = lambda: len(_daily_counts(state_redis, settings, "m"))  # noqa: E731

    # The whole burst is queued first, so the kill lands mid-burst however fast
    # the worker drains it. DBSIZE is a cheap progress signal (each applied
    # message leaves at least a bond and a dedupe hash).
    send_burst(app, [], singles)
    first = procs.worker(app, env=env)
    wait_for(lambda: state_redis.dbsize() >= 4_000, what="about a fifth of the burst applied")
    first.kill9()
    killed_at = time.monotonic()
    applied_at_kill = applied()
    assert applied_at_kill < SINGLES, "the kill must land before the burst is over"
    if kind == "redis":
        in_flight = fresh.redis.client(BROKER_DB).hlen("unacked")
        assert in_flight > 0, "the kill must land while tasks are delivered and unacked"

    procs.worker(app, env=env)
    bound = RECOVERY_BOUND_S[kind]
    wait_for(
        lambda: applied() >= SINGLES - MISSING_ALLOWED[kind],
        timeout=bound,
        what=f"every message (but {MISSING_ALLOWED[kind]}) applied within {bound} s of the kill",
    )
    recovered_s = time.monotonic() - killed_at
    # A last straggler beyond the allowance would still count as missing: give the
    # Redis sweep one more period to bring it back before counting.
    if applied() < SINGLES:
        time.sleep(shipped.unacked_restore_period_s + 1)
    wait_for(broker["drained"], timeout=60, what="broker drained after redelivery")

    counts = _daily_counts(state_redis, settings, "m")
    missing = SINGLES - len(counts)
    doubled = sorted(key for key, count in counts.items() if count != 1)
    assert doubled == [], f"counted twice: {doubled[:5]}"
    assert missing <= MISSING_ALLOWED[kind], f"{missing} messages missing"
    got = snapshot(state_redis, settings)
    if missing == 0:
        assert diff(expected, got) == []
        assert got == expected
    with fresh.sessions()() as session:
        from services.deadletters import store

        assert store.count(session) == 0
    app.close()
    print(
        f"{kind}: killed with {applied_at_kill} applied; {SINGLES - missing} of {SINGLES} "
        f"applied {recovered_s:.0f} s after the kill; {missing} missing, {len(doubled)} doubled"
    )
