"""Errors shared by services and tasks."""


class TransientError(Exception):
    """The operation may succeed if retried later (a store or detector is away)."""
