#!/usr/bin/env bash
# kmem as a dependency, the way a user meets it: a throwaway crate in a temporary directory
# outside the repository depends on kmem by path, with no RUSTFLAGS and no .cargo/config, uses
# `Kmalloc` as its global allocator, a `KmemCache`, a `Cache<T>` and `catch_unwind`, and is
# built and run in debug and release. A second crate adds portable-atomic with its default
# features (`fallback`), which feature unification then turns on for kmem's copy too: it must
# still build, run, and leave kmem's x86_64 double word on its own `lock cmpxchg16b` (checked in
# the debug binary: no portable-atomic 128-bit function is linked, and the instruction is there).
# Any failure exits non-zero (scripts/test.sh runs this, so CI fails).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/kmem-consumer.XXXXXX")"
trap 'rm -rf "$work"' EXIT
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_TARGET_DIR
# Share compiled registry crates between runs of this script (not kmem: it is rebuilt per crate).
export CARGO_TARGET_DIR="$repo/target/consumer"

mkcrate() { # name, extra dependency lines
    local dir="$work/$1"
    mkdir -p "$dir/src"
    cat >"$dir/Cargo.toml" <<EOF
[package]
name = "$1"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
kmem = { path = "$repo" }
$2

[workspace]
EOF
    cat >"$dir/src/main.rs" <<'EOF'
use std::panic::catch_unwind;

#[global_allocator]
static GLOBAL: kmem::Kmalloc = kmem::Kmalloc::new();

#[derive(Debug, PartialEq)]
struct Conn {
    id: u64,
    peer: [u8; 24],
}

fn main() -> Result<(), kmem::KmemError> {
    // Everything std allocates goes through kmem: strings, vectors, maps, threads.
    let mut v: Vec<String> = (0..10_000).map(|i| format!("item-{i}")).collect();
    v.retain(|s| s.ends_with('7'));
    assert_eq!(v.len(), 1000);
    let m: std::collections::HashMap<u64, Vec<u8>> =
        (0..2000u64).map(|i| (i, vec![i as u8; (i % 300) as usize])).collect();
    assert_eq!(m[&299].len(), 299);
    let sum: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|t| s.spawn(move || (0..5000).map(|i| vec![t as u8; i % 97].len()).sum::<usize>()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(sum > 0);

    // A private instance and a raw cache.
    let k = kmem::Kmem::builder().memory_limit(64 << 20).nodes(1).cpus(2).build()?;
    let cache = k.create_cache("conn-raw", 192, kmem::CacheConfig::new().align(64))?;
    let p = cache.alloc().expect("raw object");
    assert_eq!(p.as_ptr() as usize % 64, 0);
    // SAFETY: `p` came from `cache` and is freed once.
    unsafe { cache.free(p) };

    // A typed cache on the global instance.
    let typed: kmem::Cache<Conn> = kmem::Cache::new("conn")?;
    let b = typed.alloc(Conn { id: 7, peer: [1; 24] }).expect("typed object");
    assert_eq!(b.id, 7);
    drop(b);

    // Handles cross catch_unwind (they are UnwindSafe).
    let r = catch_unwind(|| k.create_cache("bad", 0, kmem::CacheConfig::new()));
    assert!(matches!(r, Ok(Err(kmem::KmemError::InvalidSize { .. }))));

    let rows = kmem::Kmem::global().slabinfo();
    assert!(rows.iter().any(|r| r.name == "conn" && r.num_objs > 0));
    assert!(rows.iter().any(|r| r.name.starts_with("kmalloc-") && r.active_objs > 0));
    println!("consumer ok: {} caches on the global instance", rows.len());
    Ok(())
}
EOF
}

run() { # crate, profile flag
    local dir="$work/$1"
    echo "-- $1: cargo build $2"
    (cd "$dir" && cargo build -q $2)
    local bin="$CARGO_TARGET_DIR/$([ "$2" = --release ] && echo release || echo debug)/$1"
    echo "-- $1: run $2"
    "$bin"
}

mkcrate kmem_consumer ""
run kmem_consumer ""
run kmem_consumer --release

mkcrate kmem_consumer_pa 'portable-atomic = { version = "1", features = ["fallback", "std"] }'
run kmem_consumer_pa ""
run kmem_consumer_pa --release
if [ "$(uname -m)" = x86_64 ]; then
    dbg="$CARGO_TARGET_DIR/debug/kmem_consumer_pa"
    if nm -C "$dbg" | grep -E 'portable_atomic.*(128|atomic128)' >/dev/null; then
        echo "FAIL: with portable-atomic's fallback feature unified in, kmem linked portable-atomic's 128-bit code:" >&2
        nm -C "$dbg" | grep -E 'portable_atomic.*(128|atomic128)' | head >&2
        exit 1
    fi
    n=$(objdump -d --no-show-raw-insn "$dbg" | grep -c 'lock cmpxchg16b' || true)
    if [ "$n" -eq 0 ]; then
        echo "FAIL: no lock cmpxchg16b in the consumer's debug binary" >&2
        exit 1
    fi
    echo "-- feature unification: kmem still runs its own lock cmpxchg16b ($n sites), no portable-atomic 128-bit code"
fi
echo "consumer crates: debug and release built and ran"

# A model checker's crate: built with `--cfg loom --cfg crossbeam_loom`, it gets kmem's loom
# build, so its own loom model allocates from a KmemCache and sees kmem's reuse. The model is
# examples/loom_treiber.rs (a Treiber stack): loom must find the ABA when pops free at once,
# and pass when they free with `free_deferred` (issue 17).
dir="$work/kmem_loom_user"
mkdir -p "$dir/src"
cat >"$dir/Cargo.toml" <<EOF
[package]
name = "kmem_loom_user"
version = "0.1.0"
edition = "2021"
publish = false

[dependencies]
kmem = { path = "$repo" }

[target.'cfg(loom)'.dependencies]
loom = "0.7"

[lints.rust]
unexpected_cfgs = { level = "allow" }

[workspace]
EOF
cp "$repo/examples/loom_treiber.rs" "$dir/src/main.rs"
echo "-- kmem_loom_user: cargo run --release with --cfg loom --cfg crossbeam_loom"
out=$(cd "$dir" && LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg loom --cfg crossbeam_loom" cargo run -q --release \
    --target-dir "$repo/target/consumer-loom" 2>&1) || { echo "$out" | tail -30; exit 1; }
echo "$out" | grep -q "immediate free: loom found the ABA" || { echo "$out" | tail -20; echo "FAIL: loom did not find the ABA"; exit 1; }
echo "$out" | grep -q "deferred free: loom explored every interleaving, no ABA" || { echo "$out" | tail -20; echo "FAIL: the deferred model"; exit 1; }
echo "$out" | grep "^immediate free\|^deferred free"

# Packaging: what `cargo publish` would upload must build on its own (no self dev-dependency,
# nothing outside the package). --allow-dirty: CI's clone may hold build outputs.
echo "-- cargo publish --dry-run -p kmem"
(cd "$repo" && unset CARGO_TARGET_DIR && cargo publish -q --dry-run -p kmem --allow-dirty --target-dir "$repo/target/package-check")
echo "cargo publish --dry-run: ok"
