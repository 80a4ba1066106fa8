"""The benchmarks package: one entry point (``python -m benchmarks``) for every scenario, and
S8 (connection scale) end to end at tiny sizes. Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def test_every_scenario_is_listed_and_exists() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks.__main__ import SCENARIOS
    finally:
        sys.path.remove(str(ROOT))
    listed = bench("list")
    assert listed.returncode == 0, listed.stderr
    for name, (_, how) in SCENARIOS.items():
        assert f"  {name} " in listed.stdout
        if isinstance(how, list):
            assert (ROOT / "benchmarks" / how[0]).is_file(), how
    unknown = bench("run", "s99")
    assert unknown.returncode == 2 and "usage" in unknown.stderr


def test_s8_quick_opens_every_case_and_every_broadcast_reaches_everyone(tmp_path: Path) -> None:
    out = tmp_path / "s8.json"
    done = bench("run", "s8", "--quick", "--no-pin", "--out", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    record: dict[str, Any] = json.loads(out.read_text())
    cases = {"bare", "ready", "gobstopper", "socketio", "bare-rsgi", "ready-rsgi"}
    assert {r["case"] for r in record["records"]} == cases
    assert record["capped"] is None
    for r in record["records"]:
        assert r["error"] is None, r
        assert r["ready"] == r["n"] == r["connected"], r
        assert r["source_addresses"] >= 1
        assert r["rss_per_conn_kib"] is not None and r["handshakes_per_s"] > 0, r
        for b in r["broadcasts"]:
            assert b["delivered"] == b["expected"] == r["n"], (r["case"], b)
            assert b["seconds"] is not None and b["seconds"] > 0
    # two sizes on uvicorn: a fitted line per case; targets checked for the rooms cases
    assert set(record["fits"]) == {"bare", "ready", "gobstopper", "socketio"}
    assert {(t["case"], t.get("projected", False)) for t in record["targets"]} == {
        ("ready", False),
        ("ready", True),
        ("gobstopper", False),
        ("gobstopper", True),
    }
    assert "| case | server | N |" in record["markdown"]
    assert "| ready | uvicorn | 200 |" in done.stdout


def test_s8_refuses_nothing_silently_when_the_file_limit_is_low(tmp_path: Path) -> None:
    """More connections than the open-file limit allows: capped, loudly, in the record too."""
    out = tmp_path / "s8.json"
    done = subprocess.run(
        ["prlimit", "--nofile=1400:1400", sys.executable, "-m", "benchmarks", "run", "s8",
         "--cases", "bare", "--n", "600", "--broadcasts", "1", "--warmup", "5", "--settle",
         "0.1", "--no-pin", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "CAPPED" in done.stderr
    record = json.loads(out.read_text())
    assert record["capped"]["requested"] == 600 and record["capped"]["used"] == 376
    assert record["records"][0]["n"] == record["records"][0]["ready"] == 376
    assert "**Capped**" in record["markdown"]


def test_the_other_scripts_run_through_the_entry_point() -> None:
    churn = bench("run", "churn", "--n", "100", "--repeat", "1", timeout=120)
    assert churn.returncode == 0, churn.stderr
    assert "N=100: add+join" in churn.stdout
    recovery = bench("run", "recovery", "--n", "20", "--rounds", "1", timeout=120)
    assert recovery.returncode == 0, recovery.stderr
    assert '"n": 20' in recovery.stdout


def test_s9_quick_delivers_every_message_on_both_stacks(tmp_path: Path) -> None:
    """Three nodes over a redis-server of the benchmark's own: every message to every member."""
    out = tmp_path / "s9.json"
    done = bench("run", "s9", "--quick", "--out", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    record: dict[str, Any] = json.loads(out.read_text())
    by_variant = {r["variant"]: r for r in record["records"]}
    assert set(by_variant) == {"rooms", "socketio"}
    for r in by_variant.values():
        assert r["error"] is None, r
        assert r["published"] > 0 and r["undelivered"] == 0 and r["duplicates_or_strays"] == 0, r
        assert r["delivered"] == r["expected"] == 10 * r["published"], r
        assert r["churn_acks"] > 0, r  # churners joined and left while messages flowed
        assert len(r["nodes"]) == 3 and r["redis"]["cpu_seconds"] >= 0, r
    # one channel per room a node holds, against python-socketio's one channel for all
    rooms = by_variant["rooms"]
    assert all(n["channels"] >= 20 for n in rooms["nodes"]), rooms["nodes"]
    assert rooms["redis"]["channels_after"] >= 60
    assert all(n["channels"] == 1 for n in by_variant["socketio"]["nodes"])
    assert "| rooms |" in record["markdown"] and "| socketio |" in record["markdown"]
