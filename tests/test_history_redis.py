"""Room history kept in Redis, across real processes: node a (uvicorn) and node c
(granian-rsgi) share rooms through Redis; every client talks to one node over a real socket.

Rooms ``history:{name}`` keep 5 messages, ``race:{name}`` 1000 (tests/apps/redis_app.py).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from fastapi_rooms.backends.base import Append
from fastapi_rooms.backends.redis import _HISTORY_APPEND, RedisBackend

from .conftest import RedisServer, Server, running_nodes
from .helpers import ADMIN, WAIT, http, next_event, open_ws, recv_json, wait_stats
from .localcluster import keys as all_keys
from .localcluster import raw_client
from .test_multinode import redis_nodes

pytestmark = pytest.mark.anyio

NODE_TTL = "1.5"  # a heartbeat (position check) every half second


def nodes(url: str, prefix: str) -> dict[str, Any]:
    out = redis_nodes(url, prefix, {"a": "uvicorn", "c": "granian-rsgi"})
    for _, _, env in out.values():
        env["NODE_TTL"] = NODE_TTL
    return out


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"frhist-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def url(request: pytest.FixtureRequest) -> str:
    """One Redis, then a three-master cluster: history keeps its guarantees on both."""
    name = "redis_url" if request.param == "redis" else "redis_cluster_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(scope="module")
def pair(
    url: str, prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """Nodes a (uvicorn) and c (granian-rsgi) sharing rooms through the backend."""
    with running_nodes(tmp_path_factory.mktemp("hist"), nodes(url, prefix)) as servers:
        yield servers


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as stack:
        yield stack


async def connect(stack: AsyncExitStack, server: Server) -> ClientConnection:
    # max_queue=None: closing with messages unread still reads the close frame at once
    ws = await stack.enter_async_context(open_ws(server, "/ws", max_queue=None))
    assert (await recv_json(ws))["type"] == "welcome"
    return ws


async def join(ws: ClientConnection, room: str, since: Any = None) -> dict[str, Any]:
    request: dict[str, Any] = {"type": "join", "room": room}
    if since is not None:
        request["since"] = since
    await ws.send(json.dumps(request))
    return await next_event(ws, "joined")


async def publish(ws: ClientConnection, room: str, data: Any) -> None:
    await ws.send(json.dumps({"type": "publish", "room": room, "data": data}))


async def messages(ws: ClientConnection, n: int, timeout: float = WAIT) -> list[dict[str, Any]]:
    return [await next_event(ws, "message", timeout) for _ in range(n)]


def room(kind: str) -> str:
    return f"{kind}:{uuid.uuid4().hex[:8]}"


async def test_two_publishers_on_two_nodes_one_order_for_every_member(
    pair: dict[str, Server], stack: AsyncExitStack
) -> None:
    r = room("race")
    members = [await connect(stack, pair[n]) for n in ("a", "a", "c", "c")]
    for ws in members:
        assert (await join(ws, r))["offset"] == 0
    pa, pc = members[0], members[2]  # one publisher on each node, each also a member
    count = 100
    await asyncio.gather(
        *(publish(pa, r, f"a{i}") for i in range(count)),
        *(publish(pc, r, f"c{i}") for i in range(count)),
    )
    seen = await asyncio.gather(*(messages(ws, 2 * count) for ws in members))
    for got in seen:  # offsets 1..200 without a gap, and the same order on both nodes
        assert [m["offset"] for m in got] == list(range(1, 2 * count + 1))
        assert [m["data"] for m in got] == [m["data"] for m in seen[0]]
    order = [m["data"] for m in seen[0]]
    assert [d for d in order if d[0] == "a"] == [f"a{i}" for i in range(count)]
    assert [d for d in order if d[0] == "c"] == [f"c{i}" for i in range(count)]


async def test_history_survives_redis_forgetting_its_scripts(
    pair: dict[str, Server], stack: AsyncExitStack, url: str
) -> None:
    """Appends send the script's SHA1 only; after SCRIPT FLUSH (an operator, a restore), the
    node loads it again and the messages that hit NOSCRIPT are numbered, in order."""
    r = room("race")
    member = await connect(stack, pair["a"])
    await join(member, r)
    await publish(member, r, "before")
    assert [m["offset"] for m in await messages(member, 1)] == [1]
    async with raw_client(url) as client:
        await client.script_flush()  # every master, on a cluster
    for i in range(3):
        await publish(member, r, i)
    got = await messages(member, 3)
    assert [(m["offset"], m["data"]) for m in got] == [(2, 0), (3, 1), (4, 2)]


async def test_recovery_on_another_node_then_live(
    pair: dict[str, Server], stack: AsyncExitStack, url: str, prefix: str
) -> None:
    r = room("race")
    leaver = await connect(stack, pair["a"])
    first = await join(leaver, r)
    publisher = await connect(stack, pair["c"])
    await join(publisher, r)
    for i in range(3):
        await publish(publisher, r, i)
    assert [m["offset"] for m in await messages(leaver, 3)] == [1, 2, 3]
    await leaver.close()
    for i in range(3, 7):
        await publish(publisher, r, i)
    assert [m["offset"] for m in await messages(publisher, 7)][-1] == 7  # all numbered

    back = await connect(stack, pair["c"])  # the other node
    since = {"offset": 3, "epoch": first["epoch"]}
    joined = await join(back, r, since)
    assert joined == {
        "type": "joined", "room": r, "offset": 7, "epoch": first["epoch"], "recovered": True
    }  # fmt: skip
    assert [(m["offset"], m["data"]) for m in await messages(back, 4)] == [
        (4, 3), (5, 4), (6, 5), (7, 6)
    ]  # fmt: skip
    await publish(publisher, r, "live")
    assert [(m["offset"], m["data"]) for m in await messages(back, 1)] == [(8, "live")]

    async with raw_client(url) as client:  # keys under the app's prefix, expiring (ttl 600)
        keys = sorted(k.decode() for k in await all_keys(client, f"{prefix}:history:*{r}*"))
        assert keys == sorted(RedisBackend(url, prefix=prefix)._history_keys(r))
        ttls = [await client.pttl(k) for k in keys]
        assert all(0 < ttl <= 600_000 for ttl in ttls), ttls
        assert await client.llen(keys[0]) == 8


async def test_trimmed_history_is_not_recovered_and_replays_nothing(
    pair: dict[str, Server], stack: AsyncExitStack
) -> None:
    r = room("history")  # keeps 5
    publisher = await connect(stack, pair["a"])
    joined = await join(publisher, r)
    for i in range(10):
        await publish(publisher, r, i)
    await messages(publisher, 10)
    late = await connect(stack, pair["c"])
    answer = await join(late, r, {"offset": 2, "epoch": joined["epoch"]})
    assert answer["recovered"] is False and answer["offset"] == 10
    other = await connect(stack, pair["c"])
    assert (await join(other, r, {"offset": 0, "epoch": "not-an-epoch"}))["recovered"] is False
    ahead = await connect(stack, pair["a"])
    assert (await join(ahead, r, {"offset": 99, "epoch": joined["epoch"]}))["recovered"] is False
    await publish(publisher, r, "next")
    for ws in (late, other, ahead):  # nothing replayed: the next message is the live one
        assert [m["offset"] for m in await messages(ws, 1)] == [11]
    async with http(pair["c"], headers=ADMIN) as rest:  # REST reads the same history
        page = (await rest.get(f"/rooms/{r}/history", params={"since": 7})).json()
    assert [m["offset"] for m in page["messages"]] == [8, 9, 10, 11]
    assert page["complete"] is True and page["epoch"] == joined["epoch"]


async def test_a_publisher_racing_rejoins_on_both_nodes_leaves_no_gap_or_duplicate(
    pair: dict[str, Server], stack: AsyncExitStack
) -> None:
    r = room("race")
    total = 400
    publisher = await connect(stack, pair["c"])
    await join(publisher, r)
    reader = await connect(stack, pair["a"])
    epoch = (await join(reader, r))["epoch"]

    async def publish_all() -> None:
        for i in range(total):
            await publish(publisher, r, i)
            if i % 20 == 0:
                await asyncio.sleep(0)  # let rejoins interleave with the stream

    task = asyncio.create_task(publish_all())
    offsets: list[int] = []
    rejoins = 0
    try:
        while len(offsets) < total:
            offsets += [m["offset"] for m in await messages(reader, min(37, total - len(offsets)))]
            if len(offsets) < total:  # drop the connection, come back on the other node
                await reader.close()
                node = ("c", "a")[rejoins % 2]
                reader = await connect(stack, pair[node])
                joined = await join(reader, r, {"offset": offsets[-1], "epoch": epoch})
                assert joined["recovered"] is True, joined
                rejoins += 1
        await task
    finally:
        task.cancel()
    assert rejoins >= 5
    assert offsets == list(range(1, total + 1))


async def test_a_message_that_never_arrived_closes_members_with_4000_to_recover(
    pair: dict[str, Server], stack: AsyncExitStack, url: str, prefix: str
) -> None:
    """Redis has an offset this node never received (as after a dropped subscription): the
    heartbeat's position check notices and closes the room's members so they recover."""
    r = room("history")
    member = await connect(stack, pair["a"])
    joined = await join(member, r)
    await publish(member, r, "one")
    assert [m["offset"] for m in await messages(member, 1)] == [1]
    # A message numbered and kept by the real script, but published where nobody listens.
    async with raw_client(url) as client:
        backend = RedisBackend(url, prefix=prefix)
        frame = json.dumps({"type": "message", "room": r, "from": None, "data": "lost"})
        frame = frame.replace(" ", "")[:-1] + ',"offset":'
        offset = await client.eval(
            _HISTORY_APPEND, 3, *backend._history_keys(r),
            f"{prefix}:nowhere", b"", frame, "}", 5, 60_000, 60_000, "unused",
        )  # fmt: skip
        assert offset == 2
    with pytest.raises(ConnectionClosed) as closed:
        await next_event(member, "message", 3 * WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert "reconnect to recover" in closed.value.rcvd.reason
    back = await connect(stack, pair["c"])
    answer = await join(back, r, {"offset": 1, "epoch": joined["epoch"]})
    assert answer == {
        "type": "joined", "room": r, "offset": 2, "epoch": joined["epoch"], "recovered": True
    }  # fmt: skip
    assert [(m["offset"], m["data"]) for m in await messages(back, 1)] == [(2, "lost")]
    async with http(pair["a"], headers=ADMIN) as rest:
        assert (await rest.get("/stats")).json()["resync_closes"] >= 1


async def test_a_redis_restart_is_a_new_epoch_and_members_recover(
    private_redis: RedisServer, stack: AsyncExitStack, tmp_path: Path
) -> None:
    with running_nodes(tmp_path, nodes(private_redis.url, "restart")) as servers:
        a, c = servers["a"], servers["c"]
        r = room("history")
        member = await connect(stack, a)
        joined = await join(member, r)
        other = await connect(stack, c)
        await join(other, r)
        await publish(other, r, "before")
        for ws in (member, other):
            assert [m["offset"] for m in await messages(ws, 1)] == [1]

        private_redis.kill()
        private_redis.start()  # empty: every room's history and epoch are gone
        # 4000 on uvicorn; Granian's RSGI cannot send a close code after accept (1005).
        for ws, code in ((member, 4000), (other, 1005)):
            with pytest.raises(ConnectionClosed) as closed:
                await next_event(ws, "message", 4 * WAIT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == code
        for node in (a, c):
            await wait_stats(node, lambda s: s["connected"] and s["in_sync"])
        back = await connect(stack, c)
        answer = await join(back, r, {"offset": 1, "epoch": joined["epoch"]})
        assert answer["recovered"] is False and answer["offset"] == 0
        assert answer["epoch"] != joined["epoch"]
        again = await connect(stack, a)
        assert (await join(again, r))["epoch"] == answer["epoch"]  # one new epoch for all
        await publish(again, r, "after")
        for ws in (back, again):
            assert [(m["offset"], m["data"]) for m in await messages(ws, 1)] == [(1, "after")]


async def test_the_history_scripts_on_redis(redis_url: str) -> None:
    """The scripts alone: numbering, trimming by size, a refused item that leaves the rest of
    the batch alone, a history behind what was delivered, lists out of step."""
    backend = RedisBackend(redis_url, prefix=f"frscript-{uuid.uuid4().hex[:8]}")
    await backend.connect()
    client = backend.client
    try:
        item = Append("r", b"", '{"o":', "}", 3, 60, 60)
        assert await backend.write_many([("ch", item), ("ch", b"plain"), ("ch", item)]) == [
            1, 0, 2
        ]  # fmt: skip
        page = await backend.history_read("r", 0, None, None, 60, 60)
        assert (page.frames, page.complete, page.position.offset) == (
            ['{"o":1}', '{"o":2}'],
            True,
            2,
        )
        await client.set(backend._history_keys("bad")[0], "not a hash")
        bad = Append("bad", b"", "{", "}", 3, 60, 60)
        refused, offset = await backend.write_many([("ch", bad), ("ch", item)])
        assert isinstance(refused, Exception) and "WRONGTYPE" in str(refused) and offset == 3
        for _ in range(3):
            await backend.write_many([("ch", item)])
        page = await backend.history_read("r", 2, page.position.epoch, None, 60, 60)
        assert page.complete is False and page.frames == []  # 3 was trimmed (size 3)
        page = await backend.history_read("r", 3, page.position.epoch, 2, 60, 60)
        assert page.complete and page.frames == ['{"o":4}', '{"o":5}']  # limit 2
        _, frames, times = backend._history_keys("r")
        await client.rpop(times)  # one list lost an entry (evicted, expired alone)
        assert await backend.write_many([("ch", item)]) == [7]
        assert await client.llen(frames) == await client.llen(times) == 1  # started over
        [behind] = await backend.history_touch([("r", 60, 9)])  # a node delivered up to 9
        assert behind is not None and behind.offset == 0 and behind.epoch != page.position.epoch
        assert await backend.history_touch([("never", 60, 0)]) == [None]
    finally:
        keys = await client.keys(f"{backend.prefix}:*")
        if keys:
            await client.delete(*keys)
        await backend.disconnect()
