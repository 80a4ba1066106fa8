"""Server apps for S9 (many rooms on many nodes over Redis). Factories for ``uvicorn --factory``;
the Redis URL comes from ``S9_REDIS_URL``, the key prefix from ``S9_PREFIX``.

- ``make_rooms``: fastapi_rooms' ready endpoint at ``/ws`` on ``RoomManager(<redis>)``: one
  Redis channel per room, subscribed on a node while it has members there. Clients join and
  publish with the ready protocol. ``GET /s9/stats``: the manager's and backplane's counters.
- ``make_socketio``: python-socketio with ``AsyncRedisManager`` (its documented way to run
  several nodes: every emit goes to one Redis channel that every node reads and filters). A
  client emits ``join`` (room name) and ``pub`` (``{"room", "data"}``), and gets ``joined`` and
  ``m`` (the data). ``GET /s9/stats``: rooms, members and messages this node saw.
"""

# No ``from __future__ import annotations``: Starlette/FastAPI read endpoint types at run time.

import gc
import os
from typing import Any


def _redis_url() -> str:
    return os.environ.get("S9_REDIS_URL", "redis://127.0.0.1:6379/0")


def make_rooms() -> Any:
    from fastapi import FastAPI

    from fastapi_rooms import RoomManager, create_rooms_router

    options = {"node_ttl": float(os.environ["S9_NODE_TTL"])} if "S9_NODE_TTL" in os.environ else {}
    manager = RoomManager(_redis_url(), prefix=os.environ.get("S9_PREFIX", "s9"), **options)
    app = FastAPI()
    app.include_router(create_rooms_router(manager))

    @app.get("/s9/stats")
    async def stats() -> dict[str, Any]:
        s = manager.stats()
        s.pop("room_sizes", None)
        s["gc_full_collections"] = gc.get_stats()[2]["collections"]
        return s

    return app


def make_socketio() -> Any:
    import socketio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    channel = os.environ.get("S9_PREFIX", "s9") + "-socketio"
    sio = socketio.AsyncServer(
        async_mode="asgi",
        transports=["websocket"],
        client_manager=socketio.AsyncRedisManager(_redis_url(), channel=channel),
    )
    counts = {"joins": 0, "leaves": 0, "published": 0}

    @sio.on("join")
    async def join(sid: str, room: str) -> None:
        await sio.enter_room(sid, room)
        counts["joins"] += 1
        await sio.emit("joined", room, to=sid)

    @sio.on("leave")
    async def leave(sid: str, room: str) -> None:
        await sio.leave_room(sid, room)
        counts["leaves"] += 1
        await sio.emit("left", room, to=sid)

    @sio.on("pub")
    async def pub(sid: str, message: dict[str, Any]) -> None:
        counts["published"] += 1
        await sio.emit("m", message["data"], room=message["room"])

    async def stats(request: Request) -> JSONResponse:
        rooms = sio.manager.rooms.get("/", {})
        named = [r for r in rooms if r is not None and not sio.manager.is_connected(r, "/")]
        # AsyncRedisManager: one channel for every node and room
        full = gc.get_stats()[2]["collections"]
        return JSONResponse(
            {**counts, "rooms": len(named), "redis_channels": 1, "gc_full_collections": full}
        )

    other = Starlette(routes=[Route("/s9/stats", stats)])
    return socketio.ASGIApp(sio, other_asgi_app=other)
