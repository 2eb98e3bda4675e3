"""What the state topology costs the ingest pipeline: one Redis, Sentinel and a
3-master Redis Cluster, each master with one replica, WAIT 0 and WAIT 1, single
messages and buffers of 100.

    python -m benchmarks.topologies [--messages 10000] [--users 2000] [--repeats 3]
    python -m benchmarks.topologies --quick

Runs ``IngestService.messages`` in process (the worker's per-buffer call), as
``benchmarks/redis_wait.py`` does, so the figures isolate the state topology:
no broker, no Celery. Every deployment is started on loopback ports of its own
from one ``redis-server`` binary and all stay up for the whole run;
configurations alternate round by round (the order reversed every other round)
so drift hits all alike, and every run starts on flushed masters with the same
messages, users and spread over shards.

Two kinds of figure come out, and the output says which is which:

- measured: messages/s of the client loop (one Python process on the same
  machine, so client-bound), and Redis CPU per message on each master
  (``INFO cpu`` user + sys deltas over the messages that master handled);
- projected: the messages/s the masters could absorb if clients were not the
  limit (1e6 / busiest master's CPU us per message x masters, one core per
  master, even spread), and that ceiling for 1, 3, 6 and 12 masters from the
  cluster's CPU per message.

Messages carry no observations and none is rejected, so PostgreSQL is never
contacted. Prints two tables and writes ``benchmarks/results/topologies.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from benchmarks import redis_wait
from services.core import keys
from services.core.clients import close_all, get_redis
from services.core.settings import Settings
from services.ingest.detector import LexiconDetector
from services.ingest.service import IngestService
from stack.processes import HOST, RedisServer, redis_binary
from stack.topologies import ClusterSetup, SentinelSetup, free_ports

RESULTS = Path(__file__).parent / "results" / "topologies.json"
# Loopback ports of this benchmark's own (the tests take 26400-26599 and
# 16600-16699). A cluster node's bus is its port + 10000: both stay below the
# ephemeral range, as in stack.topologies.
PLAIN_PORTS = range(26700, 26720)
SENTINEL_PORTS = range(26720, 26740)
CLUSTER_PORTS = range(16700, 16760)
CLUSTER_MASTERS = 3
SHARDS = 12  # VIGIL_REDIS_CLUSTER_SHARDS' default
TOPOLOGIES = ("redis", "sentinel", "cluster")
WAITS = (0, 1)
PATHS = {"single": 1, "batch": 100}
PROJECTED_MASTERS = (1, 3, 6, 12)
# Settings want a broker with Sentinel or a cluster; nothing here talks to it.
UNUSED_BROKER = "redis://127.0.0.1:1/0"
# IngestService wants sessions; with no observations it never opens one (and
# nothing listens on port 1, so a run that did would fail loudly).
UNUSED_DATABASE = "postgresql+psycopg://unused@127.0.0.1:1/unused"
WARMUP_MESSAGES = 300


@dataclass
class Topology:
    """One deployment as the benchmark sees it: how vigil is configured for it,
    its masters and replicas (for INFO), and the state client vigil builds."""

    name: str
    fields: dict[str, Any]
    masters: list[redis.Redis]
    master_ports: list[int]
    replicas: list[redis.Redis]
    # Servers that hold no data (the sentinels): only their CPU is read.
    others: list[redis.Redis] = field(default_factory=list)
    client: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.client = get_redis(self.settings(0))

    def settings(self, wait: int) -> Settings:
        """Settings for this topology; every topology field is given, so nothing
        from the environment's VIGIL_REDIS_* picks another one."""
        topology: dict[str, Any] = {
            "redis_url": None,
            "redis_password": None,
            "redis_sentinels": None,
            "redis_sentinel_master": None,
            "redis_cluster_nodes": None,
            "redis_cluster_shards": SHARDS,
            **self.fields,
        }
        return Settings(broker_url=UNUSED_BROKER, redis_wait_replicas=wait, **topology)

    def master_of(self, user_id: str) -> int:
        """Index in ``masters`` of the master holding the user's keys."""
        if len(self.masters) == 1:
            return 0
        key = keys.bond(self.settings(0), user_id)
        return self.master_ports.index(self.client.get_node_from_key(key).port)

    def flush(self) -> None:
        """Empty every master and wait until its replica has emptied too, so each
        run starts from the same state (the script cache stays)."""
        for master in self.masters:
            master.flushall()
            master.execute_command("WAIT", 1, 10_000)


