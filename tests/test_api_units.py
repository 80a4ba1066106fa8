"""Unit tests of the API review (issue 11): fan-out order, the encoder, join policy, start-up,
awaitable joins across nodes, the public surface. Real-server versions: test_api_regressions."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import enum
import json
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

import fastapi_rooms
from fastapi_rooms import (
    CloseCode,
    ConfigurationError,
    ConnectionClosed,
    JoinRefused,
    MessageTooBig,
    RateLimiter,
    RoomManager,
    RoomsError,
    WebSocket,
    create_rooms_router,
)
from fastapi_rooms.backends import MemoryBackend, MemoryBroker
from fastapi_rooms.encoding import json_dumps

from .test_manager import FakePeer, connect, next_pass

pytestmark = pytest.mark.anyio


async def test_a_member_dying_mid_broadcast_does_not_reorder_what_others_see() -> None:
    """Its presence 'leave' comes after the message being broadcast, for every member."""
    m = RoomManager(presence_events=True)
    peers: dict[str, FakePeer] = {}
    for cid in ("a", "dead", "c"):
        _, peers[cid] = connect(m, cid)
    for cid in ("a", "dead", "c"):
        m.join_room(cid, "r")
    await next_pass()
    for peer in peers.values():
        peer.sent.clear()
    peers["dead"].fail = OSError("peer gone")  # found dead while the message fans out
    await m.broadcast_to_room("r", "the message")
    await next_pass()
    for cid in ("a", "c"):
        kinds = [
            "message" if text == "the message" else json.loads(text)["event"]
            for text in peers[cid].texts()
        ]
        assert kinds == ["message", "leave"], (cid, kinds)
    assert m.get_room_connections("r") == {"a", "c"}


class Colour(enum.Enum):
    RED = "red"


class Item(BaseModel):
    name: str
    at: datetime.datetime


def test_one_encoder_takes_what_fastapi_users_send() -> None:
    at = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.timezone.utc)
    uid = uuid.UUID(int=1)
    value = {
        "item": Item(name="x", at=at),
        "uid": uid,
        "price": decimal.Decimal("1.50"),
        "colour": Colour.RED,
        "text": "héllo",
    }
    assert json.loads(json_dumps(value)) == {
        "item": {"name": "x", "at": "2026-12-03T12:00:00Z"},
        "uid": str(uid),
        "price": "1.50",
        "colour": "red",
        "text": "héllo",
    }
    for bad in (float("nan"), float("inf"), {"x": [float("-inf")]}):
        with pytest.raises(ValueError, match="not valid JSON"):
            json_dumps(bad)
    with pytest.raises(ValueError, match="lone surrogate"):
        json_dumps({"x": "\ud800"})


async def test_broadcasts_and_send_json_use_the_one_encoder() -> None:
    m = RoomManager()
    ws, peer = connect(m, "a")
    m.join_room("a", "r")
    await m.broadcast_to_room("r", Item(name="b", at=datetime.datetime(2026, 1, 1)))
    await ws.send_json({"d": decimal.Decimal("2")})
    await next_pass()
    assert [json.loads(t) for t in peer.texts()] == [
        {"name": "b", "at": "2026-01-01T00:00:00"},
        {"d": "2"},
    ]
    with pytest.raises(ValueError, match="not valid JSON"):
        await m.broadcast_to_room("r", {"x": float("nan")})
    assert m.stats()["messages_delivered"] == 1


async def test_anonymous_connections_cannot_join_under_a_join_policy() -> None:
    m = RoomManager(authorize_join=lambda user, room: True)
    connect(m, "anon")
    with pytest.raises(JoinRefused) as refused:
        m.join_room("anon", "r")
    assert refused.value.code == "forbidden" and "signed-in user" in refused.value.reason
    ws, _ = connect(m, "x")
    m.remove_connection("x")
    m.add_connection("x", ws, user_id="u1")
    m.join_room("x", "r")
    assert m.get_room_connections("r") == {"x"}


async def test_room_names_may_be_ints_or_uuids_and_are_one_room_with_their_text() -> None:
    m = RoomManager()
    connect(m, "a")
    m.join_room("a", 42)  # type: ignore[arg-type]
    uid = uuid.UUID(int=7)
    m.join_room("a", uid)  # type: ignore[arg-type]
    assert set(m.rooms) == {"42", str(uid)}
    assert await m.broadcast_to_room("42", "x") == 1
    with pytest.raises(TypeError, match="room name should be a str"):
        m.join_room("a", 4.2)  # type: ignore[arg-type]


async def test_start_waits_for_the_backend_then_a_broadcast_reaches_other_nodes() -> None:
    broker = MemoryBroker()
    a = RoomManager(MemoryBackend(broker), node_id="a")
    b = RoomManager(MemoryBackend(broker), node_id="b")
    _, peer = connect(b, "bob")
    b.join_room("bob", "r")
    await b.start()
    await a.start()
    try:
        assert a.backplane is not None and a.backplane.connected  # no waiting by the caller
        await a.broadcast_to_room("r", "first")
        assert a.backplane.publish_dropped == 0
        await asyncio.wait_for(_until(peer, lambda: peer.texts() == ["first"]), 5)
    finally:
        await a.stop()
        await b.stop()


async def test_an_awaited_join_hears_the_next_message_from_another_node(redis_url: str) -> None:
    prefix = f"frtest-{uuid.uuid4().hex[:8]}"
    a = RoomManager(redis_url, prefix=prefix, node_id="a")
    b = RoomManager(redis_url, prefix=prefix, node_id="b")
    await a.start()
    await b.start()
    try:
        ws, peer = connect(b, "bob")
        async with b.connect(ws, connection_id="bob2") as conn:
            await conn.join("r")  # returns once node b hears room r
            await a.broadcast_to_room("r", "right after the join")
            await asyncio.wait_for(_until(peer, lambda: peer.texts() == ["right after the join"]), 5)
        assert b.connections == {"bob": ws}  # the context removed only its own registration
    finally:
        await a.stop()
        await b.stop()


async def _until(peer: FakePeer, check: Any) -> None:
    while not check():
        peer.got.clear()
        await peer.got.wait()


def test_rate_limiter_is_public_and_checks_its_input() -> None:
    limiter = RateLimiter(rate=1, burst=2)
    assert [limiter.allow() for _ in range(3)] == [True, True, False]
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(rate=0)
    assert fastapi_rooms.Limits(rate=5).rate_limiter() is not None
    assert fastapi_rooms.Limits().rate_limiter() is None


def test_errors_share_one_base_and_keep_their_old_bases() -> None:
    for error in (ConnectionClosed, MessageTooBig, JoinRefused, ConfigurationError):
        assert issubclass(error, RoomsError)
    assert issubclass(ConnectionClosed, ConnectionError) and issubclass(ConnectionClosed, RuntimeError)
    assert issubclass(MessageTooBig, ValueError) and issubclass(JoinRefused, PermissionError)
    assert CloseCode.TRY_AGAIN_LATER == 1013 and ConnectionClosed(CloseCode.GOING_AWAY).code == 1001


def test_all_is_honest() -> None:
    """Every name in __all__ exists, and every public class or function is in __all__."""
    exported = set(fastapi_rooms.__all__)
    assert all(hasattr(fastapi_rooms, name) for name in exported)
    public = {
        name
        for name, value in vars(fastapi_rooms).items()
        if not name.startswith("_") and (isinstance(value, type) or callable(value))
    }
    assert public == exported


def test_two_handlers_on_one_path_fail_naming_both() -> None:
    rooms = create_rooms_router()

    @rooms.websocket("/chat/{room}")
    async def first(websocket: WebSocket, room: str) -> None: ...

    with pytest.raises(ConfigurationError, match=r"first\(\) and .*second\(\)"):

        @rooms.websocket("/chat/<room>")
        async def second(websocket: WebSocket, room: str) -> None: ...


async def test_a_leave_event_names_the_user_that_left() -> None:
    m = RoomManager(presence_events=True)
    _, watcher = connect(m, "w")
    ws, _ = connect(m, "x")
    m.remove_connection("x")
    m.add_connection("x", ws, user_id="u1")
    m.join_room("w", "r")
    m.join_room("x", "r")
    m.remove_connection("x")
    await next_pass()
    events = [json.loads(t) for t in watcher.texts()]
    assert [(e["event"], e["user_id"]) for e in events] == [("join", "u1"), ("leave", "u1")]


async def test_close_behind_a_write_that_fails_returns_at_once() -> None:
    """A close() queued behind an in-flight write must not wait out its timeout when that
    write fails: the close and every other waiting sender fail at once."""
    m = RoomManager()
    ws, peer = connect(m, "a", close_timeout=30)
    peer.writable.clear()
    m.join_room("a", "r")
    await m.broadcast_to_room("r", "stuck")  # in flight: the socket is paused
    other = asyncio.ensure_future(ws.send_text("behind"))
    closing = asyncio.ensure_future(ws.close())
    await next_pass()
    peer.fail = OSError("peer gone")
    peer.writable.set()
    await asyncio.wait_for(closing, 2)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(other, 2)
    assert ws.closed and m.connections == {}


async def test_connect_does_not_remove_a_reconnect_that_reused_the_id() -> None:
    m = RoomManager()
    old, _ = connect(m, "tmp-old")
    m.remove_connection("tmp-old")
    async with m.connect(old, connection_id="alice") as conn:
        await conn.join("lobby")
        m.remove_connection("alice")  # the old socket went away; a new one takes the id
        new, _ = connect(m, "alice")
        m.join_room("alice", "lobby")
    assert m.connections == {"alice": new} and m.get_room_connections("lobby") == {"alice"}


async def test_a_cascade_of_slow_consumer_closes_leaves_nobody_registered() -> None:
    """Hundreds of members overflowing one after another while leave events fan out:
    handled in one loop (no recursion), every closed socket leaves the room."""
    n = 400
    limit = n + 5
    m = RoomManager(max_buffer=limit, presence_events=True)
    peers = []
    for k in range(n):
        ws, peer = connect(m, f"c{k}", max_buffer=limit)
        peer.writable.clear()  # a client that stopped reading
        m.join_room(f"c{k}", "r")
        peers.append(ws)
    for k, ws in enumerate(peers):  # member k has limit - k frames queued
        while ws.buffered < limit - k and not ws.closed:
            ws.outbound.offer({"type": "websocket.send", "text": "x"})
    await m.broadcast_to_room("r", "boom")
    assert all(ws.closed for ws in peers)
    assert m.connections == {} and "r" not in m.rooms
