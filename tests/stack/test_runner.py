"""The stack launcher and Flower's authentication, with real processes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.core.settings import Settings
from stack.embedded import spare_port
from stack.runner import (
    FlowerAuthError,
    Stack,
    StackError,
    child_env,
    flower_auth,
    flower_command,
    run_stack,
)
from tests.builders import message
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _settings(**kwargs) -> Settings:
    return Settings(**kwargs)


def test_flower_refuses_to_start_without_auth() -> None:
    with pytest.raises(FlowerAuthError, match="VIGIL_FLOWER_BASIC_AUTH"):
        flower_command(_settings(), basic_auth=None)


def test_local_only_flower_must_bind_to_loopback() -> None:
    argv, env = flower_command(_settings(), basic_auth=None, local_only=True)
    assert "--address=127.0.0.1" in argv
    assert env == {"VIGIL_FLOWER_LOCAL_ONLY": "1"}
    with pytest.raises(FlowerAuthError, match="loopback"):
        flower_command(_settings(flower_address="0.0.0.0"), basic_auth=None, local_only=True)


def test_malformed_basic_auth_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FlowerAuthError, match="user:password"):
        flower_auth(_settings(flower_basic_auth="no-colon"), tmp_path)


def test_credentials_stay_off_the_command_line() -> None:
    argv, env = flower_command(_settings(), basic_auth="ops:hunter22")
    assert not any("hunter22" in part for part in argv)
    assert env == {"FLOWER_BASIC_AUTH": "ops:hunter22"}


def test_inherited_flower_options_do_not_reach_the_child(monkeypatch) -> None:
    monkeypatch.setenv("FLOWER_UNAUTHENTICATED_API", "1")
    assert "FLOWER_UNAUTHENTICATED_API" not in child_env({})


def test_configured_auth_wins(tmp_path: Path) -> None:
    auth = flower_auth(_settings(flower_basic_auth="ops:secret"), tmp_path)
    assert auth == "ops:secret"
    assert not (tmp_path / "flower-password").exists()


def test_generated_password_is_private_and_printed_once(tmp_path: Path, capsys) -> None:
    first = flower_auth(_settings(), tmp_path)
    printed = capsys.readouterr().err
    assert first is not None
    user, _, password = first.partition(":")
    assert user == "vigil" and len(password) >= 20
    assert password in printed
    path = tmp_path / "flower-password"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    assert flower_auth(_settings(), tmp_path) == first
    assert password not in capsys.readouterr().err


def test_no_generation_means_no_auth(tmp_path: Path) -> None:
    assert flower_auth(_settings(), tmp_path, generate=False) is None


def test_world_readable_password_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flower-password"
    path.write_text("vigil:abc\n")
    path.chmod(0o644)
    with pytest.raises(FlowerAuthError, match="chmod 600"):
        flower_auth(_settings(), tmp_path)


def _wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"flower exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)


@pytest.fixture
def flower(test_env, tmp_path: Path) -> Iterator[str]:
    port = spare_port()
    settings = _settings(flower_port=port, flower_basic_auth="ops:correct-horse")
    argv, extra = flower_command(settings, basic_auth=flower_auth(settings, tmp_path))
    log = tmp_path / "flower.log"
    with open(log, "ab") as handle:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=child_env({**test_env, **extra}), stdout=handle, stderr=handle
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(f"{base}/healthcheck", proc, log)
            yield base
        finally:
            proc.terminate()
            proc.wait(30)


def test_flower_answers_401_without_credentials(flower: str) -> None:
    for path in ("/", "/api/workers", "/api/tasks", "/tasks"):
        assert httpx.get(f"{flower}{path}", timeout=10).status_code == 401, path
    wrong = httpx.get(f"{flower}/api/workers", auth=("ops", "wrong"), timeout=10)
    assert wrong.status_code == 401


def test_flower_answers_200_with_credentials(flower: str) -> None:
    auth = ("ops", "correct-horse")
    assert httpx.get(f"{flower}/", auth=auth, timeout=10).status_code == 200
    assert httpx.get(f"{flower}/api/workers", auth=auth, timeout=10).status_code == 200
    # Open by design: bind to loopback (the default) so only this machine sees them.
    assert httpx.get(f"{flower}/healthcheck", timeout=10).status_code == 200


CANARY = "canary-text-8c1f hopeless tonight"


def _stack_settings(service_urls, tmp_path: Path, **kwargs) -> Settings:
    base, state_db = service_urls["redis"].rsplit("/", 1)
    broker_db = service_urls["broker"].rsplit("/", 1)[1]
    # Their own Redis databases, so this stack's worker and beat never meet the
    # shared test worker's queues.
    return Settings(
        redis_url=f"{base}/{int(state_db) - 3}",
        broker_url=f"{base}/{int(broker_db) - 1}",
        database_url=service_urls["database"],
        data_dir=tmp_path / "data",
        embedded="never",
        flower_port=spare_port(),
        metrics_port=spare_port(),
        **kwargs,
    )


def test_run_stack_starts_and_stops_everything(service_urls, migrated, tmp_path: Path) -> None:
    settings = _stack_settings(service_urls, tmp_path, flower_basic_auth="ops:stack-pass")
    seen: dict[str, object] = {}

    def then(stack: Stack) -> str:
        seen["children"] = dict(stack.children)
        seen["metrics"] = httpx.get(stack.metrics_url, timeout=10).text
        client = stack.client()
        replies = client.control.ping(timeout=2.0)
        client.close()
        seen["ping"] = [name for reply in replies for name in reply]
        url = f"{stack.flower_url}/api/workers?refresh=1"
        seen["anonymous"] = httpx.get(url, timeout=10).status_code
        workers = httpx.get(url, auth=("ops", "stack-pass"), timeout=10)
        seen["workers"] = list(workers.json())
        # Message text must never reach Flower: send a canary, single and batched.
        msg = message(text=CANARY, id="canary-1")
        client = stack.client()
        client.send_task("vigil.ingest.message", kwargs=msg, queue="ingest")
        client.send_task(
            "vigil.ingest.messages",
            queue="ingest",
            kwargs={"messages": [{**msg, "message_id": "canary-2"}]},
        )
        client.close()

        def flower_tasks() -> str | None:
            resp = httpx.get(
                f"{stack.flower_url}/api/tasks", auth=("ops", "stack-pass"), timeout=10
            )
            body = resp.text
            done = body.count('"state": "SUCCESS"')
            return body if "canary-1" in body and "vigil.ingest.messages" in body and done else None

        seen["flower_tasks"] = wait_for(flower_tasks, timeout=60, what="tasks in Flower")
        return "done"

    assert run_stack(settings, then=then, out=sys.stderr) == "done"

    children = seen["children"]
    assert set(children) == {"worker", "beat", "flower", "metrics"}
    assert all(child.proc.poll() is not None for child in children.values())
    assert any(name.startswith("vigil-") for name in seen["ping"])
    assert seen["anonymous"] == 401
    assert 'vigil_store_up{store="redis"} 1.0' in seen["metrics"]
    assert any(name.startswith("vigil-") for name in seen["workers"])
    logs = tmp_path / "data" / "logs"
    assert {p.name for p in logs.iterdir()} >= {"worker.log", "beat.log", "flower.log"}
    assert CANARY not in seen["flower_tasks"]
    for log in logs.iterdir():
        assert CANARY not in log.read_text(errors="replace"), log.name


def test_stack_refuses_open_flower_before_starting_anything(service_urls, tmp_path) -> None:
    settings = _stack_settings(service_urls, tmp_path)
    # No configured auth and no generation: that is the local-only path, which
    # cannot be combined with a public address.
    settings = settings.model_copy(update={"flower_address": "0.0.0.0"})
    with pytest.raises(FlowerAuthError):
        run_stack(settings, flower_local_only=True)
    assert not (tmp_path / "data" / "logs").exists()


def test_unreachable_configured_service_is_a_stack_error(service_urls, tmp_path) -> None:
    settings = _stack_settings(service_urls, tmp_path, flower_basic_auth="ops:pw")
    settings = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{spare_port()}/0"})
    with pytest.raises(StackError, match="VIGIL_REDIS_URL"):
        run_stack(settings)
    assert not (tmp_path / "data" / "logs").exists()


def test_sigterm_stops_the_stack_in_order(test_env, service_urls, migrated, tmp_path) -> None:
    settings = _stack_settings(service_urls, tmp_path)
    env = {
        **os.environ,
        "VIGIL_REDIS_URL": settings.redis_url,
        "VIGIL_BROKER_URL": settings.broker_url,
        "VIGIL_DATABASE_URL": settings.database_url,
        "VIGIL_DATA_DIR": str(settings.data_dir),
        "VIGIL_FLOWER_PORT": str(settings.flower_port),
        "VIGIL_EMBEDDED": "never",
    }
    out = tmp_path / "stack.out"
    with open(out, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stack.runner", "--no-beat"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
        try:
            while "vigil is running" not in out.read_text():
                assert proc.poll() is None, out.read_text()
                time.sleep(0.2)
            password_file = settings.data_dir / "flower-password"
            assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(120) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    text = out.read_text()
    assert "stopping vigil" in text
    # The generated password is printed once, at creation.
    assert password_file.read_text().strip().split(":", 1)[1] in text
    assert not httpx_answers(f"http://127.0.0.1:{settings.flower_port}/healthcheck")


def httpx_answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.HTTPError:
        return False
