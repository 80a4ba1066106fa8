"""Redis Cluster: the layout on a real three-master cluster (each room's keys and channel on one
slot, rooms on every shard), the URL, and what a cluster does to a running app: a master killed
and its replica promoted, a live room's slot resharded while messages flow. Nodes a (uvicorn)
and c (granian-rsgi) are real processes; clients are the official Python client, which
recovers by offset. (Delivery, presence and history on a cluster: test_multinode.py and
test_history_redis.py run every test on both backends.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from fastapi_rooms import BackendUnavailable, RoomManager
from fastapi_rooms.backends import backend_from_url
from fastapi_rooms.backends.redis import _HISTORY_APPEND, _HISTORY_READ, RedisBackend
from fastapi_rooms.backends.redis_cluster import RedisClusterBackend, _startup
from fastapi_rooms.client import RoomsClient

from .conftest import Server, free_port, running_nodes
from .helpers import WAIT, next_event, open_ws, recv_json, room_channel, wait_stats
from .localcluster import LocalCluster, local_cluster, raw_client
from .test_multinode import redis_nodes

pytestmark = pytest.mark.anyio

MASTERS = 3


@pytest.fixture(scope="module")
def redis_cluster(redis_cluster_url: str) -> list[int]:
    return [port for _, port in _startup(redis_cluster_url)[0]]


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


# The URL and the prefix --------------------------------------------------------------------


def test_cluster_urls_are_parsed_and_bad_ones_refused() -> None:
    backend = backend_from_url("redis+cluster://u:p%40ss@10.0.0.1:7000,[::1]:7001", prefix="x")
    assert isinstance(backend, RedisClusterBackend)
    assert backend._seeds == [("10.0.0.1", 7000), ("::1", 7001)]
    assert backend._options["password"] == "p@ss" and backend._options["ssl"] is False
    assert "p%40ss" not in repr(backend) and "***" in repr(backend)
    assert backend_from_url("rediss+cluster://h:1")._options["ssl"] is True  # type: ignore[attr-defined]
    for url, said in [
        ("redis+cluster://", "no host:port"),
        ("redis+cluster://h", "expected host:port"),
        ("redis+cluster://h:port", "expected host:port"),
        ("redis+cluster://h:1/3", "database 0 only"),
        ("redis+cluster://h:1?timeout=3", "not the URL"),
    ]:
        with pytest.raises(ValueError, match=said):
            backend_from_url(url)
    with pytest.raises(ValueError, match="braces"):
        RoomManager("redis+cluster://h:1", prefix="{app}")


async def test_a_cluster_that_is_not_there_is_logged_and_not_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = RoomManager(f"redis+cluster://127.0.0.1:{free_port()}", startup_timeout=0.5)
    with caplog.at_level("ERROR", "fastapi_rooms"):
        await manager.start()
    try:
        assert "Redis Cluster cannot be connected" in caplog.text
        assert manager.stats()["backend"]["connected"] is False
        assert manager.not_ready()
    finally:
        await manager.stop()


async def test_each_room_channel_shares_its_keys_slot(cluster: RedisCluster) -> None:
    prefix = f"frc-{uuid.uuid4().hex[:6]}"
    backend = RedisBackend("redis://unused", prefix=prefix)
    for room in ["chat:1", "a{b}c", "}{", "{x}", "ünï:😀", "a b"]:
        keys = [*backend._history_keys(room), *backend._presence_keys(room)]
        slots = {cluster.keyslot(k) for k in [*keys, room_channel(prefix, room)]}
        assert len(slots) == 1, (room, slots)


# A running app while the cluster changes -------------------------------------------------------


def app_nodes(url: str, prefix: str) -> dict[str, Any]:
    out = redis_nodes(url, prefix, {"a": "uvicorn", "c": "granian-rsgi"})
    for _, _, env in out.values():
        env["NODE_TTL"] = "1.5"  # a position check every half second
    return out


@dataclass
class Stream:
    """What one client received in a room: (offset, data) in order, and reloads asked."""

    events: list[tuple[int | None, Any]] = field(default_factory=list)
    reloads: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, event: dict[str, Any]) -> None:
        self.events.append((event.get("offset"), event["data"]))  # no offset: no history
        self.changed.set()

    async def has(self, data: Any, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                while all(d != data for _, d in self.events):
                    self.changed.clear()
                    await self.changed.wait()
                return True
        return False


async def member(stack: AsyncExitStack, server: Server, room: str) -> tuple[RoomsClient, Stream]:
    stream = Stream()
    client = RoomsClient(
        f"{server.ws}/ws", backoff=0.05, max_backoff=0.5,
        ping_interval=None, on_reload=stream.reloads.append,
    )  # fmt: skip
    await stack.enter_async_context(client)
    await client.join(room, stream.on_message)
    return client, stream


async def publish_through(
    publisher: RoomsClient, echo: Stream, room: str, fault: Awaitable[Any]
) -> tuple[int, int]:
    """Publish 0, 1, 2, ... one at a time (each until its echo, or a second): 10, then more
    while ``fault`` runs, then 20 after it; then "end", until it is numbered. Returns how many
    were tried during the fault and in all."""
    task: asyncio.Future[Any] | None = None
    during = None
    i = 0
    try:
        while during is None or i < 10 + during + 20:
            if i == 10:
                task = asyncio.ensure_future(fault)
            if task is not None and task.done() and during is None:
                during = i - 10
            with contextlib.suppress(ConnectionError):  # refused while the node reconnects
                await publisher.publish(room, i)
                await echo.has(i, 1.0)
            i += 1
        assert task is not None
        await task
        while True:
            with contextlib.suppress(ConnectionError):
                await publisher.publish(room, "end")
                if await echo.has("end", 1.0):
                    return during, i
    finally:
        if task is not None:
            task.cancel()


async def history_in_redis(url: str, prefix: str, room: str) -> list[tuple[int, Any]]:
    async with raw_client(url) as client:
        frames = await client.lrange(RedisBackend(url, prefix=prefix)._history_keys(room)[1], 0, -1)
    return [(m["offset"], m["data"]) for m in map(json.loads, frames)]


def room_on(cluster: LocalCluster, prefix: str, slots: range) -> str:
    """A history room whose slot is in ``slots``."""
    for n in range(100_000):
        room = f"race:{n}"
        if key_slot(room_channel(prefix, room).encode()) in slots:
            return room
    raise LookupError(f"no room in slots {slots}")


async def test_a_killed_master_s_replica_takes_over_and_no_member_misses_a_message(
    tmp_path: Path,
) -> None:
    prefix = f"frfail-{uuid.uuid4().hex[:6]}"
    with (
        local_cluster(tmp_path, masters=3, replicas=1) as cluster,
        running_nodes(tmp_path, app_nodes(cluster.url, prefix)) as servers,
    ):
        r = room_on(cluster, prefix, range(16384))
        slot = key_slot(room_channel(prefix, r).encode())
        doomed = cluster.owner(slot)
        async with AsyncExitStack() as stack:
            publisher, echo = await member(stack, servers["c"], r)
            _, stream = await member(stack, servers["a"], r)
            for i in range(5):
                await publisher.publish(r, f"before-{i}")
            assert await stream.has("before-4", WAIT)
            # A third member leaves before the failover and comes back after it.
            late = await stack.enter_async_context(open_ws(servers["a"], "/ws", max_queue=None))
            await recv_json(late)
            await late.send(json.dumps({"type": "join", "room": r}))
            left_at = await next_event(late, "joined")
            await late.close()

            async def kill_and_wait() -> int:
                cluster.kill(doomed)
                return await anyio.to_thread.run_sync(cluster.wait_failover, doomed, slot)

            during, tried = await publish_through(publisher, echo, r, kill_and_wait())
            assert during > 0
            assert await stream.has("end", 2 * WAIT)
            for server in servers.values():
                backend = await wait_stats(server, lambda s: s["connected"] and s["in_sync"])
                assert backend["reconnects"] >= 1
                assert "connection lost" in server.log()
            # Every member saw every numbered message once, in offset order, as Redis kept them.
            kept = await history_in_redis(cluster.url, prefix, r)
            assert stream.events == echo.events == kept[kept.index(stream.events[0]) :]
            offsets = [o for o, _ in stream.events]
            assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
            assert stream.reloads == echo.reloads == []
            assert tried > len([d for _, d in kept if isinstance(d, int)])  # some were refused
            # The one who left recovers from the promoted replica by offset.
            back = await stack.enter_async_context(open_ws(servers["c"], "/ws", max_queue=None))
            await recv_json(back)
            since = {"offset": left_at["offset"], "epoch": left_at["epoch"]}
            await back.send(json.dumps({"type": "join", "room": r, "since": since}))
            joined = await next_event(back, "joined")
            assert joined["recovered"] is True and joined["epoch"] == left_at["epoch"]
            missed = [
                await next_event(back, "message") for _ in range(joined["offset"] - since["offset"])
            ]
            assert [(m["offset"], m["data"]) for m in missed] == [
                e for e in kept if e[0] > since["offset"]
            ]


async def test_resharding_a_live_room_s_slot_loses_nothing(tmp_path: Path) -> None:
    prefix = f"frmove-{uuid.uuid4().hex[:6]}"
    with (
        local_cluster(tmp_path, masters=3) as cluster,
        running_nodes(tmp_path, app_nodes(cluster.url, prefix)) as servers,
    ):
        source = cluster.owner(0)
        target = next(p for p in cluster.master_ports() if p != source)
        moved = 40  # redis-cli moves the source's lowest slots: 0..39
        r = room_on(cluster, prefix, range(moved))
        slot = key_slot(room_channel(prefix, r).encode())
        async with AsyncExitStack() as stack:
            publisher, echo = await member(stack, servers["c"], r)
            _, stream = await member(stack, servers["a"], r)
            reshard = anyio.to_thread.run_sync(cluster.reshard, source, target, moved)
            during, _ = await publish_through(publisher, echo, r, reshard)
            assert during > 0  # messages flowed while the slot moved
            assert cluster.owner(slot) == target
            assert await stream.has("end", 2 * WAIT)
            kept = await history_in_redis(cluster.url, prefix, r)
            assert stream.events == echo.events == kept
            assert [o for o, _ in kept] == list(range(1, len(kept) + 1))
            assert stream.reloads == echo.reloads == []
            for server in servers.values():
                backend = await wait_stats(server, lambda s: s["connected"] and s["in_sync"])
                assert backend["reconnects"] >= 1  # the slot's SUNSUBSCRIBE: resubscribed


async def test_rooms_on_every_shard_reach_members_on_every_node(
    redis_cluster_url: str, cluster: RedisCluster, tmp_path: Path
) -> None:
    """Nine rooms, three on each master; members on a, b (uvicorn) and c (granian-rsgi); every
    node publishes to every room: each member gets each room's messages once, in order."""
    prefix = f"frspread-{uuid.uuid4().hex[:6]}"
    by_master: dict[str, list[str]] = {}
    for n in range(200):
        room = f"race:spread{n}"
        master = cluster.get_node_from_key(room_channel(prefix, room))
        assert master is not None
        if len(by_master.setdefault(master.name, [])) < 3:
            by_master[master.name].append(room)
    rooms = [r for group in by_master.values() for r in group]
    assert len(by_master) == MASTERS and len(rooms) == 9
    nodes = redis_nodes(redis_cluster_url, prefix)
    with running_nodes(tmp_path, nodes) as servers:
        async with AsyncExitStack() as stack:
            members = {
                name: await member(stack, server, rooms[0]) for name, server in servers.items()
            }
            streams: dict[tuple[str, str], Stream] = {}
            for name, (client, first) in members.items():
                streams[(name, rooms[0])] = first
                for room in rooms[1:]:
                    streams[(name, room)] = stream = Stream()
                    await client.join(room, stream.on_message)
            for i in range(5):
                for name, (client, _) in members.items():
                    for room in rooms:
                        await client.publish(room, f"{name}-{i}")
            for (name, room), stream in streams.items():
                assert await stream.has("c-4", WAIT), (name, room)
                assert await stream.has("a-4", WAIT) and await stream.has("b-4", WAIT)
                offsets = [o for o, _ in stream.events]
                assert offsets == list(range(1, 16)), (name, room, offsets)  # once, in order
                by_sender = {s: [d for _, d in stream.events if d.startswith(s)] for s in "abc"}
                assert all(v == [f"{s}-{i}" for i in range(5)] for s, v in by_sender.items())
            for name in servers:  # one order per room: every member saw the same sequence
                for room in rooms:
                    assert streams[(name, room)].events == streams[("a", room)].events
            # One pub/sub connection per master and app node, holding that master's rooms.
            for master in cluster.get_primaries():
                listed = await cluster.execute_command(
                    "CLIENT LIST", "TYPE", "pubsub", target_nodes=master
                )
                if isinstance(listed, (bytes, str)):  # RESP2: text; RESP3: parsed already
                    text = listed.decode() if isinstance(listed, bytes) else listed
                    listed = [
                        dict(f.split("=", 1) for f in line.split()) for line in text.splitlines()
                    ]
                ours = [c for c in listed if str(c["ssub"]) != "0"]
                assert len(ours) == len(servers), listed


