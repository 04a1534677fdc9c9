#!/usr/bin/env python3
"""Shared by scripts/bench-compare.sh, bench-dword-flags.sh and bench-rseq.sh.

  criterion-pairs.py exe NAME            reads `cargo bench --message-format=json` on stdin and
                                         prints the executable of bench target NAME
  criterion-pairs.py table OUT ROUNDS A B LABEL_A LABEL_B RATIO_LABEL
                                         reads OUT/crit-{A,B}-{1..ROUNDS}/**/new/estimates.json
                                         and prints a markdown table: per bench, the median over
                                         the rounds of criterion's median, for A and B, and B/A
"""
import json
import os
import statistics
import sys


def exe(name):
    found = ""
    for line in sys.stdin:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == name:
            found = m["executable"]
    print(found)


def table(out, rounds, a, b, label_a, label_b, ratio_label):
    res = {}
    for v in (a, b):
        for r in range(1, int(rounds) + 1):
            root = f"{out}/crit-{v}-{r}"
            for dirpath, _, files in os.walk(root):
                if "estimates.json" in files and dirpath.endswith("/new"):
                    bench = os.path.relpath(os.path.dirname(dirpath), root)
                    with open(os.path.join(dirpath, "estimates.json")) as f:
                        est = json.load(f)
                    res.setdefault(bench, {}).setdefault(v, []).append(est["median"]["point_estimate"])
    print(f"| bench | {label_a} (ns) | {label_b} (ns) | {ratio_label} |")
    print("|---|---:|---:|---:|")
    for bench in sorted(res):
        x = statistics.median(res[bench].get(a, [float("nan")]))
        y = statistics.median(res[bench].get(b, [float("nan")]))
        print(f"| `{bench}` | {x:.2f} | {y:.2f} | {y / x:.3f} |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"exe": exe, "table": table}[cmd](*args)
