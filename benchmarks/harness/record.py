"""What every benchmark record carries: when, where, with which versions; written as JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .procs import ROOT

__all__ = ["RESULTS", "environment", "loadavg", "spread", "stamp", "write"]

RESULTS = ROOT / "benchmarks" / "results"
_PACKAGES = ("fastapi", "starlette", "uvicorn", "granian", "websockets", "uvloop",
             "python-socketio", "redis", "pydantic")  # fmt: skip


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def environment() -> dict[str, Any]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "versions": versions,
        "commit": _git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(_git("status", "--porcelain", "--", "fastapi_rooms")),
        "loadavg_1m": loadavg(),
    }


def spread(values: Sequence[float]) -> dict[str, float | None]:
    """min / median / max of ``values`` (None for no values)."""
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return {"min": None, "median": None, "max": None}
    return {"min": min(clean), "median": statistics.median(clean), "max": max(clean)}


def write(record: dict[str, Any], path: Path | None, name: str) -> Path:
    """Write ``record`` as strict JSON (to ``results/<name>-<stamp>.json`` by default)."""
    if path is None:
        path = RESULTS / f"{name}-{stamp()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, allow_nan=False, default=str) + "\n")
    return path
