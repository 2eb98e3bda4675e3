"""Admin tasks (queue ``admin``): what operators do through the CLI."""

from __future__ import annotations

import socket
import time
from typing import Any

from services import health
from services.runtime import get_redis
from services.settings import get_settings
from tasks.app import app


@app.task(name="vigil.admin.ping", ignore_result=False, time_limit=30, acks_late=False)
def ping() -> dict[str, Any]:
    """Prove a worker can reach its stores; records when this host last answered."""
    settings = get_settings()
    host = socket.gethostname()
    get_redis(settings).set(f"{settings.vigil_prefix}worker:last_ping:{host}", int(time.time()))
    return {"status": "ok", "host": host, "checks": health.store_checks(settings)}
