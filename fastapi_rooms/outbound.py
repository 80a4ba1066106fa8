"""Per-connection bounded outbound buffer with one writer and a slow-consumer policy.

A broadcast must never wait on its slowest member. ``offer()`` runs the server's ``send``
coroutine by hand: when the socket takes the frame at once (the common case on uvicorn, whose
``send`` only suspends while the transport is paused) the frame is out and no task was made.
When ``send`` would suspend, the half-run coroutine goes to a writer task, and later frames wait
in a bounded queue behind it, so frames to one connection keep their order. A queue that stays
full triggers the overflow policy: drop the frame, or close the connection (default).

Corking: the first frame a connection gets in a pass of the event loop goes out at once; more
frames for it in the same pass (a burst of broadcasts) wait, up to 256 frames or 64 KiB, and
then go out back to back (at the end of the pass, or when the cork is full). Consecutive writes
to one socket are cheaper for the kernel (TCP autocorking) and for the client (one read takes
many frames) than writes spread over every member. Corked frames are not subject to the buffer
limit: a full cork is written, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import types
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Literal

from .message import ConnectionClosed

__all__ = ["Outbound", "Overflow", "SLOW_CONSUMER_CLOSE_CODE"]

Overflow = Literal["close", "drop"]
Event = dict[str, Any]
Send = Callable[[Event], Awaitable[None]]

#: Close code for a connection closed because its outbound buffer overflowed (Try Again Later).
SLOW_CONSUMER_CLOSE_CODE = 1013

# A cork holds at most this many frames or bytes, then they are written and a new cork starts:
# batches keep the cheap back-to-back writes, and a long burst still reaches every member in
# turn, so each client reads while the others are written (one unbounded cork per pass would
# put a whole burst into one socket at once and overflow clients that keep up).
_CORK_FRAMES = 256
_CORK_BYTES = 64 * 1024


def _size(event: Event) -> int:
    data = event.get("text")
    if data is None:
        data = event.get("bytes")
    return 0 if data is None else len(data)

_log = logging.getLogger("fastapi_rooms")


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiter: Any) -> Generator[Any, Any, None]:
    """Finish a coroutine that was started by hand and suspended on ``waiter``."""
    try:
        yield waiter
    except BaseException:
        coro.close()
        raise
    yield from coro


class _Pass:
    """One event loop's pass counter and the connections corked in the current pass."""

    __slots__ = ("__weakref__", "corked", "epoch", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.epoch = 0
        self.scheduled = False
        self.corked: list[Outbound] = []

    def schedule(self) -> None:
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._end)

    def _end(self) -> None:
        self.scheduled = False
        self.epoch += 1
        corked, self.corked = self.corked, []
        for outbound in corked:
            try:
                outbound._uncork()
            except Exception:  # _uncork handles send errors; anything else is a bug to see
                _log.exception("writing corked frames failed")


_passes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pass] = (
    weakref.WeakKeyDictionary()
)


def _pass_of(loop: asyncio.AbstractEventLoop) -> _Pass:
    found = _passes.get(loop)
    if found is None:
        found = _passes[loop] = _Pass(loop)
    return found


