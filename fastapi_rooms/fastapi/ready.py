"""The ready-made WebSocket endpoint (``/ws`` by default): serves the JSON protocol whose
events are defined in ``fastapi_rooms.protocol``, under the rules of each room's namespace."""

from __future__ import annotations

import asyncio
import logging
import uuid

from pydantic import ValidationError

from ..errors import BackendUnavailable, CloseCode, ConnectionClosed, JoinRefused, MessageTooBig
from ..manager import RoomManager
from ..policy import Limits, RateLimiter
from ..protocol import (
    Join,
    Joined,
    Leave,
    Left,
    Ping,
    Pong,
    Publish,
    Welcome,
    client_event,
    describe,
    error_details,
    event_json,
)
from ..protocol import error_json as _error
from ..websocket import WebSocket

__all__ = ["serve_protocol"]

_log = logging.getLogger("fastapi_rooms")
_PONG = event_json(Pong(type="pong"))


async def serve_protocol(
    websocket: WebSocket, manager: RoomManager, limits: Limits | None = None
) -> None:
    """Run the ready endpoint's protocol on an accepted-or-not WebSocket until it closes."""
    limits = limits if limits is not None else Limits()
    await websocket.accept()
    websocket._speaks_protocol = True  # it understands a "shutdown" event (drain)
    connection_id = uuid.uuid4().hex
    manager.add_connection(connection_id, websocket, user_id=getattr(websocket, "user_id", None))
    bucket = limits.rate_limiter()
    refused = 0  # messages refused in a row by the rate limit
    user_id = getattr(websocket, "user_id", None)
    rates: dict[str, RateLimiter] = {}  # namespace pattern -> this connection's publish limiter
    try:
        welcome = Welcome(
            type="welcome", connection_id=connection_id, node=manager.node_id, user_id=user_id
        )
        await websocket.send_text(event_json(welcome))
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
                request = client_event.validate_json(message.data)  # type: ignore[arg-type]
            except ValidationError as exc:
                await websocket.send_text(_invalid(exc))
                continue
            if isinstance(request, Publish):
                await _publish(request, websocket, connection_id, user_id, manager, rates)
            else:
                await _handle(request, websocket, connection_id, manager)
            # Hold nothing of the last message while idle: it may be large.
            request = message = None  # type: ignore[assignment]
    except ConnectionClosed:
        pass
    finally:
        manager.remove_connection(connection_id)


def _invalid(exc: ValidationError, *prefix: str | int) -> str:
    errors = error_details(exc, prefix)
    return _error("invalid_message", describe(errors), errors)


async def _handle(
    request: Join | Leave | Ping,
    websocket: WebSocket,
    connection_id: str,
    manager: RoomManager,
) -> None:
    if isinstance(request, Join):
        since = request.since
        try:
            # "joined" then means messages from every node reach this connection.
            caught = await manager.join_recovering(
                connection_id,
                request.room,
                meta=request.meta,
                since=None if since is None else (since.offset, since.epoch),
            )
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
        if caught is None:
            if websocket.closed:  # the room's history was unavailable: it reconnects
                return
            joined = Joined(type="joined", room=request.room)  # a room without history
            if since is not None:
                joined.recovered = False
            await websocket.send_text(event_json(joined))
            return
        position, frames, recovered = caught
        joined = Joined(
            type="joined",
            room=request.room,
            offset=position.offset,
            epoch=position.epoch,
            recovered=None if since is None else recovered,
        )
        # joined, then the missed messages, ahead of any live one; the next request waits
        await websocket.outbound.replay([event_json(joined), *frames])
    elif isinstance(request, Leave):
        manager.leave_room(connection_id, request.room)
        await websocket.send_text(event_json(Left(type="left", room=request.room)))
    else:
        await websocket.send_text(_PONG)


async def _publish(
    request: Publish,
    websocket: WebSocket,
    connection_id: str,
    user_id: str | None,
    manager: RoomManager,
    rates: dict[str, RateLimiter],
) -> None:
    """A client's publish, under its room's namespace: membership, who may publish, the
    namespace's rate, then its ``message`` type. A refusal answers the sender only."""
    room = request.room
    if connection_id not in manager.rooms.get(room, ()):
        await websocket.send_text(
            _error("not_in_room", f"join room {room!r} before publishing to it")
        )
        return
    try:
        namespace = manager.namespaces.require(room)
    except JoinRefused as exc:  # declared strict after this connection joined
        await websocket.send_text(_error("publish_forbidden", exc.reason))
        return
    refusal = namespace.publish_refusal(user_id, room)
    if refusal is not None:
        await websocket.send_text(_error("publish_forbidden", refusal))
        return
    if namespace.rate is not None:
        limiter = rates.get(namespace.pattern)
        if limiter is None:
            limiter = rates[namespace.pattern] = RateLimiter(namespace.rate, namespace.burst)
        if not limiter.allow():
            await websocket.send_text(
                _error(
                    "rate_limited",
                    f"more than {namespace.rate:g} messages a second to rooms "
                    f"{namespace.pattern!r}: message dropped",
                )
            )
            return
    data = request.data
    if namespace.adapter is not None:
        try:
            data = namespace.validate(data)
        except ValidationError as exc:
            await websocket.send_text(_invalid(exc, "data"))
            return
    try:
        await manager._publish(
            room, data, connection_id, connection_id if request.exclude_self else None, namespace
        )
    except MessageTooBig as exc:
        await websocket.send_text(_error("message_too_big", str(exc)))
    except BackendUnavailable as exc:  # nobody got it: the client may send it again
        await websocket.send_text(_error("unavailable", str(exc)))
    except ValueError as exc:  # NaN, Infinity: no browser could parse the message
        await websocket.send_text(_error("invalid_message", f"data: {exc}"))
