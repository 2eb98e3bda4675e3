"""The Celery application. Start a worker with ``celery -A tasks worker``."""

from __future__ import annotations

from worker import signals
from worker.base import VigilCelery
from worker.signals import running_under_flower

app = VigilCelery("vigil")
app.config_from_object("celeryconfig")
signals.connect(app)

__all__ = ["app", "running_under_flower"]
