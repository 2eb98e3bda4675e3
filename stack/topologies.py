"""Redis deployments started on loopback for the tests and benchmarks: a
Sentinel setup of one master, one replica and three sentinels, and a Redis
Cluster of three masters with a replica each, from the machine's
``redis-server`` or the embedded one (``stack.processes.redis_binary``), so
they run on a bare machine too.

The failure detection is fast (``down-after-milliseconds`` 1000, a 2 s
``cluster-node-timeout``) so a failover test takes seconds; that is these
deployments' configuration, not a vigil setting.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import redis

from stack.processes import HOST, Process, redis_binary

# Loopback ports the tests may use for their own Redis processes.
PORT_RANGE = range(26400, 26500)
MASTER_NAME = "vigil-state"
# A broker behind Sentinel: a deployment of its own, on ports of its own.
BROKER_PORT_RANGE = range(26500, 26600)
BROKER_MASTER_NAME = "vigil-broker"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
AGREE_TIMEOUT_S = 60.0


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int, port_range: range = PORT_RANGE, *, offset: int = 0) -> list[int]:
    """``count`` ports of ``port_range`` free right now (and, with ``offset``,
    each port + offset too: a cluster node's bus)."""
    found = [p for p in port_range if _free(p) and (not offset or _free(p + offset))][:count]
    if len(found) < count:
        raise RuntimeError(f"fewer than {count} free loopback ports in {port_range}")
    return found


def _client(port: int) -> redis.Redis:
    return redis.Redis(
        host=HOST, port=port, decode_responses=True, socket_timeout=2, socket_connect_timeout=1
    )


class Node:
    """One ``redis-server`` (data node or sentinel) run from a config file it owns."""

    def __init__(self, root: Path, port: int, lines: list[str], *, sentinel: bool = False) -> None:
        self.port = port
        self.dir = root / str(port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
        common = [
            f"port {port}",
            f"bind {HOST}",
            f'dir "{self.dir}"',
            "protected-mode yes",
            "daemonize no",
            f'logfile "{self.dir / "server.log"}"',
        ]
        self.conf.write_text("\n".join(common + lines) + "\n")
        self.sentinel = sentinel
        self.process: Process | None = None

    def start(self) -> Node:
        argv = [redis_binary(), str(self.conf)]
        if self.sentinel:
            argv.append("--sentinel")
        self.process = Process(
            argv, log_path=self.dir / "stdout.log", cwd=self.dir, label=f"redis:{self.port}"
        ).start()
        deadline = time.monotonic() + 30
        while not self.answers():
            self.process.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis on port {self.port} did not answer within 30 s")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return _client(self.port)

    def kill(self) -> None:
        """SIGKILL: no AOF flush, no goodbye to replicas or sentinels."""
        if self.process is not None:
            self.process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10)


class SentinelSetup:
    """A master, a replica and three sentinels watching them as ``master_name``."""

    def __init__(
        self, root: Path, *, port_range: range = PORT_RANGE, master_name: str = MASTER_NAME
    ) -> None:
        self.master_name = master_name
        ports = free_ports(5, port_range)
        data = ["appendonly yes", "appendfsync everysec", 'save ""', "maxmemory-policy noeviction"]
        self.nodes = [Node(root, ports[0], data), Node(root, ports[1], data)]
        self.nodes[1].conf.write_text(
            self.nodes[1].conf.read_text() + f"replicaof {HOST} {ports[0]}\n"
        )
        watch = [
            f"sentinel monitor {master_name} {HOST} {ports[0]} 2",
            f"sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {master_name} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {master_name} 1",
        ]
        self.sentinels = [Node(root, port, watch, sentinel=True) for port in ports[2:]]

    @property
    def sentinel_setting(self) -> str:
        """The value of VIGIL_REDIS_SENTINELS for this setup."""
        return ",".join(f"{HOST}:{node.port}" for node in self.sentinels)

    def broker_url(self, db: int = 0) -> str:
        """Celery's URL for a broker behind these sentinels."""
        return ";".join(f"sentinel://{HOST}:{node.port}/{db}" for node in self.sentinels)

    def start(self) -> SentinelSetup:
        try:
            for node in self.nodes + self.sentinels:
                node.start()
            self.wait_agreed(self.nodes[0].port)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.sentinels + self.nodes:
            with contextlib.suppress(Exception):
                node.stop()

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def master_port(self) -> int | None:
        """The master every sentinel names, or None while they disagree."""
        named = set()
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                address = client.sentinel_get_master_addr_by_name(self.master_name)
            except redis.RedisError:
                address = None
            finally:
                client.close()
            named.add(None if address is None else int(address[1]))
        return named.pop() if len(named) == 1 else None

    def _settled(self, master: int) -> bool:
        """Every sentinel names ``master``, knows the two others, and sees the
        other data node as a live replica in sync."""
        if self.master_port() != master:
            return False
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                if len(client.sentinel_sentinels(self.master_name)) != len(self.sentinels) - 1:
                    return False
                replicas = client.sentinel_slaves(self.master_name)
                live = [
                    r for r in replicas if not r["is_sdown"] and r.get("master-link-status") == "ok"
                ]
                if not live:
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return True

    def wait_agreed(self, master: int, timeout: float = AGREE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self._settled(master):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the sentinels did not agree on master port {master} within {timeout:.0f} s"
                )
            time.sleep(0.2)

    def wait_failover(self, old_master: int, timeout: float = AGREE_TIMEOUT_S) -> int:
        """Wait until every sentinel names a new master; its port."""
        deadline = time.monotonic() + timeout
        while True:
            port = self.master_port()
            if port is not None and port != old_master:
                return port
            if time.monotonic() > deadline:
                raise TimeoutError(f"no failover from port {old_master} within {timeout:.0f} s")
            time.sleep(0.1)


def sentinel_env(setup: SentinelSetup, broker_url: str, **extra: str) -> dict[str, str]:
    """A worker's whole environment for state behind ``setup``'s sentinels: the
    shipped settings, no VIGIL_REDIS_URL."""
    env = {key: value for key, value in os.environ.items() if key != "VIGIL_REDIS_URL"}
    env.update(
        {
            "VIGIL_REDIS_SENTINELS": setup.sentinel_setting,
            "VIGIL_REDIS_SENTINEL_MASTER": setup.master_name,
            "VIGIL_BROKER_URL": broker_url,
            **extra,
        }
    )
    return env


# A Redis Cluster: ports of its own. A node's cluster bus is its port + 10000
# (Redis 6.2 has no cluster-port setting), so both stay below the kernel's
# ephemeral range (32768 up), where an outgoing connection could hold one.
CLUSTER_PORT_RANGE = range(16600, 16700)
CLUSTER_BUS_OFFSET = 10000
CLUSTER_NODE_TIMEOUT_MS = 2000
SLOTS = 16384


class ClusterSetup:
    """A Redis Cluster of ``masters`` masters with one replica each, formed with
    CLUSTER MEET, ADDSLOTS and REPLICATE (so it works on Redis 6.2's embedded
    binary as on 7.0), each master owning an equal, contiguous slot range, as
    ``redis-cli --cluster create`` lays them out.

    ``cluster-node-timeout`` is 2 s so a failover test takes seconds; that is
    this test deployment's configuration, not a vigil setting."""

    def __init__(
        self, root: Path, *, masters: int = 3, port_range: range = CLUSTER_PORT_RANGE
    ) -> None:
        ports = free_ports(masters * 2, port_range, offset=CLUSTER_BUS_OFFSET)
        data = [
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {CLUSTER_NODE_TIMEOUT_MS}",
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
            "maxmemory-policy noeviction",
        ]
        self.masters = [Node(root, port, data) for port in ports[:masters]]
        self.replicas = [Node(root, port, data) for port in ports[masters:]]

    @property
    def nodes(self) -> list[Node]:
        return self.masters + self.replicas

    @property
    def nodes_setting(self) -> str:
        """The value of VIGIL_REDIS_CLUSTER_NODES for this setup."""
        return ",".join(f"{HOST}:{node.port}" for node in self.masters)

    def start(self) -> ClusterSetup:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        first = self.masters[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", HOST, node.port)
        per = SLOTS // len(self.masters)
        for i, node in enumerate(self.masters):
            end = SLOTS if i == len(self.masters) - 1 else (i + 1) * per
            node.client().execute_command("CLUSTER", "ADDSLOTS", *range(i * per, end))
        self._wait(lambda: all(len(self._known(n)) == len(self.nodes) for n in self.nodes))
        for master, replica in zip(self.masters, self.replicas, strict=True):
            master_id = master.client().execute_command("CLUSTER", "MYID")
            replica.client().execute_command("CLUSTER", "REPLICATE", master_id)
        self.wait_healthy()

    @staticmethod
    def _known(node: Node) -> list[str]:
        try:
            return [line for line in node.client().execute_command("CLUSTER", "NODES").splitlines()]
        except redis.RedisError:
            return []

    def _healthy(self) -> bool:
        """Every live node sees the cluster ok, and every master has a synced replica."""
        live = [n for n in self.nodes if n.process is not None and n.process.alive]
        for node in live:
            try:
                info = node.client().execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            if "cluster_state:ok" not in str(info):
                return False
        masters = [m for m in self.master_ports() if m]
        for port in masters:
            info = _client(port).info("replication")
            if int(info.get("connected_slaves", 0)) < 1:
                return False
            if not all(
                info[f"slave{i}"]["state"] == "online" for i in range(int(info["connected_slaves"]))
            ):
                return False
        return True

    def wait_healthy(self, timeout: float = AGREE_TIMEOUT_S) -> None:
        self._wait(self._healthy, timeout)

    @staticmethod
    def _wait(ready, timeout: float = AGREE_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster did not settle within {timeout:.0f} s")
            time.sleep(0.1)

    def master_ports(self) -> list[int]:
        """The ports of the live nodes that are masters now."""
        out = []
        for node in self.nodes:
            if node.process is None or not node.process.alive:
                continue
            try:
                role = node.client().execute_command("ROLE")[0]
            except redis.RedisError:
                continue
            if role == "master":
                out.append(node.port)
        return sorted(out)

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()


def cluster_env(setup: ClusterSetup, broker_url: str, **extra: str) -> dict[str, str]:
    """A worker's whole environment for state on ``setup``: the shipped
    settings, no VIGIL_REDIS_URL."""
    env = {key: value for key, value in os.environ.items() if key != "VIGIL_REDIS_URL"}
    env.update(
        {"VIGIL_REDIS_CLUSTER_NODES": setup.nodes_setting, "VIGIL_BROKER_URL": broker_url, **extra}
    )
    return env
