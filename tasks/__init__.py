"""Celery app and thin task entry points; the logic lives in ``services``."""

from tasks.app import app, running_under_flower

# Importing registers the tasks on the app.
from tasks import admin, ingest, periodic  # noqa: F401  isort: skip

if running_under_flower():
    # `celery -A tasks flower` imports this package before Flower reads its
    # options: make that Flower ask for a login and bind loopback. Only Flower
    # imports the guard and Flower's own option definitions.
    from worker import flower_guard

    flower_guard.install()

celery = app
__all__ = ["app", "celery"]
