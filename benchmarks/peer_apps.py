"""Peer servers for benchmarks/fanout.py, and the wire format every fan-out app shares.

Every app of the benchmark, here and in fanout_apps.py, serves one room and the same control
protocol:

- a member connects, joins the one room and is told ``joined`` (only once the room will reach
  it), then only reads;
- the benchmark's own control connection (not a member) sends ``burst <start> <count> <size>``;
  the server runs ``count`` broadcasts of ``payload(start + i, size)`` back to back and answers
  ``done <handed> <seconds>`` (frames the app handed on, time spent in its loop); ``stats``
  answers a JSON object with at least ``members``.

This module imports only the standard library at the top, so each server imports only what it
serves (and the benchmark client none of them):

- ``picows-raw``: ``python peer_apps.py picows-raw --port P``: a bare picows server (C framing,
  one ``transport.send`` per member, no task per recipient, nothing awaited): the practical
  ceiling of a Python process. ``/members/<id>`` and ``/control`` as above.
- ``socketio``: ``uvicorn --factory peer_apps:make_socketio_app``: python-socketio's
  ``AsyncServer`` (ASGI, websocket transport only) at ``/socket.io/``. Everything is Socket.IO
  v4 events on the default namespace: a member emits ``join`` and gets ``joined`` back once it
  is in the room; a broadcast is ``await sio.emit("m", msg, room=ROOM)``; the control
  connection emits ``control`` with the command text and gets ``reply`` with the answer.

The FastAPI peer (encode/broadcaster) is ``make_broadcaster_app`` in fanout_apps.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

ROOM = "bench"
JOINED = "joined"


def payload(seq: int, size: int) -> str:
    """The ``seq``-th message of a run: ``size`` ASCII characters starting with the number."""
    head = f"{seq:010d}|"
    if size < len(head):
        raise ValueError(f"message size must be at least {len(head)} bytes, got {size}")
    return head + "x" * (size - len(head))


def published(message: str, offset: int | None = None) -> str:
    """``message`` as the ready protocol's ``message`` event from the server (compact JSON),
    as members of the rooms-publish and rooms-model variants receive it (rooms-history: with
    its ``offset`` in the room's history)."""
    event: dict[str, Any] = {"type": "message", "room": ROOM, "from": None}
    event["data"] = {"text": message}
    if offset is not None:
        event["offset"] = offset
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def parse_burst(command: list[str]) -> tuple[int, int, int]:
    start, count, size = (int(x) for x in command[1:4])
    return start, count, size


# python-socketio --------------------------------------------------------------------------------


def make_socketio_app() -> Any:
    """python-socketio on ASGI (``uvicorn --factory peer_apps:make_socketio_app``).

    Members join with an event; a broadcast is one room emit. ``handed`` counts the room's
    members at each emit (python-socketio queues the packet for each member's writer task and
    returns; it does not say how many it reached). Engine.IO's default pings (every 25 s);
    ``FANOUT_SOCKETIO_PING="<interval>,<timeout>"`` (seconds) shortens them, for the smoke
    test that checks the client answers them.
    """
    import socketio

    options: dict[str, Any] = {}
    if os.environ.get("FANOUT_SOCKETIO_PING"):  # "interval,timeout" in seconds (tests only)
        interval, timeout = (float(x) for x in os.environ["FANOUT_SOCKETIO_PING"].split(","))
        options = {"ping_interval": interval, "ping_timeout": timeout}
    sio = socketio.AsyncServer(async_mode="asgi", transports=["websocket"], **options)
    members: set[str] = set()
    handed_total = 0

    @sio.on("join")
    async def join(sid: str, data: Any = None) -> None:
        await sio.enter_room(sid, ROOM)
        members.add(sid)
        await sio.emit(JOINED, to=sid)

    @sio.on("disconnect")
    async def disconnect(sid: str, *args: Any) -> None:
        members.discard(sid)

    @sio.on("control")
    async def control(sid: str, text: str) -> None:
        nonlocal handed_total
        command = text.split()
        if command[0] == "burst":
            start, count, size = parse_burst(command)
            messages = [payload(start + i, size) for i in range(count)]
            handed = 0
            t0 = time.perf_counter()
            for message in messages:
                await sio.emit("m", message, room=ROOM)
                handed += len(members)
            elapsed = time.perf_counter() - t0
            handed_total += handed
            reply = f"done {handed} {elapsed:.6f}"
        elif command[0] == "stats":
            reply = json.dumps({"members": len(members), "messages_delivered": handed_total})
        else:
            reply = f"error unknown command {command[0]!r}"
        await sio.emit("reply", reply, to=sid)

    return socketio.ASGIApp(sio)


# picows, raw -------------------------------------------------------------------------------------


def serve_picows(host: str, port: int) -> None:
    """A bare picows server on uvloop: the practical ceiling (no ASGI, no task per recipient).

    A broadcast is ``transport.send(TEXT, frame)`` for every member, synchronously: picows frames
    in C and writes at once, buffering in the transport when a socket is full.
    """
    import picows

    text, close = picows.WSMsgType.TEXT, picows.WSMsgType.CLOSE
    # Insertion-ordered, O(1) removal; a broadcast iterates the keys.
    members: dict[Any, None] = {}
    handed_total = 0

    def close_frame(transport: Any, frame: Any) -> bool:
        if frame.msg_type == close:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return True
        return False

    class Member(picows.WSListener):
        def on_ws_connected(self, transport: Any) -> None:
            members[transport] = None
            transport.send(text, JOINED.encode())

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            close_frame(transport, frame)

        def on_ws_disconnected(self, transport: Any) -> None:
            members.pop(transport, None)

    class Control(picows.WSListener):
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            nonlocal handed_total
            if close_frame(transport, frame) or frame.msg_type != text:
                return
            command = frame.get_payload_as_ascii_text().split()
            if command[0] == "burst":
                start, count, size = parse_burst(command)
                messages = [payload(start + i, size).encode() for i in range(count)]
                handed = 0
                t0 = time.perf_counter()
                for message in messages:
                    # A snapshot: a member that disconnects meanwhile leaves the dict.
                    targets = tuple(members)
                    for member in targets:
                        member.send(text, message)
                    handed += len(targets)
                elapsed = time.perf_counter() - t0
                handed_total += handed
                reply = f"done {handed} {elapsed:.6f}"
            elif command[0] == "stats":
                reply = json.dumps({"members": len(members), "messages_delivered": handed_total})
            else:
                reply = f"error unknown command {command[0]!r}"
            transport.send(text, reply.encode())

    def route(request: Any) -> picows.WSListener | None:
        path = request.path
        if path.startswith(b"/members/"):
            return Member()
        if path == b"/control":
            return Control()
        return None  # 404

    async def main() -> None:
        server = await picows.ws_create_server(route, host, port)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        run: Callable[[Any], Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    run(main())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Peer servers for benchmarks/fanout.py")
    p.add_argument("server", choices=["picows-raw"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    serve_picows(args.host, args.port)


if __name__ == "__main__":
    main()
