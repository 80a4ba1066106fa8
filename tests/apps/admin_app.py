"""The rooms router with its admin page at /admin, behind a guard that takes the token from a
header or, for the browser, from the query string (``?token=t``)."""

from __future__ import annotations

from fastapi import Depends, FastAPI, HTTPException, WebSocketException
from starlette.requests import HTTPConnection

from fastapi_rooms import RoomManager, create_rooms_router
from fastapi_rooms.rsgi import RSGIApp

TOKEN = "t"


def admin(connection: HTTPConnection) -> None:
    token = connection.headers.get("x-admin-token") or connection.query_params.get("token")
    if token != TOKEN:
        if connection.scope["type"] == "websocket":
            raise WebSocketException(code=1008, reason="admin token required")
        raise HTTPException(401, "admin token required")


manager = RoomManager()
rooms = create_rooms_router(manager, rest_dependencies=[Depends(admin)], admin_url="/admin")
app = FastAPI()
app.include_router(rooms)
rsgi_app = RSGIApp(app)
