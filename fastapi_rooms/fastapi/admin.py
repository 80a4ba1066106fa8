"""The admin page: a live view of this node, its rooms, presence, rates and backplane.

Opt-in (``create_rooms_router(admin_url="/admin")``) and behind the REST endpoints' guard:
it reveals room names and members. The page is static; it opens ``{admin_url}/live``, a
WebSocket that sends a snapshot every ``interval`` seconds, and draws the rates itself.
Browsers cannot put headers on a WebSocket handshake, so the page passes its own query string
on (``/admin?token=...``): a guard that accepts a token there, or a cookie, works for both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, params
from starlette.responses import HTMLResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..manager import RoomManager
from ..policy import _header, origin_allowed
from .dependencies import manager_for

__all__ = ["add_admin_page", "snapshot"]

_log = logging.getLogger("fastapi_rooms")
_PAGE = Path(__file__).resolve().parent.parent / "static" / "admin.html"
_TOP_ROOMS = 20  # the biggest rooms are listed; the count says how many there are
_PRESENCE_ROOMS = 5  # their presence (every node, with a backend) is read for the biggest


async def snapshot(manager: RoomManager) -> dict[str, Any]:
    """What the page shows, now: counters (the page turns them into rates), the biggest
    rooms with their members on every node, and the backplane's state."""
    stats = manager.stats()
    sizes = sorted(stats["room_sizes"].items(), key=lambda item: (-item[1], item[0]))
    rooms: list[dict[str, Any]] = []
    nodes = {manager.node_id}
    for index, (room, members) in enumerate(sizes[:_TOP_ROOMS]):
        entry: dict[str, Any] = {"room": room, "members_here": members}
        if index < _PRESENCE_ROOMS:
            users = await manager.presence(room)
            connections = [c for user in users for c in user["connections"]]
            entry["members"] = len(connections)
            entry["users"] = len([u for u in users if u["user_id"] is not None])
            entry["nodes"] = sorted({str(c.get("node")) for c in connections})
            nodes.update(entry["nodes"])
        rooms.append(entry)
    backend = stats["backend"]
    return {
        "node": manager.node_id,
        "time": time.time(),
        "ready": manager.not_ready() or "ready",
        "connections": stats["connections"],
        "rooms": stats["rooms"],
        "members": sum(stats["room_sizes"].values()),
        "published": manager._published,
        "delivered": stats["messages_delivered"],
        "dropped": stats["messages_dropped"],
        "slow_consumer_closes": stats["slow_consumer_closes"],
        "resync_closes": stats["resync_closes"],
        "top_rooms": rooms,
        "nodes": sorted(nodes),
        "backend": {
            key: backend.get(key)
            for key in (
                "type",
                "connected",
                "in_sync",
                "reconnects",
                "deaf_events",
                "silent_seconds",
                "pending",
                "publish_dropped",
                "last_error",
            )
        },
    }


def add_admin_page(
    router: APIRouter,
    manager: RoomManager,
    url: str,
    guard: list[params.Depends],
    interval: float = 1.0,
) -> None:
    """``GET url``: the page; ``url/live``: its WebSocket of snapshots. Both behind ``guard``."""

    async def page() -> HTMLResponse:
        return HTMLResponse(_PAGE.read_text())

    async def live(websocket: WebSocket) -> None:
        # Same site only, whatever allowed_origins says: a cookie guard must not let another
        # site's page read this (cross-site WebSocket hijacking).
        if not origin_allowed(websocket, None):
            _log.warning("refused an admin WebSocket from origin %r", _header(websocket, b"origin"))
            await websocket.close(1008, "origin not allowed")
            return
        serving = manager_for(websocket.scope, manager)
        await websocket.accept()
        try:
            while True:
                await websocket.send_json(await snapshot(serving))
                await asyncio.sleep(interval)  # the page's refresh period
        except (WebSocketDisconnect, RuntimeError) as exc:
            _log.debug("admin page connection ended: %r", exc)

    router.add_api_route(
        url, page, methods=["GET"], dependencies=guard, include_in_schema=False,
        name="fastapi_rooms_admin",
    )  # fmt: skip
    router.add_api_websocket_route(
        url.rstrip("/") + "/live", live, dependencies=guard, name="fastapi_rooms_admin_live"
    )
