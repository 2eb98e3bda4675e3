"""The Celery application. Start a worker with ``celery -A tasks worker``."""

from __future__ import annotations

from celery.signals import worker_process_init, worker_process_shutdown

from tasks.base import VigilCelery

app = VigilCelery("vigil")
app.config_from_object("celeryconfig")


@worker_process_init.connect
def _fresh_clients(**_: object) -> None:
    from services.runtime import reset_after_fork

    reset_after_fork()


@worker_process_shutdown.connect
def _close_clients(**_: object) -> None:
    from services.runtime import close_all

    close_all()
