"""Apps for the API regressions of issue 11 (tests/test_api_regressions.py).

- ``app``: a Gobstopper port on a default router (``@rooms.websocket("/ws")``), a FastAPI
  tutorial endpoint, a superset check, ``manager.connect()``, integer room names.
- ``override_app``: ``dependency_overrides[get_manager]`` set before start-up.
- ``mounted_app`` / ``mounted_fixed_app``: a rooms sub-app under ``app.mount``, without and
  with the parent running its lifespan.
- ``starlette_app``: the router mounted in a plain Starlette app.
- ``late_app``: a handler decorated after ``app.include_router(rooms)``; an app route at the
  ready endpoint's path registered after the include.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException
from fastapi import WebSocket as FastAPIWebSocket
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import Mount
from starlette.websockets import WebSocketDisconnect

from fastapi_rooms import RoomManager, WebSocket, create_rooms_router, get_manager
from fastapi_rooms.rsgi import RSGIApp

Manager = Annotated[RoomManager, Depends(get_manager)]


_ended: dict[str, asyncio.Event] = {}


def ended(name: str) -> asyncio.Event:
    """Set when the handler ``name`` has returned (after what the library did at the end)."""
    return _ended.setdefault(name, asyncio.Event())


def state_of(manager: RoomManager) -> dict[str, Any]:
    return {"connections": len(manager.connections), "rooms": sorted(manager.rooms)}


# The main app --------------------------------------------------------------------------------

manager = RoomManager()
rooms = create_rooms_router(manager, insecure_rest=True)  # the tests call REST directly
seen: dict[str, Any] = {}


@rooms.websocket("/ws")  # Gobstopper's guide opens with this path: it must win
async def gobstopper_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("user handler")


def same_object(websocket: FastAPIWebSocket) -> FastAPIWebSocket:
    seen["dependency"] = websocket
    return websocket


@rooms.websocket("/superset/{item}")
async def superset(
    websocket: WebSocket, item: int, dep: Annotated[FastAPIWebSocket, Depends(same_object)]
) -> None:
    await websocket.accept()
    await websocket.send_json(
        {
            "same_object": dep is websocket and seen.pop("dependency") is websocket,
            "header": websocket.headers.get("x-probe"),
            "query": websocket.query_params.get("q"),
            "cookie": websocket.cookies.get("c"),
            "url_path": websocket.url.path,
            "path_params": websocket.path_params,
            "item": item,
            "client_host": websocket.client.host if websocket.client else None,
            "scope_path": websocket.scope.path,
            "state": type(websocket.state).__name__,
        }
    )
    payload = await websocket.receive_json()
    await websocket.send_json({"echo": payload})
    texts = [text async for text in websocket.iter_text()]
    seen["iter_text"] = texts


@rooms.websocket("/connect/{room}")
async def connect(websocket: WebSocket, room: str, manager: Manager) -> None:
    try:
        async with manager.connect(websocket) as conn:
            await conn.join(room)
            await websocket.send_text(conn.id)
            async for message in websocket:
                await conn.broadcast(room, message.data)
    finally:
        ended("connect").set()


@rooms.websocket("/numbered/{room_id}")
async def numbered(websocket: WebSocket, room_id: int, manager: Manager) -> None:
    async with manager.connect(websocket) as conn:
        await conn.join(room_id)  # type: ignore[arg-type]  # what FastAPI users write
        await websocket.send_text("joined")
        async for _ in websocket:
            pass


app = FastAPI()
app.include_router(rooms)


@app.websocket("/tutorial/{client_id}")
async def tutorial(websocket: FastAPIWebSocket, client_id: str, manager: Manager) -> None:
    """FastAPI's tutorial style: no remove_connection anywhere."""
    await websocket.accept()
    manager.add_connection(client_id, websocket)
    manager.join_room(client_id, "tutorial")
    try:
        while True:
            data = await websocket.receive_text()
            await manager.broadcast_to_room("tutorial", f"{client_id}: {data}")
    except WebSocketDisconnect:
        ended("tutorial").set()  # the library removed it before receive_text() raised


