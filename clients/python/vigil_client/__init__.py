"""vigil's client for Python frontends: sends messages and detections by task
name, synchronously (``VigilClient``) or from asyncio (``AsyncVigilClient``).

Installable alone (``pip install ./clients/python``): it needs Celery and
nothing of vigil's worker.
"""

from vigil_client import names
from vigil_client.aio import AsyncVigilClient
from vigil_client.client import (
    VigilClient,
    answer,
    is_amqp,
    is_sentinel,
    plain_queue,
    publish_transport_options,
    sender_app,
    task_queues,
)

__all__ = [
    "AsyncVigilClient",
    "VigilClient",
    "answer",
    "is_amqp",
    "is_sentinel",
    "names",
    "plain_queue",
    "publish_transport_options",
    "sender_app",
    "task_queues",
]
