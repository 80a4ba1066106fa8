"""Write docs/benchmarks.md (tables) and docs/img/bench-*.png (plots) from benchmark records.

    .venv/bin/python benchmarks/report.py --s1 S1.json [--s7 S7.json] [--s3 S3.json] [--s456 S.json]
        [--s8 S8.json]

``--s1-more`` adds fanout.py records of the same settings at other N to S1 (the committed page:
``final-s1.json`` at N = 100 and 1000, ``final-s1-n5000.json`` at 5000); ``--s9-more`` adds
S9 records at other loads (the committed page: ``final-s9-rate200.json``).
``benchmarks/run_all.py`` runs every scenario and then this script. Each input is the JSON
record one benchmark script wrote; a missing input leaves its section saying so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
IMG = DOCS / "img"

LABELS = {
    "plain": "plain loop (uvicorn)",
    "rooms": "fastapi-rooms (uvicorn)",
    "gather": "asyncio.gather (uvicorn)",
    "rooms-granian-rsgi": "fastapi-rooms (Granian RSGI)",
    "rooms-granian-asgi": "fastapi-rooms (Granian ASGI)",
    "rooms-granian-rsgi-default-gc": "fastapi-rooms (Granian RSGI, default GC)",
    "rooms-redis-2w": "fastapi-rooms, 2 workers + Redis",
    "picows-raw": "bare picows server (ceiling)",
    "socketio": "python-socketio (uvicorn)",
    "broadcaster": "broadcaster (uvicorn)",
}


def _k(x: float | None) -> str:
    return "-" if x is None else f"{x / 1000:.1f}k"


def _x(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _med(d: dict[str, Any] | None, key: str = "median") -> float | None:
    return None if not d else d.get(key)


def _ratio(summary: dict[str, Any], over: str) -> str:
    r = summary.get(f"vs_{over}")
    if not r or not r.get("wall"):
        return "-"
    w = r["wall"]
    if w.get("median") is None:
        return "-"
    return f"{w['median']:.2f}x ({w['min']:.2f}-{w['max']:.2f})"


def _label(variant: str) -> str:
    return LABELS.get(variant, variant)


def _plot_s1(s1: dict[str, Any]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')", file=sys.stderr)
        return None
    ns = [str(n) for n in s1["settings"]["n"]]
    variants = s1["settings"]["variants"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        values = [
            (_med(s1["summary"].get(n, {}).get(variant, {}).get("deliveries_per_s")) or 0) / 1000
            for n in ns
        ]
        ax.bar([j + i * width for j in range(len(ns))], values, width, label=_label(variant))
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(ns))])
    ax.set_xticklabels([f"N={n}" for n in ns])
    ax.set_ylabel("deliveries/s (thousands, median)")
    ax.set_title("S1: burst fan-out to one room")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "bench-s1.png", dpi=110)
    plt.close(fig)
    return "img/bench-s1.png"


def _plot_s3(s3: dict[str, Any]) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    for variant, result in s3.get("summary", {}).items():
        steps = result.get("steps") or []
        ax.plot([s["n"] for s in steps], [s["p95_ms"] for s in steps], marker="o",
                label=_label(variant))  # fmt: skip
    ax.axhline(250, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("room size N")
    ax.set_ylabel("p95 latency to the last member (ms)")
    ax.set_title("S3: 4 broadcasts in flight; the largest room with p95 <= 250 ms")
    ax.legend(fontsize=7)
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "bench-s3.png", dpi=110)
    plt.close(fig)
    return "img/bench-s3.png"


def section_s1(s1: dict[str, Any] | None, source: str) -> list[str]:
    out = ["## S1: burst fan-out to one room", ""]
    if s1 is None:
        return [*out, "Not measured in this report.", ""]
    st = s1["settings"]
    out += [
        f"`{source}`: {st['messages']} broadcasts of {st['size']} bytes per burst, "
        f"{st['rounds']} rounds, variants alternated within each round; ratios are paired "
        "within a round (median, min-max).",
        "",
    ]
    for n in [str(n) for n in st["n"]]:
        rows = s1["summary"].get(n, {})
        out += [
            f"**N = {n}**",
            "",
            "| variant | deliveries/s min / median / max | vs plain | vs rooms | "
            "last receiver p50 / p99 ms |",
            "|---|---|---|---|---|",
        ]
        for variant in st["variants"]:
            s = rows.get(variant)
            if not s:
                continue
            d = s.get("deliveries_per_s") or {}
            lat = s.get("latency_ms") or {}
            out.append(
                f"| {_label(variant)} | {_k(d.get('min'))} / **{_k(d.get('median'))}** / "
                f"{_k(d.get('max'))} | {_ratio(s, 'plain')} | {_ratio(s, 'rooms')} | "
                f"{_ms(lat.get('p50'))} / {_ms(lat.get('p99'))} |"
            )
        out.append("")
    plot = _plot_s1(s1)
    if plot:
        out += [f"![S1 fan-out]({plot})", ""]
    return out


def section_targets(records: Sequence[dict[str, Any] | None]) -> list[str]:
    out = [
        "## Targets",
        "",
        "| N | variant | over | goal | measured (median) | met |",
        "|---|---|---|---|---|---|",
    ]
    for record in records:
        for t in (record or {}).get("targets", []):
            if not t.get("applies", True):
                continue
            value = t.get("value")
            shown = "-" if value is None else f"{value:.2f}"
            goal = f"{'>=' if t.get('comparison') == 'at_least' else '<='} {t.get('goal')}"
            if t.get("stretch"):
                goal += " (stretch)"
            met = {True: "yes", False: "**no**", None: "-"}[t.get("met")]
            out.append(
                f"| {t.get('n', '')} | {_label(t.get('variant', ''))} | "
                f"{_label(t.get('over', ''))} ({t.get('metric', '')}) | {goal} | {shown} | {met} |"
            )
    return [*out, ""]


def section_s2(s1: dict[str, Any] | None) -> list[str]:
    out = ["## S2: latency to the last receiver at N = 1000", ""]
    rows = (s1 or {}).get("summary", {}).get("1000")
    if not rows:
        return [*out, "Not measured in this report (needs N = 1000 in S1).", ""]
    ceiling = (rows.get("picows-raw") or {}).get("latency_ms") or {}
    out += [
        "One broadcast at a time at a steady interval (open loop), between the bursts of S1; "
        "the time until the last member has it.",
        "",
        "| variant | p50 ms | p99 ms | p99 vs picows ceiling |",
        "|---|---|---|---|",
    ]
    for variant, s in rows.items():
        lat = s.get("latency_ms") or {}
        ratio = (
            lat["p99"] / ceiling["p99"]
            if lat.get("p99") is not None and ceiling.get("p99")
            else None
        )
        out.append(
            f"| {_label(variant)} | {_ms(lat.get('p50'))} | {_ms(lat.get('p99'))} | {_x(ratio)} |"
        )
    return [*out, "", "Target: fastapi-rooms p99 <= 1.5x the picows ceiling.", ""]


def section_s3(s3: dict[str, Any] | None, source: str) -> list[str]:
    out = ["## S3: the largest room with p95 <= 250 ms (4 broadcasts in flight)", ""]
    if s3 is None:
        return [*out, "Not measured in this report.", ""]
    out += [f"`{source}`", "", "| variant | largest N | p95 at each N (ms) |", "|---|---|---|"]
    for variant, result in s3.get("summary", {}).items():
        steps = ", ".join(f"{s['n']}: {s['p95_ms']:.0f}" for s in result.get("steps") or [])
        out.append(f"| {_label(variant)} | {result.get('largest_n') or '-'} | {steps} |")
    plot = _plot_s3(s3)
    out.append("")
    if plot:
        out += [f"![S3 shootout]({plot})", ""]
    return out


def section_s7(s7: dict[str, Any] | None, source: str) -> list[str]:
    out = ["## S7: two workers over Redis against one process", ""]
    if s7 is None:
        return [*out, "Not measured in this report.", ""]
    n = str(s7["settings"]["n"][0])
    rows = s7["summary"][n]
    out += [
        f"`{source}`: N = {n}, members split half and half over two uvicorn processes sharing "
        "the room through Redis; both processes on the server core.",
        "",
        "| variant | deliveries/s median | vs rooms | last receiver p50 / p99 ms |",
        "|---|---|---|---|",
    ]
    for variant, s in rows.items():
        lat = s.get("latency_ms") or {}
        out.append(
            f"| {_label(variant)} | {_k(_med(s.get('deliveries_per_s')))} | "
            f"{_ratio(s, 'rooms')} | {_ms(lat.get('p50'))} / {_ms(lat.get('p99'))} |"
        )
    return [*out, "", "Target: >= 0.7x one process.", ""]


def _plot_s8(s8: dict[str, Any]) -> str | None:
    """Cost as connections grow: RSS per connection and one broadcast's time, against N."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = list(s8.get("summary", {}).values())
    fig, (mem, bcast) = plt.subplots(1, 2, figsize=(10, 4))
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = sorted((r for r in rows if r["case"] == case), key=lambda r: r["n"])
        ns = [r["n"] for r in mine]
        mem.plot(ns, [_med(r["rss_per_conn_kib"]) for r in mine], marker="o", label=case)
        times = [_med(r["broadcast_seconds"]) for r in mine]
        line = bcast.plot(ns, [None if t is None else 1000 * t for t in times], marker="o",
                          label=case)  # fmt: skip
        fit = (s8.get("fits") or {}).get(case)
        if fit:
            xs = [0, max(ns)]
            ys = [1000 * (fit["intercept_seconds"] + fit["seconds_per_connection"] * x) for x in xs]
            bcast.plot(xs, ys, linestyle=":", color=line[0].get_color(), linewidth=1)
    mem.set_xlabel("connections on one process")
    mem.set_ylabel("server RSS per connection (KiB)")
    mem.set_ylim(bottom=0)
    bcast.set_xlabel("connections on one process")
    bcast.set_ylabel("one broadcast reaches all (ms, median)")
    bcast.set_ylim(bottom=0)
    mem.legend(fontsize=7)
    fig.suptitle("S8: idle connections; dotted: least-squares fit")
    fig.tight_layout()
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / "bench-s8.png", dpi=110)
    plt.close(fig)
    return "img/bench-s8.png"


