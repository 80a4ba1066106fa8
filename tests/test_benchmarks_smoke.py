"""benchmarks/fanout.py --quick runs end to end and every variant delivers every message.

Every variant runs, the uvicorn ones, the peers (a raw picows server, python-socketio spoken to
over Engine.IO/Socket.IO v4, encode/broadcaster: the bench extra, also in dev) and, when
Granian is installed, fastapi_rooms under ``granian --interface rsgi`` (``RSGIApp``) and
``--interface asgi``; with a Redis at the suite's Redis (``$REDIS_URL``, or a redis-server it
starts), ``rooms-redis-2w`` against ``rooms``. A run with two N values and a client limited to
three variants' connections checks that the comparison is split into groups that each keep
plain and rooms. Correctness only: no timing is asserted (numbers from a smoke run mean
nothing).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "fanout.py"
N, MESSAGES = 20, 20
UVICORN_VARIANTS = ["plain", "rooms", "gather"]
#: The peers, and the module each needs (the bench extra; dev lists them too).
PEER_VARIANTS = {"picows-raw": "picows", "socketio": "socketio", "broadcaster": "broadcaster"}
GRANIAN_VARIANTS = ["rooms-granian-rsgi", "rooms-granian-rsgi-default-gc", "rooms-granian-asgi"]
HAVE_GRANIAN = importlib.util.find_spec("granian") is not None
S1_TARGETS = {
    ("rooms", "plain", "deliveries_per_s"),
    ("rooms", "gather", "deliveries_per_s"),
    ("rooms", "broadcaster", "deliveries_per_s"),
    ("rooms", "socketio", "deliveries_per_s"),
    ("rooms-granian-rsgi", "plain", "deliveries_per_s"),
    ("rooms-granian-rsgi", "plain", "latency_p99"),
    ("rooms", "picows-raw", "deliveries_per_s"),
}


def peers() -> list[str]:
    """The peer variants to run: all of them. Outside CI a missing package skips the test; in
    CI (where the dev extra installs them) it fails it."""
    missing = [v for v, module in PEER_VARIANTS.items() if importlib.util.find_spec(module) is None]
    if missing and not os.environ.get("CI"):
        pytest.skip(f"not installed: {missing} (pip install -e '.[bench]')")
    return list(PEER_VARIANTS)


def fanout(out: Path, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    """Run benchmarks/fanout.py --quick; it must exit 0. The JSON record and the report."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--messages", str(MESSAGES), "--rounds", "1",
         "--no-pin", "--out", str(out), *args],
        capture_output=True, text=True, timeout=240, cwd=ROOT, env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "| variant | server | deliveries/s" in proc.stdout
    assert "SKIPPED" not in proc.stderr, proc.stderr
    report: dict[str, Any] = json.loads(out.read_text())
    return report, proc.stdout


def check_delivered(report: dict[str, Any], n: int) -> None:
    """Every round of every variant at ``n``: every message to every member, in order."""
    for r in (r for r in report["results"] if r["n"] == n):
        where = f"{r['variant']}: {r}"
        assert r["error"] is None, where
        assert r["expected"] == n * MESSAGES, where
        assert r["delivered"] == n * MESSAGES, where
        assert r["server_handed"] == n * MESSAGES, where
        assert r["mismatches"] == 0, where  # no frame lost, duplicated or out of order
        assert r["disconnects"] == 0, where
        assert len(r["latency_ms"]) == report["settings"]["latency_samples"], where


