# Summarises ncu's per-instruction SASS CSV (`ncu --import R --page source --csv --print-source
# sass`): stall samples by reason over the kernel, then the instructions with the most samples.
# Usage: python3 bench/sass_stalls.py FILE.csv [TOP]
import csv, sys

rows = list(csv.reader(open(sys.argv[1], newline="")))
top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
head_i = next(i for i, r in enumerate(rows) if "Source" in r and any("Samples" in c for c in r))
head = rows[head_i]
body = [r for r in rows[head_i + 1:] if len(r) == len(head)]
col = {c: i for i, c in enumerate(head)}
samples_col = next(c for c in head if c.startswith("Warp Stall Sampling (All"))
stall_cols = [c for c in head if c.startswith("stall_") or c.startswith("Stall ")]


def num(r, c):
    try:
        return float(r[col[c]].replace(",", ""))
    except (ValueError, KeyError):
        return 0.0


total = sum(num(r, samples_col) for r in body)
print(f"{len(body)} instructions, {total:.0f} samples")
sums = sorted(((sum(num(r, c) for r in body), c) for c in stall_cols), reverse=True)
for v, c in sums[:14]:
    if v > 0:
        print(f"  {c:40s} {v:9.0f}  {100 * v / max(total, 1):5.1f}%")
print(f"top {top} instructions by samples:")
for r in sorted(body, key=lambda r: -num(r, samples_col))[:top]:
    s = num(r, samples_col)
    why = max(stall_cols, key=lambda c: num(r, c)) if stall_cols else ""
    addr = r[col["Address"]] if "Address" in col else ""
    print(f"  {addr:>6} {100 * s / max(total, 1):5.1f}%  {why:28s} {r[col['Source']][:90]}")
