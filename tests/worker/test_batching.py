"""Buffered ``vigil.ingest.message`` / ``.detection`` (worker/batching.py) on real
workers, with a private broker and state ``redis-server`` per test so a test
can stop the store or stall it while a buffer runs."""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange
from sqlalchemy import select

from models.tables import DeadLetter
from services.bonds import ledger
from services.core.settings import Settings
from stack.processes import RedisServer, WorkerProcess
from tasks import names
from tests import builders
from tests.conftest import start_test_worker
from tests.helpers import DetectorServer, capture_events, message_state, wait_for
from worker.batching import FlushScheduler

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@dataclass
class Private:
    broker: RedisServer
    state: RedisServer
    env: dict[str, str]
    settings: Settings
    app: Celery
    log_path: Path
    worker: WorkerProcess | None = None

    @property
    def state_redis(self) -> redis.Redis:
        return self.state.client()

    def start_worker(self, env: dict[str, str] | None = None, **options: Any) -> WorkerProcess:
        self.worker = start_test_worker(
            {**self.env, **(env or {})}, self.log_path, self.app, **options
        )
        return self.worker

    def send(self, kwargs: dict, task: str = names.INGEST_MESSAGE, **options):
        return self.app.send_task(task, kwargs=kwargs, queue=names.QUEUE_INGEST, **options)


@pytest.fixture
def private(tmp_path, test_env, db) -> Iterator[Private]:
    broker = RedisServer(tmp_path / "broker").start()
    state = RedisServer(tmp_path / "state").start()
    env = {**test_env, "VIGIL_REDIS_URL": state.url(0), "VIGIL_BROKER_URL": broker.url(0)}
    settings = Settings(
        redis_url=state.url(0),
        broker_url=broker.url(0),
        database_url=test_env["VIGIL_DATABASE_URL"],
        embedded="never",
    )
    app = Celery(f"frontend-{uuid.uuid4().hex[:6]}", broker=broker.url(0), backend=state.url(0))
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    setup = Private(broker, state, env, settings, app, tmp_path / "worker.log")
    try:
        yield setup
    finally:
        try:
            if setup.worker is not None:
                setup.worker.stop()
            gc.collect()  # AsyncResults unsubscribe on collection: while the state Redis is up
            app.close()
        finally:
            broker.stop()
            state.stop()


def message(message_id: str, user_id: str = "u1", text: str = "I feel so alone") -> dict:
    return builders.message(id=message_id, user=user_id, text=text)


def no_backend_sender(private: Private) -> Celery:
    """A frontend that does not wait on results: sending never touches the state Redis."""
    sender = Celery(f"frontend-{uuid.uuid4().hex[:6]}", broker=private.broker.url(0))
    sender.conf.update(task_serializer="json")
    return sender


def send_without_backend(sender: Celery, kwargs: dict) -> str:
    """Asks for a result (ignore_result false) without subscribing to it."""
    return sender.send_task(names.INGEST_MESSAGE, kwargs=kwargs, queue=names.QUEUE_INGEST).id


def dead_letters(db) -> list[DeadLetter]:
    with db() as session:
        return list(session.scalars(select(DeadLetter).order_by(DeadLetter.id)))


def daily_counts(private: Private, users: list[str]) -> dict[str, int]:
    return {
        user: ledger.load(private.state_redis, private.settings, user).daily_msg_count
        for user in users
    }


