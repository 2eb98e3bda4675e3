"""Errors shared by services and tasks."""


class TransientError(Exception):
    """The operation may succeed if retried later (a store or detector is away)."""


class Rejected(Exception):
    """The payload can never succeed; it goes to the dead-letter store with its reasons."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons)[:500])
        self.reasons = reasons
