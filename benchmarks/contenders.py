"""What runs: the contenders, their workload, and how each one is measured.

- ceiling: ``vigil.bench.noop`` (same payload, no work);
- seed-style: ``vigil.bench.seed_style`` (one message per task) and
  ``vigil.bench.seed_style_batch`` (a loop over a batch), see seed_style.py;
- vigil: ``vigil.ingest.message`` and ``vigil.ingest.messages``.

Every contender gets a throughput run (pre-filled queue, drained by the worker)
and a latency run (paced producer at half its rate, stream reader).
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.harness import Bench
from benchmarks.names import (
    BENCH_BARE_NOOP,
    BENCH_NOOP,
    BENCH_SEED_STYLE,
    BENCH_SEED_STYLE_BATCH,
)
from tasks.names import INGEST_MESSAGE, INGEST_MESSAGES

MESSAGES_PER_USER = 10

# A user's messages alternate distress and small talk, so most of them move the
# user's phase or risk (the detector steps down one level at a time, so not all).
# The latency run gives every message a user of its own: a first distress
# message always moves the phase, so each one publishes an envelope.
DISTRESS = (
    "honestly I feel so alone tonight and I can't sleep again",
    "everything is overwhelming and I keep crying, I'm exhausted",
    "I'm so stressed and anxious about tomorrow, bad day again",
)
SMALL_TALK = (
    "anyone up for a game later? I'll be online around nine",
    "that new album is great, the second track especially",
    "lol same, my cat did the exact same thing yesterday",
)


@dataclass(frozen=True)
class Sizes:
    noop: int
    single: int
    seed_single: int
    batch: int
    seed_batch: int
    runs: int
    latency_s: float
    batch_size: int
    correlator_rows: int
    correlator_runs: int


# Full runs are long enough (several seconds each) that what a run pays once
# (switching the consumer on, the last buffer's flush interval, drain
# detection) is a small share: rates are steady-state rates.
FULL = Sizes(8000, 8000, 4000, 60000, 10000, 5, 4.0, 100, 1_000_000, 7)
QUICK = Sizes(500, 400, 300, 3000, 1000, 3, 1.0, 100, 200_000, 5)
SMOKE = Sizes(20, 20, 20, 40, 40, 1, 0.3, 10, 2_000, 2)


@dataclass
class Contender:
    key: str
    label: str
    task: str
    batch: int  # 0: one message per task
    n: int
    effects: bool = True
    bare: bool = False  # runs on the bare Celery worker (benchmarks/bare_app.py)
    worker_env: dict[str, str] = field(default_factory=dict)  # settings its worker runs with
    runs_msgs_per_s: list[float] = field(default_factory=list)
    msgs_per_s: float = 0.0
    round_trips_per_msg: float | None = None
    server_commands_per_msg: float | None = None
    memory_bytes_per_user: float | None = None
    memory_bytes_per_msg: float | None = None
    cpu_us_per_msg: dict[str, float] = field(default_factory=dict)
    users: int = 0
    verified: str = ""
    latency: dict[str, Any] = field(default_factory=dict)
    latency_1ps: dict[str, Any] = field(default_factory=dict)


def contenders_for(sizes: Sizes) -> list[Contender]:
    batch = sizes.batch_size
    return [
        Contender("bare_noop", "bare Celery no-op: Celery defaults plus late ack, no events",
                  BENCH_BARE_NOOP, 0, sizes.noop, False, bare=True),
        Contender("ceiling", "Celery no-op, vigil's config (ceiling)", BENCH_NOOP, 0, sizes.noop,
                  False),
        Contender("seed_single", "seed-style, 1 msg/task", BENCH_SEED_STYLE, 0, sizes.seed_single),
        Contender("vigil_single", "vigil.ingest.message, buffered", INGEST_MESSAGE, 0,
                  sizes.single),
        Contender("seed_batch", f"seed-style, {batch} msgs/task", BENCH_SEED_STYLE_BATCH, batch,
                  sizes.seed_batch),
        Contender("vigil_batch", f"vigil, {batch} msgs/task", INGEST_MESSAGES, batch,
                  sizes.batch),
    ]  # fmt: skip


# -- workload -------------------------------------------------------------------------


def make_messages(tag: str, count: int, per_user: int = MESSAGES_PER_USER) -> list[dict[str, Any]]:
    users = max(1, count // per_user)
    base = datetime.now(UTC)
    messages = []
    for index in range(count):
        user, round_no = index % users, index // users
        texts = DISTRESS if round_no % 2 == 0 else SMALL_TALK
        messages.append(
            {
                "message_id": f"{tag}-{index}",
                "platform": "bench",
                "guild_id": f"g{user % 7}",
                "channel_id": "c1",
                "user_id": f"{tag.split('-')[0]}-u{user}",
                "text": texts[index % len(texts)],
                "sent_at": (base + timedelta(milliseconds=index)).isoformat(),
            }
        )
    return messages


def per_task_of(contender: Contender) -> int:
    return contender.batch or 1


def task_kwargs(contender: Contender, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if contender.batch:
        size = contender.batch
        return [
            {"messages": messages[start : start + size]} for start in range(0, len(messages), size)
        ]
    return list(messages)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# -- measurements ---------------------------------------------------------------------


def warm_up(bench: Bench, contender: Contender) -> None:
    """A few unmeasured tasks first: imports, connections and the Lua script
    cache are per process or per server, not per message."""
    messages = make_messages(f"warm{contender.key}-w", 4 * max(contender.batch, 1))
    bench.send(contender.task, task_kwargs(contender, messages))
    bench.drain()


def throughput(bench: Bench, contender: Contender, sizes: Sizes) -> None:
    warm_up(bench, contender)
    bench.state_client.flushall()  # keeps the script cache
    count = contender.n
    verified: list[int] = []
    cpu_runs: list[dict[str, float]] = []
    for run_no in range(sizes.runs):
        messages = make_messages(f"{contender.key}-r{run_no}", count)
        bench.send(contender.task, task_kwargs(contender, messages))
        trips_before, commands_before = bench.round_trips(), bench.commands()
        memory_before, cpu_before = bench.memory(), bench.cpu()
        started, drained = bench.drain()
        cpu_after = bench.cpu()
        trips_after, commands_after = bench.round_trips(), bench.commands()
        memory_after = bench.memory()
        contender.runs_msgs_per_s.append(round(count / (drained - started), 1))
        cpu_runs.append(
            {part: (cpu_after[part] - cpu_before[part]) / count * 1e6 for part in cpu_before}
        )
        if run_no == 0:
            contender.round_trips_per_msg = round((trips_after - trips_before) / count, 3)
            contender.server_commands_per_msg = round((commands_after - commands_before) / count, 2)
            contender.users = max(1, count // MESSAGES_PER_USER)
            if contender.effects:
                contender.memory_bytes_per_user = round(
                    (memory_after - memory_before) / contender.users
                )
                contender.memory_bytes_per_msg = round((memory_after - memory_before) / count)
        if contender.effects:
            verified.append(bench.verify(messages))
    contender.msgs_per_s = statistics.median(contender.runs_msgs_per_s)
    contender.cpu_us_per_msg = {
        part: round(statistics.median(run[part] for run in cpu_runs), 1) for part in cpu_runs[0]
    }
    contender.cpu_us_per_msg["total"] = round(sum(contender.cpu_us_per_msg.values()), 1)
    total = count * sizes.runs
    contender.verified = f"{sum(verified)}/{total}" if contender.effects else "n/a (no effects)"


def latency(
    bench: Bench, contender: Contender, sizes: Sizes, fixed_rate: float | None = None
) -> None:
    """Paced producer at half the measured rate (or ``fixed_rate``); a stream
    reader notes when each message's envelope becomes visible."""
    rate = fixed_rate or max(1.0, contender.msgs_per_s / 2)
    count = max(contender.batch or 1, int(rate * sizes.latency_s))
    if fixed_rate:
        count = max(count, 10)
    if contender.batch:
        count -= count % contender.batch
    # Fresh users per run: a user's first distress message always publishes.
    prefix = "idle" if fixed_rate else "lat"
    messages = make_messages(f"{prefix}{contender.key}-x", count, per_user=1)
    if contender.key == "ceiling":
        chunks = [{**message, "publish": message["message_id"]} for message in messages]
    else:
        chunks = task_kwargs(contender, messages)
    per_task = per_task_of(contender)
    interval = per_task / rate
    stream = bench.settings.stream_bond
    last = bench.state_client.xrevrange(stream, count=1)
    start_id = last[0][0] if last else "0-0"
    seen: dict[str, float] = {}
    stop = threading.Event()

    def read() -> None:
        reader = bench.state.client()
        last_id = start_id
        while not stop.is_set():
            reply = reader.xread({stream: last_id}, count=1000, block=100)
            now = time.time()
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    try:
                        correlation_id = json.loads(fields["data"]).get("correlation_id")
                    except (ValueError, KeyError):
                        continue
                    if correlation_id is not None and correlation_id not in seen:
                        seen[correlation_id] = now
        reader.close()

    # This process is the instrument (producer and stream reader): a full
    # collection over its own bookkeeping (every run's messages) paused both
    # for 100 ms and more, and every message stamped in that pause read as
    # late. Frozen objects are skipped by the collector.
    gc.collect()
    gc.freeze()
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    bench.consume(True)
    # The worker adds the queue when its BRPOP on the others returns (up to 1 s):
    # pace only once it has taken a probe, or the first messages wait for that.
    probe = make_messages(f"probe{prefix}{contender.key}-x", per_task_of(contender), per_user=1)
    bench.send(contender.task, task_kwargs(contender, probe))
    bench.wait_taken()
    sent: dict[str, float] = {}
    with bench.app.producer_or_acquire() as producer:
        begin = time.perf_counter()
        for chunk_no, kwargs in enumerate(chunks):
            delay = begin + chunk_no * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            stamp = time.time()
            bench.send_one(contender.task, kwargs, producer)
            for message in messages[chunk_no * per_task : (chunk_no + 1) * per_task]:
                sent[message["message_id"]] = stamp
        offered = count / max(time.perf_counter() - begin, 1e-9)
    deadline = time.monotonic() + 30
    while len(seen.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(5)
    gc.unfreeze()
    bench.wait_drained()
    bench.consume(False)
    waits = sorted((seen[mid] - sent[mid]) * 1000 for mid in sent if mid in seen)
    measured = {
        "target_rate": round(rate, 1),
        "offered_rate": round(offered, 1),
        "messages": count,
        "seen": len(waits),
        "p50_ms": round(percentile(waits, 50), 1) if waits else None,
        "p99_ms": round(percentile(waits, 99), 1) if waits else None,
        "max_ms": round(waits[-1], 1) if waits else None,
    }
    if fixed_rate:
        contender.latency_1ps = measured
    else:
        contender.latency = measured


# -- task events: per request or per buffer ----------------------------------------

EVENT_MODES = ("per_request", "per_buffer")


def alternating(
    bench: Bench, settings_env: dict[str, dict[str, str]], messages: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """The buffered single path once per variant (label -> worker settings), the
    variants taking turns for ``rounds`` rounds with a fresh worker per run: the
    differences measured are small next to how this machine's speed drifts
    over a few minutes. Per variant: the runs' rates and median rate and CPU."""
    one_run = replace(FULL, runs=1, single=messages)
    runs: dict[str, list[Contender]] = {label: [] for label in settings_env}
    for round_no in range(rounds):
        for label, env in settings_env.items():
            contender = Contender(
                f"{label}_{round_no}", label, INGEST_MESSAGE, 0, messages, worker_env=env
            )
            bench.start_worker(env, tag=contender.key)
            throughput(bench, contender, one_run)
            runs[label].append(contender)
    return {
        label: {
            "msgs_per_s_runs": [run.msgs_per_s for run in done],
            "msgs_per_s": statistics.median(run.msgs_per_s for run in done),
            "worker_cpu_us_per_msg": statistics.median(
                run.cpu_us_per_msg["worker"] for run in done
            ),
            "total_cpu_us_per_msg": statistics.median(run.cpu_us_per_msg["total"] for run in done),
        }
        for label, done in runs.items()
    }


def events_ab(bench: Bench, sizes: Sizes, rounds: int = 3) -> dict[str, Any]:
    """The buffered single path with each ``VIGIL_INGEST_TASK_EVENTS`` mode."""
    modes = {mode: {"VIGIL_INGEST_TASK_EVENTS": mode} for mode in EVENT_MODES}
    summary: dict[str, Any] = {"rounds": rounds, "messages_per_run": sizes.single}
    summary.update(alternating(bench, modes, sizes.single, rounds))
    request, buffer = summary["per_request"], summary["per_buffer"]
    summary["per_buffer_to_per_request"] = round(buffer["msgs_per_s"] / request["msgs_per_s"], 2)
    summary["per_request_extra_worker_cpu_us_per_msg"] = round(
        request["worker_cpu_us_per_msg"] - buffer["worker_cpu_us_per_msg"], 1
    )
    return summary
