#!/usr/bin/env python3
"""Where the memory of an idle connection goes: tracemalloc in a uvicorn server process.

    .venv/bin/python benchmarks/memprofile.py                 # rooms' ready endpoint, 500 conns
    .venv/bin/python benchmarks/memprofile.py --app bare      # the bare Starlette app of S4
    .venv/bin/python benchmarks/memprofile.py --app gobstopper  # S8's Gobstopper-style handler
    .venv/bin/python benchmarks/memprofile.py --n 1000 --top 30

The server (this file with ``--serve``) runs S4's app (``scenarios_apps2.py``) on uvicorn with
tracemalloc on. The client opens a few warm-up connections, has the server take a snapshot,
opens ``--n`` more (each joins a room on the ready endpoint) and has it take another; the server
prints the difference per source line, in bytes per connection. tracemalloc sees Python's
allocations only (not the kernel's socket buffers, nor pymalloc's unused space), so the total is
below S4's RSS figure; use it to find what to cut, and S4 to measure the result. Loopback only;
the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
APPS = {
    "rooms": ("make_rooms_app", "/ws"),
    "bare": ("make_bare_app", "/idle"),
    "fastapi": ("make_fastapi_app", "/idle"),
    "gobstopper": ("s8_apps.make_gobstopper", "/members/{i}"),  # a Gobstopper-style handler
}


def _profiled(app: Any, top: int) -> Any:
    """Wrap ``app``: ``GET /__snapshot/before`` and ``/__snapshot/after?n=N`` drive tracemalloc."""
    state: dict[str, tracemalloc.Snapshot] = {}
    tracked_before = [0]

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/__snapshot/"):
            await app(scope, receive, send)
            return
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        body = b"ok"
        tracked = len(gc.get_objects())
        if path.endswith("/before"):
            state["before"] = snap
            tracked_before[0] = tracked
        else:
            n = int(scope["query_string"].decode().split("=")[1])
            diff = snap.compare_to(state["before"], "lineno")
            total = sum(d.size_diff for d in diff)
            objects = (tracked - tracked_before[0]) / n
            lines = [
                f"total {total / n:8.0f} B/conn over {n} connections; "
                f"{objects:.1f} more objects tracked by the garbage collector per conn"
            ]
            for d in diff[:top]:
                frame = d.traceback[0]
                where = f"{Path(frame.filename).parent.name}/{Path(frame.filename).name}"
                lines.append(f"{d.size_diff / n:8.0f} B {d.count_diff / n:6.2f} blocks  "
                             f"{where}:{frame.lineno}")  # fmt: skip
            body = "\n".join(lines).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    return wrapped


def serve(port: int, app_name: str, top: int) -> None:
    import uvicorn

    sys.path.insert(0, str(HERE))
    import s8_apps
    import scenarios_apps2

    tracemalloc.start(1)
    module, _, factory = APPS[app_name][0].rpartition(".")
    app = _profiled(getattr(s8_apps if module else scenarios_apps2, factory)(), top)
    uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                ws="websockets-sansio", log_level="warning")  # fmt: skip


async def _open(url: str, n: int, join: bool, first: int = 0) -> list[Any]:
    from websockets.asyncio.client import connect

    async def one(i: int) -> Any:
        ws = await connect(url.format(i=i), compression=None, open_timeout=30)
        if "{i}" in url:  # the Gobstopper-style handler says "joined" once it has joined
            assert await asyncio.wait_for(ws.recv(), 30) == "joined"
        elif join:
            await ws.send(json.dumps({"type": "join", "room": f"idle-{i % 100}"}))
            while '"joined"' not in str(await asyncio.wait_for(ws.recv(), 30)):
                pass
        return ws

    conns: list[Any] = []
    for start in range(0, n, 100):
        conns += await asyncio.gather(
            *(one(first + i) for i in range(start, min(n, start + 100)))
        )
    return conns


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
        return str(r.read().decode())


async def client(port: int, app_name: str, n: int) -> None:
    url = f"ws://127.0.0.1:{port}{APPS[app_name][1]}"
    join = app_name == "rooms"
    warm = await _open(url, 20, join, first=10**6)  # ids apart from the measured ones
    _get(port, "/__snapshot/before")
    conns = await _open(url, n, join)
    print(f"{app_name}: {n} idle connections ({'each joined a room' if join else 'bare'})")
    print(_get(port, f"/__snapshot/after?n={n}"))
    for ws in conns + warm:
        await ws.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--app", choices=sorted(APPS), default="rooms")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.app, args.top)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, __file__, "--serve", str(port), "--app", args.app]
    cmd += ["--top", str(args.top)]
    server = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start") from None
                time.sleep(0.05)  # polling the listening socket: there is no other signal
        asyncio.run(client(port, args.app, args.n))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
