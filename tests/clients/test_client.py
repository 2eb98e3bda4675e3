"""vigil_client (the frontend client): queue declarations per broker, persistent messages, confirms.

The RabbitMQ test publishes through a vhost of its own, re-created with a
quorum default queue type (a shared vhost may hold the queues in another form).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection

from tasks import names
from tests import builders
from tests.helpers import recreate_vhost
from vigil_client import VigilClient, answer, is_amqp, sender_app, task_queues

AMQP_URL = os.environ.get(
    "VIGIL_TEST_CLIENT_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/vigil-amqp-client"
)


def test_amqp_queues_are_declared_as_plain_celery_declares_them():
    queues = {queue.name: queue for queue in task_queues()}
    assert set(queues) == set(names.QUEUES)
    plain = Celery("plain", broker="amqp://guest@rabbit:5672//", set_as_current=False)
    for name, queue in queues.items():
        # What a Celery app with the broker URL alone declares for queue=name.
        default = plain.amqp.queues[name]
        assert not queue.queue_arguments and not default.queue_arguments
        assert queue.durable and default.durable
        assert queue.exchange.type == default.exchange.type == "direct"
        assert queue.exchange.name == default.exchange.name == name
        assert queue.routing_key == default.routing_key == name
        assert queue.exchange.durable and default.exchange.durable


@pytest.mark.parametrize(
    ("url", "amqp"),
    [
        ("amqp://guest@h//", True),
        ("pyamqp://h", True),
        ("amqps://h", True),
        ("redis://h", False),
        ("redis+socket:///tmp/r.sock", False),
    ],
)
def test_is_amqp(url, amqp):
    assert is_amqp(url) is amqp


def test_sender_app_confirms_and_persists_on_rabbitmq():
    app = sender_app("amqp://guest@rabbit:5672//")
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.task_default_delivery_mode == "persistent"
    assert app.conf.task_queues == task_queues()
    redis_app = sender_app("redis://127.0.0.1:6379/1")
    assert "confirm_publish" not in redis_app.conf.broker_transport_options


def _rabbitmq_vhost() -> str:
    parts = urlsplit(AMQP_URL)
    try:
        socket.create_connection((parts.hostname, parts.port or 5672), 1).close()
    except OSError:
        pytest.skip(f"no RabbitMQ at {parts.hostname}:{parts.port}")
    vhost = parts.path.lstrip("/")
    recreate_vhost(vhost)
    return vhost


def test_client_publishes_persistent_messages_with_confirms():
    _rabbitmq_vhost()
    client = VigilClient(AMQP_URL)
    message_id = uuid.uuid4().hex
    try:
        with Connection(AMQP_URL) as conn:
            for queue in task_queues():
                queue(conn.default_channel).declare()
                queue(conn.default_channel).purge()
        client.message(message_id=message_id, user_id="u1", text="hello", sent_at=None)
        with client.app.connection_for_write() as conn:
            # The producer's channel is in confirm mode: publish waited for the broker.
            assert conn.transport_options.get("confirm_publish") is True
        with Connection(AMQP_URL) as conn:
            queue = task_queues()[0](conn.default_channel)
            assert queue.name == names.QUEUE_INGEST
            message = queue.get(no_ack=True)
            assert message is not None
            assert message.headers["task"] == names.INGEST_MESSAGE
            assert message.properties["delivery_mode"] == 2
            assert message.payload[1]["message_id"] == message_id
            # The vhost's default type made it a quorum queue, and declaring it
            # as plain Celery does (no x-queue-type) is still accepted.
            declared = conn.default_channel.queue_declare(
                queue=names.QUEUE_INGEST,
                durable=True,
                auto_delete=False,
                arguments={"x-queue-type": "quorum"},
            )
            assert declared.queue == names.QUEUE_INGEST
            task_queues()[0](conn.default_channel).declare()
    finally:
        client.app.close()


def _frontend(test_env: dict[str, str]) -> Celery:
    """A frontend as the README describes it: plain Celery, the broker URL and
    a result backend, nothing of vigil's."""
    return Celery(
        "frontend", broker=test_env["VIGIL_BROKER_URL"], backend=test_env["VIGIL_REDIS_URL"]
    )


def _message(i: int) -> dict:
    return builders.message(
        text="see you at the raid tonight",
        id=uuid.uuid4().hex,
        user=f"waiter{i % 7}",
        platform="discord",
    )


def _waited_past_apply(res: AsyncResult, wait: Callable[[AsyncResult], Any]) -> float:
    """Seconds between the later of (answer stored, wait began) and the answer in hand."""
    started = time.time()
    value = wait(res)
    got = time.time()
    assert isinstance(value, dict) and value["status"] == "accepted", value
    done = res.date_done.replace(tzinfo=res.date_done.tzinfo or UTC)
    return got - max(done.timestamp(), started)


def test_a_sender_waiting_on_buffered_answers_gets_each_within_100ms(
    worker, test_env, state_redis, db
):
    frontend = _frontend(test_env)
    try:
        sent = [
            frontend.send_task(names.INGEST_MESSAGE, kwargs=_message(i), queue="ingest")
            for i in range(10)
        ]
        waits = [_waited_past_apply(res, lambda r: answer(r, timeout=30)) for res in sent]
        assert max(waits) < 0.1, waits
    finally:
        frontend.close()


def test_answers_read_early_are_returned_at_once(worker, test_env, state_redis, db):
    """Ten buffered answers that arrive while the sender waits on a slow batch:
    ``answer`` returns each at once (``get`` alone would wait a second each)."""
    frontend = _frontend(test_env)
    try:
        slow = frontend.send_task(
            names.INGEST_MESSAGES,
            kwargs={"messages": [_message(i) for i in range(500)]},
            queue="ingest",
        )
        sent = [
            frontend.send_task(names.INGEST_MESSAGE, kwargs=_message(i), queue="ingest")
            for i in range(10)
        ]
        assert answer(slow, timeout=60)["accepted"] == 500
        waits = [_waited_past_apply(res, lambda r: answer(r, timeout=30)) for res in sent]
        assert max(waits) < 0.1, waits
    finally:
        frontend.close()
