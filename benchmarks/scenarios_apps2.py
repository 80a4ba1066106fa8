"""Server apps for benchmarks/scenarios.py (S4 idle connections, S5 rooms layouts and join/leave,
S6 a stalled member). Each is an app factory, so a server process builds only the app it serves:

- ``make_bare_app`` (uvicorn ``--factory``): a bare Starlette app, ``/idle`` accepts and waits
  for the close. Nothing from fastapi_rooms is imported. S4's baseline.
- ``make_bare_rsgi_app`` (granian ``--interface rsgi --factory``): the same as a bare RSGI app
  (optional S4 case ``bare-granian-rsgi``).
- ``make_bare_send_app``: the bare app sending one frame after accept (optional S4 case
  ``bare-send-uvicorn``).
- ``make_fastapi_app``: the same on FastAPI (``@app.websocket``; optional S4 case
  ``fastapi-uvicorn``), to tell FastAPI's share from fastapi_rooms'.
- ``make_rooms_app``: fastapi_rooms' ready endpoint (``create_rooms_router(RoomManager())``,
  ``/ws``) plus ``/control`` (below). ``make_rooms_rsgi_app``:
  ``RSGIApp(app)`` (its default GC settings) of the same app.
- ``make_plain_app``: the FastAPI tutorial's ``ConnectionManager`` from fanout_apps.py (one
  room: ``for ws in members: await ws.send_text(msg)``), members at ``/members/{cid}`` (told
  ``joined``, then only read), plus ``/control``.

``/control`` is the benchmark's own connection (not a member). Commands, one reply each:

- ``burst <room> <start> <count> <size>``: ``count`` broadcasts of ``payload(seq, size)`` to
  ``room``, back to back (the plain app has one room and ignores the name);
- ``burst-rooms <prefix> <rooms> <start> <count> <size>``: for each message, one broadcast to
  each of the rooms ``<prefix>0`` .. ``<prefix><rooms-1>`` in turn (rooms app only);
- ``stats``: members, the loop's progress, the manager's counters (JSON).

A burst replies ``done <json>``: ``handed`` (hand-offs the app counted), ``seconds`` (time in the
broadcast loop) and ``changes``: each broadcast whose hand-off count differed from the previous
one (``seq``, ``handed``, ``ms`` since the burst started), which is how the benchmark sees when a
member was dropped; the rooms app also lists ``slow_consumer_closes``: each connection closed
because its outbound buffer overflowed (``seq`` being broadcast then and ``ms`` into the burst).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' parameter types at
# run time, and the WebSocket classes are imported inside the factories, not at module level.

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

JOINED = "joined"
MAX_CHANGES = 200  # hand-off changes kept per burst


class Progress:
    """What the control loop is doing: read by ``stats`` from another control connection while a
    burst is stuck (the plain loop waits on a stalled member)."""

    def __init__(self) -> None:
        self.running = False
        self.seq = -1  # the message being broadcast
        self.t0 = 0.0
        self.bursts = 0
        self.closes: list[dict[str, Any]] = []

    def snapshot(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "seq": self.seq,
            "ms_in_burst": (time.perf_counter() - self.t0) * 1000 if self.running else None,
            "bursts": self.bursts,
        }


class _SlowConsumerLog(logging.Handler):
    """Notes when fastapi_rooms closes a connection whose outbound buffer overflowed (it logs a
    warning then), with the message being broadcast at that moment."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(logging.WARNING)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if "outbound buffer overflowed" in record.getMessage():
            p = self.progress
            self.progress.closes.append(
                {
                    "seq": p.seq if p.running else None,
                    "ms": (time.perf_counter() - p.t0) * 1000 if p.running else None,
                    "message": record.getMessage(),
                }
            )


