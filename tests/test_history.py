"""Room history and recovery by offset, in one process, over real servers (uvicorn and
granian-rsgi, one body each). Across nodes (Redis) history is refused at start-up for now."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import anyio
import httpx
import pytest
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection

from fastapi_rooms import ConfigurationError, RoomManager
from fastapi_rooms.backends import MemoryBackend
from fastapi_rooms.encoding import Frame
from fastapi_rooms.history import History, Position
from fastapi_rooms.protocol import ServerEvent
from fastapi_rooms.websocket import WebSocket

from .conftest import Server, server_fixture
from .helpers import WAIT, open_ws, recv_text, send_json
from .test_manager import FakePeer, connect, next_pass

pytestmark = pytest.mark.anyio

server = server_fixture("namespace_app", "history")
_server_event: TypeAdapter[Any] = TypeAdapter(ServerEvent)


async def event(ws: ClientConnection) -> dict[str, Any]:
    raw = await recv_text(ws)
    _server_event.validate_json(raw)
    return dict(json.loads(raw))


async def connected(server: Server) -> ClientConnection:
    # max_queue=None: a client closing with messages unread still reads the close frame
    # (with a bounded queue, websockets stops reading and close() waits its whole timeout)
    ws = await open_ws(server, "/ws?user=h", max_queue=None)
    assert (await event(ws))["type"] == "welcome"
    return ws


async def join(ws: ClientConnection, room: str, since: Any = None) -> dict[str, Any]:
    request: dict[str, Any] = {"type": "join", "room": room}
    if since is not None:
        request["since"] = since
    await send_json(ws, request)
    joined = await event(ws)
    assert joined["type"] == "joined", joined
    return joined


async def publish(ws: ClientConnection, room: str, data: Any) -> dict[str, Any]:
    """Publish and return the sender's own copy (it is a member)."""
    await send_json(ws, {"type": "publish", "room": room, "data": data})
    return await event(ws)


def name(kind: str = "history") -> str:
    return f"{kind}:{uuid.uuid4().hex[:8]}"


async def test_offsets_and_recovery_after_a_reconnect(server: Server) -> None:
    room = name()
    async with await connected(server) as alice:
        joined = await join(alice, room)
        assert joined["offset"] == 0 and joined["epoch"] and "recovered" not in joined
        epoch = joined["epoch"]
        offsets = [(await publish(alice, room, n))["offset"] for n in range(3)]
        assert offsets == [1, 2, 3]
    async with await connected(server) as alice_again:  # a new connection, the same client
        rejoined = await join(alice_again, room, {"offset": 1, "epoch": epoch})
        assert rejoined == {
            "type": "joined", "room": room, "offset": 3, "epoch": epoch, "recovered": True
        }
        replayed = [await event(alice_again) for _ in range(2)]
        assert [(m["offset"], m["data"]) for m in replayed] == [(2, 1), (3, 2)]
        live = await publish(alice_again, room, "live")
        assert live["offset"] == 4 and live["data"] == "live"


async def test_what_cannot_be_recovered_says_so_and_replays_nothing(server: Server) -> None:
    room = name()
    async with await connected(server) as alice:
        epoch = (await join(alice, room))["epoch"]
        for n in range(7):  # five are kept: 1 and 2 are gone
            await publish(alice, room, n)
        async with await connected(server) as carol:  # offset 2 is the oldest that recovers
            joined = await join(carol, room, {"offset": 2, "epoch": epoch})
            assert joined["recovered"] is True
            assert [(await event(carol))["offset"] for _ in range(5)] == [3, 4, 5, 6, 7]
        latest = 7
        for since in (
            {"offset": 1, "epoch": epoch},  # trimmed by size
            {"offset": 3, "epoch": "another-epoch"},  # another history
            {"offset": 99, "epoch": epoch},  # ahead of the latest
        ):
            async with await connected(server) as bob:
                joined = await join(bob, room, since)
                assert joined["recovered"] is False and joined["offset"] == latest, joined
                next_message = await publish(bob, room, "next")  # nothing came before it
                assert next_message["data"] == "next"
                latest = next_message["offset"]


