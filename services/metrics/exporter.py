"""The HTTP side of the exporter: ``/metrics`` in Prometheus text format.

It binds loopback by default. Bound anywhere else it refuses to start without
a token (``VIGIL_METRICS_TOKEN`` or ``_FILE``), and then every request must
carry it: ``Authorization: Bearer <token>``, or basic auth with the token as
the password (Prometheus' ``authorization`` and ``basic_auth`` both work).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from prometheus_client.registry import CollectorRegistry

from services.core.network import is_loopback

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ExporterAuthError(RuntimeError):
    """The exporter would have been reachable off this machine without a token."""


def check_bind(address: str, token: str | None) -> None:
    if token is None and not is_loopback(address):
        raise ExporterAuthError(
            f"the metrics exporter binds {address}, off loopback: set VIGIL_METRICS_TOKEN "
            "(or VIGIL_METRICS_TOKEN_FILE) so scrapes must authenticate"
        )


def _presented_token(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        return value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def with_token(app: WsgiApp, token: str) -> WsgiApp:
    """``app`` behind the token; anything else gets 401 and no metrics."""
    expected = token.encode()

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        presented = _presented_token(environ.get("HTTP_AUTHORIZATION", ""))
        if presented is not None and hmac.compare_digest(presented.encode(), expected):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Basic realm="vigil metrics"')],
        )
        return [b"authentication required\n"]

    return guarded


def make_app(registry: CollectorRegistry, token: str | None) -> WsgiApp:
    app: WsgiApp = make_wsgi_app(registry)
    return with_token(app, token) if token else app


def start(
    registry: CollectorRegistry, address: str, port: int, token: str | None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on a daemon thread (port 0 picks a free one: read
    ``server.server_port``); stop with ``server.shutdown()``."""
    check_bind(address, token)
    server = make_server(
        address,
        port,
        make_app(registry, token),
        ThreadingWSGIServer,
        handler_class=_SilentHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="vigil-metrics", daemon=True)
    thread.start()
    return server, thread
