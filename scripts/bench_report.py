#!/usr/bin/env python3
"""Turn bench-results/latest.csv (written by scripts/bench.sh) into
latest.md (Markdown table) and latest.png (gnuplot bar chart), and print the
Markdown. Standard library only; the PNG needs gnuplot (package gnuplot-nox),
without it the chart is skipped with a message.

    python3 scripts/bench_report.py [--csv FILE] [--out DIR]
"""
import argparse
import csv
import datetime
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile

ALLOC_ORDER = ["glibc", "rsmalloc", "jemalloc", "tcmalloc", "mimalloc"]
PEERS = ["glibc", "jemalloc", "tcmalloc", "mimalloc"]


def machine_line():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "? GiB"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
                    break
    except OSError:
        pass
    glibc = " ".join(platform.libc_ver()).strip() or "libc ?"
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return "Machine: %s, %d cores, %s RAM, Linux %s, %s; %s" % (
        cpu, os.cpu_count() or 0, mem, platform.release(), glibc, date)


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def geomean(xs):
    xs = [x for x in xs if x is not None and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", default=os.path.join(root, "bench-results", "latest.csv"))
    ap.add_argument("--out", default=os.path.join(root, "bench-results"))
    ap.add_argument("--missing", default="", help="allocators that were not available")
    ap.add_argument("--elapsed", default="", help="seconds the benchmark took")
    ap.add_argument("--runs", default="")
    ap.add_argument("--scale", default="")
    ap.add_argument("--load", default="", help="load average during the run")
    ap.add_argument("--rsmalloc", default="", help="which rsmalloc build was measured")
    args = ap.parse_args()

    rows = list(csv.DictReader(open(args.csv)))
    if not rows:
        print("bench_report: %s has no runs" % args.csv, file=sys.stderr)
        return 1
    # (program, threads) in first-seen order; allocators in canonical order
    workloads, allocs, sizes = [], set(), {}
    runs = {}
    for r in rows:
        key = (r["program"], int(r["threads"]))
        if key not in workloads:
            workloads.append(key)
        allocs.add(r["allocator"])
        sizes[r["program"]] = r.get("size", "")
        runs.setdefault((key, r["allocator"]), []).append(r)
    allocs = [a for a in ALLOC_ORDER if a in allocs] + sorted(allocs - set(ALLOC_ORDER))
    missing = [a for a in args.missing.split() if a]

    # medians over successful runs
    stats = {}
    for (key, a), rs in runs.items():
        ok = [r for r in rs if r["status"] == "OK"]
        fails = [r["status"] for r in rs if r["status"] != "OK"]
        med = lambda col: statistics.median(float(r[col]) for r in ok) if ok else None
        stats[(key, a)] = dict(wall=med("wall_s"), cpu=med("cpu_s"), rss=med("maxrss_kb"),
                               n=len(rs), nok=len(ok), fails=fails)

    lines = []
    lines.append("# rsmalloc benchmark results")
    lines.append("")
    lines.append(machine_line())
    lines.append("")
    extra = []
    if args.runs:
        extra.append("%s runs per cell (interleaved)" % args.runs)
    if args.scale and args.scale != "1":
        extra.append("sizes = default / %s (QUICK)" % args.scale)
    if args.elapsed:
        extra.append("benchmark took %ss" % args.elapsed)
    if args.load:
        extra.append("load average %s (other work on the machine makes timings noisy)" % args.load)
    if args.rsmalloc:
        extra.append("rsmalloc: %s" % args.rsmalloc)
    if extra:
        lines.append("; ".join(extra) + ". Sizes: " + ", ".join("%s %s" % (p, s) for p, s in sizes.items()) + ".")
        lines.append("")
    lines.append("Medians over successful runs. *time/glibc* and *time/best* use wall time; "
                 "*best* is the fastest of glibc/jemalloc/tcmalloc/mimalloc, *RSS/min* divides by "
                 "the smallest peak RSS of those peers. A cell with failed runs shows `FAIL k/n`.")
    if missing:
        lines.append("")
        lines.append("Not available on this machine (skipped): " + ", ".join(missing) + ".")
    lines.append("")
    lines.append("| program | T | allocator | wall s | CPU s | peak RSS MiB | time/glibc | time/best | RSS/min | runs |")
    lines.append("|---|--:|---|--:|--:|--:|--:|--:|--:|---|")
    summary = {a: {"glibc": [], "best": [], "rss": []} for a in allocs}
    chart = []  # (label, {alloc: (time_ratio, rss_ratio)})
    for key in workloads:
        g = stats.get((key, "glibc"), {})
        peer_w = [stats[(key, p)]["wall"] for p in PEERS if (key, p) in stats and stats[(key, p)]["wall"] is not None]
        peer_r = [stats[(key, p)]["rss"] for p in PEERS if (key, p) in stats and stats[(key, p)]["rss"] is not None]
        best_w = min(peer_w) if peer_w else None
        min_r = min(peer_r) if peer_r else None
        crow = {}
        for a in allocs:
            s = stats.get((key, a))
            if s is None:
                continue
            tg = ratio(s["wall"], g.get("wall"))
            tb = ratio(s["wall"], best_w)
            rr = ratio(s["rss"], min_r)
            summary[a]["glibc"].append(tg)
            summary[a]["best"].append(tb)
            summary[a]["rss"].append(rr)
            crow[a] = (tg, ratio(s["rss"], g.get("rss")))
            runs_txt = "%d/%d ok" % (s["nok"], s["n"]) if not s["fails"] else \
                "**FAIL %d/%d** (%s)" % (len(s["fails"]), s["n"], ", ".join(sorted(set(f.split(":", 1)[-1] for f in s["fails"]))))
            name = "**%s**" % a if a == "rsmalloc" else a
            lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                key[0], key[1], name, fmt(s["wall"], ".3f"), fmt(s["cpu"], ".3f"),
                fmt(None if s["rss"] is None else s["rss"] / 1024, ".1f"),
                fmt(tg, ".2f"), fmt(tb, ".2f"), fmt(rr, ".2f"), runs_txt))
        chart.append(("%s/%d" % key, crow))
    lines.append("")
    lines.append("Geometric means over all workloads (successful cells only):")
    lines.append("")
    lines.append("| allocator | time/glibc | time/best peer | RSS/min peer | FAIL runs |")
    lines.append("|---|--:|--:|--:|--:|")
    for a in allocs:
        nf = sum(len(stats[(k, a)]["fails"]) for k in workloads if (k, a) in stats)
        lines.append("| %s | %s | %s | %s | %d |" % (a, fmt(geomean(summary[a]["glibc"]), ".2f"),
                                                 fmt(geomean(summary[a]["best"]), ".2f"),
                                                 fmt(geomean(summary[a]["rss"]), ".2f"), nf))
    lines.append("")
    fails = [r for r in rows if r["status"] != "OK"]
    if fails:
        lines.append("Failed runs (details in latest-failures.log):")
        lines.append("")
        for r in fails:
            lines.append("- %s T=%s %s run %s: %s (wall %ss)" % (r["program"], r["threads"], r["allocator"],
                                                             r["run"], r["status"], r["wall_s"]))
        lines.append("")
    png = os.path.join(args.out, "latest.png")
    if make_chart(chart, allocs, png):
        lines.append("![time and peak RSS relative to glibc](latest.png)")
        lines.append("")
    md = "\n".join(lines)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


