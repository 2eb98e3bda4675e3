"""Celery app and thin task entry points; the logic lives in ``services``."""

from tasks.app import app
from tasks.flower_guard import install_if_flower

# Importing registers the tasks on the app.
from tasks import admin, ingest, periodic  # noqa: F401  isort: skip

# `celery -A tasks flower` imports this package before Flower reads its
# options: make that Flower ask for a login and bind loopback.
install_if_flower()

celery = app
__all__ = ["app", "celery"]
