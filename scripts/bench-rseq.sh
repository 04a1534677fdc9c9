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
bin=$(cargo bench -q --bench fastpath --no-run --message-format=json 2>/dev/null | python3 scripts/criterion-pairs.py exe fastpath)
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
python3 scripts/criterion-pairs.py table "$out" "$ROUNDS" rseq locked "rseq mode" "KMEM_RSEQ=0" "locked / rseq"
echo
echo "kmem-bench fastpath, rseq mode:"
cargo run -q --release -p kmem-bench -- -w fastpath -s 64 -n 7 -q --out-dir "$out/kb-rseq" | sed -n '/== fastpath/,$p'
echo "kmem-bench fastpath, KMEM_RSEQ=0:"
KMEM_RSEQ=0 cargo run -q --release -p kmem-bench -- -w fastpath -s 64 -n 7 -q --out-dir "$out/kb-locked" | sed -n '/== fastpath/,$p'
