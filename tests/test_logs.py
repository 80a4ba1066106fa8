"""Log records carry node (and room, connection id where they apply), and docs/logs.md lists
every WARNING and ERROR message the library can log."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from fastapi_rooms import RoomManager

from .test_manager import connect, next_pass

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def logged_messages() -> list[tuple[str, str]]:
    """(level, message) of every WARNING or ERROR call in the library's source."""
    found = []
    for path in sorted((ROOT / "fastapi_rooms").rglob("*.py")):
        for m in re.finditer(
            r'_log\.(warning|error|exception|critical)\(\s*((?:"(?:[^"\\]|\\.)*"\s*)+)',
            path.read_text(),
        ):
            text = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2)))
            found.append((m.group(1), text))
    return found


def test_every_warning_and_error_is_documented() -> None:
    page = (ROOT / "docs" / "logs.md").read_text()
    messages = logged_messages()
    assert len(messages) >= 50
    missing = [text for _, text in messages if f"`{text}`" not in page]
    assert missing == [], f"add these to docs/logs.md: {missing}"


async def test_records_carry_node_and_connection(caplog: pytest.LogCaptureFixture) -> None:
    manager = RoomManager(node_id="node-7", max_buffer=1)
    ws, peer = connect(manager, "slow")
    manager.join_room("slow", "r")
    peer.writable.clear()  # it stops reading
    with caplog.at_level(logging.WARNING, logger="fastapi_rooms"):
        for n in range(4):
            await manager.broadcast_to_room("r", f"m{n}")
            await next_pass()
    [record] = [r for r in caplog.records if "outbound buffer overflowed" in r.getMessage()]
    assert (record.node, record.connection_id, record.room) == ("node-7", "slow", None)  # type: ignore[attr-defined]
    assert ws.closed


def test_every_record_of_the_library_has_the_fields(caplog: pytest.LogCaptureFixture) -> None:
    from fastapi_rooms.logs import current_node

    token = current_node.set("node-9")  # as the rooms router does for a handler
    try:
        with caplog.at_level(logging.WARNING, logger="fastapi_rooms"):
            logging.getLogger("fastapi_rooms").warning("from a layer without a manager")
    finally:
        current_node.reset(token)
    [record] = caplog.records
    assert (record.node, record.room, record.connection_id) == ("node-9", None, None)  # type: ignore[attr-defined]