def test_each_request_keeps_its_own_result_and_dead_letter(private, db):
    """Good and hostile messages in one buffer: each gets its own answer, each
    hostile one its own dead letter under vigil.ingest.message; a resend is a duplicate."""
    private.start_worker()
    good = [message(f"good-{i}", user_id=f"u{i % 3}") for i in range(12)]
    hostile = [
        {**message("bad-extra"), "extra": "field"},
        {**message("bad-id"), "user_id": "a:b"},
        {**message("bad-text"), "text": "x" * 9000},
        {**message("bad-time"), "sent_at": "2026-11-22T10:00:00"},
        {"message_id": "bad-empty"},
    ]
    pending = [(payload, private.send(payload)) for payload in good + hostile]
    answers = {payload["message_id"]: result.get(timeout=60) for payload, result in pending}

    for payload in good:
        assert answers[payload["message_id"]]["status"] == "accepted"
        assert answers[payload["message_id"]]["message_id"] == payload["message_id"]
    for payload in hostile:
        answer = answers[payload["message_id"]]
        assert answer["status"] == "rejected" and answer["index"] == 0 and answer["reasons"]
    assert "alone" not in json.dumps(answers)

    letters = dead_letters(db)
    assert sorted(row.task_name for row in letters) == [names.INGEST_MESSAGE] * len(hostile)
    assert sorted(json.loads(row.payload)["message_id"] for row in letters) == sorted(
        payload["message_id"] for payload in hostile
    )
    counts = daily_counts(private, ["u0", "u1", "u2"])
    assert counts == {"u0": 4, "u1": 4, "u2": 4}

    again = [private.send(payload) for payload in good]
    assert {result.get(timeout=60)["status"] for result in again} == {"duplicate"}
    assert daily_counts(private, ["u0", "u1", "u2"]) == counts


def test_detection_requests_are_buffered_with_their_own_results(private, db):
    private.start_worker()
    detection = {
        "detection_id": "det-1",
        "platform": "discord",
        "user_id": "d1",
        "guild_id": "g1",
        "observed_at": T0.isoformat(),
        "severity": "medium",
        "crisis_score": 0.4,
        "phase": "concern",
        "risk_level": "medium",
        "confidence": 0.7,
    }
    good = private.send(detection, task=names.INGEST_DETECTION)
    bad = private.send({**detection, "detection_id": "det-2", "severity": "?"},
                       task=names.INGEST_DETECTION)  # fmt: skip
    assert good.get(timeout=60)["status"] == "accepted"
    assert bad.get(timeout=60)["status"] == "rejected"
    assert [row.task_name for row in dead_letters(db)] == [names.INGEST_DETECTION]
    assert ledger.load(private.state_redis, private.settings, "d1").phase == "concern"


def test_results_only_when_the_sender_asked(private, db):
    """A raw protocol-2 message has no ignore_result header: the task default (no
    result) applies. A Python sender's ignore_result=True is honoured too."""
    private.start_worker()
    raw_id = str(uuid.uuid4())
    with Connection(private.broker.url(0)) as conn:
        conn.Producer().publish(
            [[], message("raw-1"), {"callbacks": None, "errbacks": None, "chain": None,
                                    "chord": None}],
            exchange=Exchange(names.QUEUE_INGEST),
            routing_key=names.QUEUE_INGEST,
            serializer="json",
            headers={"task": names.INGEST_MESSAGE, "id": raw_id, "lang": "js"},
            declare=[],
        )  # fmt: skip
    ignored = private.send(message("py-ignored"), ignore_result=True)
    wanted = private.send(message("py-wanted"))
    assert wanted.get(timeout=60)["status"] == "accepted"
    wait_for(lambda: ledger.load(private.state_redis, private.settings, "u1").daily_msg_count == 3,
             what="all three applied")  # fmt: skip
    assert not private.state_redis.exists(f"celery-task-meta-{raw_id}")
    assert not private.state_redis.exists(f"celery-task-meta-{ignored.id}")


def test_buffer_with_store_down_is_retried_and_counted_once(private, db):
    private.start_worker()
    private.state.stop()
    sender = no_backend_sender(private)
    sent = [send_without_backend(sender, message(f"down-{i}")) for i in range(10)]
    sender.close()
    wait_for(lambda: "retrying each request" in private.worker.log(), timeout=60,
             what="the failed buffer retried")  # fmt: skip
    private.state.start()
    answers = [private.app.AsyncResult(task_id).get(timeout=120) for task_id in sent]
    assert {answer["status"] for answer in answers} == {"accepted"}
    assert ledger.load(private.state_redis, private.settings, "u1").daily_msg_count == 10
    assert dead_letters(db) == []


def pool_children(worker: WorkerProcess) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{worker.pid}/task").iterdir():
        children += [int(pid) for pid in (task / "children").read_text().split()]
    return children