def _control_endpoint(
    broadcast: Callable[[str, str], Awaitable[int]],
    stats: Callable[[], dict[str, Any]],
    progress: Progress,
) -> Callable[[Any], Awaitable[None]]:
    """The ``/control`` handler (Starlette WebSocket) for ``broadcast(room, message)``."""
    from fanout_apps import payload
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def run(messages: Iterable[tuple[int, str, str]]) -> dict[str, Any]:
        """Broadcast each (seq, room, text); the texts are made as the loop goes, so a burst
        holds no more of them in memory than the members' buffers keep."""
        handed = 0
        last = -1
        changes: list[dict[str, Any]] = []
        closes_before = len(progress.closes)
        progress.running = True
        progress.t0 = t0 = time.perf_counter()
        try:
            for seq, room, message in messages:
                progress.seq = seq
                n = await broadcast(room, message)
                handed += n
                if n != last and len(changes) < MAX_CHANGES:
                    changes.append({"seq": seq, "room": room, "handed": n,
                                    "ms": (time.perf_counter() - t0) * 1000})  # fmt: skip
                    last = n
        finally:
            progress.running = False
            progress.bursts += 1
        return {
            "handed": handed,
            "seconds": time.perf_counter() - t0,
            "changes": changes,
            "slow_consumer_closes": progress.closes[closes_before:],
        }

    async def control(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                command = (await websocket.receive_text()).split()
                if command[0] == "burst":
                    room = command[1]
                    start, count, size = (int(x) for x in command[2:5])
                    seqs = range(start, start + count)
                    reply = await run((seq, room, payload(seq, size)) for seq in seqs)
                    await websocket.send_text("done " + json.dumps(reply))
                elif command[0] == "burst-rooms":
                    prefix = command[1]
                    rooms, start, count, size = (int(x) for x in command[2:6])
                    names = [f"{prefix}{r}" for r in range(rooms)]
                    reply = await run(
                        (seq, name, text)
                        for seq in range(start, start + count)
                        for text in (payload(seq, size),)
                        for name in names
                    )
                    await websocket.send_text("done " + json.dumps(reply))
                elif command[0] == "stats":
                    await websocket.send_text(
                        json.dumps({**stats(), "progress": progress.snapshot()})
                    )
                else:
                    await websocket.send_text(f"error unknown command {command[0]!r}")
        except WebSocketDisconnect:
            pass

    return control


# S4 baselines --------------------------------------------------------------------------------


def make_bare_app() -> Any:
    """Starlette, one WebSocket route that accepts and waits for the client to go."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    async def idle(websocket: Any) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    return Starlette(routes=[WebSocketRoute("/idle", idle)])


def make_bare_send_app() -> Any:
    """The bare Starlette app, but it sends one small text frame after accepting (optional S4
    case ``bare-send-uvicorn``): with permessage-deflate the first frame sent sets up the
    connection's compressor, which the ready endpoint's ``welcome`` does too."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    async def idle(websocket: Any) -> None:
        await websocket.accept()
        await websocket.send_text('{"type": "joined", "room": "none"}')
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    return Starlette(routes=[WebSocketRoute("/idle", idle)])


def make_fastapi_app() -> Any:
    """FastAPI, ``@app.websocket("/idle")`` that accepts and waits: what FastAPI's routing adds
    to the bare Starlette app (optional S4 case ``fastapi-uvicorn``)."""
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect

    app = FastAPI()

    @app.websocket("/idle")
    async def idle(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            return

    return app


class BareRSGIApp:
    """An RSGI app that accepts WebSockets at any path and waits for the close."""

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "ws":
            protocol.response_empty(404, [])
            return
        transport = await protocol.accept()
        while True:
            message = await transport.receive()
            if message.kind == 0:  # WebsocketMessageType.close
                return


def make_bare_rsgi_app() -> BareRSGIApp:
    return BareRSGIApp()


# fastapi_rooms ---------------------------------------------------------------------------------


def make_rooms_app() -> Any:
    """fastapi_rooms' ready endpoint at ``/ws`` (and the router's REST) plus ``/control``."""
    from fastapi import FastAPI

    from fastapi_rooms import RoomManager, create_rooms_router

    manager = RoomManager()
    progress = Progress()
    logging.getLogger("fastapi_rooms").addHandler(_SlowConsumerLog(progress))
    app = FastAPI()
    app.include_router(create_rooms_router(manager))

    def stats() -> dict[str, Any]:
        s = manager.stats()
        return {
            "members": s["connections"],
            "rooms": s["rooms"],
            **{k: s[k] for k in ("messages_delivered", "messages_dropped", "buffered")},
            "slow_consumer_closes": s["slow_consumer_closes"],
            "closes_by_code": s["closes_by_code"],
        }

    app.add_api_websocket_route(
        "/control", _control_endpoint(manager.broadcast_to_room, stats, progress)
    )
    return app


def make_rooms_rsgi_app() -> Any:
    from fastapi_rooms.rsgi import RSGIApp

    # RSGIApp's defaults (the collector tuned, as in fanout_apps.py)
    return RSGIApp(make_rooms_app())


# The plain loop ----------------------------------------------------------------------------


def make_plain_app() -> Any:
    """The FastAPI tutorial's ConnectionManager (fanout_apps.py), one room."""
    from fanout_apps import ConnectionManager
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect

    hub = ConnectionManager()
    progress = Progress()
    app = FastAPI()

    @app.websocket("/members/{cid}")
    async def member(websocket: WebSocket, cid: str) -> None:
        await hub.connect(websocket)
        await websocket.send_text(JOINED)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            hub.disconnect(websocket)

    async def broadcast(_room: str, message: str) -> int:
        return await hub.broadcast(message)

    def stats() -> dict[str, Any]:
        return {"members": len(hub.active_connections)}

    app.add_api_websocket_route("/control", _control_endpoint(broadcast, stats, progress))
    return app
