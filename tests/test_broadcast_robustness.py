"""Broadcasts on a real server: dropped members, exclusion, encoding, slow consumers, stress.

Each server kind in ``SERVERS`` serves ``tests/apps/core_app.py``; members connect to
``/ws/member?id=...&rooms=...`` and answer JSON commands with ``ack:<seq>``. ``POST /test/burst``
broadcasts numbered messages (``"<seq:08d>|xxx..."``), so order and gaps are visible.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.conftest import SERVERS, Server, app_for, sent_code, server_fixture
from tests.helpers import WAIT, drain, http, open_ws, recv, until

pytestmark = pytest.mark.anyio

APP = {kind: app_for("core_app", kind) for kind in SERVERS}

#: One server for the tests that need no special configuration and raise nothing.
bserver = server_fixture("core_app", "broadcast")


# Helpers ----------------------------------------------------------------------------------------


def new_id(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def numbered(seq: int, size: int) -> str:
    """The message POST /test/burst sends as number ``seq``."""
    head = f"{seq:08d}|"
    return head + "x" * max(0, size - len(head))


async def member(
    server: Server, cid: str, rooms: list[str], *, cleanup: bool = True, **kwargs: Any
) -> ClientConnection:
    """Connect as ``cid``, registered and in ``rooms`` once this returns."""
    path = f"/ws/member?id={cid}&rooms={','.join(rooms)}"
    if not cleanup:
        path += "&cleanup=0"
    ws = await open_ws(server, path, **kwargs)
    assert await recv(ws) == f"ready:{cid}"
    return ws


async def command(ws: ClientConnection, seq: int, op: str, **fields: Any) -> list[str | bytes]:
    """Send a command and wait for its ack; returns the broadcasts received meanwhile."""
    await ws.send(json.dumps({"op": op, "seq": seq, **fields}))
    others: list[str | bytes] = []
    for _ in range(100_000):
        message = await recv(ws)
        if message == f"ack:{seq}":
            return others
        assert not (isinstance(message, str) and message.startswith("ack:")), message
        others.append(message)
    raise AssertionError(f"no ack for {seq}")


async def room_ids(api: httpx.AsyncClient, room: str) -> list[str]:
    response = await api.get(f"/rooms/{room}")
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    ids: list[str] = response.json()["connection_ids"]
    return ids


def assert_clean_log(server: Server) -> None:
    log = server.log()
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log


# Dropped members, exclusion, encoding -----------------------------------------------------------


async def test_members_dropping_mid_broadcast(bserver: Server) -> None:
    room = new_id("room")
    total, drop_after = 1000, 100
    keep = [new_id("keep") for _ in range(3)]
    drop = [new_id("drop") for _ in range(3)]
    # cleanup=0: the handler does not remove itself, the library must notice the drop.
    conns = {cid: await member(bserver, cid, [room], cleanup=False) for cid in keep + drop}

    async def keeper(ws: ClientConnection) -> list[str | bytes]:
        return [await recv(ws) for _ in range(total)]

    async def dropper(ws: ClientConnection) -> None:
        for seq in range(drop_after):
            assert await recv(ws) == numbered(seq, 64)
        ws.transport.abort()  # gone without a close frame, mid-burst
        await asyncio.wait_for(ws.wait_closed(), WAIT)

    async with http(bserver, timeout=60) as api:
        # About 1 ms between messages: the burst lasts around a second, the drops land inside it.
        burst = asyncio.create_task(
            api.post(f"/test/burst/{room}", params={"count": total, "size": 64, "pause": 0.001})
        )
        received, *_ = await asyncio.gather(
            asyncio.gather(*(keeper(conns[cid]) for cid in keep)),
            *(dropper(conns[cid]) for cid in drop),
        )
        response = await burst
        assert response.status_code == 200, response.text
        delivered: list[int] = response.json()["delivered"]
        assert delivered[0] == 6
        assert all(a >= b for a, b in itertools.pairwise(delivered)), "a member came back"
        assert delivered[-1] == 3, f"dropped members still received: {delivered[-10:]}"
        for messages in received:
            assert messages == [numbered(seq, 64) for seq in range(total)]
        assert await room_ids(api, room) == sorted(keep)
        # The survivors still work.
        ack = await api.post(f"/rooms/{room}/broadcast", json={"message": "after"})
        assert ack.json() == {"status": "sent", "room_connections": 3}
        for cid in keep:
            assert await recv(conns[cid]) == "after"
    for cid in keep:
        await conns[cid].close()
    assert_clean_log(bserver)


async def test_exclude_skips_the_given_ids(bserver: Server) -> None:
    room = new_id("room")
    a, b, c = new_id("a"), new_id("b"), new_id("c")
    wa, wb, wc = [await member(bserver, cid, [room]) for cid in (a, b, c)]
    async with http(bserver) as api:
        response = await api.post(
            f"/rooms/{room}/broadcast", json={"message": "not for a", "exclude": [a]}
        )
        assert response.json() == {"status": "sent", "room_connections": 2}
        response = await api.post(
            f"/rooms/{room}/broadcast", json={"message": "not for a or c", "exclude": [a, c]}
        )
        assert response.json() == {"status": "sent", "room_connections": 1}
        # From a handler: the sender excludes itself.
        assert await command(wa, 1, "say", room=room, text="from a", exclude_self=True) == []
        response = await api.post(f"/rooms/{room}/broadcast", json={"message": "for all"})
        assert response.json() == {"status": "sent", "room_connections": 3}
    assert await recv(wa) == "for all"  # the first thing a receives: nothing was meant for it
    assert [await recv(wb) for _ in range(4)] == [
        "not for a",
        "not for a or c",
        "from a",
        "for all",
    ]
    assert [await recv(wc) for _ in range(3)] == ["not for a", "from a", "for all"]
    for ws in (wa, wb, wc):
        await ws.close()


async def test_message_encoding(bserver: Server) -> None:
    room = new_id("room")
    ws = await member(bserver, new_id(), [room])
    async with http(bserver) as api:
        for message, expected in [
            (
                {"b": 1, "a": [1, 2.5, None, True], "t": "é ✓"},
                '{"b":1,"a":[1,2.5,null,true],"t":"é ✓"}',
            ),
            ([1, {"k": "v"}], '[1,{"k":"v"}]'),
            (42, "42"),
            ("plain text, not JSON-quoted", "plain text, not JSON-quoted"),
            ('{"already": "json"}', '{"already": "json"}'),
        ]:
            response = await api.post(f"/rooms/{room}/broadcast", json={"message": message})
            assert response.status_code == 200, response.text
            received = await recv(ws)
            assert isinstance(received, str), f"{message!r} arrived as binary"
            assert received == expected
        for raw in (b"\x00\x01\xfe\xff", b"valid utf-8 is still binary", b""):
            response = await api.post(f"/test/bytes/{room}", json={"hex": raw.hex()})
            assert response.json() == {"delivered": 1}
            received = await recv(ws)
            assert isinstance(received, bytes), f"{raw!r} arrived as text"
            assert received == raw
    await ws.close()


# Slow consumer ----------------------------------------------------------------------------------


async def test_slow_consumer_is_closed_and_never_stalls_the_room(
    server_kind: str, serve: Any
) -> None:
    max_buffer, total, size, window = 64, 2000, 16 * 1024, 50
    server: Server = serve(server_kind, APP[server_kind], {"CORE_MAX_BUFFER": "64"})
    room = "slow"
    healthy_ids = [new_id("healthy") for _ in range(3)]
    stalled_id = new_id("stalled")
    # No permessage-deflate: the padding would compress to almost nothing and never back up.
    healthy = [
        await member(server, cid, [room], max_size=2**20, compression=None) for cid in healthy_ids
    ]
    # The stalled member reads its "ready" message and then nothing: its socket backs up.
    stalled = await member(
        server, stalled_id, [room], max_queue=1, ping_interval=None, compression=None
    )

    counts = [0] * len(healthy)
    progress = asyncio.Condition()
    received: list[list[str]] = [[] for _ in healthy]

    async def read(i: int) -> None:
        for _ in range(total):
            message = await recv(healthy[i], 30)
            assert isinstance(message, str)
            received[i].append(message[:9])  # "<seq:08d>|": enough to check order
            assert len(message) == size
            async with progress:
                counts[i] += 1
                progress.notify_all()

    readers = [asyncio.create_task(read(i)) for i in range(len(healthy))]
    longest = 0.0
    async with http(server) as api:
        # Produce at a rate the healthy members keep up with (a window ahead of them at most,
        # fewer frames than their buffer holds); the stalled member falls behind without bound.
        assert window < max_buffer
        for start in range(0, total, window):
            began = time.monotonic()
            response = await api.post(
                f"/test/burst/{room}", params={"count": window, "size": size, "start": start}
            )
            longest = max(longest, time.monotonic() - began)
            assert response.status_code == 200, response.text
            async with progress:
                await asyncio.wait_for(
                    progress.wait_for(lambda s=start: min(counts) >= s + window), 30
                )
        await asyncio.wait_for(asyncio.gather(*readers), 30)
        for messages in received:
            assert messages == [f"{seq:08d}|" for seq in range(total)]
        assert longest < 5, f"a burst of {window} broadcasts took {longest:.1f}s"

        stats = (await api.get("/stats")).json()
        assert stats["slow_consumer_closes"] >= 1, stats
        assert await room_ids(api, room) == sorted(healthy_ids)

    # Reading at last, the stalled member finds a gapless prefix, then the 1013 close.
    messages, rcvd = await drain(stalled, total, timeout=WAIT)
    assert 0 < len(messages) < total
    for seq, message in enumerate(messages):
        assert isinstance(message, str)
        assert message[:9] == f"{seq:08d}|", f"gap or reorder at {seq}"
    assert rcvd is not None, "the stalled member got no close frame"
    assert rcvd.code == sent_code(server_kind, 1013)
    for ws in healthy:
        await ws.close()
    assert "Traceback" not in server.log(), server.log()


# Stress -----------------------------------------------------------------------------------------


async def test_concurrent_members_and_rest_broadcasts_leave_nothing_behind(
    server_kind: str, serve: Any
) -> None:
    server: Server = serve(server_kind, APP[server_kind])
    rooms = [f"stress-{i}" for i in range(6)]
    n_clients, n_ops, n_rest = 50, 20, 150

    async def run_client(i: int) -> str:
        rng = random.Random(i)
        cid = f"client-{i}"
        ws = await member(server, cid, [rng.choice(rooms)])
        aborts = i % 5 == 0
        for seq in range(n_ops):
            op = rng.choice(["join", "join", "leave", "say", "ping"])
            fields: dict[str, Any] = {"room": rng.choice(rooms)} if op != "ping" else {}
            if op == "say":
                fields["text"] = f"{cid} says {seq}"
            await command(ws, seq, op, **fields)
            if aborts and seq == n_ops // 2:
                ws.transport.abort()
                await asyncio.wait_for(ws.wait_closed(), WAIT)
                return "aborted"
        await ws.close()
        return "closed"

    async def run_rest(api: httpx.AsyncClient, i: int) -> int:
        rng = random.Random(-i)
        if i % 10 == 0:
            response = await api.post("/broadcast", json={"message": {"rest": i}})
        else:
            response = await api.post(
                f"/rooms/{rng.choice(rooms)}/broadcast", json={"message": f"rest {i}"}
            )
        return response.status_code

    limits = httpx.Limits(max_connections=10)
    async with http(server, timeout=30, limits=limits) as api:
        outcomes, statuses = await asyncio.wait_for(
            asyncio.gather(
                asyncio.gather(*(run_client(i) for i in range(n_clients))),
                asyncio.gather(*(run_rest(api, i) for i in range(n_rest))),
            ),
            120,
        )
        assert outcomes.count("aborted") == n_clients // 5
        assert statuses == [200] * n_rest

        last: dict[str, Any] = {}

        async def idle() -> bool:
            last.update((await api.get("/stats")).json())
            return (
                last["connections"] == 0
                and last["rooms"] == 0
                and last["handlers"] == 0
                and last["open_sockets"] == 0
            )

        try:
            await until(idle, timeout=15.0, what="no connections, rooms or handlers")
        except AssertionError:
            raise AssertionError(f"server not idle: {last}") from None
    assert_clean_log(server)
