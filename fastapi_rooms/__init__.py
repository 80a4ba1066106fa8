"""Rooms, presence and broadcast for FastAPI and Starlette WebSockets."""

from .dependencies import get_manager
from .manager import JoinRefused, RoomManager, WebSocketManager
from .message import ConnectionClosed, Message
from .routing import RoomsRouter, create_rooms_router
from .websocket import WebSocket

__all__ = [
    "ConnectionClosed",
    "JoinRefused",
    "Message",
    "RoomManager",
    "RoomsRouter",
    "WebSocket",
    "WebSocketManager",
    "create_rooms_router",
    "get_manager",
]

__version__ = "0.1.0"
