"""Real Redis topologies for tests: a Redis Cluster with replicas and a Sentinel group.

``with ClusterDeployment(masters=3, replicas=1) as cluster`` starts 6 nodes on
free ports, gives the masters the 16,384 slots, attaches one replica to each
and waits for ``cluster_state:ok`` everywhere; ``cluster.kill_master_of(key)``
SIGKILLs the master serving a key and ``wait_promoted`` waits until a replica
serves its slots. ``with SentinelGroup(replicas=2, sentinels=3) as group``
starts a master, its replicas and three Sentinels (quorum 2);
``group.kill_master()`` / ``group.pause_master()`` and ``wait_promoted()``.
Failure detection is set short (1 s) so a failover fits in a test's seconds.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import TypeVar

import redis

from llmlbd.embedded import find_server_binary
from tests.harness import Proc, free_port, wait_until

__all__ = ["ClusterDeployment", "SentinelGroup", "RedisNode", "cluster_port"]

# How long a node or master must be unreachable before it is declared failed.
DOWN_AFTER_MS = 1000


def pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


class RedisNode:
    """One redis-server (or Sentinel) process on *port*, its log in a temp file."""

    def __init__(self, directory: Path, port: int, *args: str, sentinel_conf: Path | None = None):
        self.port = port
        self.directory = directory
        if sentinel_conf is not None:
            argv = [find_server_binary(), str(sentinel_conf), "--sentinel"]
        else:
            argv = [
                find_server_binary(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--enable-debug-command",
                "local",
                *args,
            ]
        self.proc = Proc(argv, name=f"redis-{port}")
        try:
            wait_until(lambda: pings(port), timeout=10, message=f"redis on {port}")
        except TimeoutError:
            print(self.proc.log()[-2000:])
            self.proc.stop(2)
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, **options: object) -> redis.Redis:
        options.setdefault("socket_timeout", 2)
        return redis.Redis(port=self.port, decode_responses=True, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL: connections reset, nothing written."""
        self.proc.signal(signal.SIGKILL)
        self.proc.popen.wait(5)

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def alive(self) -> bool:
        return self.proc.popen.poll() is None

    def stop(self) -> None:
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGCONT)  # a paused server cannot die of SIGTERM
            except ProcessLookupError:
                pass
        self.proc.stop(2)


D = TypeVar("D", bound="_Deployment")


