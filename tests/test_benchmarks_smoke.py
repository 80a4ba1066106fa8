"""benchmarks/fanout.py --quick runs end to end and every variant delivers every message.

Every variant runs, the uvicorn ones and, when Granian is installed, fastapi_rooms under
``granian --interface rsgi`` (``RSGIApp``) and ``--interface asgi``; with a Redis at
the suite's Redis (``$REDIS_URL``, or a redis-server it starts), ``rooms-redis-2w`` against ``rooms``.
Correctness only: no timing is asserted (numbers from a smoke run mean nothing).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "fanout.py"
N, MESSAGES = 20, 20
UVICORN_VARIANTS = ["plain", "rooms", "gather"]
GRANIAN_VARIANTS = ["rooms-granian-rsgi", "rooms-granian-asgi"]
HAVE_GRANIAN = importlib.util.find_spec("granian") is not None


@pytest.mark.parametrize("client", ["picows", "websockets"])
def test_fanout_quick_delivers_everything(client: str, tmp_path: Path) -> None:
    if client == "picows" and importlib.util.find_spec("picows") is None:
        pytest.skip("picows is not installed; the websockets client covers the benchmark")
    out = tmp_path / "fanout.json"
    wanted = UVICORN_VARIANTS + (GRANIAN_VARIANTS if HAVE_GRANIAN else [])
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--n", str(N), "--messages", str(MESSAGES),
         "--rounds", "1", "--client", client, "--no-pin", "--out", str(out),
         "--variants", ",".join(wanted)],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "| variant | server | deliveries/s" in proc.stdout

    report = json.loads(out.read_text())
    assert report["settings"]["n"] == N
    assert report["settings"]["messages"] == MESSAGES
    variants = report["settings"]["variants"]
    assert variants == wanted
    assert client.split("-")[0] in report["method"]["client"]
    results = report["results"]
    assert sorted(r["variant"] for r in results) == sorted(variants)
    for r in results:
        where = f"{r['variant']}: {r}"
        assert r["error"] is None, where
        assert r["expected"] == N * MESSAGES, where
        assert r["delivered"] == N * MESSAGES, where
        assert r["server_handed"] == N * MESSAGES, where
        assert r["mismatches"] == 0, where  # no frame lost, duplicated or out of order
        assert r["disconnects"] == 0, where
        assert len(r["latency_ms"]) == report["settings"]["latency_samples"], where
    for variant in variants:
        assert report["summary"][variant]["all_delivered"], variant
        assert report["server_stats"][variant]["members"] == N, variant
        assert "vs_plain" in report["summary"][variant], variant
        assert "vs_rooms" in report["summary"][variant], variant
    for variant in set(variants) & set(GRANIAN_VARIANTS):
        info = report["server_info"][variant]
        assert info["kind"] == variant.removeprefix("rooms-"), info
        assert info["parent_pid"] is not None, info  # measured in Granian's worker process
    if HAVE_GRANIAN:
        assert report["target"]["variant"] == "rooms-granian-rsgi"
        assert report["target"]["over"] == "rooms"


def test_fanout_quick_two_workers_over_redis(tmp_path: Path, redis_url: str) -> None:
    """rooms-redis-2w: two uvicorn processes share the room through Redis, half the members on
    each; every member gets every message in order, both servers' stats are in the record, and
    the run leaves no key under its prefix."""
    out = tmp_path / "fanout.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--n", str(N), "--messages", str(MESSAGES),
         "--rounds", "1", "--no-pin", "--out", str(out), "--redis-url", redis_url,
         "--variants", "rooms,rooms-redis-2w"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "| rooms-redis-2w | 2x uvicorn + Redis |" in proc.stdout

    report = json.loads(out.read_text())
    assert report["settings"]["variants"] == ["rooms", "rooms-redis-2w"]
    results = report["results"]
    assert sorted(r["variant"] for r in results) == ["rooms", "rooms-redis-2w"]
    for r in results:
        where = f"{r['variant']}: {r}"
        assert r["error"] is None, where
        assert r["delivered"] == r["expected"] == N * MESSAGES, where
        assert r["server_handed"] == N * MESSAGES, where
        assert r["mismatches"] == 0, where  # no frame lost, duplicated or out of order
        assert r["disconnects"] == 0, where
        assert len(r["latency_ms"]) == report["settings"]["latency_samples"], where
    two = next(r for r in results if r["variant"] == "rooms-redis-2w")
    half = N // 2 * MESSAGES
    assert two["server_handed_by_server"] == [half, half], two  # members split half/half
    assert len(two["burst_seconds_by_server"]) == 2, two
    assert [len(x) for x in two["latency_ms_by_server"]] == [len(two["latency_ms"])] * 2, two
    publisher, subscriber = two["backend_delta_by_server"]
    assert publisher["messages_out"] == MESSAGES, two  # one envelope per broadcast
    assert subscriber["messages_in"] == MESSAGES, two  # all of them reached the other process
    assert publisher["publish_dropped"] == subscriber["publish_dropped"] == 0, two

    summary = report["summary"]["rooms-redis-2w"]
    assert summary["all_delivered"], summary
    assert summary["servers"] == 2
    assert summary["vs_rooms"]["wall"]["median"] is not None
    added = summary["redis_added_latency_ms"]
    assert set(added) == {"last_receiver", "by_server", "p50_paired_by_round"}, added
    assert len(added["by_server"]) == len(added["p50_paired_by_round"]["by_server"]) == 2, added
    assert [t["variant"] for t in report["targets"]] == ["rooms-redis-2w"]

    stats = report["server_stats"]["rooms-redis-2w"]
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
    info = report["server_info"]["rooms-redis-2w"]
    assert len({s["pid"] for s in info["servers"]}) == 2

    prefix = report["redis"]["prefix"]
    assert prefix.startswith("frbench-")
    assert report["redis"]["keys_left"] == []
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert client.keys(f"{prefix}*") == []  # the servers deleted their directory keys
    finally:
        client.close()
