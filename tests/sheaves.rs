//! Sheaves (issue 13): per-CPU arrays of objects in front of the slabs, in both commit modes
//! (the suite runs again with `KMEM_RSEQ=0`). See `src/slub/pcs.rs`.

use kmem::{CacheConfig, Kmem, KmemCache};
use std::ptr::NonNull;

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with `cpu` set; applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn pin_to_cpu0() {
    pin_to(0);
}

fn cache(k: &Kmem, name: &str, cap: usize) -> KmemCache {
    k.create_cache(name, 64, CacheConfig::new().sheaf_capacity(cap))
        .unwrap()
}

#[test]
fn one_thread_uses_the_sheaves_and_the_barn() {
    pin_to_cpu0();
    let k = Kmem::builder().build().unwrap();
    let c = cache(&k, "sheaf-one", 4);
    assert_eq!(c.sheaf_capacity(), 4);
    let objs: Vec<NonNull<u8>> = (0..8).map(|_| c.alloc().unwrap()).collect();
    let s = c.stats();
    eprintln!("after 8 allocs: {s:?}");
    for &p in &objs {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(p) };
    }
    let s = c.stats();
    eprintln!("after 8 frees: {s:?}");
    assert_eq!(c.info().active_objs, 0);
    if cfg!(feature = "stats") {
        assert_eq!(s.alloc_cpu_sheaf, 8, "{s:?}");
        assert_eq!(s.free_cpu_sheaf, 8, "{s:?}");
        // Two refills (4 + 4); the frees fill the second sheaf, swap it for the empty spare
        // and fill that one: nothing went to the barn yet.
        assert_eq!(s.sheaf_refill, 2, "{s:?}");
        assert_eq!((s.sheaf_swap, s.barn_put), (1, 0), "{s:?}");
    }
}

/// The system's page size.
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Whether the page holding `p` is resident (`mincore`).
fn resident(p: NonNull<u8>) -> bool {
    let page = (p.as_ptr() as usize) & !(page_size() - 1);
    let mut v = 0u8;
    // SAFETY: one page of a mapping of ours; `v` receives one byte.
    let r = unsafe { libc::mincore(page as *mut libc::c_void, page_size(), &mut v) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    v & 1 != 0
}

/// A refill that takes objects of a new slab hands them out by address without writing them
/// (`init_slab`'s `Taken`), so the pages of objects nobody has written stay out of memory.
/// Linking the whole new slab, as before, wrote a free pointer into each of its eight 4 KiB
/// objects: one allocation made all 32 KiB resident. (freelist-random links every object of a
/// new slab in its random order, so it takes nothing: not run with that feature.)
#[test]
#[cfg_attr(feature = "freelist-random", ignore)]
fn a_refill_from_a_new_slab_leaves_unwritten_objects_untouched() {
    if std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|s| s.contains("[always]"))
    {
        // The first write into the chunk (a sheaf's block) may fault a whole 2 MiB huge page
        // in, slab included: residency is then by huge pages, whatever kmem writes.
        eprintln!(
            "a_refill_from_a_new_slab_leaves_unwritten_objects_untouched: SKIPPED: \
             transparent huge pages are `always` on this machine"
        );
        return;
    }
    if page_size() != 4096 {
        eprintln!(
            "a_refill_from_a_new_slab_leaves_unwritten_objects_untouched: SKIPPED: \
             {} B pages hold more than one of the test's 4 KiB objects",
            page_size()
        );
        return;
    }
    pin_to_cpu0();
    let k = Kmem::builder().build().unwrap();
    // Slabs of eight 4 KiB objects (order 3). The first refill takes a quarter of the
    // sheaf's capacity: objects 0..quarter by address, the rest of the slab linked.
    let c = k
        .create_cache(
            "sheaf-untouched",
            4096,
            CacheConfig::new().sheaf_capacity(16).min_objects(8),
        )
        .unwrap();
    let info = c.info();
    assert_eq!((info.objperslab, info.pagesperslab), (8, 8), "{info:?}");
    let first_refill = (c.sheaf_capacity() / 4).max(4);
    assert!((4..8).contains(&first_refill), "{first_refill}");
    let objs: Vec<NonNull<u8>> = (0..4).map(|_| c.alloc().unwrap()).collect();
    for &p in &objs {
        assert!(
            !resident(p),
            "{p:?}: written by the allocator before its user"
        );
    }
    // The probe sees a write (the test can fail).
    // SAFETY: our object of 4096 bytes.
    unsafe { objs[0].as_ptr().write_bytes(0xa5, 4096) };
    assert!(resident(objs[0]));
    for &p in &objs[1..] {
        assert!(!resident(p));
    }
    for &p in &objs {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(p) };
    }
    assert_eq!(c.info().active_objs, 0);
    drop(c);
}

