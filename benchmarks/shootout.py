#!/usr/bin/env python3
"""Scenario S3, "shootout": the largest room a variant serves with broadcast p95 <= 250 ms.

    .venv/bin/python benchmarks/shootout.py            # rooms, rooms-granian-rsgi, plain,
                                                       # picows-raw; N = 250 ... 8000
    .venv/bin/python benchmarks/shootout.py --quick    # smoke: N=50,100,200, 10 broadcasts
    .venv/bin/python benchmarks/shootout.py --variants rooms,plain --max-n 4000

In the style of hashrocket's websocket-shootout: for each variant the room grows (N = 250, 500,
1000, 2000, 4000, 8000, ... doubling up to --max-n and the client's open-file limit) and at each
N the client runs --broadcasts broadcasts (40) with --in-flight (4) outstanding at a time: it asks
the server for a new one (the control message ``burst <seq> 1 <size>`` of benchmarks/fanout.py)
as soon as one of the outstanding broadcasts has reached every member. A broadcast's latency is
the time from that request until the last member received the message. The room stops growing
once p95 exceeds --limit-ms (250); the variant's result is the largest N whose p95 stayed within.

Servers, apps, pinning (server core 0, this client on core 1), the picows client and the
per-member sequence checks are benchmarks/fanout.py's. The server is started afresh for every N.
See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fanout import (
    DESCRIPTIONS,
    HERE,
    VARIANTS,
    Member,
    Server,
    Session,
    Settings,
    Tracker,
    _terminate,
    cancel_pending,
    jsonable,
    library_state,
    loadavg,
    make_client,
    missing_packages,
    new_loop,
    percentile,
    phase_budget,
    raise_open_files,
    server_command_text,
    stop_all_servers,
    versions,
)

DEFAULT_VARIANTS = "rooms,rooms-granian-rsgi,plain,picows-raw"
WARMUP = 10  # single broadcasts (in flight like the measured ones) after the room is full


class ShootoutTracker(Tracker):
    """A Tracker that calls ``on_complete(seq, t)`` once message ``seq`` reached every member."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_complete: Any = None

    def on_text(self, member: Member, data: bytes) -> None:
        i = member.count
        joined = member.joined
        super().on_text(member, data)
        if (
            joined
            and i < len(self.reached)
            and self.reached[i] == self.n
            and self.on_complete is not None
            and member.count == i + 1
            and data == self.expected[i]
        ):
            self.on_complete(i, self.t_reached[i])


class ShootoutSession(Session):
    tracker_class = ShootoutTracker

    async def run_in_flight(self, count: int, in_flight: int, budget: float) -> list[float]:
        """``count`` single broadcasts, ``in_flight`` outstanding at a time: each one's ms from
        its request to the last member's receipt, in completion order."""
        tracker = self.tracker
        assert isinstance(tracker, ShootoutTracker)
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        sent_at: dict[int, float] = {}
        latencies: list[float] = []
        state = {"sent": 0}
        control = self.control
        size = self.cfg.size

        def send_one() -> None:
            seq = self.seq
            self.seq += 1
            state["sent"] += 1
            sent_at[seq] = time.perf_counter()
            control.conn.send_text(f"burst {seq} 1 {size}")

        def on_complete(seq: int, t: float) -> None:
            t0 = sent_at.pop(seq, None)
            if t0 is None:
                return
            latencies.append((t - t0) * 1000)
            if state["sent"] < count:
                send_one()
            if len(latencies) == count and not finished.done():
                finished.set_result(None)

        async def drain_replies() -> None:
            for _ in range(count):
                reply = await control.replies.get()
                if not reply.startswith("done "):
                    if not finished.done():
                        finished.set_exception(RuntimeError(f"control reply {reply!r}"))
                    return

        tracker.on_complete = on_complete
        drainer = asyncio.ensure_future(drain_replies())
        try:
            for _ in range(min(in_flight, count)):
                send_one()
            await asyncio.wait_for(asyncio.shield(finished), budget)
            await asyncio.wait_for(drainer, 30)
        finally:
            tracker.on_complete = None
            if not drainer.done():
                drainer.cancel()
                with contextlib.suppress(BaseException):
                    await drainer
        if tracker.mismatches or tracker.disconnects:
            raise RuntimeError(
                f"{tracker.mismatches} frames out of sequence, {tracker.disconnects} disconnects"
            )
        return latencies


