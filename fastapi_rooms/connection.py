"""Connection: one registered connection, as ``manager.connect()`` hands it to a handler."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .history import Position
from .websocket import WebSocket

if TYPE_CHECKING:
    from .manager import RoomManager

__all__ = ["Connection"]


class Connection:
    """One registered connection, as ``manager.connect()`` hands it to a handler."""

    __slots__ = ("id", "manager", "user_id", "websocket")

    def __init__(
        self, manager: RoomManager, connection_id: str, websocket: WebSocket, user_id: str | None
    ) -> None:
        self.manager = manager
        self.id = connection_id
        self.websocket = websocket
        self.user_id = user_id

    @property
    def rooms(self) -> set[str]:
        return self.manager.get_connection_rooms(self.id)

    async def join(
        self, room: str, *, meta: Any = None, since: tuple[int, str] | None = None
    ) -> tuple[Position, bool] | None:
        """Join ``room``; returns once messages from every node reach it (``JoinRefused``).

        In a room with history: the room's position and whether ``since=(offset, epoch)``
        was recovered, the missed messages then already handed to the connection, ahead of
        any live one (None for a room without history)."""
        caught = await self.manager.join_recovering(self.id, room, meta=meta, since=since)
        if caught is None:
            return None
        position, frames, recovered = caught
        if frames:
            await self.websocket.outbound.replay(frames)
        return position, recovered

    def leave(self, room: str) -> None:
        self.manager.leave_room(self.id, room)

    async def broadcast(self, room: str, message: Any, *, exclude_self: bool = False) -> int:
        """Broadcast to ``room`` (skipping this connection with ``exclude_self``)."""
        return await self.manager.broadcast_to_room(
            room, message, exclude=self.id if exclude_self else None
        )

    async def publish(self, room: str, data: Any, *, exclude_self: bool = False) -> int:
        """``data`` to ``room`` as the ready protocol's ``message`` event from this connection,
        validated against the room's namespace type (``RoomManager.publish``)."""
        return await self.manager.publish(
            room, data, sender=self.id, exclude=self.id if exclude_self else None
        )

    async def send(self, message: Any) -> bool:
        """Hand ``message`` to this connection, in order with broadcasts."""
        return await self.manager.send_to(self.id, message)

    def __repr__(self) -> str:
        return f"<Connection {self.id} user={self.user_id!r} rooms={sorted(self.rooms)}>"
