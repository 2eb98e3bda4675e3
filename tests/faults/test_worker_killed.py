"""A worker killed with SIGKILL in the middle of a 10,000-message burst."""

from __future__ import annotations

import pytest

from .conftest import BROKER_DB, broker_drained, wait_for
from .helpers import burst, count_markers, diff, run_reference, send_burst, snapshot

pytestmark = pytest.mark.faults

BATCHES, PER_BATCH, SINGLES = 95, 100, 500


def test_kill9_mid_burst_loses_nothing_and_counts_nothing_twice(fresh, app, procs):
    batches, singles = burst(BATCHES, PER_BATCH, SINGLES)
    total = BATCHES * PER_BATCH + SINGLES
    assert total == 10_000
    expected = run_reference(fresh, batches, singles)
    settings = fresh.settings()
    r = fresh.redis.client()

    first = procs.worker(app)
    send_burst(app, batches, singles)
    wait_for(
        lambda: count_markers(r, settings).get("done", 0) >= 2_000,
        what="a fifth of the burst applied",
    )
    first.kill9()
    in_flight = fresh.redis.client(BROKER_DB).hlen("unacked")
    done_at_kill = count_markers(r, settings).get("done", 0)
    assert in_flight > 0, "the kill must land while tasks are delivered and unacked"
    assert done_at_kill < total, "the kill must land before the burst is over"

    procs.worker(app)
    wait_for(
        lambda: count_markers(r, settings).get("done", 0) == total,
        timeout=180,
        what="every message applied after redelivery",
    )
    wait_for(lambda: broker_drained(fresh), timeout=60, what="broker drained")

    got = snapshot(r, settings)
    assert count_markers(r, settings) == {"done": total}
    assert diff(expected, got) == []
    assert got == expected
    counted = sum(b["daily_msg_count"] for b in got["bonds"].values())
    assert counted == total
    with fresh.sessions()() as session:
        from services import deadletters

        assert deadletters.count(session) == 0
    print(f"killed with {done_at_kill} applied and {in_flight} unacked; all {total} after recovery")
