"""Server apps for benchmarks/fanout.py: one room, three ways to broadcast to it.

Every app has the same shape, so only the broadcast differs:

- ``/members/{cid}``: a member connects, joins the one room, is told ``joined``, then only reads.
- ``/control``: the benchmark's own connection (not a member). It sends ``burst <start> <count>
  <size>``; the server runs ``count`` broadcasts back to back, server-side, and answers
  ``done <handed> <seconds>`` (hand-offs counted by the app, time spent in the loop).

Variants (``python -m uvicorn fanout_apps:<variant>_app``; the Granian variants of
benchmarks/fanout.py serve ``rooms_app`` with ``granian --interface asgi`` and ``rooms_rsgi_app``
with ``granian --interface rsgi``):

- ``plain_app``: the FastAPI tutorial's ConnectionManager (and Gobstopper's pattern), one room:
  ``for ws in members: await ws.send_text(msg)``.
- ``gather_app``: the same, with ``await asyncio.gather(*(ws.send_text(msg) for ws in members))``.
- ``rooms_app``: fastapi_rooms: ``create_rooms_router``, handlers ``add_connection`` +
  ``join_room``, broadcasts ``await manager.broadcast_to_room(room, msg)``.
- ``make_rooms_redis_app`` (an app factory: ``uvicorn --factory``): the same rooms app with
  ``RoomManager(os.environ["FANOUT_REDIS_URL"], prefix=os.environ["FANOUT_REDIS_PREFIX"])``.
  Several processes serve it at once (``rooms-redis-2w`` in benchmarks/fanout.py): a broadcast
  reaches this process's members directly and the other processes' through Redis. A member is
  told ``joined`` only after ``await manager.sync(room=...)``, once this process's subscription
  to the room is live in Redis.
- ``make_broadcaster_app`` (``uvicorn --factory``): a FastAPI chat on encode/broadcaster with its
  memory backend (``Broadcast("memory://")``), as in broadcaster's README: each member's handler
  runs a receiver task and a sender that iterates its own subscription
  (``async with broadcast.subscribe(ROOM)``: a queue and a task per member); a broadcast is
  ``await broadcast.publish(ROOM, msg)``. Imports broadcaster only when the factory is called.

The peers that are not FastAPI apps (a raw picows server, python-socketio) and the wire format
all of them share (``payload``, ``JOINED``) are in peer_apps.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from peer_apps import JOINED, ROOM, payload
from pydantic import BaseModel, Field

from fastapi_rooms import RoomManager, create_rooms_router
from fastapi_rooms.rsgi import RSGIApp

__all__ = ["JOINED", "ROOM", "payload"]  # the shared wire format, defined in peer_apps.py


Broadcast = Callable[[str], Awaitable[int]]


def _add_control(
    app: FastAPI, broadcast: Broadcast, stats: Callable[[], dict[str, Any]], per_pass: bool = False
) -> None:
    """``per_pass``: one broadcast per event-loop pass (``await asyncio.sleep(0)`` after each),
    as when messages come from many client tasks rather than one burst from one task."""

    @app.websocket("/control")
    async def control(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                command = (await websocket.receive_text()).split()
                if command[0] == "burst":
                    start, count, size = (int(x) for x in command[1:4])
                    messages = [payload(start + i, size) for i in range(count)]
                    handed = 0
                    t0 = time.perf_counter()
                    for message in messages:
                        handed += await broadcast(message)
                        if per_pass:
                            await asyncio.sleep(0)
                    elapsed = time.perf_counter() - t0
                    await websocket.send_text(f"done {handed} {elapsed:.6f}")
                elif command[0] == "stats":
                    await websocket.send_text(json.dumps(stats()))
                else:
                    await websocket.send_text(f"error unknown command {command[0]!r}")
        except WebSocketDisconnect:
            pass


# Plain: the FastAPI tutorial's ConnectionManager, with one room -----------------------------


class ConnectionManager:
    """FastAPI tutorial's manager (docs: "Handling disconnections and multiple clients")."""

    def __init__(self, concurrent: bool = False) -> None:
        self.active_connections: list[WebSocket] = []
        self.concurrent = concurrent

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.active_connections.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        if websocket in self.active_connections:
            self.active_connections.remove(websocket)

    async def broadcast(self, message: str) -> int:
        if self.concurrent:
            results = await asyncio.gather(
                *(ws.send_text(message) for ws in self.active_connections),
                return_exceptions=True,
            )
            return sum(1 for r in results if r is None)
        sent = 0
        for connection in self.active_connections:
            await connection.send_text(message)
            sent += 1
        return sent


def _plain(concurrent: bool, per_pass: bool = False) -> FastAPI:
    app = FastAPI()
    hub = ConnectionManager(concurrent)

    @app.websocket("/members/{cid}")
    async def member(websocket: WebSocket, cid: str) -> None:
        await hub.connect(websocket)
        await websocket.send_text(JOINED)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            hub.disconnect(websocket)

    _add_control(app, hub.broadcast, lambda: {"members": len(hub.active_connections)}, per_pass)
    return app


# Rooms: fastapi_rooms --------------------------------------------------------------------------


class Line(BaseModel):
    """The namespace model of ``rooms_model_app``: the payload as a validated field."""

    text: str = Field(max_length=1_000_000)


