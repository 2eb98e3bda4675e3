"""The scrape-time reads on real PostgreSQL: right counts, and served by indexes."""

from __future__ import annotations

from sqlalchemy import text

from services.deadletters import store
from services.metrics import queries


def _dead_letters(db, rows: list[tuple[str, str]]) -> None:
    with db() as session, session.begin():
        for task_name, reason in rows:
            store.add(session, task_name=task_name, reason=reason, details=[], payload={})


def test_dead_letters_are_counted_by_task_and_reason(db):
    _dead_letters(db, [("t.a", "invalid")] * 3 + [("t.a", "worker_lost"), ("t.b", "invalid")])
    with db() as session:
        gauges = queries.store_gauges(session)
    assert gauges.dead_letters == [
        ("t.a", "invalid", 3),
        ("t.a", "worker_lost", 1),
        ("t.b", "invalid", 1),
    ]


def test_the_dead_letter_gauge_reads_the_task_reason_index(db):
    """The gauge runs at every scrape, so it must not read the table however
    many dead letters pile up (the planner is told to avoid a table scan; with
    no usable index it would still scan)."""
    _dead_letters(db, [(f"t.{i % 7}", f"r{i % 3}") for i in range(500)])
    with db() as session, session.begin():
        session.execute(text("ANALYZE dead_letters"))
        session.execute(text("SET LOCAL enable_seqscan = off"))
        gauge_sql = queries.DEAD_LETTER_COUNTS.compile(session.get_bind())
        plan = session.execute(text(f"EXPLAIN {gauge_sql}")).scalars()
        assert "ix_dead_letters_task_name_reason" in "\n".join(plan)
