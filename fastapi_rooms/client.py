"""A Python client of the ready endpoint: rooms, reconnect with backoff, recovery by offset.

    async with RoomsClient("ws://127.0.0.1:8000/ws", token=token) as client:
        await client.join("chat:lobby", on_message=print)
        await client.publish("chat:lobby", {"text": "hi"})

It reconnects after a lost connection (exponential backoff with full jitter), rejoins every room
with the last offset it saw, and delivers each message once: replayed ones after a recovery,
duplicates dropped. ``on_reload(room)`` is called when a room's history could not cover the
gap (``recovered: false``): the app should reload that room's state. Needs ``websockets``
(the ``client`` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = ["JoinError", "RoomsClient"]

_log = logging.getLogger("fastapi_rooms.client")

OnMessage = Callable[[dict[str, Any]], "Awaitable[None] | None"]
OnRoom = Callable[[str], "Awaitable[None] | None"]


class JoinError(Exception):
    """The server refused a join: ``code`` (``forbidden``, ``room_full``, ...) and why."""

    def __init__(self, room: str, code: str, message: str) -> None:
        super().__init__(f"join {room!r} refused ({code}): {message}")
        self.room, self.code, self.message = room, code, message


@dataclass
class _Room:
    on_message: OnMessage | None
    meta: Any
    offset: int | None = None  # the last offset seen (rooms with history)
    epoch: str | None = None
    presence: dict[str, dict[str, Any]] = field(default_factory=dict)  # connection id -> entry


class RoomsClient:
    """One connection to a rooms router's ready endpoint, kept up until ``close()``.

    ``token`` goes in the ``token`` query parameter. ``backoff``/``max_backoff``: the first
    and the longest wait before a reconnect (each wait is random up to the current step).
    ``ping_interval``: seconds between application pings (None: none), for idle timeouts.
    ``offline_queue``: publishes kept while disconnected and sent on reconnect (0: publishing
    while disconnected raises ConnectionError).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        ping_interval: float | None = 20.0,
        offline_queue: int = 0,
        on_reload: OnRoom | None = None,
        on_error: OnMessage | None = None,
        open_timeout: float = 10.0,
    ) -> None:
        if token is not None:
            parts = urlsplit(url)
            query = "&".join(q for q in (parts.query, urlencode({"token": token})) if q)
            url = urlunsplit(parts._replace(query=query))
        self.url = url
        self.backoff, self.max_backoff = backoff, max_backoff
        self.ping_interval = ping_interval
        self.offline_queue = offline_queue
        self.on_reload, self.on_error = on_reload, on_error
        self.open_timeout = open_timeout
        self.connection_id: str | None = None
        self.connects = 0  # how many times a connection was opened
        self._next_delay: float | None = None  # a "shutdown" event's reconnect delay, seconds
        self._rooms: dict[str, _Room] = {}
        self._ws: ClientConnection | None = None
        self._ready = asyncio.Event()  # connected and welcomed: joins may be sent
        self._live = asyncio.Event()  # and every room rejoined, the offline queue sent
        # joins waiting for their answer, in the order sent (the server answers in order)
        self._pending: deque[tuple[str, asyncio.Future[dict[str, Any]]]] = deque()
        self._queue: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # Lifecycle ----------------------------------------------------------------------------------

    async def __aenter__(self) -> RoomsClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Connect (waiting up to ``open_timeout`` for the first connection)."""
        self._next_delay = None
        self._task = asyncio.create_task(self._run(), name="fastapi_rooms.client")
        try:
            await asyncio.wait_for(self._live.wait(), self.open_timeout)
        except asyncio.TimeoutError:
            await self.close()
            raise ConnectionError(f"could not connect to {self.url}") from None

    async def close(self) -> None:
        self._closing = True
        self._next_delay = None
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def connected(self) -> bool:
        """Connected, and every room rejoined (publishes go straight out)."""
        return self._live.is_set()

    # Rooms --------------------------------------------------------------------------------------

    async def join(
        self, room: str, on_message: OnMessage | None = None, *, meta: Any = None
    ) -> dict[str, Any]:
        """Join ``room`` (and rejoin it after every reconnect); the ``joined`` event.

        ``on_message(event)`` gets each ``message`` event of the room once. JoinError when
        the server refuses."""
        self._rooms[room] = _Room(on_message, meta)
        try:
            return await self._join(room)
        except BaseException:
            self._rooms.pop(room, None)
            raise

    async def leave(self, room: str) -> None:
        self._rooms.pop(room, None)
        for name, reply in [p for p in self._pending if p[0] == room]:
            self._pending.remove((name, reply))
            if not reply.done():
                reply.set_exception(ConnectionError(f"left {room!r} before it was joined"))
        if self.connected:
            await self._send({"type": "leave", "room": room})

    async def publish(self, room: str, data: Any, *, exclude_self: bool = False) -> None:
        """Publish to a joined room; while disconnected, queued (``offline_queue``) or
        ConnectionError."""
        text = json.dumps(
            {"type": "publish", "room": room, "data": data, "exclude_self": exclude_self}
        )
        if self.connected and self._ws is not None:
            await self._ws.send(text)
        elif len(self._queue) < self.offline_queue:
            self._queue.append(text)
        else:
            raise ConnectionError("not connected, and the offline queue is full (or off)")

    def position(self, room: str) -> tuple[int, str] | None:
        """The last offset seen in ``room`` and its epoch (rooms with history)."""
        state = self._rooms.get(room)
        if state is None or state.offset is None or state.epoch is None:
            return None
        return state.offset, state.epoch

    def presence(self, room: str) -> dict[str, dict[str, Any]]:
        """Members that joined ``room`` since this client did, by connection id (from the
        room's presence events)."""
        state = self._rooms.get(room)
        return dict(state.presence) if state is not None else {}

    # Internals ----------------------------------------------------------------------------------

    async def _join(self, room: str) -> dict[str, Any]:
        if self._closing:
            raise ConnectionError("the client is closed")
        await self._ready.wait()
        state = self._rooms.get(room)
        if state is None:  # left meanwhile
            raise ConnectionError(f"left {room!r} before it was joined")
        request: dict[str, Any] = {"type": "join", "room": room}
        if state.meta is not None:
            request["meta"] = state.meta
        if state.offset is not None and state.epoch is not None:
            request["since"] = {"offset": state.offset, "epoch": state.epoch}
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((room, reply))
        await self._send(request)
        return await reply

    async def _send(self, message: dict[str, Any]) -> None:
        if self._ws is None:
            raise ConnectionError("not connected")
        await self._ws.send(json.dumps(message))

    async def _run(self) -> None:
        attempt = 0
        loop = asyncio.get_running_loop()
        while not self._closing:
            opened = None
            try:
                async with connect(self.url, open_timeout=self.open_timeout) as ws:
                    self._ws = ws
                    self.connects += 1
                    opened = loop.time()
                    await self._serve(ws)
            except (OSError, ConnectionClosed, InvalidStatus, asyncio.TimeoutError) as exc:
                _log.info("rooms connection lost or refused: %r", exc)
            except Exception:  # a broken handshake or welcome: log it, and try again
                _log.exception("rooms connection failed")
            finally:
                self._ws = None
                self._ready.clear()
                self._live.clear()
                self._fail_pending()
            if opened is not None and loop.time() - opened > _STABLE:
                attempt = 0  # it held for a while: start the backoff over
            if self._closing:
                break
            if self._next_delay is not None:  # the server drained: its delay, not a backoff
                delay, self._next_delay = self._next_delay, None
                await asyncio.sleep(delay)
                continue
            await self._backoff(attempt)
            attempt += 1

    async def _backoff(self, attempt: int) -> None:
        """The wait before reconnect number ``attempt + 1``: exponential, full jitter."""
        step = min(self.max_backoff, self.backoff * 2**attempt)
        await asyncio.sleep(random.uniform(0, step))

    async def _serve(self, ws: ClientConnection) -> None:
        welcome = json.loads(await ws.recv())
        if not isinstance(welcome, dict) or welcome.get("type") != "welcome":
            raise ValueError(f"expected a welcome event, got {welcome!r:.80}")
        self.connection_id = welcome.get("connection_id")
        reader = asyncio.create_task(self._read(ws))
        pinger = asyncio.create_task(self._ping(ws)) if self.ping_interval else None
        try:
            self._ready.set()
            for room in list(self._rooms):  # rejoin, from where each room was left
                if room not in self._rooms:
                    continue
                try:
                    await self._join(room)
                except JoinError as exc:
                    _log.warning("rejoining %r refused: %s", room, exc)
                    self._rooms.pop(room, None)
            queued, self._queue = self._queue, []
            for text in queued:
                await ws.send(text)
            self._live.set()
            await reader
        finally:
            for task in (reader, pinger):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    async def _ping(self, ws: ClientConnection) -> None:
        assert self.ping_interval is not None
        while True:
            await asyncio.sleep(self.ping_interval)
            await ws.send('{"type":"ping"}')

    def _fail_pending(self) -> None:
        while self._pending:
            _, reply = self._pending.popleft()
            if not reply.done():
                reply.set_exception(ConnectionError("connection lost"))

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                try:
                    event = json.loads(raw)
                except ValueError:
                    _log.warning("ignored a frame that is not JSON: %.80r", raw)
                    continue
                if isinstance(event, dict):
                    await self._dispatch(event)
        finally:
            self._ready.clear()
            self._live.clear()
            self._fail_pending()

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        room = event.get("room")
        state = self._rooms.get(room) if isinstance(room, str) else None
        if kind == "message" and state is not None:
            offset = event.get("offset")
            if isinstance(offset, int):
                if state.offset is not None and offset <= state.offset:
                    return  # seen already (a replay racing a live copy)
                state.offset = offset
            await _call(state.on_message, event)
        elif kind == "joined" and state is not None:
            if "epoch" in event:
                recovered = event.get("recovered")
                if recovered is False and state.offset is not None:
                    await _call(self.on_reload, room)
                if recovered is not True:  # from the room's latest offset on
                    state.offset, state.epoch = event.get("offset", 0), event["epoch"]
            if self._pending and self._pending[0][0] == room:
                _resolve(self._pending.popleft()[1], event)
        elif kind == "presence" and state is not None:
            cid = str(event.get("connection_id"))
            if event.get("event") == "join":
                state.presence[cid] = {"user_id": event.get("user_id"), "meta": event.get("meta")}
            else:
                state.presence.pop(cid, None)
        elif kind == "shutdown":  # the server drains: come back after its delay, elsewhere
            delay = event.get("reconnect_after_ms")
            if isinstance(delay, (int, float)) and not isinstance(delay, bool):
                self._next_delay = max(0.0, delay / 1000)
            else:
                self._next_delay = 0.0
            if self._ws is not None:
                await self._ws.close()
        elif kind == "error":
            code, message = str(event.get("code")), str(event.get("message"))
            if code in _JOIN_REFUSALS and self._pending:  # only a join is refused so
                name, reply = self._pending.popleft()
                if not reply.done():
                    reply.set_exception(JoinError(name, code, message))
                return
            await _call(self.on_error, event)


_STABLE = 10.0  # seconds a connection must hold before the backoff starts over
_JOIN_REFUSALS = frozenset(("forbidden", "room_full", "too_many_rooms", "unknown_namespace"))


def _resolve(reply: asyncio.Future[dict[str, Any]] | None, event: dict[str, Any]) -> None:
    if reply is not None and not reply.done():
        reply.set_result(event)


async def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        result = callback(*args)
        if asyncio.iscoroutine(result):
            await result
    except Exception:
        _log.exception("a rooms client callback raised")
