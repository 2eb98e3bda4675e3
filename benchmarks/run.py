"""Benchmark harness: ``python -m benchmarks.run [--quick] [--skip-correlator]``.

One run on this machine, with real Redis, PostgreSQL and Celery workers, of:

- ceiling: ``vigil.bench.noop`` (same payload, no work);
- seed-style: ``vigil.bench.seed_style`` (one message per task) and
  ``vigil.bench.seed_style_batch`` (a loop over a batch), see seed_style.py;
- vigil: ``vigil.ingest.message`` and ``vigil.ingest.messages``;
- the correlator on a million attribution rows (correlator.py).

All contenders run on one worker (same pool, concurrency, prefetch and
settings as production) against a private broker and a private state Redis.
Absolute numbers move with the machine's load; the ratios, measured minutes
apart in the same run, are the result. See README.md for the method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks import correlator as correlator_bench
from benchmarks.counters import read_counts
from benchmarks.harness import DEFAULT_PG_URL, RedisServer, Worker, drop_database, fresh_database

RESULTS = Path(__file__).parent / "results"
QUEUE = "ingest"
MESSAGES_PER_USER = 10
POLL_S = 0.01

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


FULL = Sizes(3000, 2000, 1500, 20000, 5000, 3, 4.0, 100, 1_000_000, 7)
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
    runs_msgs_per_s: list[float] = field(default_factory=list)
    msgs_per_s: float = 0.0
    round_trips_per_msg: float | None = None
    server_commands_per_msg: float | None = None
    memory_bytes_per_user: float | None = None
    cpu_us_per_msg: dict[str, float] = field(default_factory=dict)
    users: int = 0
    verified: str = ""
    latency: dict[str, Any] = field(default_factory=dict)


# -- workload -------------------------------------------------------------------------


def make_messages(tag: str, n: int, per_user: int = MESSAGES_PER_USER) -> list[dict[str, Any]]:
    users = max(1, n // per_user)
    base = datetime.now(UTC)
    out = []
    for i in range(n):
        u, k = i % users, i // users
        texts = DISTRESS if k % 2 == 0 else SMALL_TALK
        out.append(
            {
                "message_id": f"{tag}-{i}",
                "platform": "bench",
                "guild_id": f"g{u % 7}",
                "channel_id": "c1",
                "user_id": f"{tag.split('-')[0]}-u{u}",
                "text": texts[i % len(texts)],
                "sent_at": (base + timedelta(milliseconds=i)).isoformat(),
            }
        )
    return out


def task_kwargs(c: Contender, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if c.batch:
        return [{"messages": msgs[i : i + c.batch]} for i in range(0, len(msgs), c.batch)]
    return list(msgs)


# -- CPU accounting -------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """user + system CPU of a process (and of its live children), from /proc."""
    pids = [pid]
    if with_children:
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                pids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    total = 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


# -- the bench ------------------------------------------------------------------------


class Bench:
    def __init__(self, sizes: Sizes, workdir: Path, pg_admin_url: str, db_name: str) -> None:
        self.sizes = sizes
        self.workdir = workdir
        self.pg_admin_url = pg_admin_url
        self.db_name = db_name
        self.count_dir = workdir / "counts"
        self.count_dir.mkdir()
        self.broker = RedisServer(workdir, "broker")
        self.state = RedisServer(workdir, "state")
        self.database_url = fresh_database(pg_admin_url, db_name)
        self.env = {
            "VIGIL_REDIS_URL": self.state.url,
            "VIGIL_BROKER_URL": self.broker.url,
            "VIGIL_DATABASE_URL": self.database_url,
            "VIGIL_EMBEDDED": "never",
            "VIGIL_DATA_DIR": str(workdir / "data"),
            "VIGIL_BENCH_COUNT_DIR": str(self.count_dir),
            "VIGIL_BENCH_STATE_PORT": str(self.state.port),
        }
        os.environ.update(self.env)
        from celery import Celery

        from services.core.settings import Settings, get_settings

        get_settings.cache_clear()
        self.settings = Settings()
        self.app = Celery("vigil-bench", broker=self.broker.url)
        self.app.conf.update(
            task_serializer="json", accept_content=["json"], broker_connection_retry=True
        )
        self.b = self.broker.client()
        self.s = self.state.client(decode_responses=True)
        self.worker: Worker | None = None
        self._declare_queue()

    def _declare_queue(self) -> None:
        from kombu import Exchange, Queue

        with self.app.connection_for_write() as conn:
            Queue(QUEUE, Exchange(QUEUE), routing_key=QUEUE)(conn.default_channel).declare()

    def start_worker(self, extra_env: dict[str, str] | None = None, tag: str = "worker") -> None:
        self.stop_worker()
        env = {**self.env, **(extra_env or {})}
        self.worker = Worker(env, self.workdir / f"{tag}.log")
        self.worker.wait_ready(self.app)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None

    def close(self) -> None:
        self.stop_worker()
        self.broker.stop()
        self.state.stop()
        drop_database(self.pg_admin_url, self.db_name)

    # -- queue control --

    def _consume(self, on: bool) -> None:
        assert self.worker is not None
        control = self.app.control
        fn = control.add_consumer if on else control.cancel_consumer
        replies = fn(QUEUE, destination=[self.worker.name], reply=True, timeout=10)
        if not replies:
            raise RuntimeError(f"worker did not answer {'add' if on else 'cancel'}_consumer")

    def _broker_busy(self) -> int:
        pipe = self.b.pipeline(transaction=False)
        pipe.llen(QUEUE)
        pipe.hlen("unacked")
        return sum(pipe.execute())

    def _wait_drained(self, timeout: float = 600) -> float:
        """Time at which the queue and the unacked set were both empty twice in a
        row (a message is briefly in neither between BRPOP and the unacked write)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._broker_busy() == 0:
                t = time.perf_counter()
                time.sleep(POLL_S)
                if self._broker_busy() == 0:
                    return t
            time.sleep(POLL_S)
        raise TimeoutError("queue did not drain")

    def send(self, task: str, kwargs_list: list[dict[str, Any]]) -> None:
        with self.app.producer_or_acquire() as producer:
            for kwargs in kwargs_list:
                self.app.send_task(
                    task,
                    kwargs=kwargs,
                    queue=QUEUE,
                    producer=producer,
                    argsrepr="()",
                    kwargsrepr="<bench>",
                )

    # -- measurements --

    def _commands(self) -> int:
        stats = self.s.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k != "cmdstat_info")

    def _memory(self) -> int:
        return int(self.s.info("memory")["used_memory"])

    def _cpu(self) -> dict[str, float]:
        assert self.worker is not None
        return {
            "worker": cpu_seconds(self.worker.proc.pid, with_children=True),
            "broker_redis": cpu_seconds(self.broker.proc.pid),
            "state_redis": cpu_seconds(self.state.proc.pid),
        }

    def _round_trips(self) -> int:
        return read_counts(self.count_dir)

    def _verify(self, msgs: list[dict[str, Any]], timeout: float = 30) -> int:
        """How many messages left their 'done' marker (waiting a little if needed)."""
        from services.core import keys

        markers = [keys.message_marker(self.settings, "bench", m["message_id"]) for m in msgs]
        deadline = time.monotonic() + timeout
        while True:
            done = 0
            for i in range(0, len(markers), 1000):
                done += sum(v == "done" for v in self.s.mget(markers[i : i + 1000]))
            if done == len(markers) or time.monotonic() > deadline:
                return done
            time.sleep(0.2)

    def warm_up(self, c: Contender) -> None:
        """A few unmeasured tasks first: imports, connections and the Lua script
        cache are per process or per server, not per message."""
        msgs = make_messages(f"warm{c.key}-w", 4 * max(c.batch, 1))
        self.send(c.task, task_kwargs(c, msgs))
        self._consume(True)
        self._wait_drained()
        self._consume(False)

    def throughput(self, c: Contender) -> None:
        self.warm_up(c)
        self.s.flushall()  # keeps the script cache
        verified: list[int] = []
        cpu_runs: list[dict[str, float]] = []
        for run in range(self.sizes.runs):
            msgs = make_messages(f"{c.key}-r{run}", c.n)
            self.send(c.task, task_kwargs(c, msgs))
            rt0, cmd0, mem0 = self._round_trips(), self._commands(), self._memory()
            cpu0 = self._cpu()
            t0 = time.perf_counter()
            self._consume(True)
            t1 = self._wait_drained()
            self._consume(False)
            cpu1 = self._cpu()
            rt1, cmd1, mem1 = self._round_trips(), self._commands(), self._memory()
            c.runs_msgs_per_s.append(round(c.n / (t1 - t0), 1))
            cpu_runs.append({k: (cpu1[k] - cpu0[k]) / c.n * 1e6 for k in cpu0})
            if run == 0:
                c.round_trips_per_msg = round((rt1 - rt0) / c.n, 3)
                c.server_commands_per_msg = round((cmd1 - cmd0) / c.n, 2)
                c.users = max(1, c.n // MESSAGES_PER_USER)
                if c.effects:
                    c.memory_bytes_per_user = round((mem1 - mem0) / c.users)
            if c.effects:
                verified.append(self._verify(msgs))
        c.msgs_per_s = statistics.median(c.runs_msgs_per_s)
        c.cpu_us_per_msg = {
            k: round(statistics.median(run[k] for run in cpu_runs), 1) for k in cpu_runs[0]
        }
        c.cpu_us_per_msg["total"] = round(sum(c.cpu_us_per_msg.values()), 1)
        total = c.n * self.sizes.runs
        c.verified = f"{sum(verified)}/{total}" if c.effects else "n/a (no effects)"

    def latency(self, c: Contender) -> None:
        """Paced producer at half the measured rate; a stream reader notes when
        each message's envelope becomes visible."""
        rate = max(1.0, c.msgs_per_s / 2)
        n = max(c.batch or 1, int(rate * self.sizes.latency_s))
        if c.batch:
            n -= n % c.batch
        msgs = make_messages(f"lat{c.key}-x", n, per_user=1)
        if c.key == "ceiling":
            chunks = [{**m, "publish": m["message_id"]} for m in msgs]
        else:
            chunks = task_kwargs(c, msgs)
        per_task = c.batch or 1
        interval = per_task / rate
        stream = self.settings.stream_bond
        last = self.s.xrevrange(stream, count=1)
        start_id = last[0][0] if last else "0-0"
        seen: dict[str, float] = {}
        stop = threading.Event()

        def read() -> None:
            reader = self.state.client(decode_responses=True)
            last_id = start_id
            while not stop.is_set():
                reply = reader.xread({stream: last_id}, count=1000, block=100)
                now = time.time()
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last_id = entry_id
                        try:
                            cid = json.loads(fields["data"]).get("correlation_id")
                        except (ValueError, KeyError):
                            continue
                        if cid is not None and cid not in seen:
                            seen[cid] = now
            reader.close()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        self._consume(True)
        sent: dict[str, float] = {}
        task = c.task
        with self.app.producer_or_acquire() as producer:
            begin = time.perf_counter()
            for j, kwargs in enumerate(chunks):
                delay = begin + j * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                stamp = time.time()
                self.app.send_task(
                    task,
                    kwargs=kwargs,
                    queue=QUEUE,
                    producer=producer,
                    argsrepr="()",
                    kwargsrepr="<bench>",
                )
                for m in msgs[j * per_task : (j + 1) * per_task]:
                    sent[m["message_id"]] = stamp
            offered = n / max(time.perf_counter() - begin, 1e-9)
        deadline = time.monotonic() + 30
        while len(seen.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(5)
        self._wait_drained()
        self._consume(False)
        lat = sorted((seen[k] - sent[k]) * 1000 for k in sent if k in seen)
        c.latency = {
            "target_rate": round(rate, 1),
            "offered_rate": round(offered, 1),
            "messages": n,
            "seen": len(lat),
            "p50_ms": round(percentile(lat, 50), 1) if lat else None,
            "p99_ms": round(percentile(lat, 99), 1) if lat else None,
            "max_ms": round(lat[-1], 1) if lat else None,
        }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# -- profile --------------------------------------------------------------------------


def profile_paths(bench: Bench, contenders: list[Contender]) -> dict[str, Any]:
    """cProfile in the worker's parent and children while one path drains, to
    show where the time goes (the profiler slows everything; only shares count)."""
    out: dict[str, Any] = {}
    for c in contenders:
        prof_dir = bench.workdir / f"profile-{c.key}"
        prof_dir.mkdir()
        bench.start_worker({"VIGIL_BENCH_PROFILE_DIR": str(prof_dir)}, tag=f"profile-{c.key}")
        msgs = make_messages(f"prof{c.key}-p", c.n)
        bench.send(c.task, task_kwargs(c, msgs))
        bench._consume(True)
        bench._wait_drained()
        bench._consume(False)
        bench.stop_worker()
        out[c.key] = {
            role: summarize(sorted(prof_dir.glob(f"{role}-*.prof")), c.n)
            for role in ("parent", "child")
        }
    bench.start_worker(tag="worker-after-profile")
    return out


# Blocking waits: a pool child waits for work in os.read on its pipe.
_IDLE = ("poll", "select", "epoll", "_wait_for_tstate_lock", "acquire", "sleep", "posix.read",
         "waitpid")  # fmt: skip
_MARKS = {
    "IngestService.messages": ("services/ingest/service.py", "messages"),
    "scripts.run_many (Redis round trips)": ("services/core/scripts.py", "run_many"),
    "detector.detect": ("services/ingest/detector.py", "detect"),
    "SeedStyleIngest.message": ("benchmarks/seed_style.py", "message"),
    "celery trace (task call + bookkeeping)": ("celery/app/trace.py", "trace_task"),
}


def summarize(files: list[Path], n_msgs: int, top: int = 10) -> dict[str, Any]:
    if not files:
        return {"error": "no profile written"}
    stats = pstats.Stats(*(str(f) for f in files))
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())
    idle = sum(v[2] for (_, _, name), v in raw.items() if any(s in name for s in _IDLE))
    busy = max(total - idle, 1e-9)
    rows = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    top_rows = []
    for (path, line, name), (_, ncalls, tottime, _cum, _) in rows:
        if any(s in name for s in _IDLE):
            continue
        top_rows.append(
            {
                "function": f"{_short(path)}:{line}({name})",
                "calls": ncalls,
                "tottime_s": round(tottime, 3),
                "share_of_busy": round(tottime / busy, 3),
            }
        )
        if len(top_rows) == top:
            break
    marks = {}
    for label, (suffix, name) in _MARKS.items():
        cum = sum(v[3] for (path, _, fn), v in raw.items() if path.endswith(suffix) and fn == name)
        if cum:
            marks[label] = {
                "cumtime_s": round(cum, 3),
                "us_per_msg": round(cum / n_msgs * 1e6, 1),
                "share_of_busy": round(cum / busy, 3),
            }
    return {
        "processes": len(files),
        "busy_s": round(busy, 3),
        "idle_wait_s": round(idle, 3),
        "busy_us_per_msg": round(busy / n_msgs * 1e6, 1),
        "marks": marks,
        "top_tottime": top_rows,
    }


def _short(path: str) -> str:
    for anchor in ("site-packages/", "/work/main/", str(Path.cwd()) + "/"):
        if anchor in path:
            return path.split(anchor, 1)[1]
    return path


# -- report ---------------------------------------------------------------------------


def ratios_and_targets(by: dict[str, Contender], correlator: dict[str, Any] | None) -> tuple:
    def ratio(a: str, b: str) -> float | None:
        if a in by and b in by and by[b].msgs_per_s:
            return round(by[a].msgs_per_s / by[b].msgs_per_s, 2)
        return None

    def cpu_ratio(a: str, b: str) -> float | None:
        """Inverse ratio of total CPU per message: what the rates would be on a
        machine that nothing else loads, when CPU is the limit."""
        if a in by and b in by and by[a].cpu_us_per_msg.get("total"):
            return round(by[b].cpu_us_per_msg["total"] / by[a].cpu_us_per_msg["total"], 2)
        return None

    ratios = {
        "vigil_single_to_ceiling": ratio("vigil_single", "ceiling"),
        "vigil_batch_to_ceiling": ratio("vigil_batch", "ceiling"),
        "vigil_single_to_seed_single": ratio("vigil_single", "seed_single"),
        "vigil_batch_to_seed_batch": ratio("vigil_batch", "seed_batch"),
        "vigil_batch_to_seed_single": ratio("vigil_batch", "seed_single"),
        "by_cpu_vigil_single_to_ceiling": cpu_ratio("vigil_single", "ceiling"),
        "by_cpu_vigil_batch_to_ceiling": cpu_ratio("vigil_batch", "ceiling"),
        "by_cpu_vigil_single_to_seed_single": cpu_ratio("vigil_single", "seed_single"),
        "by_cpu_vigil_batch_to_seed_batch": cpu_ratio("vigil_batch", "seed_batch"),
    }

    def target(name: str, value: Any, ok: bool | None, goal: str) -> dict[str, Any]:
        return {"target": name, "goal": goal, "value": value, "met": ok}

    def at_least(v: float | None, goal: float) -> bool | None:
        return None if v is None else v >= goal

    def at_most(v: float | None, goal: float) -> bool | None:
        return None if v is None else v <= goal

    rt = [by[k].round_trips_per_msg for k in ("vigil_single", "vigil_batch") if k in by]
    p99 = [by[k].latency.get("p99_ms") for k in ("vigil_single", "vigil_batch") if k in by]
    targets = [
        target(
            "vigil single vs ceiling",
            ratios["vigil_single_to_ceiling"],
            at_least(ratios["vigil_single_to_ceiling"], 0.7),
            ">= 0.7x",
        ),
        target(
            "vigil batch vs ceiling",
            ratios["vigil_batch_to_ceiling"],
            at_least(ratios["vigil_batch_to_ceiling"], 8),
            ">= 8x",
        ),
        target(
            "vigil single vs seed-style single",
            ratios["vigil_single_to_seed_single"],
            at_least(ratios["vigil_single_to_seed_single"], 3),
            ">= 3x",
        ),
        target(
            "vigil batch vs seed-style batch",
            ratios["vigil_batch_to_seed_batch"],
            at_least(ratios["vigil_batch_to_seed_batch"], 10),
            ">= 10x",
        ),
        target(
            "Redis round trips per message (vigil, worst path)",
            max(rt) if rt and None not in rt else None,
            at_most(max(rt), 2) if rt and None not in rt else None,
            "<= 2",
        ),
        target(
            "p99 enqueue-to-envelope at half load (vigil, worst path)",
            max(p99) if p99 and None not in p99 else None,
            at_most(max(p99), 50) if p99 and None not in p99 else None,
            "<= 50 ms",
        ),
    ]
    if correlator and "query_ms_median" in correlator:
        q = correlator["query_ms_median"]
        targets.append(
            target(
                f"correlator query on {correlator.get('rows', '?')} rows (median)",
                q,
                at_most(q, 100),
                "< 100 ms",
            )
        )
        if "steady_tick_ms_median" in correlator:
            t = correlator["steady_tick_ms_median"]
            targets.append(
                target("correlator tick, nothing new (median)", t, at_most(t, 100), "< 100 ms")
            )
    return ratios, targets


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# vigil benchmark ({result['mode']}, {result['generated_at']})",
        "",
        f"Machine: {result['machine']['cpus']} CPUs, Python {result['machine']['python']}, "
        f"celery {result['machine']['celery']}, redis-server {result['machine']['redis_server']}. "
        f"Worker: {result['worker']}.",
        "",
        "| contender | task | msgs/task | msgs/s (median) | runs | p50 ms | p99 ms "
        "| round trips/msg | server cmds/msg | bytes/user "
        "| CPU us/msg worker + broker + state = total | verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["contenders"].values():
        lat = c["latency"]
        lines.append(
            f"| {c['label']} | `{c['task']}` | {c['batch'] or 1} | {c['msgs_per_s']:.0f} "
            f"| {', '.join(f'{x:.0f}' for x in c['runs_msgs_per_s'])} "
            f"| {_fmt(lat.get('p50_ms'))} | {_fmt(lat.get('p99_ms'))} "
            f"| {_fmt(c['round_trips_per_msg'])} | {_fmt(c['server_commands_per_msg'])} "
            f"| {_fmt(c['memory_bytes_per_user'])} | {_cpu_cell(c['cpu_us_per_msg'])} "
            f"| {c['verified']} |"
        )
    lines += ["", "## Ratios", ""]
    for k, v in result["ratios"].items():
        lines.append(f"- {k.replace('_', ' ')}: {_fmt(v)}x")
    lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {_fmt(t['value'])} | {met} |")
    corr = result.get("correlator")
    if corr:
        lines += ["", "## Correlator", ""]
        if "error" in corr:
            lines.append(f"Not measured: {corr['error']}")
        else:
            lines.append(
                f"{corr['rows']} attribution_state rows ({corr['multi_actor_rows']} multi_actor, "
                f"{corr['identities']} identities, loaded in {corr['load_s']} s); "
                f"{corr['suspected_identities']} identities suspected. Query median "
                f"{corr['query_ms_median']} ms over {len(corr['query_ms_all'])} runs "
                f"({', '.join(map(str, corr['query_ms_all']))})."
            )
            if "steady_tick_ms_median" in corr:
                lines.append(
                    f"Whole tick (lock, query, compare with correlator_fired, outbox): first "
                    f"{corr['first_tick_ms']} ms (announces every suspect), then median "
                    f"{corr['steady_tick_ms_median']} ms with nothing new."
                )
            lines += ["", "```", *corr.get("plan_summary", []), "```"]
    prof = result.get("profile")
    if prof:
        lines += ["", "## Where the time goes (cProfile in the worker)", ""]
        lines.append(
            "The profiler slows every call, so only shares mean anything. busy = profiled "
            "time minus waits (poll/select/sleep); per message = busy / messages."
        )
        for key, roles in prof.items():
            for role, s in roles.items():
                if "error" in s:
                    lines += ["", f"### {key}, {role}: {s['error']}"]
                    continue
                lines += [
                    "",
                    f"### {key}, pool {role} ({s['processes']} process(es)): busy {s['busy_s']} s,"
                    f" {s['busy_us_per_msg']} us/msg, waiting {s['idle_wait_s']} s",
                    "",
                ]
                for label, m in s["marks"].items():
                    lines.append(
                        f"- {label}: {m['us_per_msg']} us/msg, {m['share_of_busy']:.0%} of busy"
                    )
                lines += ["", "| function | calls | tottime s | share of busy |", _RULE4]
                for row in s["top_tottime"]:
                    lines.append(
                        f"| `{row['function']}` | {row['calls']} | {row['tottime_s']} "
                        f"| {row['share_of_busy']:.1%} |"
                    )
    lines.append("")
    return "\n".join(lines)


_RULE4 = "|---|---|---|---|"


def _cpu_cell(cpu: dict[str, float]) -> str:
    if not cpu:
        return "-"
    return (
        f"{cpu['worker']:.0f} + {cpu['broker_redis']:.0f} + {cpu['state_redis']:.0f}"
        f" = {cpu['total']:.0f}"
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


# -- main -----------------------------------------------------------------------------


def contenders_for(sizes: Sizes) -> list[Contender]:
    b = sizes.batch_size
    return [
        Contender("ceiling", "Celery no-op (ceiling)", "vigil.bench.noop", 0, sizes.noop, False),
        Contender("seed_single", "seed-style, 1 msg/task", "vigil.bench.seed_style", 0,
                  sizes.seed_single),
        Contender("vigil_single", "vigil, 1 msg/task", "vigil.ingest.message", 0, sizes.single),
        Contender("seed_batch", f"seed-style, {b} msgs/task", "vigil.bench.seed_style_batch", b,
                  sizes.seed_batch),
        Contender("vigil_batch", f"vigil, {b} msgs/task", "vigil.ingest.messages", b,
                  sizes.batch),
    ]  # fmt: skip


def run(
    sizes: Sizes,
    *,
    mode: str,
    out_dir: Path,
    pg_admin_url: str,
    db_name: str,
    skip_correlator: bool = False,
    profile: bool = True,
) -> dict[str, Any]:
    import celery

    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        bench = Bench(sizes, Path(tmp), pg_admin_url, db_name)
        try:
            bench.start_worker()
            contenders = contenders_for(sizes)
            for c in contenders:
                print(f"[bench] {c.label}: throughput", flush=True)
                bench.throughput(c)
                print(f"[bench] {c.label}: latency at half load", flush=True)
                bench.latency(c)
                print(f"[bench]   {c.msgs_per_s:.0f} msg/s, {c.latency}", flush=True)
            by = {c.key: c for c in contenders}
            prof = None
            if profile:
                print("[bench] profiling the vigil paths", flush=True)
                prof = profile_paths(bench, [by["vigil_single"], by["vigil_batch"]])
            bench.stop_worker()
            corr = None
            if not skip_correlator:
                print(f"[bench] correlator on {sizes.correlator_rows} rows", flush=True)
                corr = correlator_section(bench, sizes)
            ratios, targets = ratios_and_targets(by, corr)
            result = {
                "mode": mode,
                "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "celery": celery.__version__,
                    "redis_server": bench.state.version(),
                },
                "worker": "prefork -c 2, production celeryconfig (prefetch 4, acks late, "
                "task events), private broker and state redis-server",
                "method": {
                    "throughput": "queue pre-filled, then the worker starts consuming; time to "
                    "an empty queue and no unacked message (acks are late, so every effect is "
                    "written); median of runs",
                    "latency": "paced producer at half the median rate; time from send to the "
                    "envelope with the message's correlation_id being read from the stream",
                    "round_trips": "requests written to the state Redis by the worker processes "
                    "(one per command, one per pipeline), counted client-side",
                    "server_commands": "INFO commandstats delta on the state Redis, commands "
                    "inside Lua scripts included",
                    "cpu": "user+system CPU from /proc of the worker (parent and pool "
                    "children), the broker and the state redis-server, per message, median of "
                    "runs; far less sensitive than rates to other load on the machine",
                    "memory": f"used_memory delta on the first run / users "
                    f"({MESSAGES_PER_USER} messages per user, markers and stream entries "
                    "included)",
                },
                "sizes": asdict(sizes),
                "contenders": {c.key: asdict(c) for c in contenders},
                "ratios": ratios,
                "targets": targets,
                "correlator": corr,
                "profile": prof,
            }
        finally:
            bench.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out_dir / "latest.md").write_text(md)
    return result


