"""Redis restarted, then PostgreSQL stopped and started, under a running burst.

The same worker process must ride through both (reconnect, retry transient
errors with backoff) and end with exactly the state of a fault-free run.
"""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import func, select

from models.tables import DeadLetter, Observation
from tests.builders import detection, observation
from tests.helpers import send_messages

from .conftest import make_app, wait_for
from .helpers import burst, count_markers, diff, run_reference, send_burst, snapshot

pytestmark = pytest.mark.faults

# Enough that the restart lands mid-burst: the batch path applies up to about
# 8,000 messages a second here, so the whole burst takes a few seconds.
BATCHES, PER_BATCH, SINGLES, DETECTIONS = 300, 100, 300, 300
RECONNECT_S = 60


def _detections(n: int) -> list[dict]:
    return [
        detection(
            i,
            id=f"det{i}",
            user=f"du{i % 50}",
            guild_id="g1",
            message_id=f"dm{i}",
            severity="medium",
            crisis_score=0.4,
            observations=[
                observation("typing.cadence", 1.0 + i % 3, kind="numeric"),
                observation("client.locale", "en"),
            ],
        )
        for i in range(n)
    ]


def _only(snap: dict, prefix: str) -> dict:
    """The parts of a snapshot that belong to users whose ids start with ``prefix``."""

    def keep(user: str) -> bool:
        return user.startswith(prefix)

    out = {}
    for part, items in snap.items():
        if part == "stream":
            out[part] = {u: v for u, v in items.items() if keep(u)}
        elif part == "markers":
            out[part] = {
                k: v for k, v in items.items() if ":msg:" in k and keep(k.rsplit(":", 1)[-1])
            }
        else:
            out[part] = {k: v for k, v in items.items() if keep(k.rsplit(":", 1)[-1])}
    return out


def _retries(log: str) -> int:
    """Retries logged: Celery's for a plain task, worker/batching.py's for a buffer."""
    return log.count("Retry in") + log.count("retrying each request")


def test_redis_restart_and_postgres_restart_mid_burst(fresh, procs, broker):
    app = make_app(broker["url"], fresh.state_url)
    env = fresh.env(VIGIL_BROKER_URL=broker["url"])
    batches, singles = burst(BATCHES, PER_BATCH, SINGLES, tag="m")
    total = BATCHES * PER_BATCH + SINGLES
    expected = run_reference(fresh, batches, singles)
    dets = _detections(DETECTIONS)
    settings = fresh.settings()
    state_redis = fresh.redis.client()
    worker = procs.worker(app, env=env)
    pid = worker.proc.pid

    def done(at_least: int) -> bool:
        # A dead worker cannot make progress: fail now rather than at the timeout.
        assert worker.alive, "the worker exited"
        return count_markers(state_redis, settings).get("done", 0) >= at_least

    send_burst(app, batches, singles)
    wait_for(
        lambda: count_markers(state_redis, settings).get("done", 0) >= 1,
        timeout=60,
        what="the burst under way",
    )

    # Redis: stop (the append-only file is flushed) and start on the same port.
    fresh.redis.restart()
    before = count_markers(state_redis, settings).get("done", 0)
    assert before < total, "the restart must land before the burst is over"
    started = time.monotonic()
    wait_for(
        lambda: done(before + 1),
        timeout=RECONNECT_S,
        what="progress after the Redis restart",
    )
    redis_reconnect_s = time.monotonic() - started

    # PostgreSQL: fast shutdown, detections (which need it) arrive, start again.
    fresh.pg.stop()
    send_messages(app, dets, task="vigil.ingest.detection")
    wait_for(
        lambda: _retries(worker.log()) > 0, timeout=60, what="a retry while PostgreSQL is down"
    )
    time.sleep(2)
    fresh.pg.start()

    wait_for(lambda: done(total), timeout=240, what="every message applied")
    det_markers = lambda: count_markers(state_redis, settings, kind="det").get("done", 0)  # noqa: E731
    wait_for(lambda: det_markers() == DETECTIONS, timeout=240, what="every detection applied")
    wait_for(broker["drained"], timeout=120, what="broker drained")

    assert worker.alive and worker.proc.pid == pid, "the worker was not restarted"
    got = snapshot(state_redis, settings)
    assert count_markers(state_redis, settings) == {"done": total}
    assert diff(_only(expected, "m"), _only(got, "m")) == []
    assert _only(got, "m") == _only(expected, "m")
    assert sum(b["daily_msg_count"] for k, b in got["bonds"].items() if ":m" in k) == total
    # Each detection's two observations stored exactly once.
    with fresh.sessions()() as session:
        assert session.scalar(select(func.count()).select_from(Observation)) == 2 * DETECTIONS
        dead = session.scalars(select(DeadLetter)).all()
    # Nothing reported failed that in fact succeeded, nothing silently dropped.
    assert [(d.task_name, d.reason, json.loads(d.details)) for d in dead] == []
    log = worker.log()
    retries = _retries(log)
    assert retries > 0 and "OperationalError" in log
    assert "CANARY" not in log and "hopeless" not in log
    app.close()
    print(
        f"{broker['kind']}: redis reconnect {redis_reconnect_s:.1f} s, {retries} retries logged, "
        f"every message applied {time.monotonic() - started:.0f} s after the Redis restart"
    )
