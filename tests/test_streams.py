"""Numbered delivery on one node (fastapi_rooms/streams.py), and history kept by a backend
shared by two managers in one process (MemoryBackend): fast unit tests of the rules that
tests/test_history_redis.py proves over real servers and Redis."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest

from fastapi_rooms import RoomManager
from fastapi_rooms.backends import MemoryBackend, MemoryBroker
from fastapi_rooms.errors import CloseCode
from fastapi_rooms.history import History, Position
from fastapi_rooms.streams import Streams

from .helpers import WAIT
from .test_manager import FakePeer, connect

pytestmark = pytest.mark.anyio


def test_in_order_arrivals_go_to_everyone_and_a_gap_spares_only_who_missed_nothing() -> None:
    streams = Streams()
    assert streams.arrive("r", 1, "E", "f1") == (set(), None)
    assert streams.arrive("r", 2, "E", "f2") == (set(), None)
    assert streams.position("r") == Position(2, "E")
    streams.hold("r", "joining")
    skip, spared = streams.arrive("r", 5, "E", "f5")  # 3 and 4 never arrived
    assert skip == {"joining"} and spared == {"joining"}  # its read decides for it
    assert streams.position("r") == Position(5, "E")
    skip, spared = streams.arrive("r", 1, "F", "g1")  # another epoch: the history was lost
    assert spared == {"joining"}
    assert streams.position("r") == Position(1, "F")


def test_a_joining_member_gets_what_its_read_did_not_cover_once() -> None:
    streams = Streams()
    streams.arrive("r", 1, "E", "f1")
    streams.hold("r", "m")
    for n in (2, 3, 4):  # arrive during the read: held for m, delivered to the others
        assert streams.arrive("r", n, "E", f"f{n}") == ({"m"}, None)
    assert streams.release("r", "m", Position(3, "E")) == (["f4"], False)  # read saw up to 3
    streams.hold("r", "late")
    assert streams.release("r", "late", Position(6, "E")) == ([], False)  # 5, 6 on their way
    assert streams.arrive("r", 5, "E", "f5") == ({"late"}, None)  # covered by its replay
    assert streams.arrive("r", 6, "E", "f6") == ({"late"}, None)
    assert streams.arrive("r", 7, "E", "f7") == (set(), None)  # from here on, like everyone
    assert streams.arrive("r", 8, "E", "f8") == (set(), None)


def test_a_release_that_does_not_follow_its_read_or_finds_another_epoch() -> None:
    streams = Streams()
    streams.arrive("r", 1, "E", "f1")
    streams.hold("r", "gap")
    streams.arrive("r", 4, "E", "f4")  # a gap for everyone
    assert streams.release("r", "gap", Position(2, "E")) is None  # 3 missing: reconnect
    streams.hold("r", "epoch")
    streams.arrive("r", 5, "E", "f5")
    assert streams.release("r", "epoch", Position(0, "F")) is None  # held ones are of E
    streams.hold("r", "stale")
    assert streams.release("r", "stale", Position(0, "F")) == ([], True)  # the others on E
    assert streams.position("r") == Position(0, "F")
    assert streams.release("r", "never-held", Position(0, "F")) is None


def test_positions_from_the_backend() -> None:
    streams = Streams()
    assert streams.positioned("r", None) is False  # nothing known here: nothing to say
    streams.arrive("r", 3, "E", "f3")
    assert streams.positioned("r", Position(3, "E")) is False
    assert streams.positioned("r", Position(4, "E")) is False  # may be on its way
    streams.arrive("r", 4, "E", "f4")
    assert streams.positioned("r", Position(5, "E")) is False  # it was: a new suspect
    assert streams.positioned("r", Position(5, "E")) is True  # a heartbeat on, still missing
    assert streams.position("r") == Position(5, "E")
    assert streams.positioned("r", Position(5, "F")) is True  # another epoch
    assert streams.position("r") is None
    streams.arrive("s", 1, "E", "x")
    assert streams.positioned("s", None) is True  # history gone


def test_a_gap_spares_a_member_whose_replay_covered_it() -> None:
    streams = Streams()
    streams.arrive("r", 5, "E", "f5")
    streams.hold("r", "joiner")
    assert streams.release("r", "joiner", Position(8, "E")) == ([], False)  # its floor: 8
    skip, spared = streams.arrive("r", 8, "E", "f8")  # 6 and 7 never arrived here
    assert skip == {"joiner"} and spared == {"joiner"}  # it had 8 already; the others missed
    assert streams.arrive("r", 9, "E", "f9") == (set(), None)
    assert streams.position("r", "joiner") == Position(9, "E")


def test_held_messages_respect_exclude_and_positions_count_the_replay() -> None:
    streams = Streams()
    streams.arrive("r", 1, "E", "f1")
    streams.hold("r", "me")
    streams.arrive("r", 2, "E", "f2", exclude=("me",))  # my own message, sent excluding me
    streams.arrive("r", 3, "E", "f3")
    assert streams.release("r", "me", Position(1, "E")) == (["f3"], False)  # no gap, no 2
    streams.hold("r", "ahead")
    streams.release("r", "ahead", Position(7, "E"))  # 4..7 on their way here
    assert streams.position("r") == Position(3, "E")
    assert streams.position("r", "ahead") == Position(7, "E")  # what "ahead" has


def test_a_lagging_node_is_not_taken_for_a_deaf_one() -> None:
    streams = Streams()
    streams.arrive("r", 1, "E", "f1")
    assert streams.positioned("r", Position(50, "E")) is False  # behind by 49
    streams.arrive("r", 2, "E", "f2")  # slowly catching up: progress since the last check
    assert streams.positioned("r", Position(60, "E")) is False
    assert streams.positioned("r", Position(60, "E")) is True  # no progress at all: missed


async def test_a_backend_behind_what_was_delivered_starts_a_new_epoch() -> None:
    """A failover to a replica that lagged: the history went back; clients must not be
    handed other messages under offsets they already saw."""
    backend = MemoryBackend()
    await backend.connect()
    history = backend.broker.history
    for _ in range(3):
        history.append("r", 10, 60, lambda n: f"m{n}")
    backend.broker.keep("r", 60)
    epoch = history.position("r", 60).epoch
    assert await backend.history_touch([("r", 60, 3)]) == [Position(3, epoch)]
    [moved] = await backend.history_touch([("r", 60, 5)])  # this node delivered up to 5
    assert moved is not None and moved.epoch != epoch and moved.offset == 0
    assert await backend.history_touch([("gone", 60, 1)]) == [None]


def test_leaving_forgets_members_and_empty_rooms() -> None:
    streams = Streams()
    streams.hold("r", "m")
    streams.leave("r", "m", emptied=True)
    assert len(streams) == 0
    streams.arrive("r", 1, "E", "f")
    streams.hold("r", "m")
    streams.leave("r", "other", emptied=False)
    assert streams.holding("r") == {"m"}


def texts(peer: FakePeer) -> list[dict[str, Any]]:
    return [json.loads(e["text"]) for e in peer.sent if "text" in e]


async def messages(peer: FakePeer, n: int) -> list[dict[str, Any]]:
    with anyio.fail_after(WAIT):
        while len([e for e in texts(peer) if e["type"] == "message"]) < n:
            await peer.got.wait()
            peer.got.clear()
    return [e for e in texts(peer) if e["type"] == "message"]


async def test_two_managers_on_one_backend_share_offsets_and_recover_across() -> None:
    broker = MemoryBroker()
    a = RoomManager(MemoryBackend(broker), history_size=10, history_ttl=60)
    b = RoomManager(MemoryBackend(broker), history_size=10, history_ttl=60)
    await a.start()
    await b.start()
    try:
        _, pa = connect(a, "pa")
        _, pb = connect(b, "pb")
        assert await a.join_recovering("pa", "r") == (Position(0, _epoch(broker, "r")), [], False)
        await b.join_recovering("pb", "r")
        await a.publish("r", "one", sender="pa")
        await b.publish("r", "two")
        for peer in (pa, pb):  # the publishing node's own members too, in one order
            got = await messages(peer, 2)
            assert [(m["offset"], m["data"]) for m in got] == [(1, "one"), (2, "two")]
        epoch = _epoch(broker, "r")
        connect(b, "pc")  # another node than the one "pa" was on
        position, frames, recovered = await b.join_recovering("pc", "r", since=(1, epoch)) or (
            None, [], False
        )
        assert (position, recovered) == (Position(2, epoch), True)
        assert [json.loads(f)["data"] for f in frames] == ["two"]
        page = await a.history("r", since=0)
        assert [json.loads(f)["offset"] for f in page.frames] == [1, 2] and page.complete

        broker.history = History()  # the backend lost every history
        await a.publish("r", "after")  # a new epoch reaches members who were on the old one
        with anyio.fail_after(WAIT):
            while "pa" in a.connections or "pb" in b.connections:
                await pa.got.wait() if "pa" in a.connections else await pb.got.wait()
        assert a.stats()["resync_closes"] == 1 and b.stats()["resync_closes"] >= 1
        assert _closed_with(pa) == CloseCode.RESYNC
    finally:
        await a.stop()
        await b.stop()


def _epoch(broker: MemoryBroker, room: str) -> str:
    return broker.history.position(room, 60).epoch


def _closed_with(peer: FakePeer) -> int | None:
    closes = [e for e in peer.sent if e["type"] == "websocket.close"]
    return closes[-1]["code"] if closes else None
