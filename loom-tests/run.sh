#!/usr/bin/env bash
# Runs every loom model of loom-tests/tests (see docs/verification.md).
#   LOOM_MAX_PREEMPTIONS   preemption bound (default 2; 3 for a deeper run)
#   MODELS="m1_... m2_..." run only these models (test file names without .rs)
# Release mode with debug assertions and overflow checks on (the models rely on them to turn
# counter underflows into panics), --cfg loom, separate target dir target/loom.
set -euo pipefail
cd "$(dirname "$0")/.."
. loom-tests/env.sh
TARGET_DIR="${LOOM_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/loom}"
models="${MODELS:-$(cd loom-tests/tests && ls *.rs | sed 's/\.rs$//' | sort)}"
cargo test --release -q -p kmem-loom-tests --target-dir "$TARGET_DIR" --tests --no-run
printf '%-40s %-6s %10s  %s\n' model result seconds interleavings
status=0
for m in $models; do
    start=$(date +%s.%N)
    if out=$(cargo test --release -q -p kmem-loom-tests --target-dir "$TARGET_DIR" --test "$m" -- --nocapture --test-threads=1 2>&1); then
        r=PASS
    else
        r=FAIL
        status=1
    fi
    t=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    n=$(echo "$out" | grep -o 'loom: [0-9]* interleavings' | awk '{print $2}' | paste -sd+ - || true)
    printf '%-40s %-6s %10.2f  %s\n' "$m" "$r" "$t" "${n:-?}"
    if [ "$r" = FAIL ]; then echo "$out" | tail -40; fi
done
exit $status
