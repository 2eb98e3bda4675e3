"""The asyncio client: a Discord bot's event loop must never wait on the broker.

Celery publishes synchronously (kombu sockets, publisher confirms on
RabbitMQ), so every send runs on one thread of this client's own; the loop
only awaits its result. One thread keeps the order of sends and one producer
connection, and a burst handed over as one call (``messages``) crosses to it
once rather than per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from vigil_client.client import VigilClient


class AsyncVigilClient:
    """``VigilClient`` for asyncio: the same sends, awaited.

    Use it as an async context manager (or call ``aclose``) so its thread and
    broker connections are released."""

    def __init__(
        self,
        broker_url: str | None = None,
        app: Celery | None = None,
        *,
        keep_results: bool = False,
        broker_transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.sync = VigilClient(
            broker_url,
            app,
            keep_results=keep_results,
            broker_transport_options=broker_transport_options,
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vigil-client")

    async def _run(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, partial(call, *args, **kwargs))

    async def connect(self) -> None:
        """Connect to the broker now, on the client's thread: the first connection
        imports the transport and builds the producer pool, which holds Python's
        interpreter lock for tens of milliseconds. ``async with`` calls it, so a
        bot pays that at start-up rather than on its first message."""
        await self._run(self.sync.connect)

    async def message(self, **fields: Any) -> AsyncResult:
        """Enqueue one message (``message_id`` is the idempotency key)."""
        return await self._run(self.sync.message, **fields)

    async def detection(self, **fields: Any) -> AsyncResult:
        return await self._run(self.sync.detection, **fields)

    async def messages(
        self, items: Iterable[dict[str, Any]], batch_size: int = 200
    ) -> list[AsyncResult]:
        """Enqueue many messages as batch tasks over one producer connection."""
        return await self._run(self.sync.messages, list(items), batch_size)

    async def aclose(self) -> None:
        await self._run(self.sync.app.close)
        self._thread.shutdown(wait=False)

    async def __aenter__(self) -> AsyncVigilClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
