"""Groundwork for Redis Cluster (issue 15): a real three-master cluster from redis-server on
free loopback ports, and the room-history layout checked on it. Each room's history keys share
one hash slot, so its atomic script runs on one shard; rooms spread over every shard."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from fastapi_rooms.backends.redis import _HISTORY_APPEND, _HISTORY_READ, RedisBackend

from .conftest import _wait_for_port, free_port, redis_server_binary

pytestmark = pytest.mark.anyio

MASTERS = 3


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


def _cli() -> str:
    return str(Path(redis_server_binary()).with_name("redis-cli"))


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """Three masters (no replicas), made with ``redis-cli --cluster create``; stopped by PID."""
    tmp = tmp_path_factory.mktemp("cluster")
    ports = [_cluster_port() for _ in range(MASTERS)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            log = (tmp / f"redis-{port}.log").open("ab")
            procs.append(subprocess.Popen(
                [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                stdout=log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
            log.close()
        for port, proc in zip(ports, procs, strict=True):
            _wait_for_port(port, proc, timeout=10)
        made = subprocess.run(
            [_cli(), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if made.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{made.stdout}{made.stderr}")
        deadline = time.monotonic() + 20
        while True:  # every master must agree the cluster is up
            states = [
                subprocess.run([_cli(), "-p", str(p), "cluster", "info"], capture_output=True,
                               text=True, timeout=5).stdout
                for p in ports
            ]  # fmt: skip
            if all("cluster_state:ok" in s for s in states):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not come up: {states}")
            time.sleep(0.1)  # polling other processes' state: no event reaches us
        yield ports
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
async def cluster(redis_cluster: list[int]) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=redis_cluster[0])
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


async def test_each_rooms_history_keys_share_one_slot_and_rooms_spread(
    cluster: RedisCluster,
) -> None:
    backend = RedisBackend("redis://unused", prefix=f"frc-{uuid.uuid4().hex[:6]}")
    rooms = [f"chat:{n}" for n in range(60)] + ["a{b}c", "}{", "{x}", "ünï:😀", "a b"]
    nodes = set()
    for room in rooms:
        slots = {cluster.keyslot(key) for key in backend._history_keys(room)}
        assert len(slots) == 1, (room, slots)
        nodes.add(cluster.get_node_from_key(backend._history_keys(room)[0]).name)
    assert len(nodes) == MASTERS  # rooms land on every shard


async def test_the_history_scripts_run_on_the_rooms_shard(
    cluster: RedisCluster, redis_cluster: list[int]
) -> None:
    backend = RedisBackend("redis://unused", prefix=f"frc-{uuid.uuid4().hex[:6]}")
    by_node: dict[str, str] = {}
    for n in range(60):  # one room on each shard
        room = f"chat:{n}"
        by_node.setdefault(cluster.get_node_from_key(backend._history_keys(room)[0]).name, room)
    assert len(by_node) == MASTERS
    for room in by_node.values():
        keys = backend._history_keys(room)
        for expected in (1, 2, 3):  # no CROSSSLOT: the script's keys are on one shard
            offset = await cluster.eval(
                _HISTORY_APPEND, 3, *keys, "ch", "", '{"n":', "}", 10, 60_000, 60_000, "epoch-1"
            )
            assert offset == expected
        epoch, latest, oldest, frames = await cluster.eval(
            _HISTORY_READ, 3, *keys, 1, -1, 60_000, 60_000, "unused", ""
        )
        assert (epoch, latest, oldest) == (b"epoch-1", 3, 1)
        assert frames == [b'{"n":2}', b'{"n":3}']
    for port in redis_cluster:  # clean up this test's keys on every shard
        node = aioredis.Redis(port=port)
        try:
            keys = await node.keys(f"{backend.prefix}:*")
            for key in keys:
                await node.delete(key)
        finally:
            await node.aclose()
