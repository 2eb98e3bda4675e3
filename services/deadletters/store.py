"""Dead-letter store: payloads that can never succeed, kept with their reasons.

Message text stays in the stored payload (replay needs it) but never leaves
it: listings show ids and sizes only, erasure deletes a user's rows, and rows
older than the retention period are purged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from models.payloads import ID_PATTERN
from models.tables import DeadLetter
from services.metrics.counters import Counter

logger = logging.getLogger(__name__)

MAX_PAYLOAD_CHARS = 256 * 1024

# A rejected payload and why: what ``reject`` keeps.
Rejected = tuple[Any, list[str]]


def _encode(payload: Any) -> tuple[str, bool]:
    try:
        # ensure_ascii keeps NULs and lone surrogates storable in a text column.
        raw = json.dumps(payload, ensure_ascii=True, default=repr)
    except (ValueError, RecursionError):
        raw = json.dumps({"unserialisable": repr(payload)[:MAX_PAYLOAD_CHARS]})
    if len(raw) > MAX_PAYLOAD_CHARS:
        return raw[:MAX_PAYLOAD_CHARS], True
    return raw, False


def _user_of(payload: Any) -> str | None:
    # Only a valid id can name a user to erase; anything else (lone surrogates,
    # NUL, injection-shaped strings) stays inside the escaped payload, where
    # PostgreSQL can store it.
    if isinstance(payload, dict):
        uid = payload.get("user_id")
        if isinstance(uid, int) and not isinstance(uid, bool) and uid >= 0:
            uid = str(uid)
        if isinstance(uid, str) and re.fullmatch(ID_PATTERN, uid):
            return uid
    return None


def add(
    session: Session,
    *,
    task_name: str,
    reason: str,
    details: list[str],
    payload: Any,
    user_id: str | None = None,
) -> int:
    raw, truncated = _encode(payload)
    row = DeadLetter(
        task_name=task_name[:200],
        reason=reason[:200],
        details=json.dumps([d[:500] for d in details[:50]]),
        payload=raw,
        payload_truncated=truncated,
        user_id=user_id or _user_of(payload),
    )
    session.add(row)
    session.flush()
    return row.id


def reject(
    sessions: sessionmaker[Session],
    task_name: str,
    rejected: Sequence[Rejected],
    *,
    counter: Counter | None = None,
) -> None:
    """The one path for payloads that can never succeed: each is kept with its
    reasons under ``task_name``, the task that takes that payload on replay.

    ``counter`` (a pipeline counter) is incremented once for the whole batch,
    after the rows are committed."""
    if not rejected:
        return
    with sessions() as session, session.begin():
        for payload, reasons in rejected:
            add(session, task_name=task_name, reason="rejected", details=reasons, payload=payload)
    if counter is not None:
        counter.add(len(rejected))


def keep_failed(
    sessions: sessionmaker[Session],
    task_name: str,
    task_id: str | None,
    reason: str,
    exc: BaseException,
    payload: Any,
) -> bool:
    """The one path for a task that failed for good: its payload is kept with the
    error's type and a short message (our own exceptions carry no text; foreign
    ones are cut short). False when the store itself is away: that is logged."""
    try:
        with sessions() as session, session.begin():
            add(
                session,
                task_name=task_name,
                reason=reason,
                details=[f"{type(exc).__name__}: {str(exc)[:300]}"],
                payload=payload,
            )
    except (OperationalError, DBAPIError):
        logger.error("dead-letter store unavailable; %s[%s] payload not kept", task_name, task_id)
        return False
    return True


def summary(row: DeadLetter) -> dict[str, Any]:
    """A row as operators see it: no payload, so no message text."""
    return {
        "id": row.id,
        "task_name": row.task_name,
        "reason": row.reason,
        "details": json.loads(row.details),
        "user_id": row.user_id,
        "payload_chars": len(row.payload),
        "payload_truncated": row.payload_truncated,
        "created_at": row.created_at.isoformat(),
        "replayed_at": row.replayed_at.isoformat() if row.replayed_at else None,
        "replay_count": row.replay_count,
    }


def list_rows(
    session: Session, *, limit: int = 50, task_name: str | None = None, pending_only: bool = False
) -> list[DeadLetter]:
    stmt = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if task_name:
        stmt = stmt.where(DeadLetter.task_name == task_name)
    if pending_only:
        stmt = stmt.where(DeadLetter.replayed_at.is_(None))
    return list(session.scalars(stmt))


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(DeadLetter)) or 0


# Why replay did not send a requested row.
SKIP_NOT_FOUND = "not found, or being replayed by another request"
SKIP_TRUNCATED = "payload was truncated when stored"
SKIP_NOT_AN_OBJECT = "payload is not a JSON object"


def lock_for_replay(
    session: Session, ids: list[int]
) -> tuple[list[tuple[int, str, dict[str, Any]]], list[dict[str, Any]]]:
    """Lock the requested rows for the caller's transaction and split them into
    what can be sent, as (id, task name, kwargs), and every other id with why.

    Marks nothing: the caller marks only what it actually sent (``mark_replayed``),
    so a row that cannot be sent stays pending for an operator to see.
    """
    rows = session.scalars(
        select(DeadLetter)
        .where(DeadLetter.id.in_(ids))
        .order_by(DeadLetter.id)
        .with_for_update(skip_locked=True)
    ).all()
    sendable: list[tuple[int, str, dict[str, Any]]] = []
    skipped: list[dict[str, Any]] = []
    for row in rows:
        if row.payload_truncated:
            skipped.append({"id": row.id, "reason": SKIP_TRUNCATED})
            continue
        kwargs = json.loads(row.payload)
        if isinstance(kwargs, dict):
            sendable.append((row.id, row.task_name, kwargs))
        else:
            skipped.append({"id": row.id, "reason": SKIP_NOT_AN_OBJECT})
    locked = {row.id for row in rows}
    skipped += [{"id": i, "reason": SKIP_NOT_FOUND} for i in dict.fromkeys(ids) if i not in locked]
    return sendable, skipped


def mark_replayed(session: Session, ids: list[int]) -> None:
    """Record that these rows were sent again."""
    if ids:
        session.execute(
            update(DeadLetter)
            .where(DeadLetter.id.in_(ids))
            .values(replayed_at=func.now(), replay_count=DeadLetter.replay_count + 1)
        )


def purge(
    session: Session, *, ids: list[int] | None = None, older_than_days: int | None = None
) -> int:
    stmt = delete(DeadLetter)
    if ids is not None:
        stmt = stmt.where(DeadLetter.id.in_(ids))
    if older_than_days is not None:
        cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
        stmt = stmt.where(DeadLetter.created_at < cutoff)
    return session.execute(stmt).rowcount or 0


def erase_user(session: Session, user_id: str) -> int:
    return session.execute(delete(DeadLetter).where(DeadLetter.user_id == user_id)).rowcount or 0