class Outbound:
    """Ordered, bounded delivery of ASGI send events to one connection."""

    __slots__ = (
        "_closer",
        "_cork_bytes",
        "_cork_frames",
        "_corked",
        "_epoch",
        "_limit",
        "_on_dead",
        "_pass",
        "_policy",
        "_queue",
        "_send",
        "_writer",
        "busy",
        "closed",
        "discarded",
        "dropped",
        "sent",
    )

    def __init__(
        self,
        send: Send,
        *,
        limit: int,
        policy: Overflow,
        on_dead: Callable[[int, str], None],
    ) -> None:
        if limit < 1:
            raise ValueError(f"max_buffer must be at least 1, got {limit}")
        if policy not in ("close", "drop"):
            raise ValueError(f"overflow must be 'close' or 'drop', got {policy!r}")
        self._send = send
        self._limit = limit
        self._policy = policy
        self._on_dead = on_dead
        # Entries are send events, or (event, future) for a sender that waits for its frame.
        # Made on first use: most connections never queue a frame (a deque is ~0.6 KiB).
        self._queue: deque[Event | tuple[Event, asyncio.Future[None]]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._pass: _Pass | None = None
        self._epoch = -1  # the pass in which this connection last wrote a frame at once
        self._corked = False  # frames wait for the end of the pass, not behind a writer
        self._cork_frames = min(limit, _CORK_FRAMES)
        self._cork_bytes = 0
        self.busy = False
        self.closed = False
        self.dropped = 0  # frames refused by the overflow policy
        self.discarded = 0  # frames still queued when the connection closed
        self.sent = 0

    @property
    def queued(self) -> int:
        """Frames waiting behind a send in progress."""
        return len(self._queue) if self._queue is not None else 0

    def offer(self, event: Event) -> bool:
        """Hand over a frame without waiting; False when dropped or the connection is gone."""
        if self.closed:
            return False
        if self.busy:
            queue = self._pending()
            if self._corked:
                if len(queue) < self._cork_frames and self._cork_bytes < _CORK_BYTES:
                    queue.append(event)
                    self._cork_bytes += _size(event)
                    return True
                self._uncork()  # a full cork: write this batch now, start another
                return self.offer(event)
            if len(queue) < self._limit:
                queue.append(event)
                return True
            return self._overflow()
        cork = self._pass
        if cork is None:
            cork = self._pass = _pass_of(asyncio.get_running_loop())
        if self._epoch == cork.epoch:  # second frame in this pass: cork it
            self.busy = self._corked = True
            self._pending().append(event)
            self._cork_bytes = _size(event)
            cork.corked.append(self)
            return True
        self._epoch = cork.epoch
        if not cork.scheduled:
            cork.schedule()
        return self._write(event, None)

    def _pending(self) -> deque[Event | tuple[Event, asyncio.Future[None]]]:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        return queue

    def _write(self, event: Event, waiter: asyncio.Future[None] | None) -> bool:
        """Run ``send`` by hand; hand it to a writer task if it suspends."""
        coro = self._send(event)
        try:
            suspended = coro.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            self.sent += 1
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return True
        except Exception as exc:
            if waiter is not None:
                self._fail_waiters((event, waiter))
            self._fail(exc)
            return False
        self.busy = True
        self._writer = asyncio.get_running_loop().create_task(
            self._drain(_resume(coro, suspended), waiter)  # type: ignore[arg-type]
        )
        return True

    def _uncork(self) -> None:
        """Write the frames corked in this pass, back to back, until one would suspend."""
        if not self._corked:
            return
        self._corked = False
        queue = self._queue
        while queue:
            entry = queue.popleft()
            if type(entry) is tuple:
                written = self._write(entry[0], entry[1])
            else:
                written = self._write(entry, None)  # type: ignore[arg-type]
            if not written or self._writer is not None:
                return  # failed (queue already cleared) or a writer task took over
        if not self.closed:
            self.busy = False

    async def send(self, event: Event) -> None:
        """Send a frame and wait until the server took it, after every frame queued before it."""
        if self.closed:
            raise ConnectionClosed()
        if self.busy:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending().append((event, future))  # a waiting sender is not subject to the limit
            await future
            return
        self.busy = True
        try:
            await self._send(event)
        except Exception as exc:
            self._fail(exc)
            raise ConnectionClosed() from exc
        finally:
            if not self.closed:
                if self._queue:
                    self._writer = asyncio.get_running_loop().create_task(self._drain(None))
                else:
                    self.busy = False
        self.sent += 1

    async def _drain(
        self, pending: Awaitable[None] | None, waiter: asyncio.Future[None] | None = None
    ) -> None:
        queue = self._queue
        send = self._send
        entry: Event | tuple[Event, asyncio.Future[None]] | None = None
        try:
            if pending is not None:
                if waiter is not None:
                    entry = ({}, waiter)  # so that a failure below fails this waiter too
                await pending
                self.sent += 1
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                entry = None
            while queue:
                entry = queue.popleft()
                if type(entry) is tuple:
                    await send(entry[0])
                    if not entry[1].done():
                        entry[1].set_result(None)
                else:
                    await send(entry)  # type: ignore[arg-type]
                self.sent += 1
                entry = None
        except asyncio.CancelledError:
            self._fail_waiters(entry)
            raise
        except Exception as exc:
            self._fail_waiters(entry)
            self._fail(exc)
        finally:
            self._writer = None
            if not self.closed:
                self.busy = False

    def _overflow(self) -> bool:
        self.dropped += 1
        if self._policy == "drop":
            return False
        self.abort(SLOW_CONSUMER_CLOSE_CODE, "slow consumer: outbound buffer full")
        return False

    def abort(self, code: int, reason: str) -> None:
        """Stop now, drop what is queued (counted), and close with ``code`` in the background.

        The close frame leaves once the peer reads again. A peer that never reads keeps its
        socket (and the data already in the server's and kernel's buffers) until TCP gives up:
        uvicorn's keepalive ping cannot get past the unread data (measured: still open 50 s
        later). Our own buffer is freed at once.
        """
        if self.closed:
            return
        self._mark_closed()
        if self._writer is not None:
            self._writer.cancel()
        self._closer = asyncio.get_running_loop().create_task(self._send_close(code, reason))
        self._on_dead(code, reason)

    async def _send_close(self, code: int, reason: str) -> None:
        try:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except Exception as exc:  # the peer went away first: nothing left to tell it
            _log.debug("close frame %s not delivered: %r", code, exc)
        finally:
            self._closer = None

    async def close(self, event: Event, timeout: float | None) -> None:
        """Send ``event`` (a close) after every queued frame, then refuse further frames."""
        if self.closed:
            return
        if self.busy:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending().append((event, future))
            self.closed = True
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout)
            except (asyncio.TimeoutError, ConnectionClosed):
                self.cancel()
            return
        self.closed = True
        self.busy = True
        try:
            await asyncio.wait_for(self._send(event), timeout)
        except (asyncio.TimeoutError, Exception) as exc:
            _log.debug("close frame not delivered: %r", exc)

    def cancel(self) -> None:
        """Stop the writer and the background close, dropping (and counting) what is queued."""
        self._mark_closed()
        for task in (self._writer, self._closer):
            if task is not None:
                task.cancel()

    def _mark_closed(self) -> None:
        self.closed = True
        self.busy = True
        self._corked = False
        queue = self._queue
        while queue:
            entry = queue.popleft()
            if type(entry) is tuple:
                self._fail_waiters(entry)
            else:
                self.discarded += 1

    def _fail_waiters(self, entry: Any) -> None:
        if type(entry) is tuple and not entry[1].done():
            entry[1].set_exception(ConnectionClosed())
            entry[1].exception()  # mark retrieved: the waiter may have been cancelled meanwhile

    def _fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self._mark_closed()
        _log.debug("send failed, connection dropped: %r", exc)
        self._on_dead(1006, f"send failed: {type(exc).__name__}")


