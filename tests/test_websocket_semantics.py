"""WebSocket semantics on a real server: what a client sees and what the handler saw.

Each server kind in ``SERVERS`` serves ``tests/apps/core_app.py`` in a subprocess; the clients are
``websockets`` asyncio clients on loopback. Handlers report their view through
``GET /test/reports/{key}``, which waits (server side) until the handler finished its report.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any
from urllib.parse import quote

import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import (
    SERVERS,
    Server,
    app_for,
    peer_code,
    sent_code,
    sent_reason,
    server_fixture,
)
from tests.helpers import WAIT, closed_with, drain, handshake_status, http, open_ws, recv, recv_json

pytestmark = pytest.mark.anyio

APP = {kind: app_for("core_app", kind) for kind in SERVERS}

LIMIT = 1024  # MAX_WS_MESSAGE_BYTES of the ``limited`` server

core = server_fixture("core_app", "core")
limited = server_fixture("core_app", "limited", {"MAX_WS_MESSAGE_BYTES": str(LIMIT)})


# Helpers ----------------------------------------------------------------------------------------


def new_key() -> str:
    return uuid.uuid4().hex


async def fetch_report(server: Server, key: str) -> dict[str, Any]:
    async with http(server, timeout=WAIT + 5) as client:
        response = await client.get(f"/test/reports/{key}", params={"timeout": WAIT})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def assert_connection_closed_error(error: dict[str, Any] | None) -> None:
    """What the handler reported for a use of a closed connection."""
    assert error is not None, "expected ConnectionClosed, nothing was raised"
    assert error["type"] == "ConnectionClosed"
    assert error["connection_error"] is True
    assert error["runtime_error"] is True


# receive() --------------------------------------------------------------------------------------


async def test_receive_returns_text_and_bytes_messages(core: Server) -> None:
    async with open_ws(core, "/ws/describe") as ws:
        await ws.send("héllo ✓")
        assert await recv_json(ws) == {
            "type": "text",
            "kind": 2,
            "data_type": "str",
            "data": "héllo ✓",
            "code": None,
        }
        await ws.send(b"\x00\x01\xfe\xff")
        assert await recv_json(ws) == {
            "type": "bytes",
            "kind": 1,
            "data_type": "bytes",
            "data": "0001feff",
            "code": None,
        }
        await ws.send(b"hello")  # valid UTF-8, still binary
        assert (await recv_json(ws))["type"] == "bytes"
        await ws.send("")
        assert await recv_json(ws) == {
            "type": "text",
            "kind": 2,
            "data_type": "str",
            "data": "",
            "code": None,
        }
        await ws.send(b"")
        assert await recv_json(ws) == {
            "type": "bytes",
            "kind": 1,
            "data_type": "bytes",
            "data": "",
            "code": None,
        }


async def test_200kb_text_arrives_as_one_message(core: Server) -> None:
    key = new_key()
    payload = "".join(f"{i:08d}" for i in range(25_000))  # 200 000 characters, order-revealing
    async with open_ws(core, f"/ws/echo?key={key}") as ws:
        await ws.send(payload)
        echoed = await recv(ws)
        assert isinstance(echoed, str)
        assert echoed == payload
        # The same text sent as four fragments is still one message to the handler.
        await ws.send([payload[i : i + 50_000] for i in range(0, 200_000, 50_000)])
        assert await recv(ws) == payload
    seen = await fetch_report(core, key)
    assert seen["messages"] == [["text", 200_000], ["text", 200_000]]
    assert seen["last"]["type"] == "close"
    assert seen["last"]["code"] == peer_code(core.kind, 1000)


async def test_client_close_code_reaches_handler_then_use_raises(core: Server) -> None:
    key = new_key()
    async with open_ws(core, f"/ws/echo?key={key}") as ws:
        await ws.send("hi")
        assert await recv(ws) == "hi"
        await ws.close(4000, "client done")
    seen = await fetch_report(core, key)
    assert seen["last"] == {
        "type": "close",
        "kind": 0,
        "data_type": "NoneType",
        "data": None,
        "code": peer_code(core.kind, 4000),
        "reason": sent_reason(core.kind, "client done"),
    }
    assert_connection_closed_error(seen["after"]["receive"])
    assert_connection_closed_error(seen["after"]["send_text"])


async def test_abrupt_drop_is_close_1006_then_use_raises(core: Server) -> None:
    key = new_key()
    ws = await open_ws(core, f"/ws/echo?key={key}")
    await ws.send("hi")
    assert await recv(ws) == "hi"  # the handler is inside its receive loop
    ws.transport.abort()  # TCP reset, no close frame
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    seen = await fetch_report(core, key)
    assert seen["last"]["type"] == "close"
    assert seen["last"]["kind"] == 0
    assert seen["last"]["code"] == 1006
    assert_connection_closed_error(seen["after"]["receive"])
    assert_connection_closed_error(seen["after"]["send_text"])


async def test_async_for_and_scope(core: Server) -> None:
    key = new_key()
    url = f"/ws/scope/alice?key={key}&x=1&y=%C3%A9"
    async with open_ws(core, url, additional_headers={"X-Test": "hello"}) as ws:
        info = await recv_json(ws)
        host, port = ws.local_address[:2]
        assert info == {
            "name": "alice",
            "path": "/ws/scope/alice",
            "query_string_type": "bytes",
            "query_string": f"key={key}&x=1&y=%C3%A9",
            "headers_are_byte_pairs": True,
            "x_test": ["hello"],
            "client": [host, str(port)],
            "user": {"name": "alice"},
            "anything": 42,
        }
        await ws.send("a")
        assert await recv(ws) == "iter:text:'a'"
        await ws.send(b"b")
        assert await recv(ws) == "iter:bytes:b'b'"
    assert await fetch_report(core, key) == {"count": 2, "ended": "loop"}


# close() ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [(1000, ""), (1008, "policy violated"), (4001, "custom reason"), (4999, "naïve ✓")],
)
async def test_close_after_accept_sends_code_and_reason(
    core: Server, code: int, reason: str
) -> None:
    async with open_ws(core, f"/ws/close/{code}?reason={quote(reason)}") as ws:
        rcvd = await closed_with(ws)
    assert (rcvd.code, rcvd.reason) == (sent_code(core.kind, code), sent_reason(core.kind, reason))


@pytest.mark.parametrize(("count", "size"), [(10, 64), (200, 64 * 1024)])
async def test_close_after_queued_sends_delivers_them_first(
    core: Server, count: int, size: int
) -> None:
    # 200 x 64 KiB backs up the socket: the close waits behind the queued frames.
    url = f"/ws/flood-close/4002?count={count}&size={size}&reason=flushed"
    async with open_ws(core, url, compression=None, max_size=2**20) as ws:
        messages, rcvd = await drain(ws, limit=count)
    assert [m[:9] for m in messages] == [f"{seq:08d}|" for seq in range(count)]
    assert all(len(m) == size for m in messages)
    assert rcvd is not None
    assert (rcvd.code, rcvd.reason) == (sent_code(core.kind, 4002), sent_reason(core.kind, "flushed"))


@pytest.mark.parametrize("path", ["/ws/reject", "/ws/reject?code=1008", "/ws/no-accept"])
async def test_no_accept_rejects_handshake_with_403(core: Server, path: str) -> None:
    assert await handshake_status(core, path) == 403


async def test_handler_raising_after_accept_closes_1011_and_logs(core: Server) -> None:
    async with open_ws(core, "/ws/raise") as ws:
        assert await recv(ws) == "about to raise"
        rcvd = await closed_with(ws)
    assert rcvd.code == sent_code(core.kind, 1011)
    # The library logs the handler's exception before it sends the close frame.
    assert "handler failure on purpose (test)" in core.log()


async def test_unmatched_path_closes_1001(core: Server) -> None:
    if core.kind == "granian-rsgi":  # RSGI cannot send 1001: the upgrade is refused with 404
        assert await handshake_status(core, "/no/such/path") == 404
        return
    async with open_ws(core, "/no/such/path") as ws:
        rcvd = await closed_with(ws)
    assert rcvd.code == 1001


async def test_misuse_raises_runtime_error_with_clear_message(core: Server) -> None:
    async with open_ws(core, "/ws/misuse") as ws:
        errors = await recv_json(ws)
    for name in ("send_before_accept", "receive_before_accept", "second_accept"):
        error = errors[name]
        assert error is not None, f"{name}: nothing was raised"
        assert error["type"] == "RuntimeError", f"{name}: {error}"
        assert error["connection_closed"] is False, f"{name}: {error}"
    assert "before accept()" in errors["send_before_accept"]["message"]
    assert "before accept()" in errors["receive_before_accept"]["message"]
    assert "already accepted" in errors["second_accept"]["message"]


# Message size limit -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "fits", "too_big"),
    [
        ("text", "t" * LIMIT, "t" * 2000),
        ("bytes", b"b" * LIMIT, b"b" * 2000),
        # The limit is in bytes: 341 x 3 = 1023 bytes fit, 400 characters are 1200 bytes.
        ("text", "€" * 341, "€" * 400),
    ],
    ids=["text", "bytes", "multibyte-text"],
)
async def test_inbound_over_limit_closes_1009_and_spares_others(
    limited: Server, kind: str, fits: str | bytes, too_big: str | bytes
) -> None:
    key = new_key()
    async with (
        open_ws(limited, "/ws/echo") as bystander,
        open_ws(limited, f"/ws/echo?key={key}") as offender,
    ):
        await bystander.send("before")
        assert await recv(bystander) == "before"
        await offender.send(fits)  # within the limit: fine
        assert await recv(offender) == fits
        await offender.send(too_big)
        rcvd = await closed_with(offender)
        assert rcvd.code == sent_code(limited.kind, 1009)
        await bystander.send("after")
        assert await recv(bystander) == "after"
        await bystander.send(fits)
        assert await recv(bystander) == fits
    seen = await fetch_report(limited, key)
    assert seen["messages"] == [[kind, len(fits)]]
    assert seen["last"]["type"] == "close"
    assert seen["last"]["code"] == 1009
    assert_connection_closed_error(seen["after"]["receive"])
    assert_connection_closed_error(seen["after"]["send_text"])
    assert "Traceback" not in limited.log(), limited.log()


async def test_outbound_over_limit_raises_message_too_big(limited: Server) -> None:
    async with open_ws(limited, "/ws/oversend?size=2000") as ws:
        errors = await recv_json(ws)
        assert await recv(ws) == "still open"
    for kind in ("text", "bytes"):
        error = errors[kind]
        assert error is not None, f"sending 2000 {kind} over a {LIMIT} limit raised nothing"
        assert error["type"] == "MessageTooBig"
        assert error["value_error"] is True
        assert error["connection_closed"] is False
        assert "2000" in error["message"]
        assert str(LIMIT) in error["message"]
    async with http(limited) as client:
        response = await client.post("/rooms/any/broadcast", json={"message": "x" * 2000})
    assert response.status_code == 413
    assert str(LIMIT) in response.text


# Shutdown ---------------------------------------------------------------------------------------


async def test_shutdown_sends_every_client_a_close_frame(server_kind: str, serve: Any) -> None:
    server: Server = serve(server_kind, APP[server_kind])
    clients: list[ClientConnection] = []
    for i in range(3):
        cid = f"member-{i}-{new_key()}"
        ws = await open_ws(server, f"/ws/member?id={cid}&rooms=lobby,r{i}")
        assert await recv(ws) == f"ready:{cid}"
        clients.append(ws)
    echo = await open_ws(server, "/ws/echo")
    await echo.send("ping")
    assert await recv(echo) == "ping"
    clients.append(echo)
    ticker = await open_ws(server, "/ws/ticker")
    assert await recv(ticker) == "tick:0"
    clients.append(ticker)

    started = time.monotonic()
    stopping = asyncio.create_task(asyncio.to_thread(server.stop, 20.0))
    results = await asyncio.gather(*(drain(ws, timeout=15) for ws in clients))
    returncode = await stopping
    elapsed = time.monotonic() - started

    for ws, (_, rcvd) in zip(clients, results, strict=True):
        if server_kind == "granian-rsgi":
            # Granian drops open WebSockets before the app's shutdown runs (granian#796): the
            # connection ends (drain returned) but without a close frame.
            assert ws.state.name == "CLOSED"
            continue
        assert rcvd is not None, f"{ws.request.path if ws.request else ws}: no close frame"
        assert rcvd.code in (1012, 1001), rcvd
    ticks = results[-1][0]
    assert ticks == [f"tick:{i}" for i in range(1, len(ticks) + 1)]
    # A graceful exit: uvicorn (since 0.29) re-raises the SIGTERM it handled once its shutdown
    # completed, so its exit status is -SIGTERM; a hung shutdown would end in stop()'s SIGKILL.
    assert returncode in (0, -signal.SIGTERM), server.log()
    assert elapsed < 15, f"shutdown took {elapsed:.1f}s"
    log = server.log()
    assert "Traceback" not in log, log
    if server_kind == "uvicorn":
        assert "Application shutdown complete" in log, log
