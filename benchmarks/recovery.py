#!/usr/bin/env python3
"""Recovery benchmark: the time for a rejoining client to receive N messages it missed.

    .venv/bin/python benchmarks/recovery.py              # N=1000, 7 rounds
    .venv/bin/python benchmarks/recovery.py --n 500 --rounds 3
    .venv/bin/python benchmarks/recovery.py --redis redis://127.0.0.1:6379/0  # across nodes

One uvicorn process serves ``fanout_apps:rooms_history_app`` (the room keeps its last 1000
messages). Each round a publisher sends N messages to the room while no one else is in it;
then a client joins with ``since`` its last position and the time runs from sending that join
until the N-th replayed message arrived. The baseline, in the same round on the same server:
the same client already in the room while the publisher sends N more messages, timed from the
first to the last it receives (live delivery of N messages to one member). Reported: medians
and the ratio replay / live. Loopback only; the server is stopped by PID however the run ends.

With ``--redis``, two uvicorn processes of ``fanout_apps:make_rooms_redis_history_app`` share
the room through Redis, which keeps its history: the publisher is on the first, and the client
rejoins (and is measured) on the second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROOM = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def recv(ws: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 30)))


async def join(ws: ClientConnection, since: dict[str, Any] | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"type": "join", "room": ROOM}
    if since is not None:
        request["since"] = since
    await ws.send(json.dumps(request))
    while (event := await recv(ws))["type"] != "joined":
        pass
    return event


async def publish_all(publisher: ClientConnection, n: int) -> int:
    """Send n publishes; return the last offset, once the publisher got its own copy of it."""
    for i in range(n):
        await publisher.send(json.dumps({"type": "publish", "room": ROOM, "data": i}))
    last = 0
    for _ in range(n):
        last = (await recv(publisher))["offset"]
    return last


async def measure(base: str, n: int, rounds: int, other: str | None = None) -> dict[str, Any]:
    """``other``: the server the client rejoins on (default ``base``, the publisher's)."""
    replay_ms: list[float] = []
    live_ms: list[float] = []
    other = other or base
    async with connect(f"{base}/ws", max_queue=None) as publisher:
        await recv(publisher)  # welcome
        position = await join(publisher)
        epoch, offset = position["epoch"], position["offset"]
        for _ in range(rounds):
            # missed: published while the client is away
            await publish_all(publisher, n)
            async with connect(f"{other}/ws", max_size=None, max_queue=None) as client:
                await recv(client)
                t0 = time.perf_counter()
                joined = await join(client, {"offset": offset, "epoch": epoch})
                assert joined["recovered"] is True, joined
                for _ in range(n):
                    await recv(client)
                replay_ms.append((time.perf_counter() - t0) * 1000)
                # live: the same client in the room, the same number of messages
                sent = asyncio.create_task(publish_all(publisher, n))
                first = await recv(client)
                t1 = time.perf_counter()
                for _ in range(n - 1):
                    last = await recv(client)
                live_ms.append((time.perf_counter() - t1) * 1000)
                offset = await sent
                assert last["offset"] == offset
                assert first["offset"] == offset - n + 1
    replay, live = statistics.median(replay_ms), statistics.median(live_ms)
    return {
        "n": n,
        "rounds": rounds,
        "replay_ms": replay_ms,
        "live_ms": live_ms,
        "replay_median_ms": replay,
        "live_median_ms": live,
        "replay_over_live": replay / live if live else None,
    }


def wait_for(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="missed messages (at most 1000)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--redis", help="Redis URL: two processes, history kept in Redis")
    args = parser.parse_args()
    if not 1 <= args.n <= 1000:
        parser.error(f"--n must be 1 to 1000 (the room keeps 1000), got {args.n}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    app = ["fanout_apps:rooms_history_app"]
    if args.redis:
        prefix = f"frrecovery-{os.getpid()}-{int(time.time())}"
        env.update(FANOUT_REDIS_URL=args.redis, FANOUT_REDIS_PREFIX=prefix)
        app = ["--factory", "fanout_apps:make_rooms_redis_history_app"]
    ports = [free_port() for _ in range(2 if args.redis else 1)]
    servers = []
    try:
        for port in ports:
            servers.append(subprocess.Popen(
                [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port",
                 str(port), "--log-level", "warning"],
                env=env, cwd=HERE,
            ))  # fmt: skip
        for port, server in zip(ports, servers, strict=True):
            wait_for(port, server)
        bases = [f"ws://127.0.0.1:{port}" for port in ports]
        result = asyncio.run(measure(bases[0], args.n, args.rounds, bases[-1]))
        result["servers"] = len(servers)
        result["backend"] = "redis" if args.redis else "in-process"
    finally:
        for server in servers:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if args.redis:  # the room's history, kept (with a TTL) on purpose: this run's only
            import redis

            client = redis.Redis.from_url(args.redis)
            keys = client.keys(f"{prefix}*")
            if keys:
                client.delete(*keys)
            client.close()
    where = "on another node, history in Redis" if args.redis else "in one process"
    print(
        f"recovery ({where}) of {result['n']} missed messages, {result['rounds']} rounds: replay "
        f"{result['replay_median_ms']:.1f} ms (median; {min(result['replay_ms']):.1f}-"
        f"{max(result['replay_ms']):.1f}), live delivery of as many {result['live_median_ms']:.1f}"
        f" ms; replay / live {result['replay_over_live']:.2f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
