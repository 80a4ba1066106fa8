"""The RSGI -> ASGI bridge under a real `granian --interface rsgi` (and uvicorn for reference)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from fastapi_rooms.rsgi import RSGIApp
from tests.conftest import Server, server_fixture
from tests.helpers import handshake_status, http, open_ws, recv

pytestmark = pytest.mark.anyio


#: bridge_app on Granian RSGI (the bridge) and on uvicorn (the reference).
bridge = server_fixture("bridge_app", "bridge", kinds=["granian-rsgi", "uvicorn"])


async def test_streamed_upload(bridge: Server) -> None:
    payload = os.urandom(3 * 1024 * 1024)

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(payload), 64 * 1024):
            yield payload[i : i + 64 * 1024]

    async with http(bridge, timeout=30) as client:
        r = await client.post("/upload", content=chunks())
    assert r.status_code == 200
    body = r.json()
    assert body["size"] == len(payload)
    assert body["sha256"] == hashlib.sha256(payload).hexdigest()


async def test_streamed_response_arrives_chunk_by_chunk(bridge: Server) -> None:
    async with (
        http(bridge) as client,
        client.stream("GET", "/stream") as response,
    ):
        lines = response.aiter_lines()
        # The first chunk arrives while the server is still waiting to produce the last.
        assert await asyncio.wait_for(lines.__anext__(), 5) == "first"
        assert (await client.post("/release")).json() == {"released": True}
        assert await asyncio.wait_for(lines.__anext__(), 5) == "last"


async def test_sse_file_cookies_errors_openapi(bridge: Server) -> None:
    async with http(bridge) as client:
        sse = await client.get("/sse")
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert sse.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
        f = await client.get("/file")
        assert f.status_code == 200 and f.content == bytes(range(256)) * 4096
        c = await client.get("/cookies")
        assert sorted(c.headers.get_list("set-cookie"))[0].startswith("a=1")
        assert len(c.headers.get_list("set-cookie")) == 2
        assert (await client.get("/missing")).status_code == 404
        assert (await client.post("/items", json={"name": "x"})).status_code == 422
        assert (await client.post("/items", json={"name": "x", "count": 2})).json() == {
            "name": "x", "count": 2}
        spec = (await client.get("/openapi.json")).json()
        assert "/rooms-api/broadcast" in spec["paths"]
        assert (await client.get("/docs")).status_code == 200
        info = (await client.get("/client?x=1&y=%20")).json()
        assert info["host"] == "127.0.0.1" and isinstance(info["port"], int) and info["port"] > 0
        assert info["query"] == "x=1&y=%20"
    async with http(bridge) as client:
        # Last: uvicorn closes the keep-alive connection after an unhandled exception.
        assert (await client.get("/boom")).status_code == 500
    assert "Traceback" not in bridge.log() or "boom" in bridge.log()


async def test_fastapi_native_websocket_through_the_bridge(bridge: Server) -> None:
    async with open_ws(bridge, "/native") as ws:
        await ws.send("hi")
        assert await recv(ws, 5) == "native: hi"


async def test_unmatched_websocket_path(bridge: Server) -> None:
    if bridge.kind == "granian-rsgi":
        assert await handshake_status(bridge, "/no/such/path") == 404
    else:
        async with open_ws(bridge, "/no/such/path") as ws:
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1001


async def test_hostile_input_leaves_the_worker_serving(bridge: Server) -> None:
    def raw(data: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", bridge.port), timeout=5) as s:
            s.sendall(data)
            try:
                return s.recv(4096)
            except OSError:
                return b""

    # Bad handshakes: missing key, wrong version, garbage request line, odd paths.
    raw(b"GET /rooms-api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    raw(b"GET /rooms-api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 99\r\n\r\n")
    raw(b"\x00\x01\x02 garbage \xff\r\n\r\n")
    raw(b"GET /%00%ff/../.. HTTP/1.1\r\nHost: x\r\n\r\n")
    # A valid handshake followed by a garbage frame, and an abrupt drop mid-frame.
    for junk in (b"\xff\xff\xff\xff\xff\xff", b"\x81\xfe\xff"):
        async with open_ws(bridge, "/rooms-api/ws") as ws:
            await recv(ws, 5)  # welcome
            ws.transport.write(junk)
            if junk.startswith(b"\x81"):
                ws.transport.abort()
            else:
                with pytest.raises(Exception):  # noqa: B017 - the server drops us
                    await recv(ws, 5)
    # Still serving, HTTP and WebSocket.
    async with http(bridge, timeout=5) as client:
        assert (await client.get("/rooms-api/stats")).status_code == 200
    async with open_ws(bridge, "/rooms-api/ws") as ws:
        assert "welcome" in await recv(ws, 5)
    assert bridge.proc.poll() is None
    assert "panicked" not in bridge.log()


def test_gc_settings_after_startup(serve: Callable[..., Server]) -> None:
    """RSGIApp(app) tunes the collector by default (and says so); an app can opt out."""
    tuned = serve("granian-rsgi", "bridge_app:rsgi_app")
    python = serve("granian-rsgi", "bridge_app:python_gc_rsgi_app")
    state = httpx.get(f"{tuned.http}/gc", timeout=10).json()
    assert state["frozen"] > 1000 and state["threshold"] == 50_000
    assert httpx.get(f"{python.http}/gc", timeout=10).json() == {"frozen": 0, "threshold": 700}


@pytest.mark.parametrize("bad", [0, -1, 1.5, "700", True])
def test_gc_threshold_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="gc_threshold must be a positive int or None, got"):
        RSGIApp(FastAPI(), gc_threshold=bad)  # type: ignore[arg-type]
