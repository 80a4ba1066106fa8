"""A node that stops hearing Redis notices within a stated bound, says so, and reconnects.

Each case runs a uvicorn node of tests/apps/redis_app.py on a private redis-server (directly,
or through a TCP proxy this test runs) with ``DEAF_AFTER=3``: a node that has heard nothing on
its subscription for 3 s (its own probes, sent every second, included) reconnects. So the
bound from the fault to the node knowing is 3 s + one probe interval; the asserts allow
``SLACK`` more for a loaded CI machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from .conftest import RedisServer, Server, app_for, free_port, running
from .helpers import ADMIN, http, next_event, open_ws, recv_json, stats, until

pytestmark = pytest.mark.anyio

DEAF_AFTER = 3.0
BOUND = DEAF_AFTER + DEAF_AFTER / 3  # no message for DEAF_AFTER, noticed at the next probe
SLACK = 3.0


class Proxy:
    """A TCP proxy to Redis whose open connections can be made to go silent (nothing
    forwarded, nothing closed), as a broken network path or a stuck middlebox would."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._stalls: list[asyncio.Event] = []  # one per connection
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, upstream]
        stall = asyncio.Event()
        self._stalls.append(stall)
        for src, dst in ((reader, upstream), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst, stall))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, stall: asyncio.Event
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await src.read(65536):
                if stall.is_set():
                    await asyncio.Event().wait()  # silent from now on, and still open
                dst.write(data)
                await dst.drain()

    def stall(self) -> None:
        """Connections open now go silent; later ones work."""
        for stall in self._stalls:
            stall.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for writer in self._writers:
            writer.close()


@pytest.fixture
async def proxy(private_redis: RedisServer) -> AsyncIterator[Proxy]:
    proxy = Proxy(private_redis.port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


def node(tmp_path: Path, url: str) -> Any:
    env = {"REDIS_URL": url, "ROOMS_PREFIX": f"deaf-{uuid.uuid4().hex[:6]}",
           "NODE_ID": "deaf-node", "DEAF_AFTER": str(DEAF_AFTER)}  # fmt: skip
    return running("uvicorn", app_for("redis_app", "uvicorn"), tmp_path, env)


async def connected(server: Server) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        backend = await stats(server)
        return backend if backend["connected"] and backend["in_sync"] else None

    return dict(await until(probe, what="the node connected to Redis"))


async def noticed(server: Server, before: dict[str, Any], t0: float) -> float:
    """Seconds from ``t0`` until the node's backend stats show it lost the connection."""

    async def probe() -> bool:
        backend = await stats(server)
        return backend["reconnects"] > before["reconnects"] or not backend["connected"]

    await until(probe, timeout=BOUND + 2 * SLACK, what="the node noticed")
    return time.monotonic() - t0


async def delivered_again(server: Server) -> None:
    """After reconnecting, a REST broadcast reaches a member again (the subscription works)."""
    await connected(server)
    async with open_ws(server, "/ws") as ws:
        await recv_json(ws)
        await ws.send('{"type": "join", "room": "after"}')
        await next_event(ws, "joined")
        async with http(server, headers=ADMIN) as rest:
            await rest.post("/rooms/after/broadcast", json={"message": {"type": "x"}})
        assert (await next_event(ws, "x"))["type"] == "x"


async def test_a_silent_network_path_is_noticed_within_the_bound(
    proxy: Proxy, tmp_path: Path
) -> None:
    with node(tmp_path, f"redis://127.0.0.1:{proxy.port}/0") as server:
        before = await connected(server)
        t0 = time.monotonic()
        proxy.stall()  # both of the node's connections go silent; nothing is closed
        assert await noticed(server, before, t0) <= BOUND + SLACK
        await delivered_again(server)  # new connections through the proxy work
        log = server.log()
        assert "deaf" in log or "not confirmed" in log or "failed" in log, log[-2000:]


async def test_a_killed_subscriber_is_noticed_at_once(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    with node(tmp_path, private_redis.url) as server:
        before = await connected(server)
        client = aioredis.Redis.from_url(private_redis.url)
        try:
            t0 = time.monotonic()
            assert await client.client_kill_filter(_type="pubsub") >= 1
        finally:
            await client.aclose()
        assert await noticed(server, before, t0) <= BOUND + SLACK
        await delivered_again(server)


async def test_a_subscriber_over_its_output_buffer_limit_is_noticed(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    with node(tmp_path, private_redis.url) as server:
        before = await connected(server)
        client = aioredis.Redis.from_url(private_redis.url)
        try:
            await client.config_set("client-output-buffer-limit", "pubsub 1024 1024 0")
            channels = await client.pubsub_channels("deaf-*:all")
            assert channels, "the node's broadcast channel"
            t0 = time.monotonic()
            await client.publish(channels[0], b"x" * 100_000)  # over the 1 KiB hard limit
        finally:
            await client.aclose()
        assert await noticed(server, before, t0) <= BOUND + SLACK
        restore = aioredis.Redis.from_url(private_redis.url)
        try:
            await restore.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")
        finally:
            await restore.aclose()
        await delivered_again(server)


async def test_a_paused_redis_is_noticed_within_the_bound(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    with node(tmp_path, private_redis.url) as server:
        before = await connected(server)
        client = aioredis.Redis.from_url(private_redis.url)
        try:
            t0 = time.monotonic()
            await client.execute_command("CLIENT", "PAUSE", 8000, "ALL")
            assert await noticed(server, before, t0) <= BOUND + SLACK
            await client.execute_command("CLIENT", "UNPAUSE")
        finally:
            await client.aclose()
        await delivered_again(server)
