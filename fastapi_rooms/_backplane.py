"""Cross-process delivery: envelopes, subscriptions, reconnection and the connection directory.

The manager owns membership; this module keeps the backend's subscriptions equal to the rooms
that have a local member, moves envelopes, and makes every failure visible (logged, counted,
in ``stats()``) while local delivery goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .backends.base import Backend

__all__ = ["Backplane", "Envelope", "decode", "encode"]

_log = logging.getLogger("fastapi_rooms.backplane")

_MAGIC = b"FR1"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message between nodes: kind ``room`` / ``all`` / ``conn``, target, excluded ids."""

    origin: str
    kind: str
    target: str
    exclude: tuple[str, ...]
    data: str | bytes


def encode(envelope: Envelope) -> bytes:
    """``FR1`` + 2-byte header length + JSON header + payload (never pickle)."""
    header: dict[str, Any] = {
        "o": envelope.origin,
        "k": envelope.kind,
        "t": envelope.target,
        "b": isinstance(envelope.data, bytes),
    }
    if envelope.exclude:
        header["x"] = list(envelope.exclude)
    raw = json.dumps(header, separators=(",", ":")).encode()
    if len(raw) > 0xFFFF:
        raise ValueError(
            f"envelope header of {len(raw)} bytes exceeds 65535 (too many excluded ids)"
        )
    body = envelope.data if isinstance(envelope.data, bytes) else envelope.data.encode()
    return _MAGIC + len(raw).to_bytes(2, "big") + raw + body


