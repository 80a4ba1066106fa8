"""RoomManager and the outbound buffer in-process, over a fake ASGI connection we control."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fastapi_rooms import ConnectionClosed, RoomManager, WebSocket

pytestmark = pytest.mark.anyio


class FakePeer:
    """An ASGI send whose socket can be 'paused' (sends block) like uvicorn's writable event."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.writable = asyncio.Event()
        self.writable.set()
        self.fail: Exception | None = None
        self.got = asyncio.Event()  # set on every frame sent

    async def send(self, event: dict[str, Any]) -> None:
        await self.writable.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append(event)
        self.got.set()

    async def receive(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def texts(self) -> list[str]:
        return [e["text"] for e in self.sent if e["type"] == "websocket.send" and "text" in e]


async def next_pass() -> None:
    """Let the loop finish its pass: frames corked by back-to-back broadcasts go out then."""
    await asyncio.sleep(0)


def connect(manager: RoomManager, cid: str, **options: Any) -> tuple[WebSocket, FakePeer]:
    peer = FakePeer()
    settings = {"max_buffer": manager.max_buffer, "overflow": manager.overflow,
                "max_message_bytes": manager.max_message_bytes, **options}
    ws = WebSocket({"type": "websocket", "path": "/t"}, peer.receive, peer.send, accepted=True,
                   **settings)
    manager.add_connection(cid, ws)
    return ws, peer


async def test_membership_views_and_copies() -> None:
    m = RoomManager()
    connect(m, "a")
    connect(m, "b")
    m.join_room("a", "r")
    m.join_room("b", "r")
    m.join_room("a", "s")
    assert set(m.rooms["r"]) == {"a", "b"}
    assert len(m.rooms) == 2
    assert m.get_connection_rooms("a") == {"r", "s"}
    copy = m.get_room_connections("r")
    copy.clear()
    assert m.get_room_connections("r") == {"a", "b"}
    with pytest.raises(TypeError):
        m.connections["x"] = m.connections["a"]  # type: ignore[index]
    m.leave_room("a", "s")
    assert "s" not in m.rooms  # empty rooms disappear
    m.remove_connection("a")
    m.remove_connection("a")  # idempotent
    assert m.get_room_connections("r") == {"b"}
    assert m.get_connection_rooms("a") == set()
    with pytest.raises(KeyError, match="call add_connection"):
        m.join_room("a", "r")


async def test_duplicate_id_is_refused() -> None:
    m = RoomManager()
    ws, _ = connect(m, "a")
    m.add_connection("a", ws)  # same socket: no-op
    with pytest.raises(ValueError, match="already registered"):
        connect(m, "a")


async def test_encode_once_and_types() -> None:
    m = RoomManager()
    peers = [connect(m, str(i))[1] for i in range(3)]
    for i in range(3):
        m.join_room(str(i), "r")
    assert await m.broadcast_to_room("r", {"k": "ü"}) == 3
    assert await m.broadcast_to_room("r", b"\x00\x01", exclude="1") == 2
    assert await m.broadcast_to_room("r", "plain", exclude=["0", "2"]) == 1
    assert len(peers[0].sent) == 1  # the first frame of a pass goes out at once, later ones...
    await next_pass()  # ...at the end of the pass
    assert [p.sent[0] is peers[0].sent[0] for p in peers] == [True, True, True]  # one event
    assert peers[0].sent[0]["text"] == '{"k":"ü"}'
    assert peers[0].sent[1] == {"type": "websocket.send", "bytes": b"\x00\x01"}
    assert peers[1].texts() == ['{"k":"ü"}', "plain"]
    assert await m.broadcast_to_room("nobody", "x") == 0
    assert await m.send_to("missing", "x") is False


async def test_slow_member_never_blocks_the_room_and_order_is_kept() -> None:
    m = RoomManager(max_buffer=5)
    _, fast = connect(m, "fast")
    slow_ws, slow = connect(m, "slow")
    m.join_room("fast", "r")
    m.join_room("slow", "r")
    slow.writable.clear()  # the slow client's socket is backed up
    for i in range(4):
        assert await m.broadcast_to_room("r", f"m{i}") == 2
    await next_pass()
    assert fast.texts() == ["m0", "m1", "m2", "m3"]
    assert slow.texts() == []
    assert slow_ws.buffered == 3  # m0 in flight in the writer, m1..m3 queued
    # The handler's own send waits behind the queued broadcasts, then goes out in order.
    handler_send = asyncio.ensure_future(slow_ws.send_text("own"))
    await asyncio.sleep(0)
    assert not handler_send.done()
    slow.writable.set()
    await asyncio.wait_for(handler_send, 1)
    assert slow.texts() == ["m0", "m1", "m2", "m3", "own"]


async def test_overflow_close_policy_cuts_off_only_the_slow_member() -> None:
    m = RoomManager(max_buffer=3)
    _, fast = connect(m, "fast")
    slow_ws, slow = connect(m, "slow")
    m.join_room("fast", "r")
    m.join_room("slow", "r")
    slow.writable.clear()
    counts = [await m.broadcast_to_room("r", f"m{i}") for i in range(10)]
    assert counts[:4] == [2, 2, 2, 2]  # m0 in flight + 3 queued
    assert counts[4:] == [1] * 6
    await next_pass()
    assert fast.texts() == [f"m{i}" for i in range(10)]  # corked past the limit: written, kept
    assert slow_ws.closed and slow_ws.close_code == 1013
    assert m.get_room_connections("r") == {"fast"}
    assert "slow" not in m.connections
    stats = m.stats()
    assert stats["slow_consumer_closes"] == 1
    assert stats["messages_dropped"] == 1  # the frame that overflowed; then it was gone
    assert stats["messages_discarded_at_close"] == 3  # queued behind the blocked send
    slow.writable.set()  # the client reads again: it gets the close frame
    await asyncio.sleep(0.01)
    assert slow.sent[-1] == {
        "type": "websocket.close", "code": 1013, "reason": "slow consumer: outbound buffer full"
    }
    with pytest.raises(ConnectionClosed) as info:
        await slow_ws.send_text("late")
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, RuntimeError)


