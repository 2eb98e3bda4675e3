"""Counters are exact across two worker processes and across a worker restart:
they live in Redis, not in any process."""

from __future__ import annotations

from tasks import names
from tests.builders import OMIT, message


def _batch(start: int, n: int) -> dict:
    return {
        "messages": [
            message(text="hello there friend", id=f"w{i}", user=f"{700 + i % 7}", guild=OMIT)
            for i in range(start, start + n)
        ]
    }


def _send_all(celery_app, batches: list[dict]) -> list[dict]:
    results = [
        celery_app.send_task(names.INGEST_MESSAGES, kwargs=b, ignore_result=False) for b in batches
    ]
    return [result.get(timeout=120) for result in results]


def _handled(celery_app, node: str) -> int:
    stats = celery_app.control.inspect(destination=[node], timeout=5).stats() or {}
    return int(stats.get(node, {}).get("total", {}).get(names.INGEST_MESSAGES, 0))


def test_counters_hold_across_two_workers_and_a_restart(
    celery_app, start_worker, state_redis, db, settings, scrape
):
    first = start_worker(concurrency=1, node_name="metrics-a@%h")
    second = start_worker(concurrency=1, node_name="metrics-b@%h")
    _send_all(celery_app, [_batch(i * 5, 5) for i in range(24)])  # 120 unique
    assert _handled(celery_app, first.node) > 0
    assert _handled(celery_app, second.node) > 0
    s = scrape()
    assert s[("vigil_messages_total", (("outcome", "accepted"),))] == 120

    first.stop()
    start_worker(concurrency=1, node_name="metrics-a@%h")
    # 10 new and 10 already seen, while one worker is the restarted one.
    _send_all(celery_app, [_batch(120, 10), _batch(110, 10)])
    s = scrape()
    assert s[("vigil_messages_total", (("outcome", "accepted"),))] == 130
    assert s[("vigil_messages_total", (("outcome", "duplicate"),))] == 10
