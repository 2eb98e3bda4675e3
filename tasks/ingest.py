"""Ingest tasks (queue ``ingest``): messages and detection results from frontends."""

from tasks.app import app  # noqa: F401