async def test_overflow_drop_policy_keeps_the_member() -> None:
    m = RoomManager(max_buffer=2, overflow="drop")
    slow_ws, slow = connect(m, "slow")
    m.join_room("slow", "r")
    slow.writable.clear()
    counts = [await m.broadcast_to_room("r", f"m{i}") for i in range(5)]
    assert counts == [1, 1, 1, 0, 0]
    slow.writable.set()
    await asyncio.sleep(0.01)
    assert slow.texts() == ["m0", "m1", "m2"]
    assert not slow_ws.closed and slow_ws.dropped == 2


async def test_failed_send_removes_member_everywhere_without_raising() -> None:
    m = RoomManager()
    _, ok = connect(m, "ok")
    bad_ws, bad = connect(m, "bad")
    for room in ("r", "s"):
        m.join_room("ok", room)
        m.join_room("bad", room)
    bad.fail = OSError("peer gone")
    assert await m.broadcast_to_room("r", "x") == 1
    assert bad_ws.closed and "bad" not in m.connections
    assert m.get_room_connections("s") == {"ok"}
    assert await m.broadcast_to_all("y") == 1
    await next_pass()
    assert ok.texts() == ["x", "y"]


async def test_outbound_too_big_is_refused_before_sending() -> None:
    m = RoomManager(max_message_bytes=10)
    _, peer = connect(m, "a")
    m.join_room("a", "r")
    with pytest.raises(ValueError, match="exceeds the limit of 10 bytes"):
        await m.broadcast_to_room("r", "x" * 11)
    with pytest.raises(ValueError, match="exceeds the limit"):
        await m.connections["a"].send_text("é" * 6)  # 12 bytes in UTF-8
    assert peer.sent == []


async def test_invalid_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="max_buffer"):
        RoomManager(max_buffer=0)
    with pytest.raises(ValueError, match="overflow"):
        RoomManager(overflow="block")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported backend URL"):
        RoomManager("amqp://127.0.0.1/")
    with pytest.raises(TypeError, match="backend should be None, a URL or a Backend"):
        RoomManager(42)  # type: ignore[arg-type]


async def test_join_checks_meta_and_policy_before_changing_anything() -> None:
    async def async_policy(user_id: str, room: str) -> bool:
        return False

    m = RoomManager(presence_events=True, max_message_bytes=300, authorize_join=async_policy)  # type: ignore[arg-type]
    ws, _ = connect(m, "a")
    m.remove_connection("a")
    m.add_connection("a", ws, user_id="alice")
    with pytest.raises(TypeError, match="async policies are not supported"):
        m.join_room("a", "r")
    assert m.get_connection_rooms("a") == set() and not m.rooms
    m.authorize_join = None
    with pytest.raises(ValueError, match="limit"):
        m.join_room("a", "r", meta={"blob": "x" * 280})  # the presence event would not fit
    assert m.get_connection_rooms("a") == set() and not m.rooms
    m.join_room("a", "r", meta={"ok": 1})
    assert await m.presence("r") == [
        {"user_id": "alice", "connections": [{"connection_id": "a", "meta": {"ok": 1},
                                              "node": m.node_id}]}
    ]  # fmt: skip
    m.remove_connection("a")
    assert not m.rooms and m.user_of("a") is None


async def test_close_before_accept_records_the_code_and_runs_listeners() -> None:
    peer = FakePeer()
    ws = WebSocket({"type": "websocket", "path": "/t"}, peer.receive, peer.send)
    seen: list[int | None] = []
    ws._on_closed("k", lambda w: seen.append(w.close_code))
    await ws.close(1008, "no")
    assert (ws.close_code, seen) == (1008, [1008])
    assert peer.sent == [{"type": "websocket.close", "code": 1008, "reason": "no"}]


