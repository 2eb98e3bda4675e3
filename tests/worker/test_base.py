"""The task base: explicit names, routes."""

from __future__ import annotations

import pytest

from tasks import app
from worker.base import VigilCelery


def test_task_without_explicit_name_fails_at_import():
    other = VigilCelery("x")
    with pytest.raises(TypeError, match="explicit name"):
        other.task(lambda: None)
    with pytest.raises(TypeError, match="explicit name"):
        other.task(bind=True)(lambda self: None)
    with pytest.raises(TypeError, match=r"vigil\."):
        other.task(name="tasks.thing")(lambda: None)


def test_every_public_task_is_named_and_routed():
    names = sorted(n for n in app.tasks if n.startswith("vigil."))
    assert "vigil.ingest.message" in names and "vigil.admin.erase_user" in names
    for name in names:
        queue = app.amqp.router.route({}, name)["queue"].name
        assert queue == name.split(".")[1], name
