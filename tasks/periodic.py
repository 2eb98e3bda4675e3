"""Periodic tasks (queue ``periodic``), scheduled by beat from ``celeryconfig.beat_schedule``."""

from tasks.app import app  # noqa: F401