async def test_a_malformed_since_is_an_error_and_the_connection_lives(server: Server) -> None:
    room = name()
    async with await connected(server) as ws:
        for since in ({"offset": "5", "epoch": "e"}, {"offset": -1, "epoch": "e"},
                      {"offset": 1}, {"offset": 1, "epoch": 7}, {"offset": 1.5, "epoch": "e"},
                      {"offset": 1, "epoch": "e" * 65}, "5", [1, "e"]):
            await send_json(ws, {"type": "join", "room": room, "since": since})
            error = await event(ws)
            assert error["code"] == "invalid_message" and error["errors"][0]["loc"][:2] == [
                "join",
                "since",
            ], error
        assert (await join(ws, room))["offset"] == 0


async def test_a_member_asking_again_gets_no_replay(server: Server) -> None:
    """A connection already in the room receives every message: a second join with ``since``
    replays nothing (it could otherwise queue the history again and again)."""
    room = name()
    async with await connected(server) as ws:
        epoch = (await join(ws, room))["epoch"]
        for n in range(3):
            await publish(ws, room, n)
        for _ in range(3):
            again = await join(ws, room, {"offset": 0, "epoch": epoch})
            assert again["recovered"] is False and again["offset"] == 3
        assert (await publish(ws, room, "next"))["offset"] == 4  # nothing queued before it


async def test_a_room_without_history_answers_a_since_with_not_recovered(server: Server) -> None:
    async with await connected(server) as ws:
        joined = await join(ws, f"plain-{uuid.uuid4().hex[:6]}", {"offset": 3, "epoch": "e"})
        assert joined["recovered"] is False and "offset" not in joined
        message = await publish(ws, joined["room"], "x")
        assert "offset" not in message


async def test_a_publisher_racing_the_rejoin_leaves_no_gap_and_no_duplicate(
    server: Server,
) -> None:
    room = name("race")
    total = 300
    async with await connected(server) as publisher, await connected(server) as rejoiner:
        epoch = (await join(publisher, room))["epoch"]

        async def flood() -> None:
            for n in range(total):
                await send_json(publisher, {"type": "publish", "room": room, "data": n})

        flooding = asyncio.create_task(flood())
        try:
            while (await event(publisher))["offset"] < 50:  # the race is on
                pass
            joined = await join(rejoiner, room, {"offset": 10, "epoch": epoch})
            assert joined["recovered"] is True
            seen = []
            async with asyncio.timeout(WAIT):
                while not seen or seen[-1] < total:
                    seen.append((await event(rejoiner))["offset"])
        finally:
            await flooding
        assert seen == list(range(11, total + 1)), "a gap or a duplicate"


async def test_history_over_rest(server: Server) -> None:
    room = name()
    async with await connected(server) as ws:
        await join(ws, room)
        for n in range(3):
            await publish(ws, room, {"n": n})
    async with httpx.AsyncClient(base_url=server.http, timeout=WAIT) as http:
        page = (await http.get(f"/rooms/{room}/history", params={"since": 1})).json()
        assert page["offset"] == 3 and page["complete"] is True
        assert [m["data"] for m in page["messages"]] == [{"n": 1}, {"n": 2}]
        assert (await http.get(f"/rooms/{room}/history", params={"limit": 1})).json()[
            "messages"
        ][0]["offset"] == 1
        epoch = page["epoch"]
        same = await http.get(f"/rooms/{room}/history", params={"since": 1, "epoch": epoch})
        assert same.json()["complete"] is True
        other = await http.get(f"/rooms/{room}/history", params={"since": 1, "epoch": "old"})
        assert other.json()["complete"] is False and other.json()["messages"] == []
        missing = await http.get("/rooms/lobby/history")
        assert missing.status_code == 404 and "keeps no history" in missing.json()["detail"]
        assert (await http.get(f"/rooms/{room}/history", params={"since": -1})).status_code == 422


# In-process ------------------------------------------------------------------------------------


