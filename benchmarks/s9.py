"""S9, many rooms on many nodes: app processes over one Redis, steady publishing with churn.

    python -m benchmarks run s9                      # 4 nodes, 10,000 rooms of 10, 20 s
    python -m benchmarks run s9 --quick              # smoke run: 3 nodes, 60 rooms, 2 s

Each variant gets its own redis-server and ``--nodes`` uvicorn processes (``s9_apps.py``);
this process holds every client connection (``--conns`` per node). Room ``r`` has 10 members,
5 on node ``r mod nodes`` and 5 on the next node, so every room spans two nodes and each node
holds 2/nodes of the rooms. Then, for ``--seconds``, the client publishes ``--rate`` messages
a second, each to a random room from one of its members (through the app's own protocol),
while ``--churners`` extra connections per node join and leave rooms their node does not hold
(``--churn`` operations a second: each join or leave changes the node's subscriptions).
Measured: deliveries per second to the stable members, latency from publish to each member
(p50/p99), messages not delivered (or duplicated), Redis's CPU time and channels, and per
node the channels it holds, the messages it read from Redis and its CPU time.

Variants: ``rooms`` (fastapi_rooms' ready endpoint on ``RoomManager("redis://...")``: one
channel per room, read only by nodes with members in it) and ``socketio`` (python-socketio's
``AsyncRedisManager``: one channel for everything, read by every node).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from .harness import (
    RESULTS,
    Server,
    WSConn,
    connect,
    environment,
    loadavg,
    raise_open_files,
    source_addresses,
    spread,
    uvicorn_command,
    write,
)

NAME = "s9"
MEMBERS = 10  # per room: half on one node, half on the next
VARIANTS = {
    "rooms": ("make_rooms", "/ws"),
    "socketio": ("make_socketio", "/socket.io/?EIO=4&transport=websocket"),
}


def room_members(r: int, nodes: int, per_node: int) -> list[tuple[int, int]]:
    """(node, local index) of room ``r``'s members: 5 on node r mod nodes, 5 on the next."""
    half = MEMBERS // 2
    base = (r // nodes) * half
    return [((r + j % 2) % nodes, (base + j // 2) % per_node) for j in range(MEMBERS)]


class Client:
    """Every connection of one variant: stable members, churners, and what they received."""

    def __init__(self, variant: str, args: argparse.Namespace) -> None:
        self.variant = variant
        self.args = args
        self.rooms_of: dict[tuple[int, int], list[str]] = {}
        for r in range(args.rooms):
            for member in room_members(r, args.nodes, args.conns):
                self.rooms_of.setdefault(member, []).append(f"r{r}")
        self.conns: dict[tuple[int, int], WSConn] = {}
        self.pending: dict[WSConn, int] = {}  # joins not yet answered
        self.stable = 0
        self.all_joined = asyncio.get_running_loop().create_future()
        self.sent: dict[int, float] = {}
        self.got: dict[int, int] = {}
        self.latencies: list[float] = []
        self.duplicates_or_strays = 0
        self.churn_received = 0
        self.churn_acks = 0
        self.errors: list[str] = []
        self.t0 = 0.0  # when publishing started
        self.last = 0.0  # the last delivery to a stable member
        self.by_second: dict[int, list[float]] = {}  # latencies by the second they were sent in
        self.total = 0  # deliveries to stable members
        self.expected = 1 << 62  # known once publishing stops
        self.drained = asyncio.Event()

    # the wire ---------------------------------------------------------------------------------

    def join(self, conn: WSConn, room: str) -> None:
        if self.variant == "rooms":
            conn.send_text(f'{{"type":"join","room":"{room}"}}')
        else:
            conn.send_text(f'42["join","{room}"]')

    def leave(self, conn: WSConn, room: str) -> None:
        if self.variant == "rooms":
            conn.send_text(f'{{"type":"leave","room":"{room}"}}')
        else:
            conn.send_text(f'42["leave","{room}"]')

    def publish(self, conn: WSConn, room: str, seq: int) -> None:
        data = f'{{"s":{seq}}}'
        if self.variant == "rooms":
            conn.send_text(f'{{"type":"publish","room":"{room}","data":{data}}}')
        else:
            conn.send_text(f'42["pub",{{"room":"{room}","data":{data}}}]')

    def on_message(self, conn: WSConn, payload: bytes) -> None:
        now = time.perf_counter()
        if self.variant == "socketio":
            if payload == b"2":
                conn.send_text("3")
                return
            if payload.startswith(b"0{"):
                conn.send_text("40")
                return
            if payload.startswith(b"40"):
                self._opened(conn)
                return
            if not payload.startswith(b"42"):
                return
            event, *rest = json.loads(payload[2:])
            kind, data = event, (rest[0] if rest else None)
        else:
            message = json.loads(payload)
            kind, data = message["type"], message.get("data")
            if kind == "welcome":
                self._opened(conn)
                return
            if kind == "error":
                self.errors.append(payload[:200].decode(errors="replace"))
                return
        if kind in ("m", "message"):
            seq = data["s"]
            sent = self.sent.get(seq)
            if sent is None:
                self.duplicates_or_strays += 1
                return
            count = self.got[seq] = self.got.get(seq, 0) + 1
            if count > MEMBERS:
                self.duplicates_or_strays += 1
            self.latencies.append(1000 * (now - sent))
            self.by_second.setdefault(int(sent - self.t0), []).append(1000 * (now - sent))
            self.last = now
            self.total += 1
            if self.total >= self.expected:
                self.drained.set()
        elif kind in ("joined", "left"):
            left = self.pending[conn] = self.pending[conn] - 1
            if left == 0:
                self.stable += 1
                if self.stable == len(self.rooms_of) and not self.all_joined.done():
                    self.all_joined.set_result(None)

    def _opened(self, conn: WSConn) -> None:
        rooms = self.rooms_of[self._key[conn]]
        self.pending[conn] = len(rooms)
        for room in rooms:
            self.join(conn, room)

    # phases -----------------------------------------------------------------------------------

    async def open_all(self, ports: Sequence[int]) -> float:
        path = VARIANTS[self.variant][1]
        gate = asyncio.Semaphore(self.args.concurrency)
        self._key: dict[WSConn, tuple[int, int]] = {}
        members = list(self.rooms_of)
        addresses = source_addresses(len(members) + self.args.churners * len(ports))
        t0 = time.perf_counter()

        async def one(i: int, key: tuple[int, int]) -> None:
            async with gate:
                try:
                    conn = await connect("127.0.0.1", ports[key[0]], path, self._early,
                                         local_host=addresses[i % len(addresses)])  # fmt: skip
                except Exception as exc:
                    self.errors.append(f"connect {key}: {type(exc).__name__}: {exc}")
                    return
                self._key[conn] = key
                self.conns[key] = conn
                conn.on_message = self.on_message
                for payload in self._early_frames.pop(conn, []):
                    self.on_message(conn, payload)

        self._early_frames: dict[WSConn, list[bytes]] = {}
        await asyncio.gather(*(one(i, key) for i, key in enumerate(members)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.all_joined), 60 + len(members) / 100)
        return time.perf_counter() - t0

    def _early(self, conn: WSConn, payload: bytes) -> None:
        """Frames that arrive before ``connect`` returned (the welcome can): kept for later."""
        self._early_frames.setdefault(conn, []).append(payload)

    async def open_churners(self, ports: Sequence[int]) -> list[tuple[int, WSConn]]:
        path = VARIANTS[self.variant][1]
        out = []
        for node, port in enumerate(ports):
            for _ in range(self.args.churners):
                out.append((node, await connect("127.0.0.1", port, path, self._churner)))
        return out

    def _churner(self, conn: WSConn, payload: bytes) -> None:
        """A churning connection: its acks and the messages it gets, counted apart."""
        if self.variant == "socketio":
            if payload == b"2":
                conn.send_text("3")
            elif payload.startswith(b"0{"):
                conn.send_text("40")
            elif payload.startswith(b'42["m"'):
                self.churn_received += 1
            elif payload.startswith((b'42["joined"', b'42["left"')):
                self.churn_acks += 1
            return
        kind = json.loads(payload)["type"]
        if kind == "message":
            self.churn_received += 1
        elif kind in ("joined", "left"):
            self.churn_acks += 1
        elif kind == "error":
            self.errors.append(payload[:200].decode(errors="replace"))

    async def run_load(self, churners: list[tuple[int, WSConn]]) -> float:
        """Publish at ``--rate`` for ``--seconds`` with churn alongside; the seconds it took."""
        args, rng = self.args, random.Random(9)
        rooms_per_node = [
            [r for r in range(args.rooms) if (r % args.nodes) not in (n, (n - 1) % args.nodes)]
            for n in range(args.nodes)
        ]  # rooms a node does not hold: a churner's join there changes its subscriptions
        joined: dict[WSConn, str | None] = {conn: None for _, conn in churners}
        tick = 0.01
        t0 = self.t0 = time.perf_counter()
        seq = 0
        churn_due = 0.0
        step = 0
        while (now := time.perf_counter()) - t0 < args.seconds:
            step += 1
            due = int((now - t0) * args.rate) - seq
            for _ in range(due):
                r = rng.randrange(args.rooms)
                node, local = rng.choice(room_members(r, args.nodes, args.conns))
                conn = self.conns.get((node, local))
                if conn is None:
                    continue
                self.sent[seq] = time.perf_counter()
                self.publish(conn, f"r{r}", seq)
                seq += 1
            churn_due += args.churn * tick
            while churn_due >= 1 and churners and any(rooms_per_node):
                churn_due -= 1
                node, conn = churners[rng.randrange(len(churners))]
                room = joined[conn]
                if room is None:
                    if rooms_per_node[node]:
                        room = f"r{rng.choice(rooms_per_node[node])}"
                        self.join(conn, room)
                        joined[conn] = room
                else:
                    self.leave(conn, room)
                    joined[conn] = None
            await asyncio.sleep(max(0.0, t0 + step * tick - time.perf_counter()))
        return time.perf_counter() - t0

    async def drain(self, timeout: float) -> None:
        """Wait until every published message reached its members, or ``timeout``."""
        self.expected = len(self.sent) * MEMBERS
        if self.total < self.expected:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.drained.wait(), timeout)

    def abort(self, churners: list[tuple[int, WSConn]]) -> None:
        for conn in [*self.conns.values(), *(c for _, c in churners)]:
            conn.abort()


def _get(port: int, path: str) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
        return dict(json.loads(reply.read()))


def _redis_facts(client: redis.Redis) -> dict[str, Any]:
    cpu = client.info("cpu")
    stats = client.info("stats")
    channels = len(client.execute_command("PUBSUB", "CHANNELS"))
    return {
        "cpu_seconds": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "channels": channels,
        "commands": int(stats["total_commands_processed"]),
        "net_output_bytes": int(stats.get("total_net_output_bytes", 0)),
    }


async def measure(variant: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    rec: dict[str, Any] = {"variant": variant, "error": None, "loadavg_1m": loadavg()}
    redis_cmd = lambda port: ["redis-server", "--port", str(port), "--bind", "127.0.0.1",  # noqa: E731
                              "--save", "", "--appendonly", "no"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        rds = stack.enter_context(Server(f"s9-redis-{variant}", redis_cmd, log_dir))
        url = f"redis://127.0.0.1:{rds.port}/0"
        env = {"S9_REDIS_URL": url, "S9_PREFIX": f"s9-{uuid.uuid4().hex[:6]}"}
        if args.node_ttl:
            env["S9_NODE_TTL"] = str(args.node_ttl)
        factory = VARIANTS[variant][0]
        nodes = [
            stack.enter_context(
                Server(
                    f"s9-{variant}-node{k}",
                    lambda port: uvicorn_command(f"benchmarks.s9_apps:{factory}", port),
                    log_dir,
                    env=env,
                )
            )
            for k in range(args.nodes)
        ]
        ports = [n.port for n in nodes]
        client = Client(variant, args)
        churners: list[tuple[int, WSConn]] = []
        r = redis.Redis(port=rds.port)
        try:
            rec["join_seconds"] = await client.open_all(ports)
            rec["stable_members"] = client.stable
            rec["connections"] = len(client.rooms_of)
            if client.stable < len(client.rooms_of):
                raise RuntimeError(
                    f"{client.stable} of {len(client.rooms_of)} connections joined all their "
                    f"rooms; errors: {client.errors[:3]}"
                )
            churners = await client.open_churners(ports)
            await asyncio.sleep(args.settle)
            before_nodes = [_get(p, "/s9/stats") for p in ports]
            cpu_before = [n.cpu_seconds() for n in nodes]
            redis_before = _redis_facts(r)
            seconds = await client.run_load(churners)
            await client.drain(args.drain)
            redis_after = _redis_facts(r)
            cpu_after = [n.cpu_seconds() for n in nodes]
            after_nodes = [_get(p, "/s9/stats") for p in ports]
            delivered = sum(client.got.values())
            expected = len(client.sent) * MEMBERS
            lat = sorted(client.latencies)
            rec.update({
                "seconds": seconds,
                "published": len(client.sent),
                "expected": expected,
                "delivered": delivered,
                # not delivered by the end of the drain (--drain s after publishing stopped)
                "undelivered": expected - delivered,
                "duplicates_or_strays": client.duplicates_or_strays,
                # over the publishing window, or until the last delivery if that was later
                "deliveries_per_s": delivered / max(seconds, client.last - client.t0),
                "last_delivery_after_s": client.last - client.t0,
                "latency_ms": {
                    "p50": statistics.median(lat) if lat else None,
                    "p99": lat[int(0.99 * (len(lat) - 1))] if lat else None,
                    "max": lat[-1] if lat else None,
                },
                "p99_by_second_ms": [
                    round(sorted(v)[int(0.99 * (len(v) - 1))], 1)
                    for _, v in sorted(client.by_second.items())
                ],
                "churn_acks": client.churn_acks,
                "churn_received": client.churn_received,
                "errors": client.errors[:5],
                "redis": {
                    "cpu_seconds": redis_after["cpu_seconds"] - redis_before["cpu_seconds"],
                    "channels_before": redis_before["channels"],
                    "channels_after": redis_after["channels"],
                    "commands": redis_after["commands"] - redis_before["commands"],
                    "net_output_bytes":
                        redis_after["net_output_bytes"] - redis_before["net_output_bytes"],
                },
                "nodes": [_node(variant, b, a, c0, c1) for b, a, c0, c1
                          in zip(before_nodes, after_nodes, cpu_before, cpu_after, strict=True)],
            })  # fmt: skip
            rec["kept_up"] = rec["undelivered"] == 0
            if rec["undelivered"] and variant == "rooms":  # a peer falling behind is a result
                rec["error"] = f"{rec['undelivered']} of {expected} deliveries never arrived"
        finally:
            client.abort(churners)
            r.close()
    return rec


def _node(variant: str, before: dict[str, Any], after: dict[str, Any],
          cpu0: float | None, cpu1: float | None) -> dict[str, Any]:  # fmt: skip
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    gc_full = after["gc_full_collections"] - before["gc_full_collections"]
    if variant == "rooms":
        b, a = before["backend"], after["backend"]
        return {"channels": a["channels"], "rooms": after["rooms"], "cpu_seconds": cpu,
                "gc_full_collections": gc_full,
                "messages_from_redis": a["messages_in"] - b["messages_in"],
                "messages_to_redis": a["messages_out"] - b["messages_out"]}  # fmt: skip
    return {"channels": after["redis_channels"], "rooms": after["rooms"], "cpu_seconds": cpu,
            "gc_full_collections": gc_full,
            "messages_from_redis": None,  # every node reads every emit (one channel)
            "messages_to_redis": after["published"] - before["published"]}  # fmt: skip


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for variant in dict.fromkeys(r["variant"] for r in records):
        mine = [r for r in records if r["variant"] == variant and not r.get("error")]
        out[variant] = {
            "rounds_ok": len(mine),
            "deliveries_per_s": spread([r["deliveries_per_s"] for r in mine]),
            "latency_p50_ms": spread([r["latency_ms"]["p50"] for r in mine]),
            "latency_p99_ms": spread([r["latency_ms"]["p99"] for r in mine]),
            "redis_cpu_seconds": spread([r["redis"]["cpu_seconds"] for r in mine]),
            "node_cpu_seconds": spread(
                [sum(n["cpu_seconds"] or 0 for n in r["nodes"]) for r in mine]
            ),
            "channels_per_node": spread(
                [statistics.fmean(n["channels"] for n in r["nodes"]) for r in mine]
            ),
            "redis_channels": spread([r["redis"]["channels_after"] for r in mine]),
            "undelivered": sum(r.get("undelivered", 0) for r in mine),
        }
    return out


def _f(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def markdown(summary: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"{args.nodes} nodes, {args.nodes * args.conns:,} member connections, "
        f"{args.rooms:,} rooms of {MEMBERS} (each on 2 nodes), {args.rate:,.0f} publishes/s "
        f"for {args.seconds:.0f} s, churn {args.churn:.0f} joins/leaves/s; medians over "
        f"{args.rounds} round(s).",
        "",
        "| variant | deliveries/s | latency p50 / p99 ms | Redis CPU s | all nodes' CPU s | "
        "channels per node | Redis channels | not delivered after the drain |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, s in summary.items():
        lines.append(
            f"| {variant} | {_f(s['deliveries_per_s']['median'])} | "
            f"{_f(s['latency_p50_ms']['median'], '.1f')} / "
            f"{_f(s['latency_p99_ms']['median'], '.1f')} | "
            f"{_f(s['redis_cpu_seconds']['median'], '.2f')} | "
            f"{_f(s['node_cpu_seconds']['median'], '.1f')} | "
            f"{_f(s['channels_per_node']['median'])} | {_f(s['redis_channels']['median'])} | "
            f"{s['undelivered']:,} |"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks run s9", description=__doc__)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--conns", type=int, default=2500, help="member connections per node")
    ap.add_argument("--rooms", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=1000.0, help="publishes per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--churners", type=int, default=25, help="churning connections per node")
    ap.add_argument("--churn", type=float, default=100.0, help="joins and leaves per second")
    ap.add_argument("--variants", default="rooms,socketio")
    ap.add_argument("--node-ttl", type=float, help="RoomManager(node_ttl=), 3x its heartbeat")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--drain", type=float, default=15.0, help="seconds to wait for stragglers")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.nodes, args.conns, args.rooms, args.rate, args.seconds = 3, 20, 60, 50.0, 2.0
        args.churners, args.churn, args.settle = 2, 10.0, 0.2
    if args.nodes < 2 or args.conns < MEMBERS // 2:
        ap.error(f"need --nodes >= 2 and --conns >= {MEMBERS // 2}")
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    needed = args.nodes * (args.conns + args.churners) + 1024
    limit = raise_open_files(needed)
    if limit < needed:
        print(f"s9: {needed} open files needed, the limit is {limit}: fewer --conns",
              file=sys.stderr)  # fmt: skip
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    records = []
    for rnd in range(1, args.rounds + 1):
        for variant in args.variants if rnd % 2 else args.variants[::-1]:
            try:
                rec = asyncio.run(measure(variant, args, RESULTS / "logs"))
            except Exception as exc:
                rec = {"variant": variant, "error": f"{type(exc).__name__}: {exc}"}
            rec["round"] = rnd
            records.append(rec)
            _progress(rec)
    summary = summarize(records)
    record = {
        "benchmark": NAME,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": {**environment(), "open_files": limit},
        "wall_seconds": time.perf_counter() - t_start,
        "records": records,
        "summary": summary,
        "markdown": markdown(summary, args),
    }
    path = write(record, args.out, NAME)
    print(f"### S9: many rooms on many nodes\n\n{record['markdown']}\n")
    print(f"JSON: {path}", file=sys.stderr)
    return 1 if any(r.get("error") for r in records) else 0


def _progress(r: dict[str, Any]) -> None:
    if "deliveries_per_s" not in r:
        print(f"  s9 round {r['round']} {r['variant']:9s} ERROR {r['error']}", file=sys.stderr)
        return
    lat = r["latency_ms"]
    print(
        f"  s9 round {r['round']} {r['variant']:9s} joined in {r['join_seconds']:.1f} s  "
        f"{r['delivered']:,}/{r['expected']:,} delivered  {r['deliveries_per_s']:,.0f}/s  "
        f"p50 {_f(lat['p50'], '.1f')} p99 {_f(lat['p99'], '.1f')} ms  redis cpu "
        f"{r['redis']['cpu_seconds']:.2f} s  channels/node "
        f"{[n['channels'] for n in r['nodes']]}  from redis/node "
        f"{[n['messages_from_redis'] for n in r['nodes']]}"
        + (f"  ERROR {r['error']}" if r.get("error") else ""),
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
