//! One test per SLUB path, each showing the path taken in the cache's statistics (the `stats`
//! feature, on by default), plus bad input and destroy reporting.
//!
//! Tests that need two CPU slots pin threads with `sched_setaffinity`, so that the thread's
//! slot is known (slot = CPU id for an instance with as many slots as CPUs).

mod common;
use common::{assert_aborted, child, in_child};
use kmem::{CacheConfig, Kmem, KmemCache, KmemError};
use std::ptr::NonNull;

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed with its size to the current thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin to CPU {cpu}"
        );
    }
    // The rseq cpu_id is updated on return to user space; the affinity call itself migrates us.
    assert_eq!(
        kmem::cpu::current_cpu(),
        cpu,
        "not running on CPU {cpu} after pinning"
    );
}

/// Whether the machine has the two CPUs these tests pin threads to. A test that needs them does
/// not pass quietly without them: it fails, unless `KMEM_SKIP_MULTI_CPU=1` says the skip is
/// known (then it prints a SKIPPED line and returns).
fn have_two_cpus() -> bool {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if n >= 2 {
        return true;
    }
    if std::env::var_os("KMEM_SKIP_MULTI_CPU").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED (KMEM_SKIP_MULTI_CPU=1): this test needs two CPUs (found {n})");
        return false;
    }
    panic!(
        "this test needs two CPUs and found {n}; run it on a machine with two, or set \
         KMEM_SKIP_MULTI_CPU=1 to skip it knowingly"
    );
}

/// An instance with two slots on CPUs 0 and 1.
fn two_slots(nodes: usize) -> Kmem {
    Kmem::builder().cpus(2).nodes(nodes).build().unwrap()
}

fn on_cpu<R: Send>(cpu: usize, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(move || {
            pin(cpu);
            f()
        })
        .join()
        .unwrap()
    })
}

struct Ptrs(Vec<NonNull<u8>>);
// SAFETY: raw object pointers passed between test threads; each is used by one thread at a time.
unsafe impl Send for Ptrs {}
// SAFETY: as above; shared references only read the pointer values.
unsafe impl Sync for Ptrs {}

fn alloc_n(c: &KmemCache, n: usize) -> Ptrs {
    Ptrs((0..n).map(|_| c.alloc().expect("memory")).collect())
}

