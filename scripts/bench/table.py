#!/usr/bin/env python3
"""Merge the benchmark rows of `make bench` into ONE markdown table.

Reads the TSV rows printed by bench_core (ContextKit's C runtime),
bench_cpython (CPython's contextvars / threading.local / immutables) and
ContextKitBench (Swift: ContextKit, @TaskLocal, pthread, swift-nio's
pattern, TreeDictionary). A row is

    group  operation  impl  median  min  max  unit  note

(median/min/max empty and unit "skip" for a skipped row, the note saying
why). Each line of COMPARISONS below pairs a ContextKit row with its peer
row from the same run and checks the row's target for it.

    table.py [--save DOCS_DIR] [--start-load L] FILE.tsv ...

prints the table; with --save also writes DOCS_DIR/benchmarks.md and the
chart DOCS_DIR/scaling.svg. Python 3 standard library only.
"""
import argparse
import datetime
import math
import os
import platform
import sys

# ---------------------------------------------------------------- rows


def read_rows(paths):
    rows = {}
    for path in paths:
        try:
            f = open(path, encoding="utf-8")
        except OSError as e:
            print(f"table.py: {path}: {e}", file=sys.stderr)
            continue
        with f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 7:
                    continue
                group, op, impl, med, lo, hi, unit = parts[:7]
                note = parts[7] if len(parts) > 7 else ""
                key = (group, op, impl)
                if unit == "skip" or med == "":
                    rows[key] = {"skip": note or "skipped", "note": note}
                    continue
                rows[key] = {
                    "median": float(med),
                    "min": float(lo),
                    "max": float(hi),
                    "unit": unit,
                    "note": note,
                }
    return rows


# ---------------------------------------------------------------- targets

