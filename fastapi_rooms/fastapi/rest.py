"""The REST endpoints of a rooms router: broadcast and send by HTTP, list rooms, stats.

They publish and reveal state, so they refuse anonymous calls: an app protects them the
FastAPI way (``dependencies=``), or opens them with ``insecure_rest=True`` (development).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, params
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, JsonValue

from ..errors import MessageTooBig
from ..manager import RoomManager
from .dependencies import get_manager

__all__ = ["add_rest_endpoints", "rest_guard"]

_log = logging.getLogger("fastapi_rooms")

Manager = Annotated[RoomManager, Depends(get_manager)]

_UNPROTECTED = (
    "the rooms REST endpoints publish and reveal state, so they refuse calls until the app "
    "protects them where the router is made: create_rooms_router(dependencies=[Depends(auth)]) "
    "or rest_dependencies=[...] (dependencies given to include_router are not seen here); "
    "insecure_rest=True opens them, for development"
)


def _drained(task: asyncio.Task[int]) -> None:
    """Log a drain that failed (the manager keeps the task)."""
    if not task.cancelled() and task.exception() is not None:
        _log.error("draining failed: %r", task.exception())


def _refuse_unprotected() -> None:
    """Stands in for the authentication the app did not give these endpoints."""
    raise HTTPException(status_code=403, detail=_UNPROTECTED)


# Models --------------------------------------------------------------------------------


class DrainBody(BaseModel):
    grace_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="Then what is still open is closed."
    )
    spread_seconds: float = Field(
        default=5.0, ge=0, le=600, description="Clients reconnect after a random delay up to this."
    )


class DrainResult(BaseModel):
    status: Literal["draining"] = "draining"
    connections: int = Field(description="Connections open on this node when it began.")


class MessageBody(BaseModel):
    """A string reaches clients unchanged as one text frame; other JSON values JSON-encoded."""

    message: JsonValue = Field(description="Text sent as is, or any JSON value sent JSON-encoded.")
    exclude: list[str] = Field(default_factory=list, description="Connection ids to skip.")


class SendBody(BaseModel):
    """A string reaches the client unchanged as one text frame; other JSON values JSON-encoded."""

    message: JsonValue = Field(description="Text sent as is, or any JSON value sent JSON-encoded.")


class BroadcastResult(BaseModel):
    status: Literal["broadcasted"] = "broadcasted"
    connections: int = Field(
        description="Connections on this node the message was handed to (with a backend, "
        "other nodes deliver to theirs and are not counted)."
    )


class RoomBroadcastResult(BaseModel):
    status: Literal["sent"] = "sent"
    room_connections: int = Field(
        description="Members on this node the message was handed to (with a backend, "
        "members on other nodes are not counted)."
    )


class SendResult(BaseModel):
    status: Literal["sent"] = "sent"
    connection_id: str


class RoomSummary(BaseModel):
    room: str
    connections: int


class RoomList(BaseModel):
    rooms: list[RoomSummary]


class PresenceConnection(BaseModel):
    connection_id: str
    meta: JsonValue = Field(default=None, description="What the connection gave at join.")
    node: str | None = Field(default=None, description="The process holding the connection.")


class PresenceEntry(BaseModel):
    user_id: str | None = Field(description="None for a connection without a user.")
    connections: list[PresenceConnection]


class RoomDetail(BaseModel):
    room: str
    connections: int = Field(description="Members on this node.")
    connection_ids: list[str] = Field(description="Members on this node.")
    presence: list[PresenceEntry] = Field(
        default_factory=list, description="Members on every node, grouped by user."
    )


class RoomHistory(BaseModel):
    room: str
    offset: int = Field(description="The room's latest offset (0 before any message).")
    epoch: str = Field(description="Changes whenever the room's history was lost.")
    complete: bool = Field(
        description="False when some messages after `since` are no longer kept."
    )
    messages: list[dict[str, Any]] = Field(description="`message` events, oldest first.")


class UserSendResult(BaseModel):
    status: Literal["sent"] = "sent"
    user_id: str



# Endpoints ----------------------------------------------------------------------------------------


def rest_guard(
    router: APIRouter, insecure: bool, dependencies: list[params.Depends]
) -> list[params.Depends]:
    """The dependencies of a route that publishes or reveals state: the app's own, or a
    refusal of every call when the app gave none (unless ``insecure``)."""
    protected = insecure or bool(dependencies) or bool(router.dependencies)
    return [*dependencies] if protected else [Depends(_refuse_unprotected)]


def add_rest_endpoints(
    router: APIRouter, *, insecure: bool, dependencies: list[params.Depends]
) -> list[str]:
    """Add the REST endpoints to ``router``; returns them as ``"METHOD path"`` lines.

    They refuse every call (403) unless a dependency protects them (``dependencies`` or the
    router's own), or ``insecure`` (development).
    """
    deps = rest_guard(router, insecure, dependencies)
    tags: list[Any] = list(router.tags) or ["rooms"]

    @contextmanager
    def refused_as_http() -> Iterator[None]:
        """413 for a message over the size limit, 422 for other refused input."""
        try:
            yield
        except MessageTooBig as exc:
            raise HTTPException(status_code=413, detail=str(exc)) from None
        except ValueError as exc:  # e.g. too many excluded ids for the backend's envelope
            raise HTTPException(status_code=422, detail=str(exc)) from None

    @router.post("/broadcast", response_model=BroadcastResult, dependencies=deps, tags=tags)
    async def broadcast(body: MessageBody, manager: Manager) -> BroadcastResult:
        """Send a message to every connection."""
        with refused_as_http():
            n = await manager.broadcast_to_all(body.message, exclude=body.exclude or None)
        return BroadcastResult(connections=n)

    @router.post(
        "/rooms/{room}/broadcast",
        response_model=RoomBroadcastResult,
        dependencies=deps,
        tags=tags,
    )
    async def broadcast_room(room: str, body: MessageBody, manager: Manager) -> RoomBroadcastResult:
        """Send a message to every member of a room."""
        with refused_as_http():
            n = await manager.broadcast_to_room(
                room, body.message, exclude=body.exclude or None
            )
        return RoomBroadcastResult(room_connections=n)

    @router.post(
        "/connections/{connection_id}/send",
        response_model=SendResult,
        dependencies=deps,
        tags=tags,
        responses={404: {"description": "No such connection"}},
    )
    async def send_to_connection(
        connection_id: str, body: SendBody, manager: Manager
    ) -> SendResult:
        """Send a message to one connection; 404 when it is not connected."""
        with refused_as_http():
            sent = await manager.send_to(connection_id, body.message)
        if not sent:
            raise HTTPException(404, detail=f"connection {connection_id!r} is not connected")
        return SendResult(connection_id=connection_id)

    @router.get("/rooms", response_model=RoomList, dependencies=deps, tags=tags)
    async def list_rooms(manager: Manager) -> RoomList:
        """Rooms that have members, with their sizes."""
        return RoomList(
            rooms=[
                RoomSummary(room=r, connections=len(ids)) for r, ids in manager.rooms.items()
            ]
        )

    @router.get(
        "/rooms/{room}",
        response_model=RoomDetail,
        dependencies=deps,
        tags=tags,
        responses={404: {"description": "The room has no members"}},
    )
    async def get_room(room: str, manager: Manager) -> RoomDetail:
        """One room's members here and its presence on every node; 404 when it has none."""
        ids = manager.get_room_connections(room)
        presence = await manager.presence(room)
        if not ids and not presence:
            raise HTTPException(404, detail=f"room {room!r} has no members")
        return RoomDetail(
            room=room,
            connections=len(ids),
            connection_ids=sorted(ids),
            presence=[PresenceEntry.model_validate(entry) for entry in presence],
        )

    @router.get(
        "/rooms/{room}/history",
        response_model=RoomHistory,
        dependencies=deps,
        tags=tags,
        responses={404: {"description": "The room keeps no history"}},
    )
    async def room_history(
        room: str,
        manager: Manager,
        since: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        epoch: Annotated[str | None, Query(max_length=64)] = None,
    ) -> RoomHistory:
        """A room's kept messages after offset ``since`` (of ``epoch``, default the current
        one; rooms with history only)."""
        try:
            page = await manager.history(room, since=since, limit=limit, epoch=epoch)
        except LookupError as exc:
            raise HTTPException(404, detail=str(exc)) from None
        return RoomHistory(
            room=room,
            offset=page.position.offset,
            epoch=page.position.epoch,
            complete=page.complete,
            messages=[json.loads(frame) for frame in page.frames],
        )

    @router.post(
        "/users/{user_id}/send",
        response_model=UserSendResult,
        dependencies=deps,
        tags=tags,
        responses={404: {"description": "The user has no connection"}},
    )
    async def send_to_user(user_id: str, body: SendBody, manager: Manager) -> UserSendResult:
        """Send a message to every connection of a user; 404 when none is connected."""
        with refused_as_http():
            sent = await manager.send_to_user(user_id, body.message)
        if not sent:
            raise HTTPException(404, detail=f"user {user_id!r} has no connection")
        return UserSendResult(user_id=user_id)

    @router.get("/stats", dependencies=deps, tags=tags)
    async def stats(manager: Manager) -> dict[str, Any]:
        """Connection, room, delivery and backend counters."""
        return manager.stats()

    @router.post("/drain", dependencies=deps, tags=tags, status_code=202)
    async def drain(manager: Manager, body: DrainBody | None = None) -> DrainResult:
        """Start draining this node (a Kubernetes ``preStop`` hook calls this before SIGTERM):
        readiness fails, clients are told to reconnect elsewhere, the rest closed after the
        grace. Answers at once; calling it again changes nothing."""
        body = body or DrainBody()
        open_now = manager.stats()["connections"]
        if not manager.draining:
            task = manager.start_drain(body.grace_seconds, body.spread_seconds)
            task.add_done_callback(_drained)
        return DrainResult(connections=open_now)

    ours = {broadcast, broadcast_room, send_to_connection, send_to_user}
    ours |= {list_rooms, get_room, room_history, stats, drain}
    return [
        f"{method} {route.path}"
        for route in router.routes
        if isinstance(route, APIRoute) and route.endpoint in ours
        for method in sorted(route.methods or ())
    ]
