# The guide formats message.data (a str in the "text" branches) into f-strings:
# mypy: disable-error-code="str-bytes-safe"
"""Every pattern of Gobstopper's WebSocket guide, running on fastapi-rooms.

The handler bodies are the guide's, nearly verbatim: only the imports, ``app = FastAPI()``,
``rooms = create_rooms_router(websocket_manager)``, ``@rooms.websocket(...)`` and the final
``app.include_router(rooms)`` change. The guide's placeholders (``verify_jwt_token``,
``load_image_bytes``, ``get_live_metrics`` ...) are small deterministic functions here, and its
REST endpoints take Pydantic bodies and ``Depends(get_manager)`` the FastAPI way.

Run it::

    uvicorn gobstopper_guide:app              # from the examples/ directory
    granian --interface rsgi gobstopper_guide:rsgi_app

Tokens are fake: ``<name>-token`` (for example ``alice-token``) authenticates user ``<name>``.
Limits come from the environment so tests can use small numbers: ``MAX_CONNECTIONS``,
``MAX_CONNECTIONS_PER_IP``, ``MAX_ROOM_SIZE``, ``MAX_MESSAGES_PER_MINUTE``; the update intervals
from ``LIVE_DATA_INTERVAL`` (seconds, default 1) and ``UPLOAD_POLL_INTERVAL`` (default 0.5).

Two guide examples share a path with another one, so they moved: the "Connection Lifecycle"
handler (``/ws`` is the rooms router's ready-made endpoint) is at ``/ws/lifecycle``, the
``receive()`` example is at ``/ws/receive``, and the "Complete Chat Application" (the guide puts
it at ``/ws/chat`` too) is at ``/ws/chat-app``.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from fastapi_rooms import RoomManager, WebSocket, WebSocketManager, create_rooms_router, get_manager


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {raw!r}")
    return value


LIVE_DATA_INTERVAL = _env_float("LIVE_DATA_INTERVAL", 1.0)
UPLOAD_POLL_INTERVAL = _env_float("UPLOAD_POLL_INTERVAL", 0.5)


class App(FastAPI):
    """A plain FastAPI app plus the ``logger`` a Gobstopper app has (the guide calls app.logger)."""

    logger = logging.getLogger("gobstopper_guide")


app = App(title="Gobstopper's WebSocket guide on fastapi-rooms")

# Create global manager instance. ROOMS_BACKEND=redis://... shares rooms across workers
# (every broadcast pattern below then spans them; see docs/scaling.md).
websocket_manager = WebSocketManager(
    os.environ.get("ROOMS_BACKEND") or None,
    prefix=os.environ.get("ROOMS_PREFIX", "gobstopper_guide"),
)
# The router's REST endpoints (POST /broadcast, GET /stats, ...) publish and reveal state:
# operators only, with X-Admin-Token: $GUIDE_ADMIN_TOKEN (a random one when unset).
ADMIN_TOKEN = os.environ.get("GUIDE_ADMIN_TOKEN") or secrets.token_urlsafe(16)


def require_operator(x_admin_token: Annotated[str, Header()] = "") -> None:
    if not secrets.compare_digest(x_admin_token, ADMIN_TOKEN):
        raise HTTPException(401, "X-Admin-Token required")


rooms = create_rooms_router(websocket_manager, rest_dependencies=[Depends(require_operator)])

Manager = Annotated[RoomManager, Depends(get_manager)]


# The guide's placeholders, made small and deterministic ---------------------------------------


@dataclass(frozen=True)
class User:
    id: str
    username: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "username": self.username}


_TOKEN = re.compile(r"(?P<name>[A-Za-z0-9_]+)-token")


async def verify_jwt_token(token: str) -> User:
    """A stand-in for JWT verification: ``<name>-token`` is user ``<name>``."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise ValueError("invalid token")
    name = match["name"]
    return User(id=name, username=name.capitalize())


async def authenticate_token(token: str) -> User | None:
    try:
        return await verify_jwt_token(token)
    except ValueError:
        return None


def get_user_id_from_connection(websocket: WebSocket) -> str:
    for param in websocket.scope.query_string.decode().split("&"):
        if param.startswith("user_id="):
            return str(param.split("=", 1)[1])
    return "anonymous"


