"""What events, Flower and logs show of a task's arguments."""

from __future__ import annotations

from worker.redact import redact_kwargs, safe_redact


def test_redacted_kwargs_show_ids_never_text():
    shown = redact_kwargs(
        {
            "message_id": "m1",
            "user_id": "u1",
            "text": "secret words",
            "messages": [{"text": "more secret"}],
            "signals": {"a": 1},
        }
    )
    assert "m1" in shown and "u1" in shown
    assert "secret" not in shown
    assert redact_kwargs(["not", "a", "dict"]) == "<redacted>"


class _Hostile(dict):
    def items(self):
        raise RuntimeError("a body that breaks its own repr")


def test_safe_redact_never_raises():
    assert safe_redact(_Hostile(text="secret")) == "<redacted>"