def sizes(start: int, cap: int) -> list[int]:
    out, n = [], start
    while n <= cap:
        out.append(n)
        n *= 2
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--variants", default=DEFAULT_VARIANTS)
    p.add_argument("--start-n", type=int, default=None, help="first room size (250)")
    p.add_argument("--max-n", type=int, default=None, help="largest room size (8000)")
    p.add_argument("--broadcasts", type=int, default=None, help="per step (40)")
    p.add_argument("--in-flight", type=int, default=4)
    p.add_argument("--limit-ms", type=float, default=250.0, help="p95 bound (250)")
    p.add_argument("--size", type=int, default=32, help="bytes per message")
    p.add_argument("--client", choices=("auto", "picows", "websockets"), default="auto")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="N=50,100,200, 10 broadcasts")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if "rooms-redis-2w" in args.variants:
        p.error("rooms-redis-2w is not supported by the shootout (one server process only)")
    quick = args.quick
    if args.start_n is None:
        args.start_n = 50 if quick else 250
    if args.max_n is None:
        args.max_n = 200 if quick else 8000
    if args.broadcasts is None:
        args.broadcasts = 10 if quick else 40
    if args.start_n < 1 or args.broadcasts < 1 or args.in_flight < 1:
        p.error("--start-n, --broadcasts and --in-flight must be positive")
    return args