@pytest.mark.parametrize("client", ["picows", "websockets"])
def test_fanout_quick_delivers_everything(client: str, tmp_path: Path) -> None:
    if client == "picows" and importlib.util.find_spec("picows") is None:
        pytest.skip("picows is not installed; the websockets client covers the benchmark")
    wanted = UVICORN_VARIANTS + peers() + (GRANIAN_VARIANTS if HAVE_GRANIAN else [])
    # Engine.IO pings every 0.5 s: the client must answer them (within 5 s, generous for a
    # loaded CI machine) or the server drops it.
    report, _ = fanout(
        tmp_path / "fanout.json", "--n", str(N), "--client", client,
        "--variants", ",".join(wanted), env={"FANOUT_SOCKETIO_PING": "0.5,5"},
    )  # fmt: skip

    assert report["settings"]["n"] == [N]
    assert report["settings"]["messages"] == MESSAGES
    variants = report["settings"]["variants"]
    assert variants == report["settings"]["requested_variants"] == wanted
    assert report["settings"]["skipped"] == {}
    assert client.split("-")[0] in report["method"]["client"]
    assert report["runs"][str(N)]["groups"] == [wanted]
    results = report["results"]
    assert sorted(r["variant"] for r in results) == sorted(variants)
    check_delivered(report, N)
    summary = report["summary"][str(N)]
    assert list(summary) == variants
    for variant in variants:
        s = summary[variant]
        assert s["all_delivered"], variant
        assert set(s["deliveries_per_s"]) == {"min", "median", "max"}, variant
        assert s["vs_plain"]["wall"]["median"] is not None, variant
        assert s["vs_rooms"]["wall"]["median"] is not None, variant
        assert s["latency_ms"]["p50"] is not None and s["latency_ms"]["p99"] is not None, variant
        [stats] = report["server_stats"][str(N)][variant]  # one group
        assert stats["members"] == N, variant
    sio = report["server_stats"][str(N)]["socketio"][0]
    assert sio["client_pongs"] > 0, sio  # pings came and were answered
    assert report["server_info"][str(N)]["picows-raw"][0]["kind"] == "picows"
    for variant in set(variants) & set(GRANIAN_VARIANTS):
        [info] = report["server_info"][str(N)][variant]
        assert info["kind"] == variant.removeprefix("rooms-").removesuffix("-default-gc"), info
        assert info["parent_pid"] is not None, info  # measured in Granian's worker process
    checks = {(t["variant"], t["over"], t["metric"]) for t in report["targets"]}
    assert S1_TARGETS - checks == (set() if HAVE_GRANIAN else {
        t for t in S1_TARGETS if t[0] == "rooms-granian-rsgi"
    })  # fmt: skip
    for t in report["targets"]:
        assert t["n"] == N and t["stated_for_n"] == 1000 and not t["applies"], t
        assert t["paired_rounds"] == 1 and t["value"] is not None, t


def test_fanout_several_n_in_groups(tmp_path: Path) -> None:
    """--n 10,20 with room for three variants' connections: each N runs plain, rooms and one
    more variant per group; every ratio to plain and rooms is paired within a group's round."""
    wanted = ["plain", "rooms", "gather", *peers()]
    report, stdout = fanout(
        tmp_path / "fanout.json", "--n", "10,20", "--max-sockets", "66",
        "--variants", ",".join(wanted),
    )  # fmt: skip
    assert "### N=10" in stdout and "### N=20" in stdout and "### All N" in stdout
    assert report["settings"]["n"] == [10, 20]
    # N=10: 11 connections per variant, 6 fit; N=20: 21 each, 3 fit
    assert report["runs"]["10"]["groups"] == [wanted]
    others = [v for v in wanted if v not in ("plain", "rooms")]
    assert report["runs"]["20"]["groups"] == [["plain", "rooms", v] for v in others]
    for n in (10, 20):
        check_delivered(report, n)
        summary = report["summary"][str(n)]
        assert list(summary) == wanted
        for variant in wanted:
            assert summary[variant]["all_delivered"], (n, variant)
            assert summary[variant]["vs_rooms"]["wall"]["median"] is not None, (n, variant)
    groups = len(others)
    at_20 = report["summary"]["20"]
    assert at_20["plain"]["rounds_ok"] == at_20["rooms"]["rounds_ok"] == groups
    assert len(report["server_stats"]["20"]["rooms"]) == groups
    assert {t["n"] for t in report["targets"]} == {10, 20}


