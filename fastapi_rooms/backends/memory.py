"""In-process backend: several managers in one process share a MemoryBroker like nodes."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterable, Sequence

from ..history import History, HistoryPage, Position
from .base import Append

__all__ = ["MemoryBackend", "MemoryBroker"]


def _frame(head: str, tail: str, offset: int) -> str:
    return f"{head}{offset}{tail}"


class MemoryBroker:
    """The shared 'server' of MemoryBackend instances."""

    def __init__(self) -> None:
        self.subscribers: dict[str, set[MemoryBackend]] = {}
        self.directory: dict[str, tuple[str, float]] = {}
        self.presence: dict[str, dict[str, tuple[float, bytes]]] = {}
        self.kept_until: dict[str, float] = {}  # room -> when its offset and epoch may go
        self.history = History(in_use=lambda room: self.kept_until.get(room, 0) > time.monotonic())

    def keep(self, room: str, seconds: float) -> None:
        self.kept_until[room] = max(self.kept_until.get(room, 0), time.monotonic() + seconds)


class MemoryBackend:
    """Pub/sub and directory in memory; useful for tests and single-process apps."""

    confirms_subscriptions = True

    def __init__(self, broker: MemoryBroker | None = None) -> None:
        self.broker = broker if broker is not None else MemoryBroker()
        self._queue: asyncio.Queue[tuple[str, bytes | None] | None] = asyncio.Queue()
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
        self._queue.put_nowait((channel, None))  # confirmed, in order with its messages

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

    async def write_many(
        self, items: Sequence[tuple[str, bytes | Append]]
    ) -> list[int | Exception]:
        out: list[int | Exception] = []
        for channel, item in items:
            if isinstance(item, bytes):
                out.append(await self.publish(channel, item))
                continue
            if not self.connected:
                raise ConnectionError("MemoryBackend is not connected")
            broker = self.broker
            head, tail = item.head, item.tail
            offset = broker.history.append(
                item.room, item.size, item.ttl, functools.partial(_frame, head, tail)
            )
            broker.keep(item.room, item.keep)
            epoch = broker.history.position(item.room, item.ttl).epoch
            frame = f"{head}{offset}{tail}"
            await self.publish(channel, item.prefix + f"{offset} {epoch} {frame}".encode())
            out.append(offset)
        return out

    async def history_read(
        self, room: str, since: int, epoch: str | None, limit: int | None, ttl: float, keep: float
    ) -> HistoryPage:
        history = self.broker.history
        if history.peek(room, ttl) is None:
            self.broker.keep(room, keep)
        return history.since(room, since, epoch, ttl, limit)

    async def history_touch(
        self, rooms: Sequence[tuple[str, float, int]]
    ) -> list[Position | None]:
        out: list[Position | None] = []
        history = self.broker.history
        for room, keep, last in rooms:
            position = history.peek(room, None)
            if position is None or self.broker.kept_until.get(room, 0) <= time.monotonic():
                out.append(None)
                continue
            if position.offset < last:  # behind what was delivered: a new history
                history.forget(room)
                position = history.position(room, None)
            self.broker.keep(room, keep)
            out.append(position)
        return out

    async def listen(self) -> AsyncIterator[tuple[str, bytes | None]]:
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