def make_chart(chart, allocs, png):
    gp = shutil.which("gnuplot")
    if not gp:
        print("bench_report: gnuplot not found (apt-get install gnuplot-nox): no %s" % png, file=sys.stderr)
        return False
    with tempfile.TemporaryDirectory() as d:
        dat = os.path.join(d, "data.dat")
        with open(dat, "w") as f:
            f.write("# workload " + " ".join("t_%s" % a for a in allocs) + " " + " ".join("m_%s" % a for a in allocs) + "\n")
            for label, crow in chart:
                t = [crow.get(a, (None, None))[0] for a in allocs]
                m = [crow.get(a, (None, None))[1] for a in allocs]
                f.write('"%s" ' % label + " ".join("NaN" if x is None else "%.4f" % x for x in t + m) + "\n")
        n = len(allocs)
        colors = {"glibc": "#888888", "rsmalloc": "#d62728", "jemalloc": "#1f77b4",
                  "tcmalloc": "#2ca02c", "mimalloc": "#ff7f0e"}
        def plots(off):
            return ", ".join("'%s' using %d:xtic(1) title '%s' lc rgb '%s'" % (
                dat, 2 + off + i, a, colors.get(a, "#9467bd")) for i, a in enumerate(allocs))
        width = max(1000, 60 * len(chart) * max(1, n) // 3)
        script = f"""
set terminal pngcairo size {width},900 font ',10'
set output '{png}'
set datafile missing 'NaN'
set style data histogram
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set key outside right top
set grid ytics
set logscale y 2
set yrange [0.0625:16]
set ytics ('1/16' 0.0625, '1/8' 0.125, '1/4' 0.25, '1/2' 0.5, '1' 1, '2' 2, '4' 4, '8' 8, '16' 16)
set xtics rotate by -45 font ',8'
set xrange [-0.6:{len(chart) - 0.4}]
set multiplot layout 2,1
set title 'Wall time relative to glibc (median; lower is better; log scale)'
plot {plots(0)}
set title 'Peak RSS relative to glibc (median; lower is better; log scale)'
plot {plots(n)}
unset multiplot
"""
        sp = os.path.join(d, "chart.gp")
        with open(sp, "w") as f:
            f.write(script)
        r = subprocess.run([gp, sp], capture_output=True, text=True)
        if r.returncode != 0:
            print("bench_report: gnuplot failed: %s" % r.stderr.strip()[-500:], file=sys.stderr)
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
