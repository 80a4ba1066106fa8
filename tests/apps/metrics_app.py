"""The rooms router with Prometheus metrics at /metrics (REST open: a test app), rooms
``history:{name}`` keeping 10 messages, and a handler of the app's own at /echo."""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from fastapi_rooms import RoomManager, WebSocket, create_rooms_router
from fastapi_rooms.rsgi import RSGIApp

manager = RoomManager()
rooms = create_rooms_router(
    manager, insecure_rest=True, metrics_url="/metrics", metrics_registry=CollectorRegistry()
)
rooms.namespace("history:{name}", history_size=10)


@rooms.websocket("/echo")
async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    async for message in websocket:
        await websocket.send_text(str(message.data))


app = FastAPI()
app.include_router(rooms)
rsgi_app = RSGIApp(app)
