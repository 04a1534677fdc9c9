#!/usr/bin/env bash
# For each (model, planted bug) pair: the model must PASS on the clean library and FAIL (a
# panic, an assertion, a loom-detected race or deadlock, or an abort) with
# --cfg kmem_mutant="<name>". Prints a table; exits non-zero unless every mutant is caught.
#
# The cfg is added to the rustc invocations of the `kmem` crate only, by the RUSTC_WRAPPER
# loom-tests/rustc-mutant.sh, so switching mutants does not rebuild loom and its dependencies
# (RUSTFLAGS would). Builds go to target/loom-mutants; LOOM_MAX_PREEMPTIONS as in run.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
. loom-tests/env.sh
export RUSTC_WRAPPER="$PWD/loom-tests/rustc-mutant.sh"
TARGET_DIR="${LOOM_MUTANTS_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/loom-mutants}"

# model                                 mutant
PAIRS="
m1_alloc_alloc_aba                      tid_not_advanced
m2_alloc_free_refill                    detach_keeps_slab
m2_alloc_free_refill                    free_reads_slab_before_tid
m2_alloc_free_refill                    tid_not_advanced
m3_remote_free_vs_get_freelist          get_freelist_stays_frozen
m4_free_into_full_slab                  full_slab_not_frozen
m5_unfreeze_partials_vs_remote_free     unfreeze_cas_before_list_lock
m6_discard_vs_get_partial               slab_free_without_list_lock
m6_discard_vs_get_partial               acquire_without_freeze
m7_deactivate_vs_remote_free            deactivate_decides_without_lock
m8_buddy_split_coalesce                 buddy_merge_skips_order_check
m8_buddy_split_coalesce                 alloc_ignores_transit
m9_bulk_vs_single                       bulk_pop_without_tid_cas
m10_new_slab_unlocked                   new_slab_ignores_cpu_slab
m11_rseq                                rseq_commit_outside_sequence
m11_rseq                                rseq_cpu_not_rechecked
m11_rseq                                rseq_stop_without_fence
m11_rseq                                rseq_fence_before_stop
m11_rseq                                rseq_ignores_stop
m12_rseq_slub                           rseq_slow_path_plain_cas
m12_rseq_slub                           rseq_elsewhere_without_stop
m12_rseq_slub                           rseq_stop_without_fence
m12_rseq_slub                           rseq_ignores_stop
m12_rseq_slub                           rseq_commit_outside_sequence
m13_treiber_aba                         deferred_batch_runs_at_once
m14_deferred_drop_vs_run                deferred_drop_checks_pending_early
m15_typesafe_reader_vs_shrink           typesafe_shrink_discards
m15_typesafe_reader_vs_shrink           typesafe_slabs_released_at_once
m17_sheaves                             sheaf_flush_without_stop
m17_sheaves                             sheaf_take_without_recheck
m17_sheaves                             sheaf_take_without_fence
m17_sheaves                             sheaf_take_fence_first
m17_sheaves                             sheaf_replace_ignores_count
m17_sheaves                             sheaf_install_over_main
m17_sheaves                             barn_trades_main
m17_sheaves                             pool_trim_ignores_in_flight
m17_sheaves                             sheaf_locked_pop_unlocked
m17_sheaves                             barn_trim_without_take
m17_sheaves                             sheaf_trim_ignores_top
m16_debug_free                          debug_free_without_list_lock
m18_pcp_lists                           pcp_free_marks_free
m19_release_runs                        release_run_next_after_unisolate
"

# Runs model $1 built with mutant $2 ("" = clean); prints PASS or FAIL and the seconds taken.
run() {
    local model=$1 mutant=$2 log=$3
    # The wrapper's extra flag is invisible to cargo's fingerprint: force kmem to rebuild.
    touch src/lib.rs
    KMEM_MUTANT="$mutant" cargo test --release -q -p kmem-loom-tests --target-dir "$TARGET_DIR" \
        --test "$model" --no-run >"$log" 2>&1 || { echo "BUILD-ERROR 0"; return; }
    local start end
    start=$(date +%s.%N)
    if KMEM_MUTANT="$mutant" cargo test --release -q -p kmem-loom-tests --target-dir "$TARGET_DIR" \
        --test "$model" -- --test-threads=1 >>"$log" 2>&1; then r=PASS; else r=FAIL; fi
    end=$(date +%s.%N)
    echo "$r $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')"
}

mkdir -p "$TARGET_DIR/logs"
declare -A clean
printf '%-38s %-34s %-6s %-8s %8s  %s\n' model mutant clean mutant seconds verdict
all=0
while read -r model mutant; do
    [ -z "$model" ] && continue
    if [ -n "${MODELS:-}" ] && [[ " $MODELS " != *" $model "* ]]; then continue; fi
    if [ -z "${clean[$model]:-}" ]; then
        clean[$model]=$(run "$model" "" "$TARGET_DIR/logs/$model.clean.log" | cut -d' ' -f1)
    fi
    set -- $(run "$model" "$mutant" "$TARGET_DIR/logs/$model.$mutant.log")
    res=$1 secs=$2
    if [ "${clean[$model]}" = PASS ] && [ "$res" = FAIL ]; then
        verdict=CAUGHT
        why=$(grep -m1 -A1 -E "panicked at" "$TARGET_DIR/logs/$model.$mutant.log" | tail -1)
        [ -z "$why" ] && why=$(grep -m1 -E "kmem: .*(protocol|abort|corrupt|double free|handed out)|Causality|deadlock" "$TARGET_DIR/logs/$model.$mutant.log")
        why=$(echo "$why" | sed 's/^\.//' | cut -c1-100)
    else
        verdict=MISSED
        all=1
        why=""
    fi
    printf '%-38s %-34s %-6s %-8s %8.2f  %s\n' "$model" "$mutant" "${clean[$model]}" "$res" "$secs" "$verdict"
    [ -n "$why" ] && printf '    %s\n' "$why"
done <<<"$PAIRS"
touch src/lib.rs
if [ $all -eq 0 ]; then echo "every mutant caught"; else echo "SOME MUTANTS MISSED (logs in $TARGET_DIR/logs)"; fi
exit $all
