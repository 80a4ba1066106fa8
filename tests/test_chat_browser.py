"""The chat example in headless Chromium: two pages chat; one loses its connection while the
other keeps sending; after the reconnect it shows every message once, in order, and says it
recovered. The page uses the JavaScript client the rooms router serves (/api/client.js)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

WAIT_MS = 15_000


@pytest.fixture
def chat(serve: Callable[..., Any]) -> Any:
    return serve("uvicorn", "examples.chat.app:app", {"PYTHONPATH": str(ROOT)})


def test_a_page_that_lost_its_connection_misses_nothing(
    chat: Any, chromium: str, tmp_path: Path
) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    room = f"lobby-{uuid.uuid4().hex[:6]}"
    errors: list[str] = []

    def open_page(browser: Any, name: str) -> Page:
        page: Page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(chat.http + "/", timeout=WAIT_MS)
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
            alice = open_page(browser, "alice")
            bob = open_page(browser, "bob")
            for n in range(3):
                say(bob, f"message {n}")
            expect(alice.locator("#log")).to_contain_text("message 2", timeout=WAIT_MS)
            # alice's connection drops; she stays away until the test brings her back
            alice.evaluate(
                "() => { const c = window.chat.client; c._delay = () => 2 ** 31 - 1;"
                " c._socket.close(); }"
            )
            expect(alice.locator("#status")).to_contain_text("disconnected", timeout=WAIT_MS)
            for n in range(3, 8):
                say(bob, f"message {n}")
            expect(bob.locator("#log")).to_contain_text("message 7", timeout=WAIT_MS)
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
