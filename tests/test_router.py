"""Router, dependency injection, REST endpoints and OpenAPI (TestClient: one loop for all)."""

from __future__ import annotations

import json
import uuid

import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi import WebSocket as FastAPIWebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from fastapi_rooms import RoomManager, RoomsRouter, WebSocket, create_rooms_router, get_manager
from fastapi_rooms.compat.gobstopper import convert_path


def make_app(**router_kwargs: object) -> tuple[FastAPI, RoomsRouter]:
    app = FastAPI()
    rooms = create_rooms_router(**router_kwargs)  # type: ignore[arg-type]

    @rooms.websocket("/ws/room/<room_id>")
    async def room(
        websocket: WebSocket, room_id: str, manager: RoomManager = Depends(get_manager)
    ) -> None:
        await websocket.accept()
        cid = uuid.uuid4().hex
        manager.add_connection(cid, websocket)
        manager.join_room(cid, room_id)
        await websocket.send_text(cid)
        async for message in websocket:
            await manager.broadcast_to_room(room_id, message.data)

    @app.websocket("/native")
    async def native(ws: FastAPIWebSocket, manager: RoomManager = Depends(get_manager)) -> None:
        await ws.accept()
        conn = manager.add_connection("native", ws)
        manager.join_room("native", "lobby")
        await conn.send_text("registered")
        try:
            while True:
                await ws.receive_text()
        except WebSocketDisconnect:
            manager.remove_connection("native")

    @app.get("/count")
    async def count(manager: RoomManager = Depends(get_manager)) -> dict[str, int]:
        return {"connections": len(manager.connections), "rooms": len(manager.rooms)}

    app.include_router(rooms)
    return app, rooms


def test_get_manager_in_http_rooms_handler_and_native_websocket() -> None:
    app, rooms = make_app(insecure_rest=True)
    with TestClient(app) as client:
        assert client.get("/count").json() == {"connections": 0, "rooms": 0}
        with client.websocket_connect("/ws/room/a") as a, client.websocket_connect("/native") as n:
            a.receive_text()
            assert n.receive_text() == "registered"
            assert client.get("/count").json() == {"connections": 2, "rooms": 2}
            # A REST broadcast reaches the native FastAPI WebSocket through the manager.
            r = client.post("/rooms/lobby/broadcast", json={"message": {"hello": "native"}})
            assert r.json() == {"status": "sent", "room_connections": 1}
            assert json.loads(n.receive_text()) == {"hello": "native"}
            a.send_text("ping")
            assert a.receive_text() == "ping"
        assert rooms.manager.stats()["connections"] == 0


def test_dependency_override_replaces_the_manager() -> None:
    app, rooms = make_app()
    other = RoomManager()
    app.dependency_overrides[get_manager] = lambda: other
    with TestClient(app) as client:
        with client.websocket_connect("/ws/room/x") as ws:
            ws.receive_text()
            assert len(other.connections) == 1
            assert len(rooms.manager.connections) == 0
        assert client.get("/count").json() == {"connections": 0, "rooms": 0}


def test_get_manager_without_rooms_router_says_what_to_do() -> None:
    app = FastAPI()

    @app.get("/m")
    async def m(manager: RoomManager = Depends(get_manager)) -> dict[str, int]:
        return {}

    with TestClient(app, raise_server_exceptions=True) as client, pytest.raises(
        RuntimeError, match="lifespan did not run"
    ):
        client.get("/m")


async def api_key(x_api_key: str = Header(default="")) -> None:
    if x_api_key != "secret":
        raise HTTPException(401, "bad key")


def guarded_app(**router_kwargs: object) -> FastAPI:
    """A rooms router at /rt (``router_kwargs`` add its guards) with an HTTP route and a handler
    that sends its room's name."""
    app = FastAPI()
    rooms = create_rooms_router(prefix="/rt", **router_kwargs)  # type: ignore[arg-type]

    @rooms.get("/extra")
    async def extra() -> dict[str, int]:
        return {"ok": 1}

    @rooms.websocket("/ws/room/<room_id>")
    async def room(websocket: WebSocket, room_id: str) -> None:
        await websocket.accept()
        await websocket.send_text(room_id)

    app.include_router(rooms)
    return app


def test_router_dependencies_apply_to_every_route_websockets_included() -> None:
    """As in any APIRouter: REST, HTTP routes, handlers and the ready endpoint."""
    app = guarded_app(dependencies=[Depends(api_key)])
    key = {"x-api-key": "secret"}
    with TestClient(app) as client:
        assert client.get("/rt/extra").status_code == 401
        assert client.get("/rt/extra", headers=key).json() == {"ok": 1}
        for path in ("/rt/ws", "/rt/ws/room/r"):
            with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect(path):
                pass
            assert getattr(refused.value, "status_code", None) == 401  # denied by the dependency
        with client.websocket_connect("/rt/ws", headers=key) as ready:
            assert "welcome" in ready.receive_text()
        with client.websocket_connect("/rt/ws/room/r", headers=key) as ws:
            assert ws.receive_text() == "r"
        assert client.post("/rt/broadcast", json={"message": "x"}).status_code == 401
        ok = client.post("/rt/broadcast", json={"message": "x"}, headers=key)
        assert ok.json() == {"status": "broadcasted", "connections": 0}


