#!/usr/bin/env python3
"""Tables of ours beside the peers, in Markdown, from `jitattn bench --json` lines and peers.py's
--out files (one JSON object per line; other lines are skipped).

  python3 bench/compare.py --ours ours.jsonl [more.jsonl ...] --peers peers.jsonl [more.jsonl ...]

Prints, for every (d, seqlen, mask, mode) that ours measured: our TFLOP/s and config, each peer
backend's TFLOP/s, and ours over each peer. Our "alibi" and "bias" grid rows both compare with
peers.py's "bias" row (ALiBi as a [1,h,s,s] tensor for sdpa backends, a score_mod for flex).
"""
import argparse
import json


def read_jsonl(paths):
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    yield json.loads(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", nargs="+", required=True)
    ap.add_argument("--peers", nargs="+", required=True)
    a = ap.parse_args()

    peers = {}
    backends = []
    for r in read_jsonl(a.peers):
        if "tflops" not in r or "backend" not in r:
            continue
        peers[(r["d"], r["s"], r["mask"], r["mode"], r["backend"])] = r["tflops"]
        if r["backend"] not in backends:
            backends.append(r["backend"])

    rows = []
    for r in read_jsonl(a.ours):
        if "tflops" not in r:
            continue
        mask = r.get("grid_mask", r.get("mask"))
        rows.append((r["d"], r["s"], mask, r.get("mode", "fwd"), r["tflops"], r.get("config", "")))
    rows.sort()

    head = ["d", "seqlen", "mask", "mode", "ours", "config"] + backends + [f"ours/{b}" for b in backends]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for d, s, mask, mode, tflops, config in rows:
        peer_mask = "bias" if mask in ("alibi", "bias") else mask
        vals = [peers.get((d, s, peer_mask, mode, b)) for b in backends]
        cells = [str(d), str(s), mask, mode, f"{tflops:.1f}", config]
        cells += ["—" if v is None else f"{v:.1f}" for v in vals]
        cells += ["—" if v is None else f"{tflops / v:.2f}" for v in vals]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
