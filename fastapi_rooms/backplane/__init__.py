"""Cross-process delivery: subscriptions, channel names, reconnection and the connection directory.

The manager owns membership; this module keeps the backend's subscriptions equal to the rooms
that have a local member, moves envelopes, and makes every failure visible (logged, counted,
in ``stats()``) while local delivery goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..backends.base import Append, Backend, RoomHistory, room_tag
from ..history import HistoryPage, Position
from ..logs import NodeLogger
from .envelope import Envelope, decode, encode

__all__ = ["Backplane", "Envelope", "decode", "encode"]

_log = logging.getLogger("fastapi_rooms.backplane")

_FIRST = asyncio.FIRST_COMPLETED
_CHUNK = 1000  # presence entries per backend call
_REFRESH_STEP = 0.05  # seconds between slices of the periodic directory and presence refresh
_BATCH = 500  # envelopes per publish round trip
_BATCH_BYTES = 4 << 20  # and at most this many payload bytes (one envelope may exceed it)
# A batch's reply may wait behind this process's own work (a node fanning a burst out to
# thousands of members), so a batch fails on a longer bound than one confirmation does; a
# Redis that stopped answering is also caught by the deafness probes.
_WRITE_TIMEOUT = 5.0


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a finished helper task's outcome as seen (its failure was already handled)."""
    if not task.cancelled() and task.exception() is not None:
        _log.debug("backplane helper task ended with %r", task.exception())


