#!/usr/bin/env python3
"""Scenario benchmarks S4-S6: idle connections, room layouts and join/leave, a stalled member.

    .venv/bin/python benchmarks/scenarios.py                       # all three, 3 rounds
    .venv/bin/python benchmarks/scenarios.py --scenario s4         # one of them
    .venv/bin/python benchmarks/scenarios.py --quick               # smoke run: tiny N, 1 round

S4  idle connections: N (10,000) idle WebSockets to a bare Starlette app on uvicorn, to
    fastapi_rooms' ready endpoint on uvicorn (each joins a room) and under
    ``granian --interface rsgi`` (RSGIApp), each once with a client that offers
    permessage-deflate and once with one that does not. Server RSS per connection
    (VmRSS of the serving process after minus before connecting, / N), the difference to the
    bare uvicorn app (paired within a round) and the server's CPU while all sit idle.
S5  (a) one room of N (10,000) members against N/10 rooms of 10: deliveries/s of broadcasts to
    the big room and to every small room in turn (the same members are in both), on uvicorn;
    (b) join/leave operations per second through the ready endpoint (clients alternate join and
    leave and wait for each ack), and RoomManager.join_room/leave_room in-process (timeit).
S6  one member that stops reading in a room of N (1000), fastapi_rooms on uvicorn against the
    plain sequential loop (the FastAPI tutorial's ConnectionManager): the other members'
    deliveries/s with the stalled member present and absent, the server's RSS growth, and when
    fastapi_rooms closes the stalled member with 1013. A plain-loop burst that does not finish
    within its timeout is reported as stalled.

Servers are subprocesses (one per measurement in S4, so every baseline is a fresh process),
pinned to core 0 with all their threads; this process is the client (picows on uvloop; the
websockets sans-I/O protocol for the deflate offer), pinned to core 1. Variants alternate
(ABC, CBA, ...) within each round; ratios are paired within a round; min/median/max over
rounds. Loopback only; every wait is bounded; servers are stopped by PID even on error or
Ctrl-C. The JSON record goes to benchmarks/results/scenarios-<UTC time>.json. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import timeit
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import fanout
from fanout import (
    JOINED_BYTES,
    Member,
    Tracker,
    cpu_between,
    loadavg,
    new_loop,
    process_cpu,
    spread,
)
from fanout_apps import payload
from harness.limits import raise_open_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
APPS = "scenarios_apps2"
SCENARIOS = ("s4", "s5", "s6")

# S4 cases: (server kind, app factory in scenarios_apps2.py, path, protocol)
S4_CASES: dict[str, tuple[str, str, str, str]] = {
    "bare-uvicorn": ("uvicorn", "make_bare_app", "/idle", "bare"),
    "rooms-uvicorn": ("uvicorn", "make_rooms_app", "/ws", "ready"),
    "rooms-granian-rsgi": ("granian-rsgi", "make_rooms_rsgi_app", "/ws", "ready"),
    "bare-granian-rsgi": ("granian-rsgi", "make_bare_rsgi_app", "/idle", "bare"),
    "fastapi-uvicorn": ("uvicorn", "make_fastapi_app", "/idle", "bare"),
    "bare-send-uvicorn": ("uvicorn", "make_bare_send_app", "/idle", "bare"),
}
S4_DEFAULT = "bare-uvicorn,rooms-uvicorn,rooms-granian-rsgi"
S4_BASE = "bare-uvicorn"
OFFERS = ("none", "deflate")
#: The issue's S4 target: fastapi_rooms on uvicorn costs at most this much more per idle
#: connection than the bare uvicorn app (KiB, median of the paired differences).
S4_TARGET_KIB = 2.0
#: S6's target: the other members keep at least this share of their throughput.
S6_TARGET_RATIO = 0.9
#: S6's servers: uvicorn's keepalive ping out of the way (default: every 20 s, closing after
#: 20 s more without a pong). It does not free a loop stuck on a member that never reads (the
#: close waits behind the unread data), but once the harness lets the member read again, a
#: keepalive close that fired meanwhile would end the plain loop's burst with an exception.
S6_UVICORN_FLAGS = ("--ws-ping-interval", "600")
#: The sizes the targets are stated for (a target's ``applies`` is False at other sizes).
S4_TARGET_N, S6_TARGET_N = 10_000, 1000
SERVER_COMMANDS = {
    "uvicorn": "uvicorn --factory --loop uvloop --http httptools --ws websockets-sansio "
    "(ws ping interval/timeout 20 s, permessage-deflate accepted: uvicorn's defaults; S6 adds "
    "--ws-ping-interval 600)",
    "granian-rsgi": "granian --interface rsgi --factory --workers 1 --loop uvloop "
    "--backpressure max(1024, N+256) (default runtime threads and mode)",
}


# Servers ------------------------------------------------------------------------------------


def server_command(
    kind: str, factory: str, port: int, n: int, extra: Sequence[str] = ()
) -> list[str]:
    """The command line serving ``scenarios_apps2:<factory>()`` (benchmarks/fanout.py's flags)."""
    target = f"{APPS}:{factory}"
    if kind == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", target, "--factory", "--app-dir", str(HERE),
            "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
            "--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "5",
            *extra,
        ]  # fmt: skip
    if kind == "granian-rsgi":
        return [
            sys.executable, "-m", "granian", "--interface", "rsgi", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--loop", "uvloop",
            "--backpressure", str(max(1024, n + 256)), "--log-level", "warning",
            "--no-access-log", "--workers-kill-timeout", "5", *extra, target,
        ]  # fmt: skip
    raise ValueError(f"unknown server kind {kind!r}")


class AppServer(fanout.Server):
    """A server subprocess for one of scenarios_apps2.py's factories, stopped by PID.

    Unlike fanout.Server, starting (``__init__``) and waiting until it listens (``ready``) are
    separate, so several servers can start at once. It registers in ``fanout.Server.live``, so
    ``fanout.stop_all_servers()`` stops it too.
    """

    def __init__(
        self,
        label: str,
        kind: str,
        factory: str,
        cpu: int | None,
        log_dir: Path,
        n: int,
        extra: Sequence[str] = (),
    ) -> None:
        self.variant = label
        self.kind = kind
        self.factory = factory
        self.port = fanout.free_port()
        self.log_path = log_dir / f"scenarios-{label}-{self.port}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                server_command(kind, factory, self.port, n, extra),
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                preexec_fn=fanout._child_setup(cpu),  # this process runs no threads
            )  # fmt: skip
        fanout.Server.live.add(self)
        self.workers: list[tuple[int, int]] = []
        self.pid = self.proc.pid

    def ready(self, seconds: float = 60.0) -> AppServer:
        try:
            self._wait_listening(seconds)
            if self.kind.startswith("granian"):
                self.workers = self._wait_workers(10.0)
        except BaseException:
            self.stop()
            raise
        self.pid = self.workers[0][0] if self.workers else self.proc.pid
        return self


def start_servers(
    specs: Sequence[tuple[str, str, str]],
    cpu: int | None,
    log_dir: Path,
    n: int,
    extra: Sequence[str] = (),
) -> list[AppServer]:
    """Start (label, kind, factory) servers at once and wait until every one listens."""
    servers: list[AppServer] = []
    try:
        for label, kind, factory in specs:
            servers.append(AppServer(label, kind, factory, cpu, log_dir, n, extra))
        for server in servers:
            server.ready()
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and VmHWM of a process in KiB (``/proc/<pid>/status``)."""
    wanted = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
    found: dict[str, int] = {}
    with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in wanted:
                found[key] = int(line.split()[1])
    return found


def vmrss_kib(pid: int) -> int | None:
    return proc_status(pid).get("VmRSS")


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


# Client connections ----------------------------------------------------------------------------

OnText = Callable[[bytes], None]
OnClose = Callable[[int | None], None]  # the close code the server sent, if any


class Conn:
    """One client WebSocket: ``send_text``, ``close`` (polite), ``abort`` (RST), ``pause`` and
    ``resume`` reading, and the extensions the server accepted."""

    extensions: Sequence[str] = ()
    client = ""

    def send_text(self, text: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError


_PICOWS: dict[str, Any] = {}


def _picows() -> dict[str, Any]:
    """picows and a listener class, imported once (picows: C framing, a callback per frame)."""
    if _PICOWS:
        return _PICOWS
    import picows

    text, close = picows.WSMsgType.TEXT, picows.WSMsgType.CLOSE

    class Listener(picows.WSListener):  # type: ignore[misc]
        def __init__(self, on_text: OnText, on_close: OnClose) -> None:
            self.on_text = on_text
            self.on_close = on_close
            self.close_code: int | None = None

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            kind = frame.msg_type
            if kind == text:
                self.on_text(frame.get_payload_as_bytes())
            elif kind == close:
                code = frame.get_close_code()
                self.close_code = int(code)
                with contextlib.suppress(Exception):
                    transport.send_close(code)
                transport.disconnect()

        def on_ws_disconnected(self, transport: Any) -> None:
            self.on_close(self.close_code)

    _PICOWS.update(picows=picows, listener=Listener, text=text)
    return _PICOWS


class PicowsConn(fanout.PicowsConn, Conn):
    """fanout's picows connection (send_text, close) plus abort and flow control."""

    client = "picows"

    def abort(self) -> None:
        self.transport.disconnect(False)  # graceful=False: close the socket now

    def pause(self) -> None:
        self.transport.underlying_transport.pause_reading()

    def resume(self) -> None:
        self.transport.underlying_transport.resume_reading()