class _Deployment:
    """Started by start() or a with block; whatever started is stopped if a step fails."""

    def _start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def start(self: D) -> D:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self: D) -> D:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ClusterDeployment(_Deployment):
    """*masters* masters sharing the slots, each with *replicas* replicas."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = DOWN_AFTER_MS):
        self.directory = Path(tempfile.mkdtemp(prefix="llmlbd-cluster-"))
        self.nodes: list[RedisNode] = []
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms

    def _start(self) -> None:
        for _ in range(self.masters * (1 + self.replicas)):
            port = cluster_port()
            self.nodes.append(
                RedisNode(
                    self.directory,
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    f"nodes-{port}.conf",
                    "--cluster-node-timeout",
                    str(self.node_timeout_ms),
                    # A replica takes over at once, whatever its replication offset.
                    "--cluster-replica-validity-factor",
                    "0",
                )
            )
        masters = self.nodes[: self.masters]
        step = 16384 // self.masters
        for index, node in enumerate(masters):
            low = index * step
            high = 16383 if index == self.masters - 1 else low + step - 1
            with node.client() as client:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        with masters[0].client() as client:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        ids = [self._node_id(node) for node in masters]
        wait_until(self._all_known, timeout=20, message="every node knows every other")
        for index, node in enumerate(self.nodes[self.masters :]):
            with node.client() as client:
                client.execute_command("CLUSTER", "REPLICATE", ids[index % self.masters])
        wait_until(
            self.healthy, timeout=30, interval=0.1, message="cluster_state:ok, replicas in sync"
        )

    @staticmethod
    def _node_id(node: RedisNode) -> str:
        with node.client() as client:
            return str(client.execute_command("CLUSTER", "MYID"))

    def _all_known(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                if len(str(client.execute_command("CLUSTER", "NODES")).splitlines()) < len(
                    self.nodes
                ):
                    return False
        return True

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok and every live replica is in sync."""
        for node in self.nodes:
            if not node.alive():
                continue
            with node.client() as client:
                if "cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    return False
                info = client.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
        return True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def startup_url(self, avoid: RedisNode | None = None) -> str:
        node = next(n for n in self.nodes if n is not avoid and n.alive())
        return f"redis://127.0.0.1:{node.port}/0"

    def master_of(self, key: str) -> RedisNode:
        """The node that serves *key*'s slot now."""
        node = next(n for n in self.nodes if n.alive())
        with node.client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for low, high, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(low) <= slot <= int(high):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(key)

    def wait_promoted(self, key: str, old: RedisNode, timeout: float = 20.0) -> float:
        """Until a live node other than *old* serves *key* and the cluster is ok; seconds."""
        started = time.monotonic()

        def promoted() -> bool:
            try:
                return self.master_of(key) is not old and self.healthy()
            except redis.RedisError:
                return False

        wait_until(promoted, timeout=timeout, interval=0.05, message="a replica promoted")
        return time.monotonic() - started

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelGroup(_Deployment):
    """A master, *replicas* replicas and *sentinels* Sentinels (quorum: a majority)."""

    def __init__(
        self,
        replicas: int = 2,
        sentinels: int = 3,
        name: str = "mymaster",
        down_after_ms: int = DOWN_AFTER_MS,
    ):
        self.directory = Path(tempfile.mkdtemp(prefix="llmlbd-sentinel-"))
        self.name = name
        self.replicas = replicas
        self.sentinel_count = sentinels
        self.down_after_ms = down_after_ms
        self.servers: list[RedisNode] = []
        self.sentinels: list[RedisNode] = []

    def _start(self) -> None:
        master = RedisNode(self.directory, free_port())
        self.servers.append(master)
        for _ in range(self.replicas):
            self.servers.append(
                RedisNode(self.directory, free_port(), "--replicaof", "127.0.0.1", str(master.port))
            )
        quorum = self.sentinel_count // 2 + 1
        for index in range(self.sentinel_count):
            port = free_port()
            conf = self.directory / f"sentinel-{index}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.name} 10000\n"
                f"sentinel parallel-syncs {self.name} {self.replicas}\n"
            )
            self.sentinels.append(RedisNode(self.directory, port, sentinel_conf=conf))
        wait_until(self._settled, timeout=30, interval=0.1, message="sentinels see the replicas")

    def _settled(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                try:
                    replicas = client.execute_command("SENTINEL", "REPLICAS", self.name)
                    others = client.execute_command("SENTINEL", "SENTINELS", self.name)
                except redis.RedisError:
                    return False
                if len(replicas) < self.replicas or len(others) < self.sentinel_count - 1:
                    return False
        with self.master.client() as client:
            return int(client.info("replication")["connected_slaves"]) >= self.replicas

    @property
    def hosts(self) -> list[str]:
        return [f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels]

    def master_port(self) -> int:
        """The master as the first Sentinel that answers sees it."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    _, port = client.execute_command(
                        "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name
                    )
                    return int(port)
            except redis.RedisError:
                continue
        raise LookupError("no sentinel answered")

    @property
    def master(self) -> RedisNode:
        port = self.master_port()
        return next(server for server in self.servers if server.port == port)

    def wait_promoted(self, old: RedisNode, timeout: float = 20.0) -> float:
        """Until every Sentinel names a new master that says it is one; seconds."""
        started = time.monotonic()

        def promoted() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    ports.add(
                        int(
                            client.execute_command(
                                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name
                            )[1]
                        )
                    )
            if len(ports) != 1 or old.port in ports:
                return False
            node = next(s for s in self.servers if s.port in ports)
            with node.client() as client:
                return client.info("replication")["role"] == "master"

        wait_until(promoted, timeout=timeout, interval=0.05, message="sentinels promoted a replica")
        return time.monotonic() - started

    def stop(self) -> None:
        for node in self.sentinels + self.servers:
            node.stop()
