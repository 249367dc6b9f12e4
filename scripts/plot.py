#!/usr/bin/env python3
"""Turns criterion's output (target/criterion/**/new/estimates.json) into the plot and the tables
of BENCHMARKS.md. Python 3.11 standard library only: the SVG is written directly.

    python3 scripts/plot.py                 # writes docs/throughput.svg
    python3 scripts/plot.py --tables        # also prints the Markdown tables (medians, ratios)
    python3 scripts/plot.py --criterion DIR --out FILE.svg

Run the benchmarks first: cargo bench -p filecache-store --bench store (and --bench guest,
--bench scale for the other tables).
"""

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = [1 << 10, 64 << 10, 1 << 20, 64 << 20]
PEERS = [  # (criterion function id, label, colour, dashed)
    ("filecache", "filecache", "#1f77b4", False),
    ("filecache-sync", "filecache (sync)", "#1f77b4", True),
    ("cacache", "cacache 13 (SHA-256)", "#d62728", False),
    ("std-fs", "std::fs (no integrity)", "#2ca02c", False),
]


def load(criterion_dir):
    """(group, function, value) -> median time in nanoseconds."""
    medians = {}
    for bench in criterion_dir.glob("**/new/benchmark.json"):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        key = (meta["group_id"], meta.get("function_id"), meta.get("value_str"))
        medians[key] = est["median"]["point_estimate"]
    return medians


def size_label(n):
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def fmt_time(ns):
    if ns is None:
        return "–"
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            v = ns / div
            return f"{v:.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{ns:.0f} ns"


def ratio(a, b):
    return "–" if a is None or b is None else f"{a / b:.2f}"


def gbps(size, ns):
    return size / ns  # bytes per nanosecond = GB/s


