"""benchmarks/report.py turns the committed benchmark records into the Performance page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def test_report_from_the_committed_records(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    args = [f"--{name}" for name in ("s1", "s3", "s456", "s7", "s8", "s9")]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--out", str(out)]
    for arg in args:
        cmd += [arg, str(RESULTS / f"final-{arg[2:]}.json")]
    cmd += ["--s1-more", str(RESULTS / "final-s1-n5000.json")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    page = out.read_text()
    for heading in ("## S1", "## S2", "## S3", "## S4-S6", "## S7", "## S8", "## S9", "## Targets",
                    "## Caveats"):  # fmt: skip
        assert heading in page
    assert "Not measured" not in page
    assert "| **no** |" in page  # unmet targets are shown, not hidden
    assert (tmp_path / "img" / "bench-s1.png").stat().st_size > 1000
    assert (tmp_path / "img" / "bench-s3.png").stat().st_size > 1000
    assert (tmp_path / "img" / "bench-s8.png").stat().st_size > 1000


def test_committed_page_matches_the_records(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "report.py"), "--out", str(out)]
    for name in ("s1", "s3", "s456", "s7", "s8", "s9"):
        cmd += [f"--{name}", str(RESULTS / f"final-{name}.json")]
    cmd += ["--s1-more", str(RESULTS / "final-s1-n5000.json")]
    cmd += ["--s9-more", str(RESULTS / "final-s9-rate200.json")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    assert out.read_text() == (ROOT / "docs" / "benchmarks.md").read_text()


def test_s1_records_merge_by_n_and_must_share_their_settings() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import report

    base = json.loads((RESULTS / "final-s1.json").read_text())
    more = json.loads((RESULTS / "final-s1-n5000.json").read_text())
    merged = report.merge_s1(base, [more])
    assert merged is not None
    assert merged["settings"]["n"] == sorted({*base["settings"]["n"], *more["settings"]["n"]})
    assert set(merged["summary"]) == {*base["summary"], *more["summary"]}
    assert len(merged["targets"]) == len(base["targets"]) + len(more["targets"])
    odd = {**more, "settings": {**more["settings"], "messages": 7}}
    with pytest.raises(SystemExit, match="S1 records differ in messages"):
        report.merge_s1(base, [odd])