# kind "ratio": ContextKit median / peer median must be <= target.
# kind "max":   ContextKit value must be <= target (absolute).
# kind "min":   ContextKit value must be >= target (absolute).
# kind "info":  no target; shown for context.
# A peer given as a list means "the faster of these".
C = "ContextKit"
COMPARISONS = [
    # --- C runtime vs CPython's C API
    ("C: get, repeated (1 var)", ("core", "get_repeated_1", C),
     ("core", "get_repeated_1", "CPython"), "ratio", 0.8),
    ("C: get, cold after enter (1 var)", ("core", "get_cold_1", C),
     ("core", "get_cold_1", "CPython"), "ratio", 0.5),
    ("C: get, cold after enter (10,000 vars)", ("core", "get_cold_10000", C),
     ("core", "get_cold_10000", "CPython"), "ratio", 0.5),
    ("C: set + reset (1 var in context)", ("core", "set_reset_1", C),
     ("core", "set_reset_1", "CPython"), "ratio", 0.5),
    ("C: set + reset (100 vars in context)", ("core", "set_reset_100", C),
     ("core", "set_reset_100", "CPython"), "ratio", 0.5),
    ("C: copy current (1 var)", ("core", "copy_1", C),
     ("core", "copy_1", "CPython"), "ratio", 0.8),
    ("C: copy current (10,000 vars)", ("core", "copy_10000", C),
     ("core", "copy_10000", "CPython"), "ratio", 0.8),
    ("C: copy current flat in N (1e6 vars vs 1 var)", ("scaling", "copy@1000000", C),
     ("scaling", "copy@1", C), "ratio", 1.5),
    ("C: enter + exit", ("core", "enter_exit", C),
     ("core", "enter_exit", "CPython"), "ratio", 2.0),
    ("C: enter + exit, one no-op watcher vs none", ("core", "enter_exit_watched", C),
     ("core", "enter_exit", C), "info", None),
    ("C: 2x cctx_notify_watchers, no watcher vs enter + exit", ("core", "notify_pair", C),
     ("core", "enter_exit", C), "info", None),
    ("C: cctx_context_run(no-op) vs ctx.run(C no-op)", ("core", "run_noop", C),
     ("core", "run_noop", "CPython"), "info", None),
    ("C: threading.local get (cctx_local_get)", ("core", "local_get", C),
     ("core", "local_get", "pthread"), "info", None),
    ("C: threading.local get vs CPython _thread._local", ("core", "local_get", C),
     ("core", "local_get", "CPython"), "info", None),
    ("C: threading.local set (cctx_local_set)", ("core", "local_set", C),
     ("core", "local_set", "pthread"), "ratio", 3.0),
    ("C: threading.local set vs CPython _thread._local", ("core", "local_set", C),
     ("core", "local_set", "CPython"), "info", None),
    ("C: memory per entry, 1e6 vars set (B)", ("core", "mem_per_entry_1e6", C),
     None, "max", 28.0),
    ("C: throughput get+set, 2 threads vs 1 (x)", ("core", "throughput_2v1", C),
     None, "min", 1.8),
    ("C: request pattern, 2 threads vs 1 (x)", ("core", "request_2v1", C),
     None, "min", 1.6),
    # --- Swift facade vs Swift peers
    ("Swift: ContextVar.get() outside a task", ("swift", "get_outside", C),
     ("swift", "get_outside", "pthread"), "ratio", 3.0),
    ("Swift: get() outside a task vs @TaskLocal outside a task", ("swift", "get_outside", C),
     ("swift", "get_outside", "TaskLocal"), "info", None),
    ("Swift: get() in a task, in Context.run (1 var)", ("swift", "get_task_run_1", C),
     ("swift", "get_task_1", "TaskLocal"), "ratio", 1.2),
    ("Swift: get() in a task, in Context.run (10 vars)", ("swift", "get_task_run_10", C),
     ("swift", "get_task_1", "TaskLocal"), "ratio", 1.2),
    ("Swift: get() in a task, in withValue (1 scope)", ("swift", "get_task_withValue_1", C),
     ("swift", "get_task_1", "TaskLocal"), "ratio", 1.2),
    ("Swift: get() in a task, outermost of 10 withValue", ("swift", "get_task_withValue_10", C),
     ("swift", "get_task_1", "TaskLocal"), "ratio", 1.2),
    ("Swift: ... same vs @TaskLocal outermost of 10 bindings", ("swift", "get_task_withValue_10", C),
     ("swift", "get_task_10", "TaskLocal"), "ratio", 1.2),
    ("Swift: get() in a task after an unscoped set", ("swift", "get_task_unscoped_1", C),
     ("swift", "get_task_1", "TaskLocal"), "ratio", 2.5),
    ("Swift: withValue, sync (no task)", ("swift", "withValue_sync", C),
     ("swift", "withValue_sync", "TaskLocal"), "ratio", 1.2),
    ("Swift: withValue, async (in a task)", ("swift", "withValue_async", C),
     ("swift", "withValue_async", "TaskLocal"), "ratio", 1.4),
    ("Swift: Context.run sync, trivial body", ("swift", "run_sync", C),
     ("core", "run_noop", "CPython"), "ratio", 2.5),
    ("Swift: Context.run async, trivial body", ("swift", "run_async", C),
     ("core", "run_noop", "CPython"), "ratio", 7.0),
    # The floors under the three scope rows: `TaskLocal.withValue` binding
    # an object (a counted reference: what a binding must hold when it
    # carries a context that a `Task {}` copy of the items may outlive),
    # alone and around a C enter + exit. Shown, not targets.
    ("Swift: floor: TaskLocal.withValue of an object vs of an Int, sync",
     ("swift", "withValue_sync", "TaskLocal reference"),
     ("swift", "withValue_sync", "TaskLocal"), "info", None),
    ("Swift: floor: TaskLocal.withValue of an object vs of an Int, async",
     ("swift", "withValue_async", "TaskLocal reference"),
     ("swift", "withValue_async", "TaskLocal"), "info", None),
    ("Swift: withValue sync vs that floor", ("swift", "withValue_sync", C),
     ("swift", "withValue_sync", "TaskLocal reference"), "info", None),
    ("Swift: withValue async vs that floor", ("swift", "withValue_async", C),
     ("swift", "withValue_async", "TaskLocal reference"), "info", None),
    ("Swift: floor of Context.run sync (object push/pop + C enter/exit) vs ctx.run",
     ("swift", "run_sync", "floor"),
     ("core", "run_noop", "CPython"), "info", None),
    ("Swift: Context.run sync vs that floor", ("swift", "run_sync", C),
     ("swift", "run_sync", "floor"), "info", None),
    ("Swift: request pattern vs @TaskLocal", ("swift", "request_pattern", C),
     ("swift", "request_pattern", "TaskLocal"), "ratio", 1.5),
    ("Swift: ThreadLocal.value read", ("swift", "threadlocal_get", C),
     ("swift", "threadlocal_get", "pthread"), "ratio", 2.0),
    ("Swift: ThreadLocal.value write", ("swift", "threadlocal_set", C),
     ("swift", "threadlocal_set", "NIO pattern"), "ratio", 0.1),
    ("Swift: NIO-pattern read (reference)", ("swift", "threadlocal_get", "NIO pattern"),
     ("swift", "threadlocal_get", "pthread"), "info", None),
    # --- maps
    ("Map lookup 1e3: Context[var] (Swift)", ("map", "map_lookup_1e3", "ContextKit Swift"),
     [("map", "map_lookup_1e3", "TreeDictionary"), ("map", "map_lookup_1e3", "immutables")],
     "info", None),
    ("Map lookup 1e5: Context[var] (Swift)", ("map", "map_lookup_1e5", "ContextKit Swift"),
     [("map", "map_lookup_1e5", "TreeDictionary"), ("map", "map_lookup_1e5", "immutables")],
     "info", None),
    ("Map lookup 1e6: Context[var] (Swift)", ("map", "map_lookup_1e6", "ContextKit Swift"),
     [("map", "map_lookup_1e6", "TreeDictionary"), ("map", "map_lookup_1e6", "immutables")],
     "ratio", 0.8),
    ("Map lookup 1e6: cctx_context_get (C)", ("map", "map_lookup_1e6", C),
     [("map", "map_lookup_1e6", "TreeDictionary"), ("map", "map_lookup_1e6", "immutables")],
     "info", None),
    ("Map lookup 1e6: C vs CPython Context[var]", ("map", "map_lookup_1e6", C),
     ("map", "map_lookup_1e6", "CPython Context"), "info", None),
    ("Persistent insert 1e3: copy() + run { set } (Swift)",
     ("map", "map_insert_1e3", "ContextKit Swift"),
     ("map", "map_insert_1e3", "TreeDictionary"), "ratio", 0.3),
    ("Persistent insert 1e3: copy + cctx_context_set (C)", ("map", "map_insert_1e3", C),
     ("map", "map_insert_1e3", "TreeDictionary"), "info", None),
    ("Persistent insert 1e3 (Swift) vs immutables Map.set",
     ("map", "map_insert_1e3", "ContextKit Swift"),
     ("map", "map_insert_1e3", "immutables"), "info", None),
    ("Persistent insert 1e5: copy() + run { set } (Swift)",
     ("map", "map_insert_1e5", "ContextKit Swift"),
     ("map", "map_insert_1e5", "TreeDictionary"), "info", None),
    ("Persistent insert 1e6: copy() + run { set } (Swift)",
     ("map", "map_insert_1e6", "ContextKit Swift"),
     ("map", "map_insert_1e6", "TreeDictionary"), "info", None),
]

