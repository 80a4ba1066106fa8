"""The backend contract: move bytes between processes; membership stays in the manager."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """Pub/sub plus a small connection directory and presence entries that expire.

    ``listen()`` yields ``(channel, payload)`` for subscribed channels and raises when the
    connection is lost; the manager then reconnects with backoff and subscribes again.
    """

    async def connect(self) -> None: ...

    async def disconnect(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> int:
        """Send ``payload``; returns how many subscribers (processes) received it."""
        ...

    def listen(self) -> AsyncIterator[tuple[str, bytes]]: ...

    async def register(self, connection_ids: Iterable[str], node: str, ttl: float) -> None:
        """Record (or refresh) that these connections live on ``node`` for ``ttl`` seconds."""
        ...

    async def unregister(self, connection_ids: Iterable[str], node: str) -> None: ...

    async def locate(self, connection_id: str) -> str | None:
        """The node a connection lives on, or None."""
        ...

    async def presence_set(self, entries: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        """Record (or refresh) ``(room, connection_id, info)`` entries for ``ttl`` seconds."""
        ...

    async def presence_remove(self, entries: Sequence[tuple[str, str]]) -> None: ...

    async def presence_get(self, room: str) -> dict[str, bytes]:
        """The room's unexpired entries: connection id -> info."""
        ...
