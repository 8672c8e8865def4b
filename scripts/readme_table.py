#!/usr/bin/env python3
"""Rewrites the README's benchmark section (between <!-- BENCH-TABLE --> markers) from
bench-results/latest.md and bench-results/instructions.md. Run after `make bench` (and
`make instructions`): python3 scripts/readme_table.py"""
import re
import sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
md = (root / "bench-results/latest.md").read_text()
machine = re.search(r"^Machine: (.*)$", md, re.M).group(1)
runs = re.search(r"^(\d+) runs per cell", md, re.M).group(1)

rows = {}
order = []
for line in md.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) != 10 or not cells[1].isdigit():
        continue
    prog, t, alloc = cells[0], cells[1], cells[2].strip("*")
    key = (prog, t)
    if key not in rows:
        rows[key] = {}
        order.append(key)
    rows[key][alloc] = cells

out = [
    f"Latest full run (`make bench`, {runs} interleaved runs per cell, medians; {machine}).",
    "Ratios below 1.00 mean faster (time) or smaller (RSS). Full table with wall, CPU time and peak RSS",
    "of every allocator: [`bench-results/latest.md`](bench-results/latest.md); raw runs:",
    "`bench-results/latest.csv`.",
    "",
    "| program | T | rsmalloc wall s | time/glibc | time/best peer | RSS/smallest peer | jemalloc/glibc | tcmalloc/glibc | mimalloc/glibc |",
    "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
]
for key in order:
    r = rows[key]
    rs = r.get("rsmalloc")
    if rs is None:
        continue
    peer = lambda a: r[a][6] if a in r else "-"
    out.append(f"| {key[0]} | {key[1]} | {rs[3]} | **{rs[6]}** | {rs[7]} | {rs[8]} | "
               f"{peer('jemalloc')} | {peer('tcmalloc')} | {peer('mimalloc')} |")
geo = md[md.index("Geometric means"):]
geo = geo[: geo.index("![")].rstrip()
out += ["", geo, "", "![time and peak RSS relative to glibc](bench-results/latest.png)"]

ins = root / "bench-results/instructions.md"
if ins.exists():
    t = ins.read_text()
    sec = t[t.index("## fastpath"):]
    vals = {}
    for line in sec.splitlines()[1:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("## "):
            break
        if len(cells) >= 3 and re.fullmatch(r"[0-9.]+", cells[2]):
            vals[cells[0]] = round(float(cells[2]))
    names = ["bump", "rsmalloc", "glibc", "jemalloc", "tcmalloc", "mimalloc"]
    listing = ", ".join(f"{n} {vals[n]}" for n in names if n in vals).replace("bump", "bump floor", 1)
    out += ["", "Instructions per malloc+free pair (`make instructions`, callgrind, 1 thread, loop included):",
            f"fastpath — {listing}",
            "([`bench-results/instructions.md`](bench-results/instructions.md))."]

readme = root / "README.md"
text = readme.read_text()
a = text.index("<!-- BENCH-TABLE -->") + len("<!-- BENCH-TABLE -->")
b = text.index("<!-- /BENCH-TABLE -->")
readme.write_text(text[:a] + "\n" + "\n".join(out) + "\n" + text[b:])
print("README benchmark section updated", file=sys.stderr)
