#!/usr/bin/env python3
"""Fan-out benchmark: deliveries per second to ONE room of N members, variants compared in one run.

    .venv/bin/python benchmarks/fanout.py                 # N=1000, 200 messages, 3 rounds
    .venv/bin/python benchmarks/fanout.py --quick         # smoke run (N=20, 20 messages, 1 round)
    .venv/bin/python benchmarks/fanout.py --n 5000 --rounds 5 --variants plain,rooms
    .venv/bin/python benchmarks/fanout.py \
        --variants plain,rooms,rooms-granian-rsgi,rooms-granian-asgi   # uvicorn vs Granian
    .venv/bin/python benchmarks/fanout.py --variants rooms,rooms-redis-2w --rounds 5  # over Redis
    .venv/bin/python benchmarks/fanout.py --n 100,1000,5000 \
        --variants plain,rooms,gather,rooms-granian-rsgi,picows-raw,socketio,broadcaster  # S1

Each variant is served by its own server subprocess (uvicorn with uvloop, httptools and
websockets-sansio; or Granian, one worker, RSGI or ASGI; or a bare picows server) pinned to one
core, the whole process with every thread; this process is the client, pinned to another core.
Peers: picows-raw (the practical ceiling), python-socketio (the client speaks Engine.IO /
Socket.IO v4 to it) and encode/broadcaster; a variant whose package is missing is skipped,
loudly. With several --n values the whole comparison runs once per N. All servers start
first, N members connect to each and join the room, and a warm-up burst runs. Each round then
measures every variant in turn (order alternating ABC, CBA, ...): one control message makes the
server run B broadcasts back to back, and the client times from sending that message until the
LAST member received the LAST message (deliveries/s = N*B / time); deliveries per server
CPU-second use the serving process's CPU time (all its threads) instead of wall time. Then
single broadcasts, spaced out, give the latency to the last receiver. Ratios to plain and to
rooms (on uvicorn) are paired within a round.

rooms-redis-2w runs two uvicorn processes (both pinned to the server core) sharing the room
through Redis (--redis-url): half the members on each, the burst asked of the first, which
delivers to its members and publishes to Redis; the second delivers what Redis brings it. The
time runs until the last member on either process got the last message.

When all variants' connections at once would exceed the client's open-file limit (20 000 here:
at N=5000, three variants), the comparison at that N runs in groups, each with plain and rooms
(so every ratio to them stays paired within a round) and as many other variants as fit.

Loopback only; every wait is bounded; servers are stopped by PID even on error or Ctrl-C.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from harness import limits
from peer_apps import JOINED, payload, published

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# variant -> (server kind, app in fanout_apps.py)
VARIANTS: dict[str, tuple[str, str]] = {
    "plain": ("uvicorn", "plain_app"),
    "rooms": ("uvicorn", "rooms_app"),
    "gather": ("uvicorn", "gather_app"),
    "rooms-granian-rsgi": ("granian-rsgi", "rooms_rsgi_app"),
    "rooms-granian-asgi": ("granian-asgi", "rooms_app"),
    # The ready protocol's message event (manager.publish), without and with a namespace model.
    "rooms-publish": ("uvicorn", "rooms_publish_app"),
    "rooms-model": ("uvicorn", "rooms_model_app"),
    "rooms-history": ("uvicorn", "rooms_history_app"),
    "rooms-metrics": ("uvicorn", "rooms_metrics_app"),
    # As a new user runs it: one broadcast per event-loop pass (the Gobstopper-style handler).
    "plain-pass": ("uvicorn", "plain_pass_app"),
    "rooms-pass": ("uvicorn", "rooms_pass_app"),
    "rooms-granian-rsgi-default-gc": ("granian-rsgi", "rooms_rsgi_default_gc_app"),
    "rooms-redis-2w": ("uvicorn", "make_rooms_redis_app"),
    # manager.publish over Redis, without and with history kept in Redis (offsets by script).
    "rooms-redis-publish-2w": ("uvicorn", "make_rooms_redis_publish_app"),
    "rooms-redis-history-2w": ("uvicorn", "make_rooms_redis_history_app"),
    # Peers (S1): a bare picows server, python-socketio, encode/broadcaster.
    "picows-raw": ("picows", "picows-raw"),
    "socketio": ("uvicorn", "peer_apps:make_socketio_app"),
    "broadcaster": ("uvicorn", "make_broadcaster_app"),
}
#: What a variant needs beyond the dev extra's basics: (module, distribution, extra). A variant
#: whose module is missing is skipped, with a message, before anything starts.
REQUIRES: dict[str, tuple[str, str, str]] = {
    "rooms-granian-rsgi": ("granian", "granian", "granian"),
    "rooms-granian-asgi": ("granian", "granian", "granian"),
    "rooms-granian-rsgi-default-gc": ("granian", "granian", "granian"),
    "rooms-metrics": ("prometheus_client", "prometheus-client", "metrics"),
    "rooms-redis-2w": ("redis", "redis", "redis"),
    "rooms-redis-publish-2w": ("redis", "redis", "redis"),
    "rooms-redis-history-2w": ("redis", "redis", "redis"),
    "picows-raw": ("picows", "picows", "bench"),
    "socketio": ("socketio", "python-socketio", "bench"),
    "broadcaster": ("broadcaster", "broadcaster", "bench"),
}
#: Variants whose members receive each payload inside a ``message`` event (fanout_apps.published).
PUBLISH_VARIANTS = {"rooms-publish", "rooms-model", "rooms-redis-publish-2w"}
#: Variants whose n-th message published carries offset n (rooms with history).
HISTORY_VARIANTS = {"rooms-history", "rooms-redis-history-2w"}
#: Variants whose members and control speak Socket.IO v4 (over Engine.IO v4, websocket only).
SOCKETIO_VARIANTS = {"socketio"}
SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
#: Kept in every group when the comparison at one N has to be split (see plan_groups).
ANCHORS = ("plain", "rooms")
#: Variants served by several processes sharing the room through Redis: how many processes.
WORKERS = {"rooms-redis-2w": 2, "rooms-redis-publish-2w": 2, "rooms-redis-history-2w": 2}
REDIS_VARIANTS = set(WORKERS)
DEFAULT_VARIANTS = "plain,rooms,gather"
DESCRIPTIONS = {
    "plain": "Starlette/FastAPI, sequential `await ws.send_text(msg)` loop (FastAPI tutorial)",
    "rooms": "fastapi_rooms `await manager.broadcast_to_room(room, msg)`",
    "gather": "Starlette/FastAPI, `asyncio.gather` of `ws.send_text(msg)`",
    "rooms-publish": "fastapi_rooms `await manager.publish(room, {\"text\": msg})`: the ready "
    "protocol's message event, JSON-encoded once, no namespace model",
    "rooms-model": "rooms-publish with `manager.namespace(room, message=Line)`: the data "
    "validated by a Pydantic model (one str field) and dumped before the fan-out",
    "rooms-history": "rooms-publish in a room keeping its last 1000 messages "
    "(`namespace(room, history_size=1000)`): each event numbered and kept, in one process",
    "plain-pass": "plain, with one broadcast per event-loop pass (`await asyncio.sleep(0)` after "
    "each), as when messages come from many client tasks rather than one burst",
    "rooms-pass": "rooms (a Gobstopper-style handler, `broadcast_to_room`) with one broadcast per "
    "event-loop pass: fastapi-rooms as a new user runs it, nothing to cork",
    "rooms-metrics": "rooms with Prometheus metrics on (`create_rooms_router(metrics_url=...)`): "
    "the fan-out time histogram observed per broadcast",
    "rooms-granian-rsgi": "fastapi_rooms, `RSGIApp(app)` under `granian --interface rsgi` (its "
    "defaults: `gc.freeze()` after start-up, first GC threshold 50,000; before issue 16 these "
    "had to be passed as `freeze_gc=True, gc_threshold=50_000`): native "
    "`transport.send_str` per member (RSGIOutbound)",
    "rooms-granian-rsgi-default-gc": "the rooms-granian-rsgi app with Python's default garbage "
    "collector settings: `RSGIApp(app, freeze_gc=False, gc_threshold=None)` (what `RSGIApp(app)` "
    "did before issue 16)",
    "rooms-granian-asgi": "fastapi_rooms, the same app under `granian --interface asgi`",
    "rooms-redis-2w": "fastapi_rooms over Redis, two uvicorn processes on the server core, half "
    "the members on each; the first runs the broadcasts (local delivery + publish), the second "
    "delivers what Redis brings it",
    "rooms-redis-publish-2w": "rooms-redis-2w with `await manager.publish(room, {\"text\": msg})`"
    " (the ready protocol's message event)",
    "rooms-redis-history-2w": "rooms-redis-publish-2w in a room keeping its last 1000 messages in "
    "Redis (`history_size=1000, history_ttl=600`): a Lua script numbers, keeps and publishes "
    "each message; both processes, the publishing one too, deliver it from their subscription",
    "picows-raw": "bare picows server: `transport.send(TEXT, frame)` for every member, "
    "synchronous, C framing, no task per recipient (the practical ceiling)",
    "socketio": "python-socketio AsyncServer (ASGI, websocket transport only): members join with "
    "an event, `await sio.emit('m', msg, room=room)`",
    "broadcaster": "FastAPI chat on encode/broadcaster `Broadcast('memory://')`: a subscriber "
    "(queue + sender task) per connection, `await broadcast.publish(room, msg)`",
}
SERVER_COMMANDS = {
    "uvicorn": "uvicorn --loop uvloop --http httptools --ws websockets-sansio",
    "granian-rsgi": "granian --interface rsgi --workers 1 --loop uvloop (default runtime threads)",
    "granian-asgi": "granian --interface asgi --workers 1 --loop uvloop (default runtime threads)",
    "picows": "python benchmarks/peer_apps.py picows-raw (picows server on uvloop)",
}


@dataclass(frozen=True)
class Target:
    """A goal from an issue, stated for N=1000.

    ``deliveries_per_s``: ``variant``'s deliveries/s over ``base``'s, paired within each round,
    median over rounds, at least ``goal``. ``latency_p99``: ``variant``'s last-receiver p99 over
    ``base``'s (the samples of the rounds where both ran, pooled), at most ``goal``.
    """

    variant: str
    base: str
    goal: float
    metric: str = "deliveries_per_s"
    stretch: bool = False
    issue: str = ""


TARGET_N = 1000
TARGETS = [
    # benchmark suite, scenario S1 (one room, N=1000)
    Target("rooms", "plain", 1.0, issue="S1"),
    Target("rooms", "gather", 2.0, issue="S1"),
    Target("rooms", "broadcaster", 2.5, issue="S1"),
    Target("rooms", "socketio", 5.0, issue="S1"),
    Target("rooms-granian-rsgi", "plain", 1.3, issue="S1"),
    Target("rooms-granian-rsgi", "plain", 1.2, metric="latency_p99", issue="S1"),
    Target("rooms", "picows-raw", 0.8, stretch=True, issue="S1"),
    # earlier issues
    Target("rooms-granian-rsgi", "rooms", 1.2, issue="RSGI"),  # RSGI over rooms on uvicorn
    Target("rooms-redis-2w", "rooms", 0.7, issue="Redis"),  # two processes against one
    Target("rooms-redis-history-2w", "rooms-redis-publish-2w", 0.6, issue="History"),
    Target("rooms-metrics", "rooms", 0.95, issue="Metrics"),
]
JOINED_BYTES = JOINED.encode()
DEFAULT_REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def server_label(variant: str) -> str:
    """The server column: the kind, and for a multi-process variant how many and the backend."""
    kind = VARIANTS[variant][0]
    if variant in WORKERS:
        return f"{WORKERS[variant]}x {kind} + Redis"
    return kind


def server_command_text(variant: str) -> str:
    kind, app = VARIANTS[variant]
    text = SERVER_COMMANDS[kind]
    if kind == "uvicorn" and variant not in WORKERS:
        target = app if ":" in app else f"fanout_apps:{app}"
        factory = " --factory" if target.split(":")[1].startswith("make_") else ""
        text = f"{text}{factory} {target}"
    if variant in WORKERS:
        text = (
            f"{WORKERS[variant]} processes of `{text} --factory fanout_apps:{app}`, all pinned to "
            "the server core; RoomManager(--redis-url, prefix=<unique per run>)"
        )
    return text


# Client side: who received what -------------------------------------------------------------


class Member:
    """One room member on the client: how many payload frames it got, and whether in order.

    ``group``: the index of the server process it is connected to (0 unless the variant runs
    several processes).
    """

    __slots__ = ("conn", "count", "group", "joined", "open")

    def __init__(self, group: int = 0) -> None:
        self.conn: Any = None
        self.count = 0
        self.group = group
        self.joined = False
        self.open = True


class Tracker:
    """Counts frames for every member; completes a phase when every open member reached target.

    Per group (server process) it also notes when that group's last member reached the target.
    """

    def __init__(
        self, n: int, expected: list[bytes], loop: asyncio.AbstractEventLoop, groups: int = 1
    ) -> None:
        self.n = n
        self.groups = groups
        self.group_remaining = [0] * groups
        self.t_group_done = [0.0] * groups
        self.expected = expected
        self.loop = loop
        self.joined = 0
        self.joined_future: asyncio.Future[None] = loop.create_future()
        self.target = 0
        self.remaining = 0
        self.done: asyncio.Future[None] | None = None
        self.t_done = 0.0
        self.mismatches = 0
        self.disconnects = 0
        # Per message: how many members have it, and when the last one got it.
        self.reached = [0] * len(expected)
        self.t_reached = [0.0] * len(expected)

    def arm(self, target: int, members: Sequence[Member]) -> asyncio.Future[None]:
        """Start a phase: done once every open member has received ``target`` payload frames."""
        self.target = target
        self.remaining = sum(1 for m in members if m.open and m.count < target)
        self.group_remaining = [0] * self.groups
        for m in members:
            if m.open and m.count < target:
                self.group_remaining[m.group] += 1
        now = time.perf_counter()
        self.t_group_done = [now if left == 0 else 0.0 for left in self.group_remaining]
        self.done = self.loop.create_future()
        if self.remaining == 0:
            self.t_done = now
            self.done.set_result(None)
        return self.done

    def _member_done(self, member: Member) -> None:
        """``member`` reached the target (or closed before it)."""
        g = member.group
        self.group_remaining[g] -= 1
        if self.group_remaining[g] == 0:
            self.t_group_done[g] = time.perf_counter()
        self.remaining -= 1
        if self.remaining == 0:
            self.t_done = time.perf_counter()
            if self.done is not None and not self.done.done():
                self.done.set_result(None)

    def on_text(self, member: Member, data: bytes) -> None:
        if not member.joined:
            if data == JOINED_BYTES:
                member.joined = True
                self.joined += 1
                if self.joined == self.n and not self.joined_future.done():
                    self.joined_future.set_result(None)
            else:
                self.mismatches += 1
            return
        i = member.count
        if i >= len(self.expected) or data != self.expected[i]:
            self.mismatches += 1  # lost, duplicated or reordered frame
        else:
            reached = self.reached[i] + 1
            self.reached[i] = reached
            if reached == self.n:
                self.t_reached[i] = time.perf_counter()
        i += 1
        member.count = i
        if i == self.target:
            self._member_done(member)

    def on_close(self, member: Member) -> None:
        if not member.open:
            return
        member.open = False
        self.disconnects += 1
        if member.count < self.target and self.done is not None and not self.done.done():
            self._member_done(member)


# Client side: two WebSocket client implementations -----------------------------------------

OnText = Callable[[bytes], None]
OnClose = Callable[[], None]


class PicowsClient:
    """picows: C framing, callbacks, no task per connection (the client of performance.md)."""

    name = "picows"

    def __init__(self) -> None:
        import picows

        self.picows = picows
        text, close = picows.WSMsgType.TEXT, picows.WSMsgType.CLOSE

        class Listener(picows.WSListener):
            def __init__(self, on_text: OnText, on_close: OnClose) -> None:
                self.on_text = on_text
                self.on_close = on_close

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                kind = frame.msg_type
                if kind == text:
                    self.on_text(frame.get_payload_as_bytes())
                elif kind == close:
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()

            def on_ws_disconnected(self, transport: Any) -> None:
                self.on_close()

        self.listener = Listener

    async def connect(self, url: str, on_text: OnText, on_close: OnClose) -> PicowsConn:
        transport, _ = await self.picows.ws_connect(
            lambda: self.listener(on_text, on_close), url, websocket_handshake_timeout=10
        )
        return PicowsConn(transport, self.picows.WSMsgType.TEXT)


class PicowsConn:
    def __init__(self, transport: Any, text: Any) -> None:
        self.transport = transport
        self.text = text

    def send_text(self, text: str) -> None:
        self.transport.send(self.text, text.encode())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.transport.send_close()
        self.transport.disconnect()


class SansioClient:
    """websockets' sans-I/O ClientProtocol in an asyncio.Protocol: the fallback without picows."""

    name = "websockets-sansio"

    async def connect(self, url: str, on_text: OnText, on_close: OnClose) -> SansioConn:
        from websockets.uri import parse_uri

        uri = parse_uri(url)
        loop = asyncio.get_running_loop()
        conn = SansioConn(url, on_text, on_close, loop)
        await loop.create_connection(lambda: conn, uri.host, uri.port)
        await asyncio.wait_for(conn.opened, 10)
        return conn


