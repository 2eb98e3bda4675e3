"""``celery -A tasks flower``, the way Celery users start Flower, asks for a login.

Real Flower processes on the test broker; each probe is what a browser or
curl would see.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import pytest
from celery.bin.celery import celery as celery_group

from stack.embedded import spare_port
from worker.signals import running_under_flower

ROOT = Path(__file__).resolve().parents[2]
CELERY = Path(sys.executable).with_name("celery")
START_TIMEOUT_S = 60.0
CREDENTIALS = ("ops", "correct-horse")


@dataclass
class Flower:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _env(test_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The test broker, and no Flower login or options inherited from the shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "VIGIL_FLOWER_"))}
    env.update(test_env)
    env.update(extra)
    return env


def _popen(argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=handle, stderr=handle)


def _wait_up(flower: Flower) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if flower.proc.poll() is not None:
            raise AssertionError(f"flower exited: {flower.log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{flower.url}/healthcheck", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"flower did not come up: {flower.log.read_text()[-2000:]}")


@pytest.fixture
def start_flower(test_env, tmp_path: Path) -> Iterator:
    """Start ``celery <celery_args> flower --port=N <flower_args>`` and wait for it."""
    started: list[Flower] = []

    def start(
        *flower_args: str,
        celery_args: tuple[str, ...] = ("-A", "tasks"),
        cwd: Path = ROOT,
        **env: str,
    ) -> Flower:
        port = spare_port()
        log = tmp_path / f"flower-{port}.log"
        argv = [str(CELERY), *celery_args, "flower", f"--port={port}", *flower_args]
        flower = Flower(_popen(argv, _env(test_env, **env), cwd, log), port, log)
        started.append(flower)
        _wait_up(flower)
        return flower

    yield start
    for flower in started:
        flower.proc.terminate()
        try:
            flower.proc.wait(30)
        except subprocess.TimeoutExpired:
            flower.proc.kill()
            flower.proc.wait()


def _refused(test_env, *flower_args: str, cwd: Path = ROOT, **env: str) -> str:
    """Run a Flower that must refuse to start; its stderr."""
    argv = [str(CELERY), "-A", "tasks", "flower", f"--port={spare_port()}", *flower_args]
    try:
        done = subprocess.run(
            argv, cwd=cwd, env=_env(test_env, **env), capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        raise AssertionError("flower started instead of refusing") from None
    assert done.returncode != 0, done.stderr[-2000:]
    return done.stderr


def _listening(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (Linux /proc/net)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                local, state = line.split()[1], line.split()[3]
                host, _, hex_port = local.partition(":")
                if state != "0A" or int(hex_port, 16) != port:
                    continue
                raw = bytes.fromhex(host)
                # Each 32-bit word is in host (little-endian) order.
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(raw)))
    return found


def _status(url: str, auth: tuple[str, str] | None = None) -> int:
    return httpx.get(url, auth=auth, timeout=10).status_code


def _assert_login_required(flower: Flower) -> None:
    for path in ("/", "/tasks"):
        assert _status(f"{flower.url}{path}") == 401, path
        assert _status(f"{flower.url}{path}", auth=("ops", "wrong")) == 401, path
        assert _status(f"{flower.url}{path}", auth=CREDENTIALS) == 200, path


def test_celery_flower_asks_for_vigils_login_on_loopback(start_flower) -> None:
    flower = start_flower(VIGIL_FLOWER_BASIC_AUTH="ops:correct-horse")
    _assert_login_required(flower)
    assert _listening(flower.port) == {"127.0.0.1"}


def test_celery_flower_without_credentials_refuses_to_start(test_env) -> None:
    started = time.monotonic()
    stderr = _refused(test_env)
    assert time.monotonic() - started < 30
    assert "refusing to start Flower" in stderr
    assert "VIGIL_FLOWER_BASIC_AUTH" in stderr


def test_local_only_flower_is_open_on_loopback_only(start_flower, test_env) -> None:
    flower = start_flower(VIGIL_FLOWER_LOCAL_ONLY="1")
    assert _status(f"{flower.url}/") == 200
    assert _listening(flower.port) == {"127.0.0.1"}

    stderr = _refused(test_env, "--address=0.0.0.0", VIGIL_FLOWER_LOCAL_ONLY="1")
    assert "loopback" in stderr and "0.0.0.0" in stderr


def test_login_required_when_started_from_another_directory(start_flower, tmp_path) -> None:
    # No flowerconfig.py there: the guard comes with `-A tasks` alone.
    flower = start_flower(
        cwd=tmp_path, PYTHONPATH=str(ROOT), VIGIL_FLOWER_BASIC_AUTH="ops:correct-horse"
    )
    _assert_login_required(flower)


def test_flowerconfig_guards_celery_flower_without_the_app(start_flower, test_env) -> None:
    # `celery --broker=... flower` in the project directory: flowerconfig.py installs it.
    flower = start_flower(
        celery_args=("--broker", test_env["VIGIL_BROKER_URL"]),
        VIGIL_FLOWER_BASIC_AUTH="ops:correct-horse",
    )
    _assert_login_required(flower)
    assert _listening(flower.port) == {"127.0.0.1"}


def test_login_from_a_flower_config_file_is_honoured(start_flower, tmp_path) -> None:
    # The guard judges the options Flower ends up with, after its config file.
    conf = tmp_path / "myflower.py"
    conf.write_text('basic_auth = ["ops:correct-horse"]\n')
    flower = start_flower(f"--conf={conf}")
    _assert_login_required(flower)
    assert _listening(flower.port) == {"127.0.0.1"}


def test_malformed_login_is_refused(test_env) -> None:
    stderr = _refused(test_env, VIGIL_FLOWER_BASIC_AUTH="ops:,s3cret-without-user")
    assert "user:password" in stderr
    assert "s3cret" not in stderr


@pytest.mark.parametrize(
    ("subcommand", "expected"),
    [("flower", True), ("worker", False), ("beat", False), ("inspect", False)],
)
def test_guard_installs_only_for_flower(subcommand: str, expected: bool) -> None:
    with click.Context(celery_group, info_name="celery") as ctx:
        ctx.invoked_subcommand = subcommand
        assert running_under_flower() is expected
    assert running_under_flower() is False