fn free_all(c: &KmemCache, p: Ptrs) {
    for o in p.0 {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(o) };
    }
}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn fast_paths() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k.create_cache("fast", 64, CacheConfig::new()).unwrap();
    for _ in 0..1000 {
        let p = c.alloc().unwrap();
        // SAFETY: allocated from `c` just above.
        unsafe { c.free(p) };
    }
    let s = c.stats();
    assert_eq!(s.alloc_slowpath, 1, "{s:?}");
    assert_eq!(s.alloc_slab, 1, "{s:?}");
    assert_eq!(s.alloc_fastpath, 999, "{s:?}");
    assert_eq!(s.free_fastpath, 1000, "{s:?}");
    assert_eq!(s.free_slowpath, 0, "{s:?}");
}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn remote_free_into_a_frozen_cpu_slab() {
    if !have_two_cpus() {
        return;
    }
    let k = two_slots(1);
    let c = k.create_cache("remote", 256, CacheConfig::new()).unwrap();
    let objs = on_cpu(0, || alloc_n(&c, 4)); // slot 0's CPU slab, frozen
    on_cpu(1, || free_all(&c, objs)); // slot 1 frees into slot 0's slab
    let s = c.stats();
    assert_eq!(s.free_slowpath, 4, "{s:?}");
    assert_eq!(s.free_frozen, 4, "{s:?}");
    // Slot 0 gets them back through get_freelist once its CPU freelist runs dry.
    let per = c.objects_per_slab();
    let again = on_cpu(0, || alloc_n(&c, per));
    assert!(c.stats().alloc_refill >= 1, "{:?}", c.stats());
    assert_eq!(
        c.info().num_slabs,
        1,
        "the remotely freed objects were reused, not a new slab"
    );
    on_cpu(0, || free_all(&c, again));
}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn full_slab_freezes_onto_the_cpu_partial_list() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k
        .create_cache("full", 512, CacheConfig::new().cpu_partial_slabs(4))
        .unwrap();
    let per = c.objects_per_slab();
    let first = alloc_n(&c, per); // slab 1 exactly full
    let second = alloc_n(&c, 1); // slab 1 found full (bypass), slab 2 becomes the CPU slab
    assert_eq!(c.stats().deactivate_bypass, 1, "{:?}", c.stats());
    // SAFETY: allocated from `c`.
    unsafe { c.free(first.0[0]) }; // slab 1 was full: freeze it onto the CPU partial list
    let s = c.stats();
    assert_eq!((s.cpu_partial_free, s.free_slowpath), (1, 1), "{s:?}");
    assert_eq!(c.info().cpu_partial_slabs, 1);
    free_all(&c, Ptrs(first.0[1..].to_vec()));
    free_all(&c, second);
    assert_eq!(c.info().active_objs, 0);
}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn cpu_partial_list_drains_to_the_node() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k
        .create_cache(
            "drain",
            512,
            CacheConfig::new().cpu_partial_slabs(2).min_partial(10),
        )
        .unwrap();
    let per = c.objects_per_slab();
    let slabs: Vec<Ptrs> = (0..4).map(|_| alloc_n(&c, per)).collect();
    let _extra = alloc_n(&c, 1);
    // Free one object of each full slab: each freezes onto the CPU partial list; the third
    // push finds the list at cpu_partial_slabs and drains it to the node.
    for s in &slabs[..3] {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(s.0[0]) };
    }
    let s = c.stats();
    assert_eq!(s.cpu_partial_free, 3, "{s:?}");
    assert_eq!(s.cpu_partial_drain, 1, "{s:?}");
    assert_eq!(s.free_add_partial, 2, "{s:?}");
    let info = c.info();
    assert_eq!(
        (info.node_partial_slabs, info.cpu_partial_slabs),
        (2, 1),
        "{info:?}"
    );
    for (i, s) in slabs.into_iter().enumerate() {
        let from = if i < 3 { 1 } else { 0 };
        free_all(&c, Ptrs(s.0[from..].to_vec()));
    }
    free_all(&c, _extra);
    assert_eq!(c.info().active_objs, 0);
    c.shrink();
    assert_eq!(c.info().num_slabs, 0);
}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn node_partial_refill_and_cpu_partial_node() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    // No CPU partial lists: frees into full slabs put them on the node list.
    let c = k
        .create_cache("refill", 512, CacheConfig::new().cpu_partial_slabs(0))
        .unwrap();
    let per = c.objects_per_slab();
    let a = alloc_n(&c, per);
    let b = alloc_n(&c, per);
    let _cur = alloc_n(&c, 1); // slab 3 is the CPU slab now
                               // SAFETY: from `c`, once each.
    unsafe {
        c.free(a.0[0]);
        c.free(b.0[0]);
    }
    assert_eq!(c.stats().free_add_partial, 2, "{:?}", c.stats());
    assert_eq!(c.info().node_partial_slabs, 2);
    // Exhaust slab 3; the next allocation must come from the node partial list, not a new slab.
    let rest = alloc_n(&c, per - 1);
    let slabs_before = c.info().num_slabs;
    let x = alloc_n(&c, 1);
    assert_eq!(c.stats().alloc_from_partial, 1, "{:?}", c.stats());
    assert_eq!(c.info().num_slabs, slabs_before);

    // With CPU partial lists, get_partial_node also moves extra slabs to the CPU list.
    let d = k
        .create_cache("refill-cpu", 512, CacheConfig::new().cpu_partial_slabs(8))
        .unwrap();
    let per = d.objects_per_slab();
    let full: Vec<Ptrs> = (0..4).map(|_| alloc_n(&d, per)).collect();
    let _cur2 = alloc_n(&d, 1);
    for f in &full {
        // SAFETY: from `d`, once each.
        unsafe { d.free(f.0[0]) };
    }
    d.shrink(); // all four partial slabs go to the node list (the CPU slab too)
    assert!(d.info().node_partial_slabs >= 4, "{:?}", d.info());
    let y = alloc_n(&d, 1);
    let s = d.stats();
    assert_eq!(s.alloc_from_partial, 1, "{s:?}");
    assert!(s.cpu_partial_node >= 1, "{s:?}");
    assert!(d.info().cpu_partial_slabs >= 1);
    free_all(&d, y);
    for f in full {
        free_all(&d, Ptrs(f.0[1..].to_vec()));
    }
    free_all(&d, _cur2);
    free_all(&c, x);
    free_all(&c, rest);
    free_all(&c, Ptrs(a.0[1..].to_vec()));
    free_all(&c, Ptrs(b.0[1..].to_vec()));
    free_all(&c, _cur);
}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn empty_slabs_beyond_min_partial_are_discarded() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k
        .create_cache(
            "discard",
            1024,
            CacheConfig::new().min_partial(1).cpu_partial_slabs(0),
        )
        .unwrap();
    let per = c.objects_per_slab();
    let objs = alloc_n(&c, per * 5);
    assert_eq!(c.info().num_slabs, 5);
    free_all(&c, objs);
    let s = c.stats();
    assert!(s.free_slab >= 3, "{s:?}");
    assert!(s.free_remove_partial >= 3, "{s:?}");
    // At most min_partial empty slabs stay on the node, plus the CPU slab.
    assert!(c.info().num_slabs <= 2, "{:?}", c.info());
    assert_eq!(c.info().active_objs, 0);
}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn order_fallback_under_a_memory_limit() {
    let k = Kmem::builder()
        .cpus(1)
        .nodes(1)
        .memory_limit(4 << 20)
        .build()
        .unwrap();
    // Fill the only chunk with order-0 slabs, then free every other slab: no order >= 1 block
    // remains anywhere.
    let small = k
        .create_cache(
            "frag",
            2048,
            CacheConfig::new()
                .max_order(0)
                .min_partial(0)
                .cpu_partial_slabs(0),
        )
        .unwrap();
    let mut objs = Vec::new();
    while let Some(p) = small.alloc() {
        objs.push(p);
    }
    assert!(k.page_stats().free_bytes < 4096 * 2, "{:?}", k.page_stats());
    for (i, p) in objs.iter().enumerate() {
        if (i / 2) % 2 == 0 {
            // SAFETY: from `small`, once each (both objects of every other slab).
            unsafe { small.free(*p) };
        }
    }
    assert!(
        k.page_stats().free_blocks[1..].iter().all(|&n| n == 0),
        "{:?}",
        k.page_stats()
    );
    assert!(k.page_stats().free_blocks[0] > 0);
    let big = k.create_cache("big", 4096, CacheConfig::new()).unwrap();
    assert_eq!((big.order(), big.min_order()), (3, 0));
    let p = big.alloc().expect("order fallback must still allocate");
    let s = big.stats();
    assert_eq!(s.order_fallback, 1, "{s:?}");
    assert!(k.page_stats().failed_allocs >= 1);
    // SAFETY: from `big`.
    unsafe { big.free(p) };
    for (i, p) in objs.iter().enumerate() {
        if (i / 2) % 2 == 1 {
            // SAFETY: the other half, once each.
            unsafe { small.free(*p) };
        }
    }
}

