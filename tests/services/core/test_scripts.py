"""The Lua helpers shared by every bond script (services/core/redis_scripts/_bond.lua)."""

from __future__ import annotations

import pytest

from models.envelopes import ENVELOPE_ID_NAMESPACE, envelope_id
from services.core import scripts

# Runs _bond.lua's own envelope_id on arbitrary bytes, with the namespace as
# run_batch sets it.
_ENVELOPE_ID_PROBE = """
envelope_ns = ARGV[1]:gsub('..', function(c) return string.char(tonumber(c, 16)) end)
return envelope_id(ARGV[2], ARGV[3])
"""


@pytest.mark.parametrize(
    "cause",
    [
        "vigil:seen:msg:discord:m1",
        "",
        "ünïcødé-💬",
        'quote"back\\slash',
        "unit\x1fsep",
        "nul\x00byte",
        "x" * 5000,
    ],
)
def test_lua_envelope_id_is_the_python_uuid5(state_redis, cause):
    probe = scripts.source("_bond") + _ENVELOPE_ID_PROBE
    for topic in ("bond.phase_transition", "bond.risk_change", "message.rate_limited"):
        from_lua = state_redis.eval(probe, 0, ENVELOPE_ID_NAMESPACE.hex, cause, topic)
        assert from_lua == envelope_id(cause, topic)


def test_batch_items_read_shared_arguments_as_defaults_and_errors_stay_per_item(
    state_redis, settings
):
    """run_batch: an item's own field wins over the shared one, a missing one
    falls back to it, and one item that raises does not stop the others."""
    body = (
        scripts.source("_bond")
        + """
local function item(a, key)
  if a.boom then error('boom') end
  return {key, tostring(a.now), a.label}
end
return run_batch(item, 1)
"""
    )
    reply = state_redis.eval(
        body,
        3,
        "k1",
        "k2",
        "k3",
        '[{"label": "own"}, {"boom": true}, {"now": 7}]',
        "",
        '{"now": 5, "label": "shared"}',
    )
    assert reply[0] == ["k1", "5", "own"]
    assert reply[1][0] == "error" and "boom" in reply[1][1]
    assert reply[2] == ["k3", "7", "shared"]