@app.get("/test/connections")
async def connections(manager: Manager) -> dict[str, Any]:
    return state_of(manager)


@app.get("/test/ended/{name}")
async def handler_ended(name: str, manager: Manager, timeout: float = 10.0) -> dict[str, Any]:
    """What the manager holds once handler ``name`` has ended (twice if two did)."""
    await asyncio.wait_for(ended(name).wait(), timeout)
    ended(name).clear()
    return state_of(manager)


@app.get("/test/iter-text")
async def iter_text() -> Any:
    return seen.get("iter_text")


rsgi_app = RSGIApp(app)

# dependency_overrides[get_manager] ----------------------------------------------------------

override_manager = RoomManager()
override_app = FastAPI()
override_app.include_router(create_rooms_router(RoomManager(), insecure_rest=True))
override_app.dependency_overrides[get_manager] = lambda: override_manager


@override_app.on_event("startup")
async def start_override() -> None:
    await override_manager.start()


@override_app.get("/test/override")
async def override_state() -> dict[str, Any]:
    return {"rooms": sorted(override_manager.rooms)}


override_rsgi_app = RSGIApp(override_app)

# A mounted sub-app ----------------------------------------------------------------------------


def _sub() -> FastAPI:
    sub = FastAPI()
    sub.include_router(create_rooms_router(insecure_rest=True))

    @sub.get("/count")
    async def count(manager: Manager) -> dict[str, int]:
        return {"connections": len(manager.connections)}

    return sub


mounted_app = FastAPI()
mounted_app.mount("/sub", _sub())
mounted_rsgi_app = RSGIApp(mounted_app)

_fixed_sub = _sub()
mounted_fixed_app = FastAPI(lifespan=_fixed_sub.router.lifespan_context)
mounted_fixed_app.mount("/sub", _fixed_sub)
mounted_fixed_rsgi_app = RSGIApp(mounted_fixed_app)

# A plain Starlette app --------------------------------------------------------------------------

_star_rooms = create_rooms_router(insecure_rest=True)


@_star_rooms.websocket("/echo/{word}")
async def echo(websocket: WebSocket, word: str) -> None:
    await websocket.accept()
    await websocket.send_text(word)


starlette_app = Starlette(
    routes=[Mount("/rt", app=_star_rooms)], lifespan=_star_rooms.lifespan_context
)
starlette_rsgi_app = RSGIApp(starlette_app)

# Registration order --------------------------------------------------------------------------

_late_rooms = create_rooms_router(insecure_rest=True)
late_app = FastAPI()
late_app.include_router(_late_rooms)


@_late_rooms.websocket("/late/<int:n>")  # decorated after include_router
async def late(websocket: WebSocket, n: int) -> None:
    await websocket.accept()
    await websocket.send_text(f"late {n}")


@late_app.websocket("/ws")  # the app's own route at the ready endpoint's path, after include
async def app_ws(websocket: FastAPIWebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("app handler " + uuid.uuid4().hex[:4])


late_rsgi_app = RSGIApp(late_app)

# Secure defaults -------------------------------------------------------------------------------

default_app = FastAPI()
default_app.include_router(create_rooms_router(close_unmatched=False))
default_rsgi_app = RSGIApp(default_app)

# Router dependencies on WebSocket routes ----------------------------------------------------


def require_key(connection: HTTPConnection) -> None:
    """Written against HTTPConnection: FastAPI runs it for HTTP and WebSocket routes alike."""
    if connection.headers.get("x-key") != "k":
        raise HTTPException(401, "x-key required")


_guarded = create_rooms_router(dependencies=[Depends(require_key)])


@_guarded.websocket("/guarded")
async def guarded(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("let in")


guarded_app = FastAPI()
guarded_app.include_router(_guarded)
guarded_rsgi_app = RSGIApp(guarded_app)
