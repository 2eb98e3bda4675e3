"""Prometheus families built from a fresh ``snapshot.read`` on every scrape.

Counters come from the counters hash (kept by the Lua scripts and the few
Python paths in ``counters``); gauges are read from the stores. Labels hold
outcomes, phases, risk levels, topics, stream, group, queue and task names:
never a user id or message text.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from models.envelopes import STREAM_TOPICS
from services.core.clients import (
    broker_transport_options,
    broker_url,
    get_redis,
    session_factory,
)
from services.core.settings import Settings
from services.metrics import counters as fields
from services.metrics import snapshot
from services.metrics.snapshot import Snapshot

STORES = ("redis", "postgres", "broker")
KNOWN_TOPICS = tuple(topic for topics in STREAM_TOPICS.values() for topic in topics)


class VigilCollector(Collector):
    """Reads the stores on each ``collect``; holds no state between scrapes."""

    def __init__(
        self,
        redis_client: redis.Redis,
        settings: Settings,
        sessions: sessionmaker[Session],
        broker: snapshot.BrokerQueues | None = None,
    ) -> None:
        self.redis_client = redis_client
        self.settings = settings
        self.sessions = sessions
        self.broker = broker

    def collect(self) -> Iterator[Metric]:
        snap = snapshot.read(self.redis_client, self.settings, self.sessions, self.broker)
        yield from families(snap)


def families(snap: Snapshot) -> Iterator[Metric]:
    """Every vigil family for one snapshot."""
    yield from _counter_families(snap)
    yield from _stream_families(snap)
    yield from _store_families(snap)
    yield from _durability_families(snap)
    up = GaugeMetricFamily(
        "vigil_store_up", "1 when the store answered this scrape", labels=["store"]
    )
    for store in STORES:
        if store in snap.up:
            up.add_metric([store], 1.0 if snap.up[store] else 0.0)
    yield up


def _durability_families(snap: Snapshot) -> Iterator[Metric]:
    """How the state Redis keeps data: the alerts VigilStateRedisEvicts and
    VigilStateRedisVolatile read these."""
    durability = snap.redis_durability
    if durability is None:
        return
    evicting = GaugeMetricFamily(
        "vigil_state_redis_evicting",
        "1 when the state Redis's maxmemory-policy lets it delete keys (anything but noeviction)",
        labels=["policy"],
    )
    evicting.add_metric([durability.maxmemory_policy or "unknown"], float(durability.evicts))
    yield evicting
    if durability.aof is None or durability.rdb_snapshots is None:
        return  # unknown where CONFIG is refused: no figure rather than a wrong one
    persistent = GaugeMetricFamily(
        "vigil_state_redis_persistent", "1 when the state Redis keeps an AOF or RDB snapshots"
    )
    persistent.add_metric([], float(not durability.keeps_nothing_on_disk))
    yield persistent


def _counter_families(snap: Snapshot) -> Iterator[Metric]:
    if not snap.up.get("redis"):
        return
    c = snap.counters
    for family, outcomes, what in (
        (fields.MESSAGES, fields.MESSAGE_OUTCOMES, "Messages by ingest outcome"),
        (fields.DETECTIONS, fields.DETECTION_OUTCOMES, "Detections by ingest outcome"),
    ):
        metric = CounterMetricFamily(f"vigil_{family}", what, labels=["outcome"])
        for name in outcomes:
            metric.add_metric([name], c.get(fields.outcome(family, name), 0))
        yield metric
    yield _prefixed(
        c, fields.PHASE_PREFIX, "vigil_phase_transitions", "Bond phase transitions", "to_phase"
    )
    yield _prefixed(c, fields.RISK_PREFIX, "vigil_risk_changes", "Bond risk changes", "to_risk")
    envelopes = _prefixed(
        c,
        fields.ENVELOPES_PREFIX,
        "vigil_envelopes_published",
        "Envelopes published on the streams",
        "topic",
        known=KNOWN_TOPICS,
    )
    yield envelopes
    for field, name, what in (
        (fields.HISTORY_STORED, "vigil_history_stored", "Messages stored in user history"),
        (fields.CORRELATOR_RUNS, "vigil_correlator_runs", "Multi-actor correlator runs"),
        (fields.CAP_RESETS, "vigil_cap_resets", "Daily message counts reset by the beat job"),
    ):
        metric = CounterMetricFamily(name, what)
        metric.add_metric([], c.get(field, 0))
        yield metric


def _prefixed(
    c: dict[str, int],
    prefix: str,
    name: str,
    what: str,
    label: str,
    known: tuple[str, ...] = (),
) -> CounterMetricFamily:
    metric = CounterMetricFamily(name, what, labels=[label])
    values = dict.fromkeys(known, 0)
    values.update({f[len(prefix) :]: n for f, n in c.items() if f.startswith(prefix)})
    for value in sorted(values):
        metric.add_metric([value], values[value])
    return metric


def _stream_families(snap: Snapshot) -> Iterator[Metric]:
    if not snap.up.get("redis"):
        return
    length = GaugeMetricFamily("vigil_stream_length", "Entries in the stream", labels=["stream"])
    quarantined = GaugeMetricFamily(
        "vigil_stream_quarantined", "Entries in the stream's quarantine", labels=["stream"]
    )
    pending = GaugeMetricFamily(
        "vigil_stream_group_pending",
        "Entries delivered to the consumer group and not acked",
        labels=["stream", "group"],
    )
    lag = GaugeMetricFamily(
        "vigil_stream_group_lag",
        "Entries not yet delivered to the consumer group",
        labels=["stream", "group"],
    )
    for stream, info in sorted(snap.streams.items()):
        length.add_metric([stream], info.length)
        quarantined.add_metric([stream], info.quarantined)
        for group in info.groups:
            pending.add_metric([stream, group.name], group.pending)
            if group.lag is not None:
                lag.add_metric([stream, group.name], group.lag)
    yield from (length, quarantined, pending, lag)


def _store_families(snap: Snapshot) -> Iterator[Metric]:
    if snap.up.get("broker"):
        depth = GaugeMetricFamily(
            "vigil_queue_depth", "Tasks waiting in the broker queue", labels=["queue"]
        )
        for queue, n in sorted(snap.queue_depths.items()):
            depth.add_metric([queue], n)
        yield depth
        # Declared on both brokers (alerts refer to them); samples where they apply.
        unusable = GaugeMetricFamily(
            "vigil_queue_unusable",
            "1 when RabbitMQ holds the queue in a form workers cannot consume "
            "(vigil health names it and the fix)",
            labels=["queue"],
        )
        for queue, flag in sorted(snap.queue_unusable.items()):
            unusable.add_metric([queue], flag)
        yield unusable
        unreadable = GaugeMetricFamily(
            "vigil_broker_unreadable",
            "Messages on a Redis broker's queues that were not Celery messages, "
            "set aside with their reason and never delivered",
        )
        if snap.broker_unreadable is not None:
            unreadable.add_metric([], snap.broker_unreadable)
        yield unreadable
    g = snap.gauges
    if g is None:
        return
    dead = GaugeMetricFamily(
        "vigil_dead_letters", "Rows in the dead-letter store", labels=["task", "reason"]
    )
    for task, reason, n in g.dead_letters:
        dead.add_metric([task, reason], n)
    yield dead
    created = CounterMetricFamily(
        "vigil_dead_letters_created",
        "Dead letters ever stored (purges do not lower it): its rate is new dead letters",
    )
    created.add_metric([], g.dead_letters_created)
    yield created
    for name, what, value in (
        ("vigil_outbox_pending", "Outbox rows not yet published", g.outbox_pending),
        (
            "vigil_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row (0 when none)",
            g.outbox_oldest_age_s,
        ),
        (
            "vigil_multi_actor_suspects",
            "Identities the correlator announces as multi-actor",
            g.multi_actor_suspects,
        ),
    ):
        metric = GaugeMetricFamily(name, what)
        metric.add_metric([], value)
        yield metric


def registry(collector: VigilCollector) -> CollectorRegistry:
    """A registry holding only vigil's families (no process or platform metrics)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def for_settings(settings: Settings, queues: tuple[str, ...]) -> VigilCollector:
    """A collector on this process's clients for ``settings``, reading ``queues``' depths."""
    return VigilCollector(
        get_redis(settings),
        settings,
        session_factory(settings),
        snapshot.BrokerQueues(broker_url(settings), queues, broker_transport_options(settings)),
    )
