#!/usr/bin/env python3
"""S7 extended: the backplane on one Redis against a three-master Redis Cluster, with two and
four app processes, fan-out (one room) and many rooms, in one run.

    .venv/bin/python benchmarks/cluster.py                       # 3 rounds, medians
    .venv/bin/python benchmarks/cluster.py --rounds 5 --json out.json
    .venv/bin/python benchmarks/cluster.py --quick --rounds 1 --nodes 2   # smoke run

Each app process is benchmarks/cluster_node.py: a RoomManager with in-process members that
count deliveries (no sockets, so what is measured is publish -> Redis -> every node). Both
backends are private redis-servers started here with the same settings (the cluster by
tests/localcluster.py), every process stopped by PID.

- fanout: one room, 250 members on each node; node 0 publishes 4,000 messages.
- many-rooms: 1,000 rooms, one member of each on every node; every node publishes its share
  of 60,000 messages round-robin over the rooms.

A run ends when every node has every delivery it expects. Reported per run: messages/s through
the backend (published messages that reached every node, over the wall time from the first
publish to the last delivery), deliveries/s, and each redis-server's CPU seconds; from the busiest
redis-server's CPU per message, the rate at which it would use a whole core (its saturation,
extrapolated: marked as such).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import RedisServer, free_port  # noqa: E402 - the suite's process helpers
from tests.localcluster import local_cluster  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, to the nanosecond (schedstat, not 10 ms ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class Node:
    """A cluster_node.py process, stopped by PID."""

    def __init__(self, url: str, prefix: str, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "cluster_node.py"), url, prefix, name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip

    def send(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node exited with {self.proc.wait()}")
        return dict(json.loads(line))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def backend(kind: str, tmp: Path) -> Any:
    """(url, redis-server PIDs) of a private single Redis or a three-master cluster."""
    if kind == "redis":
        server = RedisServer(free_port(), tmp)
        server.start()
        try:
            assert server.proc is not None
            yield server.url, [server.proc.pid]
        finally:
            server.kill()
    else:
        with local_cluster(tmp, masters=3) as cluster:
            yield cluster.url, [cluster.procs[p].pid for p in cluster.master_ports()]


def workload(name: str, k: int, scale: float) -> tuple[list[str], int, list[list[list[Any]]], int]:
    """(rooms, members per room per node, what each node publishes, messages in all);
    ``scale`` multiplies the message counts (--quick: a fiftieth)."""
    if name == "fanout":
        n = int(4000 * scale)
        return ["fan"], 250, [[["fan", n]]] + [[] for _ in range(k - 1)], n
    rooms = [f"room-{i}" for i in range(1000)]
    total = int(60_000 * scale)
    share = total // k
    plans = []
    for node in range(k):
        per_room: dict[str, int] = {}
        for i in range(share):
            room = rooms[(node * 7 + i) % len(rooms)]
            per_room[room] = per_room.get(room, 0) + 1
        plans.append([[room, n] for room, n in per_room.items()])
    return rooms, 1, plans, share * k


def run_config(kind: str, k: int, rounds: int, scale: float, tmp: Path) -> list[dict[str, Any]]:
    results = []
    with backend(kind, tmp) as (url, pids), ExitStack() as stack:
        prefix = f"bench-{uuid.uuid4().hex[:6]}"
        for wname in ("fanout", "many-rooms"):
            nodes = []
            for i in range(k):
                node = Node(url, f"{prefix}-{wname}", f"n{i}")
                stack.callback(node.stop)
                nodes.append(node)
            rooms, members, plans, total = workload(wname, k, scale)
            for node in nodes:
                node.send({"cmd": "setup", "rooms": rooms, "members": members})
            for node in nodes:
                assert node.reply()["ok"]
            for _ in range(rounds):
                cpu0 = [cpu_seconds(p) for p in pids]
                for node, plan in zip(nodes, plans, strict=True):
                    node.send({"cmd": "run", "publish": plan, "expect": total * members})
                replies = [node.reply() for node in nodes]
                cpu1 = [cpu_seconds(p) for p in pids]
                wall = max(r["done"] for r in replies) - min(r["start"] for r in replies)
                complete = all(r["delivered"] >= r["expected"] for r in replies)
                redis_cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
                busiest = max(redis_cpu)
                results.append({
                    "backend": kind, "nodes": k, "workload": wname, "messages": total,
                    "complete": complete, "wall_s": wall,
                    "messages_per_s": total / wall, "deliveries_per_s": total * members * k / wall,
                    "dropped": sum(r["dropped"] for r in replies),
                    "reconnects": sum(r["reconnects"] for r in replies),
                    "redis_cpu_s": redis_cpu,
                    "busiest_redis_core_share": busiest / wall,
                    "saturation_messages_per_s": total / busiest if busiest else None,
                })  # fmt: skip
                print(json.dumps(results[-1]), flush=True)
            for node in nodes:
                node.stop()
    return results


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows if r[key] is not None)


def table(results: list[dict[str, Any]]) -> str:
    out = [
        "| workload | app processes | backend | messages/s (median) | deliveries/s | busiest "
        "redis-server, share of a core | saturation of the busiest, messages/s (extrapolated) "
        "| all delivered | dropped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["workload"], r["nodes"], r["backend"]) for r in results})
    for wname, k, kind in keys:
        rows = [r for r in results if (r["workload"], r["nodes"], r["backend"]) == (wname, k, kind)]
        name = "one Redis" if kind == "redis" else "3-master cluster"
        complete, dropped = sum(r["complete"] for r in rows), sum(r["dropped"] for r in rows)
        out.append(
            f"| {wname} | {k} | {name} | {median(rows, 'messages_per_s') / 1000:.1f}k | "
            f"{median(rows, 'deliveries_per_s') / 1000:.1f}k | "
            f"{median(rows, 'busiest_redis_core_share'):.2f} | "
            f"{median(rows, 'saturation_messages_per_s') / 1000:.0f}k | "
            f"{complete} of {len(rows)} | {dropped} |"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", default="2,4", help="app process counts, comma-separated")
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1/50 of the messages")
    args = parser.parse_args()
    scale = 0.02 if args.quick else 1.0
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(n) for n in args.nodes.split(",")):
            for kind in ("redis", "cluster"):
                sub = Path(tmp) / f"{kind}-{k}"
                sub.mkdir()
                results += run_config(kind, k, args.rounds, scale, sub)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n{machine}; {time.strftime('%Y-%m-%d')}\n\n{table(results)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "runs": results}, indent=1))
    return 0 if all(r["complete"] and not r["dropped"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
