"""What the oldest supported FastAPI must do (dev.py's floor job runs this file there too)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import fastapi
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from websockets.asyncio.client import connect

from fastapi_rooms import WebSocket, create_rooms_router

from .conftest import Server

pytestmark = pytest.mark.anyio


def test_handlers_decorated_after_include_router_are_served() -> None:
    rooms = create_rooms_router()
    app = FastAPI()
    app.include_router(rooms)

    @rooms.websocket("/late/<int:n>")
    async def late(websocket: WebSocket, n: int) -> None:
        await websocket.accept()
        await websocket.send_text(f"late {n}")

    with TestClient(app) as client, client.websocket_connect("/late/5") as ws:
        assert ws.receive_text() == "late 5", fastapi.__version__


async def test_late_handler_and_the_apps_own_ws_route_on_a_real_server(
    serve: Callable[..., Server],
) -> None:
    server = serve("uvicorn", "api_app:late_app")
    async with connect(f"{server.ws}/late/3") as ws:
        assert await asyncio.wait_for(ws.recv(), 10) == "late 3"
    async with connect(f"{server.ws}/ws") as ws:
        assert str(await asyncio.wait_for(ws.recv(), 10)).startswith("app handler")
