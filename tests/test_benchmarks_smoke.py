"""benchmarks/fanout.py --quick runs end to end and every variant delivers every message.

Correctness only: no timing is asserted (numbers from a smoke run mean nothing).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "fanout.py"
N, MESSAGES = 20, 20


@pytest.mark.parametrize("client", ["picows", "websockets"])
def test_fanout_quick_delivers_everything(client: str, tmp_path: Path) -> None:
    if client == "picows" and importlib.util.find_spec("picows") is None:
        pytest.skip("picows is not installed; the websockets client covers the benchmark")
    out = tmp_path / "fanout.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--n", str(N), "--messages", str(MESSAGES),
         "--rounds", "1", "--client", client, "--no-pin", "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "| variant | deliveries/s" in proc.stdout

    report = json.loads(out.read_text())
    assert report["settings"]["n"] == N
    assert report["settings"]["messages"] == MESSAGES
    variants = report["settings"]["variants"]
    assert {"plain", "rooms"} <= set(variants)
    assert client.split("-")[0] in report["method"]["client"]
    results = report["results"]
    assert sorted(r["variant"] for r in results) == sorted(variants)
    for r in results:
        where = f"{r['variant']}: {r}"
        assert r["error"] is None, where
        assert r["expected"] == N * MESSAGES, where
        assert r["delivered"] == N * MESSAGES, where
        assert r["server_handed"] == N * MESSAGES, where
        assert r["mismatches"] == 0, where
        assert r["disconnects"] == 0, where
        assert len(r["latency_ms"]) == report["settings"]["latency_samples"], where
    for variant in variants:
        assert report["summary"][variant]["all_delivered"], variant
        assert report["server_stats"][variant]["members"] == N, variant
