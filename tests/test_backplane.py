"""Managers in one process acting as nodes: over the in-memory broker and over real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from fastapi_rooms import RoomManager, WebSocket
from fastapi_rooms.backends import MemoryBackend, MemoryBroker, backend_from_url
from fastapi_rooms.backends.redis import RedisBackend, redact
from fastapi_rooms.backplane.envelope import Envelope, decode, encode

from .conftest import RedisServer
from .helpers import room_channel

pytestmark = pytest.mark.anyio

WAIT = 10.0  # seconds any single event may take before the test fails


class Peer:
    """An accepted ASGI connection that records what it was sent and signals each send."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.bytes: list[bytes] = []
        self._changed = asyncio.Event()

    async def send(self, event: dict[str, Any]) -> None:
        if event["type"] == "websocket.send":
            if event.get("text") is not None:
                self.texts.append(event["text"])
            else:
                self.bytes.append(event["bytes"])
        self._changed.set()

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def wait_for(self, count: int, timeout: float = WAIT) -> list[str]:
        """Wait until ``count`` text messages arrived."""
        async with asyncio.timeout(timeout):
            while len(self.texts) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.texts


def connect(manager: RoomManager, cid: str, *rooms: str) -> Peer:
    peer = Peer()
    ws = WebSocket({"type": "websocket", "path": "/t"}, peer.receive, peer.send, accepted=True)
    manager.add_connection(cid, ws)
    for room in rooms:
        manager.join_room(cid, room)
    return peer


Nodes = Callable[..., RoomManager]


