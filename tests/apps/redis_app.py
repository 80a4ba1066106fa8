"""The rooms router on a Redis backend; one process of a multi-node test.

Environment: ``REDIS_URL``, ``ROOMS_PREFIX`` (unique per test run), ``NODE_ID``, and
``NODE_TTL`` (seconds; a heartbeat is a third of it), ``DEAF_AFTER`` and ``IDLE_TIMEOUT``
(seconds).
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI

from fastapi_rooms import RoomManager, WebSocket, create_rooms_router, get_manager
from fastapi_rooms.policy import Limits
from fastapi_rooms.rsgi import RSGIApp

manager = RoomManager(
    os.environ["REDIS_URL"],
    prefix=os.environ["ROOMS_PREFIX"],
    node_id=os.environ.get("NODE_ID") or None,
    node_ttl=float(os.environ.get("NODE_TTL") or 30),
    deaf_after=float(os.environ.get("DEAF_AFTER") or 3),
)
idle = os.environ.get("IDLE_TIMEOUT")
rooms = create_rooms_router(  # test app: REST open
    manager, insecure_rest=True, limits=Limits(idle_timeout=float(idle) if idle else None)
)
rooms.namespace("history:{name}", history_size=5, history_ttl=60)  # kept in Redis
rooms.namespace("race:{name}", history_size=1000, history_ttl=600)


@rooms.websocket("/joiner/{room}")
async def joiner(
    websocket: WebSocket, room: str, manager: Annotated[RoomManager, Depends(get_manager)]
) -> None:
    """Says "joined" once messages from every node reach it: no sync() in app code."""
    async with manager.connect(websocket) as conn:
        await conn.join(room)
        await websocket.send_text("joined")
        async for _ in websocket:
            pass


app = FastAPI()
app.include_router(rooms)
rsgi_app = RSGIApp(app)