/// A CPU's refills from the slabs start at a quarter of the sheaf's capacity and double: a
/// cache used a little on a CPU holds a few objects there, one used a lot reaches whole sheaves
/// by its third refill.
#[test]
fn refills_start_small_and_double_up_to_the_capacity() {
    pin_to_cpu0();
    let k = Kmem::builder().build().unwrap();
    let c = cache(&k, "sheaf-ramp", 60);
    let mut objs: Vec<NonNull<u8>> = Vec::new();
    let mut refills = Vec::new();
    // 15, then 30, then 60, then 60 objects.
    for n in [1, 15, 16, 45, 46, 105, 106] {
        while objs.len() < n {
            objs.push(c.alloc().unwrap());
        }
        refills.push(c.stats().sheaf_refill);
    }
    for &p in &objs {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(p) };
    }
    assert_eq!(c.info().active_objs, 0);
    if cfg!(feature = "stats") {
        assert_eq!(refills, [1, 1, 2, 2, 3, 3, 4], "{:?}", c.stats());
        assert_eq!(c.stats().alloc_cpu_sheaf, 106);
    }
}

#[test]
fn objects_in_sheaves_and_barns_count_as_free_and_shrink_returns_everything() {
    let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
    let c = cache(&k, "sheaf-info", 4);
    let before = k.page_stats();
    // Enough traffic to fill mains, spares and the barn.
    let objs: Vec<NonNull<u8>> = (0..200).map(|_| c.alloc().unwrap()).collect();
    assert_eq!(c.info().active_objs, 200);
    for (i, &p) in objs.iter().enumerate() {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(p) };
        assert_eq!(c.info().active_objs, 199 - i, "after {} frees", i + 1);
    }
    if cfg!(feature = "stats") {
        let s = c.stats();
        assert!(s.free_cpu_sheaf > 0 && s.barn_put > 0, "{s:?}");
    }
    c.shrink();
    let info = c.info();
    assert_eq!((info.active_objs, info.num_slabs), (0, 0), "{info:?}");
    // Every page the cache took, the sheaves' pool included, is free again.
    let after = k.page_stats();
    assert_eq!(
        after.free_bytes, after.mapped_bytes,
        "{after:?} (before: {before:?})"
    );
}

/// One thread allocates `rounds` batches of `batch` objects of `c`, stamps each, and hands the
/// batches to a second thread, which checks the stamps and frees them (`pins`: the CPUs the two
/// run on, if they are to be pinned). An object handed out twice would have its stamp
/// overwritten while in flight: the consumer's check fails.
fn produce_and_consume(c: &KmemCache, rounds: u64, batch: u64, pins: Option<(usize, usize)>) {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<usize>>(4);
    std::thread::scope(|s| {
        s.spawn(move || {
            if let Some((cpu, _)) = pins {
                pin_to(cpu);
            }
            for round in 0..rounds {
                let objs: Vec<usize> = (0..batch)
                    .map(|i| {
                        let p = c.alloc().unwrap().as_ptr() as *mut u64;
                        // SAFETY: a fresh 64-byte object, ours.
                        unsafe { p.write(round << 32 | i) };
                        p as usize
                    })
                    .collect();
                tx.send(objs).unwrap();
            }
        });
        s.spawn(move || {
            if let Some((_, cpu)) = pins {
                pin_to(cpu);
            }
            for (round, objs) in rx.into_iter().enumerate() {
                for (i, p) in objs.into_iter().enumerate() {
                    // SAFETY: written by the producer, handed over, freed once.
                    unsafe {
                        assert_eq!((p as *const u64).read(), (round as u64) << 32 | i as u64);
                        c.free(NonNull::new(p as *mut u8).unwrap());
                    }
                }
            }
        });
    });
}

#[test]
fn threads_free_each_others_objects_through_sheaves() {
    let k = Kmem::builder().build().unwrap();
    let c = cache(&k, "sheaf-remote", 60);
    produce_and_consume(&c, 200, 100, None);
    assert_eq!(c.info().active_objs, 0);
    c.shrink();
    assert_eq!(c.info().num_slabs, 0);
}

