//! Unwind safety: `Kmem`, `KmemCache` and `Cache<T>` may cross `catch_unwind`, and a
//! constructor that panics leaves the cache usable.

use std::panic::{catch_unwind, AssertUnwindSafe, RefUnwindSafe, UnwindSafe};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use kmem::{Cache, CacheConfig, Kmem, KmemCache};

fn assert_unwind_safe<T: UnwindSafe + RefUnwindSafe>() {}

#[test]
fn handles_are_unwind_safe() {
    assert_unwind_safe::<Kmem>();
    assert_unwind_safe::<KmemCache>();
    assert_unwind_safe::<Cache<String>>();
    assert_unwind_safe::<Cache<std::cell::Cell<u8>>>();
}

#[test]
fn catch_unwind_around_create_cache_compiles_and_reports_the_error() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    // The example: this did not compile while the handles held bare UnsafeCells.
    let r = catch_unwind(|| k.create_cache("x", 0, CacheConfig::new()));
    let err = r.expect("create_cache does not panic").unwrap_err();
    assert!(
        matches!(err, kmem::KmemError::InvalidSize { .. }),
        "{err:?}"
    );
    let c = catch_unwind(|| k.create_cache("y", 32, CacheConfig::new()))
        .unwrap()
        .unwrap();
    let p = catch_unwind(|| c.alloc()).unwrap().unwrap();
    // SAFETY: `p` came from `c` and is freed once.
    unsafe { c.free(p) };
}

static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Panics on its 3rd call: inside the first slab's construction.
fn flaky_ctor(p: NonNull<u8>) {
    if CALLS.fetch_add(1, Ordering::Relaxed) == 2 {
        panic!("constructor failed");
    }
    // SAFETY: kmem hands the constructor a whole object of the cache's size (64 bytes).
    unsafe { p.as_ptr().write_bytes(0xA5, 64) };
}

#[test]
fn a_panicking_constructor_leaves_the_cache_usable() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k
        .create_cache("flaky", 64, CacheConfig::new().ctor(flaky_ctor))
        .unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| c.alloc()));
    assert!(r.is_err(), "the constructor's panic reaches the caller");
    // The slab under construction is abandoned; the next allocation builds a new one whose
    // objects are all constructed.
    let mut held = Vec::new();
    for _ in 0..200 {
        let p = c
            .alloc()
            .expect("allocation after a caught constructor panic");
        // SAFETY: a live 64-byte object of `c`.
        assert_eq!(unsafe { *p.as_ptr() }, 0xA5, "object not constructed");
        held.push(p);
    }
    let info = c.info();
    assert_eq!(info.active_objs, 200);
    for p in held {
        // SAFETY: each came from `c` and is freed once.
        unsafe { c.free(p) };
    }
    c.shrink();
    assert_eq!(c.info().active_objs, 0);
    assert_eq!(c.info().num_slabs, 0);
    // The block the panicking constructor was filling went back to the page allocator: with
    // every slab gone, every mapped page is free again (nothing leaked).
    drop(c);
    let s = k.page_stats();
    // Free pages are on the buddy lists or on the per-CPU page lists.
    assert_eq!(s.free_bytes + s.pcp_bytes, s.mapped_bytes, "{s:?}");
}