def test_fanout_quick_two_workers_over_redis(tmp_path: Path, redis_url: str) -> None:
    """rooms-redis-2w: two uvicorn processes share the room through Redis, half the members on
    each; every member gets every message in order, both servers' stats are in the record, and
    the run leaves no key under its prefix."""
    report, stdout = fanout(
        tmp_path / "fanout.json", "--n", str(N), "--redis-url", redis_url,
        "--variants", "rooms,rooms-redis-2w",
    )  # fmt: skip
    assert "| rooms-redis-2w | 2x uvicorn + Redis |" in stdout
    assert report["settings"]["variants"] == ["rooms", "rooms-redis-2w"]
    results = report["results"]
    assert sorted(r["variant"] for r in results) == ["rooms", "rooms-redis-2w"]
    check_delivered(report, N)
    two = next(r for r in results if r["variant"] == "rooms-redis-2w")
    half = N // 2 * MESSAGES
    assert two["server_handed_by_server"] == [half, half], two  # members split half/half
    assert len(two["burst_seconds_by_server"]) == 2, two
    assert [len(x) for x in two["latency_ms_by_server"]] == [len(two["latency_ms"])] * 2, two
    publisher, subscriber = two["backend_delta_by_server"]
    assert publisher["messages_out"] == MESSAGES, two  # one envelope per broadcast
    assert subscriber["messages_in"] == MESSAGES, two  # all of them reached the other process
    assert publisher["publish_dropped"] == subscriber["publish_dropped"] == 0, two

    summary = report["summary"][str(N)]["rooms-redis-2w"]
    assert summary["all_delivered"], summary
    assert summary["servers"] == 2
    assert summary["vs_rooms"]["wall"]["median"] is not None
    added = summary["redis_added_latency_ms"]
    assert set(added) == {"last_receiver", "by_server", "p50_paired_by_round"}, added
    assert len(added["by_server"]) == len(added["p50_paired_by_round"]["by_server"]) == 2, added
    assert [t["variant"] for t in report["targets"]] == ["rooms-redis-2w"]

    [stats] = report["server_stats"][str(N)]["rooms-redis-2w"]
    assert stats["members"] == N
    assert len(stats["servers"]) == 2
    nodes = set()
    for server in stats["servers"]:  # each process's own GET /stats, backend section included
        backend = server["stats"]["backend"]
        assert backend["type"] == "RedisBackend", server
        assert backend["connected"] and backend["publish_dropped"] == 0, server
        assert server["stats"]["room_sizes"] == {"bench": N // 2}, server
        nodes.add(backend["node"])
    assert len(nodes) == 2
    [info] = report["server_info"][str(N)]["rooms-redis-2w"]
    assert len({s["pid"] for s in info["servers"]}) == 2

    prefix = report["redis"]["prefix"]
    assert prefix.startswith("frbench-")
    assert report["redis"]["keys_left"] == []
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert client.keys(f"{prefix}*") == []  # the servers deleted their directory keys
    finally:
        client.close()


def test_shootout_quick(tmp_path: Path) -> None:
    """benchmarks/shootout.py --quick (S3) for rooms and plain: exit 0, a summary per variant
    with its steps (N=50,100,200) and a largest N; no timing is asserted."""
    out = tmp_path / "shootout.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "shootout.py"), "--quick", "--no-pin",
         "--variants", "rooms,plain", "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == {"rooms", "plain"}
    for variant, entry in summary.items():
        steps = entry["steps"]
        assert steps, variant
        assert all("error" not in s for s in steps), steps
        assert all(s["broadcasts"] == 10 and s["p95_ms"] is not None for s in steps), steps
        assert entry["largest_n"] is None or entry["largest_n"] in {s["n"] for s in steps}
    assert "| rooms |" in proc.stdout and "| plain |" in proc.stdout


@pytest.mark.parametrize("app", ["rooms", "bare"])
def test_memprofile_reports_bytes_per_connection(app: str) -> None:
    """benchmarks/memprofile.py: a server under tracemalloc, a client, a per-line table."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "memprofile.py"), "--app", app,
         "--n", "40", "--top", "60"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{app}: 40 idle connections")
    total = float(lines[1].split()[1])
    assert 5_000 < total < 200_000, lines[1]  # bytes per connection: uvicorn's alone are ~25 KB
    assert "objects tracked by the garbage collector per conn" in lines[1]
    owners = " ".join(lines[2:])
    assert ("fastapi_rooms/" in owners) == (app == "rooms")


def test_profile_burst_reports_where_the_time_goes(tmp_path: Path) -> None:
    """benchmarks/profile_burst.py: py-spy on a fanout.py server, a markdown summary."""
    out = tmp_path / "profile.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_burst.py"), "--n", "20",
         "--messages", "50", "--rounds", "3", "--duration", "2", "--out-md", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert text.strip() == done.stdout.strip()
    assert "| package (own code) | share of samples |" in text
    shares = [float(m) for m in re.findall(r"\| ([\d.]+) % \|", text.split("| function")[0])]
    assert shares and abs(sum(shares) - 100) < 1.0, shares  # every sample counted once


def test_cluster_benchmark_quick(tmp_path: Path) -> None:
    """benchmarks/cluster.py --quick (S7 extended): one Redis and a three-master cluster, both
    workloads; exit 0 only when every node got every message and none was dropped."""
    out = tmp_path / "cluster.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "cluster.py"), "--quick", "--rounds", "1",
         "--nodes", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = json.loads(out.read_text())["runs"]
    assert {(r["backend"], r["workload"]) for r in runs} == {
        (b, w) for b in ("redis", "cluster") for w in ("fanout", "many-rooms")
    }
    assert all(r["complete"] and r["dropped"] == 0 and r["messages_per_s"] > 0 for r in runs)
    assert all(len(r["redis_cpu_s"]) == (1 if r["backend"] == "redis" else 3) for r in runs)
    assert "| many-rooms | 2 | 3-master cluster |" in proc.stdout


def test_history_script_benchmark_reports_both_calls() -> None:
    """benchmarks/history_script.py --rounds 1: EVAL and EVALSHA rows with positive numbers."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "history_script.py"), "--rounds", "1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = dict(re.findall(r"^\| (EVAL|EVALSHA) \| ([0-9.]+)k \|", proc.stdout, re.MULTILINE))
    assert set(rows) == {"EVAL", "EVALSHA"} and all(float(v) > 0 for v in rows.values())