# ---------------------------------------------------------------- formatting


def fmt_value(r):
    v, unit = r["median"], r["unit"]
    if unit == "ns":
        if v >= 10000:
            return f"{v / 1000:.1f} µs"
        if v >= 100:
            return f"{v:.0f} ns"
        return f"{v:.1f} ns"
    if unit == "x":
        return f"{v:.2f}×"
    if unit == "B":
        return f"{v:.1f} B"
    return f"{v:.3g} {unit}"


def fmt_cell(r):
    if r is None:
        return "missing"
    if "skip" in r:
        return r["skip"]
    s = fmt_value(r)
    if r["max"] > r["min"]:
        lo, hi = r["min"], r["max"]
        if r["unit"] == "ns" and hi >= 10000:
            s += f" ({lo / 1000:.1f}–{hi / 1000:.1f})"
        elif r["unit"] == "ns" and hi >= 100:
            s += f" ({lo:.0f}–{hi:.0f})"
        else:
            s += f" ({lo:.1f}–{hi:.1f})"
    return s


def impl_name(key):
    group, op, impl = key
    if group == "scaling":
        return f"{impl} {op}"
    return impl


def pick_peer(rows, peer):
    """The peer row (the faster of a list); returns (key, row)."""
    if peer is None:
        return None, None
    cands = peer if isinstance(peer, list) else [peer]
    best = (cands[0], rows.get(cands[0]))
    for key in cands:
        r = rows.get(key)
        if r is None or "skip" in r:
            continue
        b = best[1]
        if b is None or "skip" in b or r["median"] < b["median"]:
            best = (key, r)
    return best


