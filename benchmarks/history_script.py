#!/usr/bin/env python3
"""The history append script by EVAL (its whole text each call) against EVALSHA (its SHA1), on a
private redis-server: appends/s seen by the client, and Redis's own CPU per call (INFO
commandstats, microseconds, as Redis measures them).

    .venv/bin/python benchmarks/history_script.py            # 5 alternating rounds of 10,000

Each round sends 40 pipelines of 250 appends to one room keeping 1,000 messages, as the
backplane's writer batches them; rounds alternate EVAL, EVALSHA, EVAL, ... and medians are
reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from fastapi_rooms.backends.redis import _HISTORY_APPEND, RedisBackend  # noqa: E402
from tests.conftest import RedisServer, free_port  # noqa: E402 - the suite's process helpers


async def measure(url: str, rounds: int) -> dict[str, list[tuple[float, float]]]:
    client = aioredis.Redis.from_url(url)
    sha = await client.script_load(_HISTORY_APPEND)
    keys = RedisBackend(url, prefix="bench")._history_keys("room")
    frame = '{"type":"message","room":"room","from":null,"data":"' + "x" * 32 + '","offset":'
    args = ["bench:room", b"FR1", frame, "}", 1000, 600_000, 600_000, "epoch"]
    out: dict[str, list[tuple[float, float]]] = {"EVAL": [], "EVALSHA": []}
    for r in range(2 * rounds):
        mode = "EVAL" if r % 2 == 0 else "EVALSHA"
        await client.config_resetstat()
        started = time.perf_counter()
        for _ in range(40):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(250):
                    if mode == "EVAL":
                        pipe.eval(_HISTORY_APPEND, 3, *keys, *args)
                    else:
                        pipe.evalsha(sha, 3, *keys, *args)
                await pipe.execute()
        rate = 10_000 / (time.perf_counter() - started)
        stats = await client.info("commandstats")
        usec = float(stats[f"cmdstat_{mode.lower()}"]["usec_per_call"])
        out[mode].append((rate, usec))
    await client.aclose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(free_port(), Path(tmp))
        server.start()
        try:
            results = asyncio.run(measure(server.url, args.rounds))
        finally:
            server.kill()
    print("| call | appends/s (median) | Redis CPU per call, µs (median) |")
    print("|---|---|---|")
    for mode, runs in results.items():
        rate = statistics.median(r for r, _ in runs)
        usec = statistics.median(u for _, u in runs)
        print(f"| {mode} | {rate / 1000:.1f}k | {usec:.1f} |")


if __name__ == "__main__":
    main()
