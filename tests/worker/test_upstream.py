"""Canaries: every upstream internal worker/upstream.py lists still is what vigil
expects, in the installed Celery, kombu, celery-batches and Flower."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from worker.upstream import INTERNALS, Internal

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("internal", INTERNALS, ids=lambda internal: internal.target)
def test_internal_is_what_vigil_expects(internal: Internal):
    assert internal.problems() == []


def test_a_changed_internal_is_named_with_where_vigil_uses_it():
    """The canary can fail, and says what to look at when it does."""
    changed = Internal("kombu.transport.redis:Channel._q_for_pri", "broker.py", ("self", "q"))
    gone = Internal("kombu.transport.redis:Channel._no_such_thing", "broker.py")
    assert changed.problems() == [
        "kombu.transport.redis:Channel._q_for_pri takes ('self', 'queue', 'pri'), "
        "vigil expects ('self', 'q'); used by broker.py"
    ]
    assert "is gone" in gone.problems()[0] and "broker.py" in gone.problems()[0]


def test_every_library_with_internals_is_pinned_to_a_minor_version():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {dep.split("[")[0].split(">")[0].split("=")[0].strip(): dep for dep in dependencies}
    for library in ("celery", "kombu", "celery-batches", "flower"):
        spec = pins[library]
        assert ">=" in spec and ",<" in spec, f"{library} is not pinned: {spec}"
        low = spec.split(">=")[1].split(",")[0].split(".")
        high = spec.split(",<")[1].split()[0].rstrip('",').split(".")
        # One minor version: >=X.Y[.Z],<X.Y+1
        assert high[0] == low[0] and int(high[1]) == int(low[1]) + 1, spec
