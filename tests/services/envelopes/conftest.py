"""Redis clients shared by the envelope tests."""

from __future__ import annotations

import pytest
import redis

from services.core.clients import redis_url


@pytest.fixture
def redis_client(state_redis: redis.Redis) -> redis.Redis:
    """The suite's text client (conftest's ``r``)."""
    return state_redis


@pytest.fixture
def bytes_client(settings):
    """A bytes client on the same database, to write what a text client cannot."""
    client = redis.Redis.from_url(redis_url(settings))
    yield client
    client.close()
