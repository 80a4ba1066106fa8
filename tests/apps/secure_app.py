"""The ready endpoint with authentication, join authorization, origins, limits and presence.

Configured by the environment so that each test server gets the limits it tests:
``REDIS_URL`` (empty: in-process), ``ROOMS_PREFIX``, ``NODE_ID``, ``NODE_TTL``,
``MAX_CONNECTIONS``, ``MAX_CONNECTIONS_PER_IP``, ``RATE``, ``BURST``, ``IDLE_TIMEOUT``,
``PRESENCE_EVENTS`` (1/0), ``AUTH`` (1/0).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request

from fastapi_rooms import RoomManager, WebSocket, create_rooms_router
from fastapi_rooms.policy import Limits, get_token
from fastapi_rooms.rsgi import RSGIApp

USERS = {
    "alice-token": {"id": "alice", "name": "Alice"},
    "bob-token": {"id": "bob", "name": "Bob"},
    "admin-token": {"id": "admin", "name": "Admin"},
}


def _num(name: str) -> float | None:
    raw = os.environ.get(name)
    return float(raw) if raw else None


def _int(name: str) -> int | None:
    raw = os.environ.get(name)
    return int(raw) if raw else None


AUTH_DELAY = float(os.environ.get("AUTH_DELAY") or 0)


async def authenticate(websocket: WebSocket) -> dict[str, str] | None:
    if AUTH_DELAY:
        await asyncio.sleep(AUTH_DELAY)  # a hook that awaits (a database, a token service)
    token = get_token(websocket)
    return USERS.get(token) if token else None


def authorize_join(user_id: str, room: str) -> bool | str:
    if room.startswith("admin-") and user_id != "admin":
        return "only admins may join admin- rooms"
    return True


manager = RoomManager(
    os.environ.get("REDIS_URL") or None,
    prefix=os.environ.get("ROOMS_PREFIX", "secure"),
    node_id=os.environ.get("NODE_ID") or None,
    node_ttl=_num("NODE_TTL") or 30.0,
    authorize_join=authorize_join if os.environ.get("AUTH", "1") == "1" else None,
    max_rooms_per_connection=3,
    max_room_members=_int("MAX_ROOM_MEMBERS") or 4,
    presence_events=os.environ.get("PRESENCE_EVENTS", "1") == "1",
)
def require_admin(request: Request) -> None:
    """The REST endpoints: the admin's token only (``Authorization: Bearer admin-token``)."""
    if get_token(request) != "admin-token":
        raise HTTPException(401, "admin token required")


rooms = create_rooms_router(
    manager,
    rest_dependencies=[Depends(require_admin)],
    authenticate=authenticate if os.environ.get("AUTH", "1") == "1" else None,
    allowed_origins=["https://allowed.example"],
    limits=Limits(
        max_connections=_int("MAX_CONNECTIONS"),
        max_connections_per_ip=_int("MAX_CONNECTIONS_PER_IP"),
        trusted_proxies=["127.0.0.1"],
        rate=_num("RATE"),
        burst=_int("BURST") or 20,
        idle_timeout=_num("IDLE_TIMEOUT"),
    ),
)


if os.environ.get("AUTH", "1") == "1":

    @rooms.websocket("/custom", authenticate=True)
    async def custom(websocket: WebSocket) -> None:
        """A handler of the app's own behind the same hook."""
        await websocket.accept()
        user: Any = websocket.user  # type: ignore[attr-defined]
        await websocket.send_json({"user_id": websocket.user_id, "name": user["name"]})  # type: ignore[attr-defined]


app = FastAPI()
app.include_router(rooms)
rsgi_app = RSGIApp(app)
