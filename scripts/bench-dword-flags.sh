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
        --message-format=json 2>/dev/null | python3 scripts/criterion-pairs.py exe fastpath
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
python3 scripts/criterion-pairs.py table "$out" "$ROUNDS" plain cx16 "no flags" "+cmpxchg16b" "ratio"
