"""Gobstopper-compatible WebSocket over ASGI (and, through a transport, RSGI)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from ._frame import MessageTooBig, default_max_message_bytes, json_dumps, oversize
from .message import ConnectionClosed, Message
from .outbound import Outbound, Overflow, RSGIOutbound

__all__ = ["Scope", "WebSocket"]

_log = logging.getLogger("fastapi_rooms")

_MAX_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes
# Codes an endpoint may send (RFC 6455 7.4, IANA registry); 1004-1006 and 1015 are reserved.
_SENDABLE_CODES = frozenset((1000, 1001, 1002, 1003, *range(1007, 1015)))


class Scope:
    """The connection scope with attribute access (``scope.path``) and mapping access."""

    __slots__ = ("_scope",)

    def __init__(self, scope: Mapping[str, Any]) -> None:
        self._scope = scope

    def __getattr__(self, name: str) -> Any:
        try:
            return self._scope[name]
        except KeyError:
            raise AttributeError(f"scope has no {name!r}; it has {sorted(self._scope)}") from None

    def __getitem__(self, key: str) -> Any:
        return self._scope[key]

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


class WebSocket:
    """One WebSocket connection with Gobstopper's interface.

    Sends go through a bounded per-connection buffer shared with broadcasts, so a handler's own
    ``send_text`` and room broadcasts reach the client in the order they were made. Arbitrary
    attributes may be set on it (``websocket.user = user``).
    """

    def __init__(
        self,
        scope: Mapping[str, Any],
        receive: Callable[[], Any],
        send: Callable[[dict[str, Any]], Any],
        *,
        max_message_bytes: int | None = None,
        max_buffer: int = 1024,
        overflow: Overflow = "close",
        close_timeout: float = 5.0,
        accepted: bool = False,
    ) -> None:
        self.scope = Scope(scope)
        self._receive = receive
        self._send = send
        self.max_message_bytes = (
            default_max_message_bytes() if max_message_bytes is None else max_message_bytes
        )
        self.close_timeout = close_timeout
        handle = scope.get("extensions", {}).get("fastapi_rooms.rsgi")
        #: "rsgi" when frames go straight to Granian's transport, else "asgi".
        self.transport = "asgi" if handle is None else "rsgi"
        self._outbound: Outbound = (
            Outbound(send, limit=max_buffer, policy=overflow, on_dead=self._dead)
            if handle is None
            else RSGIOutbound(handle, send, limit=max_buffer, policy=overflow, on_dead=self._dead)
        )
        self._accepted = accepted
        self._closed = False  # no more frames go out
        self._marked = False  # close code recorded and close listeners run
        self._finished = False  # the close was reported to the handler: receive() raises now
        self._receiving = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._listeners: dict[object, Callable[[WebSocket], None]] = {}

    @classmethod
    def from_starlette(cls, websocket: Any, **options: Any) -> WebSocket:
        """Wrap a Starlette/FastAPI WebSocket (accepted or not)."""
        from starlette.websockets import WebSocketState

        accepted = websocket.application_state == WebSocketState.CONNECTED
        ws = cls(websocket.scope, websocket._receive, websocket._send, accepted=accepted, **options)
        if websocket.application_state == WebSocketState.DISCONNECTED:
            ws._closed = ws._finished = True
            ws._outbound.cancel()
        return ws

    # State ---------------------------------------------------------------------------------

    @property
    def accepted(self) -> bool:
        return self._accepted

    @property
    def closed(self) -> bool:
        """True once the connection can no longer carry frames out."""
        return self._closed

    @property
    def client(self) -> Any:
        return self.scope.get("client")

    @property
    def path(self) -> str:
        return str(self.scope.get("path", ""))

    @property
    def buffered(self) -> int:
        """Frames waiting in this connection's outbound buffer."""
        return self._outbound.queued

    @property
    def dropped(self) -> int:
        """Frames this connection never received: refused on overflow, or queued at close."""
        return self._outbound.dropped + self._outbound.discarded

    def _on_closed(self, key: object, listener: Callable[[WebSocket], None]) -> None:
        """Call ``listener(self)`` once when the connection closes; ``key`` allows removing it."""
        if self._closed:
            listener(self)
        else:
            self._listeners[key] = listener

    def _off_closed(self, key: object) -> None:
        self._listeners.pop(key, None)

    def _dead(self, code: int, reason: str) -> None:
        """Called by the outbound buffer when the connection failed or was cut off."""
        self._mark_closed(code, reason)

    def _mark_closed(self, code: int, reason: str) -> None:
        if self._marked:
            return
        self._marked = self._closed = True
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        listeners, self._listeners = self._listeners, {}
        for listener in listeners.values():
            try:
                listener(self)
            except Exception:
                _log.exception("error in a close listener of %r", self)

    # Handshake ----------------------------------------------------------------------------

    async def accept(
        self, subprotocol: str | None = None, headers: Iterable[tuple[bytes, bytes]] | None = None
    ) -> None:
        """Complete the handshake."""
        if self._accepted:
            raise RuntimeError("accept() called twice: this WebSocket is already accepted")
        if self._closed:
            raise RuntimeError("accept() after close(): the handshake was already rejected")
        message = await self._receive()
        if message["type"] != "websocket.connect":
            if message["type"] == "websocket.disconnect":
                self._finished = True
                self._mark_closed(message.get("code", 1006), "client left before accept")
                raise ConnectionClosed(1006, "client left before accept")
            raise RuntimeError(
                f"expected 'websocket.connect' from the server, got {message['type']!r}"
            )
        event: dict[str, Any] = {"type": "websocket.accept", "subprotocol": subprotocol}
        if headers is not None:
            event["headers"] = list(headers)
        try:
            await self._send(event)
        except Exception as exc:
            self._finished = True
            self._mark_closed(1006, "handshake failed")
            raise ConnectionClosed(1006, "handshake failed") from exc
        self._accepted = True

    # Sending ------------------------------------------------------------------------------

    def _check_send(self, data: str | bytes) -> None:
        if not self._accepted:
            raise RuntimeError("cannot send before accept(): call 'await websocket.accept()' first")
        if self._closed:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)
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

    async def send_json(self, data: Any) -> None:
        """Send ``data`` JSON-encoded as one text message."""
        await self.send_text(json_dumps(data))

    async def _send_event(self, event: dict[str, Any]) -> None:
        try:
            await self._outbound.send(event)
        except ConnectionClosed:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason) from None

    # Receiving ----------------------------------------------------------------------------

    async def receive(self) -> Message:
        """The next message; a ``close`` message once the peer is gone, then ConnectionClosed."""
        if not self._accepted:
            raise RuntimeError(
                "cannot receive before accept(): call 'await websocket.accept()' first"
            )
        if self._finished:
            raise ConnectionClosed(self.close_code or 1006, self.close_reason)
        if self._receiving:
            raise RuntimeError("receive() is already waiting on this WebSocket in another task")
        self._receiving = True
        try:
            event = await self._receive()
        except Exception as exc:
            self._finished = True
            self._outbound.cancel()
            self._mark_closed(1006, f"receive failed: {type(exc).__name__}")
            return Message(
                "error", f"{type(exc).__name__}: {exc}", code=1006, reason="receive failed"
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
            code = int(event.get("code", 1005))
            reason = event.get("reason")
            if reason is None and code == 1005:
                code = 1006  # the server saw no close frame: the connection dropped
            self._finished = True
            self._outbound.cancel()
            self._mark_closed(code, reason or "")
            return Message("close", code=code, reason=reason or "")
        raise RuntimeError(f"expected 'websocket.receive' or 'websocket.disconnect', got {kind!r}")

    async def _reject_oversize(self, size: int) -> Message:
        reason = f"message of {size} bytes exceeds the limit of {self.max_message_bytes}"
        _log.info("closing %s with 1009: %s", self.path, reason)
        await self.close(1009, reason)
        self._finished = True
        return Message("close", code=1009, reason=reason)

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

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason``; before ``accept()`` this rejects the handshake."""
        if not isinstance(code, int) or not (code in _SENDABLE_CODES or 3000 <= code <= 4999):
            raise ValueError(
                f"invalid WebSocket close code {code!r}: use 1000-1003, 1007-1014 or 3000-4999"
            )
        if self._closed:
            return
        reason = _clip_reason(reason)
        event = {"type": "websocket.close", "code": code, "reason": reason}
        if not self._accepted:
            # Before the handshake completes a close rejects it: the client gets HTTP 403.
            self._closed = True
            try:
                await self._send(event)
            finally:
                self._finished = True
                self._mark_closed(code, reason)
            return
        self.close_code, self.close_reason = code, reason
        await self._outbound.close(event, self.close_timeout)
        self._mark_closed(code, reason)

    async def reject(self, status: int = 403, reason: str = "") -> None:
        """Refuse the handshake with an HTTP ``status`` (and ``reason`` as a text body).

        Servers without the ASGI WebSocket Denial Response extension answer 403 instead.
        """
        if self._accepted:
            raise RuntimeError("reject() after accept(): use close(code, reason) instead")
        if self._closed:
            return
        if not 400 <= status <= 599:
            raise ValueError(f"reject() needs an HTTP error status (400-599), got {status!r}")
        if "websocket.http.response" not in self.scope.get("extensions", {}):
            await self.close(1008, reason)
            return
        self._closed = True
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
            self._mark_closed(1008, reason)

    def _abort(self, code: int, reason: str) -> None:
        """Close without waiting: queued frames are dropped (and counted)."""
        if self._accepted:
            self._outbound.abort(code, _clip_reason(reason))
        self._mark_closed(code, reason)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._accepted else "connecting"
        return f"<WebSocket {self.path} {state}>"
