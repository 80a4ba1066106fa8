"""The ASGI sink: runs the server's ``send`` coroutine by hand, a task only if it suspends."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

__all__ = ["ASGISink"]

_log = logging.getLogger("fastapi_rooms")

Send = Callable[[dict[str, Any]], Awaitable[None]]


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiter: Any) -> Generator[Any, Any, None]:
    """Finish a coroutine that was started by hand and suspended on ``waiter``."""
    try:
        yield waiter
    except BaseException:
        coro.close()
        raise
    yield from coro


async def _finish(coro: Coroutine[Any, Any, None], waiter: Any) -> None:
    await _resume(coro, waiter)


class ASGISink:
    """Writes ASGI events through the server's ``send``.

    uvicorn's ``send`` returns without suspending unless the transport is paused, so most
    frames are written with no task at all.
    """

    __slots__ = ("_closer", "_send")

    corks = True

    def __init__(self, send: Send) -> None:
        self._send = send
        self._closer: asyncio.Task[None] | None = None

    def write(self, event: dict[str, Any]) -> asyncio.Future[Any] | None:
        coro = self._send(event)
        try:
            suspended = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return None
        return asyncio.get_running_loop().create_task(_finish(coro, suspended))  # type: ignore[arg-type]

    def abort(self, code: int, reason: str, inflight: asyncio.Future[Any] | None) -> None:
        if inflight is not None:
            inflight.cancel()
        self._closer = asyncio.get_running_loop().create_task(self._send_close(code, reason))

    async def _send_close(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception as exc:  # the peer went away first: nothing left to tell it
            _log.debug("close frame %s not delivered: %r", code, exc)
        finally:
            self._closer = None

    def cancel(self, inflight: asyncio.Future[Any] | None) -> None:
        for task in (inflight, self._closer):
            if task is not None:
                task.cancel()