async def test_a_burst_is_corked_per_connection_and_keeps_order_with_own_sends() -> None:
    m = RoomManager()
    ws_a, a = connect(m, "a")
    _, b = connect(m, "b")
    for cid in ("a", "b"):
        m.join_room(cid, "r")
    await m.broadcast_to_room("r", "m0")
    assert a.texts() == ["m0"] and b.texts() == ["m0"]  # first frame of the pass: at once
    await m.broadcast_to_room("r", "m1")
    own = asyncio.ensure_future(ws_a.send_text("own"))  # waits behind the corked m1
    await m.broadcast_to_room("r", "m2", exclude="b")
    assert a.texts() == ["m0"] and b.texts() == ["m0"]
    await asyncio.wait_for(own, 1)
    assert a.texts() == ["m0", "m1", "m2", "own"] or a.texts() == ["m0", "m1", "own", "m2"]
    assert a.texts().index("own") > a.texts().index("m1")
    assert b.texts() == ["m0", "m1"]
    await m.broadcast_to_room("r", "next pass")  # a new pass: at once again
    assert b.texts()[-1] == "next pass"


async def test_a_corked_queue_at_the_limit_is_written_not_dropped() -> None:
    m = RoomManager(max_buffer=2)
    ws, peer = connect(m, "a")
    m.join_room("a", "r")
    for i in range(10):
        assert await m.broadcast_to_room("r", f"m{i}") == 1
    assert len(peer.sent) >= 7  # written at once each time two were corked
    await next_pass()
    assert peer.texts() == [f"m{i}" for i in range(10)]
    assert not ws.closed and ws.dropped == 0 and m.stats()["messages_dropped"] == 0


async def test_a_socket_that_backs_up_while_corked_frames_go_out_keeps_order() -> None:
    m = RoomManager(max_buffer=4)
    ws, peer = connect(m, "a")
    m.join_room("a", "r")
    for i in range(4):
        await m.broadcast_to_room("r", f"m{i}")
    peer.writable.clear()  # m1 suspends at the end of the pass: a writer takes over
    await next_pass()
    assert peer.texts() == ["m0"] and ws.buffered == 2  # m1 in the writer, m2 and m3 queued
    for i in range(4, 6):
        await m.broadcast_to_room("r", f"m{i}")
    assert ws.buffered == 4  # the limit: the policy applies from here, as without corking
    peer.writable.set()
    await asyncio.wait_for(ws.outbound._inflight or next_pass(), 1)  # the write drains
    assert peer.texts() == [f"m{i}" for i in range(6)] and ws.buffered == 0
    assert not ws.closed


async def test_a_failure_while_writing_corked_frames_fails_only_that_connection() -> None:
    m = RoomManager()
    bad_ws, bad = connect(m, "bad")
    _, ok = connect(m, "ok")
    for cid in ("bad", "ok"):
        m.join_room(cid, "r")
    await m.broadcast_to_room("r", "m0")
    await m.broadcast_to_room("r", "m1")
    own = asyncio.ensure_future(bad_ws.send_text("own"))
    bad.fail = OSError("peer gone")
    await next_pass()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(own, 1)
    assert bad_ws.closed and "bad" not in m.connections
    assert ok.texts() == ["m0", "m1"]


async def test_close_after_corked_frames_sends_them_first() -> None:
    m = RoomManager()
    ws, peer = connect(m, "a")
    m.join_room("a", "r")
    await m.broadcast_to_room("r", "m0")
    await m.broadcast_to_room("r", "m1")
    await asyncio.wait_for(ws.close(1000), 1)
    assert peer.texts() == ["m0", "m1"]
    assert peer.sent[-1]["type"] == "websocket.close"


async def test_a_long_burst_is_written_in_batches_as_it_runs() -> None:
    m = RoomManager()
    ws, peer = connect(m, "a")
    m.join_room("a", "r")
    for i in range(600):
        await m.broadcast_to_room("r", f"m{i}")
    # m0 at once, then full corks of 256 frames while the burst runs; the rest at the pass end
    assert len(peer.sent) == 1 + 256 * 2
    await next_pass()
    assert peer.texts() == [f"m{i}" for i in range(600)]
    big = "x" * 40_000  # two of these fill a cork's 64 KiB
    for _ in range(4):
        await m.broadcast_to_room("r", big)
    await m.broadcast_to_room("r", "after")
    assert len(peer.sent) == 600 + 1 + 2  # the first at once (new pass), then a full cork
    await next_pass()
    assert peer.texts()[600:] == [big] * 4 + ["after"]
    assert not ws.closed and ws.dropped == 0


async def test_a_socket_under_two_ids_is_served_until_both_are_removed() -> None:
    m = RoomManager()
    ws, _ = connect(m, "a")
    m.add_connection("b", ws)
    m.remove_connection("a")
    assert ws in m._sockets and m.connections["b"] is ws
    m.remove_connection("b")
    assert ws not in m._sockets and len(m.connections) == 0
