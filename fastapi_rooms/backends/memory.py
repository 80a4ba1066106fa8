"""In-process backend: several managers in one process share a MemoryBroker like nodes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Sequence

__all__ = ["MemoryBackend", "MemoryBroker"]


class MemoryBroker:
    """The shared 'server' of MemoryBackend instances."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBackend]] = {}
        self.directory: dict[str, tuple[str, float]] = {}
        self.presence: dict[str, dict[str, tuple[float, bytes]]] = {}


class MemoryBackend:
    """Pub/sub and directory in memory; useful for tests and single-process apps."""

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self._queue: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._channels: set[str] = set()
        self.connected = False

    async def connect(self) -> None:
        self._queue = asyncio.Queue()
        self.connected = True

    async def disconnect(self) -> None:
        for channel in list(self._channels):
            await self.unsubscribe(channel)
        self.connected = False
        self._queue.put_nowait(None)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self.broker.subscribers.setdefault(channel, set()).add(self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        members = self.broker.subscribers.get(channel)
        if members is not None:
            members.discard(self)
            if not members:
                del self.broker.subscribers[channel]

    async def publish(self, channel: str, payload: bytes) -> int:
        if not self.connected:
            raise ConnectionError("MemoryBackend is not connected")
        targets = self.broker.subscribers.get(channel, ())
        for backend in targets:
            backend._queue.put_nowait((channel, payload))
        return len(targets)

    async def publish_many(self, items: Sequence[tuple[str, bytes]]) -> list[int]:
        return [await self.publish(channel, payload) for channel, payload in items]

    async def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        while True:
            item = await self._queue.get()
            if item is None:
                raise ConnectionError("MemoryBackend disconnected")
            yield item

    async def register(self, connection_ids: Iterable[str], node: str, ttl: float) -> None:
        deadline = time.monotonic() + ttl
        for cid in connection_ids:
            self.broker.directory[cid] = (node, deadline)

    async def unregister(self, connection_ids: Iterable[str], node: str) -> None:
        for cid in connection_ids:
            entry = self.broker.directory.get(cid)
            if entry is not None and entry[0] == node:
                del self.broker.directory[cid]

    async def locate(self, connection_id: str) -> str | None:
        entry = self.broker.directory.get(connection_id)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    async def presence_set(self, entries: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        deadline = time.monotonic() + ttl
        for room, cid, info in entries:
            self.broker.presence.setdefault(room, {})[cid] = (deadline, info)

    async def presence_remove(self, entries: Sequence[tuple[str, str]]) -> None:
        for room, cid in entries:
            members = self.broker.presence.get(room)
            if members is not None:
                members.pop(cid, None)
                if not members:
                    del self.broker.presence[room]

    async def presence_get(self, room: str) -> dict[str, bytes]:
        now = time.monotonic()
        members = self.broker.presence.get(room, {})
        return {cid: info for cid, (deadline, info) in members.items() if deadline >= now}