async def connect_picows(url: str, on_text: OnText, on_close: OnClose) -> PicowsConn:
    p = _picows()
    transport, _ = await p["picows"].ws_connect(
        lambda: p["listener"](on_text, on_close), url, websocket_handshake_timeout=10
    )
    return PicowsConn(transport, p["text"])


class SansioConn(fanout.SansioConn, Conn):
    """websockets' sans-I/O client in an asyncio.Protocol (fanout.py's), optionally offering
    permessage-deflate as browsers do (``permessage-deflate; client_max_window_bits``)."""

    client = "websockets-sansio"

    def __init__(
        self,
        url: str,
        on_text: OnText,
        on_close: OnClose,
        loop: asyncio.AbstractEventLoop,
        deflate: bool,
    ) -> None:
        super().__init__(url, on_text, lambda: on_close(self._close_code()), loop)
        if deflate:
            from websockets.client import ClientProtocol
            from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
            from websockets.uri import parse_uri

            self.proto = ClientProtocol(
                parse_uri(url),
                max_size=None,
                extensions=[ClientPerMessageDeflateFactory(client_max_window_bits=True)],
            )

    def _close_code(self) -> int | None:
        rcvd = getattr(self.proto, "close_rcvd", None)
        return None if rcvd is None else int(rcvd.code)

    @property
    def extensions(self) -> Sequence[str]:  # type: ignore[override]
        return [str(e.name) for e in getattr(self.proto, "extensions", [])]

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


async def connect_sansio(url: str, on_text: OnText, on_close: OnClose, deflate: bool) -> Conn:
    from websockets.uri import parse_uri

    uri = parse_uri(url)
    loop = asyncio.get_running_loop()
    conn = SansioConn(url, on_text, on_close, loop, deflate)
    await loop.create_connection(lambda: conn, uri.host, uri.port)
    await asyncio.wait_for(conn.opened, 10)
    return conn


async def connect_all(
    count: int, connect_one: Callable[[int], Awaitable[Any]], concurrency: int
) -> list[Any]:
    """``connect_one(i)`` for each i < count, ``concurrency`` at once; exceptions returned."""
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> Any:
        async with limit:
            return await connect_one(i)

    return list(await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True))


def join_json(room: str) -> str:
    return json.dumps({"type": "join", "room": room})


def first_error(results: Sequence[Any]) -> str | None:
    for r in results:
        if isinstance(r, BaseException):
            return f"{type(r).__name__}: {r}"
    return None


class Waiter:
    """Counts events towards a target; ``done`` resolves when it is reached."""

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if target <= 0:
            self.done.set_result(None)

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target and not self.done.done():
            self.done.set_result(None)


# Control connections ----------------------------------------------------------------------


class Control(fanout.Control):
    """The benchmark's control connection (fanout.py's): one text reply per command."""

    async def connect(self, base: str) -> Control:
        self.conn = await connect_picows(
            f"{base}/control", self.on_text, lambda _code: self.on_close()
        )
        return self

    async def stats(self, timeout: float = 15.0) -> dict[str, Any]:
        return dict(json.loads(await self.ask("stats", timeout)))


def parse_done(reply: str) -> dict[str, Any]:
    word, _, body = reply.partition(" ")
    if word != "done":
        raise RuntimeError(f"unexpected control reply {reply[:200]!r}")
    return dict(json.loads(body))


# A room of members on one server: S5 and S6 ------------------------------------------------


class Fleet:
    """N members of one server (fanout.py's Member and Tracker check every frame's order), a
    control connection that asks for bursts and a monitor connection that asks for stats while
    a burst runs.

    ``protocol``: "ready" (fastapi_rooms' ``/ws``: send a join per room in ``rooms_of(i)``,
    wait for each ``joined``) or "plain" (``/members/m<i>``, told ``joined``).
    """

    def __init__(
        self,
        server: AppServer,
        n: int,
        size: int,
        total_messages: int,
        protocol: str,
        rooms_of: Callable[[int], list[str]] | None = None,
    ) -> None:
        self.server = server
        self.base = f"ws://127.0.0.1:{server.port}"
        self.n = n
        self.size = size
        self.protocol = protocol
        self.rooms_of = rooms_of or (lambda i: [])
        self.expected = [payload(seq, size).encode() for seq in range(total_messages)]
        self.members = [Member() for _ in range(n)]
        self.tracker: Tracker | None = None
        self.control = Control()
        self.monitor = Control()
        self.seq = 0
        self.connect_seconds = 0.0
        self.join_errors = 0
        self.pending_reply: asyncio.Future[str] | None = None  # a burst's reply to come

    async def open(self, concurrency: int, budget: float) -> None:
        tracker = self.tracker = Tracker(self.n, self.expected, asyncio.get_running_loop())

        def on_text_for(i: int, member: Member) -> OnText:
            wanted = len(self.rooms_of(i))
            acks = 0

            def on_text(data: bytes) -> None:
                nonlocal acks
                if member.joined:
                    tracker.on_text(member, data)
                elif self.protocol == "plain":
                    tracker.on_text(member, data)  # "joined", then payloads
                elif b'"joined"' in data:
                    acks += 1
                    if acks == wanted:
                        tracker.on_text(member, JOINED_BYTES)
                elif b'"error"' in data:
                    self.join_errors += 1

            return on_text

        async def connect(i: int) -> None:
            member = self.members[i]
            path = "/ws" if self.protocol == "ready" else f"/members/m{i}"
            member.conn = await connect_picows(
                self.base + path,
                on_text_for(i, member),
                lambda _code, m=member: tracker.on_close(m),
            )
            for room in self.rooms_of(i):
                member.conn.send_text(join_json(room))

        t0 = time.perf_counter()
        results = await connect_all(self.n, connect, concurrency)
        error = first_error(results)
        if error:
            failed = sum(1 for r in results if isinstance(r, BaseException))
            raise RuntimeError(f"{failed} of {self.n} members failed to connect: {error}")
        try:
            await asyncio.wait_for(asyncio.shield(tracker.joined_future), budget)
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"only {tracker.joined} of {self.n} members joined within {budget:.0f} s "
                f"({self.join_errors} join errors)"
            ) from None
        self.connect_seconds = time.perf_counter() - t0
        await self.control.connect(self.base)
        await self.monitor.connect(self.base)

    def delivered(self) -> int:
        return sum(m.count for m in self.members)

    async def burst(
        self,
        command: str,
        count: int,
        timeout: float,
        sample_every: float | None = None,
        deliveries: int | None = None,
    ) -> dict[str, Any]:
        """Ask for ``count`` messages (``command`` gets ``start``, ``count`` and ``size``) and
        wait until every member has them, or ``timeout``.

        Returns the measurement; ``completed`` False when the timeout came first. In that case
        the reply is still pending: ``finish()`` collects it once the burst can go on.
        """
        assert self.tracker is not None
        tracker = self.tracker
        start = self.seq
        self.seq += count
        before = self.delivered()
        mismatches0 = tracker.mismatches
        done = tracker.arm(start + count, self.members)
        pid = self.server.pid
        rss0 = vmrss_kib(pid)
        cpu0 = process_cpu(pid)
        samples: list[tuple[float, int, int | None]] = []
        t0 = time.perf_counter()
        self.control.conn.send_text(command.format(start=start, count=count, size=self.size))
        self.pending_reply = asyncio.ensure_future(self.control.replies.get())
        sampler = None
        if sample_every:

            async def sample() -> None:
                while True:
                    samples.append(
                        (time.perf_counter() - t0, self.delivered() - before, vmrss_kib(pid))
                    )
                    await asyncio.sleep(sample_every)

            sampler = asyncio.ensure_future(sample())
        completed = True
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
            elapsed = tracker.t_done - t0
        except asyncio.TimeoutError:
            completed = False
            elapsed = time.perf_counter() - t0
        finally:
            if sampler is not None:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
        cpu1 = process_cpu(pid)
        rss1 = vmrss_kib(pid)
        delivered = self.delivered() - before
        used = cpu_between(cpu0, cpu1)
        result: dict[str, Any] = {
            "messages": count,
            "first_seq": start,
            "completed": completed,
            "seconds": elapsed,
            "delivered": delivered,
            "expected": deliveries if deliveries is not None else self.n * count,
            "deliveries_per_s": delivered / elapsed if elapsed > 0 else 0.0,
            "server_cpu_seconds": used,
            "deliveries_per_server_cpu_s": delivered / used if used else None,
            "mismatches": tracker.mismatches - mismatches0,
            "disconnects": tracker.disconnects,
            "rss_before_kib": rss0,
            "rss_after_kib": rss1,
        }
        if samples:
            peak = [s[2] for s in samples if s[2] is not None] + [x for x in (rss1,) if x]
            result["rss_peak_kib"] = max(peak) if peak else None
            result["longest_pause_s"] = longest_pause(samples, elapsed, completed)
            result["timeline"] = [
                {"s": round(t, 3), "delivered": d, "rss_kib": r} for t, d, r in samples
            ]
        if completed:
            reply = await asyncio.wait_for(self.pending_reply, timeout + 30)
            self.pending_reply = None
            result["server"] = parse_done(reply)
        return result

    async def finish(self, result: dict[str, Any], budget: float) -> None:
        """After a burst that timed out: wait for every member and the reply (bounded)."""
        assert self.tracker is not None
        assert self.tracker.done is not None
        await asyncio.wait_for(asyncio.shield(self.tracker.done), budget)
        assert self.pending_reply is not None
        reply = await asyncio.wait_for(self.pending_reply, budget)
        result["server"] = parse_done(reply)

    async def close(self) -> None:
        for c in (self.control, self.monitor):
            if c.conn is not None:
                with contextlib.suppress(Exception):
                    c.conn.close()
        for m in self.members:
            if m.conn is not None and m.open:
                with contextlib.suppress(Exception):
                    m.conn.close()
        await asyncio.sleep(0.2)


