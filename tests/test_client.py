"""fastapi_rooms.client against real servers (uvicorn and granian-rsgi, one body each): rooms,
callbacks, presence, a dropped connection recovered by offset, a gap it cannot cover."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from fastapi_rooms.client import JoinError, RoomsClient

from .conftest import Server, server_fixture
from .helpers import WAIT

pytestmark = pytest.mark.anyio

server = server_fixture("namespace_app", "client")


class GatedClient(RoomsClient):
    """Reconnects only when the test opens the gate: what happens while it is away is known."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = asyncio.Event()
        self.away = asyncio.Event()

    async def _backoff(self, attempt: int) -> None:
        self.away.set()
        await self.gate.wait()
        self.gate.clear()


class Inbox:
    """Messages by arrival, and a wait for the n-th."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.changed = asyncio.Event()

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        self.changed.set()

    async def until(self, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.events


def url(server: Server, user: str) -> str:
    return f"{server.ws}/ws?user={user}"


async def test_join_publish_receive_and_presence(server: Server) -> None:
    room = f"chat:{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    async with RoomsClient(url(server, "alice")) as alice, RoomsClient(url(server, "bob")) as bob:
        await alice.join(room, inbox)
        joined = await bob.join(room, meta={"color": "blue"})
        assert joined["room"] == room
        await bob.publish(room, {"text": "hi"})
        events = await inbox.until(1)
        assert events[0]["data"] == {"text": "hi", "reply_to": None}
        assert events[0]["from"] == bob.connection_id
        assert alice.presence(room) == {
            bob.connection_id: {"user_id": "bob", "meta": {"color": "blue"}}
        }
        duo = f"duo:{uuid.uuid4().hex[:8]}"  # two members at most
        await alice.join(duo)
        await bob.join(duo)
        async with RoomsClient(url(server, "carol")) as carol:
            with pytest.raises(JoinError) as refused:
                await carol.join(duo)
            assert refused.value.code == "room_full" and carol.position(duo) is None
            await carol.join(room)  # the connection is still good


async def test_a_dropped_connection_recovers_every_message_once_in_order(server: Server) -> None:
    room = f"race:{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    reloads: list[str] = []
    async with GatedClient(url(server, "alice"), on_reload=reloads.append) as alice, RoomsClient(
        url(server, "bob")
    ) as bob:
        await alice.join(room, inbox)
        await bob.join(room)
        for n in range(5):
            await bob.publish(room, n)
        await inbox.until(5)
        assert alice._ws is not None
        await alice._ws.close()  # the connection drops; alice stays away until the gate opens
        async with asyncio.timeout(WAIT):
            await alice.away.wait()
        for n in range(5, 25):  # published while alice is away
            await bob.publish(room, n)
        await bob.join(room)  # a round trip: the server has handled bob's publishes
        alice.gate.set()
        events = await inbox.until(25)
        for n in range(25, 30):  # and live again
            await bob.publish(room, n)
        events = await inbox.until(30)
    assert [e["data"] for e in events] == list(range(30))
    assert [e["offset"] for e in events] == list(range(1, 31))
    assert alice.connects == 2 and reloads == []


async def test_a_gap_the_history_cannot_cover_asks_the_app_to_reload(server: Server) -> None:
    room = f"history:{uuid.uuid4().hex[:8]}"  # five messages kept
    inbox = Inbox()
    reloads: list[str] = []
    reloaded = asyncio.Event()

    def reload(room: str) -> None:
        reloads.append(room)
        reloaded.set()

    async with GatedClient(url(server, "alice"), on_reload=reload) as alice, RoomsClient(
        url(server, "bob")
    ) as bob:
        await alice.join(room, inbox)
        await bob.join(room)
        await bob.publish(room, "before")
        await inbox.until(1)
        assert alice._ws is not None
        await alice._ws.close()
        async with asyncio.timeout(WAIT):
            await alice.away.wait()
        for n in range(8):
            await bob.publish(room, n)
        await bob.join(room)
        alice.gate.set()
        async with asyncio.timeout(WAIT):
            await reloaded.wait()
        assert reloads == [room]
        assert alice.position(room) is not None and alice.position(room)[0] == 9  # type: ignore[index]
        await bob.publish(room, "after")
        events = await inbox.until(2)
    assert [e["data"] for e in events] == ["before", "after"]  # nothing replayed in between


async def test_publishing_while_disconnected_queues_or_refuses(server: Server) -> None:
    room = f"race:{uuid.uuid4().hex[:8]}"
    inbox = Inbox()
    async with GatedClient(url(server, "alice"), offline_queue=2) as alice, RoomsClient(
        url(server, "bob")
    ) as bob:
        await alice.join(room)
        await bob.join(room, inbox)
        assert alice._ws is not None
        await alice._ws.close()
        async with asyncio.timeout(WAIT):
            await alice.away.wait()
        await alice.publish(room, "queued 1")
        await alice.publish(room, "queued 2")
        with pytest.raises(ConnectionError, match="offline queue is full"):
            await alice.publish(room, "one too many")
        alice.gate.set()
        events = await inbox.until(2)
    assert [e["data"] for e in events] == ["queued 1", "queued 2"]
