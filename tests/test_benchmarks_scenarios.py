"""benchmarks/scenarios.py --quick runs S4, S5 and S6 end to end with sane numbers.

One run of all three scenarios (tiny N, one round, not pinned): S4 with 200 idle connections per
case, S5 with 200 members, S6 with a room of 20. Correctness and plausible ranges only: no speed
is asserted (numbers from a smoke run mean nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "scenarios.py"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("scenarios") / "scenarios.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--no-pin", "--out", str(out),
         "--scenario", "s4,s5,s6"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(out.read_text()), proc.stdout


def test_record_and_table(quick: tuple[dict[str, Any], str]) -> None:
    report, stdout = quick
    assert set(report["summary"]) == {"s4", "s5", "s6"}
    assert report["settings"]["quick"] is True
    for heading in ("### S4:", "### S5:", "### S6:"):
        assert heading in stdout
    assert report["environment"]["fastapi_rooms"]["commit"]


def test_s4_idle_connections(quick: tuple[dict[str, Any], str]) -> None:
    report, _ = quick
    s4 = report["summary"]["s4"]
    n = s4["n"]
    assert n == 200
    expected = {
        f"{case}/{offer}"
        for case in ("bare-uvicorn", "rooms-uvicorn", "rooms-granian-rsgi")
        for offer in ("none", "deflate")
    }
    assert set(s4["cases"]) == expected
    for key, case in s4["cases"].items():
        assert case["rounds_ok"] == 1 and case["rounds_failed"] == 0, (key, case)
        per_conn = case["rss_per_conn_kib"]["median"]
        assert 1 < per_conn < 1024, (key, per_conn)  # a connection costs KiB, not MiB
        assert 0 <= case["idle_cpu_percent"]["median"] < 100, (key, case)
        negotiated = [e for e in case["extensions_negotiated"] if e]
        if case["offer"] == "deflate" and case["server"] == "uvicorn":
            assert negotiated == ["permessage-deflate"], (key, case)
        else:  # not offered, or RSGI (no compression)
            assert negotiated == [], (key, case)
        if case["case"] != "bare-uvicorn":
            assert case["vs_bare_uvicorn_kib"]["median"] is not None, (key, case)
    for r in report["results"]["s4"]:
        assert r["error"] is None, r
        assert r["ready"] == r["connected"] == n, r
        assert r["rss_after_kib"] > r["rss_before_kib"], r
        assert r["server"]["pid"] == r["pid"]
        if r["case"] == "rooms-granian-rsgi":
            assert r["server"]["parent_pid"] is not None, r  # measured in Granian's worker
    assert len(s4["targets"]) == 2  # one per offer; met or not is the benchmark's finding
    assert all(isinstance(t["met"], bool) for t in s4["targets"])


def test_s5_layouts_and_join_leave(quick: tuple[dict[str, Any], str]) -> None:
    report, _ = quick
    s5 = report["summary"]["s5"]
    assert s5["n"] == 200 and s5["small_room_count"] == 20
    for layout in ("big_room", "small_rooms"):
        entry = s5[layout]
        assert entry["rounds_ok"] == 1 and entry["all_delivered"], entry
        assert entry["deliveries_per_s"]["median"] > 0
    assert s5["big_room"]["broadcasts_per_burst"] == s5["messages"]
    assert s5["small_rooms"]["broadcasts_per_burst"] == s5["messages"] * 20
    assert s5["small_vs_big"]["median"] > 0
    jl = s5["join_leave"]
    assert jl["rounds_ok"] == 1 and jl["errors"] == 0, jl
    assert jl["ops_per_s"]["median"] > 0
    for r in report["results"]["s5"]:
        assert r["error"] is None, r
        if r["layout"] == "join_leave":
            assert r["acks"] == r["expected"] == jl["clients"] * jl["ops_per_client"], r
        else:
            assert r["delivered"] == r["expected"] and r["mismatches"] == 0, r
            assert r["server"]["handed"] == r["expected"], r
    for label in ("shared_rooms", "room_per_join"):
        micro = s5["microbench"][label]
        assert 0 < micro["join_ns"]["median"] < 1e6, micro
        assert 0 < micro["leave_ns"]["median"] < 1e6, micro
    assert s5["server"]["stats"]["slow_consumer_closes"] == 0


def test_s6_stalled_member(quick: tuple[dict[str, Any], str]) -> None:
    report, _ = quick
    s6 = report["summary"]["s6"]
    messages = s6["messages"]
    rooms, plain = s6["rooms"], s6["plain"]
    for entry in (rooms, plain):
        assert entry["rounds_ok"] == {"absent": 1, "stalled": 1}, entry
        assert entry["absent_deliveries_per_s"]["median"] > 0
    # fastapi_rooms: the burst completes; the stalled member is closed with 1013 once its
    # buffer of 1024 frames is full, after what the kernel absorbed.
    assert rooms["stalled_rounds"] == 0
    closed = rooms["closed_1013"]
    assert closed["rounds"] == 1, closed
    assert closed["close_codes_seen_by_client"] == ["1013"], closed
    assert 1024 < closed["after_messages"]["median"] < messages, closed
    # what the stalled member read afterwards came before the close; then one send waited on
    # its paused transport and 1024 frames queued behind it: the next message overflowed.
    before_close = closed["stalled_frames_before_close"]["median"]
    assert 1024 <= closed["after_messages"]["median"] - before_close <= 1030, closed
    assert rooms["rss_growth_kib"]["stalled"]["median"] > 0
    # the plain loop: stuck on the stalled member until its timeout
    assert plain["stalled_rounds"] == 1, plain
    assert 0 < plain["stuck_at_message"]["median"] < messages, plain
    assert 0 < plain["others_share_delivered_by_timeout"]["median"] < 1, plain
    assert plain["others_longest_pause_s"]["stalled"]["median"] > 0, plain
    assert plain["closed_1013"]["rounds"] == 0
    for r in report["results"]["s6"]:
        assert r["error"] is None, r
        assert r["mismatches"] == 0, r
        if r["condition"] == "absent" or r["variant"] == "rooms":
            assert r["completed"] and r["delivered"] == r["expected"], r
        else:
            assert not r["completed"] and r["delivered"] < r["expected"], r
            assert r["stalled_frames_received"] == messages, r  # it got everything afterwards
    assert len(s6["targets"]) == 2
    assert all(isinstance(t["met"], bool) for t in s6["targets"])
