"""Regressions of the API review (issue 11), each over real servers, both where it applies.

Every test here failed before the change it names.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from .conftest import Server, start_server

pytestmark = pytest.mark.anyio

WAIT = 10.0


def target(kind: str, name: str) -> str:
    """``api_app:<name>`` for uvicorn, its RSGIApp for granian."""
    return f"api_app:{name}" if kind == "uvicorn" else f"api_app:{name.replace('app', 'rsgi_app')}"


@pytest.fixture(scope="module")
def api(server_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(server_kind, target(server_kind, "app"), tmp_path_factory.mktemp("api"))
    try:
        yield server
    finally:
        server.stop()


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), WAIT)


async def test_a_handler_at_the_ready_endpoints_path_wins(api: Server) -> None:
    """Gobstopper's ``@app.websocket("/ws")`` ported onto a default router."""
    async with connect(f"{api.ws}/ws") as ws:
        assert await recv(ws) == "user handler"


async def test_the_websocket_is_starlettes_with_gobstoppers_surface(api: Server) -> None:
    url = f"{api.ws}/superset/7?q=query"
    headers = {"x-probe": "probe", "cookie": "c=cookie"}
    async with connect(url, additional_headers=headers) as ws:
        seen = json.loads(await recv(ws))
        assert seen == {
            "same_object": True,
            "header": "probe",
            "query": "query",
            "cookie": "cookie",
            "url_path": "/superset/7",
            "path_params": {"item": "7"},  # Starlette's, as the path converter gives it
            "item": 7,
            "client_host": "127.0.0.1",
            "scope_path": "/superset/7",
            "state": "State",
        }
        await ws.send(json.dumps({"a": [1, 2]}))
        assert json.loads(await recv(ws)) == {"echo": {"a": [1, 2]}}
        await ws.send("one")
        await ws.send("two")
    async with httpx.AsyncClient(base_url=api.http, timeout=WAIT) as http:
        texts: list[str] | None = None
        for _ in range(100):  # the handler stores them once iter_text() has ended
            texts = (await http.get("/test/iter-text")).json()
            if texts is not None:
                break
            await asyncio.sleep(0.05)
        assert texts == ["one", "two"]


async def test_a_tutorial_endpoints_connection_leaves_when_the_client_does(api: Server) -> None:
    """``@app.websocket`` + ``add_connection`` + ``receive_text()``, no remove_connection."""
    async with httpx.AsyncClient(base_url=api.http, timeout=WAIT) as http:
        async with connect(f"{api.ws}/tutorial/alice") as alice:
            await alice.send("hi")
            assert await recv(alice) == "alice: hi"
            state = (await http.get("/test/connections")).json()
            assert state == {"connections": 1, "rooms": ["tutorial"]}
        state = (await http.get("/test/ended/tutorial")).json()
        assert state == {"connections": 0, "rooms": []}


async def test_manager_connect_joins_and_always_cleans_up(api: Server) -> None:
    async with httpx.AsyncClient(base_url=api.http, timeout=WAIT) as http:
        async with connect(f"{api.ws}/connect/c1") as a, connect(f"{api.ws}/connect/c1") as b:
            a_id, b_id = await recv(a), await recv(b)
            assert a_id != b_id
            await a.send("hello")
            assert await recv(b) == "hello" and await recv(a) == "hello"
            await a.close()
            await http.get("/test/ended/connect")
        state = (await http.get("/test/ended/connect")).json()
        assert state == {"connections": 0, "rooms": []}


async def test_integer_room_names_are_the_rest_endpoints_rooms(api: Server) -> None:
    """``room_id: int`` in the handler and ``/rooms/42/broadcast`` reach one room."""
    async with connect(f"{api.ws}/numbered/42") as ws:
        assert await recv(ws) == "joined"
        async with httpx.AsyncClient(base_url=api.http, timeout=WAIT) as http:
            sent = await http.post("/rooms/42/broadcast", json={"message": "to 42"})
            assert sent.json() == {"status": "sent", "room_connections": 1}
            assert (await http.get("/rooms")).json()["rooms"] == [{"room": "42", "connections": 1}]
        assert await recv(ws) == "to 42"


async def test_nan_is_refused_not_sent_to_browsers(api: Server) -> None:
    """Python's JSON reads and writes NaN; a browser's JSON.parse throws on it: refuse it with
    a clear answer and deliver nothing."""
    async with connect(f"{api.ws}/connect/n") as member:
        await recv(member)
        async with httpx.AsyncClient(base_url=api.http, timeout=WAIT) as http:
            for literal in (b"NaN", b"Infinity", b"1e400"):
                r = await http.post(
                    "/rooms/n/broadcast",
                    content=b'{"message": {"x": ' + literal + b"}}",
                    headers={"content-type": "application/json"},
                )
                assert r.status_code == 422 and "not valid JSON" in r.text, r.text
            ok = await http.post("/rooms/n/broadcast", json={"message": {"x": 1}})
            assert ok.status_code == 200
        assert json.loads(await recv(member)) == {"x": 1}  # the refused ones never arrived


