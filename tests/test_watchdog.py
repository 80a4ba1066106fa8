"""A node that stops hearing Redis notices within a stated bound, says so, and reconnects.

Each case runs a uvicorn node of tests/apps/redis_app.py on a private redis-server (directly,
or through a TCP proxy this test runs) with ``DEAF_AFTER=3``: a node that has heard nothing on
its subscription for 3 s after Redis accepted one of its own probes (sent every second)
reconnects. So the bound from the fault to the node knowing is 3 s + two probe intervals;
the asserts allow ``SLACK`` more for a loaded CI machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from fastapi_rooms import RoomManager
from fastapi_rooms.backends import MemoryBackend

from .conftest import RedisServer, Server, app_for, free_port, running
from .helpers import ADMIN, WAIT, http, next_event, open_ws, recv_json, stats, until

pytestmark = pytest.mark.anyio

DEAF_AFTER = 3.0
# the first probe after the silence began (a probe interval), DEAF_AFTER unanswered, then
# the next pass (another interval)
BOUND = DEAF_AFTER + 2 * DEAF_AFTER / 3
SLACK = 3.0


class Proxy:
    """A TCP proxy to Redis, on its own thread and loop (a test's blocking waits do not stall
    it), whose open connections can be made to go silent: nothing forwarded, nothing closed,
    as a broken network path or a stuck middlebox would."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self._stalls: list[asyncio.Event] = []  # one per connection
        self._subscribers: list[asyncio.Event] = []  # those of connections that SUBSCRIBEd
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Future[None]] = set()

    def start(self) -> None:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", self.port), self._loop
        ).result(10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target)
        stall = asyncio.Event()
        self._stalls.append(stall)
        for src, dst, watch in ((reader, upstream, True), (upstream_reader, writer, False)):
            pump = asyncio.ensure_future(self._pump(src, dst, stall, watch))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        stall: asyncio.Event,
        watch: bool,
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await src.read(65536):
                if watch and b"SUBSCRIBE" in data.upper() and stall not in self._subscribers:
                    self._subscribers.append(stall)  # the pub/sub connection
                if stall.is_set():
                    await asyncio.Event().wait()  # silent from now on, and still open
                dst.write(data)
                await dst.drain()

    def stall(self, subscribers_only: bool = False) -> None:
        """Connections open now (or only the pub/sub ones) go silent; later ones work."""

        def stall_now() -> None:
            for stall in self._subscribers if subscribers_only else self._stalls:
                stall.set()

        self._loop.call_soon_threadsafe(stall_now)

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)


