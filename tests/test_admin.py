"""The admin page (opt-in, behind the REST guard): its live WebSocket of snapshots on both
servers, and the page itself in headless Chromium, with a hostile room name shown as text."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .conftest import Server, server_fixture
from .helpers import WAIT, http, next_event, open_ws, recv_json

pytestmark = pytest.mark.anyio

server = server_fixture("admin_app", "admin")
HOSTILE = '<img src=x onerror="document.title=1">'


async def member(stack: Any, server: Server, *rooms: str) -> Any:
    # max_queue=None: members that never read still close at once (see test_history)
    ws = await stack.enter_async_context(open_ws(server, "/ws", max_queue=None))
    await recv_json(ws)
    for room in rooms:
        await ws.send(json.dumps({"type": "join", "room": room}))
        await next_event(ws, "joined")
    return ws


async def test_the_live_snapshot_and_its_guard(server: Server) -> None:
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        a = await member(stack, server, "lobby", "kitchen")
        await member(stack, server, "lobby")
        await a.send(json.dumps({"type": "publish", "room": "lobby", "data": "hi"}))
        async with open_ws(server, "/admin/live?token=t") as live:
            snap = json.loads(await live.recv())
            snap = json.loads(await live.recv())  # the next one, a second later
        assert snap["connections"] == 2 and snap["rooms"] == 2 and snap["members"] == 3
        assert snap["ready"] == "ready" and snap["backend"]["type"] == "local"
        assert snap["top_rooms"][0] == {
            "room": "lobby", "members_here": 2, "members": 2, "users": 0, "nodes": [snap["node"]]
        }  # fmt: skip
        assert snap["delivered"] >= 2 and snap["published"] >= 1
    async with http(server) as anonymous:
        assert (await anonymous.get("/admin")).status_code == 401
        assert (await anonymous.get("/admin?token=t")).status_code == 200
    with pytest.raises((InvalidStatus, ConnectionClosed)):  # refused, or closed with 1008
        async with open_ws(server, "/admin/live") as refused:
            await refused.recv()


def test_the_page_in_chromium(server: Server, chromium: str, tmp_path: Path) -> None:
    import asyncio
    from contextlib import AsyncExitStack

    from playwright.sync_api import expect, sync_playwright

    async def traffic(ready: Any, stop: Any) -> None:
        async with AsyncExitStack() as stack:
            a = await member(stack, server, "lobby", HOSTILE)
            for _ in range(3):
                await member(stack, server, "lobby")
            ready.set()
            n = 0
            while not stop.is_set():
                await a.send(json.dumps({"type": "publish", "room": "lobby", "data": n}))
                n += 1
                await asyncio.sleep(0.02)  # a steady rate for the chart to draw

    import threading

    loop = asyncio.new_event_loop()
    ready, stop = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: loop.run_until_complete(traffic(ready, stop)))
    worker.start()
    errors: list[str] = []
    try:
        assert ready.wait(WAIT)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 760})
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(server.http + "/admin?token=t", timeout=WAIT * 1000)
                expect(page.locator("#status")).to_have_text("live", timeout=WAIT * 1000)
                expect(page.locator("#rooms-body")).to_contain_text("lobby", timeout=WAIT * 1000)
                expect(page.locator("#connections")).to_have_text("4", timeout=WAIT * 1000)
                expect(page.locator("#rooms-body")).to_contain_text(HOSTILE)  # as text
                assert page.locator("#rooms-body img").count() == 0
                page.wait_for_function(
                    "() => Number(document.getElementById('delivered-rate').textContent) > 0",
                    timeout=WAIT * 1000,
                )
                page.wait_for_function(  # four rates on the chart: a line to look at
                    "() => Number(document.getElementById('chart').dataset.points) >= 4",
                    timeout=WAIT * 1000,
                )
                inked = page.evaluate(
                    "() => { const c = document.getElementById('chart');"
                    " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                    " let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; }"
                )
                assert inked > 100, inked
                assert page.title() == "fastapi-rooms admin"  # the hostile name ran nothing
                shot = Path(os.environ.get("ADMIN_SCREENSHOT") or tmp_path / "admin.png")
                page.screenshot(path=str(shot))
            finally:
                browser.close()
    finally:
        stop.set()
        worker.join(2 * WAIT)
        if not worker.is_alive():
            loop.close()
    assert errors == []