def section_s8(s8: dict[str, Any] | None, source: str) -> list[str]:
    out = ["## S8: connections on one process", ""]
    if s8 is None:
        return [*out, "Not measured in this report.", ""]
    out += [
        f"`{source}` (`python -m benchmarks run s8`): a fresh server process per case and N; "
        "connections from several loopback source addresses; the bare app is the baseline "
        "for memory.",
        s8.get("markdown", "").rstrip(),
        "",
    ]
    plot = _plot_s8(s8)
    if plot:
        out += [f"![S8: cost against connections]({plot})", ""]
    return out



def section_s9(
    s9: dict[str, Any] | None, source: str, more: Sequence[tuple[dict[str, Any] | None, str]] = ()
) -> list[str]:
    out = ["## S9: many rooms on many nodes", ""]
    if s9 is None:
        return [*out, "Not measured in this report.", ""]
    out += [
        f"`{source}` (`python -m benchmarks run s9`): nodes share one Redis; fastapi-rooms "
        "subscribes a node to a room's channel while it has members there, python-socketio's "
        "`AsyncRedisManager` sends everything through one channel every node reads.",
        "",
        s9.get("markdown", "").strip(),
        "",
    ]
    for record, src in more:  # the same at other loads
        if record is not None:
            out += [f"`{src}`:", "", record.get("markdown", "").strip(), ""]
    return out

