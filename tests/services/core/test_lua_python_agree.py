"""What Lua and Python both know, run on both sides on the same cases: a new
bond's defaults, the dedupe hash's value encoding and window, the daily
roll-over. The scripts' helpers (_bond.lua) run here as the scripts run them."""

from __future__ import annotations

import json

import pytest

from models.bond import Bond
from services.core import dedupe, scripts

# The helpers, then a probe that calls one of them on JSON arguments.
PROBE = """
local op = ARGV[1]
local a = cjson.decode(ARGV[2])
if op == 'new_bond' then
  local bond = load_bond(KEYS[1], a.user_id, a.default_cap)
  return cjson.encode(bond)
elseif op == 'dedupe' then
  local out = {}
  for i, raw in ipairs(a.raws) do
    local state = dedupe_live(raw, a.d)
    out[i] = state or 'absent'
  end
  return cjson.encode(out)
elseif op == 'roll_day' then
  local out = {}
  for i, reset_at in ipairs(a.reset_ats) do
    local bond = {daily_msg_count = 5, daily_msg_reset_at = reset_at}
    out[i] = roll_day(bond, a.day_start) and bond.daily_msg_count or -1
  end
  return cjson.encode(out)
end
"""


def lua(state_redis, op: str, args: dict, key: str = "agree:none") -> object:
    body = scripts.source("_bond") + "\n" + PROBE
    return json.loads(state_redis.eval(body, 1, key, op, json.dumps(args)))


def test_a_new_bond_has_the_same_defaults(state_redis):
    state_redis.delete("agree:none")
    from_lua = lua(state_redis, "new_bond", {"user_id": "u1", "default_cap": 7})
    python = Bond(user_id="u1", daily_msg_cap=7).model_dump()
    # cjson writes empty tables as {}: an empty list and an empty object look alike.
    assert {k: (v or None) for k, v in from_lua.items()} == {
        k: (v or None) for k, v in python.items()
    }


@pytest.mark.parametrize("window_s", [1, 604_800])
def test_dedupe_values_mean_the_same_state(state_redis, settings, window_s):
    settings = settings.model_copy(update={"dedupe_window_s": window_s})
    now = 1_764_000_000.0
    d = dedupe.script_args(settings, now)["dedupe"]
    stamps = [
        dedupe.stamp(now, 0),
        dedupe.stamp(now - window_s, 0),  # exactly the window: gone
        dedupe.stamp(now - window_s + 0.001, 0),  # a millisecond inside
        dedupe.stamp(now - 10 * window_s, 3),
    ]
    raws = [str(s * 4 + code) for s in stamps for code in (1, 2, 3)] + ["junk", "0"]
    from_lua = lua(state_redis, "dedupe", {"raws": raws, "d": d})
    python = []
    for raw in raws:
        try:
            python.append(dedupe.decode(raw, settings, now) or "absent")
        except ValueError:
            python.append("absent")
    assert from_lua == python


def test_the_day_rolls_over_at_the_same_instant(state_redis):
    from services.core.keys import day_start

    now = 1_764_028_800.0  # a UTC midnight
    start = day_start(now)
    assert start == now and day_start(now - 0.5) == now - 86_400
    reset_ats = [start - 86_400, start - 1, start, start + 30]
    from_lua = lua(state_redis, "roll_day", {"reset_ats": reset_ats, "day_start": start})
    # Python: a count from before the day's start no longer counts.
    python = [0 if reset_at < start else -1 for reset_at in reset_ats]
    assert from_lua == python
