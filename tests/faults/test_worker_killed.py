"""A worker group killed with SIGKILL in the middle of a burst of 10,000 messages.

Run on both brokers vigil supports, with the shipped delivery settings, for
10,000 single-message tasks and for 100 ``vigil.ingest.messages`` tasks of 100
messages. With RabbitMQ the broker itself holds unacked deliveries and
redelivers them when the connection drops. With Redis, vigil's transport
records every task it fetches as unacked, and as owned by the worker, in the
same step as the pop (worker/broker.py), and puts back what a worker
silent for ``VIGIL_BROKER_OWNER_TIMEOUT`` held. Either way nothing may be lost,
nothing counted twice, and everything applied within 30 s of the kill.
"""

from __future__ import annotations

import threading
import time

import pytest

from services.core.settings import Settings
from services.deadletters import store

from .conftest import BROKER_DB, REFERENCE_DB, make_app, wait_for
from .helpers import burst, count_markers, diff, run_reference, send_burst, snapshot

pytestmark = pytest.mark.faults

RECOVERY_BOUND_S = 30
# (batch tasks, messages per batch task, single-message tasks)
SHAPES = {"singles": (0, 0, 10_000), "batches": (100, 100, 0)}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_kill9_mid_burst_loses_nothing_doubles_nothing_recovers_in_30s(fresh, procs, broker, shape):
    kind = broker["kind"]
    batch_count, per_batch, single_count = SHAPES[shape]
    total = batch_count * per_batch + single_count
    batches, singles = burst(batch_count, per_batch, single_count)
    expected = run_reference(fresh, batches, singles)
    settings = fresh.settings()
    # The workers run with the shipped delivery settings: nothing in env overrides them.
    assert not any(
        name.startswith(("VIGIL_VISIBILITY", "VIGIL_UNACKED", "VIGIL_BROKER_HEARTBEAT"))
        or name == "VIGIL_BROKER_OWNER_TIMEOUT"
        for name in fresh.env()
    )
    shipped = Settings()
    assert shipped.dead_worker_redelivery_bound_s < RECOVERY_BOUND_S
    state_redis = fresh.redis.client()
    app = make_app(broker["url"], fresh.state_url)
    env = fresh.env(VIGIL_BROKER_URL=broker["url"])
    applied = lambda: count_markers(state_redis, settings).get("done", 0)  # noqa: E731

    # The worker is up before the burst is sent (the batch path applies all of
    # it within about a second of a worker's start, before it answers a ping),
    # and the burst goes out from another thread while this one watches DBSIZE,
    # the cheap progress signal (a fifth of the keys the reference run left),
    # so the kill lands mid-burst however fast the worker is.
    fifth = fresh.redis.client(REFERENCE_DB).dbsize() // 5
    first = procs.worker(app, env=env)
    sender = threading.Thread(target=send_burst, args=(app, batches, singles))
    sender.start()
    deadline = time.monotonic() + 120
    while state_redis.dbsize() < fifth:
        assert time.monotonic() < deadline, "timed out waiting for a fifth of the burst"
        time.sleep(0.005)
    first.kill9()
    sender.join()
    killed_at = time.monotonic()
    applied_at_kill = applied()
    assert applied_at_kill < total, "the kill must land before the burst is over"
    if kind == "redis":
        in_flight = fresh.redis.client(BROKER_DB).hlen("unacked")
        assert in_flight > 0, "the kill must land while tasks are delivered and unacked"

    procs.worker(app, env=env)
    wait_for(
        lambda: applied() >= total,
        timeout=RECOVERY_BOUND_S,
        what=f"every message applied within {RECOVERY_BOUND_S} s of the kill",
    )
    recovered_s = time.monotonic() - killed_at
    wait_for(broker["drained"], timeout=60, what="broker drained after redelivery")

    got = snapshot(state_redis, settings)
    assert count_markers(state_redis, settings) == {"done": total}
    # Every bond's daily count, event list and history as a run without the kill
    # left them: a message applied twice would count twice.
    assert diff(expected, got) == []
    assert got == expected
    with fresh.sessions()() as session:
        assert store.count(session) == 0
    app.close()
    print(
        f"{kind}, {shape}: killed with {applied_at_kill} of {total} applied; all applied "
        f"{recovered_s:.1f} s after the kill; none missing, none doubled"
    )