class RSGIOutbound(Outbound):
    """Outbound over Granian's native RSGI transport.

    Each send resolves on Granian's Rust side, so awaiting them one by one costs a round trip
    per member. Here ``offer()`` starts the send and returns; the send's completion callback
    starts the next queued frame. One frame in flight per connection keeps order, and every
    member of a room has its frame in flight at once. No task is created.
    """

    __slots__ = ("_handle", "_inflight")

    def __init__(
        self,
        handle: Any,
        send: Send,
        *,
        limit: int,
        policy: Overflow,
        on_dead: Callable[[int, str], None],
    ) -> None:
        super().__init__(send, limit=limit, policy=policy, on_dead=on_dead)
        self._handle = handle
        self._inflight: asyncio.Future[None] | None = None

    def offer(self, event: Event) -> bool:
        if self.closed:
            return False
        if self.busy:
            queue = self._pending()
            if len(queue) < self._limit:
                queue.append(event)
                return True
            return self._overflow()
        return self._start(event, None)

    def _start(self, event: Event, waiter: asyncio.Future[None] | None) -> bool:
        if event["type"] == "websocket.close":
            self._handle.close(None, event.get("code", 1000))
            self.busy = True
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return True
        transport = self._handle.transport
        try:
            text = event.get("text")
            future = (
                transport.send_str(text)
                if text is not None
                else transport.send_bytes(event["bytes"])
            )
        except Exception as exc:
            if waiter is not None:
                self._fail_waiters((event, waiter))
            self._fail(exc)
            return False
        self.busy = True
        self._inflight = waiter
        future.add_done_callback(self._done)
        return True

    def _done(self, future: Any) -> None:
        waiter, self._inflight = self._inflight, None
        try:
            exc = future.exception()
        except BaseException as cancelled:  # cancelled by Granian
            exc = cancelled
        if exc is not None:
            if waiter is not None:
                self._fail_waiters((None, waiter))
            self._fail(exc)
            return
        self.sent += 1
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        queue = self._queue
        while queue:
            entry = queue.popleft()
            started = (
                self._start(entry[0], entry[1])
                if type(entry) is tuple
                else self._start(entry, None)  # type: ignore[arg-type]
            )
            if started:
                return
        if not self.closed:
            self.busy = False

    async def send(self, event: Event) -> None:
        if self.closed:
            raise ConnectionClosed()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.busy:
            self._pending().append((event, waiter))
        else:
            self._start(event, waiter)
        await waiter

    async def close(self, event: Event, timeout: float | None) -> None:
        if self.closed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.busy:
            self._pending().append((event, waiter))
        else:
            self._start(event, waiter)
        self.closed = True
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (asyncio.TimeoutError, ConnectionClosed):
            self.cancel()
            self._handle.close(None)

    def abort(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self._mark_closed()
        self._handle.close(None, code)  # RSGI cannot carry the code after accept
        self._on_dead(code, reason)