async def test_publishing_to_a_room_with_history_while_the_backend_is_down_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nobody can get a message the backend cannot number: the publisher is told, loudly."""
    manager = RoomManager(f"redis+cluster://127.0.0.1:{free_port()}", startup_timeout=0.2)
    manager.namespace("kept:{name}", history_size=10, history_ttl=60)
    with caplog.at_level("CRITICAL", "fastapi_rooms"):
        await manager.start()
    try:
        with pytest.raises(BackendUnavailable, match=r"kept:a.*unreachable.*Redis Cluster"):
            await manager.publish("kept:a", {"n": 1})
        assert await manager.publish("plain", {"n": 1}) == 0  # no history: local, at most once
    finally:
        await manager.stop()


async def test_cluster_options_reach_the_cluster_client_and_not_the_pub_sub_connections(
    redis_cluster_url: str,
) -> None:
    """RedisCluster-only options (here reinitialize_steps, dynamic_startup_nodes) are not
    handed to each master's plain pub/sub connection, which would refuse them."""
    backend = RedisClusterBackend(
        redis_cluster_url, prefix=f"fropt-{uuid.uuid4().hex[:6]}",
        reinitialize_steps=3, dynamic_startup_nodes=False,
    )  # fmt: skip
    await backend.connect()
    try:
        channel = room_channel(backend.prefix, "r")
        for probe in backend.probe_channels("n"):
            await backend.subscribe(probe)
        await backend.subscribe(channel)
        heard: list[tuple[str, bytes | None]] = []
        async with asyncio.timeout(WAIT):
            async for item in backend.listen():
                heard.append(item)
                if item == (channel, None):  # confirmed: publish, and hear it
                    assert await backend.publish(channel, b"hi") == 1
                if item == (channel, b"hi"):
                    break
        assert backend.heard_at(channel) is not None
        assert backend.heard_at("never-subscribed") is None
    finally:
        await backend.disconnect()
