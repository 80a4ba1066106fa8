"""Run every benchmark scenario in turn, then write docs/benchmarks.md with report.py.

    .venv/bin/python benchmarks/run_all.py              # the full suite (about an hour)
    .venv/bin/python benchmarks/run_all.py --quick      # tiny sizes: checks the pipeline
    .venv/bin/python benchmarks/run_all.py --only s1,s7 # some scenarios; others stay unmeasured

Scenarios run one after another (never two at once: they share the two cores). A scenario that
fails is reported and the others still run; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

S1_VARIANTS = (
    "plain,rooms,gather,rooms-granian-rsgi,rooms-granian-rsgi-default-gc,rooms-granian-asgi,"
    "picows-raw,socketio,broadcaster"
)


def plan(stamp: str, quick: bool, rounds: int) -> dict[str, list[str]]:
    """Scenario -> command (each writes its JSON record to RESULTS/<stamp>-<scenario>.json)."""

    def out(name: str) -> list[str]:
        return ["--out", str(RESULTS / f"{stamp}-{name}.json")]

    r = ["--rounds", str(rounds)]
    if quick:
        return {
            "s1": ["fanout.py", "--quick", "--n", "20,40", "--variants", S1_VARIANTS, *out("s1")],
            "s7": ["fanout.py", "--quick", "--variants", "plain,rooms,rooms-redis-2w", *out("s7")],
            "s3": ["shootout.py", "--quick", *out("s3")],
            "s456": ["scenarios.py", "--quick", *out("s456")],
            "s8": ["-m", "benchmarks", "run", "s8", "--quick", *out("s8")],
            "s9": ["-m", "benchmarks", "run", "s9", "--quick", *out("s9")],
        }
    return {
        "s1": ["fanout.py", "--n", "100,1000,5000", "--variants", S1_VARIANTS, *r, *out("s1")],
        "s7": [
            "fanout.py",
            "--n",
            "1000",
            "--variants",
            "plain,rooms,rooms-redis-2w",
            *r,
            *out("s7"),
        ],
        "s3": ["shootout.py", *out("s3")],
        "s456": ["scenarios.py", *out("s456")],
        # 100,000 where the open-file limit allows (else capped, and the record says so)
        "s8": ["-m", "benchmarks", "run", "s8", "--n", "5000,10000,100000", *out("s8")],
        "s9": ["-m", "benchmarks", "run", "s9", *out("s9")],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds for the fan-out runs")
    ap.add_argument("--only", default="s1,s3,s456,s7,s8,s9", help="comma-separated scenarios")
    ap.add_argument("--report-out", default=None, help="markdown path (default docs/benchmarks.md)")
    args = ap.parse_args(argv)
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    commands = plan(stamp, args.quick, args.rounds)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(wanted) - set(commands)
    if unknown:
        ap.error(f"unknown scenario(s) {sorted(unknown)}; expected some of {sorted(commands)}")
    records: dict[str, Path] = {}
    failed: list[str] = []
    for name in wanted:
        script, *rest = commands[name]
        cmd = [sys.executable, *([script] if script == "-m" else [str(HERE / script)]), *rest]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        started = time.monotonic()
        code = subprocess.call(cmd, cwd=HERE.parent)
        path = Path(rest[rest.index("--out") + 1])
        print(
            f"== {name}: exit {code} after {time.monotonic() - started:.0f}s",
            file=sys.stderr,
            flush=True,
        )
        if path.exists():
            records[name] = path  # a failed run may still have a partial record worth showing
        if code != 0:
            failed.append(name)
    report = [sys.executable, str(HERE / "report.py")]
    for name, path in records.items():
        report += [f"--{name}", str(path)]
    if args.report_out:
        report += ["--out", args.report_out]
    code = subprocess.call(report)
    if failed:
        print(f"failed scenarios: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed or code else 0


if __name__ == "__main__":
    sys.exit(main())
