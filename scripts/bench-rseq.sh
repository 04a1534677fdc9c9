#!/usr/bin/env bash
# Issue 12's measurement: the alloc+free pair in the rseq commit mode against the locked mode
# and the peers, in one session on one machine.
#
# 1. criterion `fastpath` (one build), run alternately with and without KMEM_RSEQ=0, ROUNDS
#    times each; prints the median of each bench per mode (criterion's median estimate, then the
#    median over the rounds) and the locked/rseq ratio. The peers (mimalloc, glibc) and the
#    floors (cmpxchg16b_pair, rseq_pop_push_pair) do not depend on the mode: both columns
#    measure them, which shows the noise.
# 2. kmem-bench's fastpath group (kmem, system, mimalloc, jemalloc: the `Kmalloc` global
#    allocator path), once per mode.
#
#   bash scripts/bench-rseq.sh            # ROUNDS=3, 64 B
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
FILTER=${FILTER:-'fastpath_pair_64B/'}
TD=${CARGO_TARGET_DIR:-target}
out=$TD/bench-rseq
mkdir -p "$out"
bin=$(cargo bench -q --bench fastpath --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="fastpath": print(m["executable"])' | tail -1)
echo "criterion fastpath: $bin"
date -u; lscpu | grep 'Model name'; uname -r
for r in $(seq 1 "$ROUNDS"); do
    for v in rseq locked; do
        env=""; [ $v = locked ] && env="KMEM_RSEQ=0"
        env $env CRITERION_HOME="$out/crit-$v-$r" "$bin" --bench "$FILTER" --warm-up-time 1 \
            --measurement-time 3 --noplot >/dev/null 2>"$out/log-$v-$r.txt"
    done
done
grep -h "commit\|method()" "$out/log-rseq-1.txt" "$out/log-locked-1.txt" || true
python3 - "$out" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
res = {}
for v in ("rseq", "locked"):
    for r in range(1, rounds + 1):
        root = f"{out}/crit-{v}-{r}"
        for dirpath, _, files in os.walk(root):
            if "estimates.json" in files and dirpath.endswith("/new"):
                name = os.path.relpath(os.path.dirname(dirpath), root)
                est = json.load(open(os.path.join(dirpath, "estimates.json")))
                res.setdefault(name, {}).setdefault(v, []).append(est["median"]["point_estimate"])
print("| bench | rseq mode (ns) | KMEM_RSEQ=0 (ns) | locked / rseq |")
print("|---|---:|---:|---:|")
for name in sorted(res):
    a = statistics.median(res[name].get("rseq", [float("nan")]))
    b = statistics.median(res[name].get("locked", [float("nan")]))
    print(f"| `{name}` | {a:.2f} | {b:.2f} | {b / a:.2f} |")
PY
echo
echo "kmem-bench fastpath, rseq mode:"
cargo run -q --release -p kmem-bench -- -w fastpath -s 64 -n 7 -q --out-dir "$out/kb-rseq" | sed -n '/== fastpath/,$p'
echo "kmem-bench fastpath, KMEM_RSEQ=0:"
KMEM_RSEQ=0 cargo run -q --release -p kmem-bench -- -w fastpath -s 64 -n 7 -q --out-dir "$out/kb-locked" | sed -n '/== fastpath/,$p'
