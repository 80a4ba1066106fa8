"""Server apps for S8 (connection scale). Each is a factory, so a server process builds only
the app it serves; every app has ``POST /s8/broadcast`` (the body is the text to send to every
connection; the reply says how many it was handed to and how long the call took).

- ``make_bare``: a bare Starlette app, the baseline: ``/ws`` accepts and keeps the socket in
  a set; a broadcast is the tutorial's plain loop (``for ws in members: await ws.send_text``).
- ``make_ready``: fastapi_rooms' ready endpoint at ``/ws`` (the client joins room ``s8``);
  a broadcast is ``manager.publish("s8", text)`` (the protocol's ``message`` event).
- ``make_gobstopper``: a Gobstopper-style handler ``/members/{cid}`` (``add_connection``,
  ``join_room``, then reads until the client leaves); ``manager.broadcast_to_room``.
- ``make_socketio``: python-socketio (``AsyncServer(async_mode="asgi")``, websocket
  transport); a client emits ``join``, a broadcast is ``sio.emit("m", text, room="s8")``.
- ``make_ready_rsgi`` / ``make_bare_rsgi``: the ready app as ``RSGIApp(app)`` with no tuning,
  and a bare RSGI app (accept, wait for the close; a plain loop of ``send_str``), for
  ``granian --interface rsgi``.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' types at run time.

import time
from typing import Any

ROOM = "s8"


def _reply(handed: int, t0: float) -> dict[str, Any]:
    return {"handed": handed, "seconds": time.perf_counter() - t0}


def make_bare() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    members: set[WebSocket] = set()

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        members.add(websocket)
        try:
            while True:
                await websocket.receive_text()
        except WebSocketDisconnect:
            pass
        finally:
            members.discard(websocket)

    async def broadcast(request: Request) -> JSONResponse:
        text = (await request.body()).decode()
        t0 = time.perf_counter()
        handed = 0
        for member in list(members):
            try:
                await member.send_text(text)
                handed += 1
            except Exception:  # a member that left meanwhile: counted as not handed
                members.discard(member)
        return JSONResponse(_reply(handed, t0))

    return Starlette(routes=[WebSocketRoute("/ws", ws), Route("/s8/broadcast", broadcast,
                                                               methods=["POST"])])  # fmt: skip


def _rooms_app(gobstopper: bool) -> Any:
    from fastapi import FastAPI, Request

    from fastapi_rooms import RoomManager, WebSocket, create_rooms_router

    manager = RoomManager()
    rooms = create_rooms_router(manager, ready_endpoint=None if gobstopper else "/ws")

    if gobstopper:

        @rooms.websocket("/members/{cid}")
        async def member(websocket: WebSocket, cid: str) -> None:
            await websocket.accept()
            manager.add_connection(cid, websocket)
            manager.join_room(cid, ROOM)
            try:
                await websocket.send_text("joined")
                async for _ in websocket:
                    pass
            finally:
                manager.remove_connection(cid)

    app = FastAPI()
    app.include_router(rooms)

    @app.post("/s8/broadcast")
    async def broadcast(request: Request) -> dict[str, Any]:
        text = (await request.body()).decode()
        t0 = time.perf_counter()
        if gobstopper:
            handed = await manager.broadcast_to_room(ROOM, text)
        else:
            handed = await manager.publish(ROOM, text)
        return _reply(handed, t0)

    return app


def make_ready() -> Any:
    return _rooms_app(gobstopper=False)


def make_gobstopper() -> Any:
    return _rooms_app(gobstopper=True)


def make_ready_rsgi() -> Any:
    from fastapi_rooms.rsgi import RSGIApp

    return RSGIApp(make_ready())  # untuned, as a new user writes it


def make_socketio() -> Any:
    import socketio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"])
    members: set[str] = set()

    @sio.on("join")
    async def join(sid: str, data: Any = None) -> None:
        await sio.enter_room(sid, ROOM)
        members.add(sid)
        await sio.emit("joined", to=sid)

    @sio.on("disconnect")
    async def disconnect(sid: str, *args: Any) -> None:
        members.discard(sid)

    async def broadcast(request: Request) -> JSONResponse:
        text = (await request.body()).decode()
        t0 = time.perf_counter()
        await sio.emit("m", text, room=ROOM)
        return JSONResponse(_reply(len(members), t0))

    other = Starlette(routes=[Route("/s8/broadcast", broadcast, methods=["POST"])])
    return socketio.ASGIApp(sio, other_asgi_app=other)


class _BareRSGI:
    """A bare RSGI app: WebSockets accepted and kept; ``POST /s8/broadcast`` a plain loop."""

    def __init__(self) -> None:
        self.members: set[Any] = set()

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto == "ws":
            transport = await protocol.accept()
            self.members.add(transport)
            try:
                while True:
                    message = await transport.receive()
                    if message.kind == 0:  # close
                        break
            finally:
                self.members.discard(transport)
                protocol.close()
            return
        body = await protocol()
        t0 = time.perf_counter()
        handed = 0
        text = body.decode()
        for member in list(self.members):
            try:
                await member.send_str(text)
                handed += 1
            except Exception:
                self.members.discard(member)
        import json

        protocol.response_str(200, [("content-type", "application/json")],
                              json.dumps(_reply(handed, t0)))  # fmt: skip


def make_bare_rsgi() -> Any:
    return _BareRSGI()