class SansioConn(asyncio.Protocol):
    def __init__(
        self, url: str, on_text: OnText, on_close: OnClose, loop: asyncio.AbstractEventLoop
    ) -> None:
        from websockets.client import ClientProtocol
        from websockets.frames import Frame, Opcode
        from websockets.uri import parse_uri

        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.frame_type, self.text_op = Frame, Opcode.TEXT
        self.on_text = on_text
        self.on_close = on_close
        self.opened: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, self.frame_type):
                if event.opcode is self.text_op:
                    body = event.data
                    self.on_text(body if type(body) is bytes else bytes(body))
            elif not self.opened.done():  # the handshake response
                if self.proto.handshake_exc is not None:
                    self.opened.set_exception(self.proto.handshake_exc)
                else:
                    self.opened.set_result(None)
        self._flush()

    def _flush(self) -> None:
        assert self.transport is not None
        for chunk in self.proto.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:
                self.transport.close()
        if self.proto.close_expected():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during handshake: {exc}"))
        self.on_close()

    def send_text(self, text: str) -> None:
        self.proto.send_text(text.encode())
        self._flush()

    def close(self) -> None:
        assert self.transport is not None
        with contextlib.suppress(Exception):
            self.proto.send_close(1000)
            self._flush()
        self.transport.close()


def make_client(choice: str) -> PicowsClient | SansioClient:
    if choice in ("auto", "picows"):
        try:
            return PicowsClient()
        except ImportError:
            if choice == "picows":
                raise SystemExit(
                    "--client picows: picows is not installed (pip install picows)"
                ) from None
    return SansioClient()


SIO_PAYLOAD_HEAD = b'42["m","'  # a payload event, as python-socketio encodes it (no spaces)
SIO_PAYLOAD_TAIL = b'"]'


