"""What a worker, its pool processes and beat do at start and stop."""

from __future__ import annotations

import gc

import click
from celery import Celery
from celery.signals import (
    beat_init,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)

from services.core import health
from services.core.clients import close_all, reset_after_fork
from services.core.settings import get_settings
from services.ingest import detector
from vigil_client import is_amqp
from vigil_client.names import QUEUES
from worker import queues


def connect(app: Celery) -> None:
    """Connect the handlers below for ``app``'s processes."""

    @worker_init.connect(weak=False)
    @beat_init.connect(weak=False)
    def _adopt_broker_declarations(**_: object) -> None:
        """On RabbitMQ, take vigil's queues as the vhost holds them (created in
        the plain form when missing) before anything declares them; a queue in
        a form Celery cannot consume is named with its fix and left out, the
        others are served (worker/queues.py)."""
        if not is_amqp(app.conf.broker_url):
            return
        for found in queues.adopt(app, QUEUES):
            if found.problem:
                queues.log.error("vigil: %s", found.problem)


@worker_process_init.connect
def _fresh_clients(**_: object) -> None:
    reset_after_fork()


@worker_init.connect
@worker_ready.connect
@worker_process_init.connect
def _freeze_startup_objects(**_: object) -> None:
    """Put what start-up built (modules, the app, settings: about nine in ten
    of a worker's objects) out of the collector's reach. Unfrozen, every full
    collection walked some 140,000 objects, 70 to 120 ms on a 2-core machine
    during which the parent neither fetched, flushed nor acked: the p99 of
    enqueue to envelope at half load. Frozen objects are never freed, which
    is right for what lives as long as the process; pool children fork with
    the parent's frozen set and never write to its pages."""
    gc.collect()
    gc.freeze()


@worker_process_shutdown.connect
def _close_clients(**_: object) -> None:
    detector.close_process_detectors()
    close_all()


@worker_init.connect
def _refuse_unsafe_stores(**_: object) -> None:
    """A wrong password never heals by retrying, and a state Redis that evicts
    keys loses state silently: stop at start-up and name the setting to fix.
    Stores that are merely down are waited for, not refused."""

    settings = get_settings()
    for check in (health.check_redis, health.check_postgres):
        result = check(settings)
        if not result["ok"] and result.get("auth_failed"):
            raise SystemExit(f"vigil worker not started: {result['error']}")
        for problem in result.get("problems", ()):
            raise SystemExit(f"vigil worker not started: {problem}")


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
