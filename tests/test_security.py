"""Authentication, origins, join authorization, limits, users and presence on real servers.

One test body per feature, run against uvicorn and granian-rsgi (``server_kind``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fastapi_rooms import WebSocket
from fastapi_rooms.policy import Limits, client_ip, get_token, origin_allowed, user_id_of

from .conftest import SERVERS, Server, app_for, sent_code, server_fixture
from .helpers import ADMIN, WAIT, handshake_status, http, next_event, open_ws, recv

pytestmark = pytest.mark.anyio

APP = {kind: app_for("secure_app", kind) for kind in SERVERS}

PER_IP = 8  # the shared server's per-address limit; tests that do not test it stay below

secure = server_fixture(
    "secure_app", "secure", {"MAX_CONNECTIONS_PER_IP": str(PER_IP), "REDIS_URL": ""}
)


def with_token(path: str, token: str | None) -> str:
    return path + (f"?token={token}" if token else "")


def ws_open(
    server: Server, path: str = "/ws", *, token: str | None = "alice-token", **kwargs: Any
) -> connect:
    return open_ws(server, with_token(path, token), **kwargs)


async def refused(
    server: Server, path: str = "/ws", *, token: str | None = "alice-token", **kwargs: Any
) -> int:
    """The HTTP status of a handshake the server must refuse."""
    return await handshake_status(server, with_token(path, token), **kwargs)


async def request(ws: ClientConnection, **message: Any) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    return await next_event(ws)


# Authentication ----------------------------------------------------------------------------


async def test_authentication_by_query_header_or_cookie(secure: Server) -> None:
    async with ws_open(secure) as ws:
        welcome = await next_event(ws, "welcome")
        assert welcome["user_id"] == "alice"
    headers = {"Authorization": "Bearer bob-token"}
    async with ws_open(secure, token=None, additional_headers=headers) as ws:
        assert (await next_event(ws, "welcome"))["user_id"] == "bob"
    cookies = {"Cookie": "theme=dark; token=admin-token"}
    async with ws_open(secure, token=None, additional_headers=cookies) as ws:
        assert (await next_event(ws, "welcome"))["user_id"] == "admin"


async def test_missing_or_bad_credentials_are_refused_before_accept(secure: Server) -> None:
    assert await refused(secure, token=None) == 403
    assert await refused(secure, token="forged") == 403
    assert await refused(secure, token=None, additional_headers={"Authorization": "Basic x"}) == 403
    assert await refused(secure, "/custom", token=None) == 403
    async with ws_open(secure, "/custom", token="bob-token") as ws:
        assert json.loads(await ws.recv()) == {"user_id": "bob", "name": "Bob"}


# Origins -----------------------------------------------------------------------------------


async def test_cross_site_origins_are_refused(secure: Server) -> None:
    assert await refused(secure, origin="https://evil.example") == 403
    assert await refused(secure, "/custom", origin="http://evil.example") == 403
    async with ws_open(secure, origin="https://allowed.example") as ws:
        assert (await next_event(ws, "welcome"))["user_id"] == "alice"
    same_site = f"http://127.0.0.1:{secure.port}"
    async with ws_open(secure, origin=same_site) as ws:
        assert (await next_event(ws, "welcome"))["type"] == "welcome"


# Joins ---------------------------------------------------------------------------------------


async def test_join_authorization_and_room_limits_answer_with_error_events(
    secure: Server,
) -> None:
    async with ws_open(secure) as alice, ws_open(secure, token="admin-token") as admin:
        await next_event(alice, "welcome")
        await next_event(admin, "welcome")
        denied = await request(alice, type="join", room="admin-ops")
        assert denied == {
            "type": "error",
            "code": "forbidden",
            "message": "only admins may join admin- rooms",
        }
        assert await request(admin, type="join", room="admin-ops") == {
            "type": "joined",
            "room": "admin-ops",
        }
        for i in range(3):
            assert (await request(alice, type="join", room=f"limit-{i}"))["type"] == "joined"
        too_many = await request(alice, type="join", room="limit-3")
        assert too_many["code"] == "too_many_rooms"
        # a refused join leaves the connection usable
        assert await request(alice, type="ping") == {"type": "pong"}


async def test_room_full(secure: Server) -> None:
    tokens = ["alice-token", "bob-token", "admin-token", "alice-token", "bob-token"]
    async with (
        ws_open(secure, token=tokens[0]) as a,
        ws_open(secure, token=tokens[1]) as b,
        ws_open(secure, token=tokens[2]) as c,
        ws_open(secure, token=tokens[3]) as d,
        ws_open(secure, token=tokens[4]) as e,
    ):
        for ws in (a, b, c, d):
            await next_event(ws, "welcome")
            await ws.send(json.dumps({"type": "join", "room": "full"}))
            await next_event(ws, "joined")
        await next_event(e, "welcome")
        answer = await request(e, type="join", room="full")
        assert (answer["type"], answer["code"]) == ("error", "room_full")


# Connection limits ---------------------------------------------------------------------------


async def test_per_ip_limit_behind_a_trusted_proxy(secure: Server) -> None:
    one = {"X-Forwarded-For": "203.0.113.7"}
    other = {"X-Forwarded-For": "203.0.113.8"}
    async with AsyncExitStack() as stack:
        for _ in range(PER_IP):
            ws = await stack.enter_async_context(ws_open(secure, additional_headers=one))
            await next_event(ws, "welcome")
        assert await refused(secure, additional_headers=one) == 429
        async with ws_open(secure, additional_headers=other) as ws:
            assert (await next_event(ws, "welcome"))["type"] == "welcome"
    # The slots free up as the server's handlers end (just after the clients closed).
    async with asyncio.timeout(WAIT):
        while True:
            try:
                async with ws_open(secure, additional_headers=one) as ws:
                    assert (await next_event(ws, "welcome"))["type"] == "welcome"
                    break
            except InvalidStatus as exc:
                if exc.response.status_code != 429:
                    raise
                await asyncio.sleep(0.05)


async def test_total_connection_limit(serve: Callable[..., Server], server_kind: str) -> None:
    server = serve(server_kind, APP[server_kind], {"MAX_CONNECTIONS": "2", "REDIS_URL": ""})
    async with ws_open(server) as a, ws_open(server, token="bob-token") as b:
        await next_event(a, "welcome")
        await next_event(b, "welcome")
        assert await refused(server, token="admin-token") == 503
    async with ws_open(server) as again:
        assert (await next_event(again, "welcome"))["type"] == "welcome"


async def test_limits_hold_for_concurrent_handshakes_with_a_slow_hook(
    serve: Callable[..., Server], server_kind: str
) -> None:
    env = {"MAX_CONNECTIONS": "2", "AUTH_DELAY": "0.2", "REDIS_URL": ""}
    server = serve(server_kind, APP[server_kind], env)

    async def attempt() -> int | ClientConnection:
        try:
            return await stack.enter_async_context(ws_open(server))
        except InvalidStatus as exc:
            return exc.response.status_code

    async with AsyncExitStack() as stack:
        results = await asyncio.gather(*(attempt() for _ in range(10)))
        admitted = [r for r in results if not isinstance(r, int)]
        assert len(admitted) == 2
        assert sorted(r for r in results if isinstance(r, int)) == [503] * 8
    # every slot came back: two more fit, a third does not
    async with ws_open(server) as a, ws_open(server, token="bob-token") as b:
        await next_event(a, "welcome")
        await next_event(b, "welcome")
        assert await refused(server) == 503
    assert "Traceback" not in server.log()


# Rates and idle connections ------------------------------------------------------------------


async def test_rate_limit_drops_then_closes(serve: Callable[..., Server], server_kind: str) -> None:
    server = serve(server_kind, APP[server_kind], {"RATE": "1", "BURST": "3", "REDIS_URL": ""})
    async with ws_open(server) as flooder, ws_open(server, token="bob-token") as calm:
        await next_event(flooder, "welcome")
        await next_event(calm, "welcome")
        for _ in range(3):
            await flooder.send(json.dumps({"type": "ping"}))
        for _ in range(3):
            assert await next_event(flooder) == {"type": "pong"}
        await flooder.send(json.dumps({"type": "ping"}))
        limited = await next_event(flooder)
        assert (limited["type"], limited["code"]) == ("error", "rate_limited")
        async def flood() -> None:
            for _ in range(50):
                await flooder.send(json.dumps({"type": "ping"}))
                await next_event(flooder)

        with pytest.raises(ConnectionClosed) as closed:
            await flood()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == sent_code(server_kind, 1008)
        # the other connection is not affected
        assert await request(calm, type="ping") == {"type": "pong"}


async def test_idle_connections_close_and_pings_keep_them_open(
    serve: Callable[..., Server], server_kind: str
) -> None:
    # A generous timeout: a loaded machine may delay a ping by several hundred ms.
    server = serve(server_kind, APP[server_kind], {"IDLE_TIMEOUT": "1.5", "REDIS_URL": ""})
    async with ws_open(server) as idle, ws_open(server, token="bob-token") as busy:
        await next_event(idle, "welcome")
        await next_event(busy, "welcome")
        for _ in range(7):  # 7 x 0.3 s: longer than the timeout, with a ping in every slice
            await asyncio.sleep(0.3)  # the client's ping interval, not a wait for an event
            assert await request(busy, type="ping") == {"type": "pong"}
        with pytest.raises(ConnectionClosed) as closed:
            await recv(idle)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == sent_code(server_kind, 1001)
        assert closed.value.rcvd.reason == ("" if server_kind == "granian-rsgi" else "idle timeout")


# Users and presence --------------------------------------------------------------------------


async def test_presence_grouped_by_user_with_events_and_user_sends(secure: Server) -> None:
    room = "presence-room"
    async with (
        ws_open(secure) as tab1,
        ws_open(secure) as tab2,
        ws_open(secure, token="bob-token") as bob,
        http(secure, headers=ADMIN) as rest,
    ):
        ids = [(await next_event(ws, "welcome"))["connection_id"] for ws in (tab1, tab2, bob)]
        await bob.send(json.dumps({"type": "join", "room": room, "meta": {"status": "away"}}))
        assert await next_event(bob, "joined") == {"type": "joined", "room": room}
        await tab1.send(json.dumps({"type": "join", "room": room, "meta": {"tab": 1}}))
        joined = await next_event(bob, "presence")
        assert joined == {
            "type": "presence",
            "event": "join",
            "room": room,
            "connection_id": ids[0],
            "user_id": "alice",
            "meta": {"tab": 1},
        }
        await tab2.send(json.dumps({"type": "join", "room": room, "meta": {"tab": 2}}))
        await next_event(tab2, "joined")

        detail = (await rest.get(f"/rooms/{room}")).json()
        by_user = {entry["user_id"]: entry["connections"] for entry in detail["presence"]}
        assert sorted(by_user) == ["alice", "bob"]
        assert sorted(c["meta"]["tab"] for c in by_user["alice"]) == [1, 2]
        assert by_user["bob"] == [
            {"connection_id": ids[2], "meta": {"status": "away"}, "node": by_user["bob"][0]["node"]}
        ]

        response = await rest.post("/users/alice/send", json={"message": {"type": "dm"}})
        assert response.json() == {"status": "sent", "user_id": "alice"}
        for tab in (tab1, tab2):
            assert await next_event(tab, "dm") == {"type": "dm"}
        assert (await rest.post("/users/nobody/send", json={"message": "x"})).status_code == 404

        await tab2.send(json.dumps({"type": "leave", "room": room}))
        left = await next_event(bob, "presence")
        while left["event"] != "leave":  # skip tab2's join announcement
            left = await next_event(bob, "presence")
        assert (left["connection_id"], left["user_id"], left["meta"]) == (ids[1], "alice", {"tab": 2})


# Units: token, address and origin parsing -----------------------------------------------------


def _ws(headers: list[tuple[bytes, bytes]], query: bytes = b"", client: Any = ("1.2.3.4", 5)) -> WebSocket:
    async def never() -> Any:
        raise AssertionError("unused")

    return WebSocket(
        {"type": "websocket", "path": "/", "headers": headers, "query_string": query,
         "client": client},
        never, never,
    )  # fmt: skip


def test_get_token_sources_and_precedence() -> None:
    assert get_token(_ws([], b"token=q&x=1")) == "q"
    assert get_token(_ws([(b"authorization", b"Bearer  h ")])) == "h"
    assert get_token(_ws([(b"authorization", b"Basic abc")])) is None
    assert get_token(_ws([(b"cookie", b"a=1; token=c")])) == "c"
    assert get_token(_ws([(b"cookie", b'bad="')])) is None
    assert get_token(_ws([(b"cookie", b"token=c")], b"token=q")) == "q"
    assert get_token(_ws([(b"cookie", b"token=c")]), cookie=None) is None


def test_client_ip_reads_every_forwarded_line() -> None:
    # A proxy that adds its own line after the client's (HAProxy option forwardfor).
    lines = [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"198.51.100.1")]
    assert client_ip(_ws(lines, client=("10.0.0.9", 1)), ["10.0.0.0/8"]) == "198.51.100.1"
    mapped = _ws([(b"x-forwarded-for", b"198.51.100.2")], client=("::ffff:10.0.0.9", 1))
    assert client_ip(mapped, ["10.0.0.0/8"]) == "198.51.100.2"


def test_limits_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        Limits(trusted_proxies=["proxy.internal"])
    with pytest.raises(ValueError, match="rate"):
        Limits(rate=0)


def test_client_ip_trusts_only_configured_proxies() -> None:
    xff = [(b"x-forwarded-for", b"198.51.100.1, 10.0.0.2")]
    assert client_ip(_ws(xff)) == "1.2.3.4"  # no trusted proxies: the peer
    assert client_ip(_ws(xff), ["10.0.0.0/8"]) == "1.2.3.4"  # the peer itself is not trusted
    proxied = _ws(xff, client=("10.0.0.9", 1))
    assert client_ip(proxied, ["10.0.0.0/8"]) == "198.51.100.1"
    assert client_ip(_ws([], client=("10.0.0.9", 1)), ["10.0.0.0/8"]) == "10.0.0.9"
    spoofed = _ws([(b"x-forwarded-for", b"not-an-ip")], client=("10.0.0.9", 1))
    assert client_ip(spoofed, ["10.0.0.0/8"]) == "not-an-ip"  # counted as its own address
    assert client_ip(_ws([], client=None)) == "unknown"


def test_origin_policy() -> None:
    host = [(b"host", b"app.example:8000")]
    assert origin_allowed(_ws(host), None)  # not a browser
    assert origin_allowed(_ws([*host, (b"origin", b"http://app.example:8000")]), None)
    assert not origin_allowed(_ws([*host, (b"origin", b"https://evil.example")]), None)
    assert origin_allowed(_ws([*host, (b"origin", b"https://ok.example")]), ["https://ok.example/"])
    assert origin_allowed(_ws([*host, (b"origin", b"https://any.example")]), ["*"])
    assert not origin_allowed(_ws([(b"origin", b"http://app.example:8000")]), None)  # no Host


def test_user_id_of() -> None:
    class User:
        id = 7

    assert user_id_of("u") == "u"
    assert user_id_of({"id": 3}) == "3"
    assert user_id_of(User()) == "7"
    with pytest.raises(TypeError, match="expected None, a user id"):
        user_id_of(3.5)
    for anonymous in ({"id": None}, type("Anon", (), {"id": None})(), ""):
        with pytest.raises(ValueError, match="without an id"):
            user_id_of(anonymous)
