"""Room history in this process: offsets, epochs, trimming by size and age, recovery.

Each room with history numbers its ``message`` events 1, 2, 3, ... without gaps. An epoch names
one continuous history of one room: it changes when that history is lost (a new manager, or
the room emptied and nothing was published to it for its TTL), so a client's
``(offset, epoch)`` either still points into it or does not, and recovery says so. History
is kept as the encoded frames, replayed as they were sent.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["History", "HistoryPage", "Position"]


@dataclass(frozen=True)
class Position:
    """Where a room's history stands: its latest offset (0 before any message) and epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True)
class HistoryPage:
    """Messages of one room after an offset, oldest first, as their encoded frames.

    ``complete`` is False when the history no longer holds every message after the offset
    asked for (another epoch, trimmed by size or age, or an offset ahead of the latest)."""

    position: Position
    frames: list[str]
    complete: bool


@dataclass
class _Room:
    epoch: str
    offset: int = 0
    entries: deque[tuple[int, float, str]] = field(default_factory=deque)  # offset, time, frame
    touched: float = 0.0
    ttl: float | None = None


class History:
    """Histories of the rooms of one process (``RoomManager`` uses one without a backend)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        in_use: Callable[[str], bool] = lambda room: False,
    ) -> None:
        self._rooms: dict[str, _Room] = {}
        self._clock = clock
        self._in_use = in_use  # a room with members keeps its offsets and epoch
        self._appends = 0

    def _sweep(self, now: float) -> None:
        """Now and then, drop the histories of rooms without members that nobody published
        to for longer than their own TTL (the next message there starts a new epoch)."""
        self._appends += 1
        if self._appends % 1024:
            return
        for room in [
            r
            for r, s in self._rooms.items()
            if s.ttl is not None and now - s.touched > s.ttl and not self._in_use(r)
        ]:
            del self._rooms[room]

    def _room(self, room: str, ttl: float | None) -> _Room:
        now = self._clock()
        state = self._rooms.get(room)
        if (
            state is not None
            and ttl is not None
            and now - state.touched > ttl
            and not self._in_use(room)
        ):
            state = None  # emptied, and nothing published for its TTL: that history is gone
        if state is None:
            state = self._rooms[room] = _Room(epoch=uuid.uuid4().hex[:16], touched=now)
        state.ttl = ttl
        return state

    def append(self, room: str, size: int, ttl: float | None, frame: Callable[[int], str]) -> int:
        """The room's next offset; ``frame(offset)`` is the encoded message, kept (at most
        ``size`` messages, none older than ``ttl`` seconds)."""
        state = self._room(room, ttl)
        offset = state.offset + 1
        data = frame(offset)  # may raise (too big): then nothing changed
        state.offset = offset
        now = state.touched = self._clock()
        entries = state.entries
        entries.append((offset, now, data))
        while len(entries) > size:
            entries.popleft()
        self._expire(entries, now, ttl)
        self._sweep(now)
        return offset

    def position(self, room: str, ttl: float | None) -> Position:
        state = self._room(room, ttl)
        return Position(state.offset, state.epoch)

    def peek(self, room: str, ttl: float | None) -> Position | None:
        """The room's position, or None when it has no history (without starting one)."""
        state = self._rooms.get(room)
        if state is None or (
            ttl is not None and self._clock() - state.touched > ttl and not self._in_use(room)
        ):
            return None
        return Position(state.offset, state.epoch)

    def since(
        self, room: str, offset: int, epoch: str | None, ttl: float | None, limit: int | None = None
    ) -> HistoryPage:
        """Frames after ``offset`` (of ``epoch``; None: the current one), up to ``limit``."""
        state = self._room(room, ttl)
        self._expire(state.entries, self._clock(), ttl)
        position = Position(state.offset, state.epoch)
        if (epoch is not None and epoch != state.epoch) or offset > state.offset or offset < 0:
            return HistoryPage(position, [], False)
        entries = state.entries
        oldest = entries[0][0] if entries else state.offset + 1
        complete = offset + 1 >= oldest
        frames = [data for number, _, data in entries if number > offset]
        if limit is not None:
            frames = frames[:limit]
        return HistoryPage(position, frames, complete)

    def forget(self, room: str) -> None:
        """Drop a room's history (its next message starts a new epoch)."""
        self._rooms.pop(room, None)

    @staticmethod
    def _expire(entries: deque[tuple[int, float, str]], now: float, ttl: float | None) -> None:
        if ttl is not None:
            while entries and now - entries[0][1] > ttl:
                entries.popleft()

    def __len__(self) -> int:
        return len(self._rooms)

    def kept(self) -> int:
        """Messages kept across every room."""
        return sum(len(state.entries) for state in self._rooms.values())
