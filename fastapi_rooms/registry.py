"""Membership without I/O: connections by id, rooms of connections, users of connections."""

from __future__ import annotations

from collections.abc import Iterator, KeysView, Mapping
from types import MappingProxyType
from typing import Any

from .websocket import WebSocket

__all__ = ["Registry"]


class _RoomsView(Mapping[str, KeysView[str]]):
    """Read-only live view: room -> set-like view of its connection ids."""

    __slots__ = ("_rooms",)

    def __init__(self, rooms: dict[str, dict[str, WebSocket]]) -> None:
        self._rooms = rooms

    def __getitem__(self, room: str) -> KeysView[str]:
        return self._rooms[room].keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self._rooms)

    def __len__(self) -> int:
        return len(self._rooms)

    def __repr__(self) -> str:
        return repr({room: set(ids) for room, ids in self._rooms.items()})


class Registry:
    """Who is connected, in which rooms, as which user. Changes return what the backplane
    must hear about (a room or user that gained its first or lost its last local member)."""

    __slots__ = ("connections", "memberships", "meta", "rooms", "user_of", "users")

    def __init__(self) -> None:
        self.connections: dict[str, WebSocket] = {}
        self.rooms: dict[str, dict[str, WebSocket]] = {}
        self.memberships: dict[str, set[str]] = {}  # connection id -> its rooms
        self.user_of: dict[str, str] = {}  # connection id -> user id
        self.users: dict[str, dict[str, WebSocket]] = {}  # user id -> its local connections
        self.meta: dict[tuple[str, str], Any] = {}  # (room, connection id) -> join metadata

    def connections_view(self) -> Mapping[str, WebSocket]:
        return MappingProxyType(self.connections)

    def rooms_view(self) -> Mapping[str, KeysView[str]]:
        return _RoomsView(self.rooms)

    def add(self, connection_id: str, ws: WebSocket, user_id: str | None) -> bool:
        """Register a connection; True when it is its user's first here."""
        self.connections[connection_id] = ws
        self.memberships[connection_id] = set()
        if user_id is None:
            return False
        self.user_of[connection_id] = user_id
        conns = self.users.get(user_id)
        first = conns is None
        if conns is None:
            conns = self.users[user_id] = {}
        conns[connection_id] = ws
        return first

    def remove(self, connection_id: str) -> tuple[WebSocket, set[str], str | None] | None:
        """Forget a connection: its WebSocket, its rooms, and its user if that was the user's
        last connection here (None when unknown). Rooms are left by the caller."""
        ws = self.connections.pop(connection_id, None)
        if ws is None:
            return None
        rooms = self.memberships.pop(connection_id, set())
        user_id = self.user_of.pop(connection_id, None)
        last_of_user = None
        if user_id is not None:
            conns = self.users.get(user_id, {})
            conns.pop(connection_id, None)
            if not conns:
                self.users.pop(user_id, None)
                last_of_user = user_id
        return ws, rooms, last_of_user

    def join(self, connection_id: str, room: str, meta: Any) -> bool:
        """Add a registered connection to ``room``; True when the room is new here."""
        ws = self.connections[connection_id]
        members = self.rooms.get(room)
        first = members is None
        if members is None:
            members = self.rooms[room] = {}
        members[connection_id] = ws
        self.memberships[connection_id].add(room)
        if meta is None:  # most joins carry none: keep no entry for them
            self.meta.pop((room, connection_id), None)
        else:
            self.meta[(room, connection_id)] = meta
        return first

    def leave(self, connection_id: str, room: str) -> tuple[bool, Any]:
        """Take a connection out of ``room``: (the room is now empty here, its join meta)."""
        rooms = self.memberships.get(connection_id)
        if rooms is not None:
            rooms.discard(room)
        meta = self.meta.pop((room, connection_id), None)
        members = self.rooms.get(room)
        if members is None:
            return False, meta
        members.pop(connection_id, None)
        if members:
            return False, meta
        del self.rooms[room]
        return True, meta