def test_pool_child_killed_mid_buffer_loses_nothing(private, db):
    """The state Redis stalls (CLIENT PAUSE) while a buffer waits on it; its pool
    child is killed; the parent re-publishes every request and each is counted once."""
    private.start_worker()
    sender = no_backend_sender(private)
    private.state_redis.execute_command("CLIENT", "PAUSE", 4000, "ALL")
    sent = [send_without_backend(sender, message(f"kill-{i}", user_id="victim")) for i in range(20)]
    time.sleep(1.5)  # the buffer is flushed within 10 ms and blocks on the stalled store
    for pid in pool_children(private.worker):
        os.kill(pid, signal.SIGKILL)
    sender.close()
    answers = [private.app.AsyncResult(task_id).get(timeout=120) for task_id in sent]
    assert "lost in the pool" in private.worker.log()
    assert {answer["status"] for answer in answers} <= {"accepted", "duplicate"}
    assert ledger.load(private.state_redis, private.settings, "victim").daily_msg_count == 20
    entries = [json.loads(fields["data"]) for _, fields in
               private.state_redis.xrange(private.settings.stream_bond)]  # fmt: skip
    ids = [entry["envelope_id"] for entry in entries]
    assert len(ids) == len(set(ids))
    assert dead_letters(db) == []


@pytest.mark.parametrize("mode", ["per_request", "per_buffer"])
def test_task_events_per_request_or_per_buffer(private, mode):
    """VIGIL_INGEST_TASK_EVENTS: one task-succeeded per request, under its own id,
    or one per buffer, under an id of its own, counting the requests it ran."""
    private.start_worker({"VIGIL_INGEST_TASK_EVENTS": mode})
    events: list[dict] = []
    stop = threading.Event()
    thread = capture_events(private.app, stop, events)
    try:
        wait_for(lambda: events, timeout=30, what="the event receiver to capture")
        sender = no_backend_sender(private)
        sent = {
            send_without_backend(sender, message(f"ev-{i}", user_id=f"u{i}")) for i in range(30)
        }
        sender.close()
        wait_for(
            lambda: (
                ledger.load(private.state_redis, private.settings, "u29") is not None
                and all(
                    ledger.load(private.state_redis, private.settings, f"u{i}") for i in range(30)
                )
            ),
            timeout=60,
            what="every message applied",
        )

        def succeeded() -> list[dict]:
            return [
                e
                for e in events
                if e.get("type") == "task-succeeded" and e.get("name") == names.INGEST_MESSAGE
            ]

        if mode == "per_request":
            wait_for(lambda: {e["uuid"] for e in succeeded()} == sent, timeout=30, what="events")
            assert len(succeeded()) == 30
        else:
            wait_for(
                lambda: sum(e["buffered"] for e in succeeded()) == 30, timeout=30, what="events"
            )
            assert len(succeeded()) < 30
            assert not {e["uuid"] for e in succeeded()} & sent
            assert all(e["kwargs"].startswith("<buffer of ") for e in succeeded())
    finally:
        stop.set()
        thread.join(10)


def test_item_that_kills_its_pool_process_fails_no_other_request(private, db):
    """A message whose processing kills the pool process (here the detector
    kills it): its buffer is lost, every request is re-published to run alone,
    the others apply once each, and the poison item, lost again alone, is
    dead-lettered as worker_lost with its payload. The worker lives on."""
    poison = "poison-4"
    detector_server = DetectorServer()

    def kill_on_poison(message_id: str) -> None:
        if message_id == poison:
            for pid in pool_children(private.worker):
                os.kill(pid, signal.SIGKILL)

    detector_server.on_request = kill_on_poison
    try:
        private.start_worker(
            {"VIGIL_DETECTOR": "http", "VIGIL_DETECTOR_URL": detector_server.url}, concurrency=1
        )
        parent = private.worker.pid
        sender = no_backend_sender(private)
        users = [f"pu{i}" for i in range(10)]
        for i, user in enumerate(users):
            send_without_backend(sender, message(f"poison-{i}", user_id=user))
        sender.close()
        rows = wait_for(lambda: dead_letters(db), timeout=90, what="the poison item dead-lettered")
        others = [user for i, user in enumerate(users) if f"poison-{i}" != poison]
        wait_for(
            lambda: all(
                ledger.load(private.state_redis, private.settings, user) for user in others
            ),
            timeout=60,
            what="every other message applied",
        )
        assert [(row.task_name, row.reason) for row in rows] == [
            (names.INGEST_MESSAGE, "worker_lost")
        ]
        assert json.loads(rows[0].payload)["message_id"] == poison
        for user in others:
            assert ledger.load(private.state_redis, private.settings, user).daily_msg_count == 1
        # Never applied and, its user having no cap, never counted: a replay does both.
        poison_user = users[int(poison.split("-")[1])]
        state = message_state(private.state_redis, private.settings, "discord", poison_user, poison)
        assert (
            state is None
            and ledger.load(private.state_redis, private.settings, poison_user) is None
        )
        # Once in the full buffer, once alone; then never again.
        time.sleep(1)
        assert detector_server.message_ids.count(poison) == 2
        assert private.worker.pid == parent and private.worker.alive
        assert "lost in the pool" in private.worker.log()
    finally:
        detector_server.close()