#[test]
#[cfg_attr(not(feature = "stats"), ignore = "needs the stats feature")]
fn other_node_fallback_with_fake_nodes() {
    if !have_two_cpus() {
        return;
    }
    let k = two_slots(2);
    assert_eq!((k.slot_node(0), k.slot_node(1)), (0, 1));
    let c = k
        .create_cache("numa", 512, CacheConfig::new().cpu_partial_slabs(0))
        .unwrap();
    let per = c.objects_per_slab();
    // On node 0: two full slabs, then one free in each -> two node-0 partial slabs.
    let (a, b, cur) = on_cpu(0, || (alloc_n(&c, per), alloc_n(&c, per), alloc_n(&c, 1)));
    let firsts = Ptrs(vec![a.0[0], b.0[0]]);
    on_cpu(0, || free_all(&c, firsts));
    assert_eq!(c.info().node_partial_slabs, 2);
    // Slot 1 (node 1) has nothing on node 1: it takes a node-0 partial slab before making a
    // new slab.
    let x = on_cpu(1, || alloc_n(&c, 1));
    assert_eq!(c.node_of(x.0[0]), 0);
    assert_eq!(c.stats().alloc_from_partial, 1, "{:?}", c.stats());
    assert_eq!(c.info().num_slabs, 3);
    // alloc_node insists on node 1: a new slab there.
    let y = c.alloc_node(1).unwrap();
    assert_eq!(c.node_of(y), 1);
    // SAFETY: from `c`.
    unsafe { c.free(y) };
    free_all(&c, x);
    free_all(&c, Ptrs(a.0[1..].to_vec()));
    free_all(&c, Ptrs(b.0[1..].to_vec()));
    free_all(&c, cur);
}

