//! Issue #10 items 1 and 6 on a private instance: slab geometry that overflows the slab
//! counters, and bad frees (interior pointers, double frees) that must abort with a message
//! naming the cache instead of corrupting a freelist or a counter.
//!
//! Abort tests run this binary again as a child executing only that test (`KMEM_CHILD=1`) and
//! check that the child died of SIGABRT with the expected message on stderr.

mod common;
use common::{assert_aborted, child, in_child};
use kmem::{CacheConfig, Kmem, KmemCache};
use std::ptr::NonNull;

fn alloc_n(c: &KmemCache, n: usize) -> Vec<NonNull<u8>> {
    (0..n).map(|_| c.alloc().expect("memory")).collect()
}

/// Issue #10 item 1, as reported: 8-byte objects with `min_objects(20000)` and `max_order(10)`
/// used to get 32768-object slabs, which the 15-bit `objects` counter reads as 0.
#[test]
#[cfg_attr(miri, ignore)] // 100 000 objects: minutes under Miri
fn huge_slabs_keep_exact_counters() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let cfg = CacheConfig::new().min_objects(20_000).max_order(10);
    let c = k.create_cache("x", 8, cfg).unwrap();
    assert!(c.objects_per_slab() <= 32_767, "{c:?}");
    let objs = alloc_n(&c, 100_000);
    let info = c.info();
    assert_eq!(info.active_objs, 100_000, "{info:?}");
    assert_eq!(info.num_objs % info.objperslab, 0, "{info:?}");
    // SAFETY: every pointer came from `c` and is freed once.
    unsafe { c.free_bulk(&objs) };
    c.shrink();
    let info = c.info();
    assert_eq!((info.active_objs, info.num_slabs), (0, 0), "{info:?}");

    // Size 24 with min_objects(22000): num_objs used not to be a multiple of objperslab.
    let cfg = CacheConfig::new().min_objects(22_000).max_order(10);
    let c = k.create_cache("y", 24, cfg).unwrap();
    let objs = alloc_n(&c, 70_000);
    let info = c.info();
    assert_eq!(info.active_objs, 70_000, "{info:?}");
    assert_eq!(info.num_objs % info.objperslab, 0, "{info:?}");
    // SAFETY: as above.
    unsafe { c.free_bulk(&objs) };
    c.shrink();
    assert_eq!(c.info().num_slabs, 0);
}

/// The same for a size that is not a power of two (the multiply-rotate check): 32 bytes into a
/// 96-byte object is a multiple of 32 but not of 96.
#[test]
#[cfg_attr(miri, ignore)]
fn freeing_an_interior_pointer_of_an_odd_size_aborts() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let c = k
            .create_cache("interior96", 96, CacheConfig::new())
            .unwrap();
        let _first = c.alloc().unwrap();
        let p = c.alloc().unwrap();
        // SAFETY: deliberately wrong (32 bytes into an object) — the point of the test.
        unsafe { c.free(NonNull::new(p.as_ptr().wrapping_add(32)).unwrap()) };
        std::process::exit(0);
    }
    let (st, err) = child("freeing_an_interior_pointer_of_an_odd_size_aborts");
    assert_aborted(
        st,
        &err,
        &[
            "kmem: cache \"interior96\": free of an interior pointer 0x",
            "(object size 96, slab base 0x",
        ],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn freeing_an_interior_pointer_aborts() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let c = k.create_cache("interior", 64, CacheConfig::new()).unwrap();
        let p = c.alloc().unwrap();
        // SAFETY: deliberately wrong (8 bytes into an object) — the point of the test.
        unsafe { c.free(NonNull::new(p.as_ptr().wrapping_add(8)).unwrap()) };
        std::process::exit(0);
    }
    let (st, err) = child("freeing_an_interior_pointer_aborts");
    assert_aborted(
        st,
        &err,
        &[
            "kmem: cache \"interior\": free of an interior pointer 0x",
            "(object size 64, slab base 0x",
        ],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn freeing_past_the_last_object_aborts() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let c = k
            .create_cache("tail", 96, CacheConfig::new().max_order(0))
            .unwrap();
        // 42 objects of 96 bytes in one page: the last 64 bytes are no object, yet offset
        // 42 * 96 is a multiple of the size.
        assert_eq!((c.order(), c.objects_per_slab()), (0, 42));
        let p = c.alloc().unwrap();
        // The slab is the page holding `p` (the first object handed out need not be the
        // first in memory: the `freelist-random` feature shuffles them).
        let base = p.as_ptr().wrapping_sub(p.as_ptr() as usize % 4096);
        let past = base.wrapping_add(42 * 96);
        // SAFETY: deliberately wrong, see above.
        unsafe { c.free(NonNull::new(past).unwrap()) };
        std::process::exit(0);
    }
    let (st, err) = child("freeing_past_the_last_object_aborts");
    assert_aborted(
        st,
        &err,
        &["kmem: cache \"tail\": free of a pointer past the last object 0x"],
    );
}

