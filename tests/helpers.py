"""Small helpers shared by test modules."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from celery import Celery

from services.core import dedupe, keys
from services.core.settings import Settings
from vigil_client.names import INGEST_MESSAGE, QUEUE_INGEST


def wait_for(predicate: Callable[[], Any], timeout: float = 120.0, what: str = "condition"):
    """Poll until ``predicate`` returns something truthy; the effect, not a sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def send_messages(app: Celery, payloads: list[dict[str, Any]], task: str = INGEST_MESSAGE) -> None:
    """Send each payload as its own task, as a frontend does with nothing but
    Celery and the README: queue ``ingest``, no answer kept, one producer."""
    with app.producer_or_acquire() as producer:
        for kwargs in payloads:
            app.send_task(
                task, kwargs=kwargs, queue=QUEUE_INGEST, producer=producer, ignore_result=True
            )


def send_plain(broker_url: str, payloads: list[dict[str, Any]]) -> None:
    """``send_messages`` from a Celery app that knows only the broker URL, as a
    frontend builds one."""
    app = Celery(broker=broker_url)
    try:
        send_messages(app, payloads)
    finally:
        app.close()


def capture_events(app, stop: threading.Event, out: list[dict[str, Any]]) -> threading.Thread:
    """Collect every Celery event ``app`` sees into ``out`` until ``stop`` is set."""
    ready = threading.Event()

    def run() -> None:
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={"*": out.append})
            ready.set()
            while not stop.is_set():
                try:
                    recv.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue
                except OSError:
                    continue

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


# What the ingest tasks pass to IngestService: the tasks a rejected item replays through.


# What the loopback detector answers when it is up: a valid detection body.
VALID_DETECTION = {
    "severity": "low",
    "crisis_score": 0.2,
    "phase": "watch",
    "risk_level": "low",
    "confidence": 0.6,
    "signals": {"primary": "loopback"},
}


class DetectorServer:
    """A real HTTP detector on 127.0.0.1 (HTTP/1.1, keep-alive) that answers
    ``answer`` (status, JSON body) and counts TCP connections and requests."""

    def __init__(self) -> None:
        self.answer: tuple[int, Any] = (200, VALID_DETECTION)
        self.connections_opened = 0
        self.connections_closed = 0
        self.message_ids: list[str] = []  # one per request, in arrival order
        # Called with each request's message id before it is answered.
        self.on_request: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/detect"

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.connections_opened, self.connections_closed

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: one connection serves many requests

            def handle(self) -> None:
                # A client killed mid-request (a test's point, sometimes) is no error here.
                with suppress(ConnectionResetError):
                    super().handle()

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections_opened += 1

            def finish(self) -> None:
                super().finish()
                with server._lock:
                    server.connections_closed += 1

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                message_id = body["message"]["message_id"]
                with server._lock:
                    server.message_ids.append(message_id)
                    status, answer = server.answer
                if server.on_request is not None:
                    server.on_request(message_id)
                raw = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_: Any) -> None:
                pass

        return Handler


def message_state(
    redis_client: redis.Redis,
    settings: Settings,
    platform: str,
    user_id: str,
    message_id: str,
    now: float | None = None,
) -> str | None:
    """``counted``, ``limited``, ``done`` or None for one message id."""
    raw = redis_client.hget(
        keys.message_dedupe(settings, platform, user_id), keys.dedupe_field(message_id)
    )
    return dedupe.decode(raw, settings, now)


def detection_state(
    redis_client: redis.Redis,
    settings: Settings,
    platform: str,
    user_id: str,
    detection_id: str,
    now: float | None = None,
) -> str | None:
    """``done`` or None for one detection id."""
    raw = redis_client.hget(
        keys.detection_dedupe(settings, platform, user_id), keys.dedupe_field(detection_id)
    )
    return dedupe.decode(raw, settings, now)


def recreate_vhost(vhost: str) -> None:
    """Delete and re-create a RabbitMQ vhost with a quorum default queue type
    (the README's production setup), guest allowed, when rabbitmqctl can: no
    queue declared in another form by an earlier run is left in it."""
    if vhost == "/" or shutil.which("rabbitmqctl") is None:
        return
    for argv in (
        ["rabbitmqctl", "delete_vhost", vhost],
        ["rabbitmqctl", "add_vhost", vhost, "--default-queue-type", "quorum"],
        ["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    ):
        subprocess.run(argv, capture_output=True, timeout=60, check=False)