def test_interval_flush_waits_while_the_pool_is_busy(private):
    """While the one pool process runs a slow buffer, messages that arrive are
    held and handed over together when it returns, not as a buffer per flush
    interval queued behind it; each is still applied once."""
    detector_server = DetectorServer()

    def slow_first(message_id: str) -> None:
        if message_id == "slow":
            time.sleep(1.0)

    detector_server.on_request = slow_first
    events: list[dict] = []
    stop = threading.Event()
    thread = None
    try:
        private.start_worker(
            {
                "VIGIL_DETECTOR": "http",
                "VIGIL_DETECTOR_URL": detector_server.url,
                "VIGIL_INGEST_TASK_EVENTS": "per_buffer",
            },
            concurrency=1,
        )
        thread = capture_events(private.app, stop, events)
        wait_for(lambda: events, timeout=30, what="the event receiver to capture")
        sender = no_backend_sender(private)
        send_without_backend(sender, message("slow", user_id="slow-user"))
        wait_for(lambda: "slow" in detector_server.message_ids, timeout=30, what="the slow buffer")
        # 30 messages over about 0.3 s, while the slow buffer holds the only process:
        # some 30 flush intervals pass.
        for i in range(30):
            send_without_backend(sender, message(f"held-{i}", user_id=f"held-{i}"))
            time.sleep(0.01)
        sender.close()
        wait_for(
            lambda: all(
                ledger.load(private.state_redis, private.settings, f"held-{i}") for i in range(30)
            ),
            timeout=60,
            what="every held message applied",
        )

        def buffers() -> list[int]:
            return [
                e["buffered"]
                for e in events
                if e.get("type") == "task-succeeded" and e.get("name") == names.INGEST_MESSAGE
            ]

        wait_for(lambda: sum(buffers()) == 31, timeout=30, what="every buffer's event")
        assert buffers()[0] == 1  # the slow one
        assert len(buffers()) <= 3, buffers()  # the 30 held ones: one buffer, or two at most
        assert detector_server.message_ids.count("held-0") == 1
    finally:
        stop.set()
        if thread is not None:
            thread.join(10)
        detector_server.close()


def test_flush_scheduler_holds_a_partial_buffer_only_while_the_pool_is_busy():
    scheduler = FlushScheduler(max_defer_s=0.5)
    assert not scheduler.hold(5, 100, processes=1, now=0.0)  # a process is free
    scheduler.handed_over()
    assert not scheduler.hold(100, 100, processes=1, now=0.0)  # full: goes anyway
    assert not scheduler.hold(0, 100, processes=1, now=0.0)  # nothing held
    assert scheduler.hold(5, 100, processes=1, now=1.0)  # waits for the busy process
    assert scheduler.hold(5, 100, processes=1, now=1.4)
    assert scheduler.returned()  # a flush waited: the caller flushes now
    assert not scheduler.hold(5, 100, processes=1, now=1.45)
    scheduler.handed_over()
    assert scheduler.hold(5, 100, processes=1, now=2.0)
    assert not scheduler.hold(5, 100, processes=1, now=2.6)  # bounded by max_defer_s
    assert not scheduler.returned()
    assert scheduler.in_pool == 0
    assert not scheduler.hold(5, 100, processes=2, now=3.0)