/// A producer pinned to CPU 0 allocates, a consumer pinned to CPU 1 frees: the consumer's full
/// sheaves go to its barn shard and overflow into the producer's (a spill), and the producer,
/// whose own shard has no full sheaf, takes them from either (a steal, or its own trade): the
/// objects go round through the barn instead of through the slabs, and none is lost or
/// handed out twice (stamped).
#[test]
fn full_sheaves_flow_from_a_freeing_cpu_to_an_allocating_one_through_the_barn_shards() {
    // SAFETY: sysconf has no preconditions.
    if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
        eprintln!("SKIPPED: one CPU online, no second CPU to free on");
        return;
    }
    let k = Kmem::builder().build().unwrap();
    let cap = 12;
    let c = cache(&k, "sheaf-shards", cap);
    const ROUNDS: u64 = 400;
    const BATCH: u64 = 60;
    produce_and_consume(&c, ROUNDS, BATCH, Some((0, 1)));
    let s = c.stats();
    eprintln!("producer on CPU 0, consumer on CPU 1: {s:?}");
    assert_eq!(c.info().active_objs, 0);
    if cfg!(feature = "stats") {
        let allocs = ROUNDS * BATCH;
        assert!(
            s.barn_put > 0 && s.barn_get > 0,
            "no sheaf went through the barn: {s:?}"
        );
        // Most objects come back to the producer through the barn: the slabs refill far fewer
        // sheaves than the allocations would need without it.
        assert!(
            s.sheaf_refill * (cap as u64) < allocs / 2,
            "{} refills of {cap} for {allocs} allocations: {s:?}",
            s.sheaf_refill
        );
        // The empty sheaves the producer trades in go back to the consumer (from the
        // producer's shard), not through the pool: far fewer sheaves are carved than traded
        // (about 20 to 100 for 2 000 trades; one per trade before empty sheaves could be taken
        // from another shard).
        assert!(
            s.sheaf_alloc * 4 < s.barn_put,
            "{} sheaves carved for {} trades: {s:?}",
            s.sheaf_alloc,
            s.barn_put
        );
    }
    c.shrink();
    assert_eq!(c.info().num_slabs, 0);
}

#[test]
fn switching_the_sheaves_off_and_on_loses_nothing() {
    let k = Kmem::builder().build().unwrap();
    let c = cache(&k, "sheaf-switch", 60);
    let plain = k
        .create_cache("sheaf-none", 64, CacheConfig::new())
        .unwrap();
    let held: Vec<NonNull<u8>> = (0..100).map(|_| c.alloc().unwrap()).collect();
    for &p in &held[..50] {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(p) };
    }
    assert!(!c.set_sheaves(false));
    assert!(!c.uses_sheaves());
    assert_eq!(c.info().active_objs, 50);
    for &p in &held[50..] {
        // SAFETY: as above.
        unsafe { c.free(p) };
    }
    assert!(c.set_sheaves(true) && c.uses_sheaves());
    assert!(!plain.set_sheaves(true), "no capacity: no sheaves");
    assert_eq!(c.info().active_objs, 0);
}

#[test]
fn a_capacity_too_large_is_refused() {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    let err = k
        .create_cache(
            "sheaf-huge",
            64,
            CacheConfig::new().sheaf_capacity(kmem::MAX_SHEAF_CAPACITY + 1),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            kmem::KmemError::InvalidConfig {
                parameter: "sheaf_capacity",
                ..
            }
        ),
        "{err}"
    );
    let c = cache(&k, "sheaf-max", kmem::MAX_SHEAF_CAPACITY);
    assert_eq!(c.sheaf_capacity(), kmem::MAX_SHEAF_CAPACITY);
    let p = c.alloc().unwrap();
    // SAFETY: allocated from `c`, freed once.
    unsafe { c.free(p) };
}

mod common;

#[test]
#[cfg_attr(miri, ignore)]
fn a_double_free_into_a_sheaf_aborts() {
    if common::in_child() {
        pin_to_cpu0();
        let k = Kmem::builder().build().unwrap();
        let c = cache(&k, "sheaf-double", 4);
        // Fill the sheaf to its last cell with the object: the check must still see it.
        let objs: Vec<NonNull<u8>> = (0..4).map(|_| c.alloc().unwrap()).collect();
        // SAFETY: the last free is deliberately the second of `objs[3]`.
        unsafe {
            for &p in &objs {
                c.free(p);
            }
            c.free(objs[3]);
        }
        std::process::exit(0);
    }
    let (st, err) = common::child("a_double_free_into_a_sheaf_aborts");
    common::assert_aborted(
        st,
        &err,
        &[
            "kmem: cache \"sheaf-double\": double free of 0x",
            "last object of its CPU sheaf",
        ],
    );
}

