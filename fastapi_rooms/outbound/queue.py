"""Per-connection bounded outbound queue with a slow-consumer policy, over a sink.

A broadcast must never wait on its slowest member. ``offer()`` asks the sink to write the frame
now; a sink that finishes at once (uvicorn's ``send`` only suspends while the transport is
paused) leaves nothing behind. A write still in progress makes the queue busy: later frames wait
in a bounded queue behind it, in order, and the write's completion starts the next one. A queue
that stays full triggers the overflow policy: drop the frame, or close the connection (default,
``CloseCode.TRY_AGAIN_LATER``).

Corking (sinks with ``corks = True``): the first frame a connection gets in a pass of the event
loop goes out at once; more frames for it in the same pass (a burst of broadcasts) wait, up to
256 frames or 64 KiB, and then go out back to back (at the end of the pass, or when the cork is
full). Consecutive writes to one socket are cheaper for the kernel (TCP autocorking) and for the
client (one read takes many frames). Corked frames are not subject to the buffer limit: a full
cork is written, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

from ..errors import CloseCode, ConnectionClosed

__all__ = ["Outbound", "Overflow", "Sink"]

_log = logging.getLogger("fastapi_rooms")

Overflow = Literal["close", "drop"]
Event = dict[str, Any]
Entry = Event | tuple[Event, "asyncio.Future[None]"]

# A cork holds at most this many frames or bytes, then they are written and a new cork starts:
# batches keep the cheap back-to-back writes, and a long burst still reaches every member in
# turn, so each client reads while the others are written (one unbounded cork per pass would
# put a whole burst into one socket at once and overflow clients that keep up).
_CORK_FRAMES = 256
_CORK_BYTES = 64 * 1024


class Sink(Protocol):
    """Where one connection's frames go: it writes and closes, the queue decides the rest."""

    corks: bool  # whether frames of one loop pass should be written back to back

    def write(self, event: Event) -> asyncio.Future[Any] | None:
        """Start writing an ASGI send or close event: None when done, else its completion.

        Raises when the connection cannot take it.
        """
        ...

    def abort(self, code: int, reason: str, inflight: asyncio.Future[Any] | None) -> None:
        """Close now in the background, abandoning ``inflight``."""
        ...

    def cancel(self, inflight: asyncio.Future[Any] | None) -> None:
        """Stop any background work of this sink (the connection is being torn down)."""
        ...


def _size(event: Event) -> int:
    data = event.get("text")
    if data is None:
        data = event.get("bytes")
    return 0 if data is None else len(data)


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


