"""WebSocket: Starlette's WebSocket with Gobstopper's surface, over ASGI or Granian's RSGI."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from starlette.types import Receive, Send
from starlette.websockets import WebSocket as StarletteWebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .encoding import default_max_message_bytes, json_dumps, oversize
from .errors import CloseCode, ConnectionClosed, MessageTooBig
from .message import Message
from .outbound import ASGISink, Outbound, Overflow, RSGISink

__all__ = ["RSGI_EXTENSION", "Scope", "WebSocket"]

_log = logging.getLogger("fastapi_rooms")

#: Scope extension under which fastapi_rooms.rsgi hands over Granian's native transport.
RSGI_EXTENSION = "fastapi_rooms.rsgi"

_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes
# Codes an endpoint may send (RFC 6455 7.4, IANA registry); 1004-1006 and 1015 are reserved.
_SENDABLE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))
_CONNECTED = WebSocketState.CONNECTED
_DISCONNECTED = WebSocketState.DISCONNECTED


class Scope(MutableMapping[str, Any]):
    """The connection scope with attribute access (``scope.path``), as Gobstopper has it,
    and mapping access (``scope["path"]``), as ASGI and Starlette have it."""

    __slots__ = ("_scope",)

    def __init__(self, scope: MutableMapping[str, Any]) -> None:
        self._scope = scope

    def __getattr__(self, name: str) -> Any:
        try:
            return self._scope[name]
        except KeyError:
            raise AttributeError(f"scope has no {name!r}; it has {sorted(self._scope)}") from None

    def __getitem__(self, key: str) -> Any:
        return self._scope[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._scope[key] = value

    def __delitem__(self, key: str) -> None:
        del self._scope[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scope)

    def __len__(self) -> int:
        return len(self._scope)

    def __contains__(self, key: object) -> bool:
        return key in self._scope

    def get(self, key: str, default: Any = None) -> Any:
        return self._scope.get(key, default)

    def __repr__(self) -> str:
        return f"Scope(type={self._scope.get('type')!r}, path={self._scope.get('path')!r})"


def _clip_reason(reason: str) -> str:
    raw = reason.encode("utf-8")
    if len(raw) <= _MAX_REASON_BYTES:
        return reason
    return raw[:_MAX_REASON_BYTES].decode("utf-8", "ignore")


def _check_code(code: int) -> None:
    if not isinstance(code, int) or not (code in _SENDABLE_CODES or 3000 <= code <= 4999):
        raise ValueError(
            f"invalid WebSocket close code {code!r}: use 1000-1003, 1007-1014 or 3000-4999"
        )


class WebSocket(StarletteWebSocket):
    """One WebSocket connection: everything Starlette's has, plus Gobstopper's interface.

    ``receive()`` returns a ``Message`` (Gobstopper); ``receive_text``/``receive_json``/
    ``iter_text`` raise ``WebSocketDisconnect`` at the end as Starlette's do. Sends go through a
    bounded per-connection buffer shared with broadcasts, so a handler's own ``send_text`` and
    room broadcasts reach the client in the order they were made. Arbitrary attributes may be
    set on it (``websocket.user = user``).
    """

    user_id: str | None
    """Set by the router's ``authenticate`` hook (absent otherwise)."""
    _speaks_protocol = False  # set by the ready endpoint: it understands a "shutdown" event

    def __init__(
        self,
        scope: MutableMapping[str, Any],
        receive: Receive,
        send: Send,
        *,
        max_message_bytes: int | None = None,
        max_buffer: int = 1024,
        overflow: Overflow = "close",
        close_timeout: float = 5.0,
        accepted: bool = False,
    ) -> None:
        super().__init__(scope, receive, send)
        self._setup(max_message_bytes, max_buffer, overflow, close_timeout)
        if accepted:  # the handshake was completed by someone else
            self.client_state = self.application_state = _CONNECTED
            self._accepted = True

    def _setup(
        self,
        max_message_bytes: int | None,
        max_buffer: int,
        overflow: Overflow,
        close_timeout: float,
    ) -> None:
        scope = self.scope
        if not isinstance(scope, Scope):
            self.scope = scope = Scope(scope)
        self.max_message_bytes = (
            default_max_message_bytes() if max_message_bytes is None else max_message_bytes
        )
        self.close_timeout = close_timeout
        handle = scope.get("extensions", {}).get(RSGI_EXTENSION)
        self.transport = "asgi" if handle is None else "rsgi"
        """``"rsgi"`` when frames go straight to Granian's transport, else ``"asgi"``."""
        sink = ASGISink(self._send) if handle is None else RSGISink(handle)
        self.outbound = Outbound(sink, limit=max_buffer, policy=overflow, on_dead=self._dead)
        """This connection's outbound queue: the manager hands it broadcast frames."""
        self._accepted = self.application_state is _CONNECTED
        self._closed = False  # no more frames go out
        self._marked = False  # close code recorded and close listeners run
        self._finished = False  # the close was reported to the handler: receive() raises now
        self._receiving = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._listeners: dict[object, Callable[[WebSocket], None]] | None = None

    @classmethod
    def adopt(
        cls,
        websocket: StarletteWebSocket,
        *,
        max_message_bytes: int | None = None,
        max_buffer: int = 1024,
        overflow: Overflow = "close",
        close_timeout: float = 5.0,
    ) -> WebSocket:
        """Give a Starlette/FastAPI WebSocket this class's behaviour, in place.

        The same object keeps serving the code that holds it (a FastAPI endpoint, its
        dependencies): its sends now share the outbound buffer with broadcasts, and its
        ``receive_text()`` noticing the disconnect takes it out of every room.
        """
        if isinstance(websocket, cls):
            return websocket
        if type(websocket) is not StarletteWebSocket:
            raise TypeError(
                f"expected a starlette.websockets.WebSocket, got {type(websocket).__name__}"
            )
        websocket.__class__ = cls
        adopted: WebSocket = websocket  # type: ignore[assignment]
        adopted._setup(max_message_bytes, max_buffer, overflow, close_timeout)
        if websocket.application_state is _DISCONNECTED or websocket.client_state is _DISCONNECTED:
            adopted._closed = adopted._finished = True
            adopted.outbound.cancel()
            adopted._mark_closed(CloseCode.ABNORMAL, "closed before it was added")
        return adopted

    # State ---------------------------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        """True once the handshake completed (and still after the connection closed)."""
        return self._accepted

    @property
    def closed(self) -> bool:
        """True once the connection can no longer carry frames out."""
        return self._closed

    @property
    def path(self) -> str:
        return str(self.scope.get("path", ""))

    @property
    def user(self) -> Any:
        """What ``authenticate`` returned (or what the app set), else the scope's ``user``."""
        found = self.__dict__.get("_user", _MISSING)
        if found is not _MISSING:
            return found
        if "user" in self.scope:
            return self.scope["user"]
        raise AttributeError("this WebSocket has no user: set websocket.user or authenticate")

    @user.setter
    def user(self, value: Any) -> None:
        self.__dict__["_user"] = value

    @property
    def buffered(self) -> int:
        """Frames waiting in this connection's outbound buffer."""
        return self.outbound.queued

    @property
    def dropped(self) -> int:
        """Frames this connection never received: refused on overflow, or queued at close."""
        return self.outbound.dropped + self.outbound.discarded

    def _on_closed(self, key: object, listener: Callable[[WebSocket], None]) -> None:
        """Call ``listener(self)`` once when the connection closes; ``key`` allows removing it."""
        if self._closed:
            listener(self)
            return
        if self._listeners is None:
            self._listeners = {}
        self._listeners[key] = listener

    def _off_closed(self, key: object) -> None:
        if self._listeners is not None:
            self._listeners.pop(key, None)

    def _dead(self, code: int, reason: str) -> None:
        """Called by the outbound queue when the connection failed or was cut off."""
        self._mark_closed(code, reason)

    def _mark_closed(self, code: int, reason: str) -> None:
        if self._marked:
            return
        self._marked = self._closed = True
        if self.close_code is None:
            self.close_code = int(code)
            self.close_reason = reason
        listeners, self._listeners = self._listeners, None
        for listener in (listeners or {}).values():
            try:
                listener(self)
            except Exception:
                _log.exception("error in a close listener of %r", self)

    # Handshake ----------------------------------------------------------------------------

    async def accept(
        self, subprotocol: str | None = None, headers: Iterable[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Complete the handshake."""
        if self.application_state is _CONNECTED:
            raise RuntimeError("accept() called twice: this WebSocket is already accepted")
        if self._closed:
            raise RuntimeError("accept() after close(): the handshake was already rejected")
        if self.client_state is WebSocketState.CONNECTING:
            message = await self._receive()
            if message["type"] != "websocket.connect":
                if message["type"] == "websocket.disconnect":
                    self._finished = True
                    self.client_state = _DISCONNECTED
                    code = message.get("code", CloseCode.ABNORMAL)
                    self._mark_closed(code, "client left before accept")
                    raise ConnectionClosed(CloseCode.ABNORMAL, "client left before accept")
                raise RuntimeError(
                    f"expected 'websocket.connect' from the server, got {message['type']!r}"
                )
            self.client_state = _CONNECTED
        event: dict[str, Any] = {"type": "websocket.accept", "subprotocol": subprotocol}
        if headers is not None:
            event["headers"] = list(headers)
        try:
            await self._send(event)
        except Exception as exc:
            self._finished = True
            self._mark_closed(CloseCode.ABNORMAL, "handshake failed")
            raise ConnectionClosed(CloseCode.ABNORMAL, "handshake failed") from exc
        self.application_state = _CONNECTED
        self._accepted = True

    # Sending ------------------------------------------------------------------------------

    def _check_send(self, data: str | bytes) -> None:
        if self._closed:
            raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL, self.close_reason)
        if self.application_state is not _CONNECTED:
            raise RuntimeError("cannot send before accept(): call 'await websocket.accept()' first")
        size = oversize(data, self.max_message_bytes)
        if size:
            raise MessageTooBig(size, self.max_message_bytes)

    async def send_text(self, data: str) -> None:
        if not isinstance(data, str):
            raise TypeError(f"send_text() expects str, got {type(data).__name__}")
        self._check_send(data)
        await self._send_event({"type": "websocket.send", "text": data})

    async def send_bytes(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"send_bytes() expects bytes, got {type(data).__name__}")
        data = bytes(data)
        self._check_send(data)
        await self._send_event({"type": "websocket.send", "bytes": data})

    async def send_json(self, data: Any, mode: str = "text") -> None:
        """Send ``data`` JSON-encoded (the library's encoder) as one text or binary message."""
        if mode not in ("text", "binary"):
            raise ValueError(f"mode should be 'text' or 'binary', got {mode!r}")
        text = json_dumps(data)
        if mode == "text":
            await self.send_text(text)
        else:
            await self.send_bytes(text.encode("utf-8"))

    async def send(self, message: MutableMapping[str, Any]) -> None:
        """Send a raw ASGI event, through the same buffer and checks as ``send_text``."""
        kind = message["type"]
        if kind == "websocket.send":
            text = message.get("text")
            if text is not None:
                await self.send_text(text)
            else:
                await self.send_bytes(message.get("bytes") or b"")
        elif kind == "websocket.close":
            await self.close(message.get("code", CloseCode.NORMAL), message.get("reason") or "")
        elif kind == "websocket.accept":
            await self.accept(message.get("subprotocol"), message.get("headers"))
        elif kind.startswith("websocket.http.response."):
            await super().send(message)  # a denial response (Starlette checks the order)
            if self.application_state is _DISCONNECTED:
                self._closed = self._finished = True
                self._mark_closed(CloseCode.POLICY_VIOLATION, "handshake denied")
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r} for a WebSocket")

    async def _send_event(self, event: dict[str, Any]) -> None:
        try:
            await self.outbound.send(event)
        except ConnectionClosed:
            raise ConnectionClosed(
                self.close_code or CloseCode.ABNORMAL, self.close_reason
            ) from None

    # Receiving ----------------------------------------------------------------------------

    async def receive(self) -> Message:  # type: ignore[override]
        """The next message; a ``close`` message once the peer is gone, then ConnectionClosed."""
        if self.application_state is not _CONNECTED and not self._closed:
            raise RuntimeError(
                "cannot receive before accept(): call 'await websocket.accept()' first"
            )
        if self._finished:
            raise ConnectionClosed(self.close_code or CloseCode.ABNORMAL, self.close_reason)
        if self._receiving:
            raise RuntimeError("receive() is already waiting on this WebSocket in another task")
        self._receiving = True
        try:
            event = await self._receive()
        except Exception as exc:
            self._finished = True
            self.client_state = _DISCONNECTED
            self.outbound.cancel()
            self._mark_closed(CloseCode.ABNORMAL, f"receive failed: {type(exc).__name__}")
            return Message(
                "error",
                f"{type(exc).__name__}: {exc}",
                code=CloseCode.ABNORMAL,
                reason="receive failed",
            )
        finally:
            self._receiving = False
        kind = event["type"]
        if kind == "websocket.receive":
            text = event.get("text")
            data: str | bytes = text if text is not None else event.get("bytes") or b""
            size = oversize(data, self.max_message_bytes)
            if size:
                return await self._reject_oversize(size)
            return Message("text", text) if text is not None else Message("bytes", data)
        if kind == "websocket.disconnect":
            code = int(event.get("code", CloseCode.NO_STATUS))
            reason = event.get("reason")
            if reason is None and code == CloseCode.NO_STATUS:
                code = CloseCode.ABNORMAL  # the server saw no close frame: the connection dropped
            self._finished = True
            self.client_state = _DISCONNECTED
            self.outbound.cancel()
            self._mark_closed(code, reason or "")
            return Message("close", code=code, reason=reason or "")
        raise RuntimeError(f"expected 'websocket.receive' or 'websocket.disconnect', got {kind!r}")

    async def _reject_oversize(self, size: int) -> Message:
        reason = f"message of {size} bytes exceeds the limit of {self.max_message_bytes}"
        _log.info("closing %s with 1009: %s", self.path, reason)
        await self.close(CloseCode.MESSAGE_TOO_BIG, reason)
        self._finished = True
        return Message("close", code=CloseCode.MESSAGE_TOO_BIG, reason=reason)

    async def _receive_data(self, want: str) -> str | bytes:
        """The next text or bytes message, as Starlette's ``receive_*`` methods return them."""
        if self._finished:
            raise WebSocketDisconnect(self.close_code or CloseCode.ABNORMAL, self.close_reason)
        message = await self.receive()
        if message.type in ("close", "error"):
            raise WebSocketDisconnect(message.code or CloseCode.ABNORMAL, message.reason)
        if message.type != want:
            raise TypeError(f"expected a {want} message, got {message.type}")
        assert message.data is not None
        return message.data

    async def receive_text(self) -> str:
        """The next text message; ``WebSocketDisconnect`` once the peer is gone."""
        return str(await self._receive_data("text"))

    async def receive_bytes(self) -> bytes:
        """The next binary message; ``WebSocketDisconnect`` once the peer is gone."""
        data = await self._receive_data("bytes")
        assert isinstance(data, bytes)
        return data

    async def receive_json(self, mode: str = "text") -> Any:
        """The next message decoded as JSON; ``WebSocketDisconnect`` once the peer is gone."""
        if mode not in ("text", "binary"):
            raise ValueError(f"mode should be 'text' or 'binary', got {mode!r}")
        if mode == "text":
            return json.loads(await self._receive_data("text"))
        return json.loads(await self._receive_data("bytes"))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        """Text and bytes messages until the connection closes."""
        while not self._finished:
            message = await self.receive()
            if message.type in ("close", "error"):
                return
            yield message

    # Closing ------------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str | None = "") -> None:
        """Close with ``code`` and ``reason``; before ``accept()`` this rejects the handshake."""
        _check_code(code)
        if self._closed:
            return
        reason = _clip_reason(reason or "")
        event = {"type": "websocket.close", "code": int(code), "reason": reason}
        if self.application_state is not _CONNECTED:
            # Before the handshake completes a close rejects it: the client gets HTTP 403.
            self._closed = True
            self.application_state = _DISCONNECTED
            try:
                await self._send(event)
            finally:
                self._finished = True
                self._mark_closed(code, reason)
            return
        self.close_code, self.close_reason = int(code), reason
        try:
            await self.outbound.close(event, self.close_timeout)
        finally:  # cancelled meanwhile too: the connection is closed for everyone
            self.application_state = _DISCONNECTED
            self._mark_closed(code, reason)

    async def reject(self, status: int = 403, reason: str = "") -> None:
        """Refuse the handshake with an HTTP ``status`` (and ``reason`` as a text body).

        Servers without the ASGI WebSocket Denial Response extension answer 403 instead.
        """
        if self.application_state is _CONNECTED:
            raise RuntimeError("reject() after accept(): use close(code, reason) instead")
        if self._closed:
            return
        if not 400 <= status <= 599:
            raise ValueError(f"reject() needs an HTTP error status (400-599), got {status!r}")
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            await self.close(CloseCode.POLICY_VIOLATION, reason)
            return
        self._closed = True
        self.application_state = _DISCONNECTED
        body = reason.encode()
        try:
            await self._send(
                {
                    "type": "websocket.http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await self._send({"type": "websocket.http.response.body", "body": body})
        finally:
            self._finished = True
            self._mark_closed(CloseCode.POLICY_VIOLATION, reason)

    def _abort(self, code: int, reason: str) -> None:
        """Close without waiting: queued frames are dropped (and counted)."""
        if self.application_state is _CONNECTED:
            self.outbound.abort(code, _clip_reason(reason))
        self._mark_closed(code, reason)

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._closed
            else "open"
            if self.application_state is _CONNECTED
            else "connecting"
        )
        return f"<WebSocket {self.path} {state}>"


_MISSING = object()
