#!/usr/bin/env python3
"""One app node of benchmarks/cluster.py: a RoomManager on the backend given, with in-process
members that count what they are sent (no sockets: the backplane is what is measured).

Driven by JSON lines on stdin, answering one JSON line each on stdout:
    {"cmd": "setup", "rooms": [...], "members": M}  -> M members in each room, subscribed
    {"cmd": "run", "publish": [[room, n], ...], "expect": E}
        -> publishes (as fast as the backplane takes them), then waits for E deliveries here
    {"cmd": "quit"}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from fastapi_rooms import RoomManager
from fastapi_rooms.websocket import WebSocket

_WINDOW = 500  # messages published before the node lets its backplane queue drain


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = asyncio.Event()

    async def send(self, message: Any) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def main() -> None:
    url, prefix, node = sys.argv[1], sys.argv[2], sys.argv[3]
    manager = RoomManager(url, prefix=prefix, node_id=node, max_buffer=100_000)
    await manager.start()
    counter = Counter()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout
    backplane = manager.backplane
    assert backplane is not None
    while line := await reader.readline():
        request = json.loads(line)
        if request["cmd"] == "setup":
            for r, room in enumerate(request["rooms"]):
                for m in range(request["members"]):
                    ws = WebSocket(
                        {"type": "websocket", "path": "/b"}, _never, counter.send, accepted=True
                    )
                    cid = f"{node}-{r}-{m}"
                    manager.add_connection(cid, ws)
                    manager.join_room(cid, room)
            await manager.sync(30.0)
            reply: dict[str, Any] = {"ok": True}
        elif request["cmd"] == "run":
            counter.count, counter.target = 0, request["expect"]
            counter.reached.clear()
            before = dict(backplane.stats())
            payload = {"text": "x" * 64}
            start = time.time()
            sent = 0
            for room, n in request["publish"]:
                for _ in range(n):
                    await manager.broadcast_to_room(room, payload)
                    sent += 1
                    if sent % _WINDOW == 0:  # never past max_pending: pace on the queue
                        while backplane.stats()["pending"] > _WINDOW:  # noqa: ASYNC110 - no public event
                            await asyncio.sleep(0.0005)
            published = time.time()
            with contextlib.suppress(TimeoutError):  # reported: delivered < expected
                await asyncio.wait_for(counter.reached.wait(), 120)
            after = backplane.stats()
            reply = {
                "start": start,
                "published": published,
                "done": time.time(),
                "delivered": counter.count,
                "expected": counter.target,
                "dropped": after["publish_dropped"] - before["publish_dropped"],
                "reconnects": after["reconnects"] - before["reconnects"],
            }
        else:
            break
        out.write(json.dumps(reply) + "\n")
        out.flush()
    await manager.stop()


if __name__ == "__main__":
    asyncio.run(main())
