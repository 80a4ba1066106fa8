"""What ``WebSocket.receive()`` returns."""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["Message", "MessageType"]

MessageType = Literal["text", "bytes", "close", "error"]

# Granian numbers message kinds 0 close, 1 bytes, 2 text; "error" ends the connection too.
_KINDS: dict[str, int] = {"close": 0, "error": 0, "bytes": 1, "text": 2}


class Message:
    """One received WebSocket message: ``type``, ``data``, ``kind`` and, on close, ``code``."""

    __slots__ = ("code", "data", "reason", "type")

    type: MessageType
    data: str | bytes | None
    code: int | None
    reason: str

    def __init__(
        self,
        type: MessageType,
        data: str | bytes | None = None,
        *,
        code: int | None = None,
        reason: str = "",
    ) -> None:
        self.type = type
        self.data = data
        self.code = code
        self.reason = reason

    def __getitem__(self, key: str) -> Any:
        """The ASGI event's keys (``message["type"] == "websocket.receive"``, ``["text"]``,
        ``["bytes"]``, ``["code"]``), for code written against Starlette's ``receive()``."""
        if key == "type":
            ended = self.type in ("close", "error")
            return "websocket.disconnect" if ended else "websocket.receive"
        if key == "text" and self.type == "text":
            return self.data
        if key == "bytes" and self.type == "bytes":
            return self.data
        if key == "code" and self.code is not None:
            return self.code
        if key == "reason" and self.type in ("close", "error"):
            return self.reason
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    @property
    def kind(self) -> int:
        """Granian's number for this type: 0 close (and error), 1 bytes, 2 text."""
        return _KINDS[self.type]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.type, self.data, self.code, self.reason) == (
            other.type,
            other.data,
            other.code,
            other.reason,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.data, self.code, self.reason))

    def __repr__(self) -> str:
        if self.type in ("close", "error"):
            return f"Message(type={self.type!r}, code={self.code!r}, reason={self.reason!r})"
        data = self.data
        shown: object = data
        if isinstance(data, str) and len(data) > 60:
            shown = data[:57] + "..."
        elif isinstance(data, bytes) and len(data) > 60:
            shown = data[:57] + b"..."
        return f"Message(type={self.type!r}, data={shown!r})"
