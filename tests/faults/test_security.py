"""Hostile transport and configuration: a pickle message, message text leaking
into logs, results or events, and a Redis that requires a password."""

from __future__ import annotations

import gc
import json
import os
import pickle
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from tests.builders import message
from tests.helpers import capture_events, message_state

from .conftest import BROKER_DB, STATE_DB, RedisServer, broker_drained, make_app, wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.faults

CANARY = "CANARY-5e1f0c hopeless and I want to die"


class _Trap:
    """Unpickling this creates a file: proof the body was (or was not) decoded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_message_is_refused_without_executing(fresh, app, procs, tmp_path):
    worker = procs.worker(app)
    trap = tmp_path / "unpickled"
    task_id = str(uuid.uuid4())
    body = (
        (),
        {**message(id="pickled", text=CANARY), "trap": _Trap(trap)},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    )
    headers = {
        "lang": "py",
        "task": "vigil.ingest.message",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "argsrepr": "()",
        "kwargsrepr": "{}",
        "origin": "faults",
    }
    with Connection(fresh.broker_url) as conn:
        conn.Producer().publish(
            body,
            serializer="pickle",
            exchange=Exchange("ingest"),
            routing_key="ingest",
            headers=headers,
            declare=[Queue("ingest", Exchange("ingest"), routing_key="ingest")],
        )
    wait_for(
        lambda: "untrusted content" in worker.log() or "ContentDisallowed" in worker.log(),
        timeout=60,
        what="the worker to refuse the pickle message",
    )
    # Still alive and working: a JSON message right after is processed.
    app.send_task("vigil.ingest.message", kwargs=message(id="after-pickle"), queue="ingest")
    state_redis = fresh.redis.client(STATE_DB)
    settings = fresh.settings()
    state = lambda mid: message_state(state_redis, settings, "discord", "u1", mid)  # noqa: E731
    wait_for(lambda: state("after-pickle") == "done", what="next message")
    wait_for(lambda: broker_drained(fresh), timeout=30, what="the pickle message gone")
    assert worker.alive
    assert not trap.exists(), "the pickle body was deserialised"
    assert state("pickled") is None
    log = worker.log()
    assert "CANARY-5e1f0c" not in log
    assert pickle.dumps(CANARY)[2:20].decode(errors="ignore") not in log


def test_canary_text_never_in_logs_results_events_or_envelopes(fresh, app, procs):
    worker = procs.worker(app)
    events: list[dict[str, Any]] = []
    stop = threading.Event()
    thread = capture_events(app, stop, events)
    # The receiver's queue exists once it captures: a heartbeat proves it does.
    wait_for(lambda: events, timeout=30, what="the event receiver to capture")

    single = app.send_task(
        "vigil.ingest.message",
        kwargs=message(id="canary-1", text=CANARY),
        queue="ingest",
        ignore_result=False,
    )
    batch = app.send_task(
        "vigil.ingest.messages",
        kwargs={
            "messages": [
                message(id="canary-2", text=CANARY),
                message(id="canary-3", text=CANARY, user="u2"),
                # Rejected: the reason must not echo the text back.
                message(id="canary-4", text=CANARY, user="bad:user"),
                {**message(id="canary-5", text=CANARY), "extra": CANARY},
            ]
        },
        queue="ingest",
        ignore_result=False,
    )
    rejected = app.send_task(
        "vigil.ingest.message",
        kwargs={**message(id="canary-6", text=CANARY), "sent_at": CANARY},
        queue="ingest",
        ignore_result=False,
    )
    results = [res.get(timeout=60) for res in (single, batch, rejected)]
    wait_for(lambda: broker_drained(fresh), timeout=30, what="tasks done")
    wait_for(
        lambda: sum(1 for e in events if e.get("type") == "task-succeeded") >= 3,
        timeout=30,
        what="task events",
    )
    stop.set()
    thread.join(10)

    assert results[0]["status"] == "accepted"
    assert results[1]["accepted"] == 2 and results[1]["rejected"] == 2
    assert results[2]["status"] == "rejected"
    needle = "CANARY-5e1f0c"
    assert needle not in json.dumps(results)
    assert events and needle not in json.dumps(events, default=str)
    received = [e for e in events if e.get("type") == "task-received"]
    assert received and all(needle not in str(e.get("kwargs")) for e in received)
    assert needle not in worker.log()
    state_redis = fresh.redis.client(STATE_DB)
    for _id, fields in state_redis.xrange(fresh.settings().stream_bond):
        assert needle not in fields["data"]
    for key in state_redis.scan_iter(match="celery-task-meta-*"):
        assert needle not in state_redis.get(key)
    # The history is where text belongs: the canary did reach the pipeline.
    assert any(needle in m for m in state_redis.zrange("ash:history:g1:u1", 0, -1))


def test_redis_with_password_end_to_end_and_wrong_password_named(fresh, procs, tmp_path):
    from services.core import health
    from services.core.settings import Settings

    password = "s3cret-" + uuid.uuid4().hex[:8]
    server = RedisServer(tmp_path / "redis-auth", password=password).start()
    try:
        secret = tmp_path / "redis_password"
        secret.write_text(password + "\n")
        plain_state = server.url(STATE_DB, with_password=False)
        plain_broker = server.url(BROKER_DB, with_password=False)
        app = make_app(server.url(BROKER_DB), server.url(STATE_DB))
        state_redis = server.client(STATE_DB)

        # Password from a secret file, URLs without one.
        env = fresh.env(
            VIGIL_REDIS_URL=plain_state,
            VIGIL_BROKER_URL=plain_broker,
            VIGIL_REDIS_PASSWORD_FILE=str(secret),
        )
        w1 = procs.worker(app, env=env)
        res = app.send_task(
            "vigil.ingest.message",
            kwargs=message(id="pw-file"),
            queue="ingest",
            ignore_result=False,
        )
        assert res.get(timeout=60)["status"] == "accepted"
        assert message_state(state_redis, fresh.settings(), "discord", "u1", "pw-file") == "done"
        w1.stop()

        # Password inside the URLs.
        env = fresh.env(VIGIL_REDIS_URL=server.url(STATE_DB), VIGIL_BROKER_URL=server.url(1))
        procs.worker(app, env=env)
        res = app.send_task(
            "vigil.ingest.message", kwargs=message(id="pw-url"), queue="ingest", ignore_result=False
        )
        assert res.get(timeout=60)["status"] == "accepted"

        # A wrong password is reported as such, naming the setting to fix.
        wrong = Settings(
            redis_url=plain_state,
            broker_url=plain_broker,
            redis_password="wrong",
            database_url=fresh.database_url,
            embedded="never",
        )
        checks = health.store_checks(wrong)
        for name in ("redis", "broker"):
            assert not checks[name]["ok"]
            assert "VIGIL_REDIS_PASSWORD" in checks[name]["error"]
            assert "authentication" in checks[name]["error"].lower()
        assert checks["postgres"]["ok"]
        # A worker started with it stops at once and says which setting to fix.
        bad = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-P", "solo"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **os.environ,
                **fresh.env(
                    VIGIL_REDIS_URL=plain_state,
                    VIGIL_BROKER_URL=plain_broker,
                    VIGIL_REDIS_PASSWORD="wrong",
                ),
            },
        )
        assert bad.returncode != 0
        assert "VIGIL_REDIS_PASSWORD" in bad.stdout + bad.stderr
        missing = Settings(redis_url=plain_state, database_url=fresh.database_url)
        assert "VIGIL_REDIS_PASSWORD" in health.check_redis(missing)["error"]
        app.close()
    finally:
        # A result unsubscribes from its answer when it is collected: let the
        # results (and the cycles that hold them) go while their server runs.
        res = None
        gc.collect()
        server.kill()
