"""RSGIApp: serve a FastAPI/Starlette app under ``granian --interface rsgi``.

HTTP and lifespan go through an RSGI -> ASGI bridge, so every route, middleware and dependency
works as under uvicorn. WebSockets go through the same bridge for the handshake and routing
(so ``Depends`` and path parameters work), and the bridge hands the native RSGI transport to
fastapi_rooms' ``WebSocket`` (scope extension ``fastapi_rooms.rsgi``), whose sends go straight
to Granian: a broadcast starts one send per member without awaiting any of them.

RSGI cannot send a close code or reason, negotiate subprotocols or compression, or learn the
peer's close code; see the docs page "Running under Granian".
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..errors import CloseCode
from ..websocket import RSGI_EXTENSION

__all__ = ["RSGIApp"]

_log = logging.getLogger("fastapi_rooms")

ASGIApp = Callable[..., Awaitable[None]]
EXTENSION = RSGI_EXTENSION


def _split_addr(addr: str | None) -> tuple[str, int] | None:
    """'host:port' or '[v6]:port' -> (host, port)."""
    if not addr:
        return None
    host, sep, port = addr.rpartition(":")
    if not sep:
        return (addr, 0)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return (host, int(port))
    except ValueError:
        return (host, 0)


def _asgi_scope(scope: Any, kind: str, state: dict[str, Any]) -> dict[str, Any]:
    path = scope.path
    scheme = scope.scheme
    if kind == "websocket":
        scheme = "wss" if scheme == "https" else "ws"
    return {
        "type": kind,
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": getattr(scope, "method", "GET"),
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": scope.query_string.encode("latin-1"),
        "root_path": "",
        "headers": [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in scope.headers.items()
        ],
        "client": _split_addr(scope.client),
        "server": _split_addr(scope.server),
        "state": state.copy(),
        "extensions": {},
    }


def _valid_status(status: Any) -> int:
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise RuntimeError(f"invalid HTTP status {status!r}: expected an int from 100 to 599")
    return status


def _str_headers(raw: Any) -> list[tuple[str, str]]:
    return [(bytes(k).decode("latin-1"), bytes(v).decode("latin-1")) for k, v in raw or ()]


# HTTP ----------------------------------------------------------------------------------------


class _HTTPBridge:
    """One HTTP request: RSGI protocol in, ASGI receive/send out."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.body = protocol.__aiter__()
        self.body_done = False
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.started = False  # http.response.start seen
        self.responded = False  # a response call was made to Granian
        self.stream: Any = None

    async def receive(self) -> dict[str, Any]:
        if not self.body_done:
            try:
                chunk = await self.body.__anext__()
            except StopAsyncIteration:
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            if not chunk:
                self.body_done = True
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": bytes(chunk), "more_body": True}
        await self.protocol.client_disconnect()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.status = _valid_status(message["status"])
            self.headers = _str_headers(message.get("headers"))
            self.started = True
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            if self.stream is None and not more:
                if self.responded:
                    return
                self.responded = True
                self.protocol.response_bytes(self.status, self.headers, body)
                return
            if self.stream is None:
                self.responded = True
                self.stream = self.protocol.response_stream(self.status, self.headers)
            if body:
                await self.stream.send_bytes(body)
        elif kind == "http.response.pathsend":
            if not self.started or self.responded:
                raise RuntimeError("http.response.pathsend out of order")
            self.responded = True
            self.protocol.response_file(self.status, self.headers, str(message["path"]))
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for an HTTP request")


async def _serve_http(app: ASGIApp, scope: Any, protocol: Any, state: dict[str, Any]) -> None:
    asgi_scope = _asgi_scope(scope, "http", state)
    asgi_scope["extensions"] = {"http.response.pathsend": {}}
    bridge = _HTTPBridge(protocol)
    try:
        await app(asgi_scope, bridge.receive, bridge.send)
    except Exception:
        _log.exception("exception in ASGI application for %s %s", asgi_scope["method"], scope.path)
        if not bridge.responded:
            bridge.responded = True
            protocol.response_str(500, [("content-type", "text/plain")], "Internal Server Error")
        return
    if not bridge.responded:
        if bridge.started:  # start without a final body: end it empty
            protocol.response_bytes(bridge.status, bridge.headers, b"")
        else:
            _log.error("ASGI application returned without a response for %s", scope.path)
            protocol.response_str(500, [("content-type", "text/plain")], "Internal Server Error")


