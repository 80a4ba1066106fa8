"""Rooms across real processes over real Redis: two uvicorn workers and one granian-rsgi worker.

Every client talks to one node over a real socket; messages cross nodes only through Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection

from fastapi_rooms.backends.redis_cluster import _startup

from .conftest import Node, RedisServer, Server, app_for, redis_server_binary, running_nodes
from .helpers import (
    ADMIN,
    WAIT,
    http,
    next_event,
    open_ws,
    recv,
    recv_json,
    room_channel,
    stats,
    until,
    wait_stats,
)
from .localcluster import raw_client, subscribers

pytestmark = pytest.mark.anyio

NODES = {"a": "uvicorn", "b": "uvicorn", "c": "granian-rsgi"}


def redis_nodes(url: str, prefix: str, nodes: dict[str, str] = NODES) -> dict[str, Node]:
    """redis_app nodes by name, each of the given server kind, sharing rooms through ``url``."""
    return {
        name: (kind, app_for("redis_app", kind),
               {"REDIS_URL": url, "ROOMS_PREFIX": prefix, "NODE_ID": f"node-{name}"})
        for name, kind in nodes.items()
    }  # fmt: skip


@pytest.fixture(scope="module")
def cluster_prefix() -> str:
    return f"frtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """Every test here runs on one Redis and on a three-master Redis Cluster: the cluster
    backend keeps every guarantee of the single-Redis one."""
    return str(
        request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")
    )


@pytest.fixture(scope="module")
def cluster(
    backend_url: str, cluster_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Server]]:
    """Nodes a, b (uvicorn) and c (granian-rsgi) sharing rooms through the backend."""
    tmp = tmp_path_factory.mktemp("cluster")
    with running_nodes(tmp, redis_nodes(backend_url, cluster_prefix)) as servers:
        yield servers


@dataclass
class Client:
    ws: ClientConnection
    id: str
    node: str

    async def event(self, type_: str = "message", timeout: float = WAIT) -> dict[str, Any]:
        """The next JSON event of ``type_``; other types are skipped."""
        return await next_event(self.ws, type_, timeout)

    async def send(self, **request: Any) -> None:
        await self.ws.send(json.dumps(request))

    async def join(self, room: str) -> None:
        """Join; the ready endpoint answers once the room's channel is live on Redis."""
        await self.send(type="join", room=room)
        assert await self.event("joined") == {"type": "joined", "room": room}


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def clients() -> AsyncIterator[Connect]:
    """``await clients(server, *rooms)`` opens a ready-endpoint client; all closed after."""
    async with AsyncExitStack() as stack:

        async def open_client(server: Server, *rooms: str) -> Client:
            ws = await stack.enter_async_context(open_ws(server, "/ws"))
            welcome = await recv_json(ws)
            client = Client(ws, welcome["connection_id"], welcome["node"])
            for room in rooms:
                await client.join(room)
            return client

        yield open_client


# Delivery across nodes ---------------------------------------------------------------------


async def test_welcome_names_each_node(cluster: dict[str, Server], clients: Connect) -> None:
    for name, server in cluster.items():
        assert (await clients(server)).node == f"node-{name}"


async def test_500_messages_reach_every_node_in_publish_order_once(
    cluster: dict[str, Server], clients: Connect
) -> None:
    room = "order"
    members = [await clients(cluster[n], room) for n in ("a", "a", "b", "b", "c", "c")]
    publisher = members[0]
    for i in range(500):
        await publisher.send(type="publish", room=room, data=i)
    await publisher.send(type="publish", room=room, data="end")
    for member in members:
        got = []
        while True:
            event = await member.event()
            assert event["from"] == publisher.id and event["room"] == room
            if event["data"] == "end":
                break
            got.append(event["data"])
        assert got == list(range(500)), f"{member.node}: lost, duplicated or reordered"


async def test_rest_broadcasts_from_any_node_reach_every_node(
    cluster: dict[str, Server], clients: Connect
) -> None:
    a, b, c = [await clients(cluster[n], "news") for n in "abc"]
    outsider = await clients(cluster["b"])  # in no room
    async with http(cluster["c"], headers=ADMIN) as rest:
        response = await rest.post("/rooms/news/broadcast", json={"message": {"n": 1}})
        assert response.status_code == 200
        assert response.json() == {"status": "sent", "room_connections": 1}  # local count
        response = await rest.post("/broadcast", json={"message": "to everyone"})
        assert response.json()["connections"] >= 1  # c's own clients only
    for member in (a, b, c):
        assert await recv_json(member.ws) == {"n": 1}
        assert await recv(member.ws) == "to everyone"
    assert await recv(outsider.ws) == "to everyone"


async def test_send_to_a_connection_on_another_node(
    cluster: dict[str, Server], clients: Connect
) -> None:
    target = await clients(cluster["c"])
    async with http(cluster["a"], headers=ADMIN) as rest:
        response = await rest.post(f"/connections/{target.id}/send", json={"message": "psst"})
        assert response.status_code == 200, response.text
        assert await recv(target.ws) == "psst"
        missing = await rest.post("/connections/nobody/send", json={"message": "x"})
        assert missing.status_code == 404
        await target.ws.close()

        # The directory forgets a closed connection: sends to it are 404 again.
        async def gone() -> bool:
            response = await rest.post(f"/connections/{target.id}/send", json={"message": "x"})
            return response.status_code == 404

        await until(gone)


