"""Celery app and thin task entry points; the logic lives in ``services``."""

from tasks.app import app

# Importing registers the tasks on the app.
from tasks import admin, ingest, periodic  # noqa: F401  isort: skip

celery = app
__all__ = ["app", "celery"]