class Backplane:
    """Runs one node's side of the backend: listener, subscriptions, directory heartbeat."""

    def __init__(
        self,
        backend: Backend,
        *,
        node: str,
        prefix: str,
        deliver: Callable[[Envelope], None],
        positioned: Callable[[dict[str, Position | None]], None] = lambda positions: None,
        history_rooms: Callable[[], dict[str, tuple[float, int]]] = dict,
        directory_ttl: float = 30.0,
        deaf_after: float = 3.0,
        publish_timeout: float = 1.0,
        max_pending: int = 10_000,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.backend = backend
        self.node = node
        self._log = NodeLogger(_log, node)
        self.prefix = prefix
        self._deliver = deliver
        self._positioned = positioned  # told where the rooms with history here stand
        self._history_rooms = history_rooms  # those rooms: how long to keep, latest offset
        self.directory_ttl = directory_ttl
        if deaf_after <= 0:
            raise ValueError(f"deaf_after must be positive seconds, got {deaf_after!r}")
        self.deaf_after = deaf_after  # silence on the subscription that means it is dead
        self._heard = 0.0  # when the subscription last delivered anything (probes included)
        # Probes go to one channel per backend connection (the node channel, or one per shard
        # on a cluster); per channel, when the backend accepted the oldest probe not heard
        # back since, and when one was last heard.
        self._probe_channels: list[str] = []
        self._unanswered: dict[str, float] = {}
        self._answered: dict[str, float] = {}
        self._connected_at = 0.0
        self._probe = encode(Envelope(node, "probe", "", (), b""))
        self.deaf_events = 0
        self.probes = 0  # probes the backend accepted
        self.publish_timeout = publish_timeout
        self._write_timeout = max(_WRITE_TIMEOUT, publish_timeout)
        self.max_pending = max_pending
        self._backoff = backoff
        # Outgoing envelopes wait here in publish order; one writer sends them in batches.
        self._pending: deque[tuple[str, bytes | Append, asyncio.Future[int] | None]] = deque()
        self._pending_event = asyncio.Event()
        self._flushed = asyncio.Event()  # set while nothing is queued or being written
        self._in_flight = 0  # envelopes in the batch being written now
        self._flushed.set()
        self._writer_idle = False
        if getattr(backend, "sharded", False) and ("{" in prefix or "}" in prefix):
            raise ValueError(
                f"on a sharded backend the prefix cannot hold braces (they would be every "
                f"channel's hash tag, putting all rooms on one shard), got {prefix!r}"
            )
        self.all_channel = f"{prefix}:all"
        self.node_channel = self.node_channel_of(node)
        self._wanted: set[str] = {self.all_channel, self.node_channel}
        self._active: set[str] = set()  # subscribed (the SUBSCRIBE was sent)
        self._confirmed: set[str] = set()  # and the backend confirmed it
        self._subscribe_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._unsubscribing: str | None = None
        self._changed = asyncio.Event()
        self._local_ids: set[str] = set()
        self._register: set[str] = set()
        self._unregister: set[str] = set()
        # Presence entries of local members: (room, connection id) -> info.
        self._presence: dict[tuple[str, str], bytes] = {}
        self._presence_set: dict[tuple[str, str], bytes] = {}
        # The periodic refresh of this node's directory and presence entries, handed to the
        # writers a slice at a time (see _refresh_due): ("id", cid) or ("presence", key).
        self._refresh: deque[tuple[str, Any]] = deque()
        self._refresh_started = 0.0
        self._refresh_total = 0
        self._refresh_done = 0
        self._presence_del: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._stopping = asyncio.Event()
        self.connected = False
        self.ready = asyncio.Event()  # set while connected and subscriptions are in sync
        self.down = asyncio.Event()  # set from a lost connection until the next connect
        self.reconnects = 0
        self.last_error: str | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.publish_errors = 0
        self.publish_dropped = 0
        self.malformed = 0
        self.presence_errors = 0
        self.deliver_errors = 0

    # Channels ------------------------------------------------------------------------------

    def room_channel(self, room: str) -> str:
        # The room's tag: on a sharded backend its channel and keys share a shard.
        return f"{self.prefix}:room:{{{room_tag(room)}}}:{room}"

    def user_channel(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}"

    def node_channel_of(self, node: str) -> str:
        return f"{self.prefix}:node:{node}"

    def want(self, channel: str) -> None:
        self._wanted.add(channel)
        self._kick()

    def unwant(self, channel: str) -> None:
        self._wanted.discard(channel)
        self._kick()

    def add_local(self, connection_id: str) -> None:
        self._local_ids.add(connection_id)
        self._unregister.discard(connection_id)
        self._register.add(connection_id)
        self._kick()

    def remove_local(self, connection_id: str) -> None:
        self._local_ids.discard(connection_id)
        self._register.discard(connection_id)
        self._unregister.add(connection_id)
        self._kick()

    def presence_add(self, room: str, connection_id: str, info: bytes) -> None:
        key = (room, connection_id)
        self._presence[key] = self._presence_set[key] = info
        self._presence_del.discard(key)
        self._kick()

    def presence_remove(self, room: str, connection_id: str) -> None:
        key = (room, connection_id)
        self._presence.pop(key, None)
        self._presence_set.pop(key, None)
        self._presence_del.add(key)
        self._kick()

    async def presence(self, room: str) -> dict[str, bytes]:
        """Every node's presence entries for ``room``; empty (and logged) when unavailable."""
        if not self.connected:
            return {}
        try:
            return await asyncio.wait_for(self.backend.presence_get(room), self.publish_timeout)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._log.error("reading presence of room %r failed: %s", room, self.last_error)
            return {}

    def _kick(self) -> None:
        self.ready.clear()
        self._changed.set()

    async def sync(self, timeout: float = 5.0) -> None:
        """Wait until the backend's subscriptions and directory match local state."""
        await asyncio.wait_for(self.ready.wait(), timeout)

    async def subscribed(self, channel: str, timeout: float) -> None:
        """Wait until ``channel`` is subscribed on the backend (if it is still wanted)."""
        if (
            channel in self._confirmed and channel != self._unsubscribing
        ) or channel not in self._wanted:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribe_waiters.setdefault(channel, []).append(future)
        try:
            await asyncio.wait_for(future, timeout)
        finally:
            waiters = self._subscribe_waiters.get(channel)
            if waiters is not None and future in waiters:
                waiters.remove(future)
                if not waiters:
                    del self._subscribe_waiters[channel]

    # Lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name=f"fastapi_rooms backplane {self.node}")]

    async def stop(self) -> None:
        """Stop the loop, clear this node's directory entries and disconnect.

        The loop is asked to return rather than cancelled: redis-py can swallow a cancellation
        that lands inside a command, which would leave the loop running.
        """
        self._running = False
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=3 * self.publish_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=self.publish_timeout)
            for task in self._tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    self._log.error("backplane task failed while stopping: %r", task.exception())
        self._tasks = []
        if self.connected and (self._local_ids or self._presence):
            try:
                await asyncio.wait_for(self._clear(), self.publish_timeout)
            except Exception as exc:
                self._log.warning("could not clear directory and presence at shutdown: %r", exc)
        try:
            await asyncio.wait_for(self.backend.disconnect(), self.publish_timeout)
        except Exception as exc:
            self._log.warning("backend disconnect failed: %r", exc)
        self._drop_pending("the backplane stopped")
        self.connected = False
        self.ready.clear()

    async def _clear(self) -> None:
        """This node's directory and presence entries, removed at shutdown."""
        if self._local_ids:
            await self.backend.unregister(self._local_ids, self.node)
        if self._presence:
            await self.backend.presence_remove(sorted(self._presence))

    async def _run(self) -> None:
        """Connect, subscribe, listen; on failure back off (capped, jittered) and start over."""
        delay = self._backoff[0]
        down_since: float | None = None
        while self._running:
            try:
                await self.backend.connect()
                self._set_probe_channels()
                self._active = set()
                self._confirmed = set()
                self._register |= self._local_ids  # the directory may have expired meanwhile
                self._presence_set.update(self._presence)
                await self._reconcile()
                self.connected = True
                self._heard = self._connected_at = time.monotonic()
                self._unanswered.clear()
                self._answered.clear()
                self.down.clear()
                await self._check_positions()  # history may have moved on, or be gone
                if down_since is not None:
                    self._log.warning(
                        "backend %r reconnected after %.1fs; %d channel(s) resubscribed",
                        self.backend,
                        time.monotonic() - down_since,
                        len(self._active),
                    )
                    down_since = None
                delay = self._backoff[0]
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected = False
                self.ready.clear()
                self.down.set()
                self.last_error = f"{type(exc).__name__}: {exc}"
                if down_since is None:
                    down_since = time.monotonic()
                    self._log.error("backend %r connection lost: %s", self.backend, self.last_error)
                else:
                    self._log.info("backend %r still down: %s", self.backend, self.last_error)
                self.reconnects += 1
                try:
                    await self.backend.disconnect()
                except Exception as disconnect_exc:
                    self._log.debug("disconnect after failure: %r", disconnect_exc)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay * (0.5 + random.random()))
                delay = min(delay * 2, self._backoff[1])

    async def _serve(self) -> None:
        """Listen and keep subscriptions and the directory in sync until something fails."""
        loop = asyncio.get_running_loop()
        listener = loop.create_task(self._listen())
        writer = loop.create_task(self._write())
        stopping = loop.create_task(self._stopping.wait())
        try:
            heartbeat_at = time.monotonic() + self.directory_ttl / 3
            probe_every = self.deaf_after / 3
            probe_at = 0.0
            last_pass = time.monotonic()
            while True:
                now = time.monotonic()
                # After a pass this late, this process was busy (a long fan-out, a GC pause):
                # what Redis sent may be unread yet. Judge on the next pass.
                stalled, last_pass = now - last_pass > 2 * probe_every, now
                if now >= probe_at:  # a probe to ourselves: quiet channels still speak
                    for channel in self._probe_channels:
                        self._enqueue(channel, self._probe, None)
                    probe_at = now + probe_every
                deaf = None if stalled else self._deaf(now)
                if deaf is not None:
                    silent = now - self._last_heard(deaf)
                    self.deaf_events += 1
                    self._log.error(
                        "backend %r: deaf: nothing arrived on %s for %.1fs, not even this "
                        "node's own probes (deaf_after=%.1fs); reconnecting",
                        self.backend,
                        "the subscription" if len(self._probe_channels) == 1 else deaf,
                        silent,
                        self.deaf_after,
                    )
                    raise ConnectionError(f"deaf for {silent:.1f}s: reconnecting")
                timeout = max(0.0, min(heartbeat_at, probe_at) - now)
                if self._refresh:
                    timeout = min(timeout, _REFRESH_STEP)
                waiter = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait(
                    {listener, writer, waiter, stopping},
                    timeout=timeout,
                    return_when=_FIRST,
                )
                waiter.cancel()
                if stopping in done:
                    # Let what was published before the stop leave, within the usual bound.
                    flushed = loop.create_task(self._flushed.wait())
                    await asyncio.wait(
                        {flushed, writer}, timeout=self.publish_timeout, return_when=_FIRST
                    )
                    flushed.cancel()
                    return
                for task in (listener, writer):
                    if task in done:
                        task.result()  # raises what broke it
                        raise ConnectionError("backend listener or writer ended")
                if time.monotonic() >= heartbeat_at:
                    self._start_refresh()
                    heartbeat_at = time.monotonic() + self.directory_ttl / 3
                    await self._check_positions()
                self._refresh_due(time.monotonic())
                await self._reconcile()
        finally:
            helpers: tuple[asyncio.Task[Any], ...] = (listener, writer, stopping)
            for helper in helpers:
                helper.cancel()
            # What broke them was raised above; the disconnect that follows ends any straggler.
            await asyncio.wait(helpers, timeout=self.publish_timeout)
            for helper in helpers:
                helper.add_done_callback(_retrieve)
            if self._running:
                self._drop_pending("the backend connection was lost")

    def _set_probe_channels(self) -> None:
        """After a connect: one probe channel per backend connection (they may have moved)."""
        shards = getattr(self.backend, "probe_channels", None)
        channels = shards(self.node) if shards is not None else [self.node_channel]
        self._wanted.difference_update(set(self._probe_channels) - {self.node_channel})
        self._probe_channels = list(channels)
        self._wanted.update(channels)

    def _last_heard(self, channel: str) -> float:
        # One connection: anything heard proves it alive. Several: only what came on the
        # probe channel's own connection does (the backend may know; else its probes).
        if len(self._probe_channels) == 1:
            return self._heard
        heard = self._answered.get(channel, self._connected_at)
        heard_at = getattr(self.backend, "heard_at", None)
        read = heard_at(channel) if heard_at is not None else None
        return heard if read is None else max(heard, read)

    def _deaf(self, now: float) -> str | None:
        """A probe channel whose probe the backend accepted deaf_after ago, unheard since."""
        for channel in self._probe_channels:
            sent = self._unanswered.get(channel, 0.0)
            if sent > self._last_heard(channel) and now - sent > self.deaf_after:
                return channel
        return None

    async def _reconcile(self) -> None:
        self._changed.clear()
        backend = self.backend
        confirms = getattr(backend, "confirms_subscriptions", False)
        for channel in sorted(self._wanted - self._active):
            self._active.add(channel)  # first: the confirmation may be read before we resume
            try:
                await backend.subscribe(channel)
            except BaseException:
                self._active.discard(channel)
                raise
            if not confirms:
                self._confirm(channel)
        for channel in sorted(self._active - self._wanted):
            if channel in self._wanted:
                continue  # wanted again while an earlier channel was being unsubscribed
            self._unsubscribing = channel
            try:
                await backend.unsubscribe(channel)
            finally:
                self._unsubscribing = None
            self._active.discard(channel)
            self._confirmed.discard(channel)
            if channel in self._wanted:
                self._changed.set()  # joined again meanwhile: subscribe on the next pass
        if self._register:
            ids, self._register = self._register, set()
            try:
                await backend.register(ids, self.node, self.directory_ttl)
            except BaseException:
                self._register |= ids & self._local_ids
                raise
        if self._unregister:
            ids, self._unregister = self._unregister, set()
            try:
                await backend.unregister(ids, self.node)
            except BaseException:
                self._unregister |= ids - self._local_ids
                raise
        await self._sync_presence()
        if not self._changed.is_set():
            self.ready.set()

    def _start_refresh(self) -> None:
        """Begin rewriting this node's directory and presence entries before they expire."""
        self._refresh = deque(
            [("id", cid) for cid in self._local_ids]
            + [("presence", key) for key in self._presence]
        )
        self._refresh_started = time.monotonic()
        self._refresh_total = len(self._refresh)
        self._refresh_done = 0

    def _refresh_due(self, now: float) -> None:
        """Hand the refresh to the writers in slices, evenly over half the heartbeat period:
        written in one go, a node with many members sent Redis tens of thousands of entries
        at once every period, and every publish queued behind them (S9: p99 570 ms -> see
        benchmarks). Entries gone meanwhile are skipped."""
        if not self._refresh:
            return
        share = min(1.0, (now - self._refresh_started) / (self.directory_ttl / 6))
        due = min(len(self._refresh), int(share * self._refresh_total) - self._refresh_done)
        for _ in range(due):
            kind, key = self._refresh.popleft()
            if kind == "id":
                if key in self._local_ids:
                    self._register.add(key)
            elif key in self._presence:
                self._presence_set[key] = self._presence[key]
        self._refresh_done += max(0, due)

    async def _sync_presence(self) -> None:
        """Write pending presence changes in chunks; a refused chunk is logged, not fatal."""
        while self._presence_set:
            chunk = dict(list(self._presence_set.items())[:_CHUNK])
            for key in chunk:
                del self._presence_set[key]
            try:
                await self.backend.presence_set(
                    [(room, cid, info) for (room, cid), info in chunk.items()], self.directory_ttl
                )
            except ValueError as exc:
                self.presence_errors += 1
                self._log.error("presence entries not written: %s", exc)
            except BaseException:
                for key, info in chunk.items():  # still local members: write them after reconnect
                    if key in self._presence:
                        self._presence_set.setdefault(key, info)
                raise
        while self._presence_del:
            gone = sorted(self._presence_del)[:_CHUNK]
            self._presence_del.difference_update(gone)
            try:
                await self.backend.presence_remove(gone)
            except ValueError as exc:
                self.presence_errors += 1
                self._log.error("presence entries not removed: %s", exc)
            except BaseException:
                self._presence_del.update(key for key in gone if key not in self._presence)
                raise

    def _confirm(self, channel: str) -> None:
        """The backend confirmed a subscription: joins waiting for it are live."""
        if channel not in self._active:
            return  # unsubscribed meanwhile
        self._confirmed.add(channel)
        for future in self._subscribe_waiters.pop(channel, ()):
            if not future.done():
                future.set_result(None)

    async def _listen(self) -> None:
        probe = self._probe
        async for channel, payload in self.backend.listen():
            self._heard = time.monotonic()
            if payload is None:
                self._confirm(channel)
                continue
            if payload == probe:
                self._answered[channel] = self._heard
                continue
            self.messages_in += 1
            try:
                envelope = decode(payload)
            except ValueError as exc:
                self.malformed += 1
                self._log.warning(
                    "dropped a malformed envelope (%d so far): %s", self.malformed, exc
                )
                continue
            if envelope.origin == self.node and not envelope.offset:
                continue  # local members got it when it was published (numbered: not yet)
            try:
                self._deliver(envelope)
            except Exception:
                self.deliver_errors += 1
                self._log.exception("delivering an envelope from node %s failed", envelope.origin)

    # Publishing ----------------------------------------------------------------------------

    def publish_nowait(self, channel: str, envelope: Envelope) -> None:
        """Queue ``envelope`` without yielding (from synchronous code)."""
        self._enqueue(channel, envelope, None)

    async def publish(self, channel: str, envelope: Envelope) -> None:
        """Queue ``envelope`` for ``channel``; envelopes leave in the order they were queued.

        Never waits on the backend: while it is down (or ``max_pending`` envelopes are queued)
        the envelope is dropped, logged and counted. When the writer is idle, yield once so it
        sends now instead of after the caller's burst (other nodes then deliver in parallel);
        while it is busy, envelopes gather into its next batch.
        """
        await self._queued(self._enqueue(channel, envelope, None))

    async def append(self, channel: str, item: Append) -> bool:
        """Queue a message of a room with history (``publish``'s rules): the backend numbers,
        keeps and publishes it, and every node, this one too, delivers it from its
        subscription, so all see one order. False when it was dropped."""
        queued = self._enqueue(channel, item, None)
        await self._queued(queued)
        return queued

    async def _queued(self, queued: bool) -> None:
        if queued and self._writer_idle:
            self._writer_idle = False
            await asyncio.sleep(0)

    async def publish_wait(self, channel: str, envelope: Envelope) -> int:
        """Queue ``envelope`` and wait (at most ``publish_timeout``) for its receiver count."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if not self._enqueue(channel, envelope, future):
            return 0
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.publish_timeout)
        except asyncio.TimeoutError:
            self._log.error(
                "publish to %s not confirmed within %.1fs", channel, self.publish_timeout
            )
            return 0

    def _enqueue(
        self,
        channel: str,
        envelope: Envelope | Append | bytes,
        future: asyncio.Future[int] | None,
    ) -> bool:
        if envelope is self._probe:  # ahead of any backlog, never refused for it
            self._pending.appendleft((channel, envelope, None))
            self._pending_event.set()
            self._flushed.clear()
            return True
        kind = (
            "numbered room"
            if isinstance(envelope, Append)
            else "probe"
            if isinstance(envelope, bytes)
            else envelope.kind
        )
        if not self.connected:
            self.publish_dropped += 1
            self._log.warning(
                "backend down (%s): %s message for %s not sent to other nodes (%d so far)",
                self.last_error,
                kind,
                channel,
                self.publish_dropped,
            )
            return False
        if len(self._pending) >= self.max_pending:
            self.publish_dropped += 1
            self._log.error(
                "%d envelopes waiting for the backend: %s message for %s dropped",
                len(self._pending),
                kind,
                channel,
            )
            return False
        item = envelope if isinstance(envelope, (Append, bytes)) else encode(envelope)
        self._pending.append((channel, item, future))
        self._pending_event.set()
        self._flushed.clear()
        return True

    async def _write(self) -> None:
        """The one writer: send queued envelopes in order, many per round trip when possible."""
        pending = self._pending
        while True:
            self._writer_idle = True
            await self._pending_event.wait()
            self._writer_idle = False
            self._pending_event.clear()
            while pending:
                batch: list[tuple[str, bytes | Append, asyncio.Future[int] | None]] = []
                size = 0
                appends = False
                while pending and len(batch) < _BATCH and (not batch or size < _BATCH_BYTES):
                    item = pending.popleft()
                    payload = item[1]
                    if isinstance(payload, bytes):
                        size += len(payload)
                    else:
                        appends = True
                        size += len(payload.head) + len(payload.tail)
                    batch.append(item)
                self._in_flight = len(batch)
                try:
                    counts: list[int | Exception]
                    if appends:
                        assert isinstance(self.backend, RoomHistory)  # checked at start-up
                        write = self.backend.write_many([(c, p) for c, p, _ in batch])
                        counts = await asyncio.wait_for(write, self._write_timeout)
                    else:
                        plain = [(c, p) for c, p, _ in batch if isinstance(p, bytes)]
                        publish = self.backend.publish_many(plain)
                        counts = [*await asyncio.wait_for(publish, self._write_timeout)]
                except Exception as exc:
                    self.publish_errors += 1
                    self.publish_dropped += len(batch)
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self._log.error(
                        "publishing %d envelope(s) failed: %s", len(batch), self.last_error
                    )
                    for _, _, future in batch:
                        if future is not None and not future.done():
                            future.set_result(0)
                    raise
                finally:
                    self._in_flight = 0
                for (channel, payload, future), count in zip(batch, counts, strict=True):
                    if isinstance(count, Exception):  # refused by the backend, link fine
                        self.publish_errors += 1
                        self.publish_dropped += 1
                        self.last_error = f"{type(count).__name__}: {count}"
                        self._log.error("the backend refused a message for %s: %s", channel, count)
                        count = 0
                    elif payload is not self._probe:  # probes are not messages
                        self.messages_out += 1
                    else:
                        self.probes += 1
                        if self._unanswered.get(channel, 0.0) <= self._last_heard(channel):
                            self._unanswered[channel] = time.monotonic()  # the oldest unheard
                    if future is not None and not future.done():
                        future.set_result(count)
            self._flushed.set()

    def _drop_pending(self, why: str) -> None:
        if not self._pending:
            return
        self.publish_dropped += len(self._pending)
        self._log.error("%s: %d queued envelope(s) dropped", why, len(self._pending))
        for _, _, future in self._pending:
            if future is not None and not future.done():
                future.set_result(0)
        self._pending.clear()
        self._flushed.set()

    # History ------------------------------------------------------------------------------

    async def history_read(
        self,
        room: str,
        since: int,
        epoch: str | None,
        limit: int | None,
        ttl: float,
        keep: float,
    ) -> HistoryPage:
        """A room's history from the backend (ConnectionError or TimeoutError when down)."""
        if not self.connected:
            raise ConnectionError(f"backend {self.backend!r} is not connected ({self.last_error})")
        assert isinstance(self.backend, RoomHistory)  # checked at start-up
        return await asyncio.wait_for(
            self.backend.history_read(room, since, epoch, limit, ttl, keep),
            max(5.0, self.publish_timeout),  # a replay of a whole history may be megabytes
        )

    async def _check_positions(self) -> None:
        """Keep the history of rooms with members here alive, and say where each stands."""
        rooms = self._history_rooms()
        if not rooms or not isinstance(self.backend, RoomHistory):
            return
        items = sorted((room, keep, last) for room, (keep, last) in rooms.items())
        positions = await self.backend.history_touch(items)
        self._positioned(dict(zip((room for room, _, _ in items), positions, strict=True)))

    async def locate(self, connection_id: str) -> str | None:
        if not self.connected:
            return None
        try:
            return await asyncio.wait_for(self.backend.locate(connection_id), self.publish_timeout)
        except Exception as exc:
            self.publish_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._log.error("locating connection %s failed: %s", connection_id, self.last_error)
            return None

    def stats(self) -> dict[str, Any]:
        return {
            "type": type(self.backend).__name__,
            "backend": repr(self.backend),
            "node": self.node,
            "connected": self.connected,
            "in_sync": self.ready.is_set(),
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "channels": len(self._active),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "publish_errors": self.publish_errors,
            "publish_dropped": self.publish_dropped,
            "pending": len(self._pending) + self._in_flight,  # queued or being written
            "deaf_events": self.deaf_events,
            "probes": self.probes,
            "silent_seconds": round(time.monotonic() - self._heard, 3) if self.connected else None,
            "malformed_envelopes": self.malformed,
            "presence_errors": self.presence_errors,
            "deliver_errors": self.deliver_errors,
        }
