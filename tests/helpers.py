"""Client-side helpers the real-server tests share: WebSocket and HTTP clients, waits, polls.

Fixtures and the server subprocesses themselves live in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close

from fastapi_rooms.backends.base import room_tag
from tests.conftest import Server

WAIT = 10.0  # seconds to wait on any single event; generous so a loaded machine passes

#: Operator credentials of the test apps' REST endpoints: secure_app and redis_app take the
#: bearer token, the guide (GUIDE_ADMIN_TOKEN in conftest.guide_env) the X-Admin-Token.
ADMIN = {"Authorization": "Bearer admin-token", "X-Admin-Token": "guide-admin"}


def room_channel(prefix: str, room: str) -> str:
    """A room's backend channel: its tag keeps it on the shard of the room's keys."""
    return f"{prefix}:room:{{{room_tag(room)}}}:{room}"


# WebSocket clients -----------------------------------------------------------------------------


def open_ws(server: Server, path: str, **kwargs: Any) -> connect:
    """``connect`` to ``path`` on ``server`` (``async with`` or ``await`` it), with timeouts."""
    kwargs.setdefault("open_timeout", WAIT)
    kwargs.setdefault("close_timeout", WAIT)
    return connect(server.ws + path, **kwargs)


async def handshake_status(server: Server, path: str, **kwargs: Any) -> int:
    """The HTTP status of a handshake the server must refuse."""
    with pytest.raises(InvalidStatus) as exc:
        async with open_ws(server, path, **kwargs):
            pass
    return exc.value.response.status_code


async def recv(ws: ClientConnection, timeout: float = WAIT) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_text(ws: ClientConnection, timeout: float = WAIT) -> str:
    data = await recv(ws, timeout)
    assert isinstance(data, str), f"expected a text message, got {data!r}"
    return data


async def recv_json(ws: ClientConnection, timeout: float = WAIT) -> Any:
    return json.loads(await recv_text(ws, timeout))


async def send_json(ws: ClientConnection, data: Any) -> None:
    await ws.send(json.dumps(data))


async def next_event(
    ws: ClientConnection, type_: str | None = None, timeout: float = WAIT
) -> dict[str, Any]:
    """The next JSON event (of ``type_`` when given, skipping others)."""
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await ws.recv())
            if type_ is None or event["type"] == type_:
                return dict(event)


async def drain(
    ws: ClientConnection, limit: int = 10_000, timeout: float = WAIT
) -> tuple[list[str | bytes], Close | None]:
    """Up to ``limit`` messages until the connection closes, and the close frame received."""
    messages: list[str | bytes] = []
    for _ in range(limit + 1):
        try:
            messages.append(await asyncio.wait_for(ws.recv(), timeout))
        except ConnectionClosed as exc:
            return messages, exc.rcvd
    raise AssertionError(f"no close after {limit} messages")


async def closed_with(ws: ClientConnection) -> Close:
    """The close frame the server sends next (no message may come before it)."""
    messages, rcvd = await drain(ws, limit=0)
    assert messages == [], f"expected a close frame, got messages {messages!r}"
    assert rcvd is not None, "the connection ended without a close frame from the server"
    return rcvd


# HTTP and polling ------------------------------------------------------------------------------


def http(server: Server, timeout: float = WAIT, **kwargs: Any) -> httpx.AsyncClient:
    """``async with http(server) as client``; ``kwargs`` (``headers=ADMIN``, ``limits=``) go
    to ``httpx.AsyncClient``."""
    return httpx.AsyncClient(base_url=server.http, timeout=timeout, **kwargs)


async def until(
    probe: Callable[[], Awaitable[Any]], timeout: float = 2 * WAIT, what: str = "condition"
) -> Any:
    """Probe state in another process (no event reaches us from there) until it is truthy."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = await probe()
                if result:
                    return result
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {timeout}s") from None


async def stats(server: Server) -> dict[str, Any]:
    """The backend part of the node's ``GET /stats``."""
    async with http(server, headers=ADMIN) as client:
        response = await client.get("/stats")
    response.raise_for_status()
    return dict(response.json()["backend"])


async def wait_stats(server: Server, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The node's backend stats once ``check`` holds."""

    async def probe() -> dict[str, Any] | None:
        backend = await stats(server)
        return backend if check(backend) else None

    result: dict[str, Any] = await until(probe)
    return result


# The guide (examples/gobstopper_guide.py) ------------------------------------------------------


def unique(prefix: str) -> str:
    """A room or user name no other test uses (user names must match ``[A-Za-z0-9_]+``)."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def assert_recent(timestamp: str) -> None:
    """The guide stamps events with ``datetime.utcnow().isoformat()`` (naive UTC)."""
    stamped = datetime.fromisoformat(timestamp)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    assert abs((now - stamped).total_seconds()) < 60


async def recv_event(ws: ClientConnection) -> dict[str, Any]:
    """The next JSON event, its guide-style ``timestamp`` checked and removed."""
    event = await recv_json(ws)
    assert isinstance(event, dict), event
    assert_recent(event.pop("timestamp"))
    return event


async def join_chat(ws: ClientConnection, room: str) -> None:
    """Join ``room`` on the guide's ``/ws/chat`` handler."""
    await send_json(ws, {"type": "join_room", "room": room})
    assert await recv_json(ws) == {"type": "joined", "room": room}
