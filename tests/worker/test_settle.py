"""The one retry policy (worker/settle.py): the same waits for plain and buffered tasks."""

from __future__ import annotations

import random

from celery.utils.time import get_exponential_backoff_interval

from services.core.settings import get_settings
from tasks import app, names
from worker.batching import BufferedTask
from worker.settle import RETRY, RetryPolicy


def test_plain_and_buffered_tasks_share_the_policy():
    settings = get_settings()
    shipped = RetryPolicy(
        factor=2, maximum=settings.retry_backoff_max, max_retries=settings.retry_max_retries
    )
    assert shipped == RETRY
    plain = app.tasks[names.INGEST_MESSAGES]
    buffered = app.tasks[names.INGEST_MESSAGE]
    assert isinstance(buffered, BufferedTask)
    assert (plain.retry_backoff, plain.retry_backoff_max, plain.max_retries) == (
        RETRY.factor,
        RETRY.maximum,
        RETRY.max_retries,
    )
    assert plain.retry_jitter is True
    assert (buffered.retry_backoff_max, buffered.max_retries) == (RETRY.maximum, RETRY.max_retries)
    assert buffered.settler.policy is RETRY


def test_countdown_is_celerys_full_jitter_backoff_under_the_cap():
    policy = RetryPolicy(factor=2, maximum=30, max_retries=40)
    for retries in range(12):
        random.seed(retries)
        ours = policy.countdown(retries)
        random.seed(retries)
        assert ours == get_exponential_backoff_interval(2, retries, 30, full_jitter=True)
        assert 0 <= ours <= min(30, 2 * 2**retries)
    assert max(policy.countdown(20) for _ in range(200)) == 30
    assert not policy.exhausted(39) and policy.exhausted(40)