def test_epochs_trimming_and_ttl_with_a_fake_clock() -> None:
    now = [0.0]
    history = History(clock=lambda: now[0])
    for n in range(4):
        history.append("r", 3, 10.0, lambda offset, n=n: f"m{offset}:{n}")
    epoch = history.position("r", 10.0).epoch
    page = history.since("r", 1, epoch, 10.0)
    assert page.complete and page.frames == ["m2:1", "m3:2", "m4:3"]
    assert not history.since("r", 0, epoch, 10.0).complete  # offset 1 was trimmed
    now[0] = 5.0
    history.append("r", 3, 10.0, lambda offset: f"m{offset}")
    now[0] = 12.0  # the first four are older than the TTL; m5 is not
    assert history.since("r", 4, epoch, 10.0).frames == ["m5"]
    assert not history.since("r", 3, epoch, 10.0).complete
    now[0] = 30.0  # emptied, nothing published for longer than the TTL: the history is gone
    position = history.position("r", 10.0)
    assert position.offset == 0 and position.epoch != epoch
    # a room with members keeps its offsets and epoch through a quiet spell (no silent reset)
    busy = History(clock=lambda: now[0], in_use=lambda room: True)
    busy.append("r", 3, 10.0, lambda offset: f"m{offset}")
    kept = busy.position("r", 10.0)
    now[0] = 100.0
    assert busy.position("r", 10.0) == kept
    assert busy.append("r", 3, 10.0, lambda offset: f"m{offset}") == 2
    assert not busy.since("r", 0, kept.epoch, 10.0).complete  # m1 aged out: said so


def test_each_room_is_swept_by_its_own_ttl() -> None:
    now = [0.0]
    history = History(clock=lambda: now[0])
    history.append("short", 5, 1.0, lambda offset: "s")
    history.append("forever", 5, None, lambda offset: "f")
    epoch = history.position("forever", None).epoch
    now[0] = 50.0
    for _ in range(1024):  # the sweep runs every 1024 appends
        history.append("other", 5, 1.0, lambda offset: "o")
    assert history.position("forever", None) == Position(1, epoch)
    assert history.position("short", 1.0).offset == 0  # swept: a new history


async def test_history_in_a_backend_needs_a_ttl_and_a_backend_that_keeps_it() -> None:
    manager = RoomManager("redis://127.0.0.1:1/0", history_size=10)
    with pytest.raises(ConfigurationError, match=r"rooms '\*' keep history.*history_ttl"):
        await manager.start()
    other = RoomManager("redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match=r"'chat:\{name\}'.*set history_ttl"):
        other.namespace("chat:{name}", history_size=5)
    other.namespace("chat:{name}", history_size=5, history_ttl=60)  # with a TTL: fine

    class PubSubOnly(MemoryBackend):  # a third-party backend that keeps no history
        write_many = history_read = history_touch = None  # type: ignore[assignment]

    third = RoomManager(PubSubOnly())
    with pytest.raises(ConfigurationError, match="PubSubOnly cannot keep it"):
        third.namespace("news:{name}", history_size=5, history_ttl=60)


async def test_a_replay_longer_than_the_buffer_is_not_overflow() -> None:
    manager = RoomManager(max_buffer=4)
    ws, peer = connect(manager, "c1")
    peer.writable.clear()  # the socket takes nothing for now
    frames = [Frame(f"replayed {n}").asgi for n in range(50)]
    assert all(ws.outbound.offer(frame, force=True) for frame in frames)
    live = [Frame(f"live {n}").asgi for n in range(3)]  # the buffer's whole limit after it
    assert all(ws.outbound.offer(frame) for frame in live)
    assert not ws.closed
    peer.writable.set()
    with anyio.fail_after(WAIT):
        while len(peer.texts()) < 53:
            await peer.got.wait()
            peer.got.clear()
    assert peer.texts() == [f"replayed {n}" for n in range(50)] + [f"live {n}" for n in range(3)]
    peer.writable.clear()  # without force the same burst is a slow consumer
    for frame in frames:
        ws.outbound.offer(frame)
    assert ws.closed and ws.close_code == 1013


async def test_a_custom_handler_recovers_through_the_connection_context() -> None:
    manager = RoomManager(history_size=10)
    manager.namespace("plain:{x}", history_size=0)
    for n in range(4):  # nobody listens yet: kept all the same
        await manager.publish("r", n)
    position = manager.catch_up("r")
    assert position is not None
    epoch = position[0].epoch
    peer = FakePeer()
    ws = WebSocket({"type": "websocket", "path": "/t"}, peer.receive, peer.send, accepted=True)
    async with manager.connect(ws) as conn:
        caught = await conn.join("r", since=(2, epoch))
        assert caught is not None and caught[1] is True and caught[0].offset == 4
        await manager.publish("r", "live")
        await next_pass()
        assert [json.loads(t)["offset"] for t in peer.texts()] == [3, 4, 5]
        assert await conn.join("plain:room") is None  # a namespace without history
