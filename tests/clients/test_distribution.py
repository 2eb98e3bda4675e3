"""The frontend client as a frontend installs it: its own distribution, in a fresh
virtual environment, with only its declared dependencies, sending a message that
a real worker applies."""

from __future__ import annotations

import subprocess
import textwrap
import venv
from pathlib import Path

import pytest

from services.core import dedupe, keys
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"

SEND = textwrap.dedent(
    """
    import importlib.util, sys
    import vigil_client
    # Nothing of the worker is importable, let alone imported.
    for name in ("tasks", "services", "models", "sqlalchemy", "celery_batches", "psycopg"):
        assert name not in sys.modules, name
        assert importlib.util.find_spec(name) is None, name
    client = vigil_client.VigilClient(sys.argv[1])
    client.connect()
    client.message(message_id="dist-1", user_id="dist-user", guild_id="g1",
                   text="hello from a fresh install", sent_at="2026-11-22T10:00:00+00:00")
    print("sent")
    """
)


def test_the_client_installs_alone_and_a_worker_applies_what_it_sends(
    tmp_path, state_redis, settings, worker, test_env
):
    env_dir = tmp_path / "frontend"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--retries", "1", f"{CLIENT}[redis]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if install.returncode != 0 and "No matching distribution" in install.stderr:
        pytest.skip(f"no package index reachable: {install.stderr.strip()[-300:]}")
    assert install.returncode == 0, install.stderr[-2000:]
    installed = subprocess.run(
        [python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True
    ).stdout.lower()
    assert "vigil-client==" in installed
    assert "sqlalchemy" not in installed and "celery-batches" not in installed

    sent = subprocess.run(
        [python, "-c", SEND, test_env["VIGIL_BROKER_URL"]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the repository: nothing of vigil on the path
    )
    assert sent.returncode == 0, sent.stderr[-2000:]
    assert sent.stdout.strip() == "sent"

    marker = keys.message_dedupe(settings, "discord", "dist-user")
    wait_for(
        lambda: dedupe.states(state_redis, settings, marker).get("dist-1") == "done",
        timeout=60,
        what="the worker applied the message",
    )
