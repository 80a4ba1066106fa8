"""Partitions between hosts: Redis and two app nodes, each in a network namespace of the test's
own (tests/netlab.py), joined by veth links that a test cuts so TCP hears silence, not a reset.

Node n1 runs uvicorn, n2 granian-rsgi; the test process reaches each over its own client link,
and every client is a real one (the official Python client, or ``websockets``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastapi_rooms.client import RoomsClient

from .conftest import (
    Server,
    _wait_for_port,
    app_for,
    free_port,
    in_ci,
    redis_server_binary,
    start_server,
)
from .helpers import WAIT, until, wait_stats
from .netlab import Lab, Link, lab
from .test_redis_cluster import Stream

pytestmark = pytest.mark.anyio

DEAF_AFTER = 1.5
IDLE_TIMEOUT = 2.0


@dataclass
class Hosts:
    net: Lab
    servers: dict[str, Server]
    to_redis: dict[str, Link]  # each node's path to Redis
    to_clients: dict[str, Link]  # the test's path to each node


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    """Redis in one namespace, n1 (uvicorn) and n2 (granian-rsgi) in two others."""
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("the partition tests make network namespaces: CI runs them as root")
        pytest.skip("network namespaces need root")
    prefix = f"frpart-{uuid.uuid4().hex[:6]}"
    port = free_port()
    with lab() as net, ExitStack() as stack:
        redis_ns = net.host("redis")
        to_redis, to_clients, servers, spaces = {}, {}, {}, {}
        for name in ("n1", "n2"):
            ns = spaces[name] = net.host(name)
            to_redis[name] = net.link(ns, redis_ns)  # cut: Redis's end goes quiet
            to_clients[name] = net.link(None, ns)  # cut: the node's end goes quiet
        mine = net.link(None, redis_ns)
        log = (tmp_path / "redis.log").open("ab")
        redis = subprocess.Popen(
            ["ip", "netns", "exec", redis_ns, redis_server_binary(), "--port", str(port),
             "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        stack.callback(_kill, redis)
        _wait_for_port(port, redis, timeout=10, host=mine.b_ip)
        for name, kind in (("n1", "uvicorn"), ("n2", "granian-rsgi")):
            env = {"REDIS_URL": f"redis://{to_redis[name].b_ip}:{port}/0", "ROOMS_PREFIX": prefix,
                   "NODE_ID": name, "NODE_TTL": "3", "DEAF_AFTER": str(DEAF_AFTER),
                   "IDLE_TIMEOUT": str(IDLE_TIMEOUT)}  # fmt: skip
            server = start_server(
                kind, app_for("redis_app", kind), tmp_path, env,
                netns=(spaces[name], to_clients[name].b_ip),
            )  # fmt: skip
            stack.callback(server.stop)
            servers[name] = server
        yield Hosts(net, servers, to_redis, to_clients)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


class Errors:
    """The ``error`` events a client got, in order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_error(self, event: dict[str, Any]) -> None:
        self.queue.put_nowait(event)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.queue.get(), WAIT)


async def client(
    stack: AsyncExitStack, server: Server, *rooms: str, errors: Errors | None = None
) -> tuple[RoomsClient, dict[str, Stream]]:
    streams = {room: Stream() for room in rooms}
    # Pings every half second: the nodes close connections idle for IDLE_TIMEOUT.
    rooms_client = RoomsClient(
        f"{server.ws}/ws", backoff=0.05, max_backoff=0.5, ping_interval=0.5,
        on_error=errors.on_error if errors else None,
    )  # fmt: skip
    await stack.enter_async_context(rooms_client)
    for room in rooms:
        await rooms_client.join(room, streams[room].on_message)
    return rooms_client, streams


async def readiness(server: Server) -> int:
    async with httpx.AsyncClient(base_url=server.http, timeout=WAIT) as http:
        return (await http.get("/readyz")).status_code