class SocketIOConn:
    """Socket.IO v4 over Engine.IO v4 on one plain WebSocket, on top of a client connection.

    It answers the server's pings (``2`` -> ``3``), connects to the default namespace (``40``)
    when the Engine.IO open packet (``0{...}``) arrives and then, for a member, emits ``join``.
    The harness gets what the other servers send: ``joined``, each payload without its
    ``42["m",...]`` wrapper (so the tracker checks the same sequence), the control's ``reply``
    text; any other packet (disconnect, error, unknown event) as it came, so the tracker counts
    it as a mismatch. ``send_text`` (the control's commands) emits ``control``.
    """

    def __init__(
        self, on_text: OnText, member: str | None, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.on_text = on_text
        self.member = member  # the id to join as; None for the control connection
        self.conn: Any = None
        self.pending: list[str] = []  # what to send before the connection object is known
        self.pongs = 0  # pings from the server answered
        self.ready: asyncio.Future[None] = loop.create_future()  # namespace connected

    def attach(self, conn: Any) -> None:
        self.conn = conn
        for text in self.pending:
            conn.send_text(text)
        self.pending.clear()

    def _send(self, text: str) -> None:
        if self.conn is None:
            self.pending.append(text)
        else:
            self.conn.send_text(text)

    def on_frame(self, data: bytes) -> None:
        if (
            data.startswith(SIO_PAYLOAD_HEAD)
            and data.endswith(SIO_PAYLOAD_TAIL)
            and b"\\" not in data  # nothing JSON-escaped: the string is the bytes in between
        ):
            self.on_text(data[len(SIO_PAYLOAD_HEAD) : -len(SIO_PAYLOAD_TAIL)])
        elif data == b"2":  # Engine.IO ping from the server
            self._send("3")
            self.pongs += 1
        elif data.startswith(b"42"):
            self._event(data)
        elif data.startswith(b"40"):  # connected to the namespace: 40{"sid": ...}
            if self.member is not None:
                self._send("42" + json.dumps(["join", self.member]))
            if not self.ready.done():
                self.ready.set_result(None)
        elif data.startswith(b"0{"):  # Engine.IO open packet
            self._send("40")
        else:
            self.on_text(data)

    def _event(self, data: bytes) -> None:
        try:
            event = json.loads(data[2:])
        except ValueError:
            event = None
        if not isinstance(event, list) or not event:
            self.on_text(data)
            return
        name, args = event[0], event[1:]
        if name == JOINED and not args:
            self.on_text(JOINED_BYTES)
        elif name in ("m", "reply") and len(args) == 1 and isinstance(args[0], str):
            self.on_text(args[0].encode())
        else:
            self.on_text(data)

    def send_text(self, text: str) -> None:
        self._send("42" + json.dumps(["control", text]))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class Control:
    """The benchmark's control connection: commands out, one text reply per command."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[str] = asyncio.Queue()
        self.conn: Any = None

    def on_text(self, data: bytes) -> None:
        self.replies.put_nowait(data.decode())

    def on_close(self) -> None:
        self.replies.put_nowait("closed")

    async def ask(self, command: str, deadline: float) -> str:
        self.conn.send_text(command)
        return await asyncio.wait_for(self.replies.get(), deadline)


# One server, many rounds -----------------------------------------------------------------------


@dataclass
class Settings:
    n: int
    messages: int
    size: int
    warmup: int
    rounds: int
    latency_samples: int
    latency_interval: float
    connect_concurrency: int = 100


@dataclass
class Result:
    variant: str
    round: int
    n: int = 0  # room members
    group: int = 0  # which group of variants, when the comparison at this N was split
    deliveries_per_s: float = 0.0
    burst_seconds: float = 0.0
    server_loop_seconds: float = 0.0
    server_cpu_seconds: float | None = None  # the serving process, all threads
    server_loop_thread_cpu_seconds: float | None = None  # its main (event-loop) thread
    deliveries_per_server_cpu_s: float | None = None
    server_handed: int = 0
    delivered: int = 0
    expected: int = 0
    mismatches: int = 0
    disconnects: int = 0
    latency_ms: list[float] = field(default_factory=list)
    # Each burst message: ms from the burst command until the last member had it.
    burst_message_ms: list[float] = field(default_factory=list)
    loadavg_1m: float | None = None
    error: str | None = None
    # Variants with several server processes (index 0 runs the broadcasts), else empty:
    # seconds until the last member on that process got the burst's last message,
    burst_seconds_by_server: list[float] = field(default_factory=list)
    # each latency sample until the last member on that process had it,
    latency_ms_by_server: list[list[float]] = field(default_factory=list)
    # CPU each process used during the burst, frames each handed to its members,
    server_cpu_seconds_by_server: list[float | None] = field(default_factory=list)
    server_handed_by_server: list[int] = field(default_factory=list)
    # the change of each process's backend counters (messages_in/out, publish_dropped, ...)
    # over the burst, and the CPU the Redis server used during the burst (None if unknown).
    backend_delta_by_server: list[dict[str, int]] = field(default_factory=list)
    redis_cpu_seconds: float | None = None
    # When pinned: how busy each core was during the burst, whoever used it (/proc/stat: user,
    # system, irq, softirq, ... in clock ticks), and the client process's own CPU time.
    server_core_busy_seconds: float | None = None
    client_core_busy_seconds: float | None = None
    client_cpu_seconds: float | None = None
    # Times the client went to sleep waiting for frames during the burst (voluntary context
    # switches): few when frames pile up between its reads, about one per read when it keeps up.
    client_waits: int | None = None


def phase_budget(deliveries: int) -> float:
    """Generous bound for one phase: 20 s plus 1 s per 2000 deliveries (2 k/s is several times
    slower than the slowest peer, python-socketio, at N=1000)."""
    return 20.0 + deliveries / 2000.0


def cpu_seconds(pid: int) -> float | None:
    """CPU time of a process's main thread (Linux schedstat, ns), None elsewhere.

    The main thread runs the event loop under uvicorn and in a Granian worker.
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
CPUSample = tuple[dict[int, int], float]  # ns per live thread, whole process in seconds


def process_cpu(pid: int) -> CPUSample | None:
    """A whole process's CPU time: per live thread (schedstat, ns) and in total (stat, ticks).

    Granian sends from Rust threads, so the loop thread alone would flatter it.
    """
    threads: dict[int, int] = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(OSError, ValueError, IndexError),
                open(f"/proc/{pid}/task/{tid}/schedstat") as f,
            ):
                threads[int(tid)] = int(f.read().split()[0])
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return threads, (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        return None


def voluntary_switches() -> int | None:
    """This process's voluntary context switches so far (its threads included), None if unknown."""
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw)
    except (ImportError, OSError, ValueError):
        return None