def svg_plot(m, out):
    panels = [("get", "get (read whole entry, verified)"), ("add", "add (write, publish atomically)")]
    W, H = 980, 430
    pw, ph = 380, 300  # plot area of one panel
    left0, top = 80, 60
    gap = 110
    ymin, ymax = 0.001, 20.0  # GB/s, log scale
    xs = [math.log2(s) for s in SIZES]
    xmin, xmax = xs[0] - 0.5, xs[-1] + 0.5

    def X(panel, size):
        return left0 + panel * (pw + gap) + (math.log2(size) - xmin) / (xmax - xmin) * pw

    def Y(v):
        v = min(max(v, ymin), ymax)
        return top + ph - (math.log10(v) - math.log10(ymin)) / (math.log10(ymax) - math.log10(ymin)) * ph

    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="24" text-anchor="middle" font-size="16">'
        "Throughput against entry size (median, higher is better)</text>",
    ]
    for p, (group, title) in enumerate(panels):
        x0 = left0 + p * (pw + gap)
        o.append(f'<text x="{x0 + pw / 2}" y="{top - 10}" text-anchor="middle" font-size="13">{title}</text>')
        o.append(f'<rect x="{x0}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
        for e in range(-3, 2):
            for mult in (1, 2, 5):
                v = mult * 10.0**e
                if not ymin <= v <= ymax:
                    continue
                y = Y(v)
                major = mult == 1
                o.append(
                    f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" '
                    f'stroke="{"#ccc" if major else "#eee"}"/>'
                )
                o.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        for s in SIZES:
            x = X(p, s)
            o.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="#eee"/>')
            o.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{size_label(s)}</text>')
        o.append(f'<text x="{x0 + pw / 2}" y="{top + ph + 40}" text-anchor="middle">entry size</text>')
        o.append(
            f'<text x="{x0 - 50}" y="{top + ph / 2}" text-anchor="middle" '
            f'transform="rotate(-90 {x0 - 50} {top + ph / 2})">GB/s</text>'
        )
        for fid, label, colour, dashed in PEERS:
            pts = [(s, m.get((group, fid, str(s)))) for s in SIZES]
            pts = [(X(p, s), Y(gbps(s, ns))) for s, ns in pts if ns]
            if not pts:
                continue
            dash = ' stroke-dasharray="6 4"' if dashed else ""
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            o.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
            for x, y in pts:
                o.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
    ly = H - 22
    lx = left0
    for fid, label, colour, dashed in PEERS:
        if not any(m.get((g, fid, str(s))) for g, _ in panels for s in SIZES):
            continue
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        o.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 28}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>')
        o.append(f'<text x="{lx + 34}" y="{ly + 4}">{label}</text>')
        lx += 210
    o.append("</svg>")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(o) + "\n")


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def tables(m):
    g = lambda *k: m.get(k)  # noqa: E731
    out = []
    rows = []
    for s in SIZES:
        v = str(s)
        fc, ca, fs = g("get", "filecache", v), g("get", "cacache", v), g("get", "std-fs", v)
        rows.append([size_label(s), fmt_time(fc), fmt_time(ca), fmt_time(fs), ratio(fs, fc), ratio(ca, fc)])
    out.append("get\n\n" + table(
        ["size", "filecache", "cacache", "std::fs::read", "fs/filecache (≥ 0.8)", "cacache/filecache"], rows))
    rows = []
    for s in SIZES:
        v = str(s)
        fc, sy = g("add", "filecache", v), g("add", "filecache-sync", v)
        ca, fs = g("add", "cacache", v), g("add", "std-fs", v)
        rows.append([size_label(s), fmt_time(fc), fmt_time(sy), fmt_time(ca), fmt_time(fs),
                     ratio(ca, fc), ratio(fs, fc)])
    out.append("add\n\n" + table(
        ["size", "filecache", "filecache (sync)", "cacache", "std::fs write+rename",
         "cacache/filecache", "fs/filecache"], rows))
    rows = [[what] + [fmt_time(g("miss", f + suffix, None)) for f in ("filecache", "cacache", "std-fs")]
            for what, suffix in (("the same absent key", ""), ("a new absent key each time", "-fresh"))]
    out.append("miss\n\n" + table(["key", "filecache", "cacache", "std::fs::read"], rows))
    rows = []
    for s in SIZES:
        v = str(s)
        gg, hg = g("guest", "guest-get", v), g("guest", "host-get", v)
        ga, ha = g("guest", "guest-add", v), g("guest", "host-add", v)
        rows.append([size_label(s), fmt_time(gg), fmt_time(g("guest", "guest-open", v)), fmt_time(hg),
                     ratio(hg, gg), fmt_time(ga), fmt_time(g("guest", "guest-create", v)), fmt_time(ha),
                     ratio(ha, ga)])
    rows.append(["miss", fmt_time(g("guest", "guest-miss", None)), "", fmt_time(g("guest", "host-miss", None)),
                 ratio(g("guest", "host-miss", None), g("guest", "guest-miss", None)), "", "", "", ""])
    out.append("guest\n\n" + table(
        ["size", "guest get", "guest open (streamed)", "host get", "host/guest get (≥ 0.8)",
         "guest add", "guest create (streamed)", "host add", "host/guest add"], rows))
    rows = []
    for op in ("get", "miss", "std-fs-miss", "add"):
        t = [g("scale", op, str(n)) for n in (1000, 100000, 1000000)]
        rows.append([op] + [fmt_time(x) for x in t] + [ratio(t[2], t[0])])
    out.append("scale\n\n" + table(
        ["op", "1 thousand", "100 thousand", "1 million", "1M/1k (≤ 1.2)"], rows))
    rows = [[op, fmt_time(g("maintenance", op, "100000"))] for op in ("stats", "verify", "gc")]
    out.append("maintenance (100 000 entries)\n\n" + table(["command", "time"], rows))
    return "\n\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criterion", type=Path, default=ROOT / "target" / "criterion")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "throughput.svg")
    ap.add_argument("--tables", action="store_true", help="print the Markdown tables")
    args = ap.parse_args()
    m = load(args.criterion)
    if not m:
        sys.exit(f"no criterion results under {args.criterion}; run cargo bench first")
    svg_plot(m, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.tables:
        print(tables(m))


if __name__ == "__main__":
    main()