def longest_pause(
    samples: Sequence[tuple[float, int, Any]], elapsed: float, completed: bool
) -> float:
    """The longest time the members' delivered count stood still during a burst (to the
    sampling interval); a burst cut by its timeout counts its stuck tail up to the timeout."""
    best = 0.0
    since, last = 0.0, -1
    for t, delivered, _rss in samples:
        if delivered != last:
            since, last = t, delivered
        else:
            best = max(best, t - since)
    if not completed:
        best = max(best, elapsed - since)
    return best


def budget_for(deliveries: int) -> float:
    return fanout.phase_budget(deliveries)


# S4: idle connections --------------------------------------------------------------------------


async def s4_connect(
    server: AppServer, path: str, protocol: str, offer: str, n: int, rooms: int, concurrency: int
) -> tuple[list[Any], dict[str, Any]]:
    """Open ``n`` idle connections (joined to a room for the ready endpoint); (conns, facts)."""
    url = f"ws://127.0.0.1:{server.port}{path}"
    ready = Waiter(n)
    closed = [0]
    errors = [0]

    def on_close(_code: int | None) -> None:
        closed[0] += 1

    async def one(i: int) -> Conn:
        joined = False

        def on_text(data: bytes) -> None:
            nonlocal joined
            if protocol == "ready" and not joined and b'"joined"' in data:
                joined = True
                ready.hit()
            elif b'"error"' in data:
                errors[0] += 1

        if offer == "deflate":
            conn = await connect_sansio(url, on_text, on_close, deflate=True)
        else:
            conn = await connect_picows(url, on_text, on_close)
        if protocol == "ready":
            conn.send_text(join_json(f"idle-{i % rooms}"))
        else:
            ready.hit()  # the bare app: open is all there is
        return conn

    t0 = time.perf_counter()
    results = await connect_all(n, one, concurrency)
    conns = [r for r in results if not isinstance(r, BaseException)]
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.shield(ready.done), 30 + n / 200)
    facts = {
        "connected": len(conns),
        "ready": ready.count,
        "connect_errors": len(results) - len(conns),
        "first_connect_error": first_error(results),
        "join_errors": errors[0],
        "connect_seconds": time.perf_counter() - t0,
        "closed_counter": closed,
        "extensions": sorted({",".join(c.extensions) for c in conns}),
        "client": sorted({c.client for c in conns}),
    }
    return conns, facts


def abort_all(conns: Sequence[Any]) -> None:
    for c in conns:
        with contextlib.suppress(Exception):
            c.abort()


async def s4_measure(
    server: AppServer, case: str, offer: str, rnd: int, args: argparse.Namespace
) -> dict[str, Any]:
    _kind, _factory, path, protocol = S4_CASES[case]
    n = args.s4_n
    pid = server.pid
    rec: dict[str, Any] = {
        "case": case, "offer": offer, "round": rnd, "n": n, "pid": pid, "error": None,
        "loadavg_1m": loadavg(),
    }  # fmt: skip
    # Warm-up: a few connections through the same path, so lazily built parts (imports,
    # validators, the first room) are in the baseline, not in the per-connection figure.
    warm, _ = await s4_connect(
        server, path, protocol, offer, args.s4_warmup, args.s4_rooms, args.connect_concurrency
    )
    abort_all(warm)
    await asyncio.sleep(args.s4_settle)
    status0 = proc_status(pid)
    rec["fds_before"] = open_fds(pid)
    conns, facts = await s4_connect(
        server, path, protocol, offer, n, args.s4_rooms, args.connect_concurrency
    )
    closed = facts.pop("closed_counter")
    rec.update(facts)
    try:
        await asyncio.sleep(args.s4_settle)
        status1 = proc_status(pid)
        rec["fds_after"] = open_fds(pid)
        cpu0 = process_cpu(pid)
        t0 = time.perf_counter()
        await asyncio.sleep(args.s4_idle_seconds)
        cpu1 = process_cpu(pid)
        window = time.perf_counter() - t0
        status2 = proc_status(pid)
        idle_cpu = cpu_between(cpu0, cpu1)
        rec.update(
            {
                "rss_before_kib": status0.get("VmRSS"),
                "rss_after_kib": status1.get("VmRSS"),
                "rss_end_kib": status2.get("VmRSS"),
                "rss_anon_before_kib": status0.get("RssAnon"),
                "rss_anon_after_kib": status1.get("RssAnon"),
                "idle_window_seconds": window,
                "idle_cpu_seconds": idle_cpu,
                "idle_cpu_percent": None if idle_cpu is None else 100 * idle_cpu / window,
                "closed_during_run": closed[0],
            }
        )
        if rec["rss_before_kib"] is not None and rec["rss_after_kib"] is not None:
            grown = rec["rss_after_kib"] - rec["rss_before_kib"]
            rec["rss_per_conn_kib"] = grown / n
            rec["rss_anon_per_conn_kib"] = (
                (rec["rss_anon_after_kib"] - rec["rss_anon_before_kib"]) / n
                if rec["rss_anon_after_kib"] is not None and rec["rss_anon_before_kib"] is not None
                else None
            )
        if rec["ready"] < n:
            rec["error"] = (
                f"{rec['ready']} of {n} connections ready ({rec['connect_errors']} failed: "
                f"{rec['first_connect_error']}; {rec['join_errors']} join errors)"
            )
        elif closed[0]:
            rec["error"] = f"{closed[0]} connections closed while idle"
    finally:
        abort_all(conns)
    return rec