def core_busy(cpu: int) -> float | None:
    """Seconds core ``cpu`` has been busy since boot (``/proc/stat``: all but idle and iowait),
    whatever ran there: processes, the kernel's softirq work for loopback TCP, Redis."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    ticks = [int(x) for x in line.split()[1:]]
                    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICKS
    except (OSError, ValueError):
        return None
    return None


def cpu_between(before: CPUSample | None, after: CPUSample | None) -> float | None:
    """Seconds of CPU the process used between two ``process_cpu`` samples.

    Nanosecond schedstat of the threads alive at both samples; when a thread ended meanwhile,
    the coarser process total (clock ticks, which keeps ended threads' time).
    """
    if before is None or after is None:
        return None
    (t0, ticks0), (t1, ticks1) = before, after
    if not t0.keys() <= t1.keys():
        return ticks1 - ticks0
    return sum(ns - t0.get(tid, 0) for tid, ns in t1.items()) / 1e9


class Session:
    """N members of the room plus the control connection(s), on one or more servers, for the run.

    With several servers (``ports``), the members are split into contiguous, nearly equal
    groups, one per server (members 0..N/2-1 on the first of two); every server gets a control
    connection, but only the first one is asked for bursts: the others are asked for stats
    before and after, outside the timed part.
    """

    #: The Tracker (sub)class ``open`` creates (benchmarks/shootout.py uses one that reports
    #: each message as soon as every member has it).
    tracker_class: type[Tracker] = Tracker

    def __init__(
        self,
        variant: str,
        ports: Sequence[int],
        cfg: Settings,
        client: Any,
        redis_pid: int | None = None,
        cores: tuple[int, int] | None = None,
    ) -> None:
        self.variant = variant
        self.socketio = variant in SOCKETIO_VARIANTS
        self.sio_conns: list[SocketIOConn] = []
        self.cores = cores  # (server core, client core) when pinned
        self.bases = [f"ws://127.0.0.1:{port}" for port in ports]
        self.cfg = cfg
        self.client = client
        self.redis_pid = redis_pid
        total = cfg.warmup + cfg.rounds * (cfg.messages + cfg.latency_samples)
        if variant in HISTORY_VARIANTS:  # the n-th message published has offset n
            self.expected = [
                published(payload(seq, cfg.size), seq + 1).encode() for seq in range(total)
            ]
        else:
            wire = published if variant in PUBLISH_VARIANTS else str
            self.expected = [wire(payload(seq, cfg.size)).encode() for seq in range(total)]
        k = len(self.bases)
        self.members = [Member(i * k // cfg.n) for i in range(cfg.n)]
        self.tracker: Tracker | None = None
        self.controls = [Control() for _ in self.bases]
        self.control = self.controls[0]  # the one that runs the bursts
        self.seq = 0  # sequence number of the next message the server will send
        self.t_burst = 0.0  # when the last burst was asked for
        self.connect_seconds = 0.0

    @property
    def multi(self) -> bool:
        return len(self.bases) > 1

    async def connect(
        self, base: str, on_text: OnText, on_close: OnClose, member: str | None = None
    ) -> Any:
        """A member (``member``: its id) or the control connection (None) to server ``base``."""
        if not self.socketio:
            path = "/control" if member is None else f"/members/{member}"
            return await self.client.connect(f"{base}{path}", on_text, on_close)
        sio = SocketIOConn(on_text, member, asyncio.get_running_loop())
        self.sio_conns.append(sio)
        sio.attach(await self.client.connect(f"{base}{SOCKETIO_PATH}", sio.on_frame, on_close))
        if member is None:  # a member's join completes with `joined`; control must be connected
            await asyncio.wait_for(asyncio.shield(sio.ready), 10)
        return sio

    async def open(self) -> None:
        """Connect every member, wait until each was told it joined, connect control, warm up."""
        cfg = self.cfg
        tracker = self.tracker = self.tracker_class(
            cfg.n, self.expected, asyncio.get_running_loop(), groups=len(self.bases)
        )
        limit = asyncio.Semaphore(cfg.connect_concurrency)
        t0 = time.perf_counter()

        async def join(i: int, member: Member) -> None:
            async with limit:
                member.conn = await self.connect(
                    self.bases[member.group],
                    lambda data, m=member: tracker.on_text(m, data),
                    lambda m=member: tracker.on_close(m),
                    f"m{i}",
                )

        await asyncio.gather(*(join(i, m) for i, m in enumerate(self.members)))
        await asyncio.shield(tracker.joined_future)
        self.connect_seconds = time.perf_counter() - t0
        for base, control in zip(self.bases, self.controls, strict=True):
            control.conn = await self.connect(base, control.on_text, control.on_close)
        if cfg.warmup:
            await self.burst(cfg.warmup)

    async def burst(self, count: int) -> tuple[float, str]:
        """Ask for ``count`` broadcasts; seconds until the last member got the last one, reply."""
        assert self.tracker is not None
        start = self.seq
        self.seq += count
        done = self.tracker.arm(start + count, self.members)
        budget = phase_budget(self.cfg.n * count)
        t_start = self.t_burst = time.perf_counter()
        reply = await self.control.ask(f"burst {start} {count} {self.cfg.size}", budget)
        await asyncio.wait_for(asyncio.shield(done), budget)
        return self.tracker.t_done - t_start, reply

    async def all_stats(self) -> list[dict[str, Any]]:
        """Every server's control stats (members, messages_delivered, backend, ...)."""
        return [json.loads(await c.ask("stats", 10)) for c in self.controls]

    async def settled_stats(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """``all_stats`` once no server has an envelope queued or in flight to the backend.

        Members can have every message before the publisher has read Redis's reply to its last
        batch, and only then is that batch counted as out.
        """
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.all_stats()
            if all(not s.get("backend", {}).get("pending") for s in stats):
                return stats
            if time.monotonic() > deadline:
                raise RuntimeError(f"backend still has envelopes pending after {timeout}s")
            await asyncio.sleep(0.005)

    async def measure(self, result: Result, pids: Sequence[int]) -> None:
        """One round: the measured burst, then spaced single broadcasts for latency.

        ``pids``: the processes that serve the connections (a Granian worker, not its parent),
        in server order.
        """
        assert self.tracker is not None
        cfg = self.cfg
        tracker = self.tracker
        mismatches = tracker.mismatches
        start_counts = [m.count for m in self.members]
        stats0 = await self.settled_stats() if self.multi else []
        redis0 = process_cpu(self.redis_pid) if self.redis_pid else None
        cpu0 = [process_cpu(pid) for pid in pids]
        loop0 = [cpu_seconds(pid) for pid in pids]
        cores0 = [core_busy(c) for c in self.cores] if self.cores else []
        client0, waits0 = time.process_time(), voluntary_switches()
        first = self.seq
        elapsed, reply = await self.burst(cfg.messages)
        t_group = [t - self.t_burst for t in tracker.t_group_done]
        client1, waits1 = time.process_time(), voluntary_switches()
        cores1 = [core_busy(c) for c in self.cores] if self.cores else []
        cpu1 = [process_cpu(pid) for pid in pids]
        loop1 = [cpu_seconds(pid) for pid in pids]
        result.client_cpu_seconds = client1 - client0
        if waits0 is not None and waits1 is not None:
            result.client_waits = waits1 - waits0
        busy = [
            None if a is None or b is None else b - a for a, b in zip(cores0, cores1, strict=True)
        ]
        if busy:
            result.server_core_busy_seconds, result.client_core_busy_seconds = busy
        redis1 = process_cpu(self.redis_pid) if self.redis_pid else None
        stats1 = await self.settled_stats() if self.multi else []
        t_reached = tracker.t_reached[first : first + cfg.messages]
        if all(t_reached):  # every member got every message
            result.burst_message_ms = [(t - self.t_burst) * 1000 for t in t_reached]
        result.delivered = sum(m.count - c for m, c in zip(self.members, start_counts, strict=True))
        result.expected = cfg.n * cfg.messages
        result.burst_seconds = elapsed
        result.deliveries_per_s = result.delivered / elapsed if elapsed > 0 else 0.0
        used = [cpu_between(a, b) for a, b in zip(cpu0, cpu1, strict=True)]
        if all(used):
            result.server_cpu_seconds = sum(u for u in used if u)
            result.deliveries_per_server_cpu_s = result.delivered / result.server_cpu_seconds
        if all(x is not None for x in loop0 + loop1):
            result.server_loop_thread_cpu_seconds = sum(
                b - a for a, b in zip(loop0, loop1, strict=True) if a is not None and b is not None
            )
        word, handed, seconds = reply.split()
        if word != "done":
            raise RuntimeError(f"unexpected control reply {reply!r}")
        result.server_handed = int(handed)
        result.server_loop_seconds = float(seconds)
        if self.multi:
            result.burst_seconds_by_server = t_group
            result.server_cpu_seconds_by_server = used
            result.redis_cpu_seconds = cpu_between(redis0, redis1)
            # The first server's reply counts its own members; the others' come from stats.
            result.server_handed_by_server = [int(handed)] + [
                b["messages_delivered"] - a["messages_delivered"]
                for a, b in zip(stats0[1:], stats1[1:], strict=True)
            ]
            result.server_handed = sum(result.server_handed_by_server)
            result.backend_delta_by_server = [
                {
                    key: b["backend"][key] - a["backend"][key]
                    for key in b.get("backend", {})
                    if isinstance(b["backend"][key], int)
                    and not isinstance(b["backend"][key], bool)
                    and isinstance(a["backend"].get(key), int)
                }
                for a, b in zip(stats0, stats1, strict=True)
            ]
            result.latency_ms_by_server = [[] for _ in self.bases]
        for _ in range(cfg.latency_samples):
            await asyncio.sleep(cfg.latency_interval)  # let the server go idle between samples
            latency, _reply = await self.burst(1)
            result.latency_ms.append(latency * 1000)
            if self.multi:
                for g, t in enumerate(tracker.t_group_done):
                    result.latency_ms_by_server[g].append((t - self.t_burst) * 1000)
        result.mismatches = tracker.mismatches - mismatches
        result.disconnects = tracker.disconnects

    async def stats(self) -> dict[str, Any]:
        """The first server's control stats; with several servers, the sum of their members
        and delivery counters, each server's own under ``servers``."""
        if not self.multi:
            stats = dict(json.loads(await self.control.ask("stats", 10)))
            if self.socketio:  # Engine.IO pings the client answered, on every connection
                stats["client_pongs"] = sum(c.pongs for c in self.sio_conns)
            return stats
        each = await self.all_stats()
        total: dict[str, Any] = {
            key: sum(s[key] for s in each)
            for key in ("members", "messages_delivered", "messages_dropped", "buffered")
        }
        total["slow_consumer_closes"] = sum(s["slow_consumer_closes"] for s in each)
        total["servers"] = [{"control": s} for s in each]
        return total

    async def close(self) -> None:
        for control in self.controls:
            if control.conn is not None:
                control.conn.close()
        for member in self.members:
            if member.conn is not None and member.open:
                member.conn.close()
        await asyncio.sleep(0.2)  # let close frames leave before the server is stopped


# Servers ------------------------------------------------------------------------------------


def _child_setup(cpu: int | None) -> Callable[[], None]:
    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        with contextlib.suppress(Exception):  # die with this process, even on SIGKILL (Linux)
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    return setup


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(kind: str, app: str, port: int, n: int) -> list[str]:
    """The command line serving ``app`` (``module:attr``, module ``fanout_apps`` when bare) as
    ``kind`` on 127.0.0.1:``port``; for ``picows``, ``app`` names a peer_apps.py server."""
    target = app if ":" in app else f"fanout_apps:{app}"
    if kind == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", target,
            "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
            "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "5",
        ] + (["--factory"] if target.split(":")[1].startswith("make_") else [])  # fmt: skip
    if kind == "picows":
        return [
            sys.executable, str(HERE / "peer_apps.py"), app, "--host", "127.0.0.1",
            "--port", str(port),
        ]  # fmt: skip
    if kind in ("granian-rsgi", "granian-asgi"):
        # One worker, default runtime threads and mode. Granian admits at most --backpressure
        # connections at once (default 1024, the backlog): raise it only when N needs more.
        return [
            sys.executable, "-m", "granian", "--interface", kind.split("-")[1],
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--loop", "uvloop",
            "--backpressure", str(max(1024, n + 16)), "--log-level", "warning",
            "--no-access-log", "--workers-kill-timeout", "5", target,
        ]  # fmt: skip
    raise ValueError(f"unknown server kind {kind!r}")


def start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot): with the PID, it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def child_pids(pid: int) -> list[tuple[int, int]]:
    """Direct children of ``pid`` as (pid, start time) (Linux /proc), oldest first."""
    found: list[tuple[int, int]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(fields[19]), int(entry)))
    return [(child, started) for started, child in sorted(found)]


class Server:
    """One server process serving a variant's app on a loopback port, stopped by PID.

    The whole process is pinned to the server core before it starts, so every thread it or its
    children start (Granian's worker process and its Rust runtime threads) inherit the affinity,
    the same as ``taskset -c <cpu> granian ...``.
    """

    live: set[Server] = set()  # noqa: RUF012 - registry for cleanup on error

    def __init__(
        self,
        variant: str,
        cpu: int | None,
        log_dir: Path,
        n: int = 1000,
        env: dict[str, str] | None = None,
    ) -> None:
        self.variant = variant
        self.kind, app = VARIANTS[variant]
        self.port = free_port()
        self.log_path = log_dir / f"{variant}-{self.port}.log"
        cmd = server_command(self.kind, app, self.port, n)
        env = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                preexec_fn=_child_setup(cpu),  # this process runs no threads
            )  # fmt: skip
        Server.live.add(self)
        self.workers: list[tuple[int, int]] = []  # Granian's worker processes (pid, start time)
        try:
            self._wait_listening(30.0)
            if self.kind.startswith("granian"):
                self.workers = self._wait_workers(10.0)
        except BaseException:
            self.stop()
            raise
        #: The process that serves the connections (and whose CPU time is measured).
        self.pid = self.workers[0][0] if self.workers else self.proc.pid

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "port": self.port,
            "pid": self.pid,
            "parent_pid": self.proc.pid if self.pid != self.proc.pid else None,
            "threads": self.threads(),
            "cpus": self.affinity(),
        }

    def _wait_workers(self, seconds: float) -> list[tuple[int, int]]:
        """Granian serves from a worker process, a child of the one we started."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            children = child_pids(self.proc.pid)
            if children:
                return children
            time.sleep(0.05)
        raise RuntimeError(f"no Granian worker process under PID {self.proc.pid}")

    def affinity(self) -> list[int] | None:
        """The cores the serving process may run on (every thread checked), None if unknown."""
        cores: set[int] = set()
        try:
            for tid in os.listdir(f"/proc/{self.pid}/task"):
                cores |= os.sched_getaffinity(int(tid))
        except OSError:
            return None
        return sorted(cores)

    def threads(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            return 0

    def _wait_listening(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"server did not listen on port {self.port} within {seconds}s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL after 10 s; then any Granian worker left behind, by PID."""
        Server.live.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid, started in self.workers:
            if start_time(pid) == started:  # still the worker we saw, not a reused PID
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