async def test_exclude_works_across_nodes(cluster: dict[str, Server], clients: Connect) -> None:
    a1, a2 = await clients(cluster["a"], "ex"), await clients(cluster["a"], "ex")
    b1, c1 = await clients(cluster["b"], "ex"), await clients(cluster["c"], "ex")
    await a1.send(type="publish", room="ex", data="hi", exclude_self=True)
    async with http(cluster["b"], headers=ADMIN) as rest:
        response = await rest.post(
            "/rooms/ex/broadcast", json={"message": "rest", "exclude": [a2.id, c1.id]}
        )
        assert response.status_code == 200

    async def frames(member: Client, count: int) -> list[Any]:
        got = []
        for _ in range(count):
            raw = await recv(member.ws)
            got.append(json.loads(raw)["data"] if raw.startswith("{") else raw)
        return got

    assert await frames(a1, 1) == ["rest"]  # "hi" skipped its sender
    await a1.send(type="publish", room="ex", data="marker")
    assert await frames(a1, 1) == ["marker"]
    # "hi" comes from a through Redis, "rest" is local to b: either may be first there.
    assert sorted(await frames(b1, 2)) == ["hi", "rest"]
    assert await frames(b1, 1) == ["marker"]
    assert await frames(a2, 2) == ["hi", "marker"]  # "rest" skipped a2 and c1
    assert await frames(c1, 2) == ["hi", "marker"]


async def test_no_subscription_is_left_after_every_member_leaves(
    cluster: dict[str, Server], clients: Connect, backend_url: str, cluster_prefix: str
) -> None:
    channel = room_channel(cluster_prefix, "ephemeral")
    members = [await clients(cluster[n], "ephemeral") for n in "abc"]
    async with raw_client(backend_url) as redis:
        assert await subscribers(redis, channel) == 3
        await members[0].send(type="leave", room="ephemeral")
        await members[0].event("left")
        await members[1].ws.close()
        await members[2].send(type="leave", room="ephemeral")
        await members[2].event("left")

        async def unsubscribed() -> bool:
            return await subscribers(redis, channel) == 0

        await until(unsubscribed)


