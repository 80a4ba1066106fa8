"""Every public error of fastapi_rooms, and the WebSocket close codes it uses."""

from __future__ import annotations

from enum import IntEnum
from typing import Literal

__all__ = [
    "BackendUnavailable",
    "CloseCode",
    "ConfigurationError",
    "ConnectionClosed",
    "JoinRefused",
    "MessageTooBig",
    "RoomsError",
]


class CloseCode(IntEnum):
    """Close codes fastapi_rooms sends (RFC 6455 section 7.4)."""

    NORMAL = 1000
    GOING_AWAY = 1001  # server shutdown, unmatched path, idle timeout
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never sent: what a peer reports when the close frame had no code
    ABNORMAL = 1006  # never sent: the connection dropped without a close frame
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008  # rate limit, refused origin or join policy
    MESSAGE_TOO_BIG = 1009  # an inbound message over the size limit
    INTERNAL_ERROR = 1011  # the handler raised
    SERVICE_RESTART = 1012  # uvicorn's own close at shutdown
    TRY_AGAIN_LATER = 1013  # slow consumer: its outbound buffer overflowed
    RESYNC = 4000  # missed messages of a room with history, or it is unavailable: reconnect


class RoomsError(Exception):
    """Base class of every error fastapi_rooms raises on purpose."""


class ConnectionClosed(RoomsError, ConnectionError, RuntimeError):
    """Raised on use of a closed WebSocket.

    A ``ConnectionError`` as Gobstopper's guide documents, and a ``RuntimeError`` as
    Granian's ``ProtocolClosed`` is, so handlers written against either keep working.
    """

    def __init__(self, code: int = CloseCode.ABNORMAL, reason: str = "") -> None:
        self.code = int(code)
        self.reason = reason
        detail = f": {reason}" if reason else ""
        super().__init__(f"WebSocket is closed (code {self.code}{detail})")


class BackendUnavailable(RoomsError, ConnectionError):
    """A message of a room with history was not sent: the backend that numbers it is
    unreachable (or its queue is full), so no member, here or elsewhere, got it."""


class MessageTooBig(RoomsError, ValueError):
    """An outbound message is larger than the connection's message size limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


JoinRefusalCode = Literal["forbidden", "too_many_rooms", "room_full", "unknown_namespace"]


class JoinRefused(RoomsError, PermissionError):
    """``join_room`` refused: ``code`` is ``forbidden``, ``too_many_rooms``, ``room_full`` or
    ``unknown_namespace`` (strict namespaces); ``reason`` says why, for the client."""

    def __init__(self, code: JoinRefusalCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ConfigurationError(RoomsError, RuntimeError):
    """The app is wired in a way that cannot work; the message says what to change."""