# WebSocket -----------------------------------------------------------------------------------


class RSGIWebSocketHandle:
    """The native RSGI side of one WebSocket, shared by the bridge and fastapi_rooms' WebSocket."""

    __slots__ = (
        "_waiter",
        "accepted",
        "close_code",
        "closed",
        "connected",
        "protocol",
        "transport",
    )

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.transport: Any = None
        self.connected = False  # websocket.connect delivered
        self.accepted = False
        self.closed = False
        self.close_code: int = CloseCode.NORMAL
        self._waiter: asyncio.Future[Any] | None = None  # a receive() in progress

    async def receive(self) -> dict[str, Any]:
        if not self.connected:
            self.connected = True
            return {"type": "websocket.connect"}
        if self.closed:
            return {"type": "websocket.disconnect", "code": self.close_code, "reason": ""}
        if self.transport is None:
            return {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL}
        # Wait through a future that close() can resolve: Granian's receive() does not return
        # when the app closes the connection, and the handler must not hang on it.
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.transport.receive().add_done_callback(
            lambda done: None if waiter.done() else waiter.set_result(done)
        )
        try:
            done = await waiter
        finally:
            self._waiter = None
        if done is None:  # closed by the app meanwhile
            return {"type": "websocket.disconnect", "code": self.close_code, "reason": ""}
        try:
            message = done.result()
        except RuntimeError:  # Granian's ProtocolClosed / ProtocolError
            self.closed = True
            return {"type": "websocket.disconnect", "code": CloseCode.ABNORMAL}
        kind = int(message.kind)
        if kind == 2:
            return {"type": "websocket.receive", "text": message.data}
        if kind == 1:
            return {"type": "websocket.receive", "bytes": bytes(message.data)}
        self.closed = True
        # The client sent a close frame; RSGI does not expose its code.
        return {"type": "websocket.disconnect", "code": CloseCode.NO_STATUS, "reason": ""}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            if self.accepted:
                raise RuntimeError("websocket.accept sent twice")
            if self.closed:
                raise RuntimeError("websocket.accept after websocket.close")
            if message.get("subprotocol"):
                _log.warning(
                    "RSGI cannot negotiate a subprotocol; %r ignored", message["subprotocol"]
                )
            self.transport = await self.protocol.accept()
            self.accepted = True
        elif kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            if self.closed:
                raise RuntimeError("websocket.send after the connection closed")
            text = message.get("text")
            if text is not None:
                await self.transport.send_str(text)
            else:
                await self.transport.send_bytes(bytes(message.get("bytes") or b""))
        elif kind == "websocket.close":
            self.close(None if self.accepted else 403, message.get("code", CloseCode.NORMAL))
        elif kind == "websocket.http.response.start":
            if self.accepted:
                raise RuntimeError("websocket.http.response.start after accept")
            self.close(_valid_status(message["status"]))
        elif kind == "websocket.http.response.body":
            pass  # RSGI rejects with a bare status: the body cannot be sent
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for a WebSocket")

    def close(self, status: int | None, code: int = CloseCode.NORMAL) -> None:
        """Close once: before accept a valid HTTP status (never a WebSocket code), after it none.

        ``code`` is what the app meant to send; RSGI cannot carry it, the app's own receive()
        reports it.
        """
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self.protocol.close(status if not self.accepted else None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def release(self) -> None:
        """Drop the transport so Granian can complete the peer's close."""
        if not self.closed:
            self.close(None if self.accepted else 403)
        self.transport = None


async def _serve_websocket(app: ASGIApp, scope: Any, protocol: Any, state: dict[str, Any]) -> None:
    asgi_scope = _asgi_scope(scope, "websocket", state)
    handle = RSGIWebSocketHandle(protocol)
    asgi_scope["extensions"] = {EXTENSION: handle, "websocket.http.response": {}}
    asgi_scope["subprotocols"] = []
    try:
        await app(asgi_scope, handle.receive, handle.send)
    except Exception:
        _log.exception("exception in ASGI application for WebSocket %s", scope.path)
        if not handle.accepted:
            handle.close(500)
    finally:
        handle.release()


# Lifespan ------------------------------------------------------------------------------------


class _Lifespan:
    def __init__(self, app: ASGIApp, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.task: asyncio.Task[None] | None = None
        self.started: asyncio.Future[None] | None = None
        self.stopped: asyncio.Future[None] | None = None
        self.shutdown = asyncio.Event()
        self.supported = True

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.create_future()
        self.stopped = loop.create_future()
        self.task = loop.create_task(self._run())
        await self.started

    async def _run(self) -> None:
        phase = ["startup"]

        async def receive() -> dict[str, Any]:
            if phase[0] == "startup":
                phase[0] = "running"
                return {"type": "lifespan.startup"}
            await self.shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: MutableMapping[str, Any]) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                _resolve(self.started)
            elif kind == "lifespan.startup.failed":
                _resolve(self.started, RuntimeError(f"startup failed: {message.get('message')}"))
            elif kind == "lifespan.shutdown.complete":
                _resolve(self.stopped)
            elif kind == "lifespan.shutdown.failed":
                _resolve(self.stopped, RuntimeError(f"shutdown failed: {message.get('message')}"))

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        try:
            await self.app(scope, receive, send)
        except BaseException as exc:
            if self.started is not None and not self.started.done():
                self.supported = False
                _log.info("the app does not support lifespan: %r", exc)
                _resolve(self.started)
            else:
                _log.exception("lifespan failed")
        finally:
            _resolve(self.stopped)

    async def stop(self) -> None:
        self.shutdown.set()
        if self.stopped is not None:
            await self.stopped
        if self.task is not None:
            await self.task


def _resolve(future: asyncio.Future[None] | None, exc: BaseException | None = None) -> None:
    if future is None or future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)


