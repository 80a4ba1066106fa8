"""``python -m benchmarks list`` and ``python -m benchmarks run <scenario> [its flags]``.

Scenarios built on the harness (``benchmarks/harness``) run in this process; the older
scripts run as they always have, with the flags the full suite gives them (any flags after
the scenario's name replace those defaults). ``python3 dev.py bench`` runs the whole suite.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
S1_VARIANTS = (
    "plain,rooms,gather,rooms-granian-rsgi,rooms-granian-rsgi-default-gc,rooms-granian-asgi,"
    "picows-raw,socketio,broadcaster"
)

#: name -> (what it measures, a harness module, or a script and its default flags)
SCENARIOS: dict[str, tuple[str, str | list[str]]] = {
    "s1": ("fan-out to one room at N=100, 1000, 5000 against baselines and peers",
           ["fanout.py", "--n", "100,1000,5000", "--variants", S1_VARIANTS]),
    "s3": ("the same chat app on every server and peer", ["shootout.py"]),
    "s4": ("10,000 idle connections: memory", ["scenarios.py", "--scenario", "s4"]),
    "s5": ("one big room against many small rooms; join/leave rate",
           ["scenarios.py", "--scenario", "s5"]),
    "s6": ("a stalled member among 1000", ["scenarios.py", "--scenario", "s6"]),
    "s7": ("two processes over Redis against one",
           ["fanout.py", "--variants", "plain,rooms,rooms-redis-2w"]),
    "s7-cluster": ("nodes over a Redis Cluster of 1 to 3 masters", ["cluster.py"]),
    "s8": ("100,000 idle connections on one process: memory, handshakes, one broadcast",
           "benchmarks.s8"),
    "s9": ("4 nodes over Redis, 10,000 rooms of 10, publishing with churn, vs python-socketio",
           "benchmarks.s9"),
    "churn": ("add, join and remove connections in process", ["churn.py"]),
    "recovery": ("a rejoining client receives 1000 missed messages", ["recovery.py"]),
    "history-script": ("the history script by EVAL and EVALSHA", ["history_script.py"]),
}  # fmt: skip


def run(name: str, argv: Sequence[str]) -> int:
    _, how = SCENARIOS[name]
    if isinstance(how, str):
        module = importlib.import_module(how)
        return int(module.main(list(argv)))
    script, *defaults = how
    return subprocess.call([sys.executable, str(HERE / script), *(argv or defaults)])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "list"):
        print(__doc__.strip() + "\n\nScenarios:")
        for name, (what, _) in SCENARIOS.items():
            print(f"  {name:15s} {what}")
        return 0
    if args[0] != "run" or len(args) < 2 or args[1] not in SCENARIOS:
        print(f"usage: python -m benchmarks run <{'|'.join(SCENARIOS)}> [flags]",
              file=sys.stderr)  # fmt: skip
        return 2
    return run(args[1], args[2:])


if __name__ == "__main__":
    sys.exit(main())