def correlator_section(bench: Bench, sizes: Sizes) -> dict[str, Any]:
    try:
        loaded = correlator_bench.load(bench.database_url, sizes.correlator_rows)
        measured = correlator_bench.measure(
            bench.database_url,
            runs=sizes.correlator_runs,
            redis_client=bench.state.client(decode_responses=True),
            settings=bench.settings,
        )
    except ImportError as exc:
        return {"error": f"correlator not importable: {exc}"}
    measured["plan_summary"] = correlator_bench.plan_summary(measured.pop("plan"))
    return {**loaded, **measured}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-correlator", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("VIGIL_BENCH_PG_URL", DEFAULT_PG_URL),
        help="a PostgreSQL server URL the benchmark may create a database on",
    )
    parser.add_argument("--database", default=os.environ.get("VIGIL_BENCH_PG_DB", "vigil_bench"))
    args = parser.parse_args(argv)
    sizes, mode = (SMOKE, "smoke") if args.smoke else (QUICK, "quick") if args.quick else (
        FULL, "full")  # fmt: skip
    result = run(
        sizes,
        mode=mode,
        out_dir=args.out,
        pg_admin_url=args.pg_url,
        db_name=args.database,
        skip_correlator=args.skip_correlator,
        profile=not (args.no_profile or args.quick or args.smoke),
    )
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
