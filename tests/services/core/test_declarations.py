"""services/core/declarations.py on a real RabbitMQ with real workers: every
frontend the README describes (a Celery app configured with the broker URL
alone, celery-node, a raw AMQP publisher) and vigil's workers agree, whichever
starts first; a vhost holding vigil's earlier quorum queues on topic exchanges
is adopted, countdowns still arrive; a queue in a form workers cannot consume
is named by the worker, ``vigil health`` and the exporter while the others are
served.

Each test deletes and re-creates a vhost of its own (``vigil-amqp-*``) with
rabbitmqctl; without RabbitMQ and rabbitmqctl the tests skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
import pytest
from celery import Celery
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import level_name
from prometheus_client import generate_latest
from typer.testing import CliRunner

from cli.main import app as cli_app
from services.bonds import ledger
from services.core import declarations, health
from services.core.settings import get_settings
from services.metrics import collector
from stack.processes import WorkerProcess
from tasks import names
from tests import builders
from tests.conftest import ROOT
from tests.helpers import wait_for
from vigil_client import sender_app, task_queues
from worker import queues
from worker.base import VigilCelery

RABBIT = os.environ.get("VIGIL_TEST_RABBIT", "guest:guest@127.0.0.1:5672")
PER_SIDE = 200  # messages a plain Celery client sends before and after the workers start
NODE_COUNT = 20  # celery-node's send.js sends this many, to users node-user-0..2
RAW_COUNT = 10


def _rabbit_answers() -> bool:
    host, _, port = RABBIT.rpartition("@")[2].partition(":")
    try:
        socket.create_connection((host, int(port or 5672)), 1).close()
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(
    shutil.which("rabbitmqctl") is None or not _rabbit_answers(),
    reason="no RabbitMQ with rabbitmqctl on this machine",
)


def _ctl(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["rabbitmqctl", *argv], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def vhost() -> Iterator[Callable[..., str]]:
    """A fresh vhost of this test's own (deleted at the end); its URL."""
    made: list[str] = []

    def make(default_queue_type: str | None = None) -> str:
        name = f"vigil-amqp-{uuid.uuid4().hex[:8]}"
        _ctl("delete_vhost", name)
        extra = ["--default-queue-type", default_queue_type] if default_queue_type else []
        created = _ctl("add_vhost", name, *extra)
        assert created.returncode == 0, created.stderr
        _ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        made.append(name)
        return f"amqp://{RABBIT}/{name}"

    yield make
    for name in made:
        _ctl("delete_vhost", name)


def message(i: int, tag: str) -> dict[str, Any]:
    return builders.message(
        i,
        "anyone up for ranked tonight?",
        id=f"{tag}-{i}",
        user=f"{tag}-user-{i % 4}",
        guild="998877",
        sent_at=datetime.now(UTC).isoformat(),
        platform="discord",
        channel_id="5544",
    )


def counted(state_redis, settings, users: list[str]) -> int:
    bonds = [ledger.load(state_redis, settings, user) for user in users]
    return sum(b.daily_msg_count for b in bonds if b is not None)


def users(tag: str) -> list[str]:
    return [f"{tag}-user-{i}" for i in range(4)]


def plain_celery_sends(url: str, tag: str, start: int, count: int) -> None:
    """What the README's Python frontend does: a Celery app with the broker URL alone."""
    client = Celery(f"frontend-{tag}", broker=url)
    try:
        for i in range(start, start + count):
            client.send_task(
                names.INGEST_MESSAGE, kwargs=message(i, tag), queue="ingest", ignore_result=True
            )
    finally:
        client.close()


def raw_publishes(url: str, tag: str, start: int, count: int) -> None:
    """The README's raw AMQP frontend: declare as Celery does, publish persistent
    protocol-2 messages with publisher confirms."""
    parts = urlsplit(url)
    conn = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=parts.username,
        password=parts.password,
        virtual_host=unquote(parts.path[1:]) or "/",
        confirm_publish=True,
    )
    conn.connect()
    try:
        channel = conn.channel()
        channel.exchange_declare("ingest", "direct", durable=True, auto_delete=False)
        channel.queue_declare("ingest", durable=True, auto_delete=False)
        channel.queue_bind("ingest", "ingest", "ingest")
        for i in range(start, start + count):
            embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
            body = json.dumps([[], message(i, tag), embed])
            channel.basic_publish(
                amqp.Message(
                    body,
                    content_type="application/json",
                    content_encoding="utf-8",
                    delivery_mode=2,
                    application_headers={"task": names.INGEST_MESSAGE, "id": str(uuid.uuid4())},
                ),
                exchange="ingest",
                routing_key="ingest",
            )
    finally:
        conn.close()


