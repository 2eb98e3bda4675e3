"""examples/node: a Node frontend validates against the task schemas and sends
with celery-node; the worker applies every message it sent. Runs where node
and npm are installed; its packages are installed once (from the npm registry)
into .vigil/node-example and reused by later runs, network or not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from services.bonds import ledger
from tests.conftest import ROOT
from tests.helpers import wait_for

EXAMPLE = ROOT / "examples" / "node"
WORKDIR = ROOT / ".vigil" / "node-example"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="no node and npm on PATH"
)


def _installed() -> Path:
    """The example with its packages; skips when they cannot be fetched."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    manifest = (EXAMPLE / "package.json").read_text()
    stamp = WORKDIR / ".installed"
    if not stamp.exists() or stamp.read_text() != manifest:
        shutil.copy(EXAMPLE / "package.json", WORKDIR / "package.json")
        argv = ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"]
        argv += ["--fetch-retries=1", "--fetch-timeout=20000"]
        try:
            npm = subprocess.run(
                argv, cwd=WORKDIR, capture_output=True, text=True, timeout=120, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install timed out: no npm registry reachable")
        if npm.returncode != 0:
            pytest.skip(f"npm install failed (registry unreachable?): {npm.stderr[-300:]}")
        stamp.write_text(manifest)
    shutil.copy(EXAMPLE / "send.js", WORKDIR / "send.js")
    return WORKDIR


def send(workdir: Path, broker_url: str, count: int) -> subprocess.CompletedProcess:
    """``node send.js URL COUNT`` as the README says, with the repository's schemas."""
    return subprocess.run(
        ["node", "send.js", broker_url, str(count)],
        cwd=workdir,
        env={"PATH": os.environ["PATH"], "VIGIL_SCHEMAS": str(ROOT / "schemas" / "tasks")},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_the_node_example_validates_sends_and_the_worker_applies(
    worker, test_env, state_redis, settings
):
    workdir = _installed()
    run = send(workdir, test_env["VIGIL_BROKER_URL"], 20)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["sent"] == 20
    # The deliberately bad payload is refused by the schema, naming both fields.
    assert any("sent_at" in r for r in report["refused"])
    assert any("user_id" in r for r in report["refused"])

    def counted() -> int:
        bonds = [ledger.load(state_redis, settings, f"node-user-{i}") for i in range(3)]
        return sum(b.daily_msg_count for b in bonds if b is not None)

    wait_for(lambda: counted() == 20, timeout=60, what="the worker to apply 20 messages")