class RSGIApp:
    """``RSGIApp(app)``: the same ASGI app under ``granian --interface rsgi`` (and still ASGI).

    By default it tunes Python's garbage collector once the app has started under Granian:
    ``gc.freeze()`` (the collector stops rescanning what start-up made) and a first threshold
    of 50,000 instead of 700. Every frame in flight to Granian is an object the collector
    tracks; with thousands in flight, frequent young collections promote them, which brings
    on full collections of every connection's objects (40-70 ms with 1000 connections): the
    untuned p99 was 5x the tuned one. Both settings are process-wide and logged at start-up;
    ``RSGIApp(app, freeze_gc=False, gc_threshold=None)`` keeps Python's. The Granian docs page
    has the measurements.
    """

    def __init__(
        self, app: ASGIApp, *, freeze_gc: bool = True, gc_threshold: int | None = 50_000
    ) -> None:
        if gc_threshold is not None and (
            isinstance(gc_threshold, bool) or not isinstance(gc_threshold, int) or gc_threshold < 1
        ):
            raise ValueError(f"gc_threshold must be a positive int or None, got {gc_threshold!r}")
        self.app = app
        self.freeze_gc = freeze_gc
        self.gc_threshold = gc_threshold
        self.state: dict[str, Any] = {}
        self._lifespan: _Lifespan | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._lifespan = _Lifespan(self.app, self.state)
        loop.run_until_complete(self._lifespan.startup())
        if self.gc_threshold is not None:
            gc.set_threshold(self.gc_threshold, *gc.get_threshold()[1:])
        if self.freeze_gc:
            gc.collect()
            gc.freeze()
        _log.info(
            "RSGIApp: garbage collector thresholds %s, %s objects frozen after start-up "
            "(RSGIApp(app, freeze_gc=False, gc_threshold=None) keeps Python's settings)",
            gc.get_threshold(),
            gc.get_freeze_count(),
        )

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._lifespan is not None:
            loop.run_until_complete(self._lifespan.stop())

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto == "ws":
            await _serve_websocket(self.app, scope, protocol, self.state)
        else:
            await _serve_http(self.app, scope, protocol, self.state)
