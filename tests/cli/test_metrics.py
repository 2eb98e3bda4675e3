"""``vigil metrics show`` and ``serve``'s refusal off loopback without a token."""

from __future__ import annotations

from tests.cli.conftest import SAD, msg


def test_show_prints_one_scrape(vigil, ingest):
    ingest.messages([msg(1), msg(1)])
    out = vigil("metrics", "show").stdout
    assert 'vigil_messages_total{outcome="accepted"} 1.0' in out
    assert 'vigil_messages_total{outcome="duplicate"} 1.0' in out
    assert "501" not in out  # the user id
    assert SAD not in out


def test_serve_refuses_a_public_address_without_a_token(vigil):
    result = vigil("metrics", "serve", "--address", "0.0.0.0", "--port", "0", code=1)
    assert "VIGIL_METRICS_TOKEN" in result.output
