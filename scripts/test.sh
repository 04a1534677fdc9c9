#!/usr/bin/env bash
# The test command of README.md, and what CI runs (.ci/run calls this file).
#
#   bash scripts/test.sh            # everything below
#   KMEM_QUICK=1 bash scripts/test.sh   # skip loom mutants, Miri and TSAN (a quick local check)
#
# 1. unit, integration and doc tests of every workspace member (debug, then the stress tests
#    again in release so the fast paths race at full speed), in the process's commit mode (rseq
#    where the kernel allows it) and again with KMEM_RSEQ=0 (the locked {freelist, tid} mode);
# 2. the loom models (loom-tests/run.sh) and the proof that each catches its planted bug
#    (loom-tests/mutants.sh);
# 2a. libkmem.so under LD_PRELOAD (scripts/preload.sh): the C contract test, python3, sqlite3,
#    redis-server + redis-benchmark and git, each checked (installs the Debian packages it needs);
# 2b. kmem as a dependency of a fresh crate outside the repository (scripts/consumer.sh), and
#    `cargo check` for aarch64 (scripts/check-targets.sh);
# 3. Miri on the library's unit tests and ThreadSanitizer on the stress test (each prints a loud
#    SKIPPED line when its nightly component cannot be installed here: a pass locally, a failure
#    under CI=true);
# 4. kmem-bench --quick: the main job must keep working.
set -euo pipefail
cd "$(dirname "$0")/.."
section() { printf '\n==== %s ====\n' "$*"; }
t0=$SECONDS

section "cargo test --workspace (with the global allocator's re-entrancy guard)"
cargo run -q -p kmem --example commit_mode
cargo test --workspace --features kmem/debug-reentrancy
section "the same suite in the locked mode (KMEM_RSEQ=0)"
KMEM_RSEQ=0 cargo run -q -p kmem --example commit_mode
KMEM_RSEQ=0 cargo test --workspace --features kmem/debug-reentrancy
section "stress tests in release (both modes)"
cargo test --release -p kmem --test stress --test rseq_stress --test rseq_cache_stress
KMEM_RSEQ=0 cargo test --release -p kmem --test stress
section "rseq stress tests on kmem's own rseq registration (glibc's disabled)"
GLIBC_TUNABLES=glibc.pthread.rseq=0 cargo test --release -p kmem --test rseq_stress --test rseq_cache_stress
section "without the stats feature"
cargo test -p kmem --no-default-features --lib --test slub_paths --test stress
section "the hardening features (freelist-hardened, freelist-random), both modes"
cargo test -p kmem --features freelist-hardened,freelist-random --lib --tests
KMEM_RSEQ=0 cargo test -p kmem --features freelist-hardened,freelist-random --lib --test debug --test slub_paths --test stress
cargo test --release -p kmem --features freelist-hardened,freelist-random --test rseq_stress --test rseq_cache_stress

section "libkmem.so under LD_PRELOAD: C contract, python3, sqlite3, redis, git (scripts/preload.sh)"
bash scripts/preload.sh

section "kmem as a dependency: a throwaway crate outside the repository (scripts/consumer.sh)"
bash scripts/consumer.sh

section "other targets: cargo check --target aarch64-unknown-linux-gnu"
bash scripts/check-targets.sh

if [ -x loom-tests/run.sh ] || [ -f loom-tests/run.sh ]; then
  section "loom models"
  bash loom-tests/run.sh
  if [ -z "${KMEM_QUICK:-}" ] && [ -f loom-tests/mutants.sh ]; then
    section "loom mutants: every planted bug must be caught"
    bash loom-tests/mutants.sh
  fi
fi

if [ -z "${KMEM_QUICK:-}" ]; then
  if [ -f scripts/miri.sh ]; then section "Miri"; bash scripts/miri.sh; fi
  if [ -f scripts/tsan.sh ]; then section "ThreadSanitizer"; bash scripts/tsan.sh; fi
fi

section "kmem-bench --quick"
cargo run --release -p kmem-bench -- --quick --quiet

section "done in $((SECONDS - t0)) s"