@pytest.mark.parametrize(
    ("name", "expected"), [("override_app", "override"), ("late_app", "late")]
)
async def test_overrides_and_registration_order(
    server_kind: str, serve: Callable[..., Server], name: str, expected: str
) -> None:
    server = serve(server_kind, target(server_kind, name))
    if expected == "override":
        # dependency_overrides[get_manager] reaches the ready endpoint and the REST endpoints.
        async with connect(f"{server.ws}/ws") as ws:
            assert json.loads(await recv(ws))["type"] == "welcome"
            await ws.send(json.dumps({"type": "join", "room": "via-override"}))
            assert json.loads(await recv(ws))["type"] == "joined"
            async with httpx.AsyncClient(base_url=server.http, timeout=WAIT) as http:
                assert (await http.get("/test/override")).json() == {"rooms": ["via-override"]}
                listed = (await http.get("/rooms")).json()["rooms"]
                assert listed == [{"room": "via-override", "connections": 1}]
    else:
        # A handler decorated after include_router is served; the app's own /ws wins.
        async with connect(f"{server.ws}/late/3") as ws:
            assert await recv(ws) == "late 3"
        async with connect(f"{server.ws}/ws") as ws:
            assert str(await recv(ws)).startswith("app handler")


async def test_a_mounted_rooms_app_fails_loudly_then_works_with_the_parents_lifespan(
    server_kind: str, serve: Callable[..., Server]
) -> None:
    broken = serve(server_kind, target(server_kind, "mounted_app"))
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{broken.ws}/sub/ws"):
            pass
    assert refused.value.response.status_code == 500
    async with httpx.AsyncClient(base_url=broken.http, timeout=WAIT) as http:
        assert (await http.get("/sub/count")).status_code == 500
    assert "lifespan=subapp.router.lifespan_context" in broken.log()

    fixed = serve(server_kind, target(server_kind, "mounted_fixed_app"))
    async with connect(f"{fixed.ws}/sub/ws") as ws:
        assert json.loads(await recv(ws))["type"] == "welcome"
        async with httpx.AsyncClient(base_url=fixed.http, timeout=WAIT) as http:
            assert (await http.get("/sub/count")).json() == {"connections": 1}


async def test_a_plain_starlette_app_serves_handlers_ready_endpoint_and_rest(
    server_kind: str, serve: Callable[..., Server]
) -> None:
    server = serve(server_kind, target(server_kind, "starlette_app"))
    async with connect(f"{server.ws}/rt/echo/word") as ws:
        assert await recv(ws) == "word"
    async with connect(f"{server.ws}/rt/ws") as ws:
        assert json.loads(await recv(ws))["type"] == "welcome"
        async with httpx.AsyncClient(base_url=server.http, timeout=WAIT) as http:
            stats = await http.get("/rt/stats")
            assert stats.status_code == 200 and stats.json()["connections"] == 1


async def test_rest_refuses_anonymous_calls_by_default_and_start_up_says_what_is_open(
    server_kind: str, serve: Callable[..., Server], api: Server
) -> None:
    server = serve(server_kind, target(server_kind, "default_app"))
    async with httpx.AsyncClient(base_url=server.http, timeout=WAIT) as http:
        for method, path in (("POST", "/broadcast"), ("GET", "/stats"), ("GET", "/rooms")):
            r = await http.request(method, path, json={"message": "x"})
            assert r.status_code == 403 and "insecure_rest=True" in r.text, (path, r.text)
    # close_unmatched=False: an unknown WebSocket path is left to Starlette (handshake refused).
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{server.ws}/nowhere"):
            pass
    assert refused.value.response.status_code == 403
    assert "open to anonymous callers" not in server.log()
    # The app that opened them on purpose names every one at start-up.
    opened = next(line for line in api.log().splitlines() if "open to anonymous" in line)
    for endpoint in ("POST /broadcast", "GET /stats", "POST /users/{user_id}/send"):
        assert endpoint in opened


async def test_router_dependencies_guard_websocket_handlers_and_the_ready_endpoint(
    server_kind: str, serve: Callable[..., Server]
) -> None:
    server = serve(server_kind, target(server_kind, "guarded_app"))
    for path in ("/guarded", "/ws"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{server.ws}{path}"):
                pass
        assert refused.value.response.status_code == 401, path
    async with connect(f"{server.ws}/guarded", additional_headers={"x-key": "k"}) as ws:
        assert await recv(ws) == "let in"
    async with connect(f"{server.ws}/ws", additional_headers={"x-key": "k"}) as ws:
        assert json.loads(await recv(ws))["type"] == "welcome"
    async with httpx.AsyncClient(base_url=server.http, timeout=WAIT) as http:
        assert (await http.get("/stats")).status_code == 401
        assert (await http.get("/stats", headers={"x-key": "k"})).status_code == 200


async def test_start_up_waits_for_redis_and_an_awaited_join_hears_the_other_node(
    redis_url: str, redis_prefix: str, serve: Callable[..., Server]
) -> None:
    """Two nodes (uvicorn and granian) on Redis: the first request after start-up sees the
    backend connected, and a handler's ``await conn.join(room)`` hears the very next message
    published on the other node."""
    env = {"REDIS_URL": redis_url, "ROOMS_PREFIX": redis_prefix}
    nodes = [
        serve("uvicorn", "redis_app:app", {**env, "NODE_ID": "one"}),
        serve("granian-rsgi", "redis_app:rsgi_app", {**env, "NODE_ID": "two"}),
    ]
    for node in nodes:
        async with httpx.AsyncClient(base_url=node.http, timeout=WAIT) as http:
            backend = (await http.get("/stats")).json()["backend"]
            assert backend["connected"] is True, backend
    for joining, publishing in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
        for attempt in range(5):  # a lost race would show up in any of them
            room = f"join-{attempt}-{joining.kind}"
            async with connect(f"{joining.ws}/joiner/{room}") as ws:
                assert await recv(ws) == "joined"
                async with httpx.AsyncClient(base_url=publishing.http, timeout=WAIT) as http:
                    await http.post(f"/rooms/{room}/broadcast", json={"message": "first"})
                assert await recv(ws) == "first"
