"""A small chat on fastapi-rooms with the in-process backend.

Run from the repository root: ``python3 dev.py demo`` (or ``uvicorn examples.chat.app:app``),
then open http://127.0.0.1:8000 in two browser windows.

The page (static/index.html and static/app.js, plain JavaScript) speaks the ready endpoint's
JSON protocol on ``/api/ws``: join and leave rooms, publish to a room. The rooms router also
serves the REST endpoints under ``/api`` (``GET /api/rooms``, ``POST /api/broadcast``, ...),
for operators only: they need the header ``X-Admin-Token: $CHAT_ADMIN_TOKEN`` (a random token,
logged at start-up, when the variable is unset). ``GET /api/room-list`` (the page's room list)
and ``POST /api/announce`` are the app's own endpoints, open on purpose, reaching the rooms
through ``Depends(get_manager)``.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from fastapi_rooms import RoomManager, create_rooms_router, get_manager

STATIC = Path(__file__).resolve().parent / "static"
ADMIN_TOKEN = os.environ.get("CHAT_ADMIN_TOKEN") or secrets.token_urlsafe(16)
if "CHAT_ADMIN_TOKEN" not in os.environ:
    logging.getLogger("uvicorn.error").warning("REST admin token: %s", ADMIN_TOKEN)


def require_admin(x_admin_token: Annotated[str, Header()] = "") -> None:
    """The rooms REST endpoints publish and reveal state: operators only."""
    if not secrets.compare_digest(x_admin_token, ADMIN_TOKEN):
        raise HTTPException(401, "X-Admin-Token required")


class Announcement(BaseModel):
    text: str = Field(min_length=1, max_length=2000, description="Shown to every client.")


class AnnounceResult(BaseModel):
    delivered: int = Field(description="Connections the announcement was handed to.")


async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


async def room_list(manager: Annotated[RoomManager, Depends(get_manager)]) -> list[dict[str, object]]:
    """Room names and sizes on this node, for the page (the app chooses to show them)."""
    return [{"room": room, "connections": len(ids)} for room, ids in manager.rooms.items()]


async def announce(
    body: Announcement, manager: Annotated[RoomManager, Depends(get_manager)]
) -> AnnounceResult:
    """Send an announcement to every connected client, in a room or not."""
    delivered = await manager.broadcast_to_all({"type": "announcement", "text": body.text})
    return AnnounceResult(delivered=delivered)


def build_app(manager: RoomManager | None = None) -> FastAPI:
    """The chat app; ``manager`` defaults to a new in-process one that keeps each room's last
    500 messages for an hour, so a page that reconnects misses nothing (examples/multiworker
    passes a Redis-backed one that keeps them in Redis)."""
    if manager is None:
        manager = RoomManager(history_size=500, history_ttl=3600)
    app = FastAPI(title="fastapi-rooms chat example")
    # ready endpoint /api/ws, REST under /api for operators
    rooms = create_rooms_router(manager, prefix="/api", rest_dependencies=[Depends(require_admin)])
    app.include_router(rooms)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.get("/", include_in_schema=False)(index)
    app.get("/api/room-list", tags=["chat"])(room_list)
    app.post("/api/announce", tags=["chat"])(announce)
    return app


app = build_app()