def _rooms(
    backend: str | None = None,
    prefix: str = "fastapi_rooms",
    publish: str | None = None,
    metrics: bool = False,
    per_pass: bool = False,
) -> FastAPI:
    """``publish``: None broadcasts the payload as it is; "event" sends it as the ready
    protocol's ``message`` event (``manager.publish``), "model" the same with a namespace
    model on the room (validated, then delivered), "history" the same in a room keeping its
    last 1000 messages (each event carries its offset); the wire of the first two is
    ``peer_apps.published(msg)``."""
    manager = RoomManager(backend, prefix=prefix)
    if publish == "model":
        manager.namespace(ROOM, message=Line)
    elif publish == "history":
        manager.namespace(ROOM, history_size=1000, history_ttl=None if backend is None else 600)
    extra: dict[str, Any] = {}
    if metrics:
        from prometheus_client import CollectorRegistry

        extra = {"metrics_url": "/metrics", "metrics_registry": CollectorRegistry()}
    # benchmark: GET /stats read openly
    router = create_rooms_router(manager, insecure_rest=True, **extra)

    @router.websocket("/members/{cid}")
    async def member(websocket: Any, cid: str) -> None:
        await websocket.accept()
        manager.add_connection(cid, websocket)
        manager.join_room(cid, ROOM)
        try:
            if backend is not None:
                # The room is complete only once this process receives the room's messages
                # from the other processes: wait until its subscription is live in Redis.
                await manager.sync(10.0, room=ROOM)
            await websocket.send_text(JOINED)
            async for _ in websocket:
                pass
        finally:
            manager.remove_connection(cid)

    async def broadcast(message: str) -> int:
        if publish is not None:
            return await manager.publish(ROOM, {"text": message})
        return await manager.broadcast_to_room(ROOM, message)

    app = FastAPI()
    app.include_router(router)

    def stats() -> dict[str, Any]:
        s = manager.stats()
        return {
            "members": len(manager.get_room_connections(ROOM)),
            **{k: s[k] for k in ("messages_delivered", "messages_dropped", "buffered")},
            "slow_consumer_closes": s["slow_consumer_closes"],
            "backend": s["backend"],
        }

    _add_control(app, broadcast, stats, per_pass)
    return app


plain_app = _plain(concurrent=False)
gather_app = _plain(concurrent=True)
rooms_app = _rooms()
rooms_publish_app = _rooms(publish="event")
rooms_model_app = _rooms(publish="model")
rooms_history_app = _rooms(publish="history")
rooms_metrics_app = _rooms(metrics=True)
# "As a new user runs it": one broadcast per event-loop pass (no burst to cork).
plain_pass_app = _plain(concurrent=False, per_pass=True)
rooms_pass_app = _rooms(per_pass=True)
# RSGIApp(app) as a new user writes it: its defaults tune the collector (gc.freeze() after
# start-up, first threshold 50,000: fewer and shorter full GCs, see docs/granian.md); they are
# process-wide, and each server is its own process. The second opts out: Python's settings.
rooms_rsgi_app = RSGIApp(rooms_app)
rooms_rsgi_default_gc_app = RSGIApp(rooms_app, freeze_gc=False, gc_threshold=None)


def make_rooms_redis_app() -> FastAPI:
    """The rooms app over Redis (``uvicorn --factory fanout_apps:make_rooms_redis_app``).

    ``FANOUT_REDIS_URL`` and ``FANOUT_REDIS_PREFIX`` (unique per benchmark run, so runs never
    share channels or directory keys) come from benchmarks/fanout.py.
    """
    return _rooms(os.environ["FANOUT_REDIS_URL"], os.environ["FANOUT_REDIS_PREFIX"])


def make_rooms_redis_publish_app() -> FastAPI:
    """``make_rooms_redis_app`` with ``manager.publish`` (the ready protocol's message event)."""
    return _rooms(os.environ["FANOUT_REDIS_URL"], os.environ["FANOUT_REDIS_PREFIX"], "event")


def make_rooms_redis_history_app() -> FastAPI:
    """``make_rooms_redis_publish_app`` in a room whose last 1000 messages Redis keeps."""
    return _rooms(os.environ["FANOUT_REDIS_URL"], os.environ["FANOUT_REDIS_PREFIX"], "history")


# encode/broadcaster, memory backend ------------------------------------------------------------


def make_broadcaster_app() -> FastAPI:
    """FastAPI chat on encode/broadcaster: ``uvicorn --factory fanout_apps:make_broadcaster_app``.

    broadcaster's README example with the memory backend: per member a receiver task and a
    sender iterating its subscription. A member is told ``joined`` once its subscription exists.
    ``handed`` counts the live subscriptions at each publish (``publish`` only queues the
    message; broadcaster's listener task then puts it on every subscriber's queue, and each
    member's sender sends it).
    """
    from contextlib import asynccontextmanager

    import anyio
    from broadcaster import Broadcast

    broadcast = Broadcast("memory://")
    subscribed = 0
    sent = 0

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await broadcast.connect()
        try:
            yield
        finally:
            await broadcast.disconnect()

    app = FastAPI(lifespan=lifespan)

    async def receiver(websocket: WebSocket) -> None:
        async for _ in websocket.iter_text():
            pass

    async def sender(websocket: WebSocket) -> None:
        nonlocal subscribed, sent
        async with broadcast.subscribe(channel=ROOM) as subscriber:
            subscribed += 1
            try:
                await websocket.send_text(JOINED)
                async for event in subscriber:
                    await websocket.send_text(event.message)
                    sent += 1
            finally:
                subscribed -= 1

    @app.websocket("/members/{cid}")
    async def member(websocket: WebSocket, cid: str) -> None:
        await websocket.accept()
        async with anyio.create_task_group() as task_group:
            # run until the first is complete (broadcaster's README)
            async def run_receiver() -> None:
                await receiver(websocket)
                task_group.cancel_scope.cancel()

            task_group.start_soon(run_receiver)
            await sender(websocket)

    async def publish(message: str) -> int:
        await broadcast.publish(channel=ROOM, message=message)
        return subscribed

    _add_control(app, publish, lambda: {"members": subscribed, "messages_delivered": sent})
    return app