def node_sends(url: str) -> None:
    """examples/node/send.js, as tests/examples/test_node.py runs it."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return
    from tests.examples.test_node import _installed, send

    try:
        workdir = _installed()
    except pytest.skip.Exception:
        return  # npm registry unreachable: the other frontends still run
    send(workdir, url, NODE_COUNT)


def node_runs() -> bool:
    return (ROOT / ".vigil" / "node-example" / ".installed").exists()


class Workers:
    def __init__(self, test_env: dict[str, str], tmp_path: Path) -> None:
        self.test_env = test_env
        self.tmp_path = tmp_path
        self.started: list[WorkerProcess] = []

    def start(self, url: str) -> WorkerProcess:
        worker = WorkerProcess(
            log_path=self.tmp_path / f"worker{len(self.started)}.log",
            env={**os.environ, **self.test_env, "VIGIL_BROKER_URL": url},
        )
        self.started.append(worker.start())
        pinger = sender_app(url)
        try:
            worker.wait_ready(pinger)
        finally:
            pinger.close()
        return worker


@pytest.fixture
def workers(test_env, migrated, tmp_path) -> Iterator[Workers]:
    started = Workers(test_env, tmp_path)
    yield started
    for worker in started.started:
        worker.stop()


def _all_frontends(url: str, tag: str, half: int) -> None:
    plain_celery_sends(url, tag, half * PER_SIDE, PER_SIDE)
    raw_publishes(url, f"{tag}-raw", half * RAW_COUNT, RAW_COUNT)
    node_sends(url)


@pytest.mark.parametrize("default_queue_type", [None, "quorum"])
def test_frontends_first_then_workers(vhost, workers, state_redis, settings, default_queue_type):
    url = vhost(default_queue_type)
    _all_frontends(url, "pre", 0)
    worker = workers.start(url)
    _all_frontends(url, "pre", 1)
    expected = 2 * PER_SIDE + 2 * RAW_COUNT + (2 * NODE_COUNT if node_runs() else 0)
    everyone = users("pre") + users("pre-raw") + [f"node-user-{i}" for i in range(3)]
    wait_for(
        lambda: counted(state_redis, settings, everyone) == expected,
        timeout=90,
        what=f"{expected} messages applied",
    )
    worker.check_alive()
    with Connection(url) as conn:
        found = declarations.probe(conn, names.QUEUES)
    kind = default_queue_type or "classic"
    assert all(f.queue == kind and f.exchange == "direct" for f in found), found


@pytest.mark.parametrize("default_queue_type", [None, "quorum"])
def test_workers_first_then_frontends(vhost, workers, state_redis, settings, default_queue_type):
    url = vhost(default_queue_type)
    worker = workers.start(url)
    _all_frontends(url, "post", 0)
    _all_frontends(url, "post", 1)
    expected = 2 * PER_SIDE + 2 * RAW_COUNT + (2 * NODE_COUNT if node_runs() else 0)
    everyone = users("post") + users("post-raw") + [f"node-user-{i}" for i in range(3)]
    wait_for(
        lambda: counted(state_redis, settings, everyone) == expected,
        timeout=90,
        what=f"{expected} messages applied",
    )
    worker.check_alive()
    # What the worker declared is what a plain client declares: it declares again.
    plain_celery_sends(url, "again", 0, 1)


def worker_app(url: str) -> Celery:
    """vigil's own app as a worker configures it, on this vhost."""
    app = VigilCelery(f"vigil-{uuid.uuid4().hex[:6]}", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(
        broker_url=url,
        broker_transport=None,  # celeryconfig chose vigil's Redis transport for the tests' Redis
        task_queues=task_queues(),
        broker_transport_options={"confirm_publish": True},
    )
    queues.adopt(app, names.QUEUES)
    return app


def countdown_arrives(app: Celery, state_redis, settings, tag: str, countdown: int = 3) -> float:
    """Send one message with a countdown as a retry does; seconds until applied."""
    sent = time.monotonic()
    app.send_task(names.INGEST_MESSAGE, kwargs=message(0, tag), countdown=countdown)
    wait_for(
        lambda: counted(state_redis, settings, users(tag)) == 1,
        timeout=60,
        what="the countdown message applied",
    )
    return time.monotonic() - sent


def test_quorum_queues_on_direct_exchanges_hold_countdowns_in_the_broker(
    vhost, workers, state_redis, settings
):
    url = vhost("quorum")
    workers.start(url)
    app = worker_app(url)
    try:
        assert queues.needs_vigil_delay(app.amqp.queues["ingest"])
        with Connection(url) as conn:

            def waiting_in_delay_queue() -> bool:
                # 6 s = 4 s in celery_delayed_2, then 2 s in celery_delayed_1.
                declared = conn.default_channel.queue_declare(queue=level_name(2), passive=True)
                return declared.message_count == 1

            sent = time.monotonic()
            app.send_task(names.INGEST_MESSAGE, kwargs=message(0, "delayed"), countdown=6)
            wait_for(waiting_in_delay_queue, timeout=3, what="the countdown in the broker")
            wait_for(
                lambda: counted(state_redis, settings, users("delayed")) == 1,
                timeout=60,
                what="the countdown message applied",
            )
            assert time.monotonic() - sent >= 5.5
    finally:
        app.close()


def test_earlier_quorum_queues_on_topic_exchanges_are_adopted(
    vhost, workers, state_redis, settings
):
    url = vhost()
    with Connection(url) as conn:
        for name in names.QUEUES:
            earlier = Queue(
                name,
                Exchange(name, type="topic", durable=True),
                routing_key=name,
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
            )
            earlier(conn.default_channel).declare()
    worker = workers.start(url)
    client = sender_app(url)
    # What a sender of vigil's own (CLI, demo) does on such a vhost: adopt, never redeclare.
    queues.adopt(client, names.QUEUES)
    try:
        for i in range(PER_SIDE):
            client.send_task(names.INGEST_MESSAGE, kwargs=message(i, "old"), ignore_result=True)
    finally:
        client.close()
    wait_for(
        lambda: counted(state_redis, settings, users("old")) == PER_SIDE,
        timeout=90,
        what=f"{PER_SIDE} messages applied",
    )
    app = worker_app(url)
    try:
        assert not queues.needs_vigil_delay(app.amqp.queues["ingest"])
        assert countdown_arrives(app, state_redis, settings, "old-retry") >= 2.5
    finally:
        app.close()
    worker.check_alive()
    with Connection(url) as conn:
        found = declarations.probe(conn, names.QUEUES)
    assert all(f.queue == "quorum" and f.exchange == "topic" for f in found), found


def test_a_queue_workers_cannot_consume_is_reported_and_the_others_served(
    vhost, workers, state_redis, settings, monkeypatch
):
    url = vhost()
    with Connection(url) as conn:
        conn.default_channel.queue_declare(
            queue=names.QUEUE_ADMIN,
            durable=True,
            auto_delete=False,
            arguments={"x-queue-type": "stream"},
        )
    worker = workers.start(url)
    plain_celery_sends(url, "served", 0, 20)
    wait_for(
        lambda: counted(state_redis, settings, users("served")) == 20,
        timeout=60,
        what="ingest served",
    )
    worker.check_alive()
    assert "queue 'admin' is a stream queue" in worker.log_path.read_text()
    assert "delete_queue admin" in worker.log_path.read_text()

    monkeypatch.setenv("VIGIL_BROKER_URL", url)
    get_settings.cache_clear()
    try:
        report = health.check_broker(get_settings())
        assert report["ok"] and len(report["problems"]) == 1
        assert "'admin' is a stream queue" in report["problems"][0]
        result = CliRunner().invoke(cli_app, ["health", "--json"], catch_exceptions=False)
        assert result.exit_code != 0
        assert "'admin' is a stream queue" in json.loads(result.stdout)["broker"]["problems"][0]
        scraped = generate_latest(
            collector.registry(collector.for_settings(get_settings(), names.QUEUES))
        ).decode()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert 'vigil_queue_unusable{queue="admin"} 1.0' in scraped
    assert 'vigil_queue_unusable{queue="ingest"} 0.0' in scraped
