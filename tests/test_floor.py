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


def test_namespaces_and_the_asyncapi_document_on_the_oldest_pydantic() -> None:
    """JSON Schema generation and validation through TypeAdapter as the floor Pydantic has it."""
    from pydantic import BaseModel

    class Line(BaseModel):
        text: str

    rooms = create_rooms_router(insecure_rest=True)
    rooms.namespace("chat:{name}", message=Line)

    @rooms.websocket("/echo/{n}", receives=Line, sends=Line)
    async def echo(websocket: WebSocket, n: int) -> None:
        await websocket.accept()

    app = FastAPI()
    app.include_router(rooms)
    with TestClient(app) as client:
        document = client.get("/asyncapi.json").json()
        with client.websocket_connect("/ws") as ws:
            assert ws.receive_json()["type"] == "welcome"
            ws.send_json({"type": "join", "room": "chat:a"})
            assert ws.receive_json()["type"] == "joined"
            ws.send_json({"type": "publish", "room": "chat:a", "data": {"txt": 1}})
            assert ws.receive_json()["errors"][0]["loc"] == ["data", "text"]
            ws.send_json({"type": "publish", "room": "chat:a", "data": {"text": "hi"}})
            assert ws.receive_json()["data"] == {"text": "hi"}
    assert document["asyncapi"] == "3.0.0"
    assert document["components"]["schemas"]["Line"]["required"] == ["text"]
    assert "publish.chat" in document["channels"]["rooms"]["messages"]
    parameters = document["channels"]["echo"]["parameters"]
    assert parameters == {"n": {"description": "Path parameter (int)."}}
