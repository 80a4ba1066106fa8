"""Numbered messages on one node, for rooms whose history the backend keeps.

Every message of such a room reaches each node once, in offset order, through the room's
subscription (the publishing node's own messages too). Per room this remembers the epoch and
the latest offset seen here. A message that skips offsets, or brings another epoch, means the
members here missed messages (the backend connection dropped, or the history was lost): they
must reconnect and recover. A joining member holds the live messages while its history is
read, then gets the ones the read did not cover, and ignores older ones still on their way.
"""

from __future__ import annotations

from collections.abc import KeysView
from typing import Any

from .history import Position

__all__ = ["Streams"]


class _Stream:
    __slots__ = ("epoch", "floors", "held", "last", "suspect")

    def __init__(self) -> None:
        self.epoch: str | None = None  # None: no message or position seen here yet
        self.last = 0
        self.floors: dict[str, int] = {}  # member -> ignore offsets up to this one
        # joining member -> arrivals (offset, epoch, frame; None where it was excluded)
        self.held: dict[str, list[tuple[int, str, Any]]] = {}
        # an offset the backend had that had not arrived here, and our latest offset then
        self.suspect: tuple[int, int] | None = None

    def reset(self, position: Position | None) -> None:
        self.epoch, self.last = (None, 0) if position is None else (position.epoch, position.offset)
        self.floors.clear()
        self.suspect = None


class Streams:
    """Per room with backend-kept history and members here: its epoch and latest offset."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Stream] = {}

    def rooms(self) -> KeysView[str]:
        return self._rooms.keys()

    def position(self, room: str, member: str | None = None) -> Position | None:
        """Where the members here (or ``member``, whose replay may have gone further) stand;
        None before the first message or join."""
        stream = self._rooms.get(room)
        if stream is None or stream.epoch is None:
            return None
        floor = stream.floors.get(member, 0) if member is not None else 0
        return Position(max(stream.last, floor), stream.epoch)

    def holding(self, room: str) -> set[str]:
        stream = self._rooms.get(room)
        return set(stream.held) if stream is not None else set()

    def hold(self, room: str, member: str) -> None:
        """Keep ``member``'s live messages aside until ``release`` (its history is read)."""
        self._rooms.setdefault(room, _Stream()).held[member] = []

    def arrive(
        self, room: str, offset: int, epoch: str, frame: Any, exclude: tuple[str, ...] = ()
    ) -> tuple[set[str], set[str] | None]:
        """A numbered message: the members not to hand it to now (held, or covered by their
        replay), and, when the members here missed messages before it, the members spared
        from reconnecting (None: nobody missed anything). ``exclude``: members it is not for."""
        stream = self._rooms.get(room)
        if stream is None:
            stream = self._rooms[room] = _Stream()
        gap = new_epoch = False
        if stream.epoch is None:
            stream.epoch, stream.last = epoch, offset
        elif epoch != stream.epoch:
            gap = new_epoch = True
        elif offset > stream.last + 1:
            gap = True
        floors = dict(stream.floors)  # the members whose replay went past the others
        if gap:
            stream.reset(Position(offset, epoch))
        elif offset == stream.last + 1:
            stream.last = offset
        if stream.suspect is not None and offset >= stream.suspect[0]:
            stream.suspect = None
        skip = set(stream.held)
        for member, held in stream.held.items():
            held.append((offset, epoch, None if member in exclude else frame))
        spared = set(skip)
        if floors and not new_epoch:
            for member, floor in floors.items():
                if offset <= floor:  # covered by its replay; it missed nothing
                    skip.add(member)
                    spared.add(member)
                    stream.floors[member] = floor
                else:
                    stream.floors.pop(member, None)
                    if offset == floor + 1:
                        spared.add(member)  # the next one for it: it missed nothing
        return skip, (spared if gap else None)

    def release(self, room: str, member: str, position: Position) -> tuple[list[Any], bool] | None:
        """After ``member``'s history read at ``position``: the held frames after it, and
        whether the other members here are on a history that is gone (they must reconnect).
        None when what arrived meanwhile does not follow ``position`` (it must reconnect)."""
        stream = self._rooms.get(room)
        if stream is None or member not in stream.held:
            return None  # left meanwhile
        held = stream.held.pop(member)
        expected = position.offset + 1
        frames = []
        for offset, epoch, frame in held:
            if epoch != position.epoch or offset > expected:
                return None
            if offset == expected:
                if frame is not None:  # None: excluded from it
                    frames.append(frame)
                expected += 1
        stale = stream.epoch is not None and stream.epoch != position.epoch
        if stream.epoch is None or stale:
            stream.reset(position)
        stream.floors[member] = expected - 1
        return frames, stale

    def last(self, room: str) -> int:
        """The latest offset delivered here (0 when none)."""
        stream = self._rooms.get(room)
        return 0 if stream is None or stream.epoch is None else stream.last

    def positioned(self, room: str, position: Position | None) -> bool:
        """The backend says where ``room`` stands (None: its history is gone). True when the
        members here missed messages: another epoch (the backend starts one when it finds
        itself behind what was delivered here), or an offset reported a heartbeat ago that
        still has not arrived while nothing else did either (a lagging node is not deaf)."""
        stream = self._rooms.get(room)
        if stream is None or stream.epoch is None:
            return False
        if position is None or position.epoch != stream.epoch:
            stream.reset(None)
            return True
        if position.offset <= stream.last:
            stream.suspect = None
            return False
        if stream.suspect is not None and stream.suspect[1] == stream.last:
            stream.reset(position)
            return True
        stream.suspect = (position.offset, stream.last)
        return False

    def leave(self, room: str, member: str, emptied: bool) -> None:
        stream = self._rooms.get(room)
        if stream is None:
            return
        stream.floors.pop(member, None)
        stream.held.pop(member, None)
        if emptied and not stream.held:
            del self._rooms[room]

    def __len__(self) -> int:
        return len(self._rooms)
