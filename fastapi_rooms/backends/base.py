"""The backend contract, by concern: move bytes between processes (pub/sub), find a
connection's node (directory), and list a room's members on every node (presence).

Membership stays in the manager; a backend keeps no state the manager cannot rebuild.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Backend", "Directory", "Presence", "PubSub"]


@runtime_checkable
class PubSub(Protocol):
    """Channels between processes. ``listen()`` yields ``(channel, payload)`` for subscribed
    channels and raises when the connection is lost; the backplane then reconnects with
    backoff and subscribes again."""

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> int:
        """Send ``payload``; returns how many subscribers (processes) received it."""
        ...

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        """Publish in order, in one round trip where the backend can; counts as ``publish``."""
        ...

    def listen(self) -> AsyncIterator[tuple[str, bytes]]: ...


@runtime_checkable
class Directory(Protocol):
    """Which node holds a connection, as entries that expire unless refreshed."""

    async def register(self, connection_ids: Iterable[str], node: str, ttl: float) -> None:
        """Record (or refresh) that these connections live on ``node`` for ``ttl`` seconds."""
        ...

    async def unregister(self, connection_ids: Iterable[str], node: str) -> None: ...

    async def locate(self, connection_id: str) -> str | None:
        """The node a connection lives on, or None."""
        ...


@runtime_checkable
class Presence(Protocol):
    """Each room's members on every node, as entries that expire unless refreshed."""

    async def presence_set(self, entries: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        """Record (or refresh) ``(room, connection_id, info)`` entries for ``ttl`` seconds."""
        ...

    async def presence_remove(self, entries: Sequence[tuple[str, str]]) -> None: ...

    async def presence_get(self, room: str) -> dict[str, bytes]:
        """The room's unexpired entries: connection id -> info."""
        ...


@runtime_checkable
class Backend(PubSub, Directory, Presence, Protocol):
    """What ``RoomManager(backend=...)`` needs: all three concerns on one service."""