def section_scenarios(rec: dict[str, Any] | None, source: str) -> list[str]:
    out = ["## S4-S6: idle connections, many rooms, a stalled client", ""]
    if rec is None:
        return [*out, "Not measured in this report.", ""]
    markdown = rec.get("markdown")
    if markdown:
        return [*out, f"`{source}`", "", markdown.strip(), ""]
    return [*out, f"`{source}`", "", "```json", json.dumps(rec.get("summary"), indent=1), "```", ""]


#: py-spy summaries written by profile_burst.py (committed; profiling needs ptrace rights).
PROFILES = {
    "Before corking (commit a4feccb)": RESULTS / "profile-rooms-before-cork.md",
    "After corking": RESULTS / "profile-rooms-after-cork.md",
}
#: fastapi-rooms' median deliveries/s at N = 1000 in the S1 record of commit a4feccb.
BEFORE_CORK_RATE = 79_300


def _write_share(path: Path) -> float | None:
    """The share of samples on uvicorn's transport.write line in a profile_burst.py summary."""
    for line in path.read_text().splitlines():
        if "websockets_sansio_impl.py:514" in line:
            return float(line.rsplit("|", 2)[1].strip().rstrip("%").strip()) / 100
    return None


def section_profile(s1: dict[str, Any] | None) -> list[str]:
    out = ["## Where the time goes (py-spy)", ""]
    found = {title: path for title, path in PROFILES.items() if path.exists()}
    if not found:
        return [*out, "Not profiled in this report.", ""]
    rooms = ((s1 or {}).get("summary", {}).get("1000", {}) or {}).get("rooms", {})
    after = _med(rooms.get("deliveries_per_s"))
    shares = [_write_share(path) for path in PROFILES.values() if path.exists()]
    text = (
        "fastapi-rooms on uvicorn, one room of 1000, bursts of 400 broadcasts "
        "(`benchmarks/profile_burst.py`). The largest share, before and after, is one line of "
        "uvicorn: `self.transport.write(...)` in `websockets_sansio_impl.py` (line 514), one "
        "`send()` system call per frame. Corking (the first frame of a connection in a loop "
        "pass goes out at once, the rest of that pass's frames follow back to back in batches "
        "of up to 256 frames or 64 KiB) makes those calls cheaper: consecutive small writes to "
        "one socket cost the kernel less (TCP autocorking) and the client reads many frames "
        "per wake-up."
    )
    before_share, after_share = [*shares, None, None][:2]
    if before_share is not None and after_share is not None and after:
        text += (
            f" That line's share went from {100 * before_share:.1f} % to "
            f"{100 * after_share:.1f} % of the samples while deliveries/s rose from "
            f"{_k(BEFORE_CORK_RATE)} (S1 before) to {_k(after)} (S1 above): about "
            f"{1e6 / BEFORE_CORK_RATE * before_share:.1f} then "
            f"{1e6 / after * after_share:.1f} us of writing per delivery."
        )
    text += (
        " fastapi_rooms' own code is about a tenth of the samples. The rest is uvicorn's and "
        "websockets' per-frame work: ASGI carries one frame per send event, so frames cannot "
        "share a write, which is why a bare picows server (C framing, no ASGI) stays ahead."
    )
    out += [text, ""]
    for title, path in found.items():
        out += [f"### {title}", "", path.read_text().strip(), ""]
    return out


