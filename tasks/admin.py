"""Admin tasks (queue ``admin``): what operators do through the CLI.

Each takes JSON kwargs validated by its model in ``models.payloads``; an
invalid request is answered ``rejected`` and kept in the dead-letter store.
Admin tasks store their result, so the CLI can wait for the answer.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable
from typing import Any

from celery import current_task
from pydantic import BaseModel

from models.payloads import (
    AddNoteIn,
    ClearHistoryIn,
    EraseUserIn,
    ReplayIn,
    SetCapIn,
    reasons_of,
)
from services.bonds import history, ledger
from services.core import health
from services.core.clients import get_redis, session_factory
from services.core.settings import Settings, get_settings
from services.deadletters import store
from services.erasure import service as erasure_service
from tasks import names
from tasks.app import app
from worker import settle
from worker.redact import redact_kwargs

Handler = Callable[[Any, Settings], dict[str, Any]]


def admin_task(name: str, model: type[BaseModel], **opts: Any) -> Callable[[Handler], Any]:
    """Register ``fn(args, settings)`` as a task taking ``model``'s fields as kwargs."""

    def register(fn: Handler):
        @functools.wraps(fn)
        def run(**payload: Any) -> dict[str, Any]:
            try:
                args = model.model_validate(payload)
            except ValueError as exc:
                reasons = reasons_of(exc)
                settle.reject(name, [(payload, reasons)])
                return {"status": "rejected", "reasons": reasons}
            return fn(args, get_settings())

        return app.task(name=name, ignore_result=False, **opts)(run)

    return register


def _request_id() -> str:
    return str(current_task.request.id or time.time_ns())


@app.task(name=names.ADMIN_PING, ignore_result=False, acks_late=False)
def ping() -> dict[str, Any]:
    """Prove a worker can reach its stores; records when this host last answered."""
    settings = get_settings()
    host = socket.gethostname()
    get_redis(settings).set(f"{settings.vigil_prefix}worker:last_ping:{host}", int(time.time()))
    return {"status": "ok", "host": host, "checks": health.store_checks(settings)}


@admin_task(names.ADMIN_SET_CAP, SetCapIn)
def set_cap(args: SetCapIn, settings: Settings) -> dict[str, Any]:
    bond = ledger.set_cap(
        get_redis(settings), settings, args.user_id, args.cap, request_id=_request_id()
    )
    return {"status": "ok", "user_id": args.user_id, "cap": bond.daily_msg_cap}


@admin_task(names.ADMIN_ADD_NOTE, AddNoteIn)
def add_note(args: AddNoteIn, settings: Settings) -> dict[str, Any]:
    bond = ledger.add_note(
        get_redis(settings), settings, args.user_id, args.note, request_id=_request_id()
    )
    return {"status": "ok", "user_id": args.user_id, "notes": len(bond.notes)}


@admin_task(names.ADMIN_CLEAR_HISTORY, ClearHistoryIn)
def clear_history(args: ClearHistoryIn, settings: Settings) -> dict[str, Any]:
    removed = history.clear(get_redis(settings), settings, args.guild_id, args.user_id)
    return {"status": "ok", "user_id": args.user_id, "guild_id": args.guild_id, "removed": removed}


@admin_task(names.ADMIN_ERASE_USER, EraseUserIn)
def erase_user(args: EraseUserIn, settings: Settings) -> dict[str, Any]:
    return erasure_service.erase_user(
        get_redis(settings),
        settings,
        session_factory(settings),
        user_id=args.user_id,
        platform=args.platform,
        request_id=_request_id(),
    )


@admin_task(names.ADMIN_REPLAY_DEAD_LETTERS, ReplayIn)
def replay_dead_letters(args: ReplayIn, settings: Settings) -> dict[str, Any]:
    """Send dead-lettered payloads again, under their original task names.

    Only rows actually sent are marked replayed; every other id is answered in
    ``skipped`` with why, and stays pending."""
    replayed: list[int] = []
    with session_factory(settings)() as session, session.begin():
        sendable, skipped = store.lock_for_replay(session, args.ids)
        for row_id, task_name, kwargs in sendable:
            if task_name not in app.tasks:
                skipped.append({"id": row_id, "reason": "unknown task name"})
                continue
            app.send_task(task_name, kwargs=kwargs, argsrepr="()", kwargsrepr=redact_kwargs(kwargs))
            replayed.append(row_id)
        store.mark_replayed(session, replayed)
    skipped.sort(key=lambda skip: skip["id"])
    return {"status": "ok", "replayed": replayed, "skipped": skipped}
