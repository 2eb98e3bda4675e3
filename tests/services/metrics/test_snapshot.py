"""Consumer-group lag on every supported Redis: XINFO's own figure on 7.x, the
counted one where XINFO has none (6.2), and both agree where both exist."""

from __future__ import annotations

import pytest
import redis

from services.core import scripts
from services.metrics.snapshot import LAG_COUNT_LIMIT, _group

STREAM = "vigil:test:lagstream"


def _xinfo(state_redis: redis.Redis, group: str) -> dict:
    return next(g for g in state_redis.xinfo_groups(STREAM) if g["name"] in (group, group.encode()))


@pytest.mark.parametrize("read", [0, 1, 999, 1000, 1001, 2500])
def test_counted_lag_is_the_entries_after_the_last_delivered_id(state_redis, read):
    total = 2500
    pipe = state_redis.pipeline(transaction=False)
    for i in range(total):
        pipe.xadd(STREAM, {"n": i})
    pipe.execute()
    state_redis.xgroup_create(STREAM, "g", id="0")
    if read:
        state_redis.xreadgroup("g", "c", {STREAM: ">"}, count=read)
    info = _xinfo(state_redis, "g")
    counted = scripts.run(
        state_redis, "stream_lag", [STREAM], [info["last-delivered-id"], LAG_COUNT_LIMIT]
    )
    assert counted == total - read
    capped = scripts.run(state_redis, "stream_lag", [STREAM], [info["last-delivered-id"], 700])
    assert capped == min(700, total - read)
    if "lag" in info:  # Redis 7: the server's own figure agrees
        assert info["lag"] == counted


def test_a_group_without_a_lag_field_gets_the_counted_lag(state_redis):
    for i in range(10):
        state_redis.xadd(STREAM, {"n": i})
    state_redis.xgroup_create(STREAM, "g", id="0")
    state_redis.xreadgroup("g", "c", {STREAM: ">"}, count=4)
    info = {k: v for k, v in _xinfo(state_redis, "g").items() if k not in ("lag", "entries-read")}
    group = _group(state_redis, STREAM, info)  # what Redis 6.2 replies
    assert (group.name, group.pending, group.lag) == ("g", 4, 6)


def test_a_deleted_unread_entry_still_leaves_a_lag(state_redis):
    """Redis 7 stops reporting a group's lag once an entry it has not read is
    deleted (as erasure does): the lag is counted instead of dropped."""
    ids = [state_redis.xadd(STREAM, {"n": i}) for i in range(10)]
    state_redis.xgroup_create(STREAM, "g", id="0")
    state_redis.xreadgroup("g", "c", {STREAM: ">"}, count=3)
    state_redis.xdel(STREAM, ids[5])
    group = _group(state_redis, STREAM, _xinfo(state_redis, "g"))
    assert group.lag == 6
