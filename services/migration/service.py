"""Copy a single Redis's vigil state into the Redis Cluster layout.

On a cluster every user key carries its shard's hash tag and what is global on
one Redis (the streams, the counters) is one key per shard
(``services.core.keys``), so the keys cannot be moved as they are. What is
copied, and how:

- Per-user keys (bond, events, history, the two dedupe hashes) and the
  outbox's sent markers: DUMP on the source, then RESTORE ... REPLACE under the
  key's cluster name with its remaining PTTL. Values, types and TTLs are kept,
  and a second run rewrites the same values, so an interrupted run is simply
  run again.
- The counters hash: each field is added (HINCRBY) to shard 0's hash, which
  readers add to the other shards'. The addition and a mark in the progress
  hash (``progress_key``, on the same slot) are one script, so a second run
  adds nothing.
- The envelope streams and their quarantines (``<stream>:dead``): each entry
  is XADDed with its own id to its envelope's shard (``streams.envelope_shard``;
  an entry that does not decode goes to shard 0). Ids grow in the source, so on
  each shard too; an id at or below a shard's last id is already there from an
  earlier run and is skipped. Each consumer group is created on every shard at
  its last-delivered id, so it delivers exactly the entries it had not read.
  Its pending entries are put back in its pending list on their shard with
  their consumer, delivery count and idle time (XCLAIM ... FORCE), so they are
  reclaimed and counted toward the quarantine as before; one whose entry was
  trimmed from the source is dropped (a reclaim would only have acked it). The
  stream's last generated id is carried over (XSETID), so entries added later
  on the cluster sort after every group's position.
- Not copied: redbeat's keys (beat recreates its schedule), worker pings and
  cap-reset claims (short-lived), and anything else (Celery results, foreign
  keys, keys under vigil's prefixes whose ids vigil could not have written).

Nothing may write the source or the cluster meanwhile (``STOP_FIRST``). A first
run needs a cluster without vigil state; its progress hash names the source, so
later runs (after an interruption, or to verify) continue the same copy. The
report holds counts and key kinds only: history holds message text.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.client import NEVER_DECODE
from redis.cluster import RedisCluster

from models.envelopes import STREAM_TOPICS
from models.payloads import ID_PATTERN
from services.core import keys, scripts
from services.core.scan import master_clients, scan_all
from services.core.settings import Settings
from services.envelopes.consumers import quarantine_key
from services.envelopes.outbox import sent_marker_key
from services.envelopes.streams import (
    as_text,
    decode,
    envelope_shard,
    execute_raw,
    id_order,
    stream_key,
    stream_keys,
)
from services.metrics import counters

# What an operator must stop before a copy, and why; the CLI prints it.
STOP_FIRST = (
    "every vigil worker and beat, on the single Redis and on the cluster: nothing may "
    "change state while it is copied (frontends can keep sending: their tasks wait in "
    "the broker until workers start on the cluster)",
    "every reader of the envelope streams (consumer groups): their positions and "
    "pending entries are copied as they are now",
)
NOT_COPIED_NOTE = {
    "redbeat": "beat's schedule (redbeat); beat recreates it on the cluster",
    "transient": "worker pings and cap-reset claims; short-lived, recreated as needed",
    "other": "not vigil state (task results, foreign keys, ids vigil could not have written)",
}
# The kinds of key copied with DUMP/RESTORE, in report order.
KINDS = ("bond", "events", "history", "message_dedupe", "detection_dedupe", "outbox_sent")
DEFAULT_BATCH = 500

_ID = re.compile(ID_PATTERN)
_PLATFORM = re.compile(r"^[a-z0-9_.\-]{1,64}$")  # models.payloads.Label
_SCOPE = re.compile(r"^\{[^{}]+\}:")  # a user key's hash tag, right after its prefix
_TAIL_TAG = re.compile(r":\{[^{}]+\}$")  # a per-shard key's hash tag, at its end

Progress = Callable[[str, int], None]
Parsed = tuple[str, tuple[str, ...]]


class MigrationError(Exception):
    """The copy cannot start or go on; the message says why and what to do."""


@dataclass
class StreamCopy:
    """What happened to one source stream (or quarantine)."""

    key: str
    entries: int = 0
    added: int = 0
    already_there: int = 0
    groups: list[str] = field(default_factory=list)
    pending_restored: int = 0
    pending_dropped: int = 0


@dataclass
class Check:
    """One count compared between the source and the cluster."""

    what: str
    source: int
    target: int

    @property
    def ok(self) -> bool:
        return self.source == self.target


@dataclass
class Report:
    copied: Counter[str] = field(default_factory=Counter)
    vanished: int = 0  # expired between SCAN and DUMP
    not_copied: Counter[str] = field(default_factory=Counter)
    counters_added: bool = False  # False: an earlier run had added them
    streams: list[StreamCopy] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "mismatch",
            "copied": {kind: self.copied[kind] for kind in KINDS},
            "vanished": self.vanished,
            "not_copied": {why: self.not_copied[why] for why in NOT_COPIED_NOTE},
            "counters_added": self.counters_added,
            "streams": [asdict(stream) for stream in self.streams],
            "checks": [{**asdict(check), "ok": check.ok} for check in self.checks],
        }


# Key layout -------------------------------------------------------------------


def layouts(settings: Settings) -> tuple[Settings, Settings]:
    """(the single Redis's layout, the cluster's) for the same prefixes."""
    if not settings.redis_cluster_nodes:
        raise MigrationError(
            "the target is not a Redis Cluster: set VIGIL_REDIS_CLUSTER_NODES "
            "(and VIGIL_BROKER_URL) to the cluster the state moves to"
        )
    return settings.model_copy(update={"redis_cluster_nodes": None}), settings


def _rules(settings: Settings) -> list[tuple[str, str, int]]:
    """(kind, prefix, parts after the prefix), longest prefix first: the key
    functions of ``services.core.keys`` read backwards."""
    vigil = settings.vigil_prefix
    rules = [
        ("bond", settings.bond_prefix, 1),
        ("events", keys.events_prefix(settings), 1),
        ("history", settings.history_prefix, 2),
        ("message_dedupe", f"{vigil}dedupe:msg:", 2),
        ("detection_dedupe", f"{vigil}dedupe:det:", 2),
        ("outbox_sent", f"{vigil}outbox:sent:", 1),
    ]
    return sorted(rules, key=lambda rule: len(rule[1]), reverse=True)


def _valid(kind: str, parts: tuple[str, ...]) -> bool:
    if kind == "history":
        return (parts[0] == keys.DM_GUILD or bool(_ID.match(parts[0]))) and bool(
            _ID.match(parts[1])
        )
    if kind in ("message_dedupe", "detection_dedupe"):
        return bool(_PLATFORM.match(parts[0]) and _ID.match(parts[1]))
    return bool(_ID.match(parts[0]))


def parse(settings: Settings, key: str) -> Parsed | None:
    """The kind of a copied key and its parts (user id; guild or platform and
    user id; envelope id) in ``settings``'s layout, or None."""
    cluster = bool(settings.redis_cluster_nodes)
    for kind, prefix, count in _rules(settings):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if cluster:
            tag = (_TAIL_TAG.search if kind == "outbox_sent" else _SCOPE.match)(rest)
            if tag is None:
                continue
            rest = rest[: tag.start()] if kind == "outbox_sent" else rest[tag.end() :]
        parts = tuple(rest.split(":"))
        if len(parts) == count and _valid(kind, parts):
            return kind, parts
    return None