async def test_malformed_envelopes_from_redis_cli_are_counted_and_dropped(
    cluster: dict[str, Server], clients: Connect, backend_url: str, cluster_prefix: str
) -> None:
    members = {n: await clients(cluster[n], "hostile") for n in "abc"}
    before = {n: (await stats(cluster[n]))["malformed_envelopes"] for n in "abc"}
    garbage = [
        b"not an envelope",
        b"FR1",
        b"FR1\x00\x05{oops",
        b"\x80\x04\x95pickle",
        b"{}",
        b'FR1\x00\x1c{"o":"n","k":"room","t":"r"}\xff',
    ]
    if backend_url.startswith("redis+cluster://"):  # -c: follow MOVED to the channel's shard
        seed = _startup(backend_url)[0][0][1]
        command = ["-c", "-p", str(seed), "-x", "SPUBLISH"]
    else:
        command = ["-u", backend_url, "-x", "PUBLISH"]
    for channel in (room_channel(cluster_prefix, "hostile"), f"{cluster_prefix}:all"):
        for payload in garbage:
            cli = await asyncio.create_subprocess_exec(  # -x: the payload from stdin, as bytes
                _redis_cli(),
                *command,
                channel,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(cli.communicate(payload), WAIT)
            assert cli.returncode == 0, out
    async with http(cluster["a"], headers=ADMIN) as rest:
        await rest.post("/rooms/hostile/broadcast", json={"message": "still here"})
    for member in members.values():
        assert await recv(member.ws) == "still here"
    for n in "abc":
        backend = await stats(cluster[n])
        assert backend["malformed_envelopes"] - before[n] == 2 * len(garbage)
        assert backend["connected"] is True
        assert cluster[n].proc.poll() is None
        assert "malformed envelope" in cluster[n].log()


def _redis_cli() -> str:
    """redis-cli beside the redis-server this suite uses."""
    return str(Path(redis_server_binary()).with_name("redis-cli"))


# Redis killed and restarted ----------------------------------------------------------------


async def test_redis_restart_local_delivery_goes_on_and_cross_node_resumes(
    private_redis: RedisServer, clients: Connect, tmp_path: Path
) -> None:
    nodes = redis_nodes(private_redis.url, "outage", {"a": "uvicorn", "c": "granian-rsgi"})
    with running_nodes(tmp_path, nodes) as servers:
        a, c = servers["a"], servers["c"]
        a1, a2 = await clients(a, "r"), await clients(a, "r")
        c1 = await clients(c, "r")
        await a1.send(type="publish", room="r", data="before")
        for member in (a2, c1):
            assert (await member.event())["data"] == "before"

        private_redis.kill()
        for node in (a, c):
            down = await wait_stats(node, lambda s: s["connected"] is False)
            assert down["last_error"]
        # Redis is down: local members still get everything, REST answers promptly.
        await a1.send(type="publish", room="r", data="during")
        assert (await a2.event())["data"] == "during"
        async with http(a, headers=ADMIN) as rest:
            response = await asyncio.wait_for(
                rest.post("/rooms/r/broadcast", json={"message": "rest-during"}), 3.0
            )
        assert response.json() == {"status": "sent", "room_connections": 2}

        private_redis.start()
        for node in (a, c):
            await wait_stats(node, lambda s: s["connected"] and s["in_sync"])
        await a1.send(type="publish", room="r", data="after")
        # c missed what was published during the outage (at-most-once) and gets what follows.
        assert (await c1.event())["data"] == "after"
        for node in (a, c):
            backend = await stats(node)
            assert backend["reconnects"] >= 1 and backend["publish_dropped"] >= 0
            assert node.proc.poll() is None
        assert (await stats(a))["publish_dropped"] >= 2
        assert "reconnected after" in a.log()


def test_redis_cli_is_available() -> None:
    """The malformed-envelope test needs redis-cli; the suite must not skip it."""
    assert os.access(_redis_cli(), os.X_OK)


async def test_sends_to_a_connection_on_a_killed_node_are_404(
    backend_url: str,
    cluster: dict[str, Server],
    clients: Connect,
    tmp_path: Path,
    cluster_prefix: str,
) -> None:
    with running_nodes(tmp_path, redis_nodes(backend_url, cluster_prefix, {"d": "uvicorn"})) as d:
        doomed = d["d"]
        client = await clients(doomed)
        async with http(cluster["a"], headers=ADMIN) as rest:
            ok = await rest.post(f"/connections/{client.id}/send", json={"message": "alive?"})
            assert ok.status_code == 200
            assert await recv(client.ws) == "alive?"
            os.kill(doomed.proc.pid, signal.SIGKILL)  # no shutdown: its directory keys remain
            doomed.proc.wait(WAIT)

            async def refused() -> bool:
                response = await rest.post(f"/connections/{client.id}/send", json={"message": "x"})
                return response.status_code == 404

            # Nobody listens on the dead node's channel any more: 404 long before the 30 s TTL.
            await until(refused, timeout=WAIT)


# Presence and users across nodes -----------------------------------------------------------


async def test_presence_and_user_sends_span_nodes_and_a_killed_node_expires(
    backend_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Presence on Redis: entries refreshed every NODE_TTL/3; a SIGKILLed node's entries are
    gone within NODE_TTL (here 1.5 s)."""
    ttl = 1.5
    nodes: dict[str, Node] = {}
    for name, kind in NODES.items():
        env = {"REDIS_URL": backend_url, "ROOMS_PREFIX": redis_prefix, "NODE_ID": name,
               "NODE_TTL": str(ttl), "PRESENCE_EVENTS": "1"}  # fmt: skip
        nodes[name] = (kind, app_for("secure_app", kind), env)
    with running_nodes(tmp_path, nodes) as servers:
        async with AsyncExitStack() as stack:

            async def member(node: str, token: str, meta: Any) -> ClientConnection:
                ws = await stack.enter_async_context(open_ws(servers[node], f"/ws?token={token}"))
                await recv(ws)  # welcome
                await ws.send(json.dumps({"type": "join", "room": "p", "meta": meta}))
                await next_event(ws, "joined")
                return ws

            alice_a = await member("a", "alice-token", {"on": "a"})
            await member("b", "alice-token", {"on": "b"})
            await member("b", "bob-token", {"on": "b"})
            carol = await member("c", "admin-token", {"on": "c"})

            async def presence(node: str) -> dict[str, list[str]]:
                async with http(servers[node], headers=ADMIN) as rest:
                    entries = (await rest.get("/rooms/p")).json()["presence"]
                return {e["user_id"]: sorted(c["node"] for c in e["connections"]) for e in entries}

            async def complete() -> bool:
                return await presence("c") == {"admin": ["c"], "alice": ["a", "b"], "bob": ["b"]}

            await until(complete)  # every node's entries reached Redis
            assert await presence("a") == await presence("c")

            async with http(servers["c"], headers=ADMIN) as rest:
                response = await rest.post("/users/alice/send", json={"message": "to both tabs"})
            assert response.status_code == 200
            async with asyncio.timeout(WAIT):
                while await alice_a.recv() != "to both tabs":
                    pass  # presence events of the members who joined after alice

            os.kill(servers["b"].proc.pid, signal.SIGKILL)
            servers["b"].proc.wait(WAIT)
            killed_at = asyncio.get_running_loop().time()

            async def expired() -> bool:
                return await presence("a") == {"admin": ["c"], "alice": ["a"]}

            await until(expired, timeout=4 * ttl + WAIT)
            assert asyncio.get_running_loop().time() - killed_at < ttl + 1.0
            # the survivors' presence events are unaffected; carol still receives room traffic
            await alice_a.send(json.dumps({"type": "publish", "room": "p", "data": "still"}))
            assert (await next_event(carol, "message"))["data"] == "still"