def test_rest_dependencies_protect_rest_but_not_websockets() -> None:
    app = guarded_app(rest_dependencies=[Depends(api_key)])
    with TestClient(app) as client:
        assert client.get("/rt/extra").json() == {"ok": 1}  # the app's own route: open
        with client.websocket_connect("/rt/ws") as ready:
            assert "welcome" in ready.receive_text()
        assert client.post("/rt/broadcast", json={"message": "x"}).status_code == 401
        assert client.get("/rt/stats").status_code == 401
        ok = client.post("/rt/broadcast", json={"message": "x"}, headers={"x-api-key": "secret"})
        assert ok.json() == {"status": "broadcasted", "connections": 0}
        with client.websocket_connect("/rt/ws/room/r") as ws:
            assert ws.receive_text() == "r"


def test_rest_endpoints_validate_and_report() -> None:
    app, rooms = make_app(insecure_rest=True)
    with TestClient(app) as client:
        assert client.post("/broadcast", json={}).status_code == 422
        assert client.post("/broadcast", content=b"not json").status_code == 422
        assert client.get("/rooms/none").status_code == 404
        assert client.post("/connections/nobody/send", json={"message": "x"}).status_code == 404
        with client.websocket_connect("/ws/room/r1") as ws:
            cid = ws.receive_text()
            assert client.get("/rooms").json() == {"rooms": [{"room": "r1", "connections": 1}]}
            detail = client.get("/rooms/r1").json()
            presence = [{"user_id": None, "connections": [
                {"connection_id": cid, "meta": None, "node": rooms.manager.node_id}]}]  # fmt: skip
            assert detail == {
                "room": "r1", "connections": 1, "connection_ids": [cid], "presence": presence
            }  # fmt: skip
            sent = client.post(f"/connections/{cid}/send", json={"message": [1, "two"]})
            assert sent.json() == {"status": "sent", "connection_id": cid}
            assert ws.receive_text() == '[1,"two"]'
            # A string goes out unchanged, exclude skips the given connection.
            r = client.post("/broadcast", json={"message": "hi", "exclude": [cid]})
            assert r.json() == {"status": "broadcasted", "connections": 0}
            r = client.post("/broadcast", json={"message": "hi"})
            assert r.json() == {"status": "broadcasted", "connections": 1}
            assert ws.receive_text() == "hi"
            big = "x" * (1024 * 1024 + 1)
            assert client.post("/broadcast", json={"message": big}).status_code == 413
        stats = client.get("/stats").json()
        assert stats["connections"] == 0
        assert stats["messages_delivered"] == 2


def test_openapi_lists_the_rest_models() -> None:
    app, _ = make_app(prefix="/api")
    with TestClient(app) as client:
        spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/api/broadcast",
        "/api/rooms/{room}/broadcast",
        "/api/connections/{connection_id}/send",
        "/api/rooms",
        "/api/rooms/{room}",
        "/api/stats",
    ):
        assert path in paths, path
    schemas = spec["components"]["schemas"]
    assert {"MessageBody", "BroadcastResult", "RoomBroadcastResult", "RoomDetail"} <= set(schemas)


def test_unmatched_websocket_path_closes_with_1001() -> None:
    app, _ = make_app()
    with TestClient(app) as client, client.websocket_connect("/nowhere") as ws:
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_text()
        assert info.value.code == 1001
        assert client.get("/nowhere").status_code == 404


def test_two_routers_must_share_one_manager() -> None:
    app = FastAPI()
    app.include_router(create_rooms_router(prefix="/a"))
    app.include_router(create_rooms_router(prefix="/b"))
    with pytest.raises(RuntimeError, match="different RoomManagers"), TestClient(app):
        pass
    shared = RoomManager()
    app = FastAPI()
    app.include_router(create_rooms_router(shared, prefix="/a"))
    app.include_router(create_rooms_router(shared, prefix="/b"))
    with TestClient(app) as client:
        assert client.get("/a/stats").json() == client.get("/b/stats").json()


@pytest.mark.parametrize(
    ("path", "expected", "types"),
    [
        ("/ws/<name>", "/ws/{name}", {"name": str}),
        ("/ws/<int:n>/x", "/ws/{n:int}/x", {"n": int}),
        ("/f/<float:v>/<path:rest>", "/f/{v:float}/{rest:path}", {"v": float, "rest": str}),
        ("/ws/{room}", "/ws/{room}", {"room": str}),
        ("/plain", "/plain", {}),
    ],
)
def test_convert_path(path: str, expected: str, types: dict[str, type]) -> None:
    assert convert_path(path) == (expected, types)


def test_convert_path_rejects_unknown_converters() -> None:
    with pytest.raises(ValueError, match="unknown path converter 'date'"):
        convert_path("/ws/<date:d>")


def test_handler_must_take_path_params() -> None:
    rooms = create_rooms_router()
    with pytest.raises(TypeError, match=r"does not take path parameter\(s\) \['room'\]"):

        @rooms.websocket("/ws/<room>")
        async def handler(websocket: WebSocket) -> None: ...


def test_handler_with_var_kwargs_gets_converted_params() -> None:
    app = FastAPI()
    rooms = create_rooms_router(ready_endpoint=None, rest=False)

    @rooms.websocket("/up/<int:upload_id>/<name>")
    async def handler(websocket: WebSocket, **params: object) -> None:
        await websocket.accept()
        await websocket.send_text(json.dumps({k: [v, type(v).__name__] for k, v in params.items()}))

    app.include_router(rooms)
    with TestClient(app) as client, client.websocket_connect("/up/7/doc") as ws:
        assert json.loads(ws.receive_text()) == {"upload_id": [7, "int"], "name": ["doc", "str"]}