def _fail_waiter(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_exception(ConnectionClosed())
        waiter.exception()  # mark retrieved: the waiter may have been cancelled meanwhile


def _resolve(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Outbound:
    """Ordered, bounded delivery of ASGI send events to one connection."""

    __slots__ = (
        "_cork_bytes",
        "_cork_frames",
        "_corked",
        "_epoch",
        "_forced",
        "_inflight",
        "_limit",
        "_on_dead",
        "_pass",
        "_policy",
        "_queue",
        "_sink",
        "_waiter",
        "busy",
        "closed",
        "discarded",
        "dropped",
        "sent",
    )

    def __init__(
        self,
        sink: Sink,
        *,
        limit: int,
        policy: Overflow,
        on_dead: Callable[[int, str], None],
    ) -> None:
        if limit < 1:
            raise ValueError(f"max_buffer must be at least 1, got {limit}")
        if policy not in ("close", "drop"):
            raise ValueError(f"overflow must be 'close' or 'drop', got {policy!r}")
        self._sink = sink
        self._limit = limit
        self._policy = policy
        self._on_dead = on_dead
        # Entries are send events, or (event, future) for a sender that waits for its frame.
        # Made on first use: most connections never queue a frame (a deque is ~0.6 KiB).
        self._queue: deque[Entry] | None = None
        self._inflight: asyncio.Future[Any] | None = None  # a write the sink has not finished
        self._waiter: asyncio.Future[None] | None = None  # who waits for that write
        self._pass: _Pass | None = None
        self._epoch = -1  # the pass in which this connection last wrote a frame at once
        self._corked = False  # frames wait for the end of the pass, not behind a write
        self._cork_frames = min(limit, _CORK_FRAMES) if sink.corks else 0
        self._cork_bytes = 0
        self._forced = 0  # forced frames still queued: the limit applies on top of them
        self.busy = False
        self.closed = False
        self.dropped = 0  # frames refused by the overflow policy
        self.discarded = 0  # frames still queued when the connection closed
        self.sent = 0

    @property
    def queued(self) -> int:
        """Frames waiting behind a write in progress."""
        return len(self._queue) if self._queue is not None else 0

    def offer(self, event: Event, force: bool = False) -> bool:
        """Hand over a frame without waiting; False when dropped or the connection is gone.

        ``force`` queues it past the buffer's limit (a history replay, bounded by its size);
        the frames offered after it still have the whole limit."""
        if self.closed:
            return False
        if self.busy:
            queue = self._pending()
            if self._corked:
                if len(queue) < self._cork_frames and self._cork_bytes < _CORK_BYTES:
                    queue.append(event)
                    self._cork_bytes += _size(event)
                    self._forced += force
                    return True
                self._uncork()  # a full cork: write this batch now, start another
                return self.offer(event, force)
            if force or len(queue) < self._limit + self._forced:
                queue.append(event)
                self._forced += force
                return True
            return self._overflow()
        if self._cork_frames:
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

    def _pending(self) -> deque[Entry]:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        return queue

    def _write(self, event: Event, waiter: asyncio.Future[None] | None) -> bool:
        """Start one write; False when it failed (the connection is then dead)."""
        try:
            inflight = self._sink.write(event)
        except Exception as exc:
            _fail_waiter(waiter)
            self._fail(exc)
            return False
        if inflight is None:
            self.sent += 1
            _resolve(waiter)
        else:
            self._await(inflight, waiter)
        return True

    def _await(self, inflight: asyncio.Future[Any], waiter: asyncio.Future[None] | None) -> None:
        """A write goes on: later frames queue behind it until ``_done``."""
        self.busy = True
        self._inflight = inflight
        self._waiter = waiter
        inflight.add_done_callback(self._done)

    def _done(self, inflight: asyncio.Future[Any]) -> None:
        """A write finished: report it, then write what queued up behind it."""
        try:
            exc = inflight.exception()  # retrieved even when abandoned: no "never retrieved"
        except BaseException as cancelled:  # cancelled (by Granian, or by our cancel())
            exc = cancelled
        if inflight is not self._inflight:
            return  # abandoned by abort() or cancel()
        waiter, self._inflight, self._waiter = self._waiter, None, None
        if exc is not None:
            _fail_waiter(waiter)
            self._fail(exc)
            return
        self.sent += 1
        _resolve(waiter)
        self._flush()

    def _flush(self) -> None:
        """Write queued frames until one is still in progress."""
        queue = self._queue
        while queue:
            entry = queue.popleft()
            if self._forced:
                self._forced -= 1
            if type(entry) is tuple:
                written = self._write(entry[0], entry[1])
            else:
                written = self._write(entry, None)  # type: ignore[arg-type]
            if not written or self._inflight is not None:
                return  # failed (queue already cleared) or the write goes on
        if not self.closed:
            self.busy = False

    def _uncork(self) -> None:
        """Write the frames corked in this pass, back to back."""
        if self._corked:
            self._corked = False
            self._flush()

    async def replay(self, texts: list[str]) -> None:
        """One or more text frames handed over as a whole (a history replay), queued
        on top of the limit; returns once the last went out, so a caller that waits cannot
        queue another replay before."""
        *head, last = texts
        for text in head:
            self.offer({"type": "websocket.send", "text": text}, force=True)
        await self.send({"type": "websocket.send", "text": last})

    async def send(self, event: Event) -> None:
        """Send a frame and wait until the sink took it, after every frame queued before it."""
        if self.closed:
            raise ConnectionClosed()
        waiter: asyncio.Future[None] | None = None
        if self.busy:
            waiter = asyncio.get_running_loop().create_future()
            self._pending().append((event, waiter))  # a waiting sender is not subject to the limit
            await waiter
            return
        try:
            inflight = self._sink.write(event)
        except Exception as exc:
            self._fail(exc)
            raise ConnectionClosed() from exc
        if inflight is None:
            self.sent += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._await(inflight, waiter)
        await waiter

    def _overflow(self) -> bool:
        self.dropped += 1
        if self._policy == "drop":
            return False
        self.abort(CloseCode.TRY_AGAIN_LATER, "slow consumer: outbound buffer full")
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
        inflight = self._abandon()
        self._sink.abort(code, reason, inflight)
        self._on_dead(code, reason)

    async def close(self, event: Event, timeout: float | None) -> None:
        """Send ``event`` (a close) after every queued frame, then refuse further frames."""
        if self.closed:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.busy:
            self._pending().append((event, waiter))
            self.closed = True
        else:
            self.closed = True
            self.busy = True
            self._write(event, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except (asyncio.TimeoutError, ConnectionClosed) as exc:
            _log.debug("close frame not delivered: %r", exc)
            self.cancel()

    def cancel(self) -> None:
        """Stop writing, dropping (and counting) what is queued."""
        self._sink.cancel(self._abandon())

    def _abandon(self) -> asyncio.Future[Any] | None:
        """Mark closed, fail waiting senders, count dropped frames; the write in progress."""
        self.closed = True
        self.busy = True
        self._corked = False
        inflight, self._inflight = self._inflight, None
        self._forced = 0
        _fail_waiter(self._waiter)
        self._waiter = None
        queue = self._queue
        while queue:
            entry = queue.popleft()
            if type(entry) is tuple:
                _fail_waiter(entry[1])
            else:
                self.discarded += 1
        return inflight

    def _fail(self, exc: BaseException) -> None:
        """A write failed: every waiter fails now (a close() waiting behind it included)."""
        was_closed = self.closed
        self._abandon()
        _log.debug("send failed, connection dropped: %r", exc)
        if not was_closed:
            self._on_dead(CloseCode.ABNORMAL, f"send failed: {type(exc).__name__}")