def _ceiling_caveat(s1: dict[str, Any] | None) -> list[str]:
    """The picows ceiling over broadcaster at N = 1000: above it no ratio over broadcaster is."""
    by = ((s1 or {}).get("summary", {}) or {}).get("1000", {})
    ceiling = _med((by.get("picows-raw") or {}).get("deliveries_per_s"))
    peer = _med((by.get("broadcaster") or {}).get("deliveries_per_s"))
    if not ceiling or not peer:
        return []
    return [
        f"- The bare picows server (no ASGI, C framing) made {ceiling / peer:.2f}x "
        "broadcaster's deliveries/s at N = 1000: in this harness not even the practical "
        "ceiling reaches the S1 target of 2.5x broadcaster."
    ]


def merge_s1(first: dict[str, Any] | None, more: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """One S1 record from several runs of fanout.py with the same settings but other N."""
    if first is None or not more:
        return first
    merged = {**first, "settings": dict(first["settings"]), "summary": dict(first["summary"])}
    merged["targets"] = list(first.get("targets", []))
    for record in more:
        for key in ("messages", "size", "rounds"):
            if record["settings"][key] != first["settings"][key]:
                raise SystemExit(
                    f"S1 records differ in {key}: {first['settings'][key]} and "
                    f"{record['settings'][key]}"
                )
        merged["summary"].update(record["summary"])
        merged["targets"] += record.get("targets", [])
    merged["settings"]["n"] = sorted({int(n) for n in merged["summary"]})
    return merged


def load(path: str | None) -> tuple[dict[str, Any] | None, str]:
    if not path:
        return None, ""
    p = Path(path)
    return json.loads(p.read_text()), f"benchmarks/results/{p.name}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--s1", help="fanout.py record with N = 100,1000,5000 (S1, S2)")
    ap.add_argument(
        "--s1-more",
        action="append",
        default=[],
        help="another fanout.py record with the same settings at other N (repeatable)",
    )
    ap.add_argument("--s3", help="shootout.py record")
    ap.add_argument("--s456", help="scenarios.py record")
    ap.add_argument("--s7", help="fanout.py record with rooms-redis-2w")
    ap.add_argument("--s8", help="python -m benchmarks run s8 record")
    ap.add_argument("--s9", help="python -m benchmarks run s9 record")
    ap.add_argument("--s9-more", action="append", default=[], help="another S9 record")
    ap.add_argument("--out", default=str(DOCS / "benchmarks.md"))
    args = ap.parse_args(argv)
    global IMG
    IMG = Path(args.out).resolve().parent / "img"  # plots live beside the page they belong to
    s1, s1_src = load(args.s1)
    extra = [load(path) for path in args.s1_more]
    s1 = merge_s1(s1, [record for record, _ in extra if record is not None])
    if extra:
        s1_src = " and ".join(f"`{src}`" for src in [s1_src, *(src for _, src in extra)])
        s1_src = s1_src[1:-1]  # section_s1 adds the outer backticks
    s3, s3_src = load(args.s3)
    s456, s456_src = load(args.s456)
    s7, s7_src = load(args.s7)
    s8, s8_src = load(args.s8)
    s9, s9_src = load(args.s9)
    env = (s1 or s7 or {}).get("environment", {})
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python3 dev.py bench` (`benchmarks/run_all.py`, then "
        "`benchmarks/report.py`) from the JSON records named in each section. Method, flags "
        "and every column: `benchmarks/README.md`.",
        "",
        "Server pinned to one core, one picows + uvloop client process on the other, loopback "
        "only; absolute numbers drift 15-25 % between runs on these machines, so compare the "
        "ratios, which are paired within a round.",
        "",
        f"Machine: {env.get('platform', '?')}, {env.get('cpus', '?')} CPUs; Python "
        f"{env.get('python', '?')}, uvicorn {env.get('uvicorn', '?')}, Granian "
        f"{env.get('granian', '?')}, picows {env.get('picows', '?')}.",
        "",
        *section_s1(s1, s1_src),
        *section_s2(s1),
        *section_s3(s3, s3_src),
        *section_scenarios(s456, s456_src),
        *section_s7(s7, s7_src),
        *section_s8(s8, s8_src),
        *section_s9(s9, s9_src, [load(path) for path in args.s9_more]),
        *section_targets([s1, s7, s3, s456]),
        *section_profile(s1),
        "## Caveats",
        "",
        "- Two cores: the server has one, the client the other; Redis (S7) and Granian's "
        "helper threads share the server's core. Results on bigger machines will differ.",
        "- Loopback hides network latency and bandwidth; real clients read slower, so the "
        "slow-consumer policy matters more in production than here.",
        "- Peers run in their documented default shape (python-socketio room emit, broadcaster's "
        "README chat); their authors might tune them further.",
        *_ceiling_caveat(s1),
        "- broadcaster's chat has a task per member that drains the member's whole queue in "
        "one go, so a burst reaches each member as one batch (fastapi-rooms batches up to 256 "
        "frames or 64 KiB per member the same way, see the profile above); its latency to the last "
        "receiver is about twice fastapi-rooms'.",
        "- Granian RSGI is measured with `RSGIApp(app, freeze_gc=True, gc_threshold=50_000)`, "
        "RSGIApp's defaults since issue 16 (docs/granian.md); `rooms-granian-rsgi-default-gc` "
        "is the same app with Python's settings (its p99 shows the full garbage collections).",
        "- S4's base is a bare Starlette app. A FastAPI app pays for FastAPI's own per-request "
        "frames (middleware, included routers) on every WebSocket: about 3 KB per idle "
        "connection by `benchmarks/memprofile.py` (tracemalloc), more than the 2 KiB target "
        "by itself; the `fastapi-uvicorn` case of `benchmarks/scenarios.py` measures a bare "
        "FastAPI WebSocket endpoint.",
        "- S8 is capped at the open-file limit of the machine it ran on (the record says so); "
        "its line at 100,000 is the fitted projection, not a measurement. Under Granian, a bare "
        "RSGI app costs about 158 KiB per idle WebSocket by itself (RSGIApp adds about 15 KiB): "
        "that memory is Granian's, most likely the 128 KiB read buffer tungstenite gives each "
        "WebSocket by default, which Granian 2.8 does not let an app configure.",
        "- S9 runs four nodes, Redis and the client on two cores; python-socketio's nodes each "
        "read every message of every room, and at the default load they fall behind (their "
        "row says how many deliveries had not arrived 15 s after publishing stopped). Most of "
        "fastapi-rooms' Redis CPU there is its directory and presence refresh (about 600,000 "
        "commands in 20 s, against 30,000 with the refresh out of the window), so at a light "
        "load it uses more Redis CPU than python-socketio.",
        "- Targets not met are listed as such above; see the closing notes of the benchmark "
        "issue for what is left (memory per connection, Granian RSGI throughput).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