def markdown(summary: dict[str, Any], limit_ms: float, skipped: dict[str, str]) -> str:
    lines = [
        f"## Shootout: largest room with broadcast p95 <= {limit_ms:g} ms",
        "",
        "| variant | largest N | steps (N: p50 / p95 / p99 ms) |",
        "|---|---|---|",
    ]
    for variant, entry in summary.items():
        steps = "; ".join(
            f"{s['n']}: "
            + (
                f"{s['p50_ms']:.1f} / {s['p95_ms']:.1f} / {s['p99_ms']:.1f}"
                if s.get("p95_ms") is not None
                else f"error ({s.get('error')})"
            )
            for s in entry["steps"]
        )
        largest = entry["largest_n"]
        lines.append(f"| {variant} | {largest if largest is not None else '-'} | {steps} |")
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{v}: {why}" for v, why in skipped.items())]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = not args.no_pin and len(cpus) >= 2 and {args.server_cpu, args.client_cpu} <= set(cpus)
    if not args.no_pin and not pin:
        print(f"note: not pinning (usable cpus {cpus})", file=sys.stderr)
    if pin:
        os.sched_setaffinity(0, {args.client_cpu})
    open_files = raise_open_files()
    max_members = (open_files or 1024) - 256 - 1  # less the control connection
    cap = min(args.max_n, max_members)
    ns = sizes(args.start_n, cap)
    if cap < args.max_n:
        print(f"note: N capped at {cap} by the open-file limit {open_files}", file=sys.stderr)
    if not ns:
        print(f"error: no room size between {args.start_n} and {cap}", file=sys.stderr)
        return 2

    skipped = missing_packages(args.variants)
    for variant, why in skipped.items():
        print(f"SKIPPED {variant}: {why}", file=sys.stderr)
    variants = [v for v in args.variants if v not in skipped]
    if not variants:
        print("error: every requested variant was skipped: nothing to measure", file=sys.stderr)
        return 2

    client = make_client(args.client)
    out = args.out or HERE / "results" / (
        f"shootout-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = out.parent / "logs"
    log_dir.mkdir(exist_ok=True)

    signal.signal(signal.SIGTERM, _terminate)
    loop = new_loop()
    asyncio.set_event_loop(loop)

    def run(coro: Any, budget: float) -> Any:
        return loop.run_until_complete(asyncio.wait_for(coro, budget))

    load_start = loadavg()
    started = time.perf_counter()
    print(
        f"shootout: N={','.join(map(str, ns))} broadcasts={args.broadcasts} "
        f"in_flight={args.in_flight} limit={args.limit_ms:g}ms variants={','.join(variants)} "
        f"client={client.name} pinned={pin} load={load_start}",
        file=sys.stderr,
    )
    summary: dict[str, Any] = {}
    failed = False
    try:
        for variant in variants:
            entry: dict[str, Any] = {"largest_n": None, "steps": []}
            summary[variant] = entry
            for n in ns:
                step: dict[str, Any] = {"n": n, "broadcasts": 0, "loadavg_1m": loadavg()}
                entry["steps"].append(step)
                cfg = Settings(
                    n=n, messages=args.broadcasts, size=args.size, warmup=0, rounds=1,
                    latency_samples=WARMUP, latency_interval=0.0,
                )  # fmt: skip
                server: Server | None = None
                session: ShootoutSession | None = None
                try:
                    server = Server(variant, args.server_cpu if pin else None, log_dir, n)
                    session = ShootoutSession(variant, [server.port], cfg, client)
                    t0 = time.perf_counter()
                    run(session.open(), 60 + n / 50)
                    step["connect_seconds"] = round(time.perf_counter() - t0, 2)
                    budget = phase_budget(n * (args.broadcasts + WARMUP))
                    run(session.run_in_flight(WARMUP, args.in_flight, budget), budget + 5)
                    lat = run(
                        session.run_in_flight(args.broadcasts, args.in_flight, budget), budget + 5
                    )
                    step.update(
                        broadcasts=len(lat),
                        p50_ms=round(percentile(lat, 0.50), 2),
                        p95_ms=round(percentile(lat, 0.95), 2),
                        p99_ms=round(percentile(lat, 0.99), 2),
                        max_ms=round(max(lat), 2),
                        latency_ms=[round(x, 3) for x in lat],
                    )
                except (Exception, asyncio.CancelledError) as exc:
                    step["error"] = f"{type(exc).__name__}: {exc}"
                    failed = True
                    print(f"  {variant} N={n}: ERROR {step['error']}", file=sys.stderr)
                    if server is not None:
                        print(server.log(), file=sys.stderr)
                finally:
                    if session is not None:
                        with contextlib.suppress(Exception, asyncio.CancelledError):
                            run(session.close(), 10)
                    if server is not None:
                        server.stop()
                if "error" in step:
                    break
                print(
                    f"  {variant:18s} N={n:6d}  p50 {step['p50_ms']:7.1f}  p95 "
                    f"{step['p95_ms']:7.1f}  p99 {step['p99_ms']:7.1f} ms  "
                    f"({step['broadcasts']} broadcasts, load {step['loadavg_1m']})",
                    file=sys.stderr,
                )
                if step["p95_ms"] > args.limit_ms:
                    break
                entry["largest_n"] = n
    except KeyboardInterrupt:
        cancel_pending(loop)
        stop_all_servers()
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stop_all_servers()

    record = {
        "scenario": "S3 shootout",
        "settings": {
            "n": ns,
            "start_n": args.start_n,
            "max_n": args.max_n,
            "broadcasts": args.broadcasts,
            "warmup_broadcasts": WARMUP,
            "in_flight": args.in_flight,
            "limit_ms": args.limit_ms,
            "size": args.size,
            "variants": variants,
            "requested_variants": args.variants,
            "skipped": skipped,
            "method": {
                "client": client.name,
                "pinned": {"server_cpu": args.server_cpu, "client_cpu": args.client_cpu}
                if pin
                else None,
                "servers": {v: server_command_text(v) for v in variants},
                "descriptions": {v: DESCRIPTIONS[v] for v in variants},
                "server_restarted_per_n": True,
            },
            "environment": {
                "versions": versions(),
                "open_files": open_files,
                "load_start": load_start,
                "load_end": loadavg(),
                "fastapi_rooms": library_state(),
            },
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
        "summary": summary,
    }
    out.write_text(json.dumps(jsonable(record), indent=1) + "\n")
    print(markdown(summary, args.limit_ms, skipped))
    print(f"\nJSON: {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
