#!/usr/bin/env python3
"""Connection churn in one process: the time to register N connections (each in one of 100
rooms) and then remove them all, through RoomManager.add_connection/join_room/remove_connection.

    .venv/bin/python benchmarks/churn.py            # N = 1000 and 10000, 5 repeats, median
    .venv/bin/python benchmarks/churn.py --n 100 --repeat 1     # smoke run

No server, no sockets: the manager's own bookkeeping, which every close goes through.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from fastapi_rooms import RoomManager
from fastapi_rooms.websocket import WebSocket


async def _receive() -> dict[str, Any]:
    return {"type": "websocket.receive", "text": ""}


async def _send(message: Any) -> None:
    return None


async def churn(n: int) -> tuple[float, float]:
    """Seconds to add (and join) n connections, and to remove them all."""
    manager = RoomManager()
    sockets = [
        WebSocket({"type": "websocket", "path": "/t"}, _receive, _send, accepted=True)
        for _ in range(n)
    ]
    t0 = time.perf_counter()
    for i, ws in enumerate(sockets):
        manager.add_connection(f"c{i}", ws)
        manager.join_room(f"c{i}", f"r{i % 100}")
    t1 = time.perf_counter()
    for i in range(n):
        manager.remove_connection(f"c{i}")
    return t1 - t0, time.perf_counter() - t1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1000,10000", help="connections, a comma list")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    for n in (int(x) for x in args.n.split(",")):
        runs = [asyncio.run(churn(n)) for _ in range(args.repeat)]
        add = statistics.median(r[0] for r in runs) * 1e6 / n
        remove = statistics.median(r[1] for r in runs) * 1e6 / n
        print(f"N={n}: add+join {add:.2f} us, remove {remove:.2f} us per connection "
              f"(median of {args.repeat})")  # fmt: skip


if __name__ == "__main__":
    main()