def target_key(cluster: Settings, kind: str, parts: tuple[str, ...]) -> str:
    """The cluster name of a parsed key."""
    if kind == "bond":
        return keys.bond(cluster, parts[0])
    if kind == "events":
        return keys.events(cluster, parts[0])
    if kind == "history":
        return keys.history(cluster, parts[0], parts[1])
    if kind == "message_dedupe":
        return keys.message_dedupe(cluster, parts[0], parts[1])
    if kind == "detection_dedupe":
        return keys.detection_dedupe(cluster, parts[0], parts[1])
    if kind == "outbox_sent":
        # Where the relay looks for a row recorded under one Redis: the shard
        # of its envelope id (services.envelopes.outbox._row_stream).
        shard = keys.shard_of(cluster, parts[0])
        return sent_marker_key(cluster, parts[0], stream_key(cluster, "bond", shard))
    raise ValueError(f"unknown kind {kind!r}")


def _why_not(single: Settings, key: str) -> str:
    vigil = single.vigil_prefix
    if key.startswith(f"{vigil}redbeat:"):
        return "redbeat"
    if key.startswith((f"{vigil}worker:", f"{vigil}reset_caps:")):
        return "transient"
    return "other"


def _stream_pairs(single: Settings, cluster: Settings) -> Iterator[tuple[str, str, list[str]]]:
    """(label, source key, the cluster's keys by shard) of every stream and quarantine."""
    for name in STREAM_TOPICS:
        targets = stream_keys(cluster, name)
        yield name, stream_key(single, name), targets
        yield (
            f"{name} quarantine",
            quarantine_key(stream_key(single, name)),
            [quarantine_key(key) for key in targets],
        )


