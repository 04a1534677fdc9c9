#!/usr/bin/env bash
# Issue 9's measurement: criterion `fastpath` built twice — as a dependent crate builds kmem (no
# flags) and with `-C target-feature=+cmpxchg16b` — then run alternately, ROUNDS times each, in one
# session on one machine. Prints the median of each bench per build (ns, criterion's median
# estimate; the median of the rounds) and the ratio. Both builds execute kmem's own inline
# `lock cmpxchg16b`, so the ratio should be 1 within noise; this script is how that is shown.
#
#   bash scripts/bench-dword-flags.sh            # ROUNDS=3, 64 B group
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
FILTER=${FILTER:-'fastpath_pair_64B/(kmem_private|kmem_global|cmpxchg16b_pair|split_load_cmpxchg16b_pair)$'}
out=target/bench-flags
mkdir -p "$out"
exe() { # variant rustflags
    RUSTFLAGS="$2" cargo bench -q --bench fastpath --no-run --target-dir "$out/$1" \
        --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    try: m=json.loads(l)
    except Exception: continue
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["name"]=="fastpath": print(m["executable"])' | tail -1
}
plain=$(exe plain "")
cx16=$(exe cx16 "-C target-feature=+cmpxchg16b")
echo "plain: $plain"; echo "+cmpxchg16b: $cx16"
for r in $(seq 1 "$ROUNDS"); do
    for v in plain cx16; do
        bin=$plain; [ $v = cx16 ] && bin=$cx16
        CRITERION_HOME="$out/crit-$v-$r" "$bin" --bench "$FILTER" --warm-up-time 1 \
            --measurement-time 3 --noplot >/dev/null 2>"$out/log-$v-$r.txt"
    done
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, os, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
res = {}
for v in ("plain", "cx16"):
    for r in range(1, rounds + 1):
        root = f"{out}/crit-{v}-{r}"
        for dirpath, _, files in os.walk(root):
            if "estimates.json" in files and dirpath.endswith("/new"):
                name = os.path.relpath(os.path.dirname(dirpath), root)
                est = json.load(open(os.path.join(dirpath, "estimates.json")))
                res.setdefault(name, {}).setdefault(v, []).append(est["median"]["point_estimate"])
print(f"| bench | no flags (ns) | +cmpxchg16b (ns) | ratio |")
print(f"|---|---:|---:|---:|")
for name in sorted(res):
    a = statistics.median(res[name]["plain"]); b = statistics.median(res[name]["cx16"])
    print(f"| `{name}` | {a:.2f} | {b:.2f} | {a / b:.3f} |")
PY
