"""The RSGI sink: frames go straight to Granian's transport, one in flight per connection."""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import CloseCode

__all__ = ["RSGISink"]


class RSGISink:
    """Writes to Granian's native WebSocket transport.

    Each send resolves on Granian's Rust side; awaiting them one by one would cost a round trip
    per member. The queue starts a send and returns, and the send's completion starts the next
    frame: every member of a room has its frame in flight at once, and no task is made. RSGI
    cannot carry a close code after accept; the handle records it for the app's own receive().
    """

    __slots__ = ("_handle",)

    corks = False

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def write(self, event: dict[str, Any]) -> asyncio.Future[Any] | None:
        if event["type"] == "websocket.close":
            self._handle.close(None, event.get("code", CloseCode.NORMAL))
            return None
        transport = self._handle.transport
        text = event.get("text")
        future: asyncio.Future[Any] = (
            transport.send_str(text) if text is not None else transport.send_bytes(event["bytes"])
        )
        return future

    def abort(self, code: int, reason: str, inflight: asyncio.Future[Any] | None) -> None:
        self._handle.close(None, code)

    def cancel(self, inflight: asyncio.Future[Any] | None) -> None:
        self._handle.close(None)