@pytest.fixture
def proxy(private_redis: RedisServer) -> Iterator[Proxy]:
    proxy = Proxy(private_redis.port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


@contextlib.asynccontextmanager
async def redis_at(url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


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
    elapsed = time.monotonic() - t0
    print(f"noticed after {elapsed:.2f}s")  # shown with -s: the numbers docs/operations.md quotes
    return elapsed


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


async def test_a_silent_subscriber_while_commands_work_is_noticed_within_the_bound(
    proxy: Proxy, tmp_path: Path
) -> None:
    """python-socketio#1581's failure: the subscriber hears nothing, every command still
    works, nothing else would ever notice. The node's own probes do not come back."""
    with node(tmp_path, f"redis://127.0.0.1:{proxy.port}/0") as server:
        before = await connected(server)
        t0 = time.monotonic()
        proxy.stall(subscribers_only=True)
        elapsed = await noticed(server, before, t0)
        assert DEAF_AFTER - 0.5 <= elapsed <= BOUND + SLACK  # the probes, not an error
        await delivered_again(server)
        assert (await stats(server))["deaf_events"] == 1
        assert "deaf: nothing arrived on the subscription" in server.log()


async def test_a_killed_subscriber_is_noticed_at_once(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    with node(tmp_path, private_redis.url) as server:
        before = await connected(server)
        async with redis_at(private_redis.url) as client:
            t0 = time.monotonic()
            assert await client.client_kill_filter(_type="pubsub") >= 1
        assert await noticed(server, before, t0) <= BOUND + SLACK
        await delivered_again(server)


async def test_a_subscriber_over_its_output_buffer_limit_is_noticed(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    with node(tmp_path, private_redis.url) as server:
        before = await connected(server)
        async with redis_at(private_redis.url) as client:
            await client.config_set("client-output-buffer-limit", "pubsub 1024 1024 0")
            channels = await client.pubsub_channels("deaf-*:all")
            assert channels, "the node's broadcast channel"
            t0 = time.monotonic()
            await client.publish(channels[0], b"x" * 100_000)  # over the 1 KiB hard limit
        assert await noticed(server, before, t0) <= BOUND + SLACK
        async with redis_at(private_redis.url) as restore:
            await restore.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")
        await delivered_again(server)


async def test_a_paused_redis_is_noticed_within_the_bound(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    with node(tmp_path, private_redis.url) as server:
        before = await connected(server)
        async with redis_at(private_redis.url) as client:
            t0 = time.monotonic()
            # every client's commands wait (UNPAUSE too): it ends by itself after 7.5 s
            await client.execute_command("CLIENT", "PAUSE", 7500, "ALL")
            assert await noticed(server, before, t0) <= BOUND + SLACK
        await delivered_again(server)


@pytest.mark.parametrize("kind", ["uvicorn", "granian-rsgi"])
async def test_readiness_follows_the_backend_and_liveness_stays(
    kind: str, private_redis: RedisServer, tmp_path: Path
) -> None:
    env = {"REDIS_URL": private_redis.url, "ROOMS_PREFIX": f"ready-{uuid.uuid4().hex[:6]}",
           "DEAF_AFTER": str(DEAF_AFTER)}  # fmt: skip
    with running(kind, app_for("redis_app", kind), tmp_path, env) as server:
        async with http(server) as anonymous:  # probes carry no credentials

            async def status(path: str) -> tuple[int, dict[str, Any]]:
                response = await anonymous.get(path)
                return response.status_code, response.json()

            assert await status("/livez") == (200, {"status": "alive"})
            await connected(server)
            assert await status("/readyz") == (200, {"status": "ready"})
            private_redis.kill()

            async def not_ready() -> bool:
                return await status("/readyz") == (503, {"status": "not_ready"})  # no detail

            await until(not_ready, what="readiness failing with Redis gone")
            assert await status("/livez") == (200, {"status": "alive"})
            private_redis.start()

            async def ready() -> bool:
                return (await status("/readyz"))[0] == 200

            await until(ready, what="ready again")
        assert "readiness probe: not ready (backend not connected" in server.log()


async def test_a_busy_process_is_not_taken_for_a_deaf_backend() -> None:
    """A loop blocked longer than deaf_after (a long fan-out, a GC pause) is not deafness:
    what Redis sent meanwhile is read on the next pass."""
    manager = RoomManager(MemoryBackend(), deaf_after=0.6)
    await manager.start()
    backplane = manager.backplane
    assert backplane is not None
    try:

        async def probes(n: int) -> None:
            while backplane.probes < n:  # noqa: ASYNC110 - a counter, no event to wait on
                await asyncio.sleep(0.01)

        await asyncio.wait_for(probes(2), WAIT)
        time.sleep(1.5)  # noqa: ASYNC251 - blocks the loop on purpose: 2.5x deaf_after
        await asyncio.wait_for(probes(backplane.probes + 4), WAIT)
        assert backplane.deaf_events == 0 and backplane.connected and backplane.reconnects == 0
    finally:
        await manager.stop()


class _Shards(MemoryBackend):
    """Two probe channels, as a cluster of two masters would have; one can be silenced."""

    def __init__(self) -> None:
        super().__init__()
        self.silent: str | None = None

    def probe_channels(self, node: str) -> list[str]:
        return [f"probe:a:{node}", f"probe:b:{node}"]

    async def listen(self) -> AsyncIterator[tuple[str, bytes | None]]:
        async for channel, payload in super().listen():
            if channel != self.silent:
                yield channel, payload


async def test_one_silent_shard_is_noticed_while_the_others_speak() -> None:
    """With a probe channel per backend connection (one per cluster master), traffic on the
    others does not hide a silent one."""
    backend = _Shards()
    manager = RoomManager(backend, deaf_after=0.6)
    await manager.start()
    backplane = manager.backplane
    assert backplane is not None
    try:
        assert backplane.stats()["channels"] >= 2
        backend.silent = f"probe:b:{manager.node_id}"

        async def deaf() -> None:
            while backplane.deaf_events == 0:  # noqa: ASYNC110 - a counter, no event to wait on
                await asyncio.sleep(0.01)

        started = time.monotonic()
        await asyncio.wait_for(deaf(), WAIT)
        assert time.monotonic() - started < 0.6 + 2 * 0.6 / 3 + 1.0  # the bound, and slack
        backend.silent = None
        await asyncio.wait_for(backplane.ready.wait(), WAIT)  # reconnected
    finally:
        await manager.stop()
