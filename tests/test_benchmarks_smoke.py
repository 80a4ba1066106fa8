"""benchmarks/fanout.py --quick runs end to end and every variant delivers every message.

Every variant runs, the uvicorn ones and, when Granian is installed, fastapi_rooms under
``granian --interface rsgi`` (``RSGIApp``) and ``--interface asgi``. Correctness only: no timing
is asserted (numbers from a smoke run mean nothing).
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
