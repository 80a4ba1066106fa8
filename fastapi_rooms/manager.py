"""RoomManager: delivery, presence and lifecycle over a registry of connections and rooms."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, KeysView, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocket as StarletteWebSocket
from typing_extensions import Unpack

from .backends import Backend, backend_from_url
from .backends.base import Append, RoomHistory
from .backplane import Backplane, Envelope
from .backplane import encode as encode_envelope
from .backplane.envelope import numbered_prefix
from .connection import Connection
from .encoding import Frame, default_max_message_bytes, encode, json_dumps, oversize, room_name
from .errors import BackendUnavailable, CloseCode, ConfigurationError, JoinRefused, MessageTooBig
from .history import History, HistoryPage, Position
from .logs import NodeLogger
from .namespaces import JoinPolicy, Namespace, NamespaceOptions, Namespaces
from .outbound import Overflow
from .protocol import Shutdown, event_json
from .registry import Registry
from .streams import Streams
from .websocket import WebSocket

__all__ = ["RoomManager"]

_log = logging.getLogger("fastapi_rooms")

Exclude = str | Iterable[str] | None
_UNSET: Any = object()


class RoomManager:
    """Connections by id, rooms of ids, and broadcasts that never wait on a slow member.

    ``backend=None`` keeps everything in this process; ``"redis://host:6379/0"`` (or a backend
    object) spreads rooms, broadcasts and sends by id across processes and hosts. Each
    connection has a bounded outbound buffer of ``max_buffer`` frames; ``overflow`` says what
    happens to a member whose buffer is full: ``"close"`` it with 1013 (default) or ``"drop"``
    the frame for it. ``start()`` waits up to ``startup_timeout`` seconds for the backend.
    ``authorize_join``, ``max_room_members`` and ``presence_events`` are the rules of rooms
    that match no declared ``namespace()``; ``strict_namespaces=True`` refuses such rooms.
    ``deaf_after``: with a backend, seconds without anything arriving on its subscription
    (this node's own probes, sent every third of it, included) after which the node takes it
    for dead and reconnects.
    ``history_size``/``history_ttl``: the messages every room keeps for recovery, and for
    how long (0: no history; a namespace may say otherwise). With a backend, the backend
    keeps them (a TTL is then required) and numbers each room's messages for every node.
    """

    def __init__(
        self,
        backend: str | Backend | None = None,
        *,
        max_buffer: int = 1024,
        overflow: Overflow = "close",
        max_message_bytes: int | None = None,
        json_dumps: Callable[[Any], str] = json_dumps,
        shutdown_timeout: float = 5.0,
        startup_timeout: float = 5.0,
        prefix: str = "fastapi_rooms",
        node_id: str | None = None,
        node_ttl: float = 30.0,
        deaf_after: float = 3.0,
        authorize_join: JoinPolicy | None = None,
        max_rooms_per_connection: int | None = None,
        max_room_members: int | None = None,
        presence_events: bool = False,
        strict_namespaces: bool = False,
        history_size: int = 0,
        history_ttl: float | None = None,
    ) -> None:
        if isinstance(backend, str):
            backend = backend_from_url(backend, prefix=prefix)
        elif backend is not None and not isinstance(backend, Backend):
            raise TypeError(
                f"backend should be None, a URL or a Backend, got {type(backend).__name__}"
            )
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, got {max_buffer}")
        if overflow not in ("close", "drop"):
            raise ValueError(f"overflow must be 'close' or 'drop', got {overflow!r}")
        self.max_buffer = max_buffer
        self.overflow: Overflow = overflow
        self.max_message_bytes = (
            default_max_message_bytes() if max_message_bytes is None else max_message_bytes
        )
        self.shutdown_timeout = shutdown_timeout
        self.startup_timeout = startup_timeout
        self._dumps = json_dumps
        self._registry = registry = Registry()
        self._connections = registry.connections
        self._rooms = registry.rooms
        self._users = registry.users
        self._sockets: set[WebSocket] = set()  # every open socket the library serves
        self._registered: dict[WebSocket, int] = {}  # socket -> ids it is registered under
        self._handlers = 0
        self._handlers_idle = asyncio.Event()
        self._handlers_idle.set()
        self._started = False
        self._draining = False
        self._drain_task: asyncio.Task[int] | None = None
        self._delivered = 0
        self._dropped = 0
        self._discarded = 0
        self._closes: Counter[int] = Counter()
        self._history = History(in_use=registry.rooms.__contains__)
        self._streams = Streams()  # rooms whose history the backend keeps, as seen here
        self._resyncs = 0
        self._published = 0  # broadcasts, publishes and sends made here
        self._too_big = 0  # messages from other nodes over this node's size limit
        self._recoveries: Counter[str] = Counter()  # rejoins with since: recovered or not
        self._observe_fanout: Callable[[float], None] | None = None  # set by metrics
        self._fanout = 0  # fan-out passes in progress (a close during one is handled after it)
        self._deferred: list[tuple[str, WebSocket]] = []
        self._running_deferred = False
        self.max_rooms_per_connection = max_rooms_per_connection
        self.namespaces = Namespaces(
            Namespace(
                "*",
                authorize_join=authorize_join,
                max_members=max_room_members,
                presence_events=presence_events,
                history_size=history_size,
                history_ttl=history_ttl,
            ),
            strict=strict_namespaces,
        )
        """The declared namespaces and the default for rooms matching none."""
        self.node_ttl = node_ttl
        self.connections: Mapping[str, WebSocket] = registry.connections_view()
        """id -> WebSocket, read-only (``.get``, ``len``, ``.items()`` as in Gobstopper's guide)."""
        self.rooms: Mapping[str, KeysView[str]] = registry.rooms_view()
        """room -> set-like view of connection ids, read-only."""
        self.node_id = node_id or uuid.uuid4().hex[:12]
        """This process's id among the nodes sharing the backend."""
        self._log = NodeLogger(_log, self.node_id)
        self.backplane: Backplane | None = (
            None
            if backend is None
            else Backplane(
                backend,
                node=self.node_id,
                prefix=prefix,
                deliver=self._deliver_remote,
                positioned=self._positioned,
                history_rooms=self._history_rooms,
                directory_ttl=node_ttl,
                deaf_after=deaf_after,
            )
        )

    # Namespaces ---------------------------------------------------------------------------

    def namespace(self, pattern: str, /, **options: Unpack[NamespaceOptions]) -> Namespace:
        """Declare a kind of room: ``namespace("chat:{name}", message=ChatMessage)``.

        Options are ``Namespace``'s fields. Rooms take the first declared pattern they match.
        """
        namespace = Namespace(pattern, **options)
        self._check_history(namespace)
        return self.namespaces.add(namespace)

    def _check_history(self, namespace: Namespace) -> None:
        """With a backend, history is kept there: it must support it, and keys must expire."""
        backplane = self.backplane
        size, ttl = self.namespaces.history(namespace)
        if backplane is None or not size:
            return
        if not isinstance(backplane.backend, RoomHistory):
            raise ConfigurationError(
                f"rooms {namespace.pattern!r} keep history, but the backend "
                f"{type(backplane.backend).__name__} cannot keep it (no write_many, "
                "history_read, history_touch)"
            )
        if ttl is None:
            raise ConfigurationError(
                f"rooms {namespace.pattern!r} keep history in the backend: set history_ttl "
                "(seconds) so that it expires there"
            )

    @property
    def authorize_join(self) -> JoinPolicy | None:
        """The join policy of rooms matching no namespace."""
        return self.namespaces.default.authorize_join

    @authorize_join.setter
    def authorize_join(self, policy: JoinPolicy | None) -> None:
        self.namespaces.default = replace(self.namespaces.default, authorize_join=policy)

    @property
    def max_room_members(self) -> int | None:
        """The member limit of rooms matching no namespace."""
        return self.namespaces.default.max_members

    @max_room_members.setter
    def max_room_members(self, limit: int | None) -> None:
        self.namespaces.default = replace(self.namespaces.default, max_members=limit)

    @property
    def presence_events(self) -> bool:
        """Whether rooms matching no namespace announce joins and leaves."""
        return self.namespaces.default.presence_events

    @presence_events.setter
    def presence_events(self, enabled: bool) -> None:
        self.namespaces.default = replace(self.namespaces.default, presence_events=enabled)

    # Connections --------------------------------------------------------------------------

    def wrap(self, websocket: Any) -> WebSocket:
        """This library's WebSocket for a Starlette one: the same object, adopted in place."""
        if isinstance(websocket, WebSocket):
            return websocket
        if not isinstance(websocket, StarletteWebSocket):
            raise TypeError(f"expected a WebSocket, got {type(websocket).__name__}")
        return WebSocket.adopt(
            websocket,
            max_message_bytes=self.max_message_bytes,
            max_buffer=self.max_buffer,
            overflow=self.overflow,
        )

    def add_connection(
        self, connection_id: str, websocket: Any, *, user_id: str | None = None
    ) -> WebSocket:
        """Register a connection (ours or a Starlette WebSocket) under ``connection_id``.

        ``user_id`` makes it one of that user's connections (``send_to_user``, presence,
        ``authorize_join``). A Starlette WebSocket becomes this library's in place, so the
        endpoint's own ``send_text`` keeps order with broadcasts and its ``receive_text()``
        seeing the disconnect takes the connection out of every room.
        """
        ws = self.wrap(websocket)
        current = self._connections.get(connection_id)
        if current is not None:
            if current is ws:
                return ws
            raise ValueError(
                f"connection id {connection_id!r} is already registered to another WebSocket; "
                "remove_connection() it first or use a unique id (for example uuid4())"
            )
        if ws.closed:
            raise ValueError(f"cannot add connection {connection_id!r}: its WebSocket is closed")
        first_of_user = self._registry.add(connection_id, ws, user_id)
        self._registered[ws] = self._registered.get(ws, 0) + 1
        self._sockets.add(ws)
        backplane = self.backplane
        if backplane is not None:
            backplane.add_local(connection_id)
            if first_of_user:
                backplane.want(backplane.user_channel(user_id))  # type: ignore[arg-type]
        # a partial, not a closure: about 0.2 KB less per connection
        ws._on_closed((self, connection_id), functools.partial(self._closed, connection_id))
        return ws

    def user_of(self, connection_id: str) -> str | None:
        """The user a connection belongs to, if any."""
        return self._registry.user_of.get(connection_id)

    def _closed(self, connection_id: str, ws: WebSocket) -> None:
        """Close listener of a registered connection: handled after any fan-out in progress,
        so every member sees a room's messages (presence events included) in one order."""
        if self._fanout or self._running_deferred:
            self._deferred.append((connection_id, ws))
            return
        self._forget_closed(connection_id, ws)

    def _forget_closed(self, connection_id: str, ws: WebSocket) -> None:
        self._closes[ws.close_code or CloseCode.ABNORMAL] += 1
        self._discarded += ws.outbound.discarded
        if ws.close_code == CloseCode.TRY_AGAIN_LATER:
            self._log.warning(
                "connection %s closed: its outbound buffer overflowed",
                connection_id,
                extra={"connection_id": connection_id},
            )
        if self._connections.get(connection_id) is ws:
            self.remove_connection(connection_id)

    def remove_connection(self, connection_id: str) -> None:
        """Forget a connection and take it out of every room (idempotent)."""
        ws = self._connections.get(connection_id)
        if ws is None:
            return
        ws._off_closed((self, connection_id))
        for room in tuple(self._registry.memberships.get(connection_id, ())):
            self._left(room, connection_id)  # while its user is known: the leave event names it
        removed = self._registry.remove(connection_id)
        last_of_user = None if removed is None else removed[2]
        backplane = self.backplane
        if backplane is not None:
            backplane.remove_local(connection_id)
            if last_of_user is not None:
                backplane.unwant(backplane.user_channel(last_of_user))
        left = self._registered.get(ws, 1) - 1  # O(1): this ran for every close, over all
        if left:
            self._registered[ws] = left
        else:
            self._registered.pop(ws, None)
            self._sockets.discard(ws)

    @asynccontextmanager
    async def connect(
        self,
        websocket: Any,
        *,
        connection_id: str | None = None,
        user_id: str | None = None,
    ) -> AsyncIterator[Connection]:
        """``async with manager.connect(websocket) as conn:`` accept (if needed), register,
        and always remove the connection at the end, whatever ends the block."""
        ws = self.wrap(websocket)
        if not ws.accepted:
            await ws.accept()
        if user_id is None:
            user_id = getattr(ws, "user_id", None)
        cid = connection_id or uuid.uuid4().hex
        self.add_connection(cid, ws, user_id=user_id)
        try:
            yield Connection(self, cid, ws, user_id)
        finally:
            if self._connections.get(cid) is ws:  # not a reconnect that reused the id
                self.remove_connection(cid)

    # Rooms --------------------------------------------------------------------------------

    def join_room(self, connection_id: str, room: str, *, meta: Any = None) -> None:
        """Add a registered connection to ``room`` (created on first join).

        ``meta`` (JSON-able) is shown in the room's presence. Raises ``JoinRefused`` when
        the room's namespace refuses the connection's user (or it has none), a room limit is
        reached, or (strict namespaces) the room matches no namespace. With a backend,
        messages from other nodes may take a moment to arrive: ``await join(...)`` returns
        once they do.
        """
        room = room_name(room)
        ws = self._connections.get(connection_id)
        if ws is None:
            raise KeyError(
                f"connection {connection_id!r} is not registered (closed, or never added): "
                "call add_connection() before join_room()"
            )
        rooms = self._registry.memberships[connection_id]
        new = room not in rooms
        namespace = self._check_join(connection_id, room, len(rooms)) if new else None
        # Encode what the join will send before changing anything: a meta that cannot be
        # encoded, or would make the presence event too big, refuses the join cleanly.
        info = (
            None
            if self.backplane is None
            else self._dumps(self._presence_info(room, connection_id, meta)).encode()
        )
        announcement = (
            self._presence_frame(room, "join", connection_id, meta)
            if namespace is not None and namespace.presence_events
            else None
        )
        if self._registry.join(connection_id, room, meta) and self.backplane is not None:
            self.backplane.want(self.backplane.room_channel(room))
        if self.backplane is not None and info is not None:
            self.backplane.presence_add(room, connection_id, info)
        if announcement is not None:
            self._announce(room, connection_id, announcement)

    async def join(
        self, connection_id: str, room: str, *, meta: Any = None, timeout: float | None = None
    ) -> None:
        """``join_room``, then wait until messages published on any node reach the room here.

        Without a backend this returns at once. With one it waits up to ``timeout`` (default:
        the backend's publish timeout) and logs a warning if the backend is not there yet.
        """
        self.join_room(connection_id, room, meta=meta)
        backplane = self.backplane
        if backplane is None or not backplane.connected:
            return
        try:
            await backplane.subscribed(
                backplane.room_channel(room_name(room)),
                backplane.publish_timeout if timeout is None else timeout,
            )
        except asyncio.TimeoutError:
            self._log.warning(
                "room %r not yet subscribed on the backend", room, extra={"room": room}
            )

    def _check_join(self, connection_id: str, room: str, joined: int) -> Namespace:
        """The room's namespace, once it lets the connection in (JoinRefused otherwise)."""
        namespace = self.namespaces.require(room)
        namespace.check_join(self._registry.user_of.get(connection_id), room)
        limit = self.max_rooms_per_connection
        if limit is not None and joined >= limit:
            raise JoinRefused(
                "too_many_rooms", f"a connection may be in at most {limit} rooms; leave one first"
            )
        limit = namespace.max_members
        if limit is not None and len(self._rooms.get(room, ())) >= limit:
            raise JoinRefused("room_full", f"room {room!r} is full ({limit} members)")
        return namespace

    def leave_room(self, connection_id: str, room: str) -> None:
        """Take a connection out of ``room``; the room disappears when empty (idempotent)."""
        room = room_name(room)
        rooms = self._registry.memberships.get(connection_id)
        if rooms is not None and room in rooms:
            self._left(room, connection_id)

    def _left(self, room: str, connection_id: str) -> None:
        emptied, meta = self._registry.leave(connection_id, room)
        backplane = self.backplane
        if backplane is not None:
            if self._streams:
                self._streams.leave(room, connection_id, emptied)
            if emptied:
                backplane.unwant(backplane.room_channel(room))
            backplane.presence_remove(room, connection_id)
        namespace = self.namespaces.resolve(room)
        if namespace is not None and namespace.presence_events:
            try:
                frame = self._presence_frame(room, "leave", connection_id, meta)
            except (ValueError, TypeError) as exc:  # a meta that fit the join by a byte or two
                self._dropped += 1
                self._log.error(
                    "presence leave event for %s in %r not sent: %s", connection_id, room, exc
                )
            else:
                self._announce(room, connection_id, frame)

    def get_room_connections(self, room: str) -> set[str]:
        """A copy of the ids in ``room`` (empty when there is no such room)."""
        members = self._rooms.get(room_name(room))
        return set(members) if members else set()

    def get_connection_rooms(self, connection_id: str) -> set[str]:
        """A copy of the rooms ``connection_id`` is in."""
        return set(self._registry.memberships.get(connection_id, ()))

    # Presence and users -------------------------------------------------------------------

    def _presence_info(self, room: str, connection_id: str, meta: Any = _UNSET) -> dict[str, Any]:
        return {
            "connection_id": connection_id,
            "user_id": self._registry.user_of.get(connection_id),
            "meta": self._registry.meta.get((room, connection_id)) if meta is _UNSET else meta,
            "node": self.node_id,
        }

    def _presence_frame(self, room: str, event: str, connection_id: str, meta: Any) -> Frame:
        """The encoded ``presence`` event (ValueError when it would exceed the size limit)."""
        return self.encode(
            {
                "type": "presence",
                "event": event,
                "room": room,
                "connection_id": connection_id,
                "user_id": self._registry.user_of.get(connection_id),
                "meta": meta,
            }
        )

    def _announce(self, room: str, connection_id: str, frame: Frame) -> None:
        """A presence event to the room's other members on every node (``presence_events``)."""
        members = self._rooms.get(room)
        if members:
            self._deliver(members, frame, connection_id)
        if self.backplane is not None:
            envelope = Envelope(self.node_id, "room", room, (connection_id,), frame.data)
            self.backplane.publish_nowait(self.backplane.room_channel(room), envelope)

    async def presence(self, room: str) -> list[dict[str, Any]]:
        """Who is in ``room``, on every node with a backend, grouped by user.

        Each entry is ``{"user_id": ..., "connections": [{"connection_id", "meta", "node"}]}``;
        connections without a user are one entry each with ``user_id`` None. With a backend
        that does not answer, only this node's members are listed (and the error is logged).
        """
        room = room_name(room)
        entries = {cid: self._presence_info(room, cid) for cid in self._rooms.get(room, ())}
        if self.backplane is not None:
            for cid, raw in (await self.backplane.presence(room)).items():
                if cid in entries:
                    continue
                try:
                    info = json.loads(raw)
                    if not isinstance(info, dict):
                        raise ValueError(f"expected an object, got {type(info).__name__}")
                except ValueError as exc:
                    self.backplane.malformed += 1
                    self._log.warning("ignored a malformed presence entry for %s: %s", cid, exc)
                    continue
                info["connection_id"] = cid
                entries[cid] = info
        return _group_by_user(entries.values())

    async def send_to_user(self, user_id: str, message: Any) -> bool:
        """Hand ``message`` to every connection of ``user_id``, on every node with a backend.

        False when no node has a connection of that user.
        """
        frame = self.encode(message)
        conns = self._users.get(user_id)
        if conns:
            self._deliver(conns, frame, None)
        if self.backplane is None:
            return bool(conns)
        envelope = Envelope(self.node_id, "user", user_id, (), frame.data)
        channel = self.backplane.user_channel(user_id)
        return await self.backplane.publish_wait(channel, envelope) > 0 or bool(conns)

    # Delivery -----------------------------------------------------------------------------

    def encode(self, message: Any) -> Frame:
        """Encode once: str as text, bytes as binary, anything else as JSON text."""
        if self._dumps is json_dumps or isinstance(message, (str, bytes, bytearray, memoryview)):
            return encode(message, self.max_message_bytes)
        return encode(self._dumps(message), self.max_message_bytes)

    def _deliver(self, members: dict[str, WebSocket], frame: Frame, exclude: Exclude) -> int:
        observe = self._observe_fanout
        started = time.perf_counter() if observe is not None else 0.0
        event = frame.asgi
        delivered = 0
        self._fanout += 1
        try:
            if exclude is None:
                targets = tuple(members.values())
                for ws in targets:
                    if ws.outbound.offer(event):
                        delivered += 1
            else:
                skip = {exclude} if isinstance(exclude, str) else set(exclude)
                targets = tuple(ws for cid, ws in members.items() if cid not in skip)
                for ws in targets:
                    if ws.outbound.offer(event):
                        delivered += 1
        finally:
            self._fanout -= 1
        self._delivered += delivered
        self._dropped += len(targets) - delivered
        if self._deferred and not self._fanout and not self._running_deferred:
            self._run_deferred()
        if observe is not None:
            observe(time.perf_counter() - started)
        return delivered

    def _run_deferred(self) -> None:
        """Close listeners that fired during a fan-out pass, now that it is over: one loop,
        not a recursion (a leave event's fan-out may find more dead members)."""
        self._running_deferred = True
        try:
            while self._deferred:
                connection_id, ws = self._deferred.pop(0)
                try:
                    self._forget_closed(connection_id, ws)
                except Exception:
                    self._log.exception("removing closed connection %s failed", connection_id)
        finally:
            self._running_deferred = False

    async def broadcast_to_room(self, room: str, message: Any, *, exclude: Exclude = None) -> int:
        """Hand ``message`` to every member of ``room``; returns how many took it.

        Returns without waiting for any socket: a member with a full buffer gets the overflow
        policy. ``exclude`` is an id or ids to skip (for example the sender). A Pydantic model
        sent to a room whose namespace declares a ``message`` type must be valid as that type
        (ValueError otherwise, and with strict namespaces for a room matching none).
        """
        room = room_name(room)
        if isinstance(message, BaseModel):
            message = self._checked(room, message)
        return await self._send_frame(room, self.encode(message), exclude)

    async def _send_frame(self, room: str, frame: Frame, exclude: Exclude) -> int:
        self._published += 1
        publish = self._remote("room", room, frame, exclude)
        members = self._rooms.get(room)
        delivered = self._deliver(members, frame, exclude) if members else 0
        if publish is not None:
            await publish()
        return delivered

    async def publish(
        self, room: str, data: Any, *, sender: str | None = None, exclude: Exclude = None
    ) -> int:
        """Send ``data`` to ``room`` as the ready endpoint's ``message`` event.

        ``data`` (a model instance or any JSON-able value) is validated against the room's
        namespace ``message`` type and encoded once; ``ValidationError`` when it does not fit.
        ``sender`` is the ``from`` its members see (None: the server). Returns how many took it.
        With strict namespaces, a room matching none is a ValueError. In a room with history
        on a backend, ``BackendUnavailable`` when the backend cannot take it (nobody got it).
        """
        room = room_name(room)
        namespace = self.namespaces.resolve(room)
        if namespace is None:
            raise ValueError(f"room {room!r} matches no namespace, and namespaces are strict")
        if namespace.adapter is not None:
            data = namespace.validate(data)
        return await self._publish(room, data, sender, exclude, namespace)

    async def _publish(
        self,
        room: str,
        data: Any,
        sender: str | None,
        exclude: Exclude,
        namespace: Namespace | None = None,
    ) -> int:
        """The ``message`` event (``protocol.MessageEvent``) of already-validated ``data``;
        in a room with history it carries the room's next ``offset`` and is kept."""
        namespaces = self.namespaces
        size, ttl = (
            namespaces.room_history(room) if namespace is None else namespaces.history(namespace)
        )
        event = {"type": "message", "room": room, "from": sender, "data": data}
        if not size:
            return await self.broadcast_to_room(room, event, exclude=exclude)
        # The frame with its offset is head + offset + tail: encoded once, numbered later.
        text = self.encode(event).data
        if not isinstance(text, str) or not text.rstrip().endswith("}"):
            raise ValueError(f"json_dumps should give a JSON object as text, got {text[:40]!r}")
        head, tail = text.rstrip()[:-1] + ',"offset":', "}"
        over = oversize(head, self.max_message_bytes - 17)  # 17: the widest offset, and "}"
        if over:
            raise MessageTooBig(over + 17, self.max_message_bytes)
        backplane = self.backplane
        if backplane is None:
            offset = self._history.append(room, size, ttl, lambda n: f"{head}{n}{tail}")
            return await self._send_frame(room, Frame(f"{head}{offset}{tail}"), exclude)
        skip: tuple[str, ...] = ()
        if exclude is not None:
            skip = (exclude,) if isinstance(exclude, str) else tuple(exclude)
        prefix = numbered_prefix(Envelope(self.node_id, "room", room, skip, ""))
        self._published += 1
        keep = self._keep(ttl)
        item = Append(room, prefix, head, tail, size, ttl or 0.0, keep)
        # Every node, this one too, hands it on once the backend has numbered it.
        if not await backplane.append(backplane.room_channel(room), item):
            why = (
                f"which is unreachable ({backplane.last_error})"
                if not backplane.connected
                else f"whose queue is full ({backplane.max_pending} messages)"
            )
            raise BackendUnavailable(
                f"the message to {room!r} was not sent: its history is kept by the backend, {why}"
            )
        members = self._rooms.get(room, {})
        return len(members) - len(set(skip).intersection(members))

    def catch_up(
        self, room: str, since: tuple[int, str] | None = None
    ) -> tuple[Position, list[str], bool] | None:
        """A room's position and, with ``since=(offset, epoch)``, the frames after it and
        whether they are all of them (``recovered``). None when the room keeps no history.

        Call it right after the join, without awaiting in between, and hand the frames to the
        connection before anything else: then they and the live messages follow each other
        without a gap or a duplicate."""
        room = room_name(room)
        size, ttl = self.namespaces.room_history(room)
        if not size:
            return None
        if since is None:
            return self._history.position(room, ttl), [], False
        page = self._history.since(room, since[0], since[1], ttl)
        if not page.complete:
            return page.position, [], False
        return page.position, page.frames, True

    async def join_recovering(
        self,
        connection_id: str,
        room: str,
        *,
        meta: Any = None,
        since: tuple[int, str] | None = None,
    ) -> tuple[Position, list[str], bool] | None:
        """``join``, then, in a room with history, its position and the frames to hand the
        connection ahead of any live message: the ones after ``since=(offset, epoch)`` when
        they are all kept (then ``recovered`` is True), and, with a backend, the live ones
        that arrived during the history read. None for a room without history, and for a
        connection closed with ``CloseCode.RESYNC`` because the backend could not answer.

        A connection already in the room gets its position and nothing to replay.
        """
        room = room_name(room)
        member = connection_id in self._rooms.get(room, ())
        size, ttl = self.namespaces.room_history(room)
        backplane = self.backplane
        if not size or backplane is None:
            await self.join(connection_id, room, meta=meta)
            # no await since the join: the position read now is the one live messages follow
            caught = self.catch_up(room, None if member else since)
            if since is not None and caught is not None:
                self._recoveries["recovered" if caught[2] else "not_recovered"] += 1
            return caught
        keep = self._keep(ttl)
        if member:  # it gets every message already: where it stands, nothing to replay
            await self.join(connection_id, room, meta=meta)
            position = self._streams.position(room, connection_id)
            if position is None:
                try:
                    position = (
                        await backplane.history_read(room, 0, None, 0, ttl or 0.0, keep)
                    ).position
                except Exception as exc:
                    self._unavailable(room, connection_id, exc)
                    return None
            return position, [], False
        self._streams.hold(room, connection_id)  # live messages wait for the history read
        try:
            self.join_room(connection_id, room, meta=meta)
        except BaseException:
            self._streams.leave(room, connection_id, room not in self._rooms)
            raise
        try:
            # Redis must have confirmed the subscription before the read: then every message
            # after the position read is on its way here.
            if not backplane.connected:
                raise ConnectionError(f"backend down ({backplane.last_error})")
            await backplane.subscribed(backplane.room_channel(room), backplane.publish_timeout)
            page = await backplane.history_read(
                room,
                0 if since is None else since[0],
                None if since is None else since[1],
                0 if since is None else None,
                ttl or 0.0,
                keep,
            )
        except asyncio.CancelledError:
            self.leave_room(connection_id, room)  # nothing may stay held for it
            raise
        except Exception as exc:
            self._unavailable(room, connection_id, exc)
            return None
        released = self._streams.release(room, connection_id, page.position)
        if released is None:
            self._resync(
                room,
                set(self._rooms.get(room, ())) - {connection_id},
                ("messages arriving during a join did not follow its history read"),
            )
            return None
        live, stale = released
        if stale:
            self._resync(room, {connection_id}, "the room's history was lost")
        recovered = since is not None and page.complete
        if since is not None:
            self._recoveries["recovered" if recovered else "not_recovered"] += 1
        frames = (
            [*page.frames, *(frame.data for frame in live)]
            if recovered
            else [frame.data for frame in live]
        )
        return page.position, frames, recovered

    async def history(
        self, room: str, *, since: int = 0, limit: int = 100, epoch: str | None = None
    ) -> HistoryPage:
        """The room's kept messages after offset ``since`` of ``epoch`` (default: the
        current one), oldest first, at most ``limit``.

        ``complete`` is False when some messages after ``since`` are no longer kept (or the
        epoch is another);
        LookupError for a room that keeps no history."""
        room = room_name(room)
        size, ttl = self.namespaces.room_history(room)
        if not size:
            raise LookupError(f"room {room!r} keeps no history (history_size is 0)")
        backplane = self.backplane
        if backplane is None:
            return self._history.since(room, since, epoch, ttl, limit)
        keep = self._keep(ttl)
        return await backplane.history_read(room, since, epoch, limit, ttl or 0.0, keep)

    def _checked(self, room: str, message: BaseModel) -> Any:
        """A model sent to ``room``, validated against its namespace's ``message`` type."""
        namespace = self.namespaces.resolve(room)
        if namespace is None:
            raise ValueError(f"room {room!r} matches no namespace, and namespaces are strict")
        if namespace.adapter is None:
            return message
        try:  # its fields, not the instance (which Pydantic would take as it is)
            namespace.adapter.validate_python(message.model_dump())
        except ValidationError as exc:
            raise ValueError(
                f"room {room!r} (namespace {namespace.pattern!r}) takes "
                f"{getattr(namespace.message, '__name__', namespace.message)}, got "
                f"{type(message).__name__} that does not fit: {exc}"
            ) from None
        return message

    async def broadcast_to_all(self, message: Any, *, exclude: Exclude = None) -> int:
        """Hand ``message`` to every registered connection; returns how many took it here.

        With a backend, every other node delivers it to its own connections too.
        """
        frame = self.encode(message)
        self._published += 1
        publish = self._remote("all", "", frame, exclude)
        delivered = self._deliver(self._connections, frame, exclude)
        if publish is not None:
            await publish()
        return delivered

    async def send_to(self, connection_id: str, message: Any) -> bool:
        """Hand ``message`` to one connection, here or (with a backend) on its node.

        False when no node has it.
        """
        frame = self.encode(message)
        ws = self._connections.get(connection_id)
        if ws is not None:
            return self._deliver({connection_id: ws}, frame, None) == 1
        backplane = self.backplane
        if backplane is None:
            return False
        node = await backplane.locate(connection_id)
        if node is None or node == self.node_id:
            return False
        envelope = Envelope(self.node_id, "conn", connection_id, (), frame.data)
        return await backplane.publish_wait(backplane.node_channel_of(node), envelope) > 0

    def _remote(
        self, kind: str, target: str, frame: Frame, exclude: Exclude
    ) -> Callable[[], Awaitable[None]] | None:
        """The publish to other nodes (None without a backend), checked before any delivery.

        ValueError when the excluded ids do not fit an envelope's header.
        """
        backplane = self.backplane
        if backplane is None:
            return None
        skip: tuple[str, ...] = ()
        if exclude is not None:
            skip = (exclude,) if isinstance(exclude, str) else tuple(exclude)
            encode_envelope(Envelope(self.node_id, kind, target, skip, b""))  # size check
        channel = backplane.room_channel(target) if kind == "room" else backplane.all_channel
        envelope = Envelope(self.node_id, kind, target, skip, frame.data)
        return functools.partial(backplane.publish, channel, envelope)

    def _deliver_numbered(self, envelope: Envelope, frame: Frame | None) -> None:
        """A message of a room whose history the backend keeps, from any node (this one
        too), in offset order: to the members here that are not joining or covered."""
        room = envelope.target
        members = self._rooms.get(room)
        if not members:
            return
        skip, spared = self._streams.arrive(
            room, envelope.offset, envelope.epoch, frame, envelope.exclude
        )
        if spared is not None:
            self._resync(room, spared, f"messages before offset {envelope.offset} were missed")
            members = self._rooms.get(room)
            if not members:
                return
        if frame is None:  # too big for this node: seen, not delivered
            return
        if skip:
            skip.update(envelope.exclude)
            self._deliver(members, frame, skip)
        else:
            self._deliver(members, frame, envelope.exclude or None)

    def _resync(self, room: str, spared: set[str], why: str) -> None:
        """Close the members of ``room`` here (but ``spared``) with ``CloseCode.RESYNC``:
        they reconnect, rejoin with their last offset, and recover what they missed."""
        members = self._rooms.get(room)
        closing = [cid for cid in (members or ()) if cid not in spared]
        if not closing:
            return
        self._log.warning(
            "room %r: %s; closing %d member(s) here with %d so they recover",
            room,
            why,
            len(closing),
            CloseCode.RESYNC,
            extra={"room": room},
        )
        for cid in closing:
            self._resync_one(room, cid, why)

    def _unavailable(self, room: str, connection_id: str, exc: Exception) -> None:
        """A join whose history read failed: the connection retries later (4000)."""
        self._log.error(
            "room %r: reading its history for %s failed (%r); closing it with %d",
            room,
            connection_id,
            exc,
            CloseCode.RESYNC,
            extra={"room": room, "connection_id": connection_id},
        )
        self._resync_one(room, connection_id, "room history unavailable")

    def _resync_one(self, room: str, connection_id: str, why: str) -> None:
        ws = self._connections.get(connection_id)
        if ws is None:
            return
        self._resyncs += 1
        ws._abort(CloseCode.RESYNC, f"room {room}: {why}; reconnect to recover")

    def _positioned(self, positions: dict[str, Position | None]) -> None:
        """The backend's positions of the rooms with history here (a heartbeat)."""
        for room, position in positions.items():
            if self._streams.positioned(room, position):
                why = (
                    "the room's history is gone"
                    if position is None
                    else f"the backend is at offset {position.offset}, which never arrived"
                )
                self._resync(room, self._streams.holding(room), why)

    def _keep(self, ttl: float | None) -> float:
        """How long the backend keeps a room's offset and epoch: its TTL, and at least one
        directory lifetime, so a heartbeat refreshes it before it expires."""
        return max(ttl or 0.0, self.node_ttl)

    def _history_sizes(self) -> tuple[int, int]:
        """Rooms whose history is known here, and messages this process keeps for them."""
        if self.backplane is not None:
            return len(self._streams), 0  # the backend keeps the messages
        return len(self._history), self._history.kept()

    def _history_rooms(self) -> dict[str, tuple[float, int]]:
        """Rooms with history and members here: how long the backend keeps each, and the
        latest offset delivered here."""
        out = {}
        for room in self._streams.rooms():
            if room in self._rooms:
                ttl = self.namespaces.room_history(room)[1]
                out[room] = (self._keep(ttl), self._streams.last(room))
        return out

    def _deliver_remote(self, envelope: Envelope) -> None:
        """An envelope from another node: deliver to the local connections it names."""
        size = oversize(envelope.data, self.max_message_bytes)
        if size:
            self._log.warning(
                "dropped a %d-byte message from node %s: over the %d-byte limit",
                size,
                envelope.origin,
                self.max_message_bytes,
            )
            self._dropped += 1
            self._too_big += 1
            if envelope.offset and envelope.target in self._rooms:  # still counts as seen
                self._deliver_numbered(envelope, None)
            return
        frame = Frame(envelope.data)
        if envelope.offset:
            self._deliver_numbered(envelope, frame)
            return
        exclude = envelope.exclude or None
        if envelope.kind == "room":
            members = self._rooms.get(envelope.target)
            if members:
                self._deliver(members, frame, exclude)
        elif envelope.kind == "all":
            self._deliver(self._connections, frame, exclude)
        elif envelope.kind == "user":
            conns = self._users.get(envelope.target)
            if conns:
                self._deliver(conns, frame, None)
        else:
            ws = self._connections.get(envelope.target)
            if ws is not None:
                self._deliver({envelope.target: ws}, frame, None)

    # Lifecycle ----------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._started

    def not_ready(self) -> str | None:
        """Why this node should not be sent new connections now, or None when it should:
        not started, draining, or its backend down (deaf counts as down)."""
        if not self._started:
            return "not started"
        if self._draining:
            return "draining"
        backplane = self.backplane
        if backplane is not None and not backplane.connected:
            return f"backend not connected ({backplane.last_error})"
        return None

    async def start(self) -> None:
        """Called by the app's lifespan (through the rooms router): connects the backend.

        Waits up to ``startup_timeout`` for the backend, so a broadcast made right after
        start-up reaches other nodes; past that, start-up goes on (logged) and the backplane
        keeps connecting in the background.
        """
        backplane = self.backplane
        for namespace in (self.namespaces.default, *self.namespaces):
            self._check_history(namespace)
        self._started = True
        if backplane is None:
            return
        await backplane.start()
        try:
            await asyncio.wait_for(backplane.ready.wait(), self.startup_timeout)
        except asyncio.TimeoutError:
            self._log.error(
                "backend %r not connected %.1fs after start-up (%s); messages to other nodes "
                "are dropped until it is",
                backplane.backend,
                self.startup_timeout,
                backplane.last_error,
            )

    async def sync(self, timeout: float = 5.0, *, room: str | None = None) -> None:
        """Wait until the backend reflects local joins and leaves (TimeoutError otherwise).

        With ``room``, wait only until that room's channel is subscribed. Returns at once
        without a backend. ``await manager.join(...)`` does this for one room.
        """
        backplane = self.backplane
        if backplane is None:
            return
        if room is None:
            await backplane.sync(timeout)
        else:
            await backplane.subscribed(backplane.room_channel(room_name(room)), timeout)

    def _track(self, ws: WebSocket) -> None:
        """A router handler started serving ``ws``."""
        self._sockets.add(ws)
        self._handlers += 1
        self._handlers_idle.clear()

    def _untrack(self, ws: WebSocket) -> None:
        self._handlers -= 1
        if ws not in self._registered:
            self._sockets.discard(ws)
        if self._handlers == 0:
            self._handlers_idle.set()

    @property
    def draining(self) -> bool:
        """True once ``drain()`` began: readiness fails and new connections are refused."""
        return self._draining

    def start_drain(self, grace: float = 30.0, spread: float = 5.0) -> asyncio.Task[int]:
        """Begin draining now (see ``drain``): readiness and new handshakes refuse at once,
        the rest runs in a task. Called again, it returns the drain already under way."""
        if grace < 0 or spread < 0:
            raise ValueError(f"grace and spread must be >= 0 seconds, got {grace}, {spread}")
        if self._drain_task is None:
            self._draining = True
            self._drain_task = asyncio.get_running_loop().create_task(
                self._drain(grace, spread), name="fastapi_rooms drain"
            )
        return self._drain_task

    async def drain(self, grace: float = 30.0, spread: float = 5.0) -> int:
        """Hand this node's clients to other nodes before it stops (a deploy, a scale-down).

        Readiness fails and new handshakes get 503 from now on. Every client of the ready
        endpoint is sent ``{"type": "shutdown", "reconnect_after_ms": ...}`` with a random
        delay up to ``spread`` seconds, so they do not all reconnect at once; what is still
        open after ``grace`` seconds is closed with 1001. Returns how many connections the
        server closed itself.
        """
        return await self.start_drain(grace, spread)

    async def _drain(self, grace: float, spread: float) -> int:
        told = 0
        for ws in [ws for ws in self._sockets if ws.accepted and not ws.closed]:
            if ws._speaks_protocol:
                event = Shutdown(
                    type="shutdown",
                    reconnect_after_ms=int(random.uniform(0, spread) * 1000),
                    code=CloseCode.GOING_AWAY,
                    reason="server draining",
                )
                told += ws.outbound.offer(Frame(event_json(event)).asgi, force=True)
        self._log.warning(
            "draining: new connections refused; %d client(s) told to reconnect within %.1fs; "
            "the rest closed in %.1fs",
            told,
            spread,
            grace,
        )
        # Wait for every socket this library serves (the app's own endpoints' too) to close.
        still_open = {ws for ws in self._sockets if ws.accepted and not ws.closed}
        all_closed = asyncio.Event()

        def closed(ws: WebSocket) -> None:
            still_open.discard(ws)
            if not still_open:
                all_closed.set()

        for ws in list(still_open):  # a listener on a closed socket runs at once
            ws._on_closed((self, "drain"), closed)
        if not still_open:
            all_closed.set()
        try:
            with contextlib.suppress(asyncio.TimeoutError):  # the grace is over: close the rest
                await asyncio.wait_for(all_closed.wait(), grace)
        finally:
            for ws in list(still_open):
                ws._off_closed((self, "drain"))
        left = [ws for ws in self._sockets if ws.accepted and not ws.closed]
        results = await asyncio.gather(
            *(ws.close(CloseCode.GOING_AWAY, "server draining") for ws in left),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                self._log.warning("closing a connection while draining failed: %r", result)
        self._log.warning(
            "drained: %d connection(s) were still open and closed with 1001", len(left)
        )
        return len(left)

    async def stop(self) -> None:
        """Close open connections with 1001; wait for handlers up to ``shutdown_timeout``."""
        self._started = False
        if self._drain_task is not None and not self._drain_task.done():
            self._drain_task.cancel()  # stopping closes everything anyway
        sockets = [ws for ws in self._sockets if not ws.closed]
        if sockets:
            self._log.info(
                "shutting down: closing %d WebSocket connection(s) with 1001", len(sockets)
            )
            results = await asyncio.gather(
                *(
                    ws.close(CloseCode.GOING_AWAY, "server shutting down")
                    for ws in sockets
                    if ws.accepted
                ),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, BaseException):
                    self._log.warning("closing a connection at shutdown failed: %r", result)
        try:
            await asyncio.wait_for(self._handlers_idle.wait(), self.shutdown_timeout)
        except asyncio.TimeoutError:
            self._log.warning(
                "%d WebSocket handler(s) still running %.1fs after shutdown began",
                self._handlers,
                self.shutdown_timeout,
            )
        for ws in list(self._sockets):
            ws.outbound.cancel()
        if self.backplane is not None:
            await self.backplane.stop()
        discarded = sum(ws.outbound.discarded for ws in self._sockets)
        if discarded:
            self._log.warning("shutdown: %d buffered message(s) were never delivered", discarded)

    def stats(self) -> dict[str, Any]:
        """Counters for monitoring (served by ``GET /stats``)."""
        return {
            "connections": len(self._connections),
            "rooms": len(self._rooms),
            "room_sizes": {room: len(members) for room, members in self._rooms.items()},
            "open_sockets": len(self._sockets),
            "handlers": self._handlers,
            "messages_delivered": self._delivered,
            "messages_dropped": self._dropped,
            "messages_discarded_at_close": self._discarded,
            "buffered": sum(ws.buffered for ws in self._connections.values()),
            "slow_consumer_closes": self._closes[CloseCode.TRY_AGAIN_LATER],
            "resync_closes": self._resyncs,
            "closes_by_code": {str(code): n for code, n in sorted(self._closes.items())},
            "backend": (
                {"type": "local", "connected": True}
                if self.backplane is None
                else self.backplane.stats()
            ),
        }


def _group_by_user(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    users: dict[str, dict[str, Any]] = {}
    anonymous: list[dict[str, Any]] = []
    for info in sorted(entries, key=lambda i: str(i.get("connection_id"))):
        conn = {k: info.get(k) for k in ("connection_id", "meta", "node")}
        user_id = info.get("user_id")
        if user_id is None:
            anonymous.append({"user_id": None, "connections": [conn]})
        else:
            users.setdefault(str(user_id), {"user_id": user_id, "connections": []})[
                "connections"
            ].append(conn)
    return [users[u] for u in sorted(users)] + anonymous