async def load_image_bytes(name: str) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + name.encode()


def get_large_dataset() -> list[dict[str, int]]:
    return [{"id": i, "value": i * i} for i in range(100)]


processed: deque[tuple[str, Any]] = deque(maxlen=100)  # what /ws/receive handled, newest last


async def process_chat_message(data: Any) -> None:
    processed.append(("chat", data))


async def process_binary_data(data: bytes) -> None:
    processed.append(("binary", len(data)))


async def get_live_metrics() -> dict[str, Any]:
    return {"cpu": 12.5, "memory": 48.0, "connections": len(websocket_manager.connections)}


# Uploads in memory; POST /api/uploads and /api/uploads/{id}/progress move them along.
uploads: dict[str, dict[str, Any]] = {}


async def get_upload_progress(upload_id: str) -> dict[str, Any] | None:
    progress = uploads.get(upload_id)
    return dict(progress) if progress is not None else None


# WebSocket Class: connection lifecycle and methods --------------------------------------------


@rooms.websocket("/ws/lifecycle")
async def websocket_handler(websocket: WebSocket) -> None:
    # 1. Accept the connection
    await websocket.accept()
    # 2. Handle messages
    try:
        while True:
            message = await websocket.receive()
            if message.type == "text":
                await websocket.send_text(f"Echo: {message.data}")
            elif message.type == "close":
                break
    except ConnectionError:
        # Handle disconnection
        pass


@rooms.websocket("/ws/connect")
async def connect_handler(websocket: WebSocket) -> None:
    try:
        await websocket.accept()
        await websocket.send_text("Connected successfully!")
    except ConnectionError:
        # Connection failed
        app.logger.error("Failed to accept WebSocket connection")


@rooms.websocket("/ws/notifications")
async def notification_handler(websocket: WebSocket) -> None:
    await websocket.accept()
    # Send simple message
    await websocket.send_text("Welcome to notifications!")
    # Send JSON data
    notification = {
        "type": "alert",
        "message": "New message received",
        "timestamp": datetime.utcnow().isoformat(),
    }
    await websocket.send_text(json.dumps(notification))
    # Send formatted message
    user_id = get_user_id_from_connection(websocket)
    await websocket.send_text(f"User {user_id} connected at {datetime.now()}")


@rooms.websocket("/ws/binary")
async def binary_handler(websocket: WebSocket) -> None:
    await websocket.accept()
    # Send binary data
    image_data = await load_image_bytes("welcome.png")
    await websocket.send_bytes(image_data)
    # Send compressed data
    large_data = get_large_dataset()
    compressed = gzip.compress(json.dumps(large_data).encode())
    await websocket.send_bytes(compressed)


@rooms.websocket("/ws/receive")
async def receive_handler(websocket: WebSocket) -> None:
    """The guide's ``receive()`` example (at ``/ws/chat`` there)."""
    await websocket.accept()
    while True:
        message = await websocket.receive()
        if message.type == "text":
            # Handle text message
            data = json.loads(message.data)  # type: ignore[arg-type]
            await process_chat_message(data)
        elif message.type == "bytes":
            # Handle binary message
            await process_binary_data(message.data)  # type: ignore[arg-type]
        elif message.type == "close":
            # Client disconnected
            break
        elif message.type == "error":
            # Handle error
            app.logger.error(f"WebSocket error: {message.data}")
            break


@app.get("/api/received")
async def received() -> dict[str, list[Any]]:
    """What the ``/ws/receive`` handler processed (at most the last 100 messages)."""
    return {"processed": [list(item) for item in processed]}


# WebSocket Patterns ---------------------------------------------------------------------------


