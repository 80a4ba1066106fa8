"""The chat example in headless Chromium: two pages chat; one loses its connection (its socket
drops, or, on Redis, its server restarts) while the other keeps sending; after the reconnect it
shows every message once, in order, and says it recovered. The page uses the JavaScript client
the rooms router serves (/api/client.js)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, running, start_server

WAIT_MS = 15_000


@pytest.fixture
def chat(serve: Callable[..., Any]) -> Any:
    return serve("uvicorn", "examples.chat.app:app", {"PYTHONPATH": str(ROOT)})


def test_a_page_that_lost_its_connection_misses_nothing(
    chat: Any, chromium: str, tmp_path: Path
) -> None:
    def drop(page: Any) -> None:  # the socket drops; the page stays away until brought back
        page.evaluate("() => window.chat.client._socket.close()")

    chat_scenario(chromium, tmp_path, chat, chat, drop, lambda: None)


def test_a_page_whose_server_restarted_recovers_from_redis(
    chromium: str, tmp_path: Path, redis_url: str
) -> None:
    """The multi-worker chat (Redis keeps the history): alice's server stops and comes back on
    the same port while bob, on another server, keeps sending."""
    env = {"PYTHONPATH": str(ROOT), "REDIS_URL": redis_url,
           "ROOMS_PREFIX": f"chat-{uuid.uuid4().hex[:8]}", "CHAT_ADMIN_TOKEN": "t"}  # fmt: skip
    app = "examples.multiworker.app:app"
    with ExitStack() as stack:
        first = start_server("uvicorn", app, tmp_path, env)
        stack.callback(lambda: servers[-1].stop())
        servers = [first]
        second = stack.enter_context(running("uvicorn", app, tmp_path, env))

        def restart() -> None:
            servers.append(start_server("uvicorn", app, tmp_path, env, port=first.port))

        chat_scenario(chromium, tmp_path, first, second, lambda page: first.stop(), restart)
        assert "reconnected after" not in second.log()  # Redis stayed up throughout


def chat_scenario(
    chromium: str,
    tmp_path: Path,
    alices: Any,
    bobs: Any,
    drop: Callable[[Any], None],
    restore: Callable[[], None],
) -> None:
    """alice (on server ``alices``) and bob (on ``bobs``) chat; ``drop(alice's page)`` cuts
    her off while bob sends, ``restore()`` lets her back; she must show every message once,
    in order, and say she recovered."""
    from playwright.sync_api import Page, expect, sync_playwright

    room = f"lobby-{uuid.uuid4().hex[:6]}"
    errors: list[str] = []

    def open_page(browser: Any, server: Any, name: str) -> Page:
        page: Page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.http + "/", timeout=WAIT_MS)
        expect(page.locator("#status")).to_contain_text("connected as", timeout=WAIT_MS)
        page.fill("#name", name)
        page.fill("#room", room)
        page.click("#join-form button[type=submit]")
        expect(page.locator("#joined")).to_contain_text(f"#{room}", timeout=WAIT_MS)
        return page

    def say(page: Page, text: str) -> None:
        page.fill("#text", text)
        page.click("#send")

    def lines(page: Page) -> list[str]:
        return [t for t in page.locator("#log li").all_inner_texts() if "bob" in t and ":" in t]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            alice = open_page(browser, alices, "alice")
            bob = open_page(browser, bobs, "bob")
            for n in range(3):
                say(bob, f"message {n}")
            expect(alice.locator("#log")).to_contain_text("message 2", timeout=WAIT_MS)
            # she stays away (no reconnect attempt) until the test brings her back
            alice.evaluate("() => { window.chat.client._delay = () => 2 ** 31 - 1; }")
            drop(alice)
            expect(alice.locator("#status")).to_contain_text("disconnected", timeout=WAIT_MS)
            for n in range(3, 8):
                say(bob, f"message {n}")
            expect(bob.locator("#log")).to_contain_text("message 7", timeout=WAIT_MS)
            restore()
            alice.evaluate(
                "() => { const c = window.chat.client; clearTimeout(c._timer); c._open(); }"
            )
            expect(alice.locator("#status")).to_contain_text(
                "reconnected (1): nothing missed", timeout=WAIT_MS
            )
            for n in range(8, 10):
                say(bob, f"message {n}")
            expect(alice.locator("#log")).to_contain_text("message 9", timeout=WAIT_MS)
            assert lines(alice) == [f"#{room}bob:message {n}" for n in range(10)], lines(alice)
            shot = Path(os.environ.get("CHAT_SCREENSHOT") or tmp_path / "chat.png")
            alice.screenshot(path=str(shot))
        finally:
            browser.close()
    assert errors == []