def cpu_seconds(client: redis.Redis) -> float:
    """The server's own CPU so far (main and background threads, not forked children)."""
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def wait_synced(replica: RedisServer, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while replica.client().info("replication").get("master_link_status") != "up":
        if time.monotonic() > deadline:
            raise TimeoutError(f"the replica on port {replica.port} did not sync in {timeout} s")
        time.sleep(0.1)


@contextlib.contextmanager
def deployments(root: Path) -> Iterator[dict[str, Topology]]:
    """The three topologies, started one after another (each takes free ports
    of its own range), stopped at the end whatever happens."""
    with contextlib.ExitStack() as stack:
        ports = free_ports(2, PLAIN_PORTS)
        master = RedisServer(root / "redis-master", ports[0], appendonly=True).start()
        stack.callback(master.stop)
        replica = RedisServer(root / "redis-replica", ports[1], appendonly=True).start()
        stack.callback(replica.stop)
        replica.client().replicaof(HOST, master.port)
        wait_synced(replica)

        sentinel = SentinelSetup(root / "sentinel", port_range=SENTINEL_PORTS).start()
        stack.callback(sentinel.stop)
        cluster = ClusterSetup(
            root / "cluster", masters=CLUSTER_MASTERS, port_range=CLUSTER_PORTS
        ).start()
        stack.callback(cluster.stop)
        stack.callback(close_all)

        sentinel_master = sentinel.master_port()
        topologies = {
            "redis": Topology(
                "redis",
                {"redis_url": master.url(0)},
                [master.client()],
                [master.port],
                [replica.client()],
            ),
            "sentinel": Topology(
                "sentinel",
                {
                    "redis_sentinels": sentinel.sentinel_setting,
                    "redis_sentinel_master": sentinel.master_name,
                },
                [sentinel.node(sentinel_master).client()],
                [sentinel_master],
                [node.client() for node in sentinel.nodes if node.port != sentinel_master],
                [node.client() for node in sentinel.sentinels],
            ),
            "cluster": Topology(
                "cluster",
                {"redis_cluster_nodes": cluster.nodes_setting},
                [node.client() for node in cluster.masters],
                [node.port for node in cluster.masters],
                [node.client() for node in cluster.replicas],
            ),
        }
        yield topologies


def messages(count: int, users: int, tag: str = "m") -> list[dict[str, Any]]:
    """``count`` new messages (redis_wait.py's) over ``users`` users in turn, so
    a buffer of 100 holds 100 users spread over the shards."""
    return redis_wait.buffer(tag, count, users, user_tag="")


def buffers(msgs: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [msgs[i : i + size] for i in range(0, len(msgs), size)]


def run_once(
    topology: Topology, service: IngestService, bufs: list[list[dict[str, Any]]]
) -> dict[str, Any]:
    """One timed pass over ``bufs`` on flushed masters: wall time, the client's
    CPU, each master's and the replicas' CPU, every outcome's status."""
    topology.flush()
    masters_before = [cpu_seconds(c) for c in topology.masters]
    replicas_before = sum(cpu_seconds(c) for c in topology.replicas)
    client_before = time.process_time()
    started = time.perf_counter()
    batches = [service.messages(buf) for buf in bufs]
    took = time.perf_counter() - started
    client_cpu = time.process_time() - client_before
    masters_after = [cpu_seconds(c) for c in topology.masters]
    masters_cpu = [a - b for a, b in zip(masters_after, masters_before, strict=True)]
    replicas_cpu = sum(cpu_seconds(c) for c in topology.replicas) - replicas_before
    statuses = Counter(o["status"] for batch in batches for o in batch.outcomes)
    return {
        "seconds": took,
        "client_cpu_s": client_cpu,
        "masters_cpu_s": masters_cpu,
        "replicas_cpu_s": replicas_cpu,
        "statuses": dict(statuses),
    }


def cpu_ticks() -> tuple[int, int, int] | None:
    """Machine-wide busy, stolen and total CPU ticks (/proc/stat; None off Linux):
    what else ran during the run, which the load average hides (a busy host
    under this VM shows as steal, not load)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle, steal, total = values[3] + values[4], values[7], sum(values)
    return total - idle - steal, steal, total


def own_cpu(topologies: dict[str, Topology]) -> float:
    """CPU seconds of this process and every server it started."""
    servers = [c for t in topologies.values() for c in t.masters + t.replicas + t.others]
    return time.process_time() + sum(cpu_seconds(c) for c in servers)


def machine_share(
    before: tuple[int, int, int] | None, after: tuple[int, int, int] | None, own_s: float
) -> dict[str, float | None]:
    """Percent of all cores over the run: busy, this benchmark, everyone else, stolen."""
    if before is None or after is None:
        return {"busy": None, "this_benchmark": None, "others": None, "steal": None}
    busy, steal, total = (a - b for a, b in zip(after, before, strict=True))
    tick = os.sysconf("SC_CLK_TCK")
    own = own_s * tick * 100 / total
    return {
        "busy": round(busy * 100 / total, 1),
        "this_benchmark": round(own, 1),
        "others": round(max(busy * 100 / total - own, 0.0), 1),
        "steal": round(steal * 100 / total, 1),
    }


def idle_cpu(topology: Topology, seconds: float) -> list[float]:
    """Each master's CPU ms per second with no client: cluster gossip, sentinel
    and replica pings. It is in the per-message figures, not subtracted."""
    before = [cpu_seconds(c) for c in topology.masters]
    time.sleep(seconds)
    return [
        round((cpu_seconds(c) - b) * 1000 / seconds, 3)
        for c, b in zip(topology.masters, before, strict=True)
    ]


def summarise(
    topology: Topology, wait: int, path: str, runs: list[dict[str, Any]], per_master: list[int]
) -> dict[str, Any]:
    """One row: measured rates and CPU (medians over the runs, so one run
    disturbed by the rest of the machine does not move it), and the projected
    ceiling."""
    count = sum(per_master)

    def median(values: list[float], digits: int = 2) -> float:
        return round(statistics.median(values), digits)

    # us of each master's CPU per message it handled, run by run.
    us_runs = [
        [round(cpu * 1e6 / n, 2) for cpu, n in zip(run["masters_cpu_s"], per_master, strict=True)]
        for run in runs
    ]
    us_per_msg = [median([run[i] for run in us_runs]) for i in range(len(per_master))]
    busiest = max(us_per_msg)
    statuses: Counter[str] = Counter()
    for run in runs:
        statuses.update(run["statuses"])
    rates = [count / run["seconds"] for run in runs]
    return {
        "topology": topology.name,
        "wait_replicas": wait,
        "path": path,
        "buffer": PATHS[path],
        "masters": len(per_master),
        "messages": count * len(runs),
        "statuses": dict(statuses),
        "measured": {
            "messages_per_s": round(statistics.median(rates)),
            "messages_per_s_runs": [round(r) for r in rates],
            "messages_per_master_per_run": per_master,
            "redis_cpu_us_per_msg_per_master": us_per_msg,
            "redis_cpu_us_per_msg_per_master_runs": us_runs,
            "busiest_master_us_per_msg": busiest,
            "redis_cpu_us_per_msg_all_masters": median(
                [sum(run["masters_cpu_s"]) * 1e6 / count for run in runs]
            ),
            "replica_cpu_us_per_msg_all_replicas": median(
                [run["replicas_cpu_s"] * 1e6 / count for run in runs]
            ),
            "client_cpu_us_per_msg": median([run["client_cpu_s"] * 1e6 / count for run in runs]),
        },
        "projected": {
            # Even spread over the masters, each master on a core of its own.
            "ceiling_messages_per_s": round(len(per_master) * 1e6 / busiest),
            # The spread of this run's users as it was: the busiest master's CPU time.
            "ceiling_messages_per_s_at_measured_spread": round(
                statistics.median([count / max(run["masters_cpu_s"]) for run in runs])
            ),
        },
    }


def masters_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages/s against masters: the measured points (one Redis, the
    3-master cluster) and the ceilings projected from their CPU per message."""
    by = {(r["topology"], r["wait_replicas"], r["path"]): r for r in rows}
    columns = [(path, wait) for path in PATHS for wait in WAITS]

    def line(masters: int, kind: str, source: str, value: Callable[[str, int], float]) -> dict:
        return {
            "masters": masters,
            "kind": kind,
            "source": source,
            "messages_per_s": {f"{p}_wait{w}": round(value(p, w)) for p, w in columns},
        }

    def cluster_us(path: str, wait: int) -> float:
        return by[("cluster", wait, path)]["measured"]["busiest_master_us_per_msg"]

    out = [
        line(
            1,
            "measured",
            "one Redis, one client loop",
            lambda p, w: by[("redis", w, p)]["measured"]["messages_per_s"],
        ),
        line(
            1,
            "projected",
            "one Redis, from its CPU per message",
            lambda p, w: by[("redis", w, p)]["projected"]["ceiling_messages_per_s"],
        ),
        line(
            CLUSTER_MASTERS,
            "measured",
            f"{CLUSTER_MASTERS}-master cluster, one client loop",
            lambda p, w: by[("cluster", w, p)]["measured"]["messages_per_s"],
        ),
    ]
    for masters in PROJECTED_MASTERS:
        out.append(
            line(
                masters,
                "projected",
                f"cluster CPU per message x {masters}",
                lambda p, w, m=masters: m * 1e6 / cluster_us(p, w),
            )
        )
    return sorted(out, key=lambda row: row["masters"])  # stable: measured first


def run(
    message_count: int, users: int, repeats: int, idle_s: float, log: Callable[[str], None]
) -> dict[str, Any]:
    sessions = sessionmaker(create_engine(UNUSED_DATABASE))
    detector = LexiconDetector()
    msgs = messages(message_count, users)
    warm = messages(WARMUP_MESSAGES, users, tag="w")
    load_before = os.getloadavg()
    loads: list[float] = []  # 1-minute load average after each run
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, deployments(Path(tmp)) as topologies:
        log(f"deployments up in {time.monotonic() - started:.1f} s")
        ticks_before, own_before = cpu_ticks(), own_cpu(topologies)
        idle = {name: idle_cpu(t, idle_s) for name, t in topologies.items()}
        services = {
            (name, wait): IngestService(t.client, t.settings(wait), sessions, detector)
            for name, t in topologies.items()
            for wait in WAITS
        }
        for (name, _), service in services.items():
            for size in PATHS.values():
                topologies[name].flush()
                for buf in buffers(warm, size):
                    service.messages(buf)
        per_master = {}
        for name, t in topologies.items():
            counts = Counter(t.master_of(m["user_id"]) for m in msgs)
            per_master[name] = [counts[i] for i in range(len(t.masters))]
        configs = [(name, wait, path) for name in TOPOLOGIES for wait in WAITS for path in PATHS]
        runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {c: [] for c in configs}
        for repeat in range(repeats):
            for name, wait, path in configs if repeat % 2 == 0 else configs[::-1]:
                bufs = buffers(msgs, PATHS[path])
                result = run_once(topologies[name], services[(name, wait)], bufs)
                runs[(name, wait, path)].append(result)
                loads.append(os.getloadavg()[0])
                log(
                    f"round {repeat + 1}/{repeats} {name:8} WAIT {wait} {path:6} "
                    f"{message_count / result['seconds']:8.0f} msg/s"
                )
        share = machine_share(ticks_before, cpu_ticks(), own_cpu(topologies) - own_before)
        first = topologies["redis"].masters[0].info("server")
        version = first["redis_version"]
    rows = [
        summarise(topologies[name], wait, path, runs[(name, wait, path)], per_master[name])
        for name, wait, path in configs
    ]
    return {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "redis_version": version,
        "redis_binary": redis_binary(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            # This benchmark itself keeps about one to one and a half cores busy.
            "loadavg_1min_during": [round(min(loads), 2), round(max(loads), 2)],
            # Percent of all cores from the deployments' start to the last run.
            "cpu_percent": share,
            "seconds": round(time.monotonic() - started, 1),
        },
        "config": {
            "messages_per_run": message_count,
            "users": users,
            "repeats": repeats,
            "cluster_masters": CLUSTER_MASTERS,
            "cluster_shards": SHARDS,
            "buffers": PATHS,
            "persistence": "appendonly everysec on every data node; one replica per master",
        },
        "idle_master_cpu_ms_per_s": idle,
        "rows": rows,
        "messages_per_s_vs_masters": masters_table(rows),
        "notes": [
            "measured: messages/s of one in-process client loop (Python, same machine as "
            "every server), and Redis CPU per message from INFO cpu on each master",
            "projected: ceiling = masters x 1e6 / busiest master's CPU us per message, "
            "assuming one core per master, even spread and enough clients",
            f"more than {SHARDS} masters need more shards (VIGIL_REDIS_CLUSTER_SHARDS); "
            "fewer users per shard in a buffer means fewer messages per script call",
        ],
    }


def _fmt_list(values: list[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def table(result: dict[str, Any]) -> str:
    cfg, machine = result["config"], result["machine"]
    lines = [
        f"Redis {result['redis_version']} on loopback, every master with one replica, "
        f"{cfg['messages_per_run']} messages x {cfg['repeats']} runs per row over "
        f"{cfg['users']} users; {cfg['cluster_shards']} shards on the cluster",
        f"load average {machine['loadavg_before'][0]} before, "
        f"{machine['loadavg_1min_during'][0]} to {machine['loadavg_1min_during'][1]} during, "
        f"{machine['loadavg_after'][0]} after, {machine['cpus']} CPUs; CPU during the runs "
        f"(% of all cores): {', '.join(f'{k} {v}' for k, v in machine['cpu_percent'].items())}",
        "",
        "| topology | WAIT | path | msgs/s (measured) | Redis CPU us/msg per master "
        "(measured) | busiest master us/msg | ceiling msgs/s (projected) |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for row in result["rows"]:
        m, p = row["measured"], row["projected"]
        lines.append(
            f"| {row['topology']} | {row['wait_replicas']} | {row['path']} "
            f"({row['buffer']}) | {m['messages_per_s']} | "
            f"{_fmt_list(m['redis_cpu_us_per_msg_per_master'])} | "
            f"{m['busiest_master_us_per_msg']} | {p['ceiling_messages_per_s']} |"
        )
    vs = result["messages_per_s_vs_masters"]
    heads = list(vs[0]["messages_per_s"])
    titles = [h.replace("_wait", ", WAIT ") for h in heads]
    lines += [
        "",
        "| masters | figure | from | " + " | ".join(titles) + " |",
        "|---:|---|---|" + "---:|" * len(heads),
    ]
    for line in vs:
        values = " | ".join(str(line["messages_per_s"][h]) for h in heads)
        lines.append(f"| {line['masters']} | {line['kind']} | {line['source']} | {values} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages per run")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small counts, a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.messages, args.users, args.repeats = 400, 100, 1
    idle_s = 0.5 if args.quick else 3.0
    result = run(args.messages, args.users, args.repeats, idle_s, log=print)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
