"""``vigil demo`` with small numbers; its summary is checked against the stores."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from models.tables import DeadLetter
from services.attribution import service as attribution
from services.bonds import ledger
from services.envelopes import streams
from stack import demo

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def all_bonds(state_redis, settings) -> list:
    """Every bond, page by page, as ``vigil bond list`` reads them."""
    cursor, out = 0, []
    while True:
        cursor, page = ledger.list_bonds(state_redis, settings, cursor=cursor, count=500)
        out.extend(page)
        if cursor == 0:
            return out


def test_plan_has_every_role_and_no_text_outside_payloads():
    p = demo.plan(8, 60, seed=1, now=NOW, run_id="abc123")
    sent = [m for b in p.batches for m in b] + p.singles
    assert p.messages_sent == len(sent) >= 60
    assert p.caps and p.escalating and p.shared
    assert any(m.get("guild_id") is None for m in sent)
    assert any(m["user_id"] == "bad:user*" for m in sent)
    # Same seed, same feed.
    assert demo.plan(8, 60, seed=1, now=NOW, run_id="abc123").batches == p.batches


def test_demo_summary_matches_the_stores(vigil, state_redis, db, settings, worker):
    report = vigil.json("demo", "--users", "8", "--messages", "60", "--seed", "7")
    out = report["outcomes"]
    assert report["unfinished_tasks"] == 0
    assert sum(out.values()) == report["messages_sent"]
    assert out["accepted"] > 0
    assert out["rate_limited"] == len(report["capped_users"]) * (demo.CAPPED_MESSAGES - demo.CAP)
    assert out["rejected"] == 4
    assert out["duplicate"] >= 1
    assert report["detection_outcomes"] == {"accepted": report["detections_sent"]}

    # Stores agree with the outcomes.
    with db() as session:
        rows = session.scalars(select(DeadLetter)).all()
        assert len(rows) == out["rejected"], [(d.task_name, d.details, d.user_id) for d in rows]
        flagged = attribution.flagged_identities(session)
    env = report["envelopes"]
    assert env.get("message.rate_limited", 0) == out["rate_limited"]
    assert env.get("bond.phase_transition", 0) == report["phase_transitions"] > 0
    events = [
        e
        for b in all_bonds(state_redis, settings)
        for e in ledger.get_events(state_redis, settings, b.user_id, limit=500)
    ]
    assert sum(e.event_type == "phase_transition" for e in events) == report["phase_transitions"]
    for group in ("bond", "attribution"):
        entries = streams.read_latest(state_redis, settings, group, 10_000)
        for topic in streams.STREAM_TOPICS[group]:
            assert sum(e.topic == topic for _, e in entries) == env.get(topic, 0)
    assert len(flagged) == len(report["flagged_identities"]) == len(report["shared_accounts"])
    assert {u for f in report["flagged_identities"] for u in f["user_ids"]} == set(
        report["shared_accounts"]
    )
    assert env.get("attribution.profile.multi_actor_suspected", 0) == len(flagged)
    # An escalating user really climbed.
    top = ledger.load(state_redis, settings, report["escalating_users"][0])
    assert top is not None and top.phase in ("acute", "crisis")


def test_demo_table_shows_counts_and_where_to_look(vigil, state_redis, db, worker):
    out = vigil("demo", "--users", "6", "--messages", "30").stdout
    assert "rate-limited" in out and "flagged identities" in out
    assert "vigil tail bond" in out and "flower-password" in out
    for line in demo.ESCALATION + demo.SAFE_LINES + demo.MILD_LINES:
        assert line not in out


def test_demo_without_a_worker_exits_1(vigil, state_redis, db, settings, monkeypatch):
    # No worker on a broker db of its own: nothing answers the ping.
    empty = settings.model_copy(update={"broker_url": settings.redis_url.rsplit("/", 1)[0] + "/5"})
    monkeypatch.setattr("cli.demo.load_settings", lambda: empty)
    assert "no vigil worker" in vigil("demo", "--users", "4", "--messages", "20", code=1).stderr