#[test]
fn the_decay_trims_the_barns() {
    pin_to_cpu0();
    // A delay of 0: every decay tick is due, and so is the barns' trim.
    let k = Kmem::builder()
        .cpus(2)
        .nodes(1)
        .dirty_decay_ms(Some(0))
        .build()
        .unwrap();
    // One-page slabs of 4 objects: each object held in a sheaf can keep a slab of its own.
    let c = k
        .create_cache(
            "sheaf-trim",
            1024,
            CacheConfig::new().sheaf_capacity(4).max_order(0),
        )
        .unwrap();
    let objs: Vec<NonNull<u8>> = (0..400).map(|_| c.alloc().unwrap()).collect();
    // Every other object first, then the rest: the sheaves fill with objects of many slabs.
    for p in objs.iter().step_by(2).chain(objs.iter().skip(1).step_by(2)) {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(*p) };
    }
    let held = c.info();
    assert_eq!(held.active_objs, 0, "{held:?}");
    if cfg!(feature = "stats") {
        let s = c.stats();
        assert!(s.barn_put > 0, "the barn holds full sheaves: {s:?}");
    }
    // The first allocation of a cache without sheaves takes the slab slow path, which ticks
    // the instance's decay: the barns' full sheaves go back to their slabs.
    let other = k
        .create_cache("sheaf-trim-tick", 64, CacheConfig::new())
        .unwrap();
    let t = other.alloc().unwrap();
    let trimmed = c.info();
    assert_eq!(trimmed.active_objs, 0, "{trimmed:?}");
    assert!(
        trimmed.num_slabs < held.num_slabs,
        "slabs kept by the barn's sheaves go back: {held:?} -> {trimmed:?}"
    );
    // SAFETY: allocated from `other`, freed once.
    unsafe { other.free(t) };
    c.shrink();
    assert_eq!(c.info().num_slabs, 0);
}

/// The decay trims the sheaves of a cache that went idle on a CPU (the calling thread's, when
/// it runs a slow path there): their objects go back to the slabs, which go back to the page
/// allocator as they empty. A cache used between two looks keeps its sheaves.
#[test]
fn the_decay_trims_idle_cpu_sheaves() {
    pin_to_cpu0();
    // A delay of 0: every decay tick is due, the trims too.
    let k = Kmem::builder()
        .cpus(2)
        .nodes(1)
        .dirty_decay_ms(Some(0))
        .build()
        .unwrap();
    let cfg = CacheConfig::new().sheaf_capacity(32).max_order(0);
    let idle = k.create_cache("sheaf-idle", 1024, cfg.clone()).unwrap();
    let busy = k.create_cache("sheaf-busy", 1024, cfg).unwrap();
    let objs: Vec<NonNull<u8>> = (0..64).map(|_| idle.alloc().unwrap()).collect();
    // Every other object first, then the rest: the sheaves hold objects of many slabs.
    for p in objs.iter().step_by(2).chain(objs.iter().skip(1).step_by(2)) {
        // SAFETY: allocated from `idle`, freed once.
        unsafe { idle.free(*p) };
    }
    let mut kept = Vec::new();
    let held = idle.info();
    let flushes = |c: &KmemCache| c.stats().sheaf_flush;
    let (idle_flushes, busy_flushes) = (flushes(&idle), flushes(&busy));
    // Slow paths of a cache without sheaves (one-page slabs of 4 objects: every fourth
    // allocation takes one) tick the decay; `busy` allocates between them.
    let ticker = k
        .create_cache("sheaf-ticker", 1024, CacheConfig::new().max_order(0))
        .unwrap();
    let mut ticks = Vec::new();
    for _ in 0..24 {
        ticks.push(ticker.alloc().unwrap());
        kept.push(busy.alloc().unwrap());
    }
    let trimmed = idle.info();
    assert_eq!(trimmed.active_objs, 0, "{trimmed:?}");
    assert!(
        trimmed.num_slabs < held.num_slabs,
        "slabs kept by the idle cache's CPU sheaves go back: {held:?} -> {trimmed:?}"
    );
    if cfg!(feature = "stats") {
        assert!(flushes(&idle) > idle_flushes, "{:?}", idle.stats());
        assert_eq!(flushes(&busy), busy_flushes, "{:?}", busy.stats());
    }
    for p in ticks {
        // SAFETY: allocated from `ticker`, freed once.
        unsafe { ticker.free(p) };
    }
    for p in kept {
        // SAFETY: allocated from `busy`, freed once.
        unsafe { busy.free(p) };
    }
    // The idle cache still works: its next refill starts small.
    let p = idle.alloc().unwrap();
    // SAFETY: allocated from `idle`, freed once.
    unsafe { idle.free(p) };
}
