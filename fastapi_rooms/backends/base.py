"""The backend contract, by concern: move bytes between processes (pub/sub), find a
connection's node (directory), list a room's members on every node (presence), and, for
rooms with history, number and keep their messages (history).

Membership stays in the manager; a backend keeps no state the manager cannot rebuild, except
room history, which is the point of keeping it there.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..history import HistoryPage, Position

__all__ = ["Append", "Backend", "Directory", "Presence", "PubSub", "RoomHistory", "room_tag"]


@functools.lru_cache(maxsize=4096)
def room_tag(room: str) -> str:
    """A room's shard key: its channel and keys carry ``{room_tag(room)}`` (a Redis Cluster
    hash tag), so a sharded backend keeps them on one shard. A digest of the name, braces-free
    (a name like ``}{`` would cut a tag made of it short), stable across processes."""
    return hashlib.blake2b(room.encode(), digest_size=8).hexdigest()


@runtime_checkable
class PubSub(Protocol):
    """Channels between processes. ``listen()`` yields ``(channel, payload)`` for subscribed
    channels and raises when the connection is lost; the backplane then reconnects with
    backoff and subscribes again. A backend whose ``confirms_subscriptions`` is True also
    yields ``(channel, None)`` once the server confirmed a subscription (only then does a
    join count as live); for others, ``subscribe()`` returning is the confirmation."""

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

    def listen(self) -> AsyncIterator[tuple[str, bytes | None]]: ...


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


@dataclass(frozen=True, slots=True)
class Append:
    """A message of a room with history, to number, keep and publish in one atomic step.

    With the room's next offset N, the kept frame is ``head + N + tail`` and the published
    payload ``prefix + b"N <epoch> " + frame`` (a numbered envelope). At most ``size`` frames
    are kept, none older than ``ttl`` seconds; the room's offset and epoch live ``keep``
    seconds after the last append or touch (at least ``ttl``).
    """

    room: str
    prefix: bytes
    head: str
    tail: str
    size: int
    ttl: float
    keep: float


@runtime_checkable
class RoomHistory(Protocol):
    """Room history kept by the backend, so every node numbers a room's messages alike."""

    async def write_many(
        self, items: Sequence[tuple[str, bytes | Append]]
    ) -> list[int | Exception]:
        """``publish_many`` in order, where an ``Append`` is numbered, kept, trimmed and
        published at once; its result is its offset. An item the backend refused (its data,
        not the link) is the error, and the others still count."""
        ...

    async def history_read(
        self, room: str, since: int, epoch: str | None, limit: int | None, ttl: float, keep: float
    ) -> HistoryPage:
        """Frames after offset ``since`` of ``epoch`` (None: any), up to ``limit``.

        A room without kept state starts an epoch here (offset 0), alive ``keep`` seconds."""
        ...

    async def history_touch(self, rooms: Sequence[tuple[str, float, int]]) -> list[Position | None]:
        """Keep each ``(room, keep, last)``'s offset and epoch alive ``keep`` more seconds;
        their positions, None for a room whose history is gone. A history behind ``last``
        (the latest offset a node delivered) starts a new epoch: it is not the one clients
        saw."""
        ...
