"""The scripts' positional replies become named types, and nothing else reads
them by position."""

from __future__ import annotations

from pathlib import Path

from redis.exceptions import ResponseError

from services.core import replies

SERVICES = Path(__file__).resolve().parents[3] / "services"


def test_gate_replies():
    assert replies.gate(["duplicate", "done"]) == replies.Duplicate("done")
    assert replies.gate(["rate_limited", "3", "3"]) == replies.RateLimited(cap=3, count=3)
    assert replies.gate(["accepted", "2", []]) == replies.Admitted(counted=True, context=[])
    assert replies.gate(["accepted", "uncounted", []]) == replies.Admitted(False, [])
    assert replies.gate(["accepted", "redelivered", []]).counted is True
    assert replies.gate(ResponseError("bond is not JSON")) == replies.Failed("bond is not JSON")
    assert isinstance(replies.gate(["surprise"]), replies.Failed)


def test_apply_replies():
    assert replies.apply(["duplicate"]) == replies.Duplicate()
    assert replies.apply(["applied", "phase,risk", "1"]) == replies.Applied(
        frozenset({"phase", "risk"}), stored=True
    )
    assert replies.apply(["applied", "", "0"]) == replies.Applied(frozenset(), stored=False)
    assert isinstance(replies.apply(ResponseError("x")), replies.Failed)


def test_the_ingest_service_reads_no_reply_by_position():
    source = (SERVICES / "ingest" / "service.py").read_text()
    for positional in ("gate[", "reply[", 'gate[1] == "uncounted"'):
        assert positional not in source
