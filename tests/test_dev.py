"""dev.py's own promises that can drift from the test suite."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_browser_test_list_names_every_test_that_needs_chromium() -> None:
    """``dev.py test`` tells a developer without Chromium which tests will not run."""
    spec = importlib.util.spec_from_file_location("_dev", ROOT / "dev.py")
    assert spec is not None and spec.loader is not None
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    found = set()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and node.name.startswith("test_")
                and any(a.arg == "chromium" for a in node.args.args)
            ):
                found.add(f"tests/{path.name}::{node.name}")
    assert found, "no test takes the chromium fixture: has it been renamed?"
    assert set(dev.BROWSER_TESTS) == found
