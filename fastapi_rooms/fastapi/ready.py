"""The small JSON protocol of the ready-made WebSocket endpoint (``/ws`` by default).

Client to server: ``{"type": "join", "room": R}``, ``{"type": "leave", "room": R}``,
``{"type": "publish", "room": R, "data": ANY, "exclude_self": false}``, ``{"type": "ping"}``.
Server to client: ``welcome`` (with ``connection_id`` and ``node``), ``joined``, ``left``,
``message`` (``room``, ``from``, ``data``), ``pong`` and ``error`` (``code``, ``message``).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

from ..encoding import json_dumps
from ..errors import CloseCode, ConnectionClosed, JoinRefused, MessageTooBig
from ..manager import RoomManager
from ..policy import Limits
from ..websocket import WebSocket

__all__ = ["ClientMessage", "serve_protocol"]

_log = logging.getLogger("fastapi_rooms")

RoomName = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Join(_Strict):
    type: Literal["join"]
    room: RoomName
    meta: JsonValue = None  # shown in the room's presence


class Leave(_Strict):
    type: Literal["leave"]
    room: RoomName


class Publish(_Strict):
    type: Literal["publish"]
    room: RoomName
    data: JsonValue
    exclude_self: bool = False


class Ping(_Strict):
    type: Literal["ping"]


ClientMessage = Annotated[Join | Leave | Publish | Ping, Field(discriminator="type")]
_client_message: TypeAdapter[Join | Leave | Publish | Ping] = TypeAdapter(ClientMessage)


def _error(code: str, message: str) -> str:
    return json_dumps({"type": "error", "code": code, "message": message})


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "message"
    return f"{where}: {first['msg']}"


async def serve_protocol(
    websocket: WebSocket, manager: RoomManager, limits: Limits | None = None
) -> None:
    """Run the ready endpoint's protocol on an accepted-or-not WebSocket until it closes."""
    limits = limits if limits is not None else Limits()
    await websocket.accept()
    connection_id = uuid.uuid4().hex
    manager.add_connection(connection_id, websocket, user_id=getattr(websocket, "user_id", None))
    bucket = limits.rate_limiter()
    refused = 0  # messages refused in a row by the rate limit
    try:
        welcome: dict[str, Any] = {
            "type": "welcome",
            "connection_id": connection_id,
            "node": manager.node_id,
        }
        if getattr(websocket, "user_id", None) is not None:
            welcome["user_id"] = websocket.user_id
        await websocket.send_text(json_dumps(welcome))
        idle_timeout = limits.idle_timeout
        while True:  # inline, not an async generator: a frame less per idle connection
            if idle_timeout is None:
                message = await websocket.receive()  # no wait_for: one frame less per wait
            else:
                try:
                    message = await asyncio.wait_for(websocket.receive(), idle_timeout)
                except asyncio.TimeoutError:
                    await websocket.close(CloseCode.GOING_AWAY, "idle timeout")
                    break
            if message.type == "close":
                break
            if bucket is not None:
                if not bucket.allow():
                    refused += 1
                    if refused > limits.burst:
                        await websocket.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                        break
                    await websocket.send_text(
                        _error(
                            "rate_limited",
                            f"more than {limits.rate:g} messages a second: message dropped",
                        )
                    )
                    continue
                refused = 0
            if message.type != "text":
                await websocket.send_text(
                    _error("invalid_message", "expected a JSON text message, got binary")
                )
                continue
            try:
                request = _client_message.validate_json(message.data)  # type: ignore[arg-type]
            except ValidationError as exc:
                await websocket.send_text(_error("invalid_message", _describe(exc)))
                continue
            await _handle(request, websocket, connection_id, manager)
            # Hold nothing of the last message while idle: it may be large.
            request = message = None  # type: ignore[assignment]
    except ConnectionClosed:
        pass
    finally:
        manager.remove_connection(connection_id)


async def _handle(
    request: Join | Leave | Publish | Ping,
    websocket: WebSocket,
    connection_id: str,
    manager: RoomManager,
) -> None:
    if isinstance(request, Join):
        try:
            # "joined" then means messages from every node reach this connection.
            await manager.join(connection_id, request.room, meta=request.meta)
        except JoinRefused as exc:
            await websocket.send_text(_error(exc.code, exc.reason))
            return
        except KeyError:  # closed meanwhile (a slow consumer cut off): nothing to answer
            return
        except MessageTooBig as exc:
            await websocket.send_text(_error("message_too_big", f"meta too big: {exc}"))
            return
        except ValueError as exc:
            await websocket.send_text(_error("invalid_message", f"meta: {exc}"))
            return
        await websocket.send_text(json_dumps({"type": "joined", "room": request.room}))
    elif isinstance(request, Leave):
        manager.leave_room(connection_id, request.room)
        await websocket.send_text(json_dumps({"type": "left", "room": request.room}))
    elif isinstance(request, Publish):
        if request.room not in manager.get_connection_rooms(connection_id):
            await websocket.send_text(
                _error("not_in_room", f"join room {request.room!r} before publishing to it")
            )
            return
        event: dict[str, Any] = {
            "type": "message",
            "room": request.room,
            "from": connection_id,
            "data": request.data,
        }
        try:
            await manager.broadcast_to_room(
                request.room, event, exclude=connection_id if request.exclude_self else None
            )
        except MessageTooBig as exc:
            await websocket.send_text(_error("message_too_big", str(exc)))
        except ValueError as exc:  # NaN, Infinity: no browser could parse the message
            await websocket.send_text(_error("invalid_message", f"data: {exc}"))
    else:
        await websocket.send_text('{"type":"pong"}')
