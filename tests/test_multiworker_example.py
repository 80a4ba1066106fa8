"""examples/multiworker under ``uvicorn --workers 3`` with the suite's Redis: one chat."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import ROOT
from tests.helpers import http, next_event, open_ws

pytestmark = pytest.mark.anyio


async def test_rooms_and_announcements_span_uvicorn_workers(
    serve: Callable[..., Any], redis_url: str, redis_prefix: str
) -> None:
    server = serve(
        "uvicorn",
        "examples.multiworker.app:app",
        {"PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "ROOMS_PREFIX": redis_prefix},
        "--workers", "3",
    )  # fmt: skip
    # Workers start one after another; the first one up would take every connection.
    async with asyncio.timeout(30):
        while True:  # no other signal than the workers' own startup lines
            if server.log().count("Application startup complete") >= 3:
                break
            await asyncio.sleep(0.1)

    async def member() -> tuple[ClientConnection, str]:
        ws = await stack.enter_async_context(open_ws(server, "/api/ws"))
        welcome = await next_event(ws, "welcome")
        await ws.send(json.dumps({"type": "join", "room": "lobby"}))
        await next_event(ws, "joined")
        return ws, welcome["node"]

    async with AsyncExitStack() as stack:
        members: list[tuple[ClientConnection, str]] = []
        # The kernel spreads connections over the workers; open them in concurrent batches
        # (simultaneous handshakes wake several workers) until two or more are used.
        for _ in range(8):
            members += await asyncio.gather(*(member() for _ in range(8)))
            if len({node for _, node in members}) >= 2:
                break
        nodes = {node for _, node in members}
        assert len(nodes) >= 2, f"every connection landed on one worker: {nodes}"

        sender = members[0][0]
        await sender.send(json.dumps({"type": "publish", "room": "lobby", "data": "hello all"}))
        for ws, node in members:
            event = await next_event(ws, "message")
            assert event["data"] == "hello all", node

        async with http(server) as client:
            response = await client.post("/api/announce", json={"text": "from one worker"})
        assert response.status_code == 200
        for ws, node in members:
            event = await next_event(ws, "announcement")
            assert event["text"] == "from one worker", node
