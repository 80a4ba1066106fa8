"""Namespaces and the typed protocol over real servers (uvicorn and granian-rsgi, one body each).

Every frame a client receives here is checked against ``protocol.ServerEvent``: the models
are the protocol, so the wire must never carry an event they do not describe.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter
from websockets.asyncio.client import ClientConnection

from fastapi_rooms.protocol import ServerEvent

from .conftest import Server, running, server_fixture
from .helpers import WAIT, open_ws, recv_text, send_json

pytestmark = pytest.mark.anyio

server = server_fixture("namespace_app", "namespaces")

_server_event: TypeAdapter[Any] = TypeAdapter(ServerEvent)


@pytest.fixture(scope="module")
def strict_server(server_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    name = "strict_rsgi_app" if server_kind == "granian-rsgi" else "strict_app"
    with running(server_kind, f"namespace_app:{name}", tmp_path_factory.mktemp("strict")) as s:
        yield s


async def event(ws: ClientConnection) -> dict[str, Any]:
    """The next frame, which must be a valid server event."""
    raw = await recv_text(ws)
    _server_event.validate_json(raw)  # the models describe every frame on the wire
    return dict(json.loads(raw))


async def member(server: Server, user: str | None = None) -> ClientConnection:
    query = f"?user={user}" if user else ""
    ws = await open_ws(server, f"/ws{query}")
    welcome = await event(ws)
    assert welcome["type"] == "welcome"
    return ws


async def join(ws: ClientConnection, room: str, expect: str = "joined") -> dict[str, Any]:
    await send_json(ws, {"type": "join", "room": room})
    answer = await event(ws)
    while answer["type"] == "presence":  # another member's join, announced first
        answer = await event(ws)
    assert answer["type"] == expect, answer
    return answer


async def nothing_but(ws: ClientConnection, marker: dict[str, Any], room: str) -> None:
    """The next message ``ws`` gets in ``room`` is ``marker``: nothing was delivered before it,
    and no error."""
    while True:
        got = await event(ws)
        assert got["type"] != "error", f"an error came before the marker: {got}"
        if got["type"] == "message" and got["room"] == room:
            assert got["data"] == marker, f"something else was delivered first: {got}"
            return


def room(prefix: str) -> str:
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


async def test_a_valid_publish_is_delivered_as_its_validated_model(server: Server) -> None:
    name = room("chat")
    async with await member(server, "alice") as alice, await member(server, "bob") as bob:
        await join(alice, name)
        await join(bob, name)
        # lax validation converts "7" to 7; a field the model does not have is not forwarded
        await send_json(
            alice,
            {"type": "publish", "room": name, "data": {"text": "hi", "reply_to": "7", "x": 1}},
        )
        got = await event(bob)
        while got["type"] == "presence":
            got = await event(bob)
        assert got == {
            "type": "message",
            "room": name,
            "from": got["from"],
            "data": {"text": "hi", "reply_to": 7},
        }


async def test_invalid_data_gets_one_error_with_locations_and_reaches_nobody(
    server: Server,
) -> None:
    name = room("chat")
    async with await member(server, "alice") as alice, await member(server, "bob") as bob:
        await join(alice, name)
        await join(bob, name)
        for bad, loc in (
            ({"reply_to": 1}, ["data", "text"]),  # missing field
            ({"text": ""}, ["data", "text"]),  # too short
            ({"text": "x" * 501}, ["data", "text"]),  # too long
            ({"text": "hi", "reply_to": "seven"}, ["data", "reply_to"]),  # wrong type
            ("just a string", ["data"]),  # wrong shape altogether
            ([1, 2, 3], ["data"]),
        ):
            await send_json(alice, {"type": "publish", "room": name, "data": bad})
            error = await event(alice)
            while error["type"] == "presence":
                error = await event(alice)
            assert error["type"] == "error" and error["code"] == "invalid_message", error
            assert error["errors"][0]["loc"] == loc, error
            assert error["message"].startswith(".".join(loc)), error
        marker = {"text": "the first valid one", "reply_to": None}
        await send_json(alice, {"type": "publish", "room": name, "data": marker})
        await nothing_but(bob, marker, name)
        await nothing_but(alice, marker, name)  # and the sender got no second error


async def test_hostile_input_gets_a_small_clear_error_and_the_connection_lives(
    server: Server,
) -> None:
    name = room("chat")
    async with await member(server, "mallory") as mallory, await member(server, "bob") as bob:
        await join(mallory, name)
        await join(bob, name)
        # 100 000 nested arrays (200 KB): the parser's depth limit, not a crash
        await mallory.send(
            '{"type":"publish","room":"' + name + '","data":' + "[" * 100_000 + "]" * 100_000 + "}"
        )
        error = await event(mallory)
        while error["type"] == "presence":
            error = await event(mallory)
        assert error["code"] == "invalid_message" and "recursion" in error["message"], error
        # a 300 000-character field name: the error names it, cut short, without echoing it
        await mallory.send(
            json.dumps({"type": "publish", "room": name, "data": {"text": "x"}, "k" * 300_000: 1})
        )
        raw = await recv_text(mallory)
        assert len(raw) < 2_000, len(raw)
        error = json.loads(raw)
        assert error["code"] == "invalid_message"
        assert error["errors"][0]["loc"] == ["publish", "k" * 63 + "…"], error
        # 5000 wrong items: 20 errors are reported
        nums = room("nums")
        await join(mallory, nums)
        await send_json(mallory, {"type": "publish", "room": nums, "data": ["a"] * 5000})
        error = await event(mallory)
        assert error["code"] == "invalid_message" and len(error["errors"]) == 20, error
        assert error["errors"][19]["loc"] == ["data", 19]
        # an error 60 levels deep in a recursive model: the location is shortened
        tree = room("tree")
        await join(mallory, tree)
        deep: dict[str, Any] = {"leaf": "not a number"}
        for _ in range(60):
            deep = {"children": {"c": deep}}
        await send_json(mallory, {"type": "publish", "room": tree, "data": deep})
        raw = await recv_text(mallory)
        assert len(raw) < 2_000, len(raw)
        error = json.loads(raw)
        assert error["code"] == "invalid_message", error
        loc = error["errors"][0]["loc"]
        assert len(loc) == 13 and loc[8] == "…" and loc[-1] == "leaf", loc
        marker = {"text": "still here", "reply_to": None}
        await send_json(mallory, {"type": "publish", "room": name, "data": marker})
        await nothing_but(bob, marker, name)


async def test_a_server_only_namespace_refuses_clients_and_takes_server_models(
    server: Server,
) -> None:
    symbol = uuid.uuid4().hex[:6]
    name = f"ticker:{symbol}"
    async with await member(server, "alice") as alice, await member(server, "bob") as bob:
        await join(alice, name)
        await join(bob, name)
        await send_json(alice, {"type": "publish", "room": name, "data": {"price": 1.0}})
        error = await event(alice)
        while error["type"] == "presence":
            error = await event(alice)
        assert error["code"] == "publish_forbidden" and "server only" in error["message"]
        async with httpx.AsyncClient(base_url=server.http, timeout=WAIT) as http:
            wrong = await http.post(f"/wrong-model/{symbol}")
            assert wrong.status_code == 422
            assert "takes Tick, got ChatMessage" in wrong.json()["detail"]
            ok = await http.post(f"/tick/{symbol}", json={"price": "101.5"})
            assert ok.json() == {"delivered": 2}
            raw = await http.post(f"/raw-tick/{symbol}", json={"price": 7, "volume": 3})
            assert raw.json() == {"delivered": 2}
        tick = {"price": 101.5, "volume": 0}
        # bob saw neither the refused publish nor the wrong model: the tick comes first
        await nothing_but(bob, tick, name)
        await nothing_but(alice, tick, name)
        for ws in (alice, bob):  # broadcast_to_room(model): its JSON as the app's own frame
            assert json.loads(await recv_text(ws)) == {"price": 7.0, "volume": 3}


async def test_a_publish_policy_decides_per_user(server: Server) -> None:
    name = room("vip")
    async with await member(server, "alice") as alice, await member(server, "bob") as bob:
        await join(alice, name)
        await join(bob, name)
        await send_json(bob, {"type": "publish", "room": name, "data": "hello"})
        error = await event(bob)
        assert error == {
            "type": "error",
            "code": "publish_forbidden",
            "message": f"only alice speaks in {name}",
        }
        await send_json(alice, {"type": "publish", "room": name, "data": "welcome"})
        assert (await event(bob))["data"] == "welcome"


async def test_namespace_rate_and_member_limits(server: Server) -> None:
    slow = room("slow")
    async with await member(server, "a") as a, await member(server, "b") as b:
        await join(a, slow)
        await send_json(a, {"type": "publish", "room": slow, "data": 1})
        assert (await event(a))["data"] == 1
        await send_json(a, {"type": "publish", "room": slow, "data": 2})
        error = await event(a)
        assert error["code"] == "rate_limited" and "slow:{name}" in error["message"]
        duo = room("duo")
        await join(a, duo)
        await join(b, duo)
        async with await member(server, "c") as c:
            error = await join(c, duo, expect="error")
            assert error["code"] == "room_full"


async def test_rooms_outside_namespaces_follow_the_defaults(server: Server) -> None:
    name = f"anything-{uuid.uuid4().hex[:6]}"
    async with await member(server, "alice") as alice:
        await join(alice, name)
        await send_json(alice, {"type": "publish", "room": name, "data": {"free": ["form"]}})
        assert (await event(alice))["data"] == {"free": ["form"]}
        # "chat:" has no name: it matches no namespace, so it takes the defaults, unvalidated
        await send_json(alice, {"type": "publish", "room": "elsewhere", "data": 1})
        assert (await event(alice))["code"] == "not_in_room"
        await join(alice, "chat:")
        await send_json(alice, {"type": "publish", "room": "chat:", "data": 42})
        assert (await event(alice))["data"] == 42


async def test_strict_namespaces_refuse_unmatched_rooms(strict_server: Server) -> None:
    async with (
        await member(strict_server, "alice") as alice,
        await member(strict_server, "bob") as bob,
    ):
        name = room("chat")
        await join(bob, name)
        for refused in ("lobby", "chat:", "ticker:abc"):
            error = await join(alice, refused, expect="error")
            assert error["code"] == "unknown_namespace"
            assert "'chat:{name}'" in error["message"], error
        await join(alice, name)
        await send_json(alice, {"type": "publish", "room": name, "data": {"text": "ok"}})
        assert (await event(alice))["data"] == {"text": "ok", "reply_to": None}
        # bob, in the room all along, saw the message and nothing of alice's refusals
        await nothing_but(bob, {"text": "ok", "reply_to": None}, name)
