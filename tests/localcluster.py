"""A real Redis Cluster on loopback for tests and benchmarks: ``redis-server`` processes on free
ports, joined by ``redis-cli --cluster create``, each stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from fastapi_rooms.backends.redis_cluster import _startup

from .conftest import _wait_for_port, free_port, redis_server_binary

__all__ = ["LocalCluster", "keys", "local_cluster", "raw_client", "raw_publish", "subscribers"]


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def cli_path() -> str:
    return str(Path(redis_server_binary()).with_name("redis-cli"))


class LocalCluster:
    """``masters`` masters with ``replicas`` replicas each; ``node_timeout`` ms before a silent
    master counts as failed (its replica then takes over)."""

    def __init__(self, tmp: Path, masters: int = 3, replicas: int = 0, node_timeout: int = 1000):
        self.tmp = tmp
        self.masters, self.replicas, self.node_timeout = masters, replicas, node_timeout
        self.ports = [_cluster_port() for _ in range(masters * (1 + replicas))]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Every node as a seed, so start-up survives any one being down."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    @property
    def live(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def cli(self, port: int, *args: str, timeout: float = 10) -> str:
        done = subprocess.run([cli_path(), "-p", str(port), *args], capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        for port in self.ports:
            log = (self.tmp / f"redis-{port}.log").open("ab")
            self.procs[port] = subprocess.Popen(
                [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", str(self.node_timeout),
                 "--cluster-replica-validity-factor", "0",  # a replica may always take over
                 "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            log.close()
        for port, proc in self.procs.items():
            _wait_for_port(port, proc, timeout=10)
        made = subprocess.run(
            [cli_path(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{made.stdout}{made.stderr}")
        self.wait_ok()

    def nodes(self, port: int | None = None) -> list[dict[str, str]]:
        """``CLUSTER NODES`` as seen by a live node: id, port, role flags, slots."""
        out = self.cli(port or self.live[0], "cluster", "nodes")
        rows = []
        for line in out.splitlines():
            fields = line.split()
            rows.append({"id": fields[0], "port": fields[1].split(":")[1].split("@")[0],
                         "flags": fields[2], "master": fields[3], "slots": " ".join(fields[8:])})  # fmt: skip
        return rows

    def master_ports(self) -> list[int]:
        return sorted(int(n["port"]) for n in self.nodes()
                      if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"])  # fmt: skip

    def node_id(self, port: int) -> str:
        return self.cli(port, "cluster", "myid").strip()

    def owner(self, slot: int) -> int:
        """The port of the live master serving ``slot``."""
        for row in self.nodes():
            if "master" not in row["flags"] or "fail" in row["flags"]:
                continue
            for part in row["slots"].split():
                if part.startswith("["):
                    continue  # a slot being migrated
                first, _, last = part.partition("-")
                if int(first) <= slot <= int(last or first):
                    return int(row["port"])
        raise LookupError(f"no live master serves slot {slot}")

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and its replicas are in sync."""
        deadline = time.monotonic() + timeout
        while True:
            infos = {p: self.cli(p, "cluster", "info") for p in self.live}
            ok = all("cluster_state:ok" in info for info in infos.values())
            if ok and self.replicas:
                links = [self.cli(p, "info", "replication") for p in self.live]
                ok = all("role:master" in r or "master_link_status:up" in r for r in links)
            if ok:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster is not ok after {timeout}s: {infos}")
            time.sleep(0.1)  # another process's state: nothing signals us, so poll

    def kill(self, port: int) -> None:
        """SIGKILL one node by PID, as in a crash."""
        proc = self.procs[port]
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def wait_failover(self, dead: int, slot: int, timeout: float = 30) -> int:
        """Until a replica of the killed master ``dead`` serves ``slot``; its port."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(LookupError):  # the slot has no live master yet
                port = self.owner(slot)
                if port != dead:
                    self.wait_ok(timeout=max(1.0, deadline - time.monotonic()))
                    return port
            if time.monotonic() > deadline:
                raise TimeoutError(f"no replica took over from {dead}: {self.nodes()}")
            time.sleep(0.1)  # as in wait_ok

    def reshard(self, source: int, target: int, slots: int) -> str:
        """Move ``slots`` slots (the lowest-numbered ones ``source`` holds) to ``target`` with
        ``redis-cli --cluster reshard``, keys included."""
        done = subprocess.run(
            [cli_path(), "--cluster", "reshard", f"127.0.0.1:{source}",
             "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
             "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster reshard failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)


@contextmanager
def local_cluster(tmp: Path, masters: int = 3, replicas: int = 0) -> Iterator[LocalCluster]:
    """A started cluster for the ``with`` block; every process stopped by PID after it."""
    cluster = LocalCluster(tmp, masters, replicas)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# Talking to either kind of backend by URL, as a hostile or curious outsider ----------------


@asynccontextmanager
async def raw_client(url: str) -> AsyncIterator[Any]:
    """A redis-py client of a ``redis://`` or ``redis+cluster://`` URL (closed after)."""
    if url.startswith("redis+cluster://"):
        seeds, _ = _startup(url)
        client: Any = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in seeds])
        await client.initialize()
    else:
        client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def raw_publish(client: Any, channel: str, payload: bytes) -> int:
    """PUBLISH, or SPUBLISH on a cluster (to the channel's shard, as the backend does)."""
    if isinstance(client, RedisCluster):
        return int(await client.execute_command("SPUBLISH", channel, payload))
    return int(await client.publish(channel, payload))


async def subscribers(client: Any, channel: str) -> int:
    """How many connections subscribe to ``channel`` (on its shard, on a cluster)."""
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(channel)
        reply = await client.execute_command("PUBSUB SHARDNUMSUB", channel, target_nodes=node)
        return int(dict(reply)[channel.encode()])  # redis-py pairs the reply up
    return int(dict(await client.pubsub_numsub(channel))[channel.encode()])


async def keys(client: Any, pattern: str) -> list[bytes]:
    """KEYS on every master of a cluster, or on the one Redis."""
    if isinstance(client, RedisCluster):
        return list(await client.keys(pattern, target_nodes=RedisCluster.PRIMARIES))
    return list(await client.keys(pattern))
