"""Redis Lua scripts, loaded from ``services/redis_scripts``.

Scripts are sent as EVALSHA inside plain pipelines so a batch costs one round
trip; redis-py's own Script objects would add a SCRIPT EXISTS round trip per
pipeline. A NOSCRIPT reply (Redis restarted, cache flushed) loads the script
and re-runs only the calls that did not run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import NoScriptError, ResponseError

_DIR = Path(__file__).parent / "redis_scripts"
_HELPERS = "_bond.lua"


@cache
def source(name: str) -> str:
    body = (_DIR / f"{name}.lua").read_text()
    if name.startswith("_"):
        return body
    return (_DIR / _HELPERS).read_text() + "\n" + body


@cache
def sha(name: str) -> str:
    return hashlib.sha1(source(name).encode()).hexdigest()  # noqa: S324  (Redis's own id)


Call = tuple[Sequence[str], Sequence[Any]]


def run(r: redis.Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
    return run_many(r, name, [(keys, args)], raise_errors=True)[0]


def run_many(
    r: redis.Redis, name: str, calls: Sequence[Call], *, raise_errors: bool = True
) -> list[Any]:
    """Run one script for many key/arg sets in a single round trip.

    With ``raise_errors=False`` a script error is returned in its slot, so one
    bad entry of a batch does not hide what happened to the others."""
    if not calls:
        return []
    digest = sha(name)
    pending = list(range(len(calls)))
    results: list[Any] = [None] * len(calls)
    for attempt in range(2):
        pipe = r.pipeline(transaction=False)
        for i in pending:
            keys, args = calls[i]
            pipe.evalsha(digest, len(keys), *keys, *args)
        replies = pipe.execute(raise_on_error=False)
        missing = []
        for i, reply in zip(pending, replies, strict=True):
            if isinstance(reply, NoScriptError):
                missing.append(i)
            else:
                results[i] = reply
        if not missing:
            break
        if attempt == 1:
            raise NoScriptError(f"script {name} could not be loaded")
        r.script_load(source(name))
        pending = missing
    if raise_errors:
        for reply in results:
            if isinstance(reply, ResponseError):
                raise reply
    return results