def stop_all_servers() -> None:
    for server in list(Server.live):
        with contextlib.suppress(Exception):
            server.stop()


def http_json(port: int, path: str, timeout: float = 10.0) -> Any:
    """GET http://127.0.0.1:<port><path> and parse the JSON body (blocking: run in a thread)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
        return json.loads(response.read())


# Redis -----------------------------------------------------------------------------------------


class Redis:
    """The Redis server the multi-process variants share: reachability, its PID, key clean-up.

    The benchmark never starts, stops or pins Redis; it only reads its CPU time (``/proc``,
    when it runs on this machine) and, at the end, lists the keys left under this run's prefix.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"frbench-{uuid.uuid4().hex[:12]}"
        self.info: dict[str, Any] = {"url": redact(url), "prefix": self.prefix}
        self.pid: int | None = None

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)

    def check(self) -> None:
        """Ping Redis; note its version and, if it runs here, its PID, threads and cores."""
        client = self._client()
        try:
            client.ping()
            server = client.info("server")
        finally:
            client.close()
        self.info["version"] = server.get("redis_version")
        pid = server.get("process_id")
        if isinstance(pid, int) and os.path.exists(f"/proc/{pid}/stat"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/comm") as f:
                    local = f.read().strip().startswith("redis")
                if local:
                    self.pid = pid
                    self.info["pid"] = pid
                    self.info["threads"] = len(os.listdir(f"/proc/{pid}/task"))
                    self.info["cpus"] = sorted(os.sched_getaffinity(pid))

    def keys_left(self, history: bool = False) -> list[str]:
        """Keys under this run's prefix (there should be none once the servers stopped), or
        with ``history`` the rooms' histories, which are kept on purpose (they expire)."""
        client = self._client()
        try:
            keys = sorted(k.decode() for k in client.keys(f"{self.prefix}*"))
        finally:
            client.close()
        return [k for k in keys if (":history:" in k) == history]

    def delete(self, keys: Sequence[str]) -> None:
        if keys:
            client = self._client()
            try:
                client.delete(*keys)
            finally:
                client.close()


def redact(url: str) -> str:
    """The URL without its password."""
    head, sep, tail = url.rpartition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, userinfo = head.partition("//")
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{tail}"


# Statistics and output ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.1f}"


def signed(values: dict[str, Any] | None, key: str) -> str:
    """``values[key]`` in ms with its sign (+3.2), ``-`` when absent."""
    x = values.get(key) if values else None
    if x is None or math.isnan(x):
        return "-"
    return f"{x:+.1f}"


def spread(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def paired(
    pairs: list[dict[str, Result]],
    variant: str,
    rate: Callable[[Result], float],
    base: str = "plain",
) -> list[float]:
    """``variant``'s rate over ``base``'s, round by round."""
    return [rate(p[variant]) / rate(p[base]) for p in pairs if rate(p[variant]) and rate(p[base])]


def wall(r: Result) -> float:
    return r.deliveries_per_s


def per_cpu(r: Result) -> float:
    return r.deliveries_per_server_cpu_s or 0.0


def burst_messages(rs: list[Result]) -> dict[str, float | None]:
    """When the burst's messages had reached every member: the median message, over rounds.

    ``p50_ms``: half the burst's messages had reached every member by then (median over
    rounds); ``p50_fraction``: the same as a fraction of the burst's time, 0.5 for a
    broadcaster that finishes messages in order at a steady rate, near 1.0 when most messages
    wait for the end of the burst.
    """
    rounds = [r for r in rs if r.burst_message_ms and r.burst_seconds]
    if not rounds:
        return {"p50_ms": None, "p50_fraction": None}
    medians = [percentile(r.burst_message_ms, 0.5) for r in rounds]
    return {
        "p50_ms": statistics.median(medians),
        "p50_fraction": statistics.median(
            m / (r.burst_seconds * 1000) for m, r in zip(medians, rounds, strict=True)
        ),
    }


def rounds_of(results: Sequence[Result]) -> dict[tuple[int, int], dict[str, Result]]:
    """The successful results of one N by (group, round): the measurements to pair."""
    by_round: dict[tuple[int, int], dict[str, Result]] = {}
    for r in results:
        if r.error is None:
            by_round.setdefault((r.group, r.round), {})[r.variant] = r
    return by_round


def summarize(results: list[Result], variants: Sequence[str]) -> dict[str, Any]:
    """One N, per variant: spread of rates over rounds (over every group it ran in), and ratios
    to plain and to rooms paired within each round."""
    ok = [r for r in results if r.error is None]
    by_round = rounds_of(results)
    summary: dict[str, Any] = {}
    for v in variants:
        rs = [r for r in ok if r.variant == v]
        lat = [x for r in rs for x in r.latency_ms]
        cpu_rates = [r.deliveries_per_server_cpu_s for r in rs if r.deliveries_per_server_cpu_s]
        entry: dict[str, Any] = {
            "rounds_ok": len(rs),
            "rounds_failed": sum(1 for r in results if r.variant == v and r.error is not None),
            "all_delivered": bool(rs)
            and all(r.delivered == r.expected and r.mismatches == 0 for r in rs),
            "deliveries_per_s": spread([r.deliveries_per_s for r in rs]),
            "deliveries_per_server_cpu_s": spread(cpu_rates),
            "server_loop_ms": spread([r.server_loop_seconds * 1000 for r in rs]),
            # Per burst, when pinned: busy seconds of the server's and the client's core (any
            # process, kernel work included) and the client's own CPU seconds.
            "server_core_busy_seconds": spread(
                [r.server_core_busy_seconds for r in rs if r.server_core_busy_seconds is not None]
            ),
            "client_core_busy_seconds": spread(
                [r.client_core_busy_seconds for r in rs if r.client_core_busy_seconds is not None]
            ),
            "client_cpu_seconds": spread(
                [r.client_cpu_seconds for r in rs if r.client_cpu_seconds is not None]
            ),
            "client_waits": spread([r.client_waits for r in rs if r.client_waits is not None]),
            "burst_messages": burst_messages(rs),
            "latency_ms": latency_summary(lat),
        }
        entry["server"] = server_label(v)
        for base in ("plain", "rooms"):  # rooms: fastapi_rooms on uvicorn
            if base in variants:
                pairs = [rnd for rnd in by_round.values() if v in rnd and base in rnd]
                entry[f"vs_{base}"] = {
                    "wall": spread(paired(pairs, v, wall, base)),
                    "server_cpu": spread(paired(pairs, v, per_cpu, base)),
                }
        if v in WORKERS:
            entry.update(multi_summary(rs, WORKERS[v]))
        summary[v] = entry
    for v in variants:
        if v in WORKERS and "rooms" in summary and summary["rooms"]["rounds_ok"]:
            pairs = [rnd for rnd in by_round.values() if v in rnd and "rooms" in rnd]
            summary[v]["redis_added_latency_ms"] = added_latency(
                summary[v], summary["rooms"], pairs, v
            )
    return summary


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "samples": len(values),
        "p50": percentile(values, 0.5),
        "p90": percentile(values, 0.9),
        "p99": percentile(values, 0.99),
        "max": max(values, default=float("nan")),
    }


SERVER_ROLES = ("publisher: runs the broadcasts, its members directly", "through Redis")


def multi_summary(rs: list[Result], servers: int) -> dict[str, Any]:
    """A multi-process variant, per server process: when its last member got the burst's last
    message, its latency samples, CPU, frames handed and backend counters; Redis's CPU."""
    by_server = []
    for g in range(servers):
        rounds = [r for r in rs if len(r.burst_seconds_by_server) == servers]
        cpu = [r.server_cpu_seconds_by_server[g] for r in rounds]
        deltas = [r.backend_delta_by_server[g] for r in rounds if r.backend_delta_by_server]
        by_server.append(
            {
                "server": g,
                "role": SERVER_ROLES[min(g, 1)],
                "burst_ms": spread([r.burst_seconds_by_server[g] * 1000 for r in rounds]),
                "latency_ms": latency_summary(
                    [x for r in rounds for x in r.latency_ms_by_server[g]]
                ),
                "server_cpu_seconds": spread([c for c in cpu if c is not None]),
                "handed_per_burst": spread([r.server_handed_by_server[g] for r in rounds]),
                "backend_per_burst": {
                    key: statistics.median(d.get(key, 0) for d in deltas)
                    for key in (deltas[0] if deltas else {})
                },
            }
        )
    redis_cpu = [r.redis_cpu_seconds for r in rs if r.redis_cpu_seconds is not None]
    return {
        "servers": servers,
        "burst_ms": spread([r.burst_seconds * 1000 for r in rs]),
        "server_cpu_seconds": spread([r.server_cpu_seconds for r in rs if r.server_cpu_seconds]),
        "by_server": by_server,
        "redis_cpu_seconds_per_burst": spread(redis_cpu),
    }


def added_latency(
    multi: dict[str, Any], rooms: dict[str, Any], pairs: list[dict[str, Result]], variant: str
) -> dict[str, Any]:
    """What Redis adds: the multi-process variant's latency percentiles minus ``rooms``'s (all
    samples of all rounds pooled), to the last receiver overall and to the last receiver on
    each process; and the same p50 difference paired within each round (its spread over
    rounds), which a drift in machine speed between rounds does not move."""
    base = rooms["latency_ms"]

    def minus(lat: dict[str, float]) -> dict[str, float]:
        return {q: lat[q] - base[q] for q in ("p50", "p90", "p99")}

    def paired_p50(samples: Callable[[Result], list[float]]) -> dict[str, float | None]:
        return spread(
            [
                percentile(samples(p[variant]), 0.5) - percentile(p["rooms"].latency_ms, 0.5)
                for p in pairs
                if samples(p[variant]) and p["rooms"].latency_ms
            ]
        )

    servers = len(multi.get("by_server", []))
    return {
        "last_receiver": minus(multi["latency_ms"]),
        "by_server": [minus(s["latency_ms"]) for s in multi.get("by_server", [])],
        "p50_paired_by_round": {
            "last_receiver": paired_p50(lambda r: r.latency_ms),
            "by_server": [
                paired_p50(
                    lambda r, g=g: r.latency_ms_by_server[g] if r.latency_ms_by_server else []
                )
                for g in range(servers)
            ],
        },
    }


def target_checks(
    results: Sequence[Result], n: int, variants: Sequence[str]
) -> list[dict[str, Any]]:
    """The issues' targets (``TARGETS``) whose two variants ran at this N.

    Each check: ``value`` (the median paired ratio, or the p99 ratio) against ``goal``, ``met``
    (False when no round paired them), ``applies`` (this N is the one the goal is stated for).
    """
    by_round = rounds_of(results)
    checks = []
    for t in TARGETS:
        if t.variant not in variants or t.base not in variants:
            continue
        pairs = [p for p in by_round.values() if t.variant in p and t.base in p]
        check: dict[str, Any] = {
            "n": n,
            "issue": t.issue,
            "variant": t.variant,
            "over": t.base,
            "metric": t.metric,
            "comparison": "at_most" if t.metric == "latency_p99" else "at_least",
            "goal": t.goal,
            "stretch": t.stretch,
            "stated_for_n": TARGET_N,
            "applies": n == TARGET_N,
            "paired_rounds": len(pairs),
        }
        if t.metric == "latency_p99":
            mine = [x for p in pairs for x in p[t.variant].latency_ms]
            base = [x for p in pairs for x in p[t.base].latency_ms]
            p99, base_p99 = percentile(mine, 0.99), percentile(base, 0.99)
            value = p99 / base_p99 if mine and base and base_p99 > 0 else None
            check["p99_ms"] = {t.variant: p99 if mine else None, t.base: base_p99 if base else None}
            check["ratio"] = spread(
                [
                    percentile(p[t.variant].latency_ms, 0.99)
                    / percentile(p[t.base].latency_ms, 0.99)
                    for p in pairs
                    if p[t.variant].latency_ms and p[t.base].latency_ms
                ]
            )
            check["met"] = value is not None and value <= t.goal
        else:
            check["ratio"] = spread(paired(pairs, t.variant, wall, t.base))
            value = check["ratio"]["median"]
            check["met"] = value is not None and value >= t.goal
        check["value"] = value
        checks.append(check)
    return checks


def target_line(t: dict[str, Any]) -> str:
    """One target check as a line of the report."""
    kind = "Stretch" if t["stretch"] else "Target"
    if t["metric"] == "latency_p99":
        what = (
            f"{t['variant']} last-receiver p99 <= {t['goal']}x {t['over']}'s "
            "(latency samples of the paired rounds pooled)"
        )
    else:
        what = (
            f"{t['variant']} >= {t['goal']}x {t['over']} (deliveries/s, paired, median over rounds)"
        )
    r = t["ratio"]
    if t["value"] is None:
        result = "no paired round -> **not met**"
    else:
        result = f"**{t['value']:.3f}**"
        if r["median"] is not None:
            result += f" ({r['min']:.2f}-{r['max']:.2f} by round)"
        if t["metric"] == "latency_p99":
            mine, base = t["p99_ms"][t["variant"]], t["p99_ms"][t["over"]]
            result += f", p99 {ms(mine)} vs {ms(base)} ms"
        result += " -> " + ("met" if t["met"] else "**not met**")
    note = "" if t["applies"] else f" (stated for N={t['stated_for_n']}; this is N={t['n']})"
    issue = f" [{t['issue']}]" if t["issue"] else ""
    return f"{kind}{issue}: {what}: {result}{note}"


def markdown(
    summary: dict[str, Any],
    results: list[Result],
    cfg: Settings,
    targets: Sequence[dict[str, Any]] = (),
) -> str:
    def k(x: float | None) -> str:
        return "-" if x is None else f"{x / 1000:.1f} k"

    def ratio(s: dict[str, float | None]) -> str:
        if s["median"] is None:
            return "-"
        return f"**{s['median']:.2f}** ({s['min']:.2f}-{s['max']:.2f})"

    keys = sorted({(r.group, r.round) for r in results})
    groups = sorted({r.group for r in results})
    variants = list(summary)
    split = ""
    if len(groups) > 1:
        members = [
            [v for v in variants if any(r.group == g and r.variant == v for r in results)]
            for g in groups
        ]
        split = (
            f" The client could not hold every variant's {cfg.n} connections at once, so this N "
            f"ran in {len(groups)} groups ({'; '.join(', '.join(m) for m in members)}), each "
            "with plain and rooms: their columns pool every group's rounds, ratios pair within a "
            "group's round."
        )
    lines = [
        f"### N={cfg.n}",
        "",
        f"Fan-out to one room: N={cfg.n} members, bursts of {cfg.messages} messages of "
        f"{cfg.size} bytes, {cfg.rounds} round(s); ratios are paired within each round "
        "(median, min-max over rounds); `rooms` is fastapi_rooms on uvicorn." + split,
        "",
        "| variant | server | deliveries/s min / median / max | vs plain | vs rooms "
        "| deliveries per server CPU-s (median) | CPU vs plain | CPU vs rooms "
        "| half the burst reached all by, ms (fraction of burst) "
        "| last-receiver latency p50 / p90 / p99 / max ms | all delivered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        s = summary[v]
        if not s["rounds_ok"]:
            lines.append(f"| {v} | {s['server']} | failed | | | | | | | | NO |")
            continue
        d, c, lat = s["deliveries_per_s"], s["deliveries_per_server_cpu_s"], s["latency_ms"]
        vp, vr = s.get("vs_plain"), s.get("vs_rooms")
        bm = s["burst_messages"]
        half = "-" if bm["p50_ms"] is None else f"{bm['p50_ms']:.0f} ({bm['p50_fraction']:.2f})"
        lines.append(
            f"| {v} | {s['server']} | {k(d['min'])} / {k(d['median'])} / {k(d['max'])} "
            f"| {ratio(vp['wall']) if vp else '-'} | {ratio(vr['wall']) if vr else '-'} "
            f"| {k(c['median'])} "
            f"| {ratio(vp['server_cpu']) if vp else '-'} "
            f"| {ratio(vr['server_cpu']) if vr else '-'} "
            f"| {half} "
            f"| {ms(lat['p50'])} / {ms(lat['p90'])} / {ms(lat['p99'])} / {ms(lat['max'])} "
            f"| {'yes' if s['all_delivered'] else 'NO'} |"
        )
    if targets:
        lines.append("")
        lines += [f"- {target_line(t)}" for t in targets]
    multi = [v for v in variants if "by_server" in summary[v] and summary[v]["rounds_ok"]]
    if multi:
        lines += [
            "",
            "Several processes over Redis, per process (server 0 runs the broadcasts); "
            '"+Redis" is this latency minus rooms\' (single process, all members):',
            "",
            "| variant | process | last member got the burst's last message, ms (median) "
            "| server CPU-s per burst (median) | last-receiver latency p50 / p90 / p99 / max ms "
            "| +Redis p50 / p99 ms | +Redis p50 paired by round, median (min to max) ms |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in multi:
            s = summary[v]
            added = s.get("redis_added_latency_ms")
            paired_added = added["p50_paired_by_round"] if added else None
            rows = [
                (
                    "all",
                    s["latency_ms"],
                    s["burst_ms"]["median"],
                    s["server_cpu_seconds"]["median"],
                    added and added["last_receiver"],
                    paired_added and paired_added["last_receiver"],
                )
            ]
            for i, srv in enumerate(s["by_server"]):
                rows.append(
                    (
                        f"{srv['server']} ({srv['role']})",
                        srv["latency_ms"],
                        srv["burst_ms"]["median"],
                        srv["server_cpu_seconds"]["median"],
                        added and added["by_server"][i],
                        paired_added and paired_added["by_server"][i],
                    )
                )
            for name, lat, burst, cpu, plus, by_round in rows:
                lines.append(
                    f"| {v} | {name} | {'-' if burst is None else f'{burst:.0f}'} "
                    f"| {'-' if cpu is None else f'{cpu:.3f}'} "
                    f"| {ms(lat['p50'])} / {ms(lat['p90'])} / {ms(lat['p99'])} / {ms(lat['max'])} "
                    f"| {signed(plus, 'p50')} / {signed(plus, 'p99')} "
                    f"| {signed(by_round, 'median')} ({signed(by_round, 'min')} to "
                    f"{signed(by_round, 'max')}) |"
                )
            rc = s["redis_cpu_seconds_per_burst"]["median"]
            if rc is not None:
                lines.append(f"| {v} | Redis server | - | {rc:.3f} | - | - | - |")
    lines += ["", "Per round, deliveries/s (load average at the start of each measurement):", ""]
    lines.append("| round | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---|" * len(variants))
    for group, rnd in keys:
        row = []
        for v in variants:
            r = next(
                (x for x in results if (x.group, x.round) == (group, rnd) and x.variant == v),
                None,
            )
            row.append(
                "-"
                if r is None
                else "error"
                if r.error
                else f"{k(r.deliveries_per_s)} (load {r.loadavg_1m})"
            )
        label = f"group {group + 1} round {rnd}" if len(groups) > 1 else str(rnd)
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def overview(summary: dict[str, dict[str, Any]]) -> str:
    """Every N side by side: median deliveries/s, paired ratios to plain and rooms, p50/p99."""
    ns = list(summary)
    variants = list(dict.fromkeys(v for n in ns for v in summary[n]))

    def cell(s: dict[str, Any] | None) -> str:
        if s is None:
            return "-"
        if not s["rounds_ok"]:
            return "failed"
        parts = [f"{s['deliveries_per_s']['median'] / 1000:.1f} k"]
        for base in ("plain", "rooms"):
            r = s.get(f"vs_{base}", {}).get("wall", {}).get("median")
            if r is not None:
                parts.append(f"{r:.2f}x {base}")
        lat = s["latency_ms"]
        parts.append(f"p50/p99 {ms(lat['p50'])}/{ms(lat['p99'])} ms")
        return " · ".join(parts)

    lines = [
        "### All N: median deliveries/s, paired ratios (median over rounds), last-receiver latency",
        "",
        "| variant | " + " | ".join(f"N={n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    for v in variants:
        lines.append(f"| {v} | " + " | ".join(cell(summary[n].get(v)) for n in ns) + " |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in (
        "uvicorn", "granian", "starlette", "fastapi", "websockets", "uvloop", "httptools", "picows",
        "aiofastnet", "python-socketio", "python-engineio", "broadcaster", "anyio",
    ):  # fmt: skip
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# Main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--n",
        default=None,
        help="room members, or a comma list (100,1000,5000): the whole comparison per N "
        "(default 1000)",
    )
    p.add_argument("--messages", type=int, default=None, help="broadcasts per burst (default 200)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of all variants (default 3)")
    p.add_argument("--size", type=int, default=32, help="message size in bytes (default 32)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up broadcasts (default 50)")
    p.add_argument(
        "--latency-samples", type=int, default=None, help="single broadcasts per round (default 40)"
    )
    p.add_argument("--latency-interval", type=float, default=None, help="seconds between them")
    p.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma list of {', '.join(VARIANTS)} (default {DEFAULT_VARIANTS})",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: N=20, 20 messages, 1 round (flags win)"
    )
    p.add_argument("--client", choices=("auto", "picows", "websockets"), default="auto")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/)")
    p.add_argument(
        "--max-sockets",
        type=int,
        default=None,
        help="client connections open at once (default: the open-file limit less 256); above "
        "it the comparison at that N runs in groups, each with plain and rooms",
    )
    p.add_argument(
        "--redis-url",
        default=DEFAULT_REDIS_URL,
        help="Redis for rooms-redis-2w (default $REDIS_URL or redis://127.0.0.1:6379/0)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "n": "20" if quick else "1000",
        "messages": 20 if quick else 200,
        "rounds": 1 if quick else 3,
        "warmup": 5 if quick else 50,
        "latency_samples": 5 if quick else 40,
        "latency_interval": 0.01 if quick else 0.02,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.n = [int(x) for x in str(args.n).split(",") if x.strip()]
    except ValueError:
        p.error(f"--n: a number or a comma list of numbers, got {args.n!r}")
    if len(set(args.n)) != len(args.n) or not args.n:
        p.error("--n: give each N once")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - VARIANTS.keys()
    if unknown or not args.variants:
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if len(set(args.variants)) != len(args.variants):
        p.error("--variants: a variant is listed twice")
    if min(args.n) < 1 or args.messages < 1 or args.rounds < 1:
        p.error("--n, --messages and --rounds must be at least 1")
    if args.size < 11:
        p.error("--size must be at least 11 bytes (the message carries its sequence number)")
    return args


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cancel_pending(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what an interrupt left running and let it clean up (bounded)."""
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    if pending:
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.wait(pending, timeout=5))


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def missing_packages(variants: Sequence[str]) -> dict[str, str]:
    """Variants whose package is not installed in this Python, with the message to show."""
    skipped = {}
    for v in variants:
        if v not in REQUIRES:
            continue
        module, dist, extra = REQUIRES[v]
        if importlib.util.find_spec(module) is None:
            skipped[v] = (
                f"{dist} is not installed in {sys.executable} "
                f"(pip install {dist}, or pip install -e '.[{extra}]')"
            )
    return skipped


def sockets_for(variant: str, n: int) -> int:
    """Client connections a variant keeps open at N: its members and a control per process."""
    return n + WORKERS.get(variant, 1)


def plan_groups(variants: Sequence[str], n: int, max_sockets: int) -> list[list[str]]:
    """The groups of variants that run one after the other at this N (usually just one).

    All variants run together when the client can hold all their connections at once. Else
    each group keeps plain and rooms (``ANCHORS``, when requested), so every ratio to them stays
    paired within a round, and takes as many other variants, in order, as fit.
    """
    if sum(sockets_for(v, n) for v in variants) <= max_sockets:
        return [list(variants)]
    anchors = [v for v in variants if v in ANCHORS]
    base = sum(sockets_for(v, n) for v in anchors)
    room = max_sockets - base
    chunks: list[list[str]] = []
    for v in (v for v in variants if v not in ANCHORS):
        need = sockets_for(v, n)
        if need > room:
            raise ValueError(
                f"N={n}: {', '.join([*anchors, v])} need {base + need} client connections at "
                f"once; this client may hold {max_sockets} (--max-sockets, the open-file limit "
                "less 256)"
            )
        if chunks and sum(sockets_for(x, n) for x in chunks[-1]) + need <= room:
            chunks[-1].append(v)
        else:
            chunks.append([v])
    if not chunks:  # only anchors, and they do not fit together
        raise ValueError(
            f"N={n}: {', '.join(anchors)} need {base} client connections at once; this client "
            f"may hold {max_sockets}"
        )
    return [[v for v in variants if v in anchors or v in chunk] for chunk in chunks]


def raise_open_files() -> int | None:
    """Raise this process's open-file limit to its hard limit; the limit now (None if unknown)."""
    try:
        return limits.raise_open_files()
    except (ImportError, OSError, ValueError):
        return None


@dataclass
class Context:
    """What every group of every N shares."""

    args: argparse.Namespace
    client: Any
    pin: bool
    log_dir: Path
    loop: asyncio.AbstractEventLoop
    redis: Redis | None
    redis_error: str | None

    def run(self, coro: Any, budget: float) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, budget))


def run_group(
    ctx: Context,
    cfg: Settings,
    variants: Sequence[str],
    group: int,
    results: list[Result],
    server_stats: dict[str, list[Any]],
    server_info: dict[str, list[Any]],
) -> None:
    """Start ``variants``' servers, connect N members to each, run the rounds, stop them."""
    args, run, redis = ctx.args, ctx.run, ctx.redis
    sessions: dict[str, tuple[list[Server], Session]] = {}
    failed_open: dict[str, str] = {}
    try:
        for variant in variants:
            if variant in REDIS_VARIANTS and ctx.redis_error is not None:
                failed_open[variant] = ctx.redis_error
                print(f"  {variant}: {ctx.redis_error}", file=sys.stderr)
                continue
            servers: list[Server] = []
            # A prefix per variant and N: a room's history in Redis outlives the servers, and
            # each comparison expects its offsets to start at 1.
            prefix = f"{redis.prefix}-{variant}-n{cfg.n}" if redis is not None else ""
            env = (
                {"FANOUT_REDIS_URL": redis.url, "FANOUT_REDIS_PREFIX": prefix}
                if redis is not None and variant in REDIS_VARIANTS
                else None
            )
            try:
                for _ in range(WORKERS.get(variant, 1)):
                    cpu = args.server_cpu if ctx.pin else None
                    servers.append(Server(variant, cpu, ctx.log_dir, cfg.n, env))
            except Exception as exc:
                failed_open[variant] = f"{type(exc).__name__}: {exc}"
                print(f"  {variant}: server failed: {failed_open[variant]}", file=sys.stderr)
                for server in servers:
                    server.stop()
                continue
            session = Session(
                variant,
                [server.port for server in servers],
                cfg,
                ctx.client,
                redis.pid if redis is not None and variant in REDIS_VARIANTS else None,
                (args.server_cpu, args.client_cpu) if ctx.pin else None,
            )
            sessions[variant] = (servers, session)
            try:
                run(session.open(), 60 + cfg.n / 50 + phase_budget(cfg.n * cfg.warmup))
            except (Exception, asyncio.CancelledError) as exc:
                failed_open[variant] = f"{type(exc).__name__}: {exc}"
                print(f"  {variant}: setup failed: {failed_open[variant]}", file=sys.stderr)
                for server in servers:
                    print(server.log(), file=sys.stderr)
                drop(run, sessions, variant)
                continue
            infos = [server.info() for server in servers]
            info = dict(infos[0])
            if len(infos) > 1:
                info["servers"] = infos
            server_info.setdefault(variant, []).append({"group": group, **info})
            print(
                f"  {variant:18s} {cfg.n} members in {session.connect_seconds:.1f} s  "
                + "; ".join(
                    f"(serving pid {i['pid']}, {i['threads']} threads, cpus {i['cpus']})"
                    for i in infos
                ),
                file=sys.stderr,
            )

        budget = (
            30
            + phase_budget(cfg.n * cfg.messages)
            + cfg.latency_samples * (cfg.latency_interval + phase_budget(cfg.n))
        )
        for rnd in range(1, cfg.rounds + 1):
            # Alternate the order (ABC, CBA, ...) so a drift in machine speed does not favour one.
            order = list(variants) if rnd % 2 else list(variants)[::-1]
            for variant in order:
                result = Result(
                    variant=variant, round=rnd, n=cfg.n, group=group, loadavg_1m=loadavg()
                )
                results.append(result)
                if variant not in sessions:
                    result.error = failed_open.get(variant, "session lost in an earlier round")
                    continue
                servers, session = sessions[variant]
                try:
                    run(session.measure(result, [server.pid for server in servers]), budget)
                except (Exception, asyncio.CancelledError) as exc:
                    result.error = f"{type(exc).__name__}: {exc}"
                    print(f"  round {rnd} {variant}: ERROR {result.error}", file=sys.stderr)
                    for server in servers:
                        print(server.log(), file=sys.stderr)
                    drop(run, sessions, variant)
                    continue
                print_result(result)
        for variant, (servers, session) in sessions.items():
            try:
                stats = run(session.stats(), 15)
            except (Exception, asyncio.CancelledError) as exc:
                stats = {"error": f"{type(exc).__name__}: {exc}"}
            if len(servers) > 1 and "servers" in stats:
                # Each process's own GET /stats (the rooms router's), backend section included.
                for server, entry in zip(servers, stats["servers"], strict=True):
                    entry["port"], entry["pid"] = server.port, server.pid
                    try:
                        entry["stats"] = run(
                            ctx.loop.run_in_executor(None, http_json, server.port, "/stats"), 15
                        )
                    except (Exception, asyncio.CancelledError) as exc:
                        entry["stats"] = {"error": f"{type(exc).__name__}: {exc}"}
            server_stats.setdefault(variant, []).append({"group": group, **stats})
    except KeyboardInterrupt:
        cancel_pending(ctx.loop)  # before the connections close and the servers stop
        raise
    finally:
        for variant in list(sessions):
            drop(run, sessions, variant)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2 and {args.server_cpu, args.client_cpu} <= set(cpus)
    if not args.no_pin and not pin:
        print(f"note: not pinning (usable cpus {cpus})", file=sys.stderr)
    if pin:
        os.sched_setaffinity(0, {args.client_cpu})
    open_files = raise_open_files()
    max_sockets = args.max_sockets or ((open_files or 1024) - 256)

    skipped = missing_packages(args.variants)
    for variant, why in skipped.items():
        print(f"SKIPPED {variant}: {why}", file=sys.stderr)
    variants = [v for v in args.variants if v not in skipped]
    if not variants:
        print("error: every requested variant was skipped: nothing to measure", file=sys.stderr)
        return 2
    plans: dict[int, list[list[str]]] = {}
    plan_errors: dict[int, str] = {}
    for n in args.n:
        try:
            plans[n] = plan_groups(variants, n, max_sockets)
        except ValueError as exc:
            plan_errors[n] = str(exc)
            print(f"error: {exc}", file=sys.stderr)
            continue
        if len(plans[n]) > 1:
            print(
                f"note: N={n}: {len(variants)} variants x {n} connections exceed the "
                f"{max_sockets} the client may hold at once; running {len(plans[n])} groups, "
                "each with plain and rooms: " + " | ".join(",".join(g) for g in plans[n]),
                file=sys.stderr,
            )

    client = make_client(args.client)
    out = args.out or HERE / "results" / (
        f"fanout-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / "logs"
    log_dir.mkdir(exist_ok=True)

    signal.signal(signal.SIGTERM, _terminate)
    loop = new_loop()
    asyncio.set_event_loop(loop)

    results: list[Result] = []
    server_stats: dict[str, dict[str, list[Any]]] = {}
    server_info: dict[str, dict[str, list[Any]]] = {}
    runs: dict[str, dict[str, Any]] = {}
    redis = Redis(args.redis_url) if set(variants) & REDIS_VARIANTS else None
    redis_keys_left: list[str] | None = None
    started = time.perf_counter()
    load_start = loadavg()
    pinned = f"server cpu {args.server_cpu}, client cpu {args.client_cpu}" if pin else "no"
    print(
        f"fanout: N={','.join(map(str, args.n))} messages={args.messages} size={args.size} "
        f"rounds={args.rounds} variants={','.join(variants)} client={client.name} "
        f"pinned={pinned} load={load_start}",
        file=sys.stderr,
    )
    if load_start is not None and load_start > 1.5:
        print(
            f"warning: load average {load_start:.1f}: other processes compete for the cores; "
            "absolute numbers will be low and noisy (ratios within a round hold up better)",
            file=sys.stderr,
        )
    redis_error = None
    if redis is not None:
        try:
            redis.check()
        except Exception as exc:
            redis_error = f"Redis at {redact(redis.url)}: {exc!r}"
    ctx = Context(args, client, pin, log_dir, loop, redis, redis_error)
    settings: list[Settings] = []
    interrupted = False
    try:
        for n in args.n:
            cfg = Settings(
                n=n,
                messages=args.messages,
                size=args.size,
                warmup=args.warmup,
                rounds=args.rounds,
                latency_samples=args.latency_samples,
                latency_interval=args.latency_interval,
            )
            settings.append(cfg)
            t0, load0 = time.perf_counter(), loadavg()
            if n in plan_errors:
                for variant in variants:
                    results.append(Result(variant, 1, n=n, error=plan_errors[n]))
                runs[str(n)] = {"groups": [], "error": plan_errors[n]}
                continue
            if len(args.n) > 1:
                print(f"N={n}", file=sys.stderr)
            for group, members in enumerate(plans[n]):
                if len(plans[n]) > 1:
                    print(
                        f" group {group + 1}/{len(plans[n])}: {','.join(members)}",
                        file=sys.stderr,
                    )
                run_group(
                    ctx,
                    cfg,
                    members,
                    group,
                    results,
                    server_stats.setdefault(str(n), {}),
                    server_info.setdefault(str(n), {}),
                )
            runs[str(n)] = {
                "groups": plans[n],
                "error": None,
                "wall_seconds": time.perf_counter() - t0,
                "loadavg_1m_start": load0,
                "loadavg_1m_end": loadavg(),
            }
    except KeyboardInterrupt:
        interrupted = True
        cancel_pending(loop)
    finally:
        stop_all_servers()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        if redis is not None and "version" in redis.info:
            # The servers deleted their directory keys as they stopped; anything left is a leak.
            try:
                redis.delete(redis.keys_left(history=True))  # this run's room histories
                redis_keys_left = redis.keys_left()
                if redis_keys_left:
                    print(
                        f"error: {len(redis_keys_left)} Redis key(s) left under "
                        f"{redis.prefix!r} after the servers stopped (deleting them): "
                        f"{redis_keys_left[:5]}",
                        file=sys.stderr,
                    )
                    redis.delete(redis_keys_left)
            except Exception as exc:
                print(f"warning: could not check Redis keys: {exc!r}", file=sys.stderr)
    if interrupted:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130

    summary: dict[str, dict[str, Any]] = {}
    targets: list[dict[str, Any]] = []
    for cfg in settings:
        mine = [r for r in results if r.n == cfg.n]
        ran = [v for v in variants if any(r.variant == v for r in mine)]
        summary[str(cfg.n)] = summarize(mine, ran)
        targets += target_checks(mine, cfg.n, ran)
    common = {k: v for k, v in vars(settings[0]).items() if k != "n"} if settings else {}
    report = {
        "benchmark": "fanout",
        "time": datetime.now(timezone.utc).isoformat(),
        "settings": {
            **common,
            "n": args.n,
            "variants": variants,
            "requested_variants": args.variants,
            "skipped": skipped,
            "max_sockets": max_sockets,
        },
        "method": {
            "server": "one server process per variant for each N, variants alternate within "
            "each round (in groups that each keep plain and rooms when the client cannot hold "
            "every variant's connections at once)",
            "servers": {v: server_command_text(v) for v in variants},
            "server_cpu_time": "whole serving process (all threads; Granian: its worker)",
            "client": f"{client.name} on {type(loop).__module__.split('.')[0]}",
            "pinned": (
                {"server_cpu": args.server_cpu, "client_cpu": args.client_cpu} if pin else None
            ),
            "descriptions": {v: DESCRIPTIONS[v] for v in variants},
        },
        "environment": {
            **versions(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "open_files_limit": open_files,
            "loadavg_1m_start": load_start,
            "loadavg_1m_end": loadavg(),
            "fastapi_rooms": library_state(),
        },
        "wall_seconds": time.perf_counter() - started,
        "runs": runs,
        "summary": summary,
        "targets": targets,
        "redis": None if redis is None else {**redis.info, "keys_left": redis_keys_left},
        "server_stats": server_stats,
        "server_info": server_info,
        "results": [vars(r) for r in results],
    }
    out.write_text(json.dumps(jsonable(report), indent=2, allow_nan=False))
    parts = []
    if skipped:
        parts.append(
            "Skipped (package missing): " + "; ".join(f"{v}: {why}" for v, why in skipped.items())
        )
    for cfg in settings:
        mine = [r for r in results if r.n == cfg.n]
        if str(cfg.n) in runs and runs[str(cfg.n)]["error"]:
            parts.append(f"### N={cfg.n}\n\nnot run: {runs[str(cfg.n)]['error']}")
            continue
        parts.append(
            markdown(summary[str(cfg.n)], mine, cfg, [t for t in targets if t["n"] == cfg.n])
        )
    if len(settings) > 1:
        parts.append(overview(summary))
    print("\n\n".join(parts))
    print(f"\nJSON: {out}", file=sys.stderr)
    failed = [r for r in results if r.error or r.delivered != r.expected or r.mismatches]
    return 1 if failed or redis_keys_left else 0


def jsonable(value: Any) -> Any:
    """``value`` with every NaN or infinity (a statistic of no samples) replaced by None, so
    the record is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def drop(run: Callable[[Any, float], Any], sessions: dict[str, Any], variant: str) -> None:
    """Close a variant's client connections, then stop its servers (by PID)."""
    servers, session = sessions.pop(variant)
    try:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            run(session.close(), 10)
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()


def library_state() -> dict[str, Any]:
    """The fastapi_rooms version, the git commit and whether its files differ from it."""
    state: dict[str, Any] = {}
    with contextlib.suppress(Exception):
        state["version"] = metadata.version("fastapi-rooms")
    with contextlib.suppress(Exception):
        state["commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        state["uncommitted"] = subprocess.run(
            ["git", "status", "--porcelain", "--", "fastapi_rooms"],
            cwd=ROOT, capture_output=True, text=True, timeout=10,
        ).stdout.split("\n")  # fmt: skip
        state["uncommitted"] = [line for line in state["uncommitted"] if line.strip()]
    return state


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def print_result(r: Result) -> None:
    cpu = r.deliveries_per_server_cpu_s
    print(
        f"  round {r.round} {r.variant:18s} {r.deliveries_per_s / 1000:6.1f} k/s  "
        + (f"{cpu / 1000:6.1f} k/cpu-s  " if cpu else "cpu n/a  ")
        + f"burst {r.burst_seconds * 1000:5.0f} ms  "
        + f"server loop {r.server_loop_seconds * 1000:5.0f} ms  "
        + f"delivered {r.delivered}/{r.expected}  "
        + f"latency p50 {ms(percentile(r.latency_ms, 0.5))} "
        + f"max {ms(max(r.latency_ms, default=float('nan')))} ms  load {r.loadavg_1m}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
