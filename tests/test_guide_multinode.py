"""The guide's broadcast patterns across processes: the guide app on uvicorn and on granian-rsgi,
sharing rooms through Redis (``ROOMS_BACKEND``), each client on one of them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server, app_for, guide_env, running_nodes
from tests.helpers import (
    ADMIN,
    http,
    join_chat,
    open_ws,
    recv_event,
    recv_json,
    send_json,
    unique,
    wait_stats,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def nodes(
    redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    prefix = f"frtest-guide-{unique('p')}"
    env = guide_env(ROOMS_BACKEND=redis_url, ROOMS_PREFIX=prefix)
    kinds = ("uvicorn", "granian-rsgi")
    specs = {kind: (kind, app_for("gobstopper_guide", kind), env) for kind in kinds}
    with running_nodes(tmp_path_factory.mktemp("guide-nodes"), specs) as servers:
        yield servers["uvicorn"], servers["granian-rsgi"]


async def in_sync(*servers: Server) -> None:
    """The guide's handlers join rooms without waiting for Redis: wait until every join has
    reached it (the ready endpoint does this itself)."""
    for server in servers:
        await wait_stats(server, lambda s: s["connected"] and s["in_sync"])


async def test_chat_rooms_across_processes(nodes: tuple[Server, Server]) -> None:
    one, two = nodes
    room, other = unique("room"), unique("other")
    async with (
        open_ws(one, "/ws/chat") as alice,
        open_ws(two, "/ws/chat") as bob,
        open_ws(two, "/ws/chat") as carol,
    ):
        for ws, name in ((alice, room), (bob, room), (carol, other)):
            await join_chat(ws, name)
        await in_sync(one, two)
        await send_json(bob, {"type": "chat_message", "room": room, "user": "bob", "message": "hi"})
        for ws in (alice, bob):
            assert await recv_event(ws) == {"type": "message", "user": "bob", "message": "hi"}
        await send_json(
            alice, {"type": "chat_message", "room": other, "user": "a", "message": "sentinel"}
        )
        assert (await recv_json(carol))["message"] == "sentinel"  # nothing from the other room


async def test_room_presence_and_chat_across_processes(nodes: tuple[Server, Server]) -> None:
    # The guide's typing indicator loops over get_room_connections() and sends directly: those
    # are this process's members only, so it stays per process (test_guide covers it there).
    one, two = nodes
    room = unique("room")
    alice, bob = unique("alice"), unique("bob")
    async with open_ws(one, f"/ws/rooms/{room}?token={alice}-token") as a:
        assert (await recv_event(a))["type"] == "user_joined"
        await in_sync(one)
        async with open_ws(two, f"/ws/rooms/{room}?token={bob}-token") as b:
            # Node two announces bob before its own subscription is live; alice, on node one,
            # gets the announcement through Redis.
            assert (await recv_json(a))["user_id"] == bob
            assert (await recv_json(b))["user_id"] == bob
            await in_sync(two)
            await send_json(a, {"type": "chat", "content": "hello bob"})
            for ws in (a, b):
                event = await recv_event(ws)
                assert (event["type"], event["user_id"], event["message"]) == (
                    "message", alice, "hello bob"
                )
        left = await recv_event(a)
        assert (left["type"], left["user_id"]) == ("user_left", bob)


async def test_rest_notifications_from_either_process(nodes: tuple[Server, Server]) -> None:
    one, two = nodes
    room = unique("room")
    async with (
        http(two, headers=ADMIN) as client,
        open_ws(one, "/ws/chat") as a,
        open_ws(two, "/ws/chat") as b,
    ):
        for ws in (a, b):
            await join_chat(ws, room)
        await in_sync(one, two)
        r = await client.post("/api/notify-room", json={"room_id": room, "message": "m"})
        assert r.json() == {"status": "sent", "room_connections": 1}  # counts are per process
        for ws in (a, b):
            assert (await recv_event(ws))["type"] == "room_notification"
        r = await client.post("/api/broadcast", json={"title": "T", "message": "everyone"})
        assert r.status_code == 200
        for ws in (a, b):
            assert (await recv_event(ws))["message"] == "everyone"
