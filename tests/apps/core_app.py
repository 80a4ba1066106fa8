"""Test app for the real-server semantics and broadcast tests.

Handlers report what they saw through ``GET /test/reports/{key}`` (``?key=`` on the WebSocket
URL names the report), so a test can assert on the server's view of a connection as well as the
client's. ``CORE_MAX_BUFFER`` sets the manager's per-connection outbound buffer (frames).

Served as ``core_app:app`` (ASGI) and, once ``fastapi_rooms.rsgi`` exists, ``core_app:rsgi_app``.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from fastapi_rooms import ConnectionClosed, Message, RoomManager, WebSocket, create_rooms_router

manager = RoomManager(max_buffer=int(os.environ.get("CORE_MAX_BUFFER", "1024")))
rooms = create_rooms_router(manager, insecure_rest=True)  # test app: REST open
app = FastAPI()

# Reports ------------------------------------------------------------------------------------

_reports: dict[str, dict[str, Any]] = {}
_done: dict[str, asyncio.Event] = {}


def _event(key: str) -> asyncio.Event:
    return _done.setdefault(key, asyncio.Event())


def report(key: str | None, **fields: Any) -> None:
    """Merge ``fields`` into the report ``key`` (no-op without a key)."""
    if key:
        _reports.setdefault(key, {}).update(fields)


def finish(key: str | None, **fields: Any) -> None:
    """Complete the report ``key``: ``GET /test/reports/{key}`` returns it from now on."""
    if key:
        report(key, **fields)
        _event(key).set()


@app.get("/test/reports/{key}")
async def get_report(key: str, timeout: float = 10.0) -> dict[str, Any]:
    """The finished report ``key``, waiting up to ``timeout`` seconds for the handler to finish."""
    try:
        await asyncio.wait_for(_event(key).wait(), timeout)
    except asyncio.TimeoutError:
        raise HTTPException(
            404, detail={"error": f"report {key!r} not finished", "partial": _reports.get(key)}
        ) from None
    return _reports[key]


def query(websocket: WebSocket) -> dict[str, str]:
    raw = websocket.scope.query_string
    return {k: v[-1] for k, v in parse_qs(raw.decode("latin-1")).items()}


def describe_error(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "connection_closed": isinstance(exc, ConnectionClosed),
        "connection_error": isinstance(exc, ConnectionError),
        "runtime_error": isinstance(exc, RuntimeError),
        "value_error": isinstance(exc, ValueError),
    }


def describe(message: Message) -> dict[str, Any]:
    data = message.data
    return {
        "type": message.type,
        "kind": message.kind,
        "data_type": type(data).__name__,
        "data": data.hex() if isinstance(data, bytes) else data,
        "code": message.code,
    }


# WebSocket handlers ---------------------------------------------------------------------------


@rooms.websocket("/ws/describe")
async def describe_messages(websocket: WebSocket) -> None:
    """Answer every message with a JSON description of the Message the handler got."""
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message.type in ("close", "error"):
            return
        await websocket.send_text(json.dumps(describe(message)))


@rooms.websocket("/ws/echo")
async def echo(websocket: WebSocket) -> None:
    """Echo text as text and bytes as bytes; report the closing message and later use."""
    key = query(websocket).get("key")
    await websocket.accept()
    sizes: list[list[Any]] = []
    while True:
        message = await websocket.receive()
        if message.type == "text":
            sizes.append(["text", len(message.data)])  # type: ignore[arg-type]
            report(key, messages=sizes)
            await websocket.send_text(message.data)  # type: ignore[arg-type]
        elif message.type == "bytes":
            sizes.append(["bytes", len(message.data)])  # type: ignore[arg-type]
            report(key, messages=sizes)
            await websocket.send_bytes(message.data)  # type: ignore[arg-type]
        else:
            break
    after: dict[str, Any] = {}
    try:
        await websocket.receive()
    except Exception as exc:
        after["receive"] = describe_error(exc)
    else:
        after["receive"] = None
    try:
        await websocket.send_text("after close")
    except Exception as exc:
        after["send_text"] = describe_error(exc)
    else:
        after["send_text"] = None
    finish(key, messages=sizes, last=describe(message) | {"reason": message.reason}, after=after)


@rooms.websocket("/ws/scope/<name>")
async def scope_info(websocket: WebSocket, name: str) -> None:
    """Send what the scope looks like, then echo with ``async for`` until the client leaves."""
    key = query(websocket).get("key")
    scope = websocket.scope
    headers = list(scope.headers)
    websocket.user = {"name": name}  # type: ignore[attr-defined]
    websocket.anything = 42  # type: ignore[attr-defined]
    await websocket.accept()
    await websocket.send_text(
        json.dumps(
            {
                "name": name,
                "path": scope.path,
                "query_string_type": type(scope.query_string).__name__,
                "query_string": scope.query_string.decode("latin-1"),
                "headers_are_byte_pairs": all(
                    len(pair) == 2 and isinstance(pair[0], bytes) and isinstance(pair[1], bytes)
                    for pair in headers
                ),
                "x_test": [v.decode("latin-1") for k, v in headers if k.lower() == b"x-test"],
                "client": [str(part) for part in scope.client],
                "user": websocket.user,  # type: ignore[attr-defined]
                "anything": websocket.anything,  # type: ignore[attr-defined]
            }
        )
    )
    count = 0
    try:
        async for message in websocket:
            count += 1
            await websocket.send_text(f"iter:{message.type}:{message.data!r}")
    except Exception as exc:
        finish(key, count=count, ended="exception", error=describe_error(exc))
        raise
    finish(key, count=count, ended="loop")


@rooms.websocket("/ws/close/<int:code>")
async def close_with(websocket: WebSocket, code: int) -> None:
    """Accept, then close with ``code`` and ``?reason=``."""
    await websocket.accept()
    await websocket.close(code, query(websocket).get("reason", ""))


@rooms.websocket("/ws/reject")
async def reject(websocket: WebSocket) -> None:
    """Close before accept (``?code=`` optional): the handshake is refused."""
    code = int(query(websocket).get("code", "1000"))
    await websocket.close(code)


@rooms.websocket("/ws/no-accept")
async def no_accept(websocket: WebSocket) -> None:
    """Return without accepting."""


@rooms.websocket("/ws/raise")
async def raise_after_accept(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("about to raise")
    raise RuntimeError("handler failure on purpose (test)")


@rooms.websocket("/ws/misuse")
async def misuse(websocket: WebSocket) -> None:
    """Try what is not allowed and send back what was raised."""
    errors: dict[str, Any] = {}
    try:
        await websocket.send_text("too early")
    except Exception as exc:
        errors["send_before_accept"] = describe_error(exc)
    else:
        errors["send_before_accept"] = None
    try:
        await websocket.receive()
    except Exception as exc:
        errors["receive_before_accept"] = describe_error(exc)
    else:
        errors["receive_before_accept"] = None
    await websocket.accept()
    try:
        await websocket.accept()
    except Exception as exc:
        errors["second_accept"] = describe_error(exc)
    else:
        errors["second_accept"] = None
    await websocket.send_text(json.dumps(errors))
    await websocket.receive()


@rooms.websocket("/ws/oversend")
async def oversend(websocket: WebSocket) -> None:
    """Try to send ``?size=`` characters and bytes; report the errors, then prove it still works."""
    size = int(query(websocket).get("size", "0"))
    await websocket.accept()
    errors: dict[str, Any] = {}
    for kind, send, data in (
        ("text", websocket.send_text, "x" * size),
        ("bytes", websocket.send_bytes, b"x" * size),
    ):
        try:
            await send(data)  # type: ignore[operator]
        except Exception as exc:
            errors[kind] = describe_error(exc)
        else:
            errors[kind] = None
    await websocket.send_text(json.dumps(errors))
    await websocket.send_text("still open")
    await websocket.receive()


@rooms.websocket("/ws/member")
async def member(websocket: WebSocket) -> None:
    """A room member: ``?id=`` (connection id), ``?rooms=a,b`` joined at once, ``?cleanup=0`` to
    leave removal to the library. Commands are JSON ``{"op", "seq", ...}`` answered ``ack:<seq>``:
    ``join``/``leave`` (``room``), ``say`` (``room``, ``text``, ``exclude_self``), ``ping``."""
    params = query(websocket)
    cid = params["id"]
    cleanup = params.get("cleanup", "1") != "0"
    await websocket.accept()
    manager.add_connection(cid, websocket)
    try:
        for room in filter(None, params.get("rooms", "").split(",")):
            manager.join_room(cid, room)
        await websocket.send_text(f"ready:{cid}")
        async for message in websocket:
            command = json.loads(message.data)  # type: ignore[arg-type]
            op = command["op"]
            if op == "join":
                manager.join_room(cid, command["room"])
            elif op == "leave":
                manager.leave_room(cid, command["room"])
            elif op == "say":
                exclude = cid if command.get("exclude_self") else None
                await manager.broadcast_to_room(command["room"], command["text"], exclude=exclude)
            await websocket.send_text(f"ack:{command['seq']}")
    finally:
        if cleanup:
            manager.remove_connection(cid)


@rooms.websocket("/ws/ticker")
async def ticker(websocket: WebSocket) -> None:
    """Send a tick, sleep, repeat, until the connection closes."""
    await websocket.accept()
    i = 0
    try:
        while True:
            await websocket.send_text(f"tick:{i}")
            i += 1
            await asyncio.sleep(0.02)
    except ConnectionClosed:
        return


@rooms.websocket("/ws/flood-close/<int:code>")
async def flood_close(websocket: WebSocket, code: int) -> None:
    """Queue ``?count=`` messages of ``?size=`` characters without waiting, then close."""
    params = query(websocket)
    count, size = int(params.get("count", "100")), int(params.get("size", "64"))
    await websocket.accept()
    cid = f"flood-{id(websocket)}"
    manager.add_connection(cid, websocket)
    for seq in range(count):
        head = f"{seq:08d}|"
        await manager.send_to(cid, head + "x" * max(0, size - len(head)))
    await websocket.close(code, params.get("reason", ""))


# REST helpers ---------------------------------------------------------------------------------


@app.post("/test/burst/{room}")
async def burst(
    room: str, count: int, size: int = 64, start: int = 0, pause: float = 0.0
) -> dict[str, Any]:
    """Broadcast ``count`` text messages ``"<seq:08d>|xxx..."`` of ``size`` characters to ``room``,
    sleeping ``pause`` seconds between them; returns how many members took each message."""
    delivered: list[int] = []
    for seq in range(start, start + count):
        head = f"{seq:08d}|"
        delivered.append(
            await manager.broadcast_to_room(room, head + "x" * max(0, size - len(head)))
        )
        if pause:
            await asyncio.sleep(pause)
    return {"delivered": delivered}


class BytesBody(BaseModel):
    hex: str


@app.post("/test/bytes/{room}")
async def broadcast_bytes(room: str, body: BytesBody) -> dict[str, int]:
    """Broadcast raw bytes (given as hex) to ``room``."""
    return {"delivered": await manager.broadcast_to_room(room, bytes.fromhex(body.hex))}


app.include_router(rooms)

try:
    from fastapi_rooms.rsgi import RSGIApp  # type: ignore[import-not-found]
except ImportError:  # the RSGI adapter is not there yet
    rsgi_app = None
else:
    rsgi_app = RSGIApp(app)
