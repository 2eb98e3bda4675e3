"""Aggregation rules of the attribution engine (DECNET reference), as pure functions.

Every function takes the observations of one (identity, primitive) **oldest first**
(chronological order, so "flips", "rotations" and the EWMA read the way they
happen) and returns an :class:`Aggregate`. Nothing here touches a database: the
repository reads the few rows a rule needs and hands them over.

Which rows a rule needs (see :func:`rows_needed`):

- categorical and numeric: the last two windows (``2 * window`` rows); the
  newest ``window`` rows are the current window, the ``window`` before them the
  previous one.
- hash: the rows observed within ``hash_window_s`` of the newest observation
  (bounded by :data:`HASH_MAX_ROWS`).

Confidence, a number in 0..1, per kind:

- categorical: the share of the window held by its most common value, except
  for ``multi_actor`` where it is the share of adjacent pairs that flip (how
  cleanly the two values alternate).
- numeric: ``1 / (1 + cv)`` where cv is the window's coefficient of variation;
  1.0 for a constant series, 0.5 at the default conflicted threshold.
- hash: the share of the observations within the hash window that carry the
  current (newest) value.
- ``unknown`` (too few observations) is always 0.0.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal

from services.core.settings import Settings

Kind = Literal["categorical", "numeric", "hash"]
State = Literal["unknown", "stable", "drifting", "conflicted", "multi_actor"]
STATES: tuple[str, ...] = ("unknown", "stable", "drifting", "conflicted", "multi_actor")

# A hash that rotates thousands of times a day is "conflicted" long before that;
# the cap keeps one recompute bounded whatever a hostile feed sends.
HASH_MAX_ROWS = 1000


@dataclass(frozen=True, slots=True)
class Obs:
    value: str
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class Thresholds:
    window: int = 5
    min_observations: int = 3
    majority: int = 4
    ewma_alpha: float = 0.3
    cv_conflicted: float = 1.0
    drift_shift: float = 0.30
    hash_window_s: int = 86_400

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            window=settings.attribution_window,
            min_observations=settings.attribution_min_observations,
            majority=settings.attribution_majority,
            ewma_alpha=settings.attribution_ewma_alpha,
            cv_conflicted=settings.attribution_cv_conflicted,
            drift_shift=settings.attribution_drift_shift,
            hash_window_s=settings.attribution_hash_window_s,
        )


@dataclass(frozen=True, slots=True)
class Aggregate:
    state: State
    current_value: str | None
    confidence: float


def rows_needed(kind: Kind, thresholds: Thresholds) -> int:
    """Upper bound of rows one recompute reads; never the whole series."""
    return HASH_MAX_ROWS if kind == "hash" else 2 * thresholds.window


def aggregate(
    kind: Kind, obs: Sequence[Obs], thresholds: Thresholds, observation_count: int | None = None
) -> Aggregate:
    """Dispatch on kind. ``observation_count`` is the series' total length (the
    hash rule reads only the last day, but an old series is not "unknown")."""
    if kind == "categorical":
        return aggregate_categorical(obs, thresholds)
    if kind == "numeric":
        return aggregate_numeric(obs, thresholds)
    if kind == "hash":
        return aggregate_hash(obs, thresholds, observation_count)
    raise ValueError(f"unknown kind {kind!r}")


def _windows(values: Sequence[str], thresholds: Thresholds) -> tuple[list[str], list[str]]:
    current = list(values[-thresholds.window :])
    previous = (
        list(values[-2 * thresholds.window : -thresholds.window])
        if len(values) > thresholds.window
        else []
    )
    return current, previous


def _required_majority(n: int, thresholds: Thresholds) -> int:
    # "4 of 5" scaled to a window that is not full yet: 3 of 3, 4 of 4.
    return math.ceil(thresholds.majority * n / thresholds.window - 1e-9)


def _clear_majority(values: Sequence[str], thresholds: Thresholds) -> str | None:
    if len(values) < thresholds.min_observations:
        return None
    value, count = Counter(values).most_common(1)[0]
    return value if count >= _required_majority(len(values), thresholds) else None


def aggregate_categorical(obs: Sequence[Obs], thresholds: Thresholds) -> Aggregate:
    current, previous = _windows([o.value for o in obs], thresholds)
    if len(current) < thresholds.min_observations:
        return Aggregate("unknown", current[-1] if current else None, 0.0)
    counts = Counter(current)
    top_share = counts.most_common(1)[0][1] / len(current)
    majority = _clear_majority(current, thresholds)
    if majority is not None:
        before = _clear_majority(previous, thresholds)
        state: State = "stable" if before is None or before == majority else "drifting"
        return Aggregate(state, majority, round(top_share, 6))
    pairs = list(pairwise(current))
    flips = sum(1 for a, b in pairs if a != b)
    repeats = len(pairs) - flips
    if len(counts) == 2 and flips >= 2 * repeats:
        return Aggregate("multi_actor", current[-1], round(flips / len(pairs), 6))
    return Aggregate("conflicted", current[-1], round(top_share, 6))


def _ewma(values: Sequence[float], alpha: float) -> float:
    level = values[0]
    for x in values[1:]:
        level = alpha * x + (1 - alpha) * level
    return level


def _relative(diff: float, base: float) -> float:
    if base == 0:
        return 0.0 if diff == 0 else math.inf
    return diff / abs(base)


def parse_numeric(value: str) -> float | None:
    """A finite float, or None for a value the numeric rule cannot use."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def format_numeric(value: float) -> str:
    return format(value, ".12g")


def aggregate_numeric(obs: Sequence[Obs], thresholds: Thresholds) -> Aggregate:
    parsed = [parse_numeric(o.value) for o in obs]
    numbers = [x for x in parsed if x is not None]
    current = numbers[-thresholds.window :]
    previous = (
        numbers[-2 * thresholds.window : -thresholds.window]
        if len(numbers) > thresholds.window
        else []
    )
    if len(current) < thresholds.min_observations:
        return Aggregate("unknown", format_numeric(current[-1]) if current else None, 0.0)
    ewma = format_numeric(_ewma(current, thresholds.ewma_alpha))
    mean = statistics.fmean(current)
    cv = _relative(statistics.pstdev(current), mean)
    confidence = round(1 / (1 + cv), 6)
    if cv > thresholds.cv_conflicted:
        return Aggregate("conflicted", ewma, confidence)
    if len(previous) >= thresholds.min_observations:
        before = statistics.fmean(previous)
        if _relative(abs(mean - before), before) >= thresholds.drift_shift:
            return Aggregate("drifting", ewma, confidence)
    return Aggregate("stable", ewma, confidence)


def hash_window(obs: Sequence[Obs], thresholds: Thresholds) -> list[Obs]:
    """The observations within ``hash_window_s`` of the newest one."""
    if not obs:
        return []
    since = obs[-1].observed_at - timedelta(seconds=thresholds.hash_window_s)
    return [o for o in obs if o.observed_at >= since]


def aggregate_hash(
    obs: Sequence[Obs], thresholds: Thresholds, observation_count: int | None = None
) -> Aggregate:
    recent = hash_window(obs, thresholds)
    total = max(observation_count or 0, len(obs))
    if not recent or total < thresholds.min_observations:
        return Aggregate("unknown", recent[-1].value if recent else None, 0.0)
    values = [o.value for o in recent]
    rotations = sum(1 for a, b in pairwise(values) if a != b)
    current = values[-1]
    confidence = round(values.count(current) / len(values), 6)
    if rotations == 0:
        state: State = "stable"
    elif rotations <= 2:
        state = "drifting"
    else:
        state = "conflicted"
    return Aggregate(state, current, confidence)