@rooms.websocket("/ws/echo")
async def echo_server(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message.type == "text":
                await websocket.send_text(f"Echo: {message.data}")
            elif message.type == "bytes":
                await websocket.send_bytes(b"Echo: " + message.data)  # type: ignore[operator]
            elif message.type == "close":
                break
    except ConnectionError:
        app.logger.info("Echo client disconnected")


@rooms.websocket("/ws/live-data")
async def live_data_stream(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        # Send periodic updates
        while True:
            data = await get_live_metrics()
            update = {
                "timestamp": datetime.utcnow().isoformat(),
                "cpu_usage": data["cpu"],
                "memory_usage": data["memory"],
                "active_connections": data["connections"],
            }
            await websocket.send_text(json.dumps(update))
            await asyncio.sleep(LIVE_DATA_INTERVAL)  # Update every second (by default)
    except ConnectionError:
        app.logger.info("Live data client disconnected")


@rooms.websocket("/ws/upload-progress/<upload_id>")
async def upload_progress(websocket: WebSocket, upload_id: str) -> None:
    await websocket.accept()
    try:
        while True:
            # Check upload progress
            progress = await get_upload_progress(upload_id)
            if progress is None:
                await websocket.send_text(json.dumps({"error": "Upload not found"}))
                break
            await websocket.send_text(
                json.dumps(
                    {
                        "upload_id": upload_id,
                        "progress": progress["percentage"],
                        "bytes_uploaded": progress["bytes_uploaded"],
                        "total_bytes": progress["total_bytes"],
                        "status": progress["status"],
                    }
                )
            )
            if progress["status"] in ["completed", "failed"]:
                break
            await asyncio.sleep(UPLOAD_POLL_INTERVAL)
    except ConnectionError:
        app.logger.info(f"Upload progress client disconnected: {upload_id}")


class UploadStart(BaseModel):
    total_bytes: int = Field(gt=0)


class UploadAdvance(BaseModel):
    bytes_uploaded: int = Field(ge=0)
    status: Literal["uploading", "completed", "failed"] | None = None


@app.post("/api/uploads", status_code=201)
async def start_upload(body: UploadStart) -> dict[str, Any]:
    """Start tracking an upload (what the guide's upload endpoint would do)."""
    upload_id = uuid.uuid4().hex
    uploads[upload_id] = {
        "percentage": 0,
        "bytes_uploaded": 0,
        "total_bytes": body.total_bytes,
        "status": "uploading",
    }
    return {"upload_id": upload_id, **uploads[upload_id]}


@app.post("/api/uploads/{upload_id}/progress")
async def advance_upload(upload_id: str, body: UploadAdvance) -> dict[str, Any]:
    """Record progress; the upload completes when every byte arrived (or on ``status``)."""
    progress = uploads.get(upload_id)
    if progress is None:
        raise HTTPException(404, detail=f"upload {upload_id!r} not found")
    total = progress["total_bytes"]
    done = min(body.bytes_uploaded, total)
    status = body.status or ("completed" if done == total else "uploading")
    progress.update(bytes_uploaded=done, percentage=done * 100 // total, status=status)
    return {"upload_id": upload_id, **progress}


# WebSocketManager: basic usage ----------------------------------------------------------------


@rooms.websocket("/ws/chat")
async def chat_handler(websocket: WebSocket) -> None:
    await websocket.accept()
    # Generate unique connection ID
    connection_id = str(uuid.uuid4())
    # Add to manager
    websocket_manager.add_connection(connection_id, websocket)
    try:
        while True:
            message = await websocket.receive()
            if message.type == "text":
                data = json.loads(message.data)  # type: ignore[arg-type]
                if data["type"] == "join_room":
                    # Join a chat room
                    websocket_manager.join_room(connection_id, data["room"])
                    await websocket.send_text(json.dumps({"type": "joined", "room": data["room"]}))
                elif data["type"] == "chat_message":
                    # Broadcast to room
                    message_data = {
                        "type": "message",
                        "user": data["user"],
                        "message": data["message"],
                        "timestamp": datetime.utcnow().isoformat(),
                    }
                    await websocket_manager.broadcast_to_room(
                        data["room"], json.dumps(message_data)
                    )
            elif message.type == "close":
                break
    except ConnectionError:
        pass
    finally:
        # Cleanup
        websocket_manager.remove_connection(connection_id)


# Room management ------------------------------------------------------------------------------

# Chat rooms with user management
user_connections: dict[str, str] = {}  # user_id -> connection_id mapping


@rooms.websocket("/ws/rooms/<room_id>")
async def room_handler(websocket: WebSocket, room_id: str) -> None:
    await websocket.accept()
    # Authenticate user (example)
    auth_token = websocket.scope.query_string.decode().split("token=")[1]
    user = await authenticate_token(auth_token)
    if not user:
        await websocket.close(1008, "Authentication failed")
        return
    connection_id = str(uuid.uuid4())
    user_connections[user.id] = connection_id
    # Add to manager and join room
    websocket_manager.add_connection(connection_id, websocket)
    websocket_manager.join_room(connection_id, room_id)
    # Notify others of new user
    await websocket_manager.broadcast_to_room(
        room_id,
        json.dumps(
            {
                "type": "user_joined",
                "user_id": user.id,
                "username": user.username,
                "timestamp": datetime.utcnow().isoformat(),
            }
        ),
    )
    try:
        async for message in receive_messages(websocket):
            if message["type"] == "chat":
                # Broadcast chat message
                await websocket_manager.broadcast_to_room(
                    room_id,
                    json.dumps(
                        {
                            "type": "message",
                            "user_id": user.id,
                            "username": user.username,
                            "message": message["content"],
                            "timestamp": datetime.utcnow().isoformat(),
                        }
                    ),
                )
            elif message["type"] == "typing":
                # Broadcast typing indicator (exclude sender)
                typing_msg = json.dumps(
                    {
                        "type": "typing",
                        "user_id": user.id,
                        "username": user.username,
                        "is_typing": message["is_typing"],
                    }
                )
                room_connections = websocket_manager.get_room_connections(room_id)
                for conn_id in room_connections:
                    if conn_id != connection_id:  # Don't send to sender
                        conn = websocket_manager.connections.get(conn_id)
                        if conn:
                            await conn.send_text(typing_msg)
    except ConnectionError:
        pass
    finally:
        # User left
        await websocket_manager.broadcast_to_room(
            room_id,
            json.dumps(
                {
                    "type": "user_left",
                    "user_id": user.id,
                    "username": user.username,
                    "timestamp": datetime.utcnow().isoformat(),
                }
            ),
        )
        # Cleanup
        websocket_manager.remove_connection(connection_id)
        if user.id in user_connections:
            del user_connections[user.id]


async def receive_messages(websocket: WebSocket) -> Any:
    """Async generator for receiving messages"""
    try:
        while True:
            message = await websocket.receive()
            if message.type == "text":
                yield json.loads(message.data)  # type: ignore[arg-type]
            elif message.type == "close":
                break
    except ConnectionError:
        pass


# Broadcasting patterns (REST) -----------------------------------------------------------------


class Announcement(BaseModel):
    title: str
    message: str
    priority: str = "normal"


class RoomNotification(BaseModel):
    room_id: str
    message: str


class PrivateMessage(BaseModel):
    sender_id: str
    recipient_id: str
    message: str


# Global announcements
@app.post("/api/broadcast")
async def send_global_announcement(
    data: Announcement, websocket_manager: Manager
) -> dict[str, Any]:
    announcement = {
        "type": "announcement",
        "title": data.title,
        "message": data.message,
        "priority": data.priority,
        "timestamp": datetime.utcnow().isoformat(),
    }
    await websocket_manager.broadcast_to_all(json.dumps(announcement))
    return {"status": "broadcasted", "connections": len(websocket_manager.connections)}


# Room-specific notifications
@app.post("/api/notify-room")
async def notify_room(data: RoomNotification, websocket_manager: Manager) -> dict[str, Any]:
    notification = {
        "type": "room_notification",
        "message": data.message,
        "from_admin": True,
        "timestamp": datetime.utcnow().isoformat(),
    }
    await websocket_manager.broadcast_to_room(data.room_id, json.dumps(notification))
    room_size = len(websocket_manager.get_room_connections(data.room_id))
    return {"status": "sent", "room_connections": room_size}


# User-to-user messaging
@app.post(
    "/api/send-private-message",
    response_model=None,
    responses={404: {"description": "Recipient not online"}, 500: {"description": "Not sent"}},
)
async def send_private_message(
    data: PrivateMessage, websocket_manager: Manager
) -> dict[str, str] | JSONResponse:
    # Find recipient connection
    recipient_connection_id = user_connections.get(data.recipient_id)
    if not recipient_connection_id:
        return JSONResponse({"error": "Recipient not online"}, status_code=404)
    websocket = websocket_manager.connections.get(recipient_connection_id)
    if not websocket:
        return JSONResponse({"error": "Recipient connection not found"}, status_code=404)
    message = {
        "type": "private_message",
        "from_user_id": data.sender_id,
        "message": data.message,
        "timestamp": datetime.utcnow().isoformat(),
    }
    try:
        await websocket.send_text(json.dumps(message))
        return {"status": "delivered"}
    except ConnectionError:
        return JSONResponse({"error": "Failed to deliver message"}, status_code=500)


# Connection authentication --------------------------------------------------------------------


async def authenticate_websocket(websocket: WebSocket) -> User | None:
    """Authenticate WebSocket connection before accepting"""
    # Get token from query string or headers
    query = websocket.scope.query_string.decode()
    token = None
    for param in query.split("&"):
        if param.startswith("token="):
            token = param.split("=")[1]
            break
    if not token:
        # Check headers as fallback
        for name, value in websocket.scope.headers:
            if name.decode() == "authorization":
                auth_header = value.decode()
                if auth_header.startswith("Bearer "):
                    token = auth_header[7:]
                    break
    if not token:
        return None
    # Verify token
    try:
        user = await verify_jwt_token(token)
        return user
    except Exception:
        return None


@rooms.websocket("/ws/authenticated")
async def authenticated_websocket(websocket: WebSocket) -> None:
    # Authenticate before accepting
    user = await authenticate_websocket(websocket)
    if not user:
        await websocket.close(1008, "Authentication required")
        return
    await websocket.accept()
    # Add user info to websocket
    websocket.user = user  # type: ignore[attr-defined]
    # Continue with authenticated handler
    connection_id = str(uuid.uuid4())
    websocket_manager.add_connection(connection_id, websocket)
    # ... rest of handler: greet the user, then echo under their name
    try:
        await websocket.send_text(
            json.dumps({"type": "authenticated", "user": websocket.user.to_dict()})  # type: ignore[attr-defined]
        )
        async for message in websocket:
            if message.type == "text":
                await websocket.send_text(f"{websocket.user.username}: {message.data}")  # type: ignore[attr-defined]
    except ConnectionError:
        pass
    finally:
        websocket_manager.remove_connection(connection_id)


# Message validation ---------------------------------------------------------------------------


@dataclass
class ChatMessage:
    type: str
    content: str
    room: str | None = None
    recipient: str | None = None


def validate_message(data: dict[str, Any]) -> ChatMessage | None:
    """Validate incoming WebSocket messages"""
    try:
        msg_type = data.get("type")
        if not msg_type or not isinstance(msg_type, str):
            return None
        content = data.get("content", "").strip()
        if not content or len(content) > 1000:  # Message length limit
            return None
        return ChatMessage(
            type=msg_type, content=content, room=data.get("room"), recipient=data.get("recipient")
        )
    # AttributeError added: valid JSON that is not an object, or a non-string content.
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


@rooms.websocket("/ws/validated-chat")
async def validated_chat_handler(websocket: WebSocket) -> None:
    await websocket.accept()
    connection_id = str(uuid.uuid4())
    websocket_manager.add_connection(connection_id, websocket)
    try:
        while True:
            raw_message = await websocket.receive()
            if raw_message.type == "text":
                try:
                    data = json.loads(raw_message.data)  # type: ignore[arg-type]
                    message = validate_message(data)
                    if not message:
                        await websocket.send_text(
                            json.dumps({"type": "error", "message": "Invalid message format"})
                        )
                        continue
                    # Process valid message
                    if message.type == "chat" and message.room:
                        websocket_manager.join_room(connection_id, message.room)
                        await websocket_manager.broadcast_to_room(
                            message.room,
                            json.dumps(
                                {
                                    "type": "message",
                                    "content": message.content,
                                    "timestamp": datetime.utcnow().isoformat(),
                                }
                            ),
                        )
                except json.JSONDecodeError:
                    await websocket.send_text(
                        json.dumps({"type": "error", "message": "Invalid JSON"})
                    )
            elif raw_message.type == "close":
                break
    except ConnectionError:
        pass
    finally:
        websocket_manager.remove_connection(connection_id)


# Connection monitoring ------------------------------------------------------------------------


class ConnectionMonitor:
    def __init__(self, websocket_manager: RoomManager) -> None:
        self.websocket_manager = websocket_manager
        self.connection_stats: dict[str, dict[str, float]] = {}  # connection_id -> stats

    def track_connection(self, connection_id: str) -> None:
        """Start tracking a connection"""
        self.connection_stats[connection_id] = {
            "connected_at": time.time(),
            "messages_sent": 0,
            "messages_received": 0,
            "bytes_sent": 0,
            "bytes_received": 0,
        }

    def record_message(self, connection_id: str, sent: bool, message_size: int) -> None:
        """Record message statistics"""
        if connection_id in self.connection_stats:
            stats = self.connection_stats[connection_id]
            if sent:
                stats["messages_sent"] += 1
                stats["bytes_sent"] += message_size
            else:
                stats["messages_received"] += 1
                stats["bytes_received"] += message_size

    def get_connection_stats(self, connection_id: str) -> dict[str, float]:
        """Get statistics for a connection"""
        return self.connection_stats.get(connection_id, {})

    def cleanup_connection(self, connection_id: str) -> None:
        """Clean up tracking data"""
        self.connection_stats.pop(connection_id, None)


# Global monitor instance
monitor = ConnectionMonitor(websocket_manager)


@rooms.websocket("/ws/monitored")
async def monitored_websocket(websocket: WebSocket) -> None:
    await websocket.accept()
    connection_id = str(uuid.uuid4())
    # Start monitoring
    websocket_manager.add_connection(connection_id, websocket)
    monitor.track_connection(connection_id)
    try:
        while True:
            message = await websocket.receive()
            if message.type == "text":
                # Record received message
                monitor.record_message(connection_id, False, len(message.data))  # type: ignore[arg-type]
                # Echo back
                response = f"Received: {message.data}"
                await websocket.send_text(response)
                # Record sent message
                monitor.record_message(connection_id, True, len(response))
            elif message.type == "close":
                break
    except ConnectionError:
        pass
    finally:
        websocket_manager.remove_connection(connection_id)
        monitor.cleanup_connection(connection_id)


@app.get("/api/websocket-stats")
async def get_websocket_stats() -> dict[str, Any]:
    """Get WebSocket connection statistics"""
    stats: dict[str, Any] = {
        "total_connections": len(websocket_manager.connections),
        "rooms": {room: len(connections) for room, connections in websocket_manager.rooms.items()},
        "connection_details": {},
    }
    for conn_id in websocket_manager.connections:
        connection_stats = monitor.get_connection_stats(conn_id)
        if connection_stats:
            stats["connection_details"][conn_id] = connection_stats
    return stats


# Error handling -------------------------------------------------------------------------------


@rooms.websocket("/ws/robust")
async def robust_websocket_handler(websocket: WebSocket) -> None:
    connection_id = str(uuid.uuid4())
    try:
        await websocket.accept()
        websocket_manager.add_connection(connection_id, websocket)
        # Send welcome message
        await websocket.send_text(json.dumps({"type": "welcome", "connection_id": connection_id}))
        while True:
            try:
                message = await websocket.receive()
                if message.type == "text":
                    await handle_text_message(websocket, message.data)  # type: ignore[arg-type]
                elif message.type == "bytes":
                    await handle_binary_message(websocket, message.data)  # type: ignore[arg-type]
                elif message.type == "close":
                    app.logger.info(f"Client {connection_id} disconnected normally")
                    break
                elif message.type == "error":
                    app.logger.error(f"WebSocket error for {connection_id}: {message.data}")
                    break
            except json.JSONDecodeError:
                await websocket.send_text(
                    json.dumps({"type": "error", "message": "Invalid JSON format"})
                )
            except Exception as e:
                app.logger.error(f"Error handling message for {connection_id}: {e}")
                await websocket.send_text(
                    json.dumps({"type": "error", "message": "Internal server error"})
                )
    except ConnectionError:
        app.logger.info(f"Connection {connection_id} lost unexpectedly")
    except Exception as e:
        app.logger.error(f"Unexpected error in websocket {connection_id}: {e}", exc_info=True)
    finally:
        # Always cleanup
        websocket_manager.remove_connection(connection_id)
        app.logger.info(f"Cleaned up connection {connection_id}")


async def handle_text_message(websocket: WebSocket, data: str) -> None:
    """Handle text messages with error recovery"""
    try:
        message = json.loads(data)
        # Process message: {"type": "fail"} fails on purpose, anything else is acknowledged.
        if message.get("type") == "fail":
            raise RuntimeError("processing failed on purpose")
        await websocket.send_text(json.dumps({"type": "ack", "message": message}))
    except Exception as e:
        app.logger.error(f"Text message handling error: {e}")
        raise


async def handle_binary_message(websocket: WebSocket, data: bytes) -> None:
    await websocket.send_text(json.dumps({"type": "ack", "bytes": len(data)}))


# Performance considerations: connection limits ------------------------------------------------

MAX_CONNECTIONS = _env_int("MAX_CONNECTIONS", 1000)
MAX_CONNECTIONS_PER_IP = _env_int("MAX_CONNECTIONS_PER_IP", 10)
connection_counts: defaultdict[str, int] = defaultdict(int)  # ip -> count


def get_client_ip(scope: Any) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def check_connection_limits(websocket: WebSocket) -> tuple[bool, str]:
    """Check if connection should be allowed"""
    client_ip = get_client_ip(websocket.scope)
    # Global limit
    if len(websocket_manager.connections) >= MAX_CONNECTIONS:
        return False, "Server at capacity"
    # Per-IP limit
    if connection_counts[client_ip] >= MAX_CONNECTIONS_PER_IP:
        return False, "Too many connections from this IP"
    return True, "OK"


@rooms.websocket("/ws/limited")
async def limited_websocket(websocket: WebSocket) -> None:
    allowed, reason = await check_connection_limits(websocket)
    if not allowed:
        await websocket.close(1008, reason)
        return
    client_ip = get_client_ip(websocket.scope)
    connection_counts[client_ip] += 1
    try:
        await websocket.accept()
        # ... handle connection: register it (the global limit counts the manager's
        # connections), greet, then echo.
        connection_id = str(uuid.uuid4())
        websocket_manager.add_connection(connection_id, websocket)
        try:
            await websocket.send_text(json.dumps({"type": "welcome", "client_ip": client_ip}))
            async for message in websocket:
                if message.type == "text":
                    await websocket.send_text(f"Echo: {message.data}")
        except ConnectionError:
            pass
        finally:
            websocket_manager.remove_connection(connection_id)
    finally:
        connection_counts[client_ip] -= 1


# Memory management: room size and message rate ------------------------------------------------

# Limit room sizes
MAX_ROOM_SIZE = _env_int("MAX_ROOM_SIZE", 100)


def can_join_room(room_id: str) -> bool:
    """Check if room has space"""
    room_connections = websocket_manager.get_room_connections(room_id)
    return len(room_connections) < MAX_ROOM_SIZE


# Message rate limiting
message_rates: defaultdict[str, deque[float]] = defaultdict(deque)  # connection_id -> timestamps
MAX_MESSAGES_PER_MINUTE = _env_int("MAX_MESSAGES_PER_MINUTE", 60)


def is_rate_limited(connection_id: str) -> bool:
    """Check if connection is sending too many messages"""
    now = time.time()
    minute_ago = now - 60
    # Remove old timestamps
    timestamps = message_rates[connection_id]
    while timestamps and timestamps[0] < minute_ago:
        timestamps.popleft()
    # Check rate
    if len(timestamps) >= MAX_MESSAGES_PER_MINUTE:
        return True
    # Record this message
    timestamps.append(now)
    return False


# Integration: complete chat application -------------------------------------------------------

active_rooms: defaultdict[str, set[str]] = defaultdict(set)  # room_id -> user_ids
user_status: dict[str, str] = {}  # user_id -> "online" | "offline"


async def notify_user_status(user_id: str, status: str) -> None:
    user_status[user_id] = status
    app.logger.info(f"User {user_id} is {status}")


async def send_error(connection_id: str, message: str, **details: Any) -> None:
    """Refusals (room full, rate limit) answer the sender; the guide drops them silently."""
    conn = websocket_manager.connections.get(connection_id)
    if conn:
        await conn.send_text(json.dumps({"type": "error", "message": message, **details}))


@rooms.websocket("/ws/chat-app")
async def chat_websocket(websocket: WebSocket) -> None:
    # Authenticate
    user = await authenticate_websocket(websocket)
    if not user:
        await websocket.close(1008, "Authentication required")
        return
    await websocket.accept()
    connection_id = str(uuid.uuid4())
    user_connections[user.id] = connection_id
    websocket_manager.add_connection(connection_id, websocket)
    # User online notification
    await notify_user_status(user.id, "online")
    try:
        while True:
            message = await websocket.receive()
            if message.type == "text":
                if is_rate_limited(connection_id):
                    await send_error(connection_id, "Rate limit exceeded")
                    continue
                data = json.loads(message.data)  # type: ignore[arg-type]
                await handle_chat_command(user, connection_id, data)
            elif message.type == "close":
                break
    except ConnectionError:
        pass
    finally:
        # Cleanup
        await handle_user_disconnect(user.id, connection_id)


async def handle_chat_command(user: User, connection_id: str, data: dict[str, Any]) -> None:
    """Handle different chat commands"""
    command = data.get("command")
    if command == "join_room":
        room_id = data["room_id"]
        if can_join_room(room_id):
            websocket_manager.join_room(connection_id, room_id)
            active_rooms[room_id].add(user.id)
            await websocket_manager.broadcast_to_room(
                room_id,
                json.dumps(
                    {
                        "type": "user_joined",
                        "user": user.to_dict(),
                        "timestamp": datetime.utcnow().isoformat(),
                    }
                ),
            )
        else:
            await send_error(connection_id, "Room is full", room_id=room_id)
    elif command == "send_message":
        room_id = data["room_id"]
        if user.id in active_rooms[room_id]:
            await websocket_manager.broadcast_to_room(
                room_id,
                json.dumps(
                    {
                        "type": "message",
                        "user": user.to_dict(),
                        "message": data["message"],
                        "timestamp": datetime.utcnow().isoformat(),
                    }
                ),
            )
    elif command == "leave_room":
        room_id = data["room_id"]
        websocket_manager.leave_room(connection_id, room_id)
        active_rooms[room_id].discard(user.id)
        await websocket_manager.broadcast_to_room(
            room_id,
            json.dumps(
                {
                    "type": "user_left",
                    "user": user.to_dict(),
                    "timestamp": datetime.utcnow().isoformat(),
                }
            ),
        )


async def handle_user_disconnect(user_id: str, connection_id: str) -> None:
    """Handle user disconnection"""
    # Remove from all rooms (over a copy: another handler may add a room meanwhile)
    for room_id, users in list(active_rooms.items()):
        if user_id in users:
            users.discard(user_id)
            await websocket_manager.broadcast_to_room(
                room_id,
                json.dumps(
                    {
                        "type": "user_disconnected",
                        "user_id": user_id,
                        "timestamp": datetime.utcnow().isoformat(),
                    }
                ),
            )
    # Cleanup
    websocket_manager.remove_connection(connection_id)
    message_rates.pop(connection_id, None)
    user_connections.pop(user_id, None)
    # User offline notification
    await notify_user_status(user_id, "offline")


class AdminBroadcast(BaseModel):
    message: str


# REST API endpoints for chat management
@app.get("/api/chat/rooms")
async def list_rooms() -> dict[str, Any]:
    """List active chat rooms"""
    rooms = []
    for room_id, users in active_rooms.items():
        if users:  # Only include rooms with users
            rooms.append({"room_id": room_id, "user_count": len(users), "users": list(users)})
    return {"rooms": rooms}


@app.post("/api/chat/broadcast")
async def admin_broadcast(data: AdminBroadcast, websocket_manager: Manager) -> dict[str, Any]:
    """Admin broadcast to all users"""
    message = {
        "type": "admin_broadcast",
        "message": data.message,
        "timestamp": datetime.utcnow().isoformat(),
    }
    await websocket_manager.broadcast_to_all(json.dumps(message))
    return {"status": "broadcasted", "recipient_count": len(websocket_manager.connections)}


app.include_router(rooms)

try:
    from fastapi_rooms.rsgi import RSGIApp
except ImportError:  # the RSGI shim is not there yet: serve `app` with an ASGI server
    pass
else:
    rsgi_app = RSGIApp(app)
