#!/usr/bin/env bash
# ThreadSanitizer on the concurrent tests: tests/tsan_stress.rs (and tests/stress.rs when it
# exists), with the standard library rebuilt instrumented. Prints a loud
# "TSAN SKIPPED: <reason>" line and exits 0 if the nightly toolchain or rust-src is missing.
# Suppressions: scripts/tsan.supp (each entry carries its reasoning).
set -uo pipefail
cd "$(dirname "$0")/.."
skip() { echo "=================================================================="; echo "TSAN SKIPPED: $*"; echo "=================================================================="; exit 0; }
command -v rustup >/dev/null || skip "rustup not found"
rustup toolchain list | grep -q '^nightly' || skip "no nightly toolchain"
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    rustup component add --toolchain nightly rust-src >/dev/null 2>&1 || skip "cannot install rust-src (needed by -Zbuild-std)"
fi
TARGET=x86_64-unknown-linux-gnu
# +cmpxchg16b: portable-atomic needs it for a lock-free AtomicU128 (RUSTFLAGS replaces the
# rustflags of .cargo/config.toml, which normally set it).
export RUSTFLAGS="-Zsanitizer=thread -C target-feature=+cmpxchg16b"
export RUSTDOCFLAGS="-Zsanitizer=thread"
export TSAN_OPTIONS="suppressions=$PWD/scripts/tsan.supp halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
tests=(--test tsan_stress)
[ -f tests/stress.rs ] && tests+=(--test stress)
cargo +nightly test -Zbuild-std --target "$TARGET" --target-dir target/tsan -p kmem "${tests[@]}" -- --test-threads=1 "$@"
