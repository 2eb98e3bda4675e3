"""Flower's config file, read when Flower starts in this directory (or ``--conf``).

Tornado executes it as Python and takes every top-level name that matches a
Flower option (``port``, ``address``, ``basic_auth``...) as that option, so
the names here are private. It installs vigil's guard (login required,
loopback by default) for ``celery flower`` run here without ``-A tasks``;
with ``-A tasks`` the guard is already installed and this is a no-op.
"""

import os as _os
import sys as _sys

_root = _os.path.dirname(_os.path.abspath(__file__))
if _root not in _sys.path:
    _sys.path.insert(0, _root)

from worker.flower_guard import install_from_config as _install  # noqa: E402

_install()
