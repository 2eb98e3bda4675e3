"""vigil_client's asyncio interface against a real worker: the loop keeps running
while a thousand messages go out, and the worker applies every one."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from services.core import dedupe, keys
from tests.helpers import wait_for
from vigil_client import AsyncVigilClient

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
MESSAGES = 1_000
# Longest the loop may go without running other coroutines while sending.
MAX_STALL_S = 0.010


async def _send_while_ticking(client: AsyncVigilClient) -> tuple[float, int]:
    """Send every message with awaits, while a ticker measures how long the loop
    ever went between its turns; returns (longest stall, sent)."""
    stalls: list[float] = []
    sending = True

    async def ticker() -> None:
        last = time.perf_counter()
        while sending:
            await asyncio.sleep(0)
            now = time.perf_counter()
            stalls.append(now - last)
            last = now

    ticks = asyncio.create_task(ticker())
    sent = 0
    for i in range(MESSAGES):
        await client.message(
            message_id=f"aio-{i}",
            user_id=f"aio-user-{i % 50}",
            guild_id="g1",
            text="anyone up for ranked tonight?",
            sent_at=T0 + timedelta(seconds=i),
        )
        sent += 1
    sending = False
    await ticks
    return max(stalls), sent


def test_asyncio_client_never_blocks_its_loop_and_every_message_applies(
    state_redis, settings, worker, test_env
):
    async def main() -> tuple[float, int]:
        async with AsyncVigilClient(test_env["VIGIL_BROKER_URL"]) as client:
            return await _send_while_ticking(client)

    longest, sent = asyncio.run(main())
    assert sent == MESSAGES
    assert longest < MAX_STALL_S, f"the loop stalled {longest * 1000:.1f} ms"

    def applied() -> int:
        done = 0
        for key in state_redis.scan_iter(match=keys.message_dedupe(settings, "*", "aio-user-*")):
            states = dedupe.states(state_redis, settings, key).values()
            done += sum(1 for state in states if state == "done")
        return done

    wait_for(lambda: applied() == MESSAGES, timeout=120, what="every message applied")
