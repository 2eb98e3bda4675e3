"""The Celery application. Start a worker with ``celery -A tasks worker``."""

from __future__ import annotations

import click
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from services.core import health
from services.core.clients import close_all, reset_after_fork
from services.core.settings import get_settings
from services.ingest import detector
from tasks.base import VigilCelery

app = VigilCelery("vigil")
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_clients(**_: object) -> None:
    reset_after_fork()


@worker_process_shutdown.connect
def _close_clients(**_: object) -> None:
    detector.close_process_detectors()
    close_all()


@worker_init.connect
def _refuse_wrong_credentials(**_: object) -> None:
    """A wrong password never heals by retrying: stop at start-up and name the
    setting. Stores that are merely down are waited for, not refused."""

    settings = get_settings()
    for check in (health.check_redis, health.check_postgres):
        result = check(settings)
        if not result["ok"] and "authentication failed" in result["error"]:
            raise SystemExit(f"vigil worker not started: {result['error']}")


def running_under_flower() -> bool:
    """True when this process is ``celery ... flower`` (not worker, beat, inspect...)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.find_root().command.name != "celery":
        return False
    while ctx is not None:
        if ctx.info_name == "flower" or ctx.invoked_subcommand == "flower":
            return True
        ctx = ctx.parent
    return False
