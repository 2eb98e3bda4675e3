"""Client-side count of round trips to the state Redis, for worker processes.

With ``VIGIL_BENCH_COUNT_DIR`` and ``VIGIL_BENCH_STATE_PORT`` set, every request
a process writes to the state Redis (one per command, one per pipeline; not the
connection handshake) bumps a counter in a small per-process file, so the
harness reads round trips without adding a single command to the server whose
commands and memory it also measures. Only the worker imports ``install``; the
harness only reads.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from pathlib import Path
from typing import Any

# Sent once per connection (or per idle health check), not per message.
_HANDSHAKE = frozenset((b"HELLO", b"AUTH", b"CLIENT", b"SELECT", b"PING"))
_counter: dict[str, Any] = {"pid": None, "cell": None, "mm": None}


def read_counts(directory: Path) -> int:
    """Sum of every process's counter."""
    total = 0
    for path in directory.glob("*.cnt"):
        data = path.read_bytes()
        if len(data) == 8:
            total += int.from_bytes(data, "little", signed=True)
    return total


def _cell(directory: str) -> ctypes.c_int64:
    pid = os.getpid()
    if _counter["pid"] != pid:  # a forked pool child gets its own file
        with open(Path(directory) / f"{pid}.cnt", "a+b") as fh:
            fh.truncate(8)
            mm = mmap.mmap(fh.fileno(), 8)
        _counter.update(pid=pid, mm=mm, cell=ctypes.c_int64.from_buffer(mm))
    return _counter["cell"]


def _is_handshake(command: Any) -> bool:
    first = command if isinstance(command, (bytes, bytearray, str)) else command[0]
    if isinstance(first, str):
        first = first.encode()
    parts = bytes(first[:48]).split(b"\r\n")  # *N, $len, NAME, ...
    return len(parts) > 2 and parts[2].upper() in _HANDSHAKE


def install_from_env() -> bool:
    directory = os.environ.get("VIGIL_BENCH_COUNT_DIR")
    port = int(os.environ.get("VIGIL_BENCH_STATE_PORT", "0") or 0)
    if not (directory and port):
        return False
    from redis.connection import AbstractConnection

    send = AbstractConnection.send_packed_command

    def counted_send(self, command, check_health=True):
        if getattr(self, "port", None) == port and not _is_handshake(command):
            _cell(directory).value += 1
        return send(self, command, check_health)

    AbstractConnection.send_packed_command = counted_send  # type: ignore[method-assign]
    return True
