"""Gobstopper's WebSocket guide, ported in examples/gobstopper_guide.py, against real servers.

Each test is one pattern of the guide and asserts what a client sees: messages and their order,
close codes and reasons, HTTP statuses of refused handshakes. Most run on the shared
``guide_server`` (rooms and users are unique per test); tests that count every connection of
the server, or need small limits, start their own.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.conftest import Server, app_for, guide_env, server_fixture
from tests.helpers import (
    ADMIN,
    assert_recent,
    handshake_status,
    http,
    join_chat,
    open_ws,
    recv,
    recv_event,
    recv_json,
    recv_text,
    send_json,
    unique,
)

pytestmark = pytest.mark.anyio

Serve = Callable[..., Server]

# Small limits and short intervals for the servers this module starts itself.
TUNED_ENV = {
    "MAX_ROOM_SIZE": "2",
    "MAX_MESSAGES_PER_MINUTE": "3",
    "LIVE_DATA_INTERVAL": "0.05",
    "UPLOAD_POLL_INTERVAL": "0.05",
}

#: The guide with a room size of 2, 3 messages a minute and fast update intervals. Shared by
#: tests that only use their own rooms and connections (both limits are per room and per
#: connection).
tuned_server = server_fixture("gobstopper_guide", "tuned", guide_env(**TUNED_ENV))


# Helpers --------------------------------------------------------------------------------------


async def closed_by_server(
    ws: ClientConnection, server: Server, code: int, reason: str = ""
) -> None:
    """The next thing ``ws`` gets is the server's close frame with ``code`` and ``reason``.

    Under RSGI a close after accept carries no code or reason (Granian sends none): the client
    sees 1005 there, on every other server exactly what the handler passed to ``close()``.
    """
    with pytest.raises(ConnectionClosed) as exc:
        await recv(ws)
    rcvd = exc.value.rcvd
    assert rcvd is not None, "the connection dropped without a close frame"
    expected = (1005, "") if server.kind == "granian-rsgi" else (code, reason)
    assert (rcvd.code, rcvd.reason) == expected


# WebSocket class: lifecycle, accept, send_text, send_bytes -------------------------------------


async def test_echo_server_echoes_text_and_bytes(guide_server: Server) -> None:
    async with open_ws(guide_server, "/ws/echo") as ws:
        await ws.send("hello")
        assert await recv(ws) == "Echo: hello"
        await ws.send(b"\x00\x01\xff")
        assert await recv(ws) == b"Echo: \x00\x01\xff"
        await ws.send("héllo wörld")
        assert await recv(ws) == "Echo: héllo wörld"


async def test_lifecycle_handler_echoes_text(guide_server: Server) -> None:
    async with open_ws(guide_server, "/ws/lifecycle") as ws:
        await ws.send("one")
        await ws.send("two")
        assert [await recv(ws), await recv(ws)] == ["Echo: one", "Echo: two"]


async def test_connect_sends_greeting_then_closes_normally(guide_server: Server) -> None:
    async with open_ws(guide_server, "/ws/connect") as ws:
        assert await recv(ws) == "Connected successfully!"
        await closed_by_server(ws, guide_server, 1000)


async def test_notifications_send_text_json_and_formatted(guide_server: Server) -> None:
    async with open_ws(guide_server, "/ws/notifications?user_id=u42") as ws:
        assert await recv(ws) == "Welcome to notifications!"
        alert = await recv_json(ws)
        assert {k: alert[k] for k in ("type", "message")} == {
            "type": "alert",
            "message": "New message received",
        }
        assert_recent(alert["timestamp"])
        assert (await recv_text(ws)).startswith("User u42 connected at ")
        await closed_by_server(ws, guide_server, 1000)


async def test_binary_sends_image_and_compressed_dataset(guide_server: Server) -> None:
    async with open_ws(guide_server, "/ws/binary") as ws:
        assert await recv(ws) == b"\x89PNG\r\n\x1a\nwelcome.png"
        compressed = await recv(ws)
        assert isinstance(compressed, bytes)
        assert json.loads(gzip.decompress(compressed)) == [
            {"id": i, "value": i * i} for i in range(100)
        ]
        await closed_by_server(ws, guide_server, 1000)


async def test_unknown_path_closes_with_going_away(guide_server: Server) -> None:
    if guide_server.kind == "granian-rsgi":
        # RSGI cannot send a close code after accept: the upgrade is refused with 404 instead.
        assert await handshake_status(guide_server, "/ws/no-such-handler") == 404
        return
    async with open_ws(guide_server, "/ws/no-such-handler") as ws:
        await closed_by_server(ws, guide_server, 1001, "no route for this path")


async def test_receive_handles_text_and_bytes_and_fails_on_bad_json(guide_server: Server) -> None:
    marker = unique("msg")
    async with (
        http(guide_server, headers=ADMIN) as client,
        open_ws(guide_server, "/ws/receive") as ws,
    ):
        await send_json(ws, {"marker": marker})
        await ws.send(b"\x01\x02\x03")
        # The guide's receive() example does not catch bad JSON: the handler raises and the
        # library closes with 1011, after the two messages before it were processed in order.
        await ws.send("{not json")
        await closed_by_server(ws, guide_server, 1011, "internal error")
        processed = (await client.get("/api/received")).json()["processed"]
    index = processed.index(["chat", {"marker": marker}])
    assert processed[index + 1] == ["binary", 3]


# Real-time updates and upload progress --------------------------------------------------------


async def test_live_data_streams_periodic_updates(tuned_server: Server) -> None:
    # Under Granian RSGI the client's close of this send-only stream goes unanswered: the close
    # waits out close_timeout, kept at the 5 s this module always used.
    async with open_ws(tuned_server, "/ws/live-data", close_timeout=5) as ws:
        updates = [await recv_json(ws) for _ in range(3)]
    for update in updates:
        assert set(update) == {"timestamp", "cpu_usage", "memory_usage", "active_connections"}
        assert (update["cpu_usage"], update["memory_usage"]) == (12.5, 48.0)
        assert isinstance(update["active_connections"], int)
        assert_recent(update["timestamp"])
    stamps = [datetime.fromisoformat(u["timestamp"]) for u in updates]
    assert stamps == sorted(stamps)


async def test_upload_progress_follows_the_upload_until_completed(tuned_server: Server) -> None:
    async with http(tuned_server, headers=ADMIN) as client:
        started = await client.post("/api/uploads", json={"total_bytes": 2000})
        assert started.status_code == 201
        upload_id = started.json()["upload_id"]

        async with open_ws(tuned_server, f"/ws/upload-progress/{upload_id}") as ws:
            seen: list[dict[str, Any]] = [await recv_json(ws)]

            async def until(status: str, progress: int) -> None:
                # The handler reports on every poll: repeat reports of the same state are fine.
                while (seen[-1]["status"], seen[-1]["progress"]) != (status, progress):
                    seen.append(await recv_json(ws))

            await until("uploading", 0)
            r = await client.post(
                f"/api/uploads/{upload_id}/progress", json={"bytes_uploaded": 500}
            )
            assert r.status_code == 200
            await until("uploading", 25)
            r = await client.post(
                f"/api/uploads/{upload_id}/progress", json={"bytes_uploaded": 2000}
            )
            assert r.json()["status"] == "completed"
            await until("completed", 100)
            # "completed" ends the stream: the handler returns and the connection closes.
            await closed_by_server(ws, tuned_server, 1000)

    distinct = []
    for report in seen:
        if report not in distinct:
            distinct.append(report)
    assert distinct == [
        {
            "upload_id": upload_id,
            "progress": progress,
            "bytes_uploaded": done,
            "total_bytes": 2000,
            "status": status,
        }
        for progress, done, status in [
            (0, 0, "uploading"),
            (25, 500, "uploading"),
            (100, 2000, "completed"),
        ]
    ]


async def test_upload_progress_reports_failure_and_stops(tuned_server: Server) -> None:
    async with http(tuned_server, headers=ADMIN) as client:
        upload_id = (await client.post("/api/uploads", json={"total_bytes": 10})).json()[
            "upload_id"
        ]
        r = await client.post(
            f"/api/uploads/{upload_id}/progress", json={"bytes_uploaded": 3, "status": "failed"}
        )
        assert r.status_code == 200
    async with open_ws(tuned_server, f"/ws/upload-progress/{upload_id}") as ws:
        assert await recv_json(ws) == {
            "upload_id": upload_id,
            "progress": 30,
            "bytes_uploaded": 3,
            "total_bytes": 10,
            "status": "failed",
        }
        await closed_by_server(ws, tuned_server, 1000)


async def test_upload_progress_unknown_id(guide_server: Server) -> None:
    async with open_ws(guide_server, f"/ws/upload-progress/{uuid.uuid4().hex}") as ws:
        assert await recv_json(ws) == {"error": "Upload not found"}
        await closed_by_server(ws, guide_server, 1000)


# WebSocketManager: chat and rooms -------------------------------------------------------------


async def test_chat_rooms_broadcast_to_members_only(guide_server: Server) -> None:
    room, other = unique("room"), unique("other")
    async with (
        open_ws(guide_server, "/ws/chat") as alice,
        open_ws(guide_server, "/ws/chat") as bob,
        open_ws(guide_server, "/ws/chat") as carol,
    ):
        for ws, name in ((alice, room), (bob, room), (carol, other)):
            await join_chat(ws, name)

        await send_json(
            alice, {"type": "chat_message", "room": room, "user": "alice", "message": "hi all"}
        )
        for ws in (alice, bob):
            event = await recv_event(ws)
            assert event == {"type": "message", "user": "alice", "message": "hi all"}

        # Carol, in another room, must not get it: the first thing she receives is this.
        await send_json(
            carol, {"type": "chat_message", "room": other, "user": "carol", "message": "sentinel"}
        )
        assert (await recv_json(carol))["message"] == "sentinel"


async def test_room_handler_presence_chat_and_leave(guide_server: Server) -> None:
    room = unique("room")
    alice, bob = unique("alice"), unique("bob")
    async with open_ws(guide_server, f"/ws/rooms/{room}?token={alice}-token") as a:
        joined = await recv_event(a)
        assert joined == {"type": "user_joined", "user_id": alice, "username": alice.capitalize()}

        async with open_ws(guide_server, f"/ws/rooms/{room}?token={bob}-token") as b:
            for ws in (a, b):
                event = await recv_json(ws)
                assert (event["type"], event["user_id"]) == ("user_joined", bob)

            await send_json(b, {"type": "chat", "content": "hello alice"})
            for ws in (a, b):
                event = await recv_event(ws)
                assert event == {
                    "type": "message",
                    "user_id": bob,
                    "username": bob.capitalize(),
                    "message": "hello alice",
                }

        left = await recv_event(a)
        assert left == {"type": "user_left", "user_id": bob, "username": bob.capitalize()}


async def test_typing_indicator_skips_the_sender(guide_server: Server) -> None:
    room = unique("room")
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")
    async with open_ws(guide_server, f"/ws/rooms/{room}?token={alice}-token") as a:
        await recv_json(a)  # alice joined
        async with open_ws(guide_server, f"/ws/rooms/{room}?token={bob}-token") as b:
            assert (await recv_json(a))["user_id"] == bob
            assert (await recv_json(b))["user_id"] == bob
            async with open_ws(guide_server, f"/ws/rooms/{room}?token={carol}-token") as c:
                for ws in (a, b, c):
                    assert (await recv_json(ws))["user_id"] == carol

                await send_json(a, {"type": "typing", "is_typing": True})
                expected = {
                    "type": "typing",
                    "user_id": alice,
                    "username": alice.capitalize(),
                    "is_typing": True,
                }
                assert await recv_json(b) == expected
                assert await recv_json(c) == expected

                # Alice must not see her own indicator: the next thing she gets is her message.
                await send_json(a, {"type": "chat", "content": "sentinel"})
                first = await recv_json(a)
                assert (first["type"], first["message"]) == ("message", "sentinel")
                for ws in (b, c):
                    assert (await recv_json(ws))["message"] == "sentinel"


async def test_room_handler_rejects_a_bad_token_after_accept(guide_server: Server) -> None:
    # The guide's room handler accepts first, then closes with 1008.
    async with open_ws(guide_server, f"/ws/rooms/{unique('room')}?token=garbage") as ws:
        await closed_by_server(ws, guide_server, 1008, "Authentication failed")


async def test_room_handler_without_token_fails_with_1011(guide_server: Server) -> None:
    # The guide's `query_string.decode().split("token=")[1]` raises IndexError without a token:
    # a handler that raises after accept is closed with 1011.
    async with open_ws(guide_server, f"/ws/rooms/{unique('room')}") as ws:
        await closed_by_server(ws, guide_server, 1011, "internal error")


# Broadcasting patterns over REST --------------------------------------------------------------


async def test_private_message_reaches_the_recipient(guide_server: Server) -> None:
    room, alice = unique("room"), unique("alice")
    async with (
        http(guide_server, headers=ADMIN) as client,
        open_ws(guide_server, f"/ws/rooms/{room}?token={alice}-token") as a,
    ):
        await recv_json(a)  # user_joined: alice is now in user_connections
        r = await client.post(
            "/api/send-private-message",
            json={"sender_id": "bob", "recipient_id": alice, "message": "psst"},
        )
        assert (r.status_code, r.json()) == (200, {"status": "delivered"})
        event = await recv_event(a)
        assert event == {"type": "private_message", "from_user_id": "bob", "message": "psst"}


async def test_private_message_to_offline_user_is_404(guide_server: Server) -> None:
    async with http(guide_server, headers=ADMIN) as client:
        r = await client.post(
            "/api/send-private-message",
            json={"sender_id": "bob", "recipient_id": unique("nobody"), "message": "psst"},
        )
    assert (r.status_code, r.json()) == (404, {"error": "Recipient not online"})


async def test_room_notification_reaches_the_room_only(guide_server: Server) -> None:
    room, other = unique("room"), unique("other")
    async with (
        http(guide_server, headers=ADMIN) as client,
        open_ws(guide_server, "/ws/chat") as a,
        open_ws(guide_server, "/ws/chat") as b,
        open_ws(guide_server, "/ws/chat") as c,
    ):
        for ws, name in ((a, room), (b, room), (c, other)):
            await join_chat(ws, name)

        r = await client.post("/api/notify-room", json={"room_id": room, "message": "maintenance"})
        assert (r.status_code, r.json()) == (200, {"status": "sent", "room_connections": 2})
        for ws in (a, b):
            event = await recv_event(ws)
            assert event == {
                "type": "room_notification",
                "message": "maintenance",
                "from_admin": True,
            }

        r = await client.post("/api/notify-room", json={"room_id": other, "message": "sentinel"})
        assert r.json() == {"status": "sent", "room_connections": 1}
        assert (await recv_json(c))["message"] == "sentinel"

        r = await client.post("/api/notify-room", json={"room_id": unique("empty"), "message": "x"})
        assert r.json() == {"status": "sent", "room_connections": 0}


async def test_global_broadcasts_reach_every_connection(serve: Serve, server_kind: str) -> None:
    # Its own server: the counts in the answers are every connection of the server.
    server = serve(server_kind, app_for("gobstopper_guide", server_kind), guide_env())
    async with (
        http(server, headers=ADMIN) as client,
        open_ws(server, "/ws/robust") as a,
        open_ws(server, "/ws/chat") as b,
        open_ws(server, "/ws/echo") as unregistered,  # the echo handler never adds a connection
    ):
        assert (await recv_json(a))["type"] == "welcome"
        await join_chat(b, "lobby")

        r = await client.post("/api/broadcast", json={"title": "Hi", "message": "Welcome"})
        assert (r.status_code, r.json()) == (200, {"status": "broadcasted", "connections": 2})
        for ws in (a, b):
            event = await recv_event(ws)
            assert event == {
                "type": "announcement",
                "title": "Hi",
                "message": "Welcome",
                "priority": "normal",
            }

        r = await client.post("/api/chat/broadcast", json={"message": "admin here"})
        assert (r.status_code, r.json()) == (200, {"status": "broadcasted", "recipient_count": 2})
        for ws in (a, b):
            event = await recv_json(ws)
            assert (event["type"], event["message"]) == ("admin_broadcast", "admin here")

        await unregistered.send("sentinel")
        assert await recv(unregistered) == "Echo: sentinel"


# Authentication before accept -----------------------------------------------------------------


@pytest.mark.parametrize("via", ["query", "bearer"])
async def test_authenticated_accepts_a_valid_token(guide_server: Server, via: str) -> None:
    name = unique("alice")
    path = "/ws/authenticated"
    kwargs: dict[str, Any] = {}
    if via == "query":
        path += f"?foo=1&token={name}-token"
    else:
        kwargs = {"additional_headers": {"Authorization": f"Bearer {name}-token"}}
    async with open_ws(guide_server, path, **kwargs) as ws:
        assert await recv_json(ws) == {
            "type": "authenticated",
            "user": {"id": name, "username": name.capitalize()},
        }
        await ws.send("hi")
        assert await recv(ws) == f"{name.capitalize()}: hi"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/ws/authenticated", {}),
        ("/ws/authenticated?token=garbage", {}),
        ("/ws/authenticated?token=", {}),
        ("/ws/authenticated", {"Authorization": "Bearer garbage"}),
        ("/ws/authenticated", {"Authorization": "Basic YWxpY2U6eA=="}),
        ("/ws/chat-app", {}),
    ],
)
async def test_authenticated_refuses_the_handshake_with_403(
    guide_server: Server, path: str, headers: dict[str, str]
) -> None:
    assert await handshake_status(guide_server, path, additional_headers=headers) == 403


# Message validation ---------------------------------------------------------------------------


async def test_validated_chat(guide_server: Server) -> None:
    room = unique("room")
    invalid_format = {"type": "error", "message": "Invalid message format"}
    async with (
        open_ws(guide_server, "/ws/validated-chat") as a,
        open_ws(guide_server, "/ws/validated-chat") as b,
    ):
        await a.send("{not json")
        assert await recv_json(a) == {"type": "error", "message": "Invalid JSON"}
        for bad in (
            {"type": "chat", "room": room},  # no content
            {"type": "chat", "content": "   ", "room": room},  # blank content
            {"content": "hello", "room": room},  # no type
            {"type": 7, "content": "hello"},  # type not a string
            {"type": "chat", "content": "x" * 1001, "room": room},  # too long
            [1, 2, 3],  # not an object (the port also catches AttributeError for this)
        ):
            await send_json(a, bad)
            assert await recv_json(a) == invalid_format, bad

        # A valid chat message joins its room and goes to every member.
        await send_json(b, {"type": "chat", "content": "b here", "room": room})
        event = await recv_event(b)
        assert event == {"type": "message", "content": "b here"}
        await send_json(a, {"type": "chat", "content": "  hello b  ", "room": room})
        for ws in (a, b):
            event = await recv_json(ws)
            assert (event["type"], event["content"]) == ("message", "hello b")

        # The connection survived every bad message.
        await a.send("[]")
        assert await recv_json(a) == invalid_format


# Connection monitoring ------------------------------------------------------------------------


async def test_monitored_echo_and_websocket_stats(guide_server: Server) -> None:
    room = unique("room")
    async with (
        http(guide_server, headers=ADMIN) as client,
        open_ws(guide_server, "/ws/monitored") as mon,
        open_ws(guide_server, "/ws/chat") as chat,
    ):
        await mon.send("hello")
        assert await recv(mon) == "Received: hello"
        await mon.send("hey")
        assert await recv(mon) == "Received: hey"
        await join_chat(chat, room)

        stats = (await client.get("/api/websocket-stats")).json()
        assert stats["total_connections"] >= 2
        assert stats["rooms"][room] == 1
        details = list(stats["connection_details"].values())
        mine = [
            {k: v for k, v in d.items() if k != "connected_at"}
            for d in details
            if d["messages_received"] == 2 and d["bytes_received"] == 8
        ]
        assert mine == [
            {
                "messages_sent": 2,
                "messages_received": 2,
                "bytes_sent": len("Received: hello") + len("Received: hey"),
                "bytes_received": len("hello") + len("hey"),
            }
        ]


# Error handling -------------------------------------------------------------------------------


async def test_robust_handler_recovers_from_bad_messages(guide_server: Server) -> None:
    async with (
        http(guide_server, headers=ADMIN) as client,
        open_ws(guide_server, "/ws/robust") as ws,
    ):
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome"

        await ws.send("{oops")
        assert await recv_json(ws) == {"type": "error", "message": "Invalid JSON format"}
        await send_json(ws, {"type": "fail"})
        assert await recv_json(ws) == {"type": "error", "message": "Internal server error"}
        await send_json(ws, {"type": "hello"})
        assert await recv_json(ws) == {"type": "ack", "message": {"type": "hello"}}
        await ws.send(b"\x00" * 10)
        assert await recv_json(ws) == {"type": "ack", "bytes": 10}

        # The welcome's connection_id is the manager's: the rooms router's REST reaches it.
        r = await client.post(
            f"/connections/{welcome['connection_id']}/send", json={"message": "direct"}
        )
        assert r.status_code == 200
        assert await recv(ws) == "direct"


# Performance considerations: limits -----------------------------------------------------------


async def test_connection_limits_global_and_per_ip(serve: Serve, server_kind: str) -> None:
    # Its own server: the global limit counts every registered connection of the server.
    server = serve(
        server_kind,
        app_for("gobstopper_guide", server_kind),
        guide_env(MAX_CONNECTIONS="4", MAX_CONNECTIONS_PER_IP="2"),
    )

    def from_ip(ip: str) -> dict[str, Any]:
        return {"local_addr": (ip, 0)}  # loopback: every 127.x.y.z reaches 127.0.0.1

    async with open_ws(server, "/ws/limited") as a1, open_ws(server, "/ws/limited") as a2:
        for ws in (a1, a2):
            assert await recv_json(ws) == {"type": "welcome", "client_ip": "127.0.0.1"}
        # A third from the same IP: refused before accept (1008 before accept is HTTP 403) ...
        assert await handshake_status(server, "/ws/limited") == 403
        # ... but another IP is still welcome, up to the global limit of 4 connections.
        async with (
            open_ws(server, "/ws/limited", **from_ip("127.0.0.2")) as b1,
            open_ws(server, "/ws/limited", **from_ip("127.0.0.2")) as b2,
        ):
            for ws in (b1, b2):
                assert await recv_json(ws) == {"type": "welcome", "client_ip": "127.0.0.2"}
            # A fresh IP with no connection yet: refused by the global limit.
            assert await handshake_status(server, "/ws/limited", **from_ip("127.0.0.3")) == 403
            await b1.send("still here")
            assert await recv(b1) == "Echo: still here"
        await a1.send("still here")
        assert await recv(a1) == "Echo: still here"


async def test_room_size_limit(tuned_server: Server) -> None:
    room = unique("room")
    alice, bob, carol = unique("alice"), unique("bob"), unique("carol")

    def chat_app(user: str) -> Any:
        return open_ws(tuned_server, f"/ws/chat-app?token={user}-token")

    async with chat_app(alice) as a, chat_app(bob) as b, chat_app(carol) as c:
        await send_json(a, {"command": "join_room", "room_id": room})
        assert (await recv_json(a))["user"]["id"] == alice
        await send_json(b, {"command": "join_room", "room_id": room})
        for ws in (a, b):
            assert (await recv_json(ws))["user"]["id"] == bob

        # MAX_ROOM_SIZE is 2: carol is refused, and nobody in the room hears of her.
        await send_json(c, {"command": "join_room", "room_id": room})
        assert await recv_json(c) == {"type": "error", "message": "Room is full", "room_id": room}
        await send_json(c, {"command": "send_message", "room_id": room, "message": "let me in"})
        await send_json(b, {"command": "send_message", "room_id": room, "message": "sentinel"})
        for ws in (a, b):
            event = await recv_json(ws)
            assert (event["type"], event["message"]) == ("message", "sentinel")

        # When bob leaves there is room again.
        await send_json(b, {"command": "leave_room", "room_id": room})
        left = await recv_json(a)
        assert (left["type"], left["user"]["id"]) == ("user_left", bob)
        await send_json(c, {"command": "join_room", "room_id": room})
        for ws in (a, c):
            joined = await recv_json(ws)
            assert (joined["type"], joined["user"]["id"]) == ("user_joined", carol)


async def test_rate_limit(tuned_server: Server) -> None:
    room = unique("room")
    alice, bob = unique("alice"), unique("bob")
    async with (
        open_ws(tuned_server, f"/ws/chat-app?token={bob}-token") as b,
        open_ws(tuned_server, f"/ws/chat-app?token={alice}-token") as a,
    ):
        await send_json(b, {"command": "join_room", "room_id": room})  # bob: 1
        assert (await recv_json(b))["user"]["id"] == bob
        await send_json(a, {"command": "join_room", "room_id": room})  # alice: 1
        for ws in (a, b):
            assert (await recv_json(ws))["user"]["id"] == alice
        for text in ("one", "two"):  # alice: 2, 3
            await send_json(a, {"command": "send_message", "room_id": room, "message": text})
            for ws in (a, b):
                assert (await recv_json(ws))["message"] == text

        # MAX_MESSAGES_PER_MINUTE is 3: alice's fourth message is refused and not broadcast.
        await send_json(a, {"command": "send_message", "room_id": room, "message": "three"})
        assert await recv_json(a) == {"type": "error", "message": "Rate limit exceeded"}
        await send_json(b, {"command": "send_message", "room_id": room, "message": "sentinel"})
        for ws in (a, b):
            assert (await recv_json(ws))["message"] == "sentinel"
        # Still refused: refusals do not count, but the minute is not over.
        await send_json(a, {"command": "leave_room", "room_id": room})
        assert await recv_json(a) == {"type": "error", "message": "Rate limit exceeded"}


# Complete chat application --------------------------------------------------------------------


async def test_complete_chat_application(guide_server: Server) -> None:
    room, elsewhere = unique("room"), unique("elsewhere")
    alice, bob = unique("alice"), unique("bob")
    alice_dict = {"id": alice, "username": alice.capitalize()}
    bob_dict = {"id": bob, "username": bob.capitalize()}
    bearer = {"additional_headers": {"Authorization": f"Bearer {bob}-token"}}
    async with (
        http(guide_server, headers=ADMIN) as client,
        open_ws(guide_server, "/ws/chat-app", **bearer) as b,
    ):
        async with open_ws(guide_server, f"/ws/chat-app?token={alice}-token") as a:
            await send_json(a, {"command": "join_room", "room_id": room})
            assert await recv_event(a) == {"type": "user_joined", "user": alice_dict}
            await send_json(b, {"command": "join_room", "room_id": room})
            for ws in (a, b):
                assert await recv_event(ws) == {"type": "user_joined", "user": bob_dict}

            await send_json(a, {"command": "send_message", "room_id": room, "message": "hi bob"})
            for ws in (a, b):
                assert await recv_event(ws) == {
                    "type": "message",
                    "user": alice_dict,
                    "message": "hi bob",
                }

            listed = (await client.get("/api/chat/rooms")).json()["rooms"]
            [entry] = [r for r in listed if r["room_id"] == room]
            assert entry["user_count"] == 2
            assert sorted(entry["users"]) == sorted([alice, bob])

            # Bob leaves: alice is told; bob's messages to the room are ignored from now on.
            await send_json(b, {"command": "leave_room", "room_id": room})
            assert await recv_event(a) == {"type": "user_left", "user": bob_dict}
            await send_json(b, {"command": "send_message", "room_id": room, "message": "ghost"})
            # Bob's commands run in order: once he hears of this join, "ghost" was handled.
            await send_json(b, {"command": "join_room", "room_id": elsewhere})
            assert await recv_event(b) == {"type": "user_joined", "user": bob_dict}
            await send_json(a, {"command": "send_message", "room_id": room, "message": "sentinel"})
            assert (await recv_event(a))["message"] == "sentinel"

            # Bob comes back; then alice disconnects and bob hears of it.
            await send_json(b, {"command": "join_room", "room_id": room})
            for ws in (a, b):
                assert await recv_event(ws) == {"type": "user_joined", "user": bob_dict}
        assert await recv_event(b) == {"type": "user_disconnected", "user_id": alice}

        listed = (await client.get("/api/chat/rooms")).json()["rooms"]
        [entry] = [r for r in listed if r["room_id"] == room]
        assert (entry["user_count"], entry["users"]) == (1, [bob])