def _copied_apart(settings: Settings) -> set[str]:
    """The keys copied by their own step (counters, streams) in ``settings``'s layout."""
    found = set(keys.metrics_keys(settings))
    for name in STREAM_TOPICS:
        for key in stream_keys(settings, name):
            found |= {key, quarantine_key(key)}
    return found


def progress_key(cluster: Settings) -> str:
    """The hash that records this migration on the cluster (on shard 0's slot,
    with the counters it marks as added)."""
    return keys.sharded(cluster, f"{cluster.vigil_prefix}migrate-state", 0)


def describe(client: redis.Redis) -> str:
    """A Redis's address without its password, to name the source."""
    kwargs = client.get_connection_kwargs()
    where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
    return f"{where}/{kwargs.get('db', 0)}"


# The copy ---------------------------------------------------------------------


def migrate(
    source: redis.Redis,
    target: RedisCluster,
    settings: Settings,
    *,
    batch: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> Report:
    """Copy the single Redis ``source`` into the cluster ``target`` (whose layout
    ``settings`` describes), then verify the counts. Safe to run again."""
    single, cluster = layouts(settings)
    if not isinstance(target, RedisCluster):
        raise MigrationError("the target client is not a Redis Cluster client")
    if int(source.info("cluster").get("cluster_enabled", 0)):
        raise MigrationError("the source is a cluster node: --from-url names the single Redis")
    _begin(source, target, single, cluster)
    step = progress or (lambda _phase, _done: None)
    report = Report()
    report.counters_added = _add_counters(source, target, single, cluster)
    _copy_keys(source, target, single, cluster, batch, report, step)
    for _label, source_key, targets in _stream_pairs(single, cluster):
        report.streams.append(
            _copy_stream(source, target, cluster, source_key, targets, batch, step)
        )
    report.checks = verify(source, target, settings)
    if report.ok:
        target.hset(progress_key(cluster), "verified_at", _now())
    return report


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _begin(source: redis.Redis, target: RedisCluster, single: Settings, cluster: Settings) -> None:
    """Start a copy on an empty cluster, or go on with the one already started
    there from the same source."""
    name = describe(source)
    started = target.hget(progress_key(cluster), "source")
    if started is not None:
        if as_text(started) != name:
            raise MigrationError(
                f"the cluster holds a copy from {as_text(started)}, not from {name}; "
                f"delete {progress_key(cluster)} only if that copy is to be discarded"
            )
        return
    kind = _state_kind_in(target, cluster)
    if kind is not None:
        raise MigrationError(
            f"the cluster already holds vigil state ({kind} keys): migrate-state copies "
            "into a cluster without any"
        )
    target.hset(progress_key(cluster), mapping={"source": name, "started_at": _now()})


def _state_kind_in(target: RedisCluster, cluster: Settings) -> str | None:
    apart = _copied_apart(cluster)
    for key in map(as_text, scan_all(target, "*")):
        if key in apart:
            return "counters or stream"
        parsed = parse(cluster, key)
        if parsed is not None:
            return parsed[0]
    return None


def _add_counters(
    source: redis.Redis, target: RedisCluster, single: Settings, cluster: Settings
) -> bool:
    """Add the source's counters to shard 0's, once (see the module docstring)."""
    totals = counters.read_all(source, single)
    pairs = [item for name, count in sorted(totals.items()) for item in (name, count)]
    done = scripts.run(
        target,
        "migrate_metrics",
        [progress_key(cluster), keys.metrics(cluster, 0)],
        ["counters_added_at", _now(), *pairs],
    )
    return bool(done)


def _copy_keys(
    source: redis.Redis,
    target: RedisCluster,
    single: Settings,
    cluster: Settings,
    batch: int,
    report: Report,
    step: Progress,
) -> None:
    apart = _copied_apart(single)
    cursor = scanned = 0
    while True:
        cursor, found = source.scan(cursor=cursor, count=batch)
        plan: list[tuple[str, str, str]] = []
        for key in map(as_text, found):
            if key in apart:
                continue
            parsed = parse(single, key)
            if parsed is None:
                report.not_copied[_why_not(single, key)] += 1
            else:
                plan.append((key, target_key(cluster, *parsed), parsed[0]))
        _restore(source, target, plan, report)
        scanned += len(found)
        step("keys", scanned)
        if int(cursor) == 0:
            return


def _restore(
    source: redis.Redis, target: RedisCluster, plan: list[tuple[str, str, str]], report: Report
) -> None:
    """DUMP each planned key with its PTTL and RESTORE it under its cluster name."""
    if not plan:
        return
    read = source.pipeline(transaction=False)
    for key, _, _ in plan:
        read.pttl(key)
        read.dump(key)
    replies = read.execute()
    write = target.pipeline()
    restored = 0
    for (_, new_key, kind), ttl, dumped in zip(plan, replies[::2], replies[1::2], strict=True):
        # PTTL -2: gone; 0: expiring now (RESTORE would read 0 as "no TTL").
        if dumped is None or int(ttl) in (-2, 0):
            report.vanished += 1
            continue
        write.restore(new_key, max(int(ttl), 0), dumped, replace=True)
        report.copied[kind] += 1
        restored += 1
    if not restored:
        return
    try:
        write.execute()
    except redis.ResponseError as exc:
        raise _restore_error(source, target, exc) from exc


def _restore_error(source: redis.Redis, target: RedisCluster, exc: Exception) -> MigrationError:
    """Name the usual cause of a refused RESTORE: a source newer than the cluster."""
    theirs = {as_text(m.info("server")["redis_version"]) for m in master_clients(target)}
    ours = as_text(source.info("server")["redis_version"])
    if "payload version" in str(exc).lower() and theirs != {ours}:
        return MigrationError(
            f"the cluster (Redis {', '.join(sorted(theirs))}) cannot read the source's DUMPs "
            f"(Redis {ours}): a DUMP is read only by the same or a newer Redis; run the "
            "cluster on the source's version or newer"
        )
    # The server's reason only: redis-py prefixes it with the failed command,
    # whose arguments hold the dumped value (history holds message text).
    text = str(exc)
    reason = text.split("caused error: ", 1)[1] if "caused error: " in text else type(exc).__name__
    return MigrationError(f"the cluster refused a RESTORE: {reason[:120]}")


# Streams ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    entry_id: str
    consumer: str
    idle_ms: int
    deliveries: int


def _stream_info(client: redis.Redis, key: str) -> dict[str, Any] | None:
    """XINFO STREAM with text names, read raw (an entry's bytes must not be decoded)."""
    try:
        reply = execute_raw(client, "XINFO", "STREAM", key)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return None
        raise
    return {as_text(name): value for name, value in reply.items()}


def _last_generated(client: redis.Redis, key: str) -> tuple[int, int]:
    info = _stream_info(client, key)
    return (0, 0) if info is None else id_order(as_text(info["last-generated-id"]))


def _groups(client: redis.Redis, key: str) -> list[tuple[str, str]]:
    """(name, last-delivered id) of each consumer group of a stream."""
    return [
        (as_text(group["name"]), as_text(group["last-delivered-id"]))
        for group in client.xinfo_groups(key)
    ]


def _pending(client: redis.Redis, key: str, group: str, batch: int) -> list[_Pending]:
    out: list[_Pending] = []
    start = "-"
    while True:
        page = client.xpending_range(key, group, min=start, max="+", count=batch)
        out += [
            _Pending(
                as_text(item["message_id"]),
                as_text(item["consumer"]),
                int(item["time_since_delivered"]),
                int(item["times_delivered"]),
            )
            for item in page
        ]
        if len(page) < batch:
            return out
        start = "(" + out[-1].entry_id


def _entry_shard(cluster: Settings, entry_id: str, fields: Any) -> int:
    """The shard an entry's envelope goes to; 0 when it does not decode."""
    envelope = decode(fields, entry_id=entry_id)
    return 0 if envelope is None else envelope_shard(cluster, envelope)


def _entries(client: redis.Redis, key: str, batch: int) -> Iterator[list[tuple[str, Any]]]:
    """Every entry, oldest first, ``batch`` at a time, with raw fields."""
    start = "-"
    while True:
        page = execute_raw(client, "XRANGE", key, start, "+", "COUNT", int(batch))
        if not page:
            return
        yield [(as_text(raw_id), fields) for raw_id, fields in page]
        start = "(" + as_text(page[-1][0])


def _copy_stream(
    source: redis.Redis,
    target: RedisCluster,
    cluster: Settings,
    source_key: str,
    targets: list[str],
    batch: int,
    step: Progress,
) -> StreamCopy:
    copy = StreamCopy(source_key)
    info = _stream_info(source, source_key)
    if info is None:
        return copy
    groups = _groups(source, source_key)
    copy.groups = [name for name, _ in groups]
    pending = {name: _pending(source, source_key, name, batch) for name, _ in groups}
    wanted = {item.entry_id for items in pending.values() for item in items}
    shard_of_entry: dict[str, int] = {}
    last = [_last_generated(target, key) for key in targets]
    for entries in _entries(source, source_key, batch):
        write = target.pipeline()
        for entry_id, fields in entries:
            shard = _entry_shard(cluster, entry_id, fields)
            if entry_id in wanted:
                shard_of_entry[entry_id] = shard
            copy.entries += 1
            if id_order(entry_id) <= last[shard]:
                copy.already_there += 1
                continue
            write.xadd(targets[shard], fields, id=entry_id)
            last[shard] = id_order(entry_id)
            copy.added += 1
        if len(write):
            write.execute()
        step(source_key, copy.entries)
    for name, last_delivered in groups:
        for key in targets:
            _place_group(target, key, name, last_delivered)
    _carry_last_id(target, targets, as_text(info["last-generated-id"]))
    write = target.pipeline()
    for name, items in pending.items():
        for item in items:
            shard = shard_of_entry.get(item.entry_id)
            if shard is None:
                copy.pending_dropped += 1
                continue
            write.execute_command(
                "XCLAIM",
                targets[shard],
                name,
                item.consumer,
                0,
                item.entry_id,
                "IDLE",
                item.idle_ms,
                "RETRYCOUNT",
                item.deliveries,
                "FORCE",
                "JUSTID",
            )
            copy.pending_restored += 1
    if len(write):
        write.execute()
    return copy


def _place_group(target: RedisCluster, key: str, group: str, last_delivered: str) -> None:
    """The group on one shard, at the source group's position."""
    try:
        target.xgroup_create(key, group, id=last_delivered, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        target.xgroup_setid(key, group, last_delivered)


def _carry_last_id(target: RedisCluster, targets: list[str], last_id: str) -> None:
    for key in targets:
        info = _stream_info(target, key)
        if info is not None and id_order(as_text(info["last-generated-id"])) < id_order(last_id):
            target.execute_command("XSETID", key, last_id)


# Verification -----------------------------------------------------------------


def _kinds(client: redis.Redis | RedisCluster, settings: Settings) -> Counter[str]:
    found: Counter[str] = Counter()
    for key in map(as_text, scan_all(client, "*")):
        parsed = parse(settings, key)
        if parsed is not None:
            found[parsed[0]] += 1
    return found


def _length(client: redis.Redis | RedisCluster, stream_keys_: Iterable[str]) -> int:
    return sum(int(client.xlen(key)) for key in stream_keys_)


def _pending_with_entry(client: redis.Redis, key: str, group: str) -> int:
    """Pending entries of a group whose entry is still in the stream."""
    items = _pending(client, key, group, DEFAULT_BATCH)
    if not items:
        return 0
    read = client.pipeline(transaction=False)
    for item in items:
        read.execute_command("XRANGE", key, item.entry_id, item.entry_id, **{NEVER_DECODE: []})
    return sum(1 for found in read.execute() if found)


def _group_checks(
    source: redis.Redis, target: RedisCluster, label: str, source_key: str, targets: list[str]
) -> list[Check]:
    checks = []
    for name, last_delivered in _groups(source, source_key):
        placed = pending = 0
        for key in targets:
            on_shard = (
                {group: last for group, last in _groups(target, key)} if target.exists(key) else {}
            )
            if on_shard.get(name) == last_delivered:
                placed += 1
            if name in on_shard:
                pending += int(target.xpending(key, name)["pending"])
        pending_source = _pending_with_entry(source, source_key, name)
        checks.append(Check(f"{label} group {name}: shards at its position", len(targets), placed))
        checks.append(Check(f"{label} group {name}: pending entries", pending_source, pending))
    return checks


def verify(source: redis.Redis, target: RedisCluster, settings: Settings) -> list[Check]:
    """Counts per kind on the source and on the cluster; equal when the copy is whole."""
    single, cluster = layouts(settings)
    on_source, on_target = _kinds(source, single), _kinds(target, cluster)
    checks = [Check(f"{kind} keys", on_source[kind], on_target[kind]) for kind in KINDS]
    for label, source_key, targets in _stream_pairs(single, cluster):
        checks.append(
            Check(f"{label} entries", _length(source, [source_key]), _length(target, targets))
        )
        if source.exists(source_key):
            checks += _group_checks(source, target, label, source_key, targets)
    source_counts = counters.read_all(source, single)
    target_counts = counters.read_all(target, cluster)
    checks.append(
        Check(
            "counters: sum of every field", sum(source_counts.values()), sum(target_counts.values())
        )
    )
    same = sum(1 for name, count in source_counts.items() if target_counts.get(name) == count)
    checks.append(Check("counters: fields equal", len(source_counts), same))
    return checks