/// The object is the CPU freelist's head: the fast path's check.
#[test]
#[cfg_attr(miri, ignore)]
fn double_free_on_the_fast_path_aborts() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let c = k.create_cache("twice", 64, CacheConfig::new()).unwrap();
        let p = c.alloc().unwrap();
        // SAFETY: the first free is legitimate, the second deliberately wrong.
        unsafe {
            c.free(p);
            c.free(p);
        }
        std::process::exit(0);
    }
    let (st, err) = child("double_free_on_the_fast_path_aborts");
    assert_aborted(st, &err, &["kmem: cache \"twice\": double free of 0x"]);
}

/// A full slab that is no CPU's slab: its own freelist's head is checked.
#[test]
#[cfg_attr(miri, ignore)]
fn double_free_on_the_slow_path_aborts() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let cfg = CacheConfig::new().cpu_partial_slabs(0);
        let c = k.create_cache("twice-slow", 64, cfg).unwrap();
        let n = c.objects_per_slab();
        // The first slab filled, then a second one as the CPU slab.
        let objs = alloc_n(&c, n + 1);
        // SAFETY: the first free is legitimate, the second deliberately wrong.
        unsafe {
            c.free(objs[3]);
            c.free(objs[3]);
        }
        std::process::exit(0);
    }
    let (st, err) = child("double_free_on_the_slow_path_aborts");
    assert_aborted(st, &err, &["kmem: cache \"twice-slow\": double free of 0x"]);
}

/// Every object of a slab is free (`inuse == 0`) and the object freed again is not the head:
/// the counter would underflow (a panic in debug builds, a corrupt slab in release ones).
#[test]
#[cfg_attr(miri, ignore)]
fn double_free_into_an_empty_slab_aborts() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let cfg = CacheConfig::new().cpu_partial_slabs(0).min_partial(100);
        let c = k.create_cache("underflow", 64, cfg).unwrap();
        let n = c.objects_per_slab();
        let objs = alloc_n(&c, n + 1);
        // SAFETY: the first `n` frees are legitimate (the whole first slab, which stays on the node partial list, empty); the last deliberately frees object 3 again.
        unsafe {
            for &p in &objs[..n] {
                c.free(p);
            }
            c.free(objs[3]);
        }
        std::process::exit(0);
    }
    let (st, err) = child("double_free_into_an_empty_slab_aborts");
    assert_aborted(st, &err, &["kmem: cache \"underflow\": double free of 0x"]);
}

/// A sheaf cache's frees check the object with its page's slab tag (the cache's tag id and
/// order) and the object-start test, without the descriptor (`CacheInner::cache_free`); every
/// pointer those checks refuse takes the descriptor check, which aborts with the same message
/// as for a cache without sheaves: an interior pointer, a multiple of the size past the last
/// object, an object of another sheaf cache.
#[test]
#[cfg_attr(miri, ignore)]
fn a_sheaf_cache_refuses_bad_frees_with_a_message() {
    const CASES: [(&str, &str); 3] = [
        (
            "interior",
            "kmem: cache \"sheaf-a\": free of an interior pointer 0x",
        ),
        (
            "past",
            "kmem: cache \"sheaf-a\": free of a pointer past the last object 0x",
        ),
        (
            "other",
            "freed to cache \"sheaf-a\" belongs to cache \"sheaf-b\"",
        ),
    ];
    if in_child() {
        let case = std::env::var("KMEM_FREE_CASE").unwrap();
        // A slot per CPU: the rseq mode where the process has it, where frees push inline.
        let k = Kmem::builder().nodes(1).build().unwrap();
        let cfg = CacheConfig::new().sheaf_capacity(16).max_order(0);
        let a = k.create_cache("sheaf-a", 96, cfg.clone()).unwrap();
        let b = k.create_cache("sheaf-b", 96, cfg).unwrap();
        assert_eq!((a.order(), a.objects_per_slab()), (0, 42));
        // Good frees first, in another order than the allocations: they take the tag path.
        let objs: Vec<_> = (0..100).map(|_| a.alloc().unwrap()).collect();
        for p in objs.iter().rev() {
            // SAFETY: every pointer came from `a` and is freed once.
            unsafe { a.free(*p) };
        }
        if k.commit_mode() == kmem::cpu::CommitMode::Rseq && cfg!(feature = "stats") {
            assert!(a.stats().free_cpu_sheaf >= 90, "{:?}", a.stats());
        }
        let p = a.alloc().unwrap();
        let bad = match case.as_str() {
            "interior" => p.as_ptr().wrapping_add(32),
            "past" => {
                let base = p.as_ptr().wrapping_sub(p.as_ptr() as usize % 4096);
                base.wrapping_add(42 * 96)
            }
            _ => b.alloc().unwrap().as_ptr(),
        };
        // SAFETY: deliberately wrong — the point of the test.
        unsafe { a.free(NonNull::new(bad).unwrap()) };
        std::process::exit(0);
    }
    for (case, msg) in CASES {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_sheaf_cache_refuses_bad_frees_with_a_message",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("KMEM_CHILD", "1")
            .env("KMEM_FREE_CASE", case)
            .output()
            .unwrap();
        assert_aborted(out.status, &String::from_utf8_lossy(&out.stderr), &[msg]);
    }
}
