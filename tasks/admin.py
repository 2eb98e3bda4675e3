"""Admin tasks (queue ``admin``): what operators do through the CLI."""

from __future__ import annotations

import socket
import time
from typing import Any

from celery import current_task

from models.payloads import (
    AddNoteIn,
    ClearHistoryIn,
    EraseUserIn,
    ReplayIn,
    SetCapIn,
    reasons_of,
)
from services import bonds, deadletters, erasure, health, history
from services.runtime import get_redis, session_factory
from services.settings import get_settings
from tasks.app import app
from tasks.base import redact_kwargs


def _parse(task_name: str, model, payload: dict[str, Any]):
    """Validate or dead-letter; returns (model, None) or (None, rejected outcome)."""
    try:
        return model.model_validate(payload), None
    except ValueError as exc:
        reasons = reasons_of(exc)
        with session_factory(get_settings())() as session, session.begin():
            deadletters.store(
                session, task_name=task_name, reason="rejected", details=reasons, payload=payload
            )
        return None, {"status": "rejected", "reasons": reasons}


def _request_id() -> str:
    return str(current_task.request.id or time.time_ns())


@app.task(name="vigil.admin.ping", ignore_result=False, time_limit=30, acks_late=False)
def ping() -> dict[str, Any]:
    """Prove a worker can reach its stores; records when this host last answered."""
    settings = get_settings()
    host = socket.gethostname()
    get_redis(settings).set(f"{settings.vigil_prefix}worker:last_ping:{host}", int(time.time()))
    return {"status": "ok", "host": host, "checks": health.store_checks(settings)}


@app.task(name="vigil.admin.set_cap", ignore_result=False, time_limit=30)
def set_cap(**payload: Any) -> dict[str, Any]:
    args, rejected = _parse("vigil.admin.set_cap", SetCapIn, payload)
    if rejected:
        return rejected
    s = get_settings()
    bond = bonds.set_cap(get_redis(s), s, args.user_id, args.cap, request_id=_request_id())
    return {"status": "ok", "user_id": args.user_id, "cap": bond.daily_msg_cap}


@app.task(name="vigil.admin.add_note", ignore_result=False, time_limit=30)
def add_note(**payload: Any) -> dict[str, Any]:
    args, rejected = _parse("vigil.admin.add_note", AddNoteIn, payload)
    if rejected:
        return rejected
    s = get_settings()
    bond = bonds.add_note(get_redis(s), s, args.user_id, args.note, request_id=_request_id())
    return {"status": "ok", "user_id": args.user_id, "notes": len(bond.notes)}


@app.task(name="vigil.admin.clear_history", ignore_result=False, time_limit=30)
def clear_history(**payload: Any) -> dict[str, Any]:
    args, rejected = _parse("vigil.admin.clear_history", ClearHistoryIn, payload)
    if rejected:
        return rejected
    s = get_settings()
    removed = history.clear(get_redis(s), s, args.guild_id, args.user_id)
    return {"status": "ok", "user_id": args.user_id, "guild_id": args.guild_id, "removed": removed}


@app.task(name="vigil.admin.erase_user", ignore_result=False, time_limit=600)
def erase_user(**payload: Any) -> dict[str, Any]:
    args, rejected = _parse("vigil.admin.erase_user", EraseUserIn, payload)
    if rejected:
        return rejected
    s = get_settings()
    return erasure.erase_user(
        get_redis(s),
        s,
        session_factory(s),
        user_id=args.user_id,
        platform=args.platform,
        request_id=_request_id(),
    )


@app.task(name="vigil.admin.replay_dead_letters", ignore_result=False, time_limit=300)
def replay_dead_letters(**payload: Any) -> dict[str, Any]:
    """Send dead-lettered payloads again, under their original task names."""
    args, rejected = _parse("vigil.admin.replay_dead_letters", ReplayIn, payload)
    if rejected:
        return rejected
    replayed = []
    with session_factory(get_settings())() as session, session.begin():
        for row_id, task_name, body in deadletters.take_for_replay(session, args.ids):
            if task_name not in app.tasks or not isinstance(body, dict):
                continue
            app.send_task(task_name, kwargs=body, argsrepr="()", kwargsrepr=redact_kwargs(body))
            replayed.append(row_id)
    return {"status": "ok", "replayed": replayed}
