"""examples/chat served by a real uvicorn: the page, a chat between two clients, an announcement."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.helpers import http, next_event, open_ws

APP = "examples.chat.app:app"

pytestmark = pytest.mark.anyio


@pytest.fixture
def chat(serve: Callable[..., Any]) -> Any:
    """The chat example on uvicorn; the repository root on PYTHONPATH imports examples.chat."""
    return serve("uvicorn", APP, {"PYTHONPATH": str(ROOT), "CHAT_ADMIN_TOKEN": ADMIN})


ADMIN = "test-admin-token"


async def test_index_serves_the_page_and_its_script(chat: Any) -> None:
    async with http(chat) as client:
        page = await client.get("/")
        script = await client.get("/static/app.js")
        style = await client.get("/static/style.css")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>fastapi-rooms chat</title>" in page.text
    assert '<script type="module" src="/static/app.js"></script>' in page.text
    assert "http://" not in page.text  # no CDN, no external script
    assert "https://" not in page.text
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert "/api/ws" in script.text and 'from "/api/client.js"' in script.text
    assert "/api/announce" in script.text
    assert style.status_code == 200


async def test_two_clients_chat_in_a_room_and_receive_an_announcement(chat: Any) -> None:
    async with open_ws(chat, "/api/ws") as alice, open_ws(chat, "/api/ws") as bob:
        alice_id = (await next_event(alice, "welcome"))["connection_id"]
        bob_id = (await next_event(bob, "welcome"))["connection_id"]
        assert alice_id != bob_id

        for ws in (alice, bob):
            await ws.send(json.dumps({"type": "join", "room": "lobby"}))
            joined = await next_event(ws, "joined")  # the example's rooms keep history
            assert joined == {"type": "joined", "room": "lobby", "offset": 0,
                              "epoch": joined["epoch"]}

        async with http(chat) as client:
            refused = await client.get("/api/rooms/lobby")  # REST: operators only
            assert refused.status_code == 401
            room = (await client.get("/api/rooms/lobby", headers={"X-Admin-Token": ADMIN})).json()
            assert room["connections"] == 2
            listed = (await client.get("/api/room-list")).json()
            assert listed == [{"room": "lobby", "connections": 2}]
            assert set(room["connection_ids"]) == {alice_id, bob_id}

            data = {"name": "alice", "text": "hello, bob"}
            await alice.send(json.dumps({"type": "publish", "room": "lobby", "data": data}))
            expected = {"type": "message", "room": "lobby", "from": alice_id, "data": data,
                        "offset": 1}
            assert await next_event(bob, "message") == expected
            assert await next_event(alice, "message") == expected  # the sender gets it too

            response = await client.post("/api/announce", json={"text": "server restarts at noon"})
            assert response.status_code == 200
            assert response.json() == {"delivered": 2}
            for ws in (alice, bob):
                announcement = await next_event(ws, "announcement")
                assert announcement == {"type": "announcement", "text": "server restarts at noon"}

            # An announcement reaches clients that joined no room as well.
            async with open_ws(chat, "/api/ws") as carol:
                await next_event(carol, "welcome")
                response = await client.post("/api/announce", json={"text": "hi all"})
                assert response.json() == {"delivered": 3}
                assert (await next_event(carol, "announcement"))["text"] == "hi all"

            invalid = await client.post("/api/announce", json={"text": ""})
            assert invalid.status_code == 422

        await bob.send(json.dumps({"type": "leave", "room": "lobby"}))
        assert await next_event(bob, "left") == {"type": "left", "room": "lobby"}
