#!/usr/bin/env bash
# Criterion `fastpath` of two revisions, side by side in one session: builds the bench of each
# revision (a temporary git worktree per revision, "WORK" meaning the working tree as it is),
# then runs the two binaries alternately, ROUNDS times each, and prints the median of each
# bench's criterion medians per revision and their ratio. For "no change of behaviour" claims
# (issue 11's layout, issue 9's flags) on a shared, noisy machine.
#
#   bash scripts/bench-compare.sh <rev-a> <rev-b|WORK>      # ROUNDS=3, 64 B group
#   BENCH=batch FILTER='batch_1000x64B/kmem_single$' bash scripts/bench-compare.sh A B
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?rev-a}; B=${2:?rev-b or WORK}
ROUNDS=${ROUNDS:-3}
BENCH=${BENCH:-fastpath}
FILTER=${FILTER:-'fastpath_pair_64B/(kmem_private|kmem_global|cmpxchg16b_pair)$'}
out=$PWD/target/bench-compare
mkdir -p "$out"
# Criterion directories of an earlier run (maybe of another bench) would enter the table.
rm -rf "$out"/crit-*
build() { # rev label -> prints the bench executable
    local rev=$1 label=$2 dir=$PWD
    if [ "$rev" != WORK ]; then
        dir=$out/tree-$label
        git worktree remove --force "$dir" 2>/dev/null || true
        git worktree add -q --detach "$dir" "$rev"
    fi
    (cd "$dir" && cargo bench -q --bench "$BENCH" --no-run --target-dir "$out/target-$label" \
        --message-format=json 2>/dev/null) | python3 scripts/criterion-pairs.py exe "$BENCH"
}
ea=$(build "$A" a); eb=$(build "$B" b)
echo "a = $A: $ea"; echo "b = $B: $eb"
for r in $(seq 1 "$ROUNDS"); do
    for v in a b; do
        bin=$ea; [ $v = b ] && bin=$eb
        CRITERION_HOME="$out/crit-$v-$r" "$bin" --bench "$FILTER" --warm-up-time 1 \
            --measurement-time 3 --noplot >/dev/null 2>"$out/log-$v-$r.txt"
    done
done
for v in a b; do git worktree remove --force "$out/tree-$v" 2>/dev/null || true; done
python3 scripts/criterion-pairs.py table "$out" "$ROUNDS" a b "$A" "$B" "ratio b/a"
