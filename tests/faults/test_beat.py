"""Two beat processes on one schedule: redbeat's lock lets one send, the other
takes over when the first stops, and every slot runs once."""

from __future__ import annotations

import itertools
import re
from datetime import datetime

import pytest

from .conftest import broker_drained, wait_for

pytestmark = pytest.mark.faults

INTERVAL_S = 2
TASK = "vigil.periodic.correlate_multi_actor"
_SENT = re.compile(r"^\[(\S+ \S+): INFO/MainProcess\] Scheduler: Sending due task correlate-multi")
_RECEIVED = re.compile(rf"Task {re.escape(TASK)}\[([0-9a-f-]+)\] received")


def _sent_at(log: str) -> list[datetime]:
    out = []
    for line in log.splitlines():
        m = _SENT.match(line)
        if m:
            out.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"))
    return out


def test_two_beats_one_run_per_slot_and_failover(fresh, app, procs):
    env = fresh.env(VIGIL_CORRELATOR_INTERVAL_S=str(INTERVAL_S))
    worker = procs.worker(app, env=env)
    first = procs.beat(env=env)
    wait_for(lambda: len(_sent_at(first.log())) >= 2, timeout=60, what="the first beat sending")
    second = procs.beat(env=env)
    wait_for(lambda: len(_sent_at(first.log())) >= 6, timeout=60, what="more slots")
    assert _sent_at(second.log()) == [], "the second beat sent while the first held the lock"

    first.stop()  # graceful: redbeat releases its lock
    wait_for(
        lambda: len(_sent_at(second.log())) >= 3, timeout=90, what="the second beat taking over"
    )
    second.stop()
    wait_for(lambda: broker_drained(fresh), timeout=60, what="periodic queue drained")

    sent = sorted(_sent_at(first.log()) + _sent_at(second.log()))
    received = _RECEIVED.findall(worker.log())
    assert len(received) == len(set(received)), "a task id was delivered twice"
    assert len(received) == len(sent), (len(received), len(sent))
    # One send per slot: two beats sending would put sends a fraction of the
    # interval apart (the bound is loose on purpose; only doubles break it).
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sent)]
    assert min(gaps) >= INTERVAL_S * 0.5, gaps
    assert worker.alive