#[test]
fn shrink_returns_every_slab_and_resident_memory() {
    let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
    let c = k.create_cache("shrink", 1000, CacheConfig::new()).unwrap();
    let objs = alloc_n(&c, 32 << 10); // ~32 MiB
    for o in &objs.0 {
        // SAFETY: ours; touch every object so the pages are really resident.
        unsafe { o.as_ptr().write_bytes(0x5a, 1000) };
    }
    let before = k.page_stats();
    free_all(&c, objs);
    c.shrink();
    let info = c.info();
    assert_eq!((info.num_slabs, info.active_objs), (0, 0), "{info:?}");
    let after = k.page_stats();
    assert_eq!(after.free_bytes, after.mapped_bytes);
    assert!(
        after.resident_bytes + (24 << 20) < before.resident_bytes,
        "{before:?} -> {after:?}"
    );
}

#[test]
fn slabinfo_totals_balance() {
    let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
    let c = k.create_cache("balance", 96, CacheConfig::new()).unwrap();
    let objs = alloc_n(&c, 1000);
    let i = c.info();
    assert_eq!(i.active_objs, 1000, "{i:?}");
    assert_eq!(i.objsize, 96);
    assert_eq!(i.num_objs, i.num_slabs * i.objperslab);
    assert!(i.active_slabs <= i.num_slabs);
    let rows = k.slabinfo();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0], i);
    let table = kmem::SlabInfoTable(rows).to_string();
    assert!(table.contains("balance"), "{table}");
    free_all(&c, objs);
    assert_eq!(c.info().active_objs, 0);
}

#[test]
fn bulk_alloc_and_free() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c = k.create_cache("bulk", 128, CacheConfig::new()).unwrap();
    let mut out = vec![std::ptr::null_mut(); 5000];
    assert_eq!(c.alloc_bulk(&mut out), 5000);
    let mut seen = std::collections::HashSet::new();
    for &p in &out {
        assert!(seen.insert(p as usize), "bulk handed out {p:?} twice");
    }
    assert_eq!(c.info().active_objs, 5000);
    let objs: Vec<_> = out.iter().map(|&p| NonNull::new(p).unwrap()).collect();
    // SAFETY: all from `c`, no duplicates (checked).
    unsafe { c.free_bulk(&objs) };
    assert_eq!(c.info().active_objs, 0);
}