def run_s4(
    args: argparse.Namespace, run: Callable[[Any, float], Any], log_dir: Path, cpu: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    measurements = [(case, offer) for case in args.s4_cases for offer in args.s4_offers]
    records: list[dict[str, Any]] = []
    per = 60 + args.s4_n / 100 + 2 * args.s4_settle + args.s4_idle_seconds
    for rnd in range(1, args.rounds + 1):
        order = measurements if rnd % 2 else measurements[::-1]
        specs = [
            (f"s4-{case}-{offer}-r{rnd}", S4_CASES[case][0], S4_CASES[case][1])
            for case, offer in order
        ]
        try:
            servers = start_servers(specs, cpu, log_dir, args.s4_n)
        except Exception as exc:
            for case, offer in order:
                records.append({"case": case, "offer": offer, "round": rnd,
                                "error": f"server start failed: {exc!r}"})  # fmt: skip
            continue
        for (case, offer), server in zip(order, servers, strict=True):
            info = server.info()
            try:
                rec = run(s4_measure(server, case, offer, rnd, args), per)
            except (Exception, asyncio.CancelledError) as exc:
                rec = {"case": case, "offer": offer, "round": rnd,
                       "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                print(server.log(), file=sys.stderr)
            finally:
                server.stop()
            rec["server"] = info
            records.append(rec)
            print_s4(rec)
    return records, summarize_s4(records, args)


def print_s4(r: dict[str, Any]) -> None:
    if r.get("error") and "rss_per_conn_kib" not in r:
        print(f"  s4 round {r['round']} {r['case']:20s} {r['offer']:7s} ERROR {r['error']}",
              file=sys.stderr)  # fmt: skip
        return
    print(
        f"  s4 round {r['round']} {r['case']:20s} {r['offer']:7s} "
        f"{r['ready']}/{r['n']} in {r['connect_seconds']:.1f} s  "
        f"rss {r['rss_before_kib'] / 1024:.1f} -> {r['rss_after_kib'] / 1024:.1f} MiB  "
        f"{r.get('rss_per_conn_kib', float('nan')):.2f} KiB/conn  "
        f"idle cpu {fmt(r.get('idle_cpu_percent'), '.2f')} %  ext {r['extensions']}  "
        f"load {r['loadavg_1m']}" + (f"  ERROR {r['error']}" if r.get("error") else ""),
        file=sys.stderr,
    )


def summarize_s4(records: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    ok = [r for r in records if not r.get("error") and r.get("rss_per_conn_kib") is not None]
    base = {(r["round"], r["offer"]): r for r in ok if r["case"] == S4_BASE}
    cases: dict[str, Any] = {}
    for case in args.s4_cases:
        for offer in args.s4_offers:
            rs = [r for r in ok if r["case"] == case and r["offer"] == offer]
            key = f"{case}/{offer}"
            diffs = [
                r["rss_per_conn_kib"] - base[(r["round"], offer)]["rss_per_conn_kib"]
                for r in rs
                if (r["round"], offer) in base
            ]
            cases[key] = {
                "case": case,
                "server": S4_CASES[case][0],
                "offer": offer,
                "rounds_ok": len(rs),
                "rounds_failed": sum(
                    1 for r in records if r["case"] == case and r["offer"] == offer
                )
                - len(rs),
                "n": args.s4_n,
                "extensions_negotiated": sorted({e for r in rs for e in r["extensions"]}),
                "client": sorted({c for r in rs for c in r["client"]}),
                "rss_per_conn_kib": spread([r["rss_per_conn_kib"] for r in rs]),
                "rss_anon_per_conn_kib": spread(
                    [
                        r["rss_anon_per_conn_kib"]
                        for r in rs
                        if r.get("rss_anon_per_conn_kib") is not None
                    ]
                ),
                "vs_bare_uvicorn_kib": spread(diffs) if case != S4_BASE else None,
                "idle_cpu_percent": spread(
                    [r["idle_cpu_percent"] for r in rs if r.get("idle_cpu_percent") is not None]
                ),
                "connect_seconds": spread([r["connect_seconds"] for r in rs]),
                "rss_before_mib": spread([r["rss_before_kib"] / 1024 for r in rs]),
            }
    targets = []
    for offer in args.s4_offers:
        key = f"rooms-uvicorn/{offer}"
        if key in cases and cases[key]["vs_bare_uvicorn_kib"] is not None:
            diff = cases[key]["vs_bare_uvicorn_kib"]
            targets.append(
                {
                    "scenario": "s4",
                    "what": f"fastapi_rooms on uvicorn over the bare uvicorn app, offer {offer}",
                    "n": args.s4_n,
                    "variant": key,
                    "over": f"{S4_BASE}/{offer}",
                    "metric": "extra RSS KiB per idle connection",
                    "comparison": "at_most",
                    "goal": S4_TARGET_KIB,
                    "value": diff["median"],
                    "spread": diff,
                    "stated_for_n": S4_TARGET_N,
                    "applies": args.s4_n == S4_TARGET_N,
                    "met": diff["median"] is not None and diff["median"] <= S4_TARGET_KIB,
                }
            )
    return {
        "n": args.s4_n,
        "rounds": args.rounds,
        "idle_seconds": args.s4_idle_seconds,
        "cases": cases,
        "targets": targets,
    }


# S5: room layouts and join/leave ----------------------------------------------------------------


class JoinLeaver:
    """A client that alternates join and leave of one room, one request in flight."""

    __slots__ = ("acks", "conn", "errors", "join", "leave", "remaining", "state", "welcomed")

    def __init__(self, room: str, state: Waiter) -> None:
        self.join = join_json(room)
        self.leave = json.dumps({"type": "leave", "room": room})
        self.state = state
        self.remaining = 0
        self.acks = 0
        self.errors = 0
        self.conn: Any = None
        self.welcomed = False

    def start(self, ops: int) -> None:
        self.remaining = ops
        self.conn.send_text(self.join)

    def on_text(self, data: bytes) -> None:
        if b'"joined"' in data:
            self.ack(self.leave)
        elif b'"left"' in data:
            self.ack(self.join)
        elif b'"welcome"' in data:
            self.welcomed = True
        elif b'"error"' in data:
            self.errors += 1

    def ack(self, following: str) -> None:
        self.acks += 1
        self.remaining -= 1
        self.state.hit()
        if self.remaining > 0:
            self.conn.send_text(following)


async def s5_join_leave(
    server: AppServer, clients: list[JoinLeaver], ops: int, rnd: int
) -> dict[str, Any]:
    state = Waiter(len(clients) * ops)
    for c in clients:
        c.state = state
    pid = server.pid
    cpu0 = process_cpu(pid)
    errors0 = sum(c.errors for c in clients)
    t0 = time.perf_counter()
    for c in clients:
        c.start(ops)
    error = None
    try:
        await asyncio.wait_for(asyncio.shield(state.done), 30 + len(clients) * ops / 2000)
    except asyncio.TimeoutError:
        error = f"{state.count} of {state.target} acks in time"
    elapsed = time.perf_counter() - t0
    used = cpu_between(cpu0, process_cpu(pid))
    return {
        "round": rnd,
        "clients": len(clients),
        "ops_per_client": ops,
        "acks": state.count,
        "expected": state.target,
        "errors": sum(c.errors for c in clients) - errors0,
        "seconds": elapsed,
        "ops_per_s": state.count / elapsed if elapsed > 0 else 0.0,
        "server_cpu_seconds": used,
        "server_cpu_us_per_op": used / state.count * 1e6 if used and state.count else None,
        "error": error,
    }


def microbench(connections: int, rooms: int, repeat: int) -> dict[str, Any]:
    """RoomManager.join_room / leave_room in this process (timeit: default_timer, gc off).

    ``connections`` registered connections (fastapi_rooms WebSockets over a do-nothing ASGI
    connection); one pass joins each to room ``r<i % rooms>``, the next leaves them all. With
    ``rooms`` = ``connections`` every join creates its room and every leave deletes it.
    """
    from fastapi_rooms import RoomManager, WebSocket

    async def receive() -> dict[str, Any]:
        raise RuntimeError("not used")

    async def send(_event: dict[str, Any]) -> None:
        return None

    out: dict[str, Any] = {"connections": connections, "repeat": repeat}
    for label, nrooms in (("shared_rooms", rooms), ("room_per_join", connections)):
        manager = RoomManager()
        ids = [f"c{i}" for i in range(connections)]
        for cid in ids:
            ws = WebSocket({"type": "websocket", "path": "/bench"}, receive, send, accepted=True)
            manager.add_connection(cid, ws)
        pairs = [(cid, f"r{i % nrooms}") for i, cid in enumerate(ids)]
        join, leave = manager.join_room, manager.leave_room

        def joins(pairs: list[tuple[str, str]] = pairs, join: Any = join) -> None:
            for cid, room in pairs:
                join(cid, room)

        def leaves(pairs: list[tuple[str, str]] = pairs, leave: Any = leave) -> None:
            for cid, room in pairs:
                leave(cid, room)

        join_ns, leave_ns = [], []
        for _ in range(repeat):
            join_ns.append(timeit.Timer(joins).timeit(1) / connections * 1e9)
            leave_ns.append(timeit.Timer(leaves).timeit(1) / connections * 1e9)
            assert not manager.rooms  # every room is gone again
        out[label] = {"rooms": nrooms, "join_ns": spread(join_ns), "leave_ns": spread(leave_ns)}
    return out


def run_s5(
    args: argparse.Namespace, run: Callable[[Any, float], Any], log_dir: Path, cpu: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    n, small = args.s5_n, args.s5_small_size
    nrooms = math.ceil(n / small)
    b, w = args.s5_messages, args.s5_warmup
    records: list[dict[str, Any]] = []
    total = 2 * w + args.rounds * 2 * b
    (server,) = start_servers([("s5-rooms-uvicorn", "uvicorn", "make_rooms_app")], cpu, log_dir,
                              n + args.s5_jl_clients)  # fmt: skip
    info = server.info()
    fleet = Fleet(server, n, args.size, total, "ready", lambda i: ["big", f"small-{i // small}"])
    clients: list[JoinLeaver] = []
    open_error = None
    layouts = {
        "big_room": "burst big {start} {count} {size}",
        "small_rooms": f"burst-rooms small- {nrooms} " + "{start} {count} {size}",
    }
    try:
        try:
            run(fleet.open(args.connect_concurrency, 60 + n / 100), 120 + n / 50)
            print(
                f"  s5 {n} members in {fleet.connect_seconds:.1f} s (big room + "
                f"{nrooms} rooms of {small}); server pid {server.pid}",
                file=sys.stderr,
            )

            async def open_clients() -> None:
                placeholder = Waiter(0)

                async def one(i: int) -> JoinLeaver:
                    c = JoinLeaver(f"jl-{i % args.s5_jl_rooms}", placeholder)
                    c.conn = await connect_picows(fleet.base + "/ws", c.on_text, lambda _code: None)
                    return c

                results = await connect_all(args.s5_jl_clients, one, args.connect_concurrency)
                error = first_error(results)
                if error:
                    raise RuntimeError(f"join/leave clients: {error}")
                clients.extend(results)

            run(open_clients(), 60 + args.s5_jl_clients / 100)
            for command in layouts.values():  # warm-up
                run(fleet.burst(command, w, budget_for(n * w)), budget_for(n * w) + 60)
            if args.s5_jl_ops:
                run(s5_join_leave(server, clients, 2, 0), 60)
        except (Exception, asyncio.CancelledError) as exc:
            open_error = f"{type(exc).__name__}: {exc}"
            print(f"  s5 setup failed: {open_error}\n{server.log()}", file=sys.stderr)
        for rnd in range(1, args.rounds + 1) if open_error is None else ():
            order = list(layouts) if rnd % 2 else list(layouts)[::-1]
            for layout in order:
                try:
                    r = run(
                        fleet.burst(layouts[layout], b, budget_for(n * b)),
                        budget_for(n * b) + 60,
                    )
                    r.update(layout=layout, round=rnd, loadavg_1m=loadavg())
                    r["error"] = None
                    if r["delivered"] != r["expected"] or r["mismatches"]:
                        r["error"] = f"delivered {r['delivered']}/{r['expected']}, " \
                                     f"{r['mismatches']} mismatches"  # fmt: skip
                    r["broadcasts"] = b if layout == "big_room" else b * nrooms
                except (Exception, asyncio.CancelledError) as exc:
                    r = {"layout": layout, "round": rnd, "error": f"{type(exc).__name__}: {exc}"}
                records.append(r)
                print_s5(r)
            if args.s5_jl_ops:
                try:
                    r = run(s5_join_leave(server, clients, args.s5_jl_ops, rnd),
                            60 + len(clients) * args.s5_jl_ops / 1000)  # fmt: skip
                    r["layout"] = "join_leave"
                except (Exception, asyncio.CancelledError) as exc:
                    r = {"layout": "join_leave", "round": rnd,
                         "error": f"{type(exc).__name__}: {exc}"}  # fmt: skip
                records.append(r)
                print_s5(r)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            info["stats"] = run(fleet.monitor.stats(), 20)
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            run(fleet.close(), 20)
        for c in clients:
            with contextlib.suppress(Exception):
                c.conn.close()
        server.stop()
    micro = microbench(args.s5_micro_connections, args.s5_micro_rooms, args.s5_micro_repeat)
    print(f"  s5 microbench {json.dumps(micro)}", file=sys.stderr)
    summary = summarize_s5(records, args, micro, nrooms)
    summary["server"] = info
    if open_error:
        summary["error"] = open_error
    return records, summary


def print_s5(r: dict[str, Any]) -> None:
    if r.get("layout") == "join_leave" and "ops_per_s" in r:
        print(
            f"  s5 round {r['round']} join_leave  {r['ops_per_s'] / 1000:6.1f} k ops/s  "
            f"{r['acks']}/{r['expected']} acks  cpu {fmt(r['server_cpu_us_per_op'], '.1f')} "
            f"us/op" + (f"  ERROR {r['error']}" if r["error"] else ""),
            file=sys.stderr,
        )
    elif "deliveries_per_s" in r:
        print(f"  s5 round {r['round']} {r['layout']:11s} {r['deliveries_per_s'] / 1000:6.1f} k/s"
              f"  {fmt_k(r['deliveries_per_server_cpu_s'])} k/cpu-s  "
              f"burst {r['seconds'] * 1000:.0f} ms  loop {r['server']['seconds'] * 1000:.0f} ms  "
              f"delivered {r['delivered']}/{r['expected']}  load {r['loadavg_1m']}"
              + (f"  ERROR {r['error']}" if r["error"] else ""), file=sys.stderr)  # fmt: skip
    else:
        print(f"  s5 round {r['round']} {r['layout']} ERROR {r['error']}", file=sys.stderr)


def summarize_s5(
    records: list[dict[str, Any]], args: argparse.Namespace, micro: dict[str, Any], nrooms: int
) -> dict[str, Any]:
    ok = [r for r in records if not r.get("error")]
    out: dict[str, Any] = {
        "n": args.s5_n,
        "small_room_count": nrooms,
        "small_room_size": args.s5_small_size,
        "messages": args.s5_messages,
        "rounds": args.rounds,
    }
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in ok:
        by_round.setdefault(r["round"], {})[r["layout"]] = r
    for layout in ("big_room", "small_rooms"):
        rs = [r for r in ok if r["layout"] == layout]
        out[layout] = {
            "rounds_ok": len(rs),
            "rounds_failed": sum(1 for r in records if r["layout"] == layout) - len(rs),
            "all_delivered": bool(rs)
            and all(r["delivered"] == r["expected"] and not r["mismatches"] for r in rs),
            "deliveries_per_s": spread([r["deliveries_per_s"] for r in rs]),
            "deliveries_per_server_cpu_s": spread(
                [r["deliveries_per_server_cpu_s"] for r in rs if r["deliveries_per_server_cpu_s"]]
            ),
            "broadcasts_per_burst": rs[0]["broadcasts"] if rs else None,
            "server_loop_ms": spread([r["server"]["seconds"] * 1000 for r in rs]),
        }
    out["small_vs_big"] = spread(
        [
            p["small_rooms"]["deliveries_per_s"] / p["big_room"]["deliveries_per_s"]
            for p in by_round.values()
            if "small_rooms" in p and "big_room" in p and p["big_room"]["deliveries_per_s"]
        ]
    )
    jl = [r for r in ok if r["layout"] == "join_leave"]
    out["join_leave"] = {
        "clients": args.s5_jl_clients,
        "ops_per_client": args.s5_jl_ops,
        "rooms": args.s5_jl_rooms,
        "rounds_ok": len(jl),
        "rounds_failed": sum(1 for r in records if r["layout"] == "join_leave") - len(jl),
        "ops_per_s": spread([r["ops_per_s"] for r in jl]),
        "server_cpu_us_per_op": spread(
            [r["server_cpu_us_per_op"] for r in jl if r["server_cpu_us_per_op"]]
        ),
        "errors": sum(r["errors"] for r in jl),
    }
    out["microbench"] = micro
    return out


# S6: a stalled member --------------------------------------------------------------------------


class Stalled:
    """A member that joins and then stops reading (its transport is paused: the server's frames
    pile up in the kernel, then in the server). Later it reads again and counts what it got."""

    def __init__(self) -> None:
        self.conn: Any = None
        self.frames = 0  # payload frames received
        self.joined: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None

    def on_text(self, data: bytes) -> None:
        if not self.joined.done():
            if data == JOINED_BYTES or b'"joined"' in data:
                self.joined.set_result(None)
            return
        self.frames += 1

    def on_close(self, code: int | None) -> None:
        self.close_code = code
        if not self.joined.done():
            self.joined.set_exception(ConnectionError(f"closed before joining ({code})"))
        if not self.closed.done():
            self.closed.set_result(code)

    async def open(self, fleet: Fleet, rnd: int) -> None:
        if fleet.protocol == "ready":
            self.conn = await connect_picows(fleet.base + "/ws", self.on_text, self.on_close)
            self.conn.send_text(join_json("s6"))
        else:
            self.conn = await connect_picows(
                f"{fleet.base}/members/stalled{rnd}", self.on_text, self.on_close
            )
        await asyncio.wait_for(self.joined, 10)
        self.conn.pause()


def s6_messages(args: argparse.Namespace) -> int:
    """Enough messages for the stalled member to overflow: what the kernel and the server's
    transport absorb (about 4 MiB here: the server socket's send buffer grows to tcp_wmem's
    maximum) plus fastapi_rooms' buffer of 1024 frames, with room to spare (6 MiB)."""
    if args.s6_messages:
        return int(args.s6_messages)
    return 1024 + math.ceil(6 * 2**20 / args.s6_size)


async def s6_stalled(
    fleet: Fleet, rnd: int, count: int, timeout: float, sample_every: float
) -> dict[str, Any]:
    """One burst with a stalled member present; then let it read again and clean up."""
    stalled = Stalled()
    await stalled.open(fleet, rnd)
    pid = fleet.server.pid
    members_with = (await fleet.monitor.stats())["members"]
    fds0 = open_fds(pid)
    command = "burst s6 {start} {count} {size}"
    r = await fleet.burst(command, count, timeout, sample_every, deliveries=fleet.n * count)
    r["members_on_server"] = members_with
    r["server_fds_before"] = fds0
    r["server_fds_after_burst"] = open_fds(pid)
    r["stalled_frames_during_burst"] = stalled.frames  # 0: it reads nothing while paused
    if not r["completed"]:
        stats = await fleet.monitor.stats()
        r["stuck_at"] = stats.get("progress")
        r["server_members_when_stuck"] = stats.get("members")
    t_resume = time.perf_counter()
    stalled.conn.resume()  # read again: the plain loop can go on; rooms' close frame arrives
    if not r["completed"]:
        await fleet.finish(r, budget_for(fleet.n * count))
        r["finished_after_resume_s"] = time.perf_counter() - t_resume
    if fleet.protocol == "ready":
        # fastapi_rooms closed it (1013) or still has it: read what is there, then close.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(stalled.closed), 10)
    else:
        await asyncio.sleep(0.2)
    r["stalled_frames_received"] = stalled.frames
    r["stalled_close_code"] = stalled.close_code
    if not stalled.closed.done():
        stalled.conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(stalled.closed), 10)
    # Wait until the server forgot it, so the next burst is to the others only.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if (await fleet.monitor.stats())["members"] == fleet.n:
            break
        await asyncio.sleep(0.05)
    else:
        r["cleanup_error"] = "the server still counts the stalled member"
    return r


def run_s6(
    args: argparse.Namespace, run: Callable[[Any, float], Any], log_dir: Path, cpu: int | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    others = args.s6_n - 1
    count = s6_messages(args)
    w = args.s6_warmup
    total = w + args.rounds * 2 * count
    variants = {"rooms": ("make_rooms_app", "ready"), "plain": ("make_plain_app", "plain")}
    records: list[dict[str, Any]] = []
    infos: dict[str, Any] = {}
    fleets: dict[str, Fleet] = {}
    servers = start_servers(
        [(f"s6-{v}-uvicorn", "uvicorn", factory) for v, (factory, _p) in variants.items()],
        cpu, log_dir, args.s6_n, S6_UVICORN_FLAGS,
    )  # fmt: skip
    last_absent: dict[str, float] = {}
    open_errors: dict[str, str] = {}
    sample_every = 0.02 if args.quick else 0.1
    try:
        for (v, (_factory, protocol)), server in zip(variants.items(), servers, strict=True):
            infos[v] = server.info()
            fleet = Fleet(server, others, args.s6_size, total, protocol,
                          (lambda i: ["s6"]) if protocol == "ready" else None)  # fmt: skip
            try:
                run(fleet.open(args.connect_concurrency, 60 + others / 100), 120 + others / 50)
                if w:
                    run(fleet.burst("burst s6 {start} {count} {size}", w, budget_for(others * w)),
                        budget_for(others * w) + 30)  # fmt: skip
                fleets[v] = fleet
                print(f"  s6 {v}: {others} members in {fleet.connect_seconds:.1f} s; server pid "
                      f"{server.pid}", file=sys.stderr)  # fmt: skip
            except (Exception, asyncio.CancelledError) as exc:
                open_errors[v] = f"{type(exc).__name__}: {exc}"
                print(f"  s6 {v} setup failed: {open_errors[v]}\n{server.log()}", file=sys.stderr)
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    run(fleet.close(), 20)
        deliveries = others * count
        for rnd in range(1, args.rounds + 1):
            order = list(variants) if rnd % 2 else list(variants)[::-1]
            conditions = ["absent", "stalled"] if rnd % 2 else ["stalled", "absent"]
            for v in order:
                for condition in conditions:
                    rec: dict[str, Any] = {"variant": v, "condition": condition, "round": rnd,
                                           "loadavg_1m": loadavg(), "error": None}  # fmt: skip
                    if v not in fleets:
                        rec["error"] = open_errors.get(v, "session lost")
                        records.append(rec)
                        continue
                    fleet = fleets[v]
                    try:
                        if condition == "absent":
                            r = run(
                                fleet.burst("burst s6 {start} {count} {size}", count,
                                            budget_for(deliveries), sample_every),
                                budget_for(deliveries) + 60,
                            )  # fmt: skip
                            if r["completed"]:
                                last_absent[v] = r["seconds"]
                        else:
                            timeout = stall_timeout(args, last_absent.get(v))
                            r = run(
                                s6_stalled(fleet, rnd, count, timeout, sample_every),
                                timeout + 2 * budget_for(deliveries) + 120,
                            )
                            r["timeout_s"] = timeout
                        rec.update(r)
                        rec["others"] = others
                        if r["mismatches"]:
                            rec["error"] = f"{r['mismatches']} frames lost or out of order"
                        elif condition == "absent" and not r["completed"]:
                            rec["error"] = "burst without the stalled member did not complete"
                        elif r.get("cleanup_error"):
                            rec["error"] = r["cleanup_error"]
                    except (Exception, asyncio.CancelledError) as exc:
                        rec["error"] = f"{type(exc).__name__}: {exc}"
                        print(fleet.server.log(), file=sys.stderr)
                        fleets.pop(v, None)
                        open_errors[v] = f"lost in round {rnd}: {rec['error']}"
                        with contextlib.suppress(Exception, asyncio.CancelledError):
                            run(fleet.close(), 20)
                    records.append(rec)
                    print_s6(rec)
        for v, fleet in fleets.items():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                infos[v]["stats"] = run(fleet.monitor.stats(), 20)
    finally:
        for fleet in fleets.values():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                run(fleet.close(), 20)
        for server in servers:
            server.stop()
    summary = summarize_s6(records, args, count)
    summary["servers"] = infos
    if open_errors:
        summary["errors"] = open_errors
    return records, summary


def stall_timeout(args: argparse.Namespace, absent_seconds: float | None) -> float:
    """How long a burst with the stalled member may take before it counts as stalled: a
    multiple of the same server's last burst without it, within [min, max]. (Keep the max under
    S6_UVICORN_FLAGS's ping interval.)"""
    guess = args.s6_timeout_factor * absent_seconds if absent_seconds else args.s6_timeout_max
    return min(max(guess, args.s6_timeout_min), args.s6_timeout_max)


def print_s6(r: dict[str, Any]) -> None:
    if "deliveries_per_s" not in r:
        print(f"  s6 round {r['round']} {r['variant']:5s} {r['condition']:7s} ERROR {r['error']}",
              file=sys.stderr)  # fmt: skip
        return
    server = r.get("server") or {}
    closes = server.get("slow_consumer_closes") or []
    extra = ""
    if r["condition"] == "stalled":
        extra = (
            ("  completed" if r["completed"] else f"  STALLED (timeout {r['timeout_s']:.1f} s)")
            + (f"  1013 at msg {closes[0]['seq'] - r['first_seq']} ({closes[0]['ms']:.0f} ms)"
               if closes else "")
            + f"  stalled got {r['stalled_frames_received']} close {r['stalled_close_code']}"
        )  # fmt: skip
    print(
        f"  s6 round {r['round']} {r['variant']:5s} {r['condition']:7s} "
        f"{r['deliveries_per_s'] / 1000:6.1f} k/s  {r['delivered']}/{r['expected']} in "
        f"{r['seconds']:.2f} s  rss +{fmt_kib(rss_growth(r))} KiB{extra}  load {r['loadavg_1m']}"
        + (f"  ERROR {r['error']}" if r.get("error") else ""),
        file=sys.stderr,
    )


def rss_growth(r: dict[str, Any]) -> float | None:
    peak, before = r.get("rss_peak_kib"), r.get("rss_before_kib")
    return None if peak is None or before is None else peak - before


def summarize_s6(records: list[dict[str, Any]], args: argparse.Namespace, count: int) -> dict:
    ok = [r for r in records if not r.get("error") and "deliveries_per_s" in r]
    out: dict[str, Any] = {
        "n": args.s6_n,
        "others": args.s6_n - 1,
        "messages": count,
        "size": args.s6_size,
        "rounds": args.rounds,
    }
    targets = []
    for v in ("rooms", "plain"):
        rs = [r for r in ok if r["variant"] == v]
        absent = {r["round"]: r for r in rs if r["condition"] == "absent"}
        stalled = {r["round"]: r for r in rs if r["condition"] == "stalled"}
        ratios = [
            stalled[k]["deliveries_per_s"] / absent[k]["deliveries_per_s"]
            for k in stalled
            if k in absent and absent[k]["deliveries_per_s"]
        ]
        growth = [
            g - a
            for k in stalled
            if k in absent
            and (g := rss_growth(stalled[k])) is not None
            and (a := rss_growth(absent[k])) is not None
        ]
        closes = [
            c
            for r in stalled.values()
            for c in (r.get("server") or {}).get("slow_consumer_closes", [])[:1]
        ]
        firsts = {r["round"]: r["first_seq"] for r in stalled.values()}
        close_rounds = [
            r for r in stalled.values() if (r.get("server") or {}).get("slow_consumer_closes")
        ]
        entry: dict[str, Any] = {
            "rounds_ok": {"absent": len(absent), "stalled": len(stalled)},
            "rounds_failed": sum(1 for r in records if r["variant"] == v) - len(rs),
            "absent_deliveries_per_s": spread([r["deliveries_per_s"] for r in absent.values()]),
            "stalled_deliveries_per_s": spread([r["deliveries_per_s"] for r in stalled.values()]),
            "stalled_vs_absent": spread(ratios),
            "stalled_rounds": sum(1 for r in stalled.values() if not r["completed"]),
            "stalled_timeout_s": spread([r["timeout_s"] for r in stalled.values()]),
            "stuck_at_message": spread(
                [
                    r["stuck_at"]["seq"] - r["first_seq"]
                    for r in stalled.values()
                    if r.get("stuck_at") and r["stuck_at"].get("seq") is not None
                ]
            ),
            "others_longest_pause_s": {
                "absent": spread(
                    [
                        r["longest_pause_s"]
                        for r in absent.values()
                        if r.get("longest_pause_s") is not None
                    ]
                ),
                "stalled": spread(
                    [
                        r["longest_pause_s"]
                        for r in stalled.values()
                        if r.get("longest_pause_s") is not None
                    ]
                ),
            },
            "others_share_delivered_by_timeout": spread(
                [r["delivered"] / r["expected"] for r in stalled.values() if not r["completed"]]
            ),
            "rss_growth_kib": {
                "absent": spread([g for r in absent.values() if (g := rss_growth(r)) is not None]),
                "stalled": spread(
                    [g for r in stalled.values() if (g := rss_growth(r)) is not None]
                ),
                "stalled_minus_absent": spread(growth),
            },
            "closed_1013": {
                "rounds": len(close_rounds),
                "after_messages": spread(
                    [
                        c["seq"] - firsts[r["round"]]
                        for r in close_rounds
                        for c in r["server"]["slow_consumer_closes"][:1]
                        if c.get("seq") is not None
                    ]
                ),
                "after_ms": spread([c["ms"] for c in closes if c.get("ms") is not None]),
                "stalled_frames_before_close": spread(
                    [r["stalled_frames_received"] for r in close_rounds]
                ),
                "close_codes_seen_by_client": sorted(
                    {str(r["stalled_close_code"]) for r in stalled.values()}
                ),
            },
        }
        out[v] = entry
    rooms = out["rooms"]["stalled_vs_absent"]
    common = {"scenario": "s6", "n": args.s6_n, "stated_for_n": S6_TARGET_N,
              "applies": args.s6_n == S6_TARGET_N}  # fmt: skip
    targets.append(
        {
            **common,
            "what": "fastapi_rooms: the other members' deliveries/s with a stalled member "
            "present over absent (paired by round)",
            "variant": "rooms",
            "over": "rooms",
            "metric": "others' deliveries/s, stalled member present / absent",
            "comparison": "at_least",
            "goal": S6_TARGET_RATIO,
            "value": rooms["median"],
            "spread": rooms,
            "met": rooms["median"] is not None and rooms["median"] >= S6_TARGET_RATIO,
        }
    )
    plain = out["plain"]
    share = (
        plain["stalled_rounds"] / plain["rounds_ok"]["stalled"]
        if plain["rounds_ok"]["stalled"]
        else None
    )
    targets.append(
        {
            **common,
            "what": "the plain loop stalls with the stalled member present",
            "variant": "plain",
            "over": "plain",
            "metric": "share of bursts with the stalled member that stalled",
            "comparison": "at_least",
            "goal": 1.0,
            "value": share,
            "stalled_rounds": plain["stalled_rounds"],
            "rounds": plain["rounds_ok"]["stalled"],
            "met": share == 1.0,
        }
    )
    out["targets"] = targets
    return out


# Output ------------------------------------------------------------------------------------


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def fmt_k(x: float | None) -> str:
    return "-" if x is None else f"{x / 1000:.1f}"


def fmt_kib(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def trio(s: dict[str, Any] | None, spec: str = ".1f", scale: float = 1.0) -> str:
    if not s or s.get("median") is None:
        return "-"
    return " / ".join(format(s[k] / scale, spec) for k in ("min", "median", "max"))


def ratio_text(s: dict[str, Any] | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def markdown(summary: dict[str, Any]) -> str:
    lines: list[str] = []
    if "s4" in summary:
        s = summary["s4"]
        lines += [
            f"### S4: {s['n']} idle connections, {s['rounds']} round(s), idle CPU over "
            f"{s['idle_seconds']:g} s",
            "",
            "| case | server | client offers | negotiated | RSS KiB/conn min / median / max | "
            "vs bare uvicorn KiB/conn (paired) | idle CPU % of a core (median) | connect s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in s["cases"].values():
            offer = "permessage-deflate" if c["offer"] == "deflate" else "nothing"
            negotiated = ", ".join(e for e in c["extensions_negotiated"] if e) or "none"
            lines.append(
                f"| {c['case']} | {c['server']} | {offer} | {negotiated} | "
                f"{trio(c['rss_per_conn_kib'])} | "
                f"{'(base)' if c['case'] == S4_BASE else signed_trio(c['vs_bare_uvicorn_kib'])} | "
                f"{fmt((c['idle_cpu_percent'] or {}).get('median'), '.2f')} | "
                f"{fmt((c['connect_seconds'] or {}).get('median'))} |"
            )
        for t in s["targets"]:
            lines.append(
                f"\nTarget: {t['what']}: at most {t['goal']:g} KiB/conn (stated for N = "
                f"{t['stated_for_n']}); median {fmt(t['value'], '+.2f')} KiB: "
                f"**{'met' if t['met'] else 'NOT met'}**"
            )
        lines.append("")
    if "s5" in summary:
        s = summary["s5"]
        lines += [
            f"### S5: {s['n']} members: one room of {s['n']} vs {s['small_room_count']} rooms of "
            f"{s['small_room_size']}, {s['messages']} messages per burst, {s['rounds']} round(s)",
            "",
            "| layout | broadcasts per burst | deliveries/s min / median / max | "
            "per server CPU-s (median) | vs big room (paired) | server loop ms (median) |",
            "|---|---|---|---|---|---|",
        ]
        for layout in ("big_room", "small_rooms"):
            e = s[layout]
            lines.append(
                f"| {layout} | {e['broadcasts_per_burst']} | "
                f"{trio(e['deliveries_per_s'], '.1f', 1000)} k | "
                f"{fmt_k(e['deliveries_per_server_cpu_s']['median'])} k | "
                f"{'1.00' if layout == 'big_room' else ratio_text(s['small_vs_big'])} | "
                f"{fmt(e['server_loop_ms']['median'], '.0f')} |"
            )
        jl, micro = s["join_leave"], s["microbench"]
        lines += [
            "",
            "| join/leave through /ws | ops/s min / median / max | server CPU us/op (median) |",
            "|---|---|---|",
            f"| {jl['clients']} clients x {jl['ops_per_client']} ops, {jl['rooms']} rooms | "
            f"{trio(jl['ops_per_s'], '.1f', 1000)} k | "
            f"{fmt(jl['server_cpu_us_per_op']['median'])} |",
            "",
            "| RoomManager in-process (timeit) | join ns (median) | leave ns (median) |",
            "|---|---|---|",
        ]
        for label in ("shared_rooms", "room_per_join"):
            m = micro[label]
            lines.append(
                f"| {micro['connections']} connections, {m['rooms']} rooms | "
                f"{fmt(m['join_ns']['median'], '.0f')} | {fmt(m['leave_ns']['median'], '.0f')} |"
            )
        lines.append("")
    if "s6" in summary:
        s = summary["s6"]
        lines += [
            f"### S6: one stalled member in a room of {s['n']}, {s['messages']} messages of "
            f"{s['size']} bytes per burst, {s['rounds']} round(s)",
            "",
            "| server | others' deliveries/s, absent (median) | stalled member present (median) "
            "| present / absent (paired) | bursts stalled | others' longest pause s, present "
            "(median) | 1013 after messages / ms (median) "
            "| RSS growth KiB, present minus absent (median) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for v in ("rooms", "plain"):
            e = s[v]
            c = e["closed_1013"]
            closed = (
                f"{fmt(c['after_messages']['median'], '.0f')} / "
                f"{fmt(c['after_ms']['median'], '.0f')}"
                if c["rounds"]
                else "never"
            )
            stalled = f"{e['stalled_rounds']} of {e['rounds_ok']['stalled']}"
            if e["stalled_rounds"]:
                stalled += (
                    f" (timeout {fmt(e['stalled_timeout_s']['median'])} s, stuck at message "
                    f"{fmt(e['stuck_at_message']['median'], '.0f')})"
                )
            lines.append(
                f"| {'fastapi_rooms' if v == 'rooms' else 'plain loop'} | "
                f"{fmt_k(e['absent_deliveries_per_s']['median'])} k | "
                f"{fmt_k(e['stalled_deliveries_per_s']['median'])} k | "
                f"{ratio_text(e['stalled_vs_absent'])} | {stalled} | "
                f"{fmt(e['others_longest_pause_s']['stalled']['median'], '.2f')} | {closed} | "
                f"{fmt(e['rss_growth_kib']['stalled_minus_absent']['median'], '.0f')} |"
            )
        for t in s["targets"]:
            verdict = "met" if t["met"] else "NOT met"
            if t["variant"] == "rooms":
                lines.append(
                    f"\nTarget: {t['what']}: at least {t['goal']:g}; median "
                    f"{fmt(t['value'], '.2f')}: **{verdict}**"
                )
            else:
                lines.append(
                    f"\n{t['what']}: {t['stalled_rounds']} of {t['rounds']} bursts: **{verdict}**"
                )
        lines.append("")
    return "\n".join(lines)


def signed_trio(s: dict[str, Any] | None) -> str:
    if not s or s.get("median") is None:
        return "-"
    return " / ".join(format(s[k], "+.2f") for k in ("min", "median", "max"))


def versions() -> dict[str, str]:
    return fanout.versions()


# Main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scenario", default="s4,s5,s6", help="comma list of s4, s5, s6 (default all)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny N, 1 round")
    p.add_argument("--rounds", type=int, default=None, help="rounds of each scenario (3)")
    p.add_argument("--size", type=int, default=32, help="S5 message size in bytes (32)")
    p.add_argument("--connect-concurrency", type=int, default=100)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/)")
    g = p.add_argument_group("S4 idle connections")
    g.add_argument("--s4-n", type=int, default=None, help="connections (10000; quick 200)")
    g.add_argument("--s4-cases", default=S4_DEFAULT,
                   help=f"comma list of {', '.join(S4_CASES)} (default {S4_DEFAULT})")  # fmt: skip
    g.add_argument("--s4-offers", default="none,deflate", help="none,deflate (default both)")
    g.add_argument("--s4-idle-seconds", type=float, default=None, help="idle s (10; quick 0.5)")
    g.add_argument("--s4-settle", type=float, default=None, help="pause before reading RSS (1)")
    g.add_argument("--s4-warmup", type=int, default=None, help="connections before baseline (20)")
    g.add_argument("--s4-rooms", type=int, default=None, help="rooms the connections join (100)")
    g = p.add_argument_group("S5 room layouts and join/leave")
    g.add_argument("--s5-n", type=int, default=None, help="members (10000; quick 200)")
    g.add_argument("--s5-small-size", type=int, default=10, help="members per small room (10)")
    g.add_argument("--s5-messages", type=int, default=None, help="messages per burst (20)")
    g.add_argument("--s5-warmup", type=int, default=None, help="warm-up messages (5)")
    g.add_argument("--s5-jl-clients", type=int, default=None, help="join/leave clients (1000)")
    g.add_argument("--s5-jl-ops", type=int, default=None, help="acks per client per round (40)")
    g.add_argument("--s5-jl-rooms", type=int, default=None, help="rooms they use (100)")
    g.add_argument("--s5-micro-connections", type=int, default=None, help="microbench (10000)")
    g.add_argument("--s5-micro-rooms", type=int, default=100)
    g.add_argument("--s5-micro-repeat", type=int, default=None, help="microbench repeats (7)")
    g = p.add_argument_group("S6 a stalled member")
    g.add_argument("--s6-n", type=int, default=None, help="room size incl. the stalled (1000)")
    g.add_argument("--s6-size", type=int, default=4096, help="message bytes (4096)")
    g.add_argument("--s6-messages", type=int, default=None,
                   help="messages per burst (default 1024 + 6 MiB / size)")  # fmt: skip
    g.add_argument("--s6-warmup", type=int, default=None, help="warm-up messages (5)")
    g.add_argument("--s6-timeout-factor", type=float, default=2.0,
                   help="stalled burst timeout: this x the last burst without it (2)")  # fmt: skip
    g.add_argument("--s6-timeout-min", type=float, default=None, help="(3 s; quick 1.5 s)")
    g.add_argument("--s6-timeout-max", type=float, default=60.0, help="(60 s)")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {
        "rounds": 1 if q else 3,
        "s4_n": 200 if q else 10_000,
        "s4_idle_seconds": 0.5 if q else 10.0,
        "s4_settle": 0.2 if q else 1.0,
        "s4_warmup": 10 if q else 20,
        "s4_rooms": 10 if q else 100,
        "s5_n": 200 if q else 10_000,
        "s5_messages": 5 if q else 20,
        "s5_warmup": 2 if q else 5,
        "s5_jl_clients": 20 if q else 1000,
        "s5_jl_ops": 10 if q else 40,
        "s5_jl_rooms": 10 if q else 100,
        "s5_micro_connections": 200 if q else 10_000,
        "s5_micro_repeat": 3 if q else 7,
        "s6_n": 20 if q else 1000,
        "s6_warmup": 2 if q else 5,
        "s6_timeout_min": 1.5 if q else 3.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    if not args.scenarios or set(args.scenarios) - set(SCENARIOS):
        p.error(f"--scenario: choose from {', '.join(SCENARIOS)}")
    args.s4_cases = [c.strip() for c in args.s4_cases.split(",") if c.strip()]
    if not args.s4_cases or set(args.s4_cases) - S4_CASES.keys():
        p.error(f"--s4-cases: choose from {', '.join(S4_CASES)}")
    args.s4_offers = [o.strip() for o in args.s4_offers.split(",") if o.strip()]
    if not args.s4_offers or set(args.s4_offers) - set(OFFERS):
        p.error("--s4-offers: none, deflate or both")
    if args.s5_jl_ops % 2:
        p.error("--s5-jl-ops must be even (each client ends out of its room)")
    if min(args.rounds, args.s4_n, args.s5_n, args.s6_n - 1, args.s5_messages) < 1:
        p.error("--rounds, --s4-n, --s5-n, --s5-messages must be >= 1 and --s6-n >= 2")
    if args.size < 11 or args.s6_size < 11:
        p.error("message sizes must be at least 11 bytes (the message carries its number)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _picows()
    except ImportError:
        print("scenarios.py needs picows (pip install picows)", file=sys.stderr)
        return 2
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2 and {args.server_cpu, args.client_cpu} <= set(cpus)
    if not args.no_pin and not pin:
        print(f"note: not pinning (usable cpus {cpus})", file=sys.stderr)
    if pin:
        os.sched_setaffinity(0, {args.client_cpu})
    server_cpu = args.server_cpu if pin else None
    needed = 256 + max(
        args.s4_n + args.s4_warmup if "s4" in args.scenarios else 0,
        args.s5_n + args.s5_jl_clients if "s5" in args.scenarios else 0,
        2 * args.s6_n if "s6" in args.scenarios else 0,
    )
    limit = raise_open_files(needed)
    if limit < needed:
        print(f"error: {needed} open files needed, the limit is {limit}", file=sys.stderr)
        return 2
    out = args.out or HERE / "results" / (
        f"scenarios-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / "logs"
    log_dir.mkdir(exist_ok=True)
    signal.signal(signal.SIGTERM, fanout._terminate)
    loop = new_loop()
    asyncio.set_event_loop(loop)

    def run(coro: Any, budget: float) -> Any:
        return loop.run_until_complete(asyncio.wait_for(coro, budget))

    started = time.perf_counter()
    load_start = loadavg()
    pinned = f"server cpu {args.server_cpu}, client cpu {args.client_cpu}" if pin else "no"
    print(
        f"scenarios: {','.join(args.scenarios)} rounds={args.rounds} open-files={limit} "
        f"pinned={pinned} load={load_start}",
        file=sys.stderr,
    )
    if load_start is not None and load_start > 1.5:
        print(f"warning: load average {load_start:.1f}: other processes compete for the cores",
              file=sys.stderr)  # fmt: skip
    summary: dict[str, Any] = {}
    results: dict[str, Any] = {}
    interrupted = False
    runners = {"s4": run_s4, "s5": run_s5, "s6": run_s6}
    try:
        for name in args.scenarios:
            t0 = time.perf_counter()
            print(f"{name}:", file=sys.stderr)
            try:
                records, summary[name] = runners[name](args, run, log_dir, server_cpu)
            except (Exception, asyncio.CancelledError) as exc:
                records = []
                summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"  {name} failed: {summary[name]['error']}", file=sys.stderr)
            summary[name]["wall_seconds"] = time.perf_counter() - t0
            results[name] = records
    except KeyboardInterrupt:
        interrupted = True
        fanout.cancel_pending(loop)
    finally:
        fanout.stop_all_servers()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if interrupted:
        print("interrupted: servers stopped", file=sys.stderr)
        return 130
    targets = [t for name in args.scenarios for t in summary[name].get("targets", [])]
    report = {
        "benchmark": "scenarios",
        "time": datetime.now(timezone.utc).isoformat(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "method": {
            "servers": SERVER_COMMANDS,
            "apps": f"benchmarks/{APPS}.py",
            "client": "picows on uvloop; for S4's permessage-deflate offer websockets' sans-I/O "
            "ClientProtocol (permessage-deflate; client_max_window_bits)",
            "pinned": (
                {"server_cpu": args.server_cpu, "client_cpu": args.client_cpu} if pin else None
            ),
            "rss": "VmRSS of the serving process (Granian: its worker) from /proc/<pid>/status",
            "cpu": "the serving process, all threads (/proc/<pid>/task/*/schedstat)",
            "open_files_limit": limit,
        },
        "environment": {
            **versions(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_1m_start": load_start,
            "loadavg_1m_end": loadavg(),
            "fastapi_rooms": fanout.library_state(),
        },
        "wall_seconds": time.perf_counter() - started,
        "summary": summary,
        "targets": targets,
        "results": results,
    }
    report["markdown"] = table = markdown(summary)  # benchmarks/report.py shows it as is
    out.write_text(json.dumps(report, indent=2, default=str))
    print(table)
    print(f"\nJSON: {out}", file=sys.stderr)
    return 1 if failed(summary, results) else 0


def failed(summary: dict[str, Any], results: dict[str, Any]) -> bool:
    """A measurement that errored (lost, duplicated or reordered frames included); missed
    targets are results, not failures."""
    if any("error" in s or s.get("errors") for s in summary.values()):
        return True
    return any(r.get("error") for records in results.values() for r in records)


if __name__ == "__main__":
    sys.exit(main())
