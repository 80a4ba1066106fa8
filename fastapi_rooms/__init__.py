"""Rooms, presence and broadcast for FastAPI and Starlette WebSockets."""

from .compat.gobstopper import WebSocketManager
from .connection import Connection
from .errors import (
    BackendUnavailable,
    CloseCode,
    ConfigurationError,
    ConnectionClosed,
    JoinRefused,
    MessageTooBig,
    RoomsError,
)
from .fastapi.dependencies import get_manager
from .fastapi.router import RoomsRouter, create_rooms_router
from .manager import RoomManager
from .message import Message
from .namespaces import Namespace
from .policy import Limits, RateLimiter
from .websocket import WebSocket

__all__ = [
    "BackendUnavailable",
    "CloseCode",
    "ConfigurationError",
    "Connection",
    "ConnectionClosed",
    "JoinRefused",
    "Limits",
    "Message",
    "MessageTooBig",
    "Namespace",
    "RateLimiter",
    "RoomManager",
    "RoomsError",
    "RoomsRouter",
    "WebSocket",
    "WebSocketManager",
    "create_rooms_router",
    "get_manager",
]

__version__ = "0.2.0"