def decode(payload: bytes) -> Envelope:
    """Parse an envelope; ValueError says what was expected and what arrived."""
    if not payload.startswith(_MAGIC):
        raise ValueError(f"expected an envelope starting with {_MAGIC!r}, got {payload[:8]!r}")
    if len(payload) < 5:
        raise ValueError(f"envelope of {len(payload)} bytes is too short")
    size = int.from_bytes(payload[3:5], "big")
    if len(payload) < 5 + size:
        raise ValueError(f"envelope header claims {size} bytes, only {len(payload) - 5} present")
    try:
        header = json.loads(payload[5 : 5 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"envelope header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ValueError(f"envelope header should be an object, got {type(header).__name__}")
    origin, kind, target = header.get("o"), header.get("k"), header.get("t")
    exclude = header.get("x", [])
    if (
        not isinstance(origin, str)
        or kind not in ("room", "all", "conn")
        or not isinstance(target, str)
    ):
        raise ValueError(f"envelope header lacks a valid origin, kind or target: {header!r}")
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        raise ValueError(f"envelope 'x' should be a list of ids, got {exclude!r}")
    body = payload[5 + size :]
    data: str | bytes
    if header.get("b"):
        data = bytes(body)
    else:
        try:
            data = body.decode()
        except UnicodeDecodeError:
            raise ValueError("envelope text payload is not UTF-8") from None
    return Envelope(origin, kind, target, tuple(exclude), data)


class Backplane:
    """Runs one node's side of the backend: listener, subscriptions, directory heartbeat."""

    def __init__(
        self,
        backend: Backend,
        *,
        node: str,
        prefix: str,
        deliver: Callable[[Envelope], None],
        directory_ttl: float = 30.0,
        publish_timeout: float = 1.0,
        backoff: tuple[float, float] = (0.1, 5.0),
    ) -> None:
        self.backend = backend
        self.node = node
        self.prefix = prefix
        self._deliver = deliver
        self.directory_ttl = directory_ttl
        self.publish_timeout = publish_timeout
        self._backoff = backoff
        self.all_channel = f"{prefix}:all"
        self.node_channel = f"{prefix}:node:{node}"
        self._wanted: set[str] = {self.all_channel, self.node_channel}
        self._active: set[str] = set()
        self._changed = asyncio.Event()
        self._local_ids: set[str] = set()
        self._register: set[str] = set()
        self._unregister: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self.connected = False
        self.ready = asyncio.Event()  # set while connected and subscriptions are in sync
        self.reconnects = 0
        self.last_error: str | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.publish_errors = 0
        self.malformed = 0
        self.deliver_errors = 0

    # Channels ------------------------------------------------------------------------------

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}:room:{room}"

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

    def _kick(self) -> None:
        self.ready.clear()
        self._changed.set()

    async def sync(self, timeout: float = 5.0) -> None:
        """Wait until the backend's subscriptions and directory match local state."""
        await asyncio.wait_for(self.ready.wait(), timeout)

    # Lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name=f"fastapi_rooms backplane {self.node}")]

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                _log.exception("backplane task failed while stopping")
        self._tasks = []
        if self.connected and self._local_ids:
            try:
                await asyncio.wait_for(
                    self.backend.unregister(self._local_ids, self.node), self.publish_timeout
                )
            except Exception as exc:
                _log.warning("could not clear the connection directory at shutdown: %r", exc)
        try:
            await self.backend.disconnect()
        except Exception as exc:
            _log.warning("backend disconnect failed: %r", exc)
        self.connected = False
        self.ready.clear()

    async def _run(self) -> None:
        """Connect, subscribe, listen; on failure back off (capped, jittered) and start over."""
        delay = self._backoff[0]
        down_since: float | None = None
        while self._running:
            try:
                await self.backend.connect()
                self._active = set()
                self._register |= self._local_ids  # the directory may have expired meanwhile
                await self._reconcile()
                self.connected = True
                if down_since is not None:
                    _log.warning(
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
                self.last_error = f"{type(exc).__name__}: {exc}"
                if down_since is None:
                    down_since = time.monotonic()
                    _log.error("backend %r connection lost: %s", self.backend, self.last_error)
                else:
                    _log.info("backend %r still down: %s", self.backend, self.last_error)
                self.reconnects += 1
                try:
                    await self.backend.disconnect()
                except Exception as disconnect_exc:
                    _log.debug("disconnect after failure: %r", disconnect_exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, self._backoff[1])

    async def _serve(self) -> None:
        """Listen and keep subscriptions and the directory in sync until something fails."""
        listener = asyncio.get_running_loop().create_task(self._listen())
        try:
            heartbeat_at = time.monotonic() + self.directory_ttl / 3
            while True:
                timeout = max(0.0, heartbeat_at - time.monotonic())
                waiter = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait(
                    {listener, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                waiter.cancel()
                if listener in done:
                    listener.result()  # raises what broke the listener
                    raise ConnectionError("backend listener ended")
                if time.monotonic() >= heartbeat_at:
                    self._register |= self._local_ids
                    heartbeat_at = time.monotonic() + self.directory_ttl / 3
                await self._reconcile()
        finally:
            listener.cancel()
            # What broke the listener was raised above, or the loop is being cancelled.
            with contextlib.suppress(BaseException):
                await listener

    async def _reconcile(self) -> None:
        self._changed.clear()
        backend = self.backend
        for channel in sorted(self._wanted - self._active):
            await backend.subscribe(channel)
            self._active.add(channel)
        for channel in sorted(self._active - self._wanted):
            await backend.unsubscribe(channel)
            self._active.discard(channel)
        if self._register:
            ids, self._register = self._register, set()
            await backend.register(ids, self.node, self.directory_ttl)
        if self._unregister:
            ids, self._unregister = self._unregister, set()
            await backend.unregister(ids, self.node)
        if not self._changed.is_set():
            self.ready.set()

    async def _listen(self) -> None:
        async for _channel, payload in self.backend.listen():
            self.messages_in += 1
            try:
                envelope = decode(payload)
            except ValueError as exc:
                self.malformed += 1
                _log.warning("dropped a malformed envelope (%d so far): %s", self.malformed, exc)
                continue
            if envelope.origin == self.node:
                continue  # local members got it when it was published
            try:
                self._deliver(envelope)
            except Exception:
                self.deliver_errors += 1
                _log.exception("delivering an envelope from node %s failed", envelope.origin)

    # Publishing ----------------------------------------------------------------------------

    async def publish(self, channel: str, envelope: Envelope) -> int:
        """Publish, failing fast: skipped while disconnected, bounded by publish_timeout."""
        if not self.connected:
            self.publish_errors += 1
            _log.warning(
                "backend down (%s): %s not published to other nodes", self.last_error, envelope.kind
            )
            return 0
        try:
            receivers = await asyncio.wait_for(
                self.backend.publish(channel, encode(envelope)), self.publish_timeout
            )
        except Exception as exc:
            self.publish_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.error("publish to %s failed: %s", channel, self.last_error)
            return 0
        self.messages_out += 1
        return receivers

    async def locate(self, connection_id: str) -> str | None:
        if not self.connected:
            return None
        try:
            return await asyncio.wait_for(self.backend.locate(connection_id), self.publish_timeout)
        except Exception as exc:
            self.publish_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.error("locating connection %s failed: %s", connection_id, self.last_error)
            return None

    def stats(self) -> dict[str, Any]:
        return {
            "type": type(self.backend).__name__,
            "backend": repr(self.backend),
            "node": self.node,
            "connected": self.connected,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "channels": len(self._active),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "publish_errors": self.publish_errors,
            "malformed_envelopes": self.malformed,
            "deliver_errors": self.deliver_errors,
        }
