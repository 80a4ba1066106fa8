#!/usr/bin/env python3
"""Set-up and everyday commands; needs only python3 (3.10+).

    python3 dev.py demo    # the chat example on http://127.0.0.1:8000 (in-process backend)
    python3 dev.py test    # lint, types, docs build, the whole test suite, then the floor job
    python3 dev.py bench   # every benchmark, then docs/benchmarks.md (see benchmarks/README.md)

Each command creates .venv and installs the package with its extras when pyproject.toml changed.
The floor job runs a few test files in .venv-floor against the lowest supported FastAPI,
Starlette and Pydantic, on the lowest supported Python (3.10) when python3.10 is on PATH;
FASTAPI_ROOMS_SKIP_FLOOR=1 skips it (CI always runs it).
The AsyncAPI tests run Node (npm ci in tests/js when its lock changes) and drive Debian's
chromium; without chromium (apt-get install chromium) the page test is skipped, loudly, except
in CI, where .ci/run installs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".fastapi-rooms-installed"

# The dependency floors of pyproject.toml, pinned. fastapi 0.137.0 itself requires
# starlette>=0.46.0 and pydantic>=2.9.0, so these pins install together.
FLOOR_VENV = ROOT / ".venv-floor"
FLOOR_PY = FLOOR_VENV / ("Scripts" if os.name == "nt" else "bin") / "python"
FLOOR_STAMP = FLOOR_VENV / ".fastapi-rooms-installed"
FLOOR_PINS = ("fastapi==0.137.0", "starlette==0.46.0", "pydantic==2.9.*")
FLOOR_TOOLS = ("uvicorn[standard]", "websockets", "httpx", "pytest", "anyio")
FLOOR_TESTS = (
    "tests/test_router.py",
    "tests/test_manager.py",
    "tests/test_floor.py",
    "tests/test_namespace_units.py",
)


def run(*cmd: str | Path, **kwargs: object) -> None:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kwargs)  # type: ignore[call-overload]


def ensure_env() -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"fastapi-rooms needs Python 3.10+, this is {sys.version.split()[0]}")
    if not PY.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    run(PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PY, "-m", "pip", "install", "--quiet", "-e", ".[dev,redis,granian,bench]")
    STAMP.write_text(digest)


def floor_python() -> str | None:
    """A working Python 3.10 (the lowest supported) when there is one, else None (then the
    floor job runs on this Python). pyenv's shims exist for versions they will not run, so
    each candidate is asked."""
    home = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates = [shutil.which("python3.10"), *sorted(home.glob("versions/3.10.*/bin/python3.10"))]
    for candidate in candidates:
        if candidate is None:
            continue
        done = subprocess.run(
            [str(candidate), "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0 and done.stdout.strip() == "(3, 10)":
            return str(candidate)
    return None


def ensure_floor_env() -> None:
    """Create .venv-floor with the pinned floors; reinstall when the pins or pyproject change."""
    base = floor_python()
    if FLOOR_PY.exists():
        made_with = subprocess.run(
            [str(FLOOR_PY), "-c", "import sys; print(sys.version_info[:2])"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        if base is not None and made_with != "(3, 10)":
            shutil.rmtree(FLOOR_VENV)  # made by another Python: start over on 3.10
    if not FLOOR_PY.exists():
        if base is not None:
            run(base, "-m", "venv", FLOOR_VENV)
        else:
            venv.EnvBuilder(with_pip=True).create(FLOOR_VENV)
    ignore = FLOOR_VENV / ".gitignore"  # keeps the venv out of git, as Python 3.13+ venvs do
    if not ignore.exists():
        ignore.write_text("*\n")
    pins = "\n".join((*FLOOR_PINS, *FLOOR_TOOLS)).encode()
    digest = hashlib.sha256(pins + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if FLOOR_STAMP.exists() and FLOOR_STAMP.read_text() == digest:
        return
    run(FLOOR_PY, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(FLOOR_PY, "-m", "pip", "install", "--quiet", "-e", ".", *FLOOR_PINS, *FLOOR_TOOLS)
    FLOOR_STAMP.write_text(digest)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


BROWSER_TESTS = (  # every test taking the chromium fixture (tests/test_dev.py keeps this true)
    "tests/test_admin.py::test_the_page_in_chromium",
    "tests/test_asyncapi.py::test_the_page_renders_channels_and_messages_in_chromium",
    "tests/test_chat_browser.py::test_a_page_that_lost_its_connection_misses_nothing",
    "tests/test_chat_browser.py::test_a_page_whose_server_restarted_recovers_from_redis",
)


def browser_missing() -> bool:
    """True (after saying so loudly) when Chromium is missing; CI cannot go on without it."""
    if os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser"):
        return False
    if in_ci():
        sys.exit("CI needs Chromium for the browser tests: apt-get install chromium (.ci/run does)")
    bar = "!" * 78
    tests = "\n".join(f"    {t}" for t in BROWSER_TESTS)
    print(
        f"{bar}\nChromium is not installed: these browser tests will NOT run (skipped):\n"
        f"{tests}\nInstall it with: sudo apt-get install chromium (or set CHROMIUM=/path)\n{bar}",
        flush=True,
    )
    return True


def floor() -> None:
    if os.environ.get("FASTAPI_ROOMS_SKIP_FLOOR") == "1" and not in_ci():
        print("== floor: skipped (FASTAPI_ROOMS_SKIP_FLOOR=1) ==", flush=True)
        return
    ensure_floor_env()
    python = subprocess.run(
        [str(FLOOR_PY), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    versions = ", ".join(
        [f"Python {python}", *(pin.replace("==", " ").rstrip(".*") for pin in FLOOR_PINS)]
    )
    print(f"== floor: {versions} ==", flush=True)
    run(FLOOR_PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FLOOR_TESTS)


def demo() -> None:
    run(PY, "-m", "uvicorn", "examples.chat.app:app", "--host", "127.0.0.1", "--port", "8000")


def test(args: list[str]) -> None:
    run(PY, "-m", "ruff", "check", ".")
    run(PY, "-m", "mypy")
    run(PY, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(VENV / "site"))
    no_browser = browser_missing()
    try:
        run(PY, "-m", "pytest", *args)
    finally:
        if no_browser:
            browser_missing()  # again, after the test output
    floor()


def bench(args: list[str]) -> None:
    """Every scenario, then docs/benchmarks.md; ``bench s8 --n 20000`` runs one scenario
    (``python -m benchmarks run s8 --n 20000``; ``python -m benchmarks list`` names them)."""
    if args and not args[0].startswith("-"):
        name = "s1" if args[0] == "fanout" else args[0]  # "fanout": the older spelling
        run(PY, "-m", "benchmarks", "run", name, *args[1:])
    else:
        run(PY, "benchmarks/run_all.py", *args)


def main() -> None:
    command, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command not in ("demo", "test", "bench", "setup"):
        sys.exit(__doc__)
    ensure_env()
    try:
        if command == "demo":
            demo()
        elif command == "test":
            test(args)
        elif command == "bench":
            bench(args)
    except subprocess.CalledProcessError as exc:
        sys.exit(exc.returncode)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