#[test]
fn typed_cache_drops_values_before_returning_memory() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct D(#[allow(dead_code)] u64);
    impl Drop for D {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let c: kmem::Cache<D> = kmem::Cache::with_config(&k, "typed", CacheConfig::new()).unwrap();
    {
        let _a = c.alloc(D(1)).ok().unwrap();
        let _b = c.alloc(D(2)).ok().unwrap();
        assert_eq!(c.raw().info().active_objs, 2);
    }
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    assert_eq!(c.raw().info().active_objs, 0);
    let v = kmem::SlabBox::into_inner(c.alloc(D(3)).ok().unwrap());
    assert_eq!(DROPS.load(Ordering::SeqCst), 2);
    drop(v);
    assert_eq!(DROPS.load(Ordering::SeqCst), 3);
}

#[test]
fn typed_cache_gives_the_value_back_when_memory_runs_out() {
    let k = Kmem::builder()
        .cpus(1)
        .nodes(1)
        .memory_limit(1 << 20)
        .build()
        .unwrap();
    let c: kmem::Cache<[u8; 4000]> =
        kmem::Cache::with_config(&k, "oom", CacheConfig::new()).unwrap();
    let mut boxes = Vec::new();
    let back = loop {
        match c.alloc([7; 4000]) {
            Ok(b) => boxes.push(b),
            Err(v) => break v,
        }
    };
    assert_eq!(back[0], 7);
    assert!(!boxes.is_empty());
    assert!(k.page_stats().mapped_bytes <= 1 << 20);
}

#[test]
fn bad_parameters_give_errors() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let cfg = CacheConfig::new;
    assert!(matches!(
        k.create_cache("z", 0, cfg()),
        Err(KmemError::InvalidSize { size: 0, .. })
    ));
    assert!(matches!(
        k.create_cache("huge", 1 << 40, cfg()),
        Err(KmemError::InvalidSize { .. })
    ));
    assert!(matches!(
        k.create_cache("a", 64, cfg().align(48)),
        Err(KmemError::InvalidAlignment { align: 48, .. })
    ));
    assert!(matches!(
        k.create_cache("a", 64, cfg().align(1 << 20)),
        Err(KmemError::InvalidAlignment { .. })
    ));
    assert!(matches!(
        k.create_cache("", 64, cfg()),
        Err(KmemError::InvalidName { .. })
    ));
    assert!(matches!(
        k.create_cache(&"n".repeat(65), 64, cfg()),
        Err(KmemError::InvalidName { .. })
    ));
    assert!(matches!(
        Kmem::builder().cpus(0).build(),
        Err(KmemError::InvalidConfig {
            parameter: "cpus",
            ..
        })
    ));
    assert!(matches!(
        Kmem::builder().nodes(0).build(),
        Err(KmemError::InvalidConfig {
            parameter: "nodes",
            ..
        })
    ));
    let e = k
        .create_cache("msg", 64, cfg().align(48))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "invalid alignment 48 for cache \"msg\": must be a power of two"
    );
}

#[test]
fn freeing_an_object_of_another_cache_aborts_naming_both() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let a = k.create_cache("cache-a", 64, CacheConfig::new()).unwrap();
        let b = k.create_cache("cache-b", 64, CacheConfig::new()).unwrap();
        let p = a.alloc().unwrap();
        // kmem must abort before touching any freelist.
        // SAFETY: deliberately wrong (`p` belongs to cache `a`) — the point of the test.
        unsafe { b.free(p) };
        unreachable!();
    }
    let (st, err) = child("freeing_an_object_of_another_cache_aborts_naming_both");
    assert_aborted(
        st,
        &err,
        &["freed to cache \"cache-b\" belongs to cache \"cache-a\""],
    );
}

#[test]
fn freeing_a_foreign_pointer_aborts() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let a = k.create_cache("cache-f", 64, CacheConfig::new()).unwrap();
        let mut local = [0u64; 8];
        // SAFETY: deliberately wrong, see above.
        unsafe { a.free(NonNull::new(local.as_mut_ptr().cast()).unwrap()) };
        unreachable!();
    }
    let (st, err) = child("freeing_a_foreign_pointer_aborts");
    assert_aborted(st, &err, &["not in any kmem memory"]);
}

#[test]
fn destroy_with_live_objects_reports_and_leaks() {
    if in_child() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let c = k.create_cache("leaky", 64, CacheConfig::new()).unwrap();
        let objs = alloc_n(&c, 3);
        drop(c);
        // The slabs were leaked, not freed: the memory is still mapped and usable.
        // SAFETY: leaked objects stay mapped (that is what this test checks).
        unsafe { objs.0[0].as_ptr().write_bytes(1, 64) };
        std::process::exit(0);
    }
    let (st, err) = child("destroy_with_live_objects_reports_and_leaks");
    assert!(st.success(), "{err}");
    assert!(
        err.contains("cache \"leaky\" destroyed with 3 object(s) still allocated in 1 slab(s)"),
        "{err}"
    );
}
