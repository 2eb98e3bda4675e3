"""Flower asks for a login and binds loopback however it is started.

``vigil flower`` and ``vigil up`` check credentials before they start Flower,
but Celery users start it with ``celery -A tasks flower``, which by itself
binds every interface and serves the dashboard to anyone. Celery imports the
``tasks`` package before Flower reads its options, so ``tasks/__init__.py``
imports this module and calls ``install()`` when the process is Flower (only
then: Flower's options pull in what a worker never needs); ``flowerconfig.py``
at the repository root calls ``install_from_config()`` for ``celery flower``
run there without ``-A tasks``.

The guard is a tornado parse callback: Flower runs it once its options are
resolved (``FLOWER_*`` environment, command line, ``flowerconfig.py``) and
before it binds the socket. There it binds 127.0.0.1 unless an address or
unix socket was given, takes the login from ``VIGIL_FLOWER_BASIC_AUTH`` (or
``_FILE``) unless one was given, and refuses to start without a login unless
``VIGIL_FLOWER_LOCAL_ONLY`` is set and the address is loopback.
"""

from __future__ import annotations

import os
from typing import NoReturn

from pydantic import ValidationError
from tornado.options import options

# Defines Flower's options (address, basic_auth, ...) before the guard reads them.
import flower.options  # noqa: F401  isort: skip

from services.core.network import is_loopback
from services.core.settings import Settings

_installed = False
# Parse callbacks seen, and whether our flowerconfig.py has run: Flower parses
# its command line, then flowerconfig.py, then the command line again, and only
# the last parse is what it runs with.
_parses_seen = 0
_config_loaded = False


def install_from_config() -> None:
    """Install the guard from ``flowerconfig.py``, whose options Flower has now read."""
    global _config_loaded
    _config_loaded = True
    install()


def install() -> None:
    """Register the check with tornado's options, once per process."""
    global _installed
    if _installed:
        return
    options.add_parse_callback(_enforce)
    _installed = True


def _refuse(reason: str) -> NoReturn:
    raise SystemExit(f"vigil: refusing to start Flower: {reason}")


def _config_file_still_to_come() -> bool:
    """A parse before Flower has read an existing config file is not the last one."""
    return (
        _parses_seen == 1
        and not _config_loaded
        and os.path.isfile(os.path.abspath(options.conf or ""))
    )


def _enforce() -> None:
    """Fill in loopback and vigil's login, or stop Flower before it binds."""
    global _parses_seen
    _parses_seen += 1
    if _config_file_still_to_come():
        return
    try:
        settings = Settings()
    except ValidationError as err:
        _refuse(f"invalid vigil settings: {err}")

    if not options.address and not options.unix_socket:
        options.address = "127.0.0.1"
    if not options.basic_auth and settings.flower_basic_auth:
        options.basic_auth = settings.flower_basic_auth.split(",")
    for entry in options.basic_auth or []:
        user, sep, password = entry.partition(":")
        if not (sep and user and password):
            _refuse(
                "basic auth must be user:password with both parts non-empty "
                "(comma-separated for several)"
            )

    if options.basic_auth or options.auth:
        return
    if not settings.flower_local_only:
        _refuse(
            "no login configured. Set VIGIL_FLOWER_BASIC_AUTH=user:password "
            "(or VIGIL_FLOWER_BASIC_AUTH_FILE, or pass --basic-auth), or set "
            "VIGIL_FLOWER_LOCAL_ONLY=1 for a Flower without login on loopback only"
        )
    if not options.unix_socket and not is_loopback(options.address):
        _refuse(
            f"VIGIL_FLOWER_LOCAL_ONLY allows a Flower without login only on a "
            f"loopback address, not {options.address!r}; configure "
            f"VIGIL_FLOWER_BASIC_AUTH to bind elsewhere"
        )