def build_table(rows):
    out = [
        "| operation | ContextKit median (min–max) | peer | peer median (min–max) "
        "| ratio (ContextKit/peer) | target | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    met = missed = 0
    missed_list = []
    for label, ck_key, peer, kind, target in COMPARISONS:
        ck = rows.get(ck_key)
        pkey, pr = pick_peer(rows, peer)
        ok_ck = ck is not None and "skip" not in ck
        ok_pr = pr is not None and "skip" not in pr
        ratio_s, target_s, met_s = "—", "—", ""
        if kind in ("max", "min"):
            peer_s, pmed = "—", "—"
            sign = "≤" if kind == "max" else "≥"
            unit = ck["unit"] if ok_ck else ""
            target_s = f"{sign} {target:g}{' B' if unit == 'B' else '×' if unit == 'x' else ''}"
            if ok_ck:
                v = ck["median"]
                good = v <= target if kind == "max" else v >= target
                met_s = "yes" if good else "**no**"
                ratio_s = fmt_value(ck)
            else:
                met_s = "n/a"
        else:
            peer_s = impl_name(pkey) if pkey else "—"
            pmed = fmt_cell(pr)
            if ok_ck and ok_pr and pr["median"] > 0:
                ratio = ck["median"] / pr["median"]
                ratio_s = f"{ratio:.2f}×"
                if kind == "ratio":
                    target_s = f"≤ {target:g}×"
                    good = ratio <= target
                    met_s = "yes" if good else "**no**"
                else:
                    met_s = "(info)"
            else:
                if kind == "ratio":
                    target_s = f"≤ {target:g}×"
                    met_s = "n/a"
                else:
                    met_s = "(info)"
        if met_s == "yes":
            met += 1
        elif met_s == "**no**":
            missed += 1
            missed_list.append((label, ratio_s, target_s))
        out.append(f"| {label} | {fmt_cell(ck)} | {peer_s} | {pmed if kind not in ('max', 'min') else '—'} "
                   f"| {ratio_s} | {target_s} | {met_s} |")
    return "\n".join(out), met, missed, missed_list


# ---------------------------------------------------------------- header


def machine_line(start_load):
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        ncpu = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        ncpu = os.cpu_count()
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = ""
    if start_load:
        load = f"; load average at start {start_load}"
    return (f"Machine: {ncpu} cores (nproc), {cpu}, {platform.system()} "
            f"{platform.release()}; run {now}{load}.")


# ---------------------------------------------------------------- chart

SERIES = [("get", "#1f77b4"), ("set", "#d62728"), ("copy", "#2ca02c"), ("run", "#9467bd")]
NS = [1, 10, 100, 10000, 1000000]


def scaling_svg(rows):
    """Cost vs number of variables set, log-log, hand-written SVG."""
    pts = {}
    for op, _ in SERIES:
        for impl in ("ContextKit", "CPython"):
            series = []
            for n in NS:
                r = rows.get(("scaling", f"{op}@{n}", impl))
                if r is not None and "skip" not in r and r["median"] > 0:
                    series.append((n, r["median"]))
            if series:
                pts[(op, impl)] = series
    if not pts:
        return None
    W, H = 780, 440
    L, R, T, B = 70, 230, 40, 60
    pw, ph = W - L - R, H - T - B
    ys = [v for s in pts.values() for _, v in s]
    ymin = 10 ** math.floor(math.log10(min(ys)))
    ymax = 10 ** math.ceil(math.log10(max(ys)))
    if ymax <= ymin:
        ymax = ymin * 10

    def x(n):
        return L + pw * math.log10(n) / 6.0

    def y(v):
        return T + ph * (1 - (math.log10(v) - math.log10(ymin)) /
                         (math.log10(ymax) - math.log10(ymin)))

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
         f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="22" font-size="15" font-weight="bold">'
         'Cost per operation vs number of variables set (C API)</text>']
    # grid and axes
    d = int(math.log10(ymin))
    while 10 ** d <= ymax:
        yy = y(10 ** d)
        s.append(f'<line x1="{L}" y1="{yy:.1f}" x2="{L + pw}" y2="{yy:.1f}" stroke="#ddd"/>')
        label = f"{10 ** d:g} ns" if 10 ** d < 1000 else f"{10 ** d / 1000:g} µs"
        s.append(f'<text x="{L - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>')
        d += 1
    for n in NS:
        xx = x(n)
        s.append(f'<line x1="{xx:.1f}" y1="{T}" x2="{xx:.1f}" y2="{T + ph}" stroke="#ddd"/>')
        s.append(f'<text x="{xx:.1f}" y="{T + ph + 18}" text-anchor="middle">{n:,}</text>')
    s.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>')
    s.append(f'<text x="{L + pw / 2}" y="{H - 18}" text-anchor="middle">'
             'variables set in the context (log scale)</text>')
    s.append(f'<text x="16" y="{T + ph / 2}" text-anchor="middle" '
             f'transform="rotate(-90 16 {T + ph / 2})">ns per operation (median, log scale)</text>')
    # series
    ly = T + 10
    for op, color in SERIES:
        for impl, dash in (("ContextKit", ""), ("CPython", ' stroke-dasharray="5,4"')):
            series = pts.get((op, impl))
            if not series:
                continue
            path = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in series)
            s.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                     f'stroke-width="2"{dash}/>')
            for n, v in series:
                shape = (f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{color}"/>'
                         if not dash else
                         f'<rect x="{x(n) - 3:.1f}" y="{y(v) - 3:.1f}" width="6" height="6" '
                         f'fill="white" stroke="{color}"/>')
                s.append(shape)
            lx = L + pw + 14
            s.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 26}" y2="{ly}" stroke="{color}" '
                     f'stroke-width="2"{dash}/>')
            s.append(f'<text x="{lx + 32}" y="{ly + 4}">{op} — {impl}</text>')
            ly += 20
    ly += 10
    notes = ["get: cctx_var_get / PyContextVar_Get",
             "set: set + reset (token)",
             "copy: copy current + release",
             "run: context run of a no-op"]
    for line in notes:
        s.append(f'<text x="{L + pw + 14}" y="{ly}" font-size="10" fill="#555">{line}</text>')
        ly += 14
    s.append("</svg>")
    return "\n".join(s) + "\n"


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--save", metavar="DOCS_DIR",
                    help="also write DOCS_DIR/benchmarks.md and DOCS_DIR/scaling.svg")
    ap.add_argument("--start-load", default="", help="load average when the run started")
    ap.add_argument("--wall", default="", help="wall time of the run, for the header")
    args = ap.parse_args()

    rows = read_rows(args.files)
    if not rows:
        print("table.py: no rows", file=sys.stderr)
        return 1
    table, met, missed, missed_list = build_table(rows)
    header = machine_line(args.start_load)
    summary = f"Targets: {met} met, {missed} missed (of {met + missed} measured)."
    print(header)
    print()
    print(table)
    print()
    print(summary)

    if args.save:
        svg = scaling_svg(rows)
        if svg is not None:
            with open(os.path.join(args.save, "scaling.svg"), "w", encoding="utf-8") as f:
                f.write(svg)
        md = [
            "# Benchmarks",
            "",
            "Written by `make bench SAVE=1` (scripts/bench/table.py); do not edit by hand.",
            "How the numbers are taken, and what each target means: "
            "[performance.md](performance.md).",
            "",
            header + (f" Wall time of `make bench`: {args.wall}." if args.wall else ""),
            "",
            "Each cell: median ns per operation over 7 timed loops of ~25–50 ms "
            "(after calibration and a warm-up), min–max in parentheses. Ratio = "
            "ContextKit median / peer median, both from this same run. Rows marked "
            "(info) have no target and are there for context.",
            "",
            table,
            "",
            summary,
            "",
        ]
        if missed_list:
            md.append("Missed in this run:")
            md.append("")
            for label, ratio, target in missed_list:
                md.append(f"- {label}: {ratio} (target {target})")
            md.append("")
        if svg is not None:
            md += ["## Scaling with the number of variables", "",
                   "![cost vs number of variables set](scaling.svg)", "",
                   "Solid lines: ContextKit's C API; dashed: CPython's C API "
                   "(its `get` hits the per-variable cache).", ""]
        md += ["## Raw rows", "", "<details><summary>every row of this run</summary>", "",
               "| group | operation | impl | median | min | max | unit | note |",
               "|---|---|---|---|---|---|---|---|"]
        for (g, op, impl), r in sorted(rows.items()):
            if "skip" in r:
                md.append(f"| {g} | {op} | {impl} | | | | skip | {r['skip']} |")
            else:
                md.append(f"| {g} | {op} | {impl} | {r['median']:.2f} | {r['min']:.2f} | "
                          f"{r['max']:.2f} | {r['unit']} | {r['note']} |")
        md += ["", "</details>", ""]
        with open(os.path.join(args.save, "benchmarks.md"), "w", encoding="utf-8") as f:
            f.write("\n".join(md))
        print(f"table.py: wrote {os.path.join(args.save, 'benchmarks.md')}"
              + (" and scaling.svg" if svg else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
