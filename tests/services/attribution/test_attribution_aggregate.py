"""Table-driven tests of the pure aggregation rules, one row per state per kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.attribution.aggregate import (
    Obs,
    Thresholds,
    aggregate,
    aggregate_categorical,
    aggregate_hash,
    aggregate_numeric,
    hash_window,
    rows_needed,
)
from services.core.settings import Settings

T = Thresholds()
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def series(values: str | list, step_s: int = 60) -> list[Obs]:
    """Oldest-first observations one ``step_s`` apart; a string is one value per char."""
    return [Obs(str(v), T0 + timedelta(seconds=i * step_s)) for i, v in enumerate(values)]


CATEGORICAL = [
    # (name, values oldest first, state, current_value, confidence)
    ("empty", "", "unknown", None, 0.0),
    ("two observations", "aa", "unknown", "a", 0.0),
    ("three equal", "aaa", "stable", "a", 1.0),
    ("four of four", "aaaa", "stable", "a", 1.0),
    ("three of four alternates", "aaba", "multi_actor", "a", 2 / 3),
    ("two of four in blocks", "aabb", "conflicted", "b", 0.5),
    ("full clear window", "aaaaa", "stable", "a", 1.0),
    ("four of five", "abaaa", "stable", "a", 0.8),
    ("same majority as before", "aaaaa" + "aabaa", "stable", "a", 0.8),
    ("previous window split", "abcab" + "bbbbb", "stable", "b", 1.0),
    ("majority moved", "aaaaa" + "bbbbb", "drifting", "b", 1.0),
    ("majority moved, noisy", "aaaab" + "bbabb", "drifting", "b", 0.8),
    ("only the last two windows count", "bbbbb" + "aaaaa" + "aaaaa", "stable", "a", 1.0),
    ("two values alternate", "ababa", "multi_actor", "a", 1.0),
    ("alternation after history", "aaaaa" + "babab", "multi_actor", "b", 1.0),
    ("mostly alternating", "ababb", "multi_actor", "b", 0.75),
    ("two values in blocks", "aabba", "conflicted", "a", 0.6),
    ("three values", "abcab", "conflicted", "b", 0.4),
    ("three values alternating", "abcac", "conflicted", "c", 0.4),
    ("short alternation", "aba", "multi_actor", "a", 1.0),
]


@pytest.mark.parametrize(
    ("values", "state", "current", "confidence"),
    [row[1:] for row in CATEGORICAL],
    ids=[row[0] for row in CATEGORICAL],
)
def test_categorical(values, state, current, confidence):
    result = aggregate_categorical(series(values), T)
    assert (result.state, result.current_value) == (state, current)
    assert result.confidence == pytest.approx(confidence, abs=1e-6)


NUMERIC = [
    ("empty", [], "unknown", None),
    ("two observations", [1, 1], "unknown", "1"),
    ("constant", [10, 10, 10], "stable", "10"),
    ("small noise", [10, 11, 9, 10, 10], "stable", None),
    ("no shift against previous", [10] * 5 + [11] * 5, "stable", "11"),
    ("shift below threshold", [10] * 5 + [12.9] * 5, "stable", None),
    ("shift at threshold", [10] * 5 + [13] * 5, "drifting", "13"),
    ("shift down", [10] * 5 + [6] * 5, "drifting", "6"),
    ("previous too short to compare", [10, 10] + [20] * 5, "stable", "20"),
    ("previous mean zero", [0] * 5 + [1] * 5, "drifting", "1"),
    ("both zero", [0] * 10, "stable", "0"),
    ("huge spread", [0, 0, 0, 0, 100], "conflicted", None),
    ("sign flips", [-5, 5, -5, 5, -4], "conflicted", None),
    ("conflicted wins over drift", [10] * 5 + [0, 0, 0, 0, 100], "conflicted", None),
]


@pytest.mark.parametrize(
    ("values", "state", "current"),
    [row[1:] for row in NUMERIC],
    ids=[row[0] for row in NUMERIC],
)
def test_numeric(values, state, current):
    result = aggregate_numeric(series(values), T)
    assert result.state == state
    if current is not None:
        assert result.current_value == current
    assert 0.0 <= result.confidence <= 1.0
    if state == "unknown":
        assert result.confidence == 0.0


def test_numeric_current_value_is_ewma_of_window():
    result = aggregate_numeric(series([10, 20, 10, 20, 10]), T)
    level = 10.0
    for x in (20, 10, 20, 10):
        level = 0.3 * x + 0.7 * level
    assert float(result.current_value) == pytest.approx(level)
    assert result.state == "stable"


def test_numeric_confidence_is_inverse_of_spread():
    assert aggregate_numeric(series([5, 5, 5]), T).confidence == 1.0
    assert aggregate_numeric(series([0, 0, 0, 0, 100]), T).confidence == pytest.approx(
        1 / (1 + 2.0)
    )


def test_numeric_ignores_unparseable_values():
    result = aggregate_numeric(series(["x", "5", "nan", "5", "5"]), T)
    assert (result.state, result.current_value) == ("stable", "5")


HOUR = 3600
HASH = [
    # (name, values oldest first, step seconds, total count, state, current, confidence)
    ("empty", "", HOUR, None, "unknown", None, 0.0),
    ("too few", "aa", HOUR, None, "unknown", "a", 0.0),
    ("one recent but long series", "a", HOUR, 40, "stable", "a", 1.0),
    ("never rotates", "aaaa", HOUR, None, "stable", "a", 1.0),
    ("one rotation", "aaab", HOUR, None, "drifting", "b", 0.25),
    ("two rotations", "aabbc", HOUR, None, "drifting", "c", 0.2),
    ("rotation storm", "abcdef", HOUR, None, "conflicted", "f", 1 / 6),
    ("back and forth", "abab", HOUR, None, "conflicted", "b", 0.5),
    ("old rotations are forgotten", "abcdeeee", 10 * HOUR, None, "stable", "e", 1.0),
    ("old rotations, one recent", "abcdeeef", 10 * HOUR, None, "drifting", "f", 1 / 3),
]


@pytest.mark.parametrize(
    ("values", "step", "total", "state", "current", "confidence"),
    [row[1:] for row in HASH],
    ids=[row[0] for row in HASH],
)
def test_hash(values, step, total, state, current, confidence):
    result = aggregate_hash(series(values, step), T, total)
    assert (result.state, result.current_value) == (state, current)
    assert result.confidence == pytest.approx(confidence, abs=1e-6)


def test_hash_window_is_relative_to_newest_observation():
    obs = series("abc", 13 * HOUR)
    assert [o.value for o in hash_window(obs, T)] == ["b", "c"]
    assert [o.value for o in hash_window(obs, Thresholds(hash_window_s=HOUR))] == ["c"]


def test_thresholds_come_from_settings():
    s = Settings(
        attribution_window=7,
        attribution_min_observations=2,
        attribution_majority=5,
        attribution_hash_window_s=600,
    )
    t = Thresholds.from_settings(s)
    assert (t.window, t.min_observations, t.majority, t.hash_window_s) == (7, 2, 5, 600)
    assert rows_needed("categorical", t) == 14
    # A wider window changes the verdict: 4 of 5 is no longer a clear window of 7.
    assert aggregate("categorical", series("aaaaaab"), t).state == "stable"
    assert aggregate("categorical", series("aaaabbb"), t).state == "conflicted"


def test_dispatch_and_unknown_kind():
    assert aggregate("hash", series("aaa"), T).state == "stable"
    assert aggregate("numeric", series([1, 1, 1]), T).state == "stable"
    with pytest.raises(ValueError):
        aggregate("vector", series("aaa"), T)  # type: ignore[arg-type]
