"""``vigil history``: per-guild messages (truncated), stats, guild overview, clear."""

from __future__ import annotations

from services.bonds import history
from tests.cli.conftest import SAD, msg


def test_history_of_one_guild_is_truncated_newest_first(vigil, state_redis, ingest):
    ingest.messages([msg(0), msg(1, SAD + " " + "x" * 300)])
    items = vigil.json("history", "501", "--guild", "g1")
    assert [m["message_id"] for m in items] == ["m1", "m0"]
    assert len(items[0]["message"]) <= 80 and items[0]["message"].endswith("\u2026")
    assert "hopeless" in vigil("history", "501", "--guild", "g1").stdout


def test_history_overview_stats_and_direct_messages(vigil, state_redis, ingest):
    ingest.messages([msg(0), msg(1, guild="g2"), msg(2, guild=None)])
    rows = vigil.json("history", "501")
    assert {row["guild_id"] for row in rows} == {"g1", "g2", None}
    assert [m["message_id"] for m in vigil.json("history", "501", "--dm")] == ["m2"]
    stats = vigil.json("history", "501", "--guild", "g2", "--stats")
    assert stats["total"] == 1 and sum(stats["by_severity"].values()) == 1
    assert "messages" in vigil("history", "501", "--guild", "g2", "--stats").stdout


def test_history_not_found_and_usage(vigil, state_redis):
    vigil("history", "501", "--guild", "g1", code=1)
    vigil("history", "501", code=1)
    vigil("history", "501", "--guild", "g1", "--dm", code=2)
    vigil("history", "clear", "501", code=2)  # which guild must be said


def test_history_clear_through_the_admin_queue(vigil, state_redis, settings, ingest, worker):
    ingest.messages([msg(0), msg(1), msg(2, guild="g2")])
    result = vigil("history", "clear", "501", "--guild", "g1")
    assert '"removed": 2' in result.stdout
    assert not history.exists(state_redis, settings, "g1", "501")
    assert history.count(state_redis, settings, "g2", "501") == 1