@pytest.fixture(params=["memory", "redis"])
async def nodes(
    request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> AsyncIterator[Nodes]:
    """A factory of started managers sharing one backend: the memory broker or real Redis."""
    broker = MemoryBroker()
    made: list[RoomManager] = []

    async def make(**options: Any) -> RoomManager:
        if request.param == "memory":
            manager = RoomManager(MemoryBackend(broker), **options)
        else:
            manager = RoomManager(redis_url, prefix=redis_prefix, **options)
        await manager.start()
        made.append(manager)
        await manager.sync(WAIT)
        return manager

    yield make  # type: ignore[misc]
    for manager in made:
        await manager.stop()


# Envelopes ---------------------------------------------------------------------------------


def test_envelope_round_trip() -> None:
    for data in ("héllo", b"\x00\xff", ""):
        env = Envelope("n1", "room", "lobby", ("a", "b"), data)
        assert decode(encode(env)) == env
    plain = Envelope("n1", "all", "", (), "x")
    assert b'"x"' not in encode(plain)[5:-1]  # no exclude list when nothing is excluded
    assert decode(encode(plain)) == plain


def _raw(header: bytes, body: bytes = b"") -> bytes:
    return b"FR1" + len(header).to_bytes(2, "big") + header + body


@pytest.mark.parametrize(
    ("payload", "says"),
    [
        (b"", "starting with"),
        (b"hello", "starting with"),
        (b"\x80\x04pickle", "starting with"),
        (b"FR1", "too short"),
        (b"FR1\x00\x10{}", "claims 16 bytes"),
        (b"FR1\x00\x03abc", "not JSON"),
        (b"FR1\x00\x02[]", "should be an object"),
        (b'FR1\x00\x0c{"o":"n","k":', "not JSON"),
        (_raw(b'{"o":"n","k":"room","t":5}'), "valid origin, kind or target"),
        (_raw(b'{"k":"room","t":"r"}'), "valid origin, kind or target"),
        (_raw(b'{"o":"n","k":"nope","t":"r"}'), "valid origin, kind or target"),
        (_raw(b'{"o":"n","k":"room","t":"r","x":"a"}'), "list of ids"),
        (_raw(b'{"o":"n","k":"room","t":"r","x":[1]}'), "list of ids"),
        (_raw(b'{"o":"n","k":"room","t":"r"}', b"\xff"), "not UTF-8"),
    ],
)
def test_malformed_envelopes_are_refused_with_a_reason(payload: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        decode(payload)


def test_backend_urls_and_redaction() -> None:
    backend = backend_from_url("redis://user:secret@example.com:6379/2", prefix="p")
    assert isinstance(backend, RedisBackend)
    assert "secret" not in repr(backend)
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
    with pytest.raises(ValueError, match="expected redis://"):
        backend_from_url("amqp://h")


# Delivery across nodes ---------------------------------------------------------------------


async def test_room_broadcast_reaches_every_node_once_in_order(nodes: Nodes) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    pa = connect(a, "a1", "room")
    pb = [connect(b, f"b{i}", "room") for i in range(3)]
    pc = connect(c, "c1", "elsewhere")  # node c has no member: it gets nothing
    await a.sync(WAIT)
    await b.sync(WAIT)
    for i in range(500):
        assert await a.broadcast_to_room("room", f"m{i}") == 1  # the count is local
    expected = [f"m{i}" for i in range(500)]
    for peer in pb:
        assert await peer.wait_for(500) == expected
    assert pa.texts == expected  # the publisher's own members: exactly once
    await a.broadcast_to_room("elsewhere", "c-only")
    assert await pc.wait_for(1) == ["c-only"]
    assert pa.texts == expected
    assert c.stats()["backend"]["malformed_envelopes"] == 0


async def test_exclude_and_broadcast_to_all_across_nodes(nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    pa1, pa2 = connect(a, "a1", "r"), connect(a, "a2")
    pb1, pb2 = connect(b, "b1", "r"), connect(b, "b2", "r")
    await b.sync(WAIT)
    await a.broadcast_to_room("r", "one", exclude=["a1", "b2"])
    await a.broadcast_to_room("r", {"two": 2}, exclude="b1")
    await b.broadcast_to_all("three", exclude={"a2"})
    # "three" is local on b, so it may overtake a's messages there; a's keep their order.
    assert set(await pb1.wait_for(2)) == {"one", "three"}
    assert set(await pb2.wait_for(2)) == {'{"two":2}', "three"}
    assert await pa1.wait_for(2) == ['{"two":2}', "three"]
    assert pa2.texts == []
    await a.broadcast_to_all(b"\x01\x02")
    await a.broadcast_to_all("done")  # from a, after the bytes: b's members get both in order
    await pa2.wait_for(1)
    assert pa2.bytes == [b"\x01\x02"]
    await pb1.wait_for(3)
    assert pb1.bytes == [b"\x01\x02"]


async def test_send_to_a_connection_on_another_node(nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    pb = connect(b, "target")
    await b.sync(WAIT)
    assert await a.send_to("target", {"hi": 1}) is True
    assert await pb.wait_for(1) == ['{"hi":1}']
    assert await a.send_to("nobody", "x") is False
    b.remove_connection("target")
    await b.sync(WAIT)
    assert await a.send_to("target", "gone") is False


async def test_subscriptions_follow_local_membership(nodes: Nodes) -> None:
    a, b = await nodes(), await nodes()
    connect(a, "a1", "r")
    pb = connect(b, "b1", "r")
    await b.sync(WAIT)
    channels = b.stats()["backend"]["channels"]
    b.leave_room("b1", "r")
    await b.sync(WAIT)
    assert b.stats()["backend"]["channels"] == channels - 1
    await a.broadcast_to_room("r", "after-leave")
    await a.broadcast_to_all("marker")
    assert await pb.wait_for(1) == ["marker"]  # the room message never came


async def test_room_channel_has_no_subscriber_once_members_leave(
    redis_url: str, redis_prefix: str
) -> None:
    a, b = RoomManager(redis_url, prefix=redis_prefix), RoomManager(redis_url, prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await a.start()
        await b.start()
        channel = room_channel(redis_prefix, "lobby")
        connect(a, "a1", "lobby")
        connect(b, "b1", "lobby")
        connect(b, "b2", "lobby")
        await a.sync(WAIT)
        await b.sync(WAIT)
        assert dict(await client.pubsub_numsub(channel)) == {channel.encode(): 2}
        b.leave_room("b1", "lobby")
        await b.sync(WAIT)
        assert dict(await client.pubsub_numsub(channel)) == {channel.encode(): 2}
        b.remove_connection("b2")
        a.leave_room("a1", "lobby")
        await a.sync(WAIT)
        await b.sync(WAIT)
        assert dict(await client.pubsub_numsub(channel)) == {channel.encode(): 0}
        assert await client.get(f"{redis_prefix}:conn:b2") is None
        assert await client.get(f"{redis_prefix}:conn:a1") == a.node_id.encode()
    finally:
        await a.stop()
        await b.stop()
        # Shutdown leaves no directory keys behind.
        assert await client.keys(f"{redis_prefix}:*") == []
        await client.aclose()


async def test_malformed_envelopes_are_counted_and_the_listener_survives(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    manager = RoomManager(redis_url, prefix=redis_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await manager.start()
        peer = connect(manager, "p", "r")
        await manager.sync(WAIT)
        channel = room_channel(redis_prefix, "r")
        bad = [b"", b"not an envelope", b"\x80\x04\x95pickle", b"FR1\x00\x05{bad}", b"FR1\xff"]
        with caplog.at_level(logging.WARNING, "fastapi_rooms.backplane"):
            for payload in bad:
                await client.publish(channel, payload)
            good = encode(Envelope("other-node", "room", "r", (), "still alive"))
            await client.publish(channel, good)
            assert await peer.wait_for(1) == ["still alive"]
        stats = manager.stats()["backend"]
        assert stats["malformed_envelopes"] == len(bad)
        assert stats["connected"] is True
        assert sum("malformed envelope" in r.message for r in caplog.records) == len(bad)
    finally:
        await manager.stop()
        await client.aclose()


async def test_oversized_remote_message_is_dropped_and_counted(nodes: Nodes) -> None:
    a = await nodes()
    b = await nodes(max_message_bytes=100)
    connect(a, "a1", "r")
    pb = connect(b, "b1", "r")
    await b.sync(WAIT)
    await a.broadcast_to_room("r", "x" * 500)
    await a.broadcast_to_room("r", "small")
    assert await pb.wait_for(1) == ["small"]
    assert b.stats()["messages_dropped"] == 1


# Failures ----------------------------------------------------------------------------------


async def test_redis_outage_local_delivery_goes_on_and_cross_node_resumes(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    a = RoomManager(private_redis.url, prefix="outage")
    b = RoomManager(private_redis.url, prefix="outage")
    assert a.backplane is not None and b.backplane is not None
    for bp in (a.backplane, b.backplane):
        bp._backoff = (0.05, 0.5)  # keep the test short; the default caps at 5 s
    await a.start()
    await b.start()
    try:
        pa = connect(a, "a1", "r")
        pb = connect(b, "b1", "r")
        await a.sync(WAIT)
        await b.sync(WAIT)
        await a.broadcast_to_room("r", "before")
        assert await pb.wait_for(1) == ["before"]

        with caplog.at_level(logging.INFO, "fastapi_rooms.backplane"):
            private_redis.kill()
            await asyncio.wait_for(a.backplane.down.wait(), WAIT)
            # Redis is down: local members still get everything, nothing raises or hangs.
            async with asyncio.timeout(2.0):
                for i in range(20):
                    assert await a.broadcast_to_room("r", f"down{i}") == 1
                assert await a.send_to("b1", "lost") is False
            assert (await pa.wait_for(21))[-20:] == [f"down{i}" for i in range(20)]
            stats = a.stats()["backend"]
            assert stats["connected"] is False
            assert stats["publish_dropped"] >= 20
            assert stats["last_error"]

            private_redis.start()  # the same port
            await a.sync(WAIT)
            await b.sync(WAIT)
        await a.broadcast_to_room("r", "after")
        got = await pb.wait_for(2)
        assert got == ["before", "after"]  # at-most-once: the outage's messages are gone
        assert a.stats()["backend"]["reconnects"] >= 1
        assert a.stats()["backend"]["connected"] is True
        messages = [r.getMessage() for r in caplog.records]
        assert any("connection lost" in m for m in messages)
        assert any("reconnected after" in m for m in messages)
    finally:
        await a.stop()
        await b.stop()


async def test_publish_fails_fast_when_redis_never_answers(private_redis: RedisServer) -> None:
    private_redis.kill()
    manager = RoomManager(private_redis.url, prefix="dead")
    await manager.start()
    try:
        peer = connect(manager, "p", "r")
        async with asyncio.timeout(2.0):
            assert await manager.broadcast_to_room("r", "local") == 1
            assert await manager.broadcast_to_all("all") == 1
            assert await manager.send_to("elsewhere", "x") is False
        assert await peer.wait_for(2) == ["local", "all"]
        with pytest.raises(TimeoutError):
            await manager.sync(0.2)
        stats = manager.stats()["backend"]
        assert stats["connected"] is False and "Connection" in str(stats["last_error"])
        json.dumps(manager.stats())  # /stats must stay serialisable
    finally:
        async with asyncio.timeout(5.0):
            await manager.stop()


async def test_room_names_cannot_collide_in_redis(nodes: Nodes) -> None:
    """Room "x" and room "x:info" (or any name) keep separate presence keys."""
    a, b = await nodes(), await nodes()
    pa = connect(a, "a1", "x")
    connect(b, "b1", "x:info")
    pb = connect(b, "b2", "x")
    await a.sync(WAIT)
    await b.sync(WAIT)
    await a.broadcast_to_room("x", "hello")
    assert await pb.wait_for(1) == ["hello"]
    assert pa.texts == ["hello"]
    for m in (a, b):
        assert m.stats()["backend"]["connected"] is True
        assert m.stats()["backend"]["reconnects"] == 0
    assert {c["connection_id"] for e in await a.presence("x") for c in e["connections"]} == {
        "a1",
        "b2",
    }
    assert [e["connections"][0]["connection_id"] for e in await a.presence("x:info")] == ["b1"]


async def test_too_many_excluded_ids_fail_before_anyone_receives(nodes: Nodes) -> None:
    a = await nodes()
    peer = connect(a, "a1", "r")
    with pytest.raises(ValueError, match="too many excluded ids"):
        await a.broadcast_to_room("r", "x", exclude=[f"id-{i}" for i in range(20_000)])
    assert peer.texts == []


# The periodic refresh --------------------------------------------------------------------


async def test_the_periodic_refresh_is_spread_out_and_covers_every_entry() -> None:
    """Every heartbeat period each node rewrites its directory and presence entries before they
    expire. Written in one go, a node with many members sent tens of thousands at once and
    every publish queued behind them in Redis (benchmark S9: p99 570 ms against 16 ms without
    the refresh); now they leave in slices over half the period, and none is missed."""
    calls: list[tuple[float, str, int]] = []
    broker = MemoryBroker()
    refreshed = asyncio.Event()  # set once 300 ids and 300 entries were written since clear()

    def record(kind: str, count: int) -> None:
        calls.append((asyncio.get_running_loop().time(), kind, count))
        totals = [sum(n for _, k, n in calls if k == want) for want in ("id", "presence")]
        if min(totals) >= 300:
            refreshed.set()

    class Recording(MemoryBackend):
        async def register(self, connection_ids: Any, node: str, ttl: float) -> None:
            ids = list(connection_ids)
            record("id", len(ids))
            await super().register(ids, node, ttl)

        async def presence_set(self, entries: Any, ttl: float) -> None:
            record("presence", len(entries))
            await super().presence_set(entries, ttl)

    ttl = 3.0  # heartbeat every 1 s, its refresh spread over 0.5 s
    manager = RoomManager(Recording(broker), node_ttl=ttl)
    await manager.start()
    try:
        for i in range(300):
            connect(manager, f"c{i}", f"room{i % 30}")
        await manager.sync(WAIT)
        assert len(broker.directory) == 300
        start = asyncio.get_running_loop().time()
        calls.clear()
        refreshed.clear()
        async with asyncio.timeout(WAIT):  # one whole refresh: 300 ids and 300 entries again
            await refreshed.wait()
        ids = [(t, n) for t, kind, n in calls if kind == "id"]
        assert sum(n for _, n in ids) == 300  # each id once: none missed, none twice
        assert len(ids) >= 4, f"the refresh went out in {len(ids)} slices: {ids}"
        assert max(n for _, n in ids) <= 150
        span = ids[-1][0] - ids[0][0]
        assert span <= ttl / 3, f"the refresh took {span:.2f}s, longer than its period"
        assert ids[0][0] - start <= ttl / 3 + 0.5
        # every entry is still live after several periods, although each was refreshed alone
        await asyncio.sleep(ttl * 1.5)  # longer than the TTL: entries live only if refreshed
        assert len(broker.directory) == 300
        now = time.monotonic()
        assert all(deadline > now for _, deadline in broker.directory.values())
    finally:
        await manager.stop()
