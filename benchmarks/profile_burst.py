#!/usr/bin/env python3
"""Where a fan-out burst spends the server's time: py-spy on a fanout.py server.

    .venv/bin/python benchmarks/profile_burst.py                   # rooms on uvicorn, N=1000
    .venv/bin/python benchmarks/profile_burst.py --variant plain   # the tutorial's loop
    .venv/bin/python benchmarks/profile_burst.py --out-md profile.md

Runs ``fanout.py`` with one variant (bursts of ``--messages`` broadcasts to a room of ``--n``),
attaches ``py-spy record`` (sampling, non-blocking) to its server process for ``--duration``
seconds and prints, as markdown: the share of samples per package (time spent in that
package's own code) and the functions (source lines) with the most samples of their own.
py-spy needs ptrace rights (root, or CAP_SYS_PTRACE). Loopback only; the
server is stopped by fanout.py.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = ("fastapi_rooms", "uvicorn", "websockets", "starlette", "fastapi", "asyncio", "uvloop")


def _package(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> the package the file belongs to."""
    match = re.search(r"\((.*):\d+\)$", frame)
    path = match.group(1) if match else frame
    parts = Path(path).parts
    for name in PACKAGES:
        if name in parts:
            return name
    return "benchmark app" if "benchmarks" in parts else "other"


def summarize(raw: str, top: int) -> tuple[list[str], dict[str, float]]:
    """Markdown lines and the package shares from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        packages[_package(frames[-1])] += n
    if total == 0:
        raise SystemExit("py-spy recorded no samples")
    shares = {name: packages[name] / total for name in packages}
    out = [f"{total} samples.", "", "| package (own code) | share of samples |", "|---|---|"]
    out += [f"| {name} | {100 * n / total:.1f} % |" for name, n in packages.most_common()]
    out += ["", "| function (own samples) | share |", "|---|---|"]
    for frame, n in own.most_common(top):
        out.append(f"| `{frame.replace('|', '/')}` | {100 * n / total:.1f} % |")
    return out, shares


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="rooms", help="a fanout.py variant served by uvicorn")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--messages", type=int, default=400)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=15.0, help="seconds of sampling")
    p.add_argument("--rate", type=int, default=500, help="samples per second")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out-md", help="also write the markdown here")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: .venv/bin/pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        err_path = Path(tmp) / "fanout.err"
        cmd = [
            sys.executable, str(HERE / "fanout.py"), "--variants", args.variant,
            "--n", str(args.n), "--messages", str(args.messages), "--rounds", str(args.rounds),
            "--out", str(Path(tmp) / "fanout.json"),
        ]  # fmt: skip
        with err_path.open("w") as err:
            bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            pattern = re.compile(rf"{re.escape(args.variant)}\s.*serving pid (\d+)")
            deadline = time.monotonic() + 120
            pid = None
            while pid is None:
                found = pattern.search(err_path.read_text())
                if found:
                    pid = int(found.group(1))
                elif bench.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"fanout.py did not start a server:\n{err_path.read_text()}")
                else:
                    time.sleep(0.2)  # polling fanout.py's log: it has no other signal
            raw_path = Path(tmp) / "profile.raw"
            subprocess.run(
                [spy, "record", "--pid", str(pid), "--duration", str(int(args.duration)),
                 "--rate", str(args.rate), "--format", "raw", "--nonblocking",
                 "--output", str(raw_path)],
                check=True, capture_output=True, timeout=args.duration + 60,
            )  # fmt: skip
            code = bench.wait(timeout=600)
        finally:
            if bench.poll() is None:
                bench.terminate()
                bench.wait(30)
        if code != 0:
            raise SystemExit(f"fanout.py failed ({code}):\n{err_path.read_text()[-3000:]}")
        lines, _ = summarize(raw_path.read_text(), args.top)
    head = (
        f"`benchmarks/profile_burst.py --variant {args.variant} --n {args.n} "
        f"--messages {args.messages}`: py-spy, {args.rate} samples/s for {args.duration:g} s "
        "of the server process during bursts."
    )
    text = "\n".join([head, "", *lines, ""])
    print(text)
    if args.out_md:
        Path(args.out_md).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