async def test_a_node_cut_off_from_redis_goes_on_locally_then_recovers_every_message(
    hosts: Hosts,
) -> None:
    n1, n2 = hosts.servers["n1"], hosts.servers["n2"]
    h, p = "race:cut", "plain"
    async with AsyncExitStack() as stack:
        errors_there = Errors()
        there, seen_there = await client(stack, n1, h, p, errors=errors_there)
        _, seen_beside = await client(stack, n1, p)
        here, seen_here = await client(stack, n2, h)
        await here.publish(h, "warm")
        assert await seen_there[h].has("warm", WAIT)

        hosts.to_redis["n1"].cut()
        cut_at = time.monotonic()
        # Local delivery on the cut node goes on (a room without history needs no Redis).
        await there.publish(p, "local")
        assert await seen_beside[p].has("local", WAIT)
        # The watchdog's probes: on a silent path their PUBLISH times out (the backend's 1 s
        # command timeout) before deafness is due; either way, not connected; readiness follows.
        down = await wait_stats(n1, lambda s: s["connected"] is False)
        noticed = time.monotonic() - cut_at
        assert "Timeout" in down["last_error"] or "deaf" in down["last_error"], down
        assert noticed < DEAF_AFTER + 2 * DEAF_AFTER / 3 + 2.0, noticed  # the stated bound
        assert await readiness(n1) == 503
        assert await readiness(n2) == 200
        # A room with history needs Redis to number a message: refused, and the sender told.
        await there.publish(h, "numbered?")
        refused = await errors_there.next()
        assert refused["code"] == "unavailable" and h in refused["message"]
        # Meanwhile, the other side of the partition goes on: numbered by Redis, unseen by n1.
        for i in range(10):
            await here.publish(h, i)
            assert await seen_here[h].has(i, WAIT)

        hosts.to_redis["n1"].heal()
        await wait_stats(n1, lambda s: s["connected"] and s["in_sync"])
        assert await seen_there[h].has(9, 2 * WAIT)
        assert seen_there[h].events == seen_here[h].events  # once each, in offset order
        assert seen_there[h].reloads == []  # recovered: true, from Redis's history
        async with httpx.AsyncClient(base_url=n1.http, timeout=WAIT) as http:
            node = (await http.get("/stats")).json()
        assert node["resync_closes"] >= 1  # n1 saw the gap and sent its members to recover
        assert await readiness(n1) == 200
        assert "connection lost" in n1.log() and "reconnected after" in n1.log()


async def test_clients_cut_off_from_a_node_are_closed_within_the_idle_timeout(
    hosts: Hosts,
) -> None:
    n1, n2 = hosts.servers["n1"], hosts.servers["n2"]
    room = "presence"
    async with AsyncExitStack() as stack:
        cut_off = [(await client(stack, n1, room))[0].connection_id for _ in range(2)]
        staying, seen = await client(stack, n2, room)  # it pings: never idle
        stay = staying.connection_id

        async def members() -> set[str]:
            async with httpx.AsyncClient(base_url=n2.http, timeout=WAIT) as http:
                entries = (await http.get(f"/rooms/{room}")).json()["presence"]
            return {c["connection_id"] for e in entries for c in e["connections"]}

        assert await until(lambda: _equals(members, {*cut_off, stay}))
        # Clients that ping are never idle: after longer than the timeout, all still there. (No
        # event marks something that does not happen; time has to pass.)
        await asyncio.sleep(IDLE_TIMEOUT + 1.0)
        assert await members() == {*cut_off, stay}
        hosts.to_clients["n1"].cut()  # n1's clients fall silent: half-open sockets on n1
        cut_at = time.monotonic()
        await until(lambda: _equals(members, {stay}), timeout=IDLE_TIMEOUT + 3 * WAIT)
        assert time.monotonic() - cut_at < IDLE_TIMEOUT + 5.0
        hosts.to_clients["n1"].heal()
        node = await until(lambda: _node_stats(n1))
        assert node["closes_by_code"].get("1001", 0) >= 2  # the idle timeout's close code
        await staying.publish(room, "still here")
        assert await seen[room].has("still here", WAIT)


async def _equals(probe: Any, expected: set[str]) -> bool:
    return bool(await probe() == expected)


async def _node_stats(server: Server) -> dict[str, Any] | None:
    with contextlib.suppress(httpx.HTTPError):
        async with httpx.AsyncClient(base_url=server.http, timeout=2) as http:
            return dict((await http.get("/stats")).json())
    return None
