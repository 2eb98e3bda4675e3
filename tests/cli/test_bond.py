"""``vigil bond show|list`` and ``vigil events``."""

from __future__ import annotations

from services.bonds import ledger
from tests.cli.conftest import msg


def test_bond_show_json_and_table(vigil, state_redis, settings, ingest):
    ingest.messages([msg(0, "hello"), msg(1)])
    data = vigil.json("bond", "show", "501")
    assert data["user_id"] == "501"
    assert data["phase"] == ledger.load(state_redis, settings, "501").phase != "dormant"
    assert data["rate_limit"] == {"allowed": True, "remaining": -1, "cap": 0, "count": 2}
    table = vigil("bond", "show", "501").stdout
    assert "phase" in table and "unlimited" in table


def test_bond_show_unknown_user_exits_1(vigil, state_redis):
    assert "no bond" in vigil("bond", "show", "nobody", code=1).stderr
    vigil("bond", "show", "nobody", "--json", code=1)


def test_bond_list_pages_until_cursor_is_zero(vigil, state_redis, ingest):
    ingest.messages([msg(i, "hi", user=f"u{i}") for i in range(30)])
    seen, cursor, sizes = set(), 0, []
    while True:
        page = vigil.json("bond", "list", "--limit", "7", "--cursor", str(cursor))
        seen |= {b["user_id"] for b in page["bonds"]}
        sizes.append(len(page["bonds"]))
        cursor = page["cursor"]
        if cursor == 0:
            break
    assert seen == {f"u{i}" for i in range(30)}
    assert all(7 <= size <= 10 for size in sizes[:-1]), sizes  # even pages
    assert "u1" in vigil("bond", "list", "--limit", "1000").stdout


def test_bond_list_rejects_bad_limit(vigil, state_redis):
    vigil("bond", "list", "--limit", "0", code=2)


def test_events_newest_first(vigil, state_redis, ingest):
    ingest.messages([msg(0, "ugh bad day"), msg(1, "i just want to die")])
    events = vigil.json("events", "501", "--limit", "10")
    assert {e["event_type"] for e in events} == {"phase_transition", "risk_change"}
    assert events[0]["timestamp"] >= events[-1]["timestamp"]
    assert "phase_transition" in vigil("events", "501").stdout
    vigil("events", "nobody", code=1)
