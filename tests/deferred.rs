//! Deferred frees (`KmemCache::free_deferred`, `SlabBox::drop_deferred`): grace periods,
//! batching, flush, the lifetime of a dropped cache, and a multi-threaded run.

use kmem::epoch::{self, Collector};
use kmem::{Cache, CacheConfig, Kmem, KmemCache, SlabBox};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn kmem(cpus: usize) -> Kmem {
    Kmem::builder().cpus(cpus).nodes(1).build().unwrap()
}

/// Advances `collector`'s epoch through `h` until `c` has nothing pending (bounded).
fn drain(c: &KmemCache, h: &epoch::LocalHandle) {
    for _ in 0..1000 {
        if c.deferred_pending() == 0 {
            return;
        }
        c.flush_deferred(&h.pin());
    }
    panic!("{} deferred objects never freed", c.deferred_pending());
}

#[test]
fn pinned_reader_delays_reuse() {
    let k = kmem(1);
    let c = k.create_cache("pinned", 64, CacheConfig::new()).unwrap();
    let col = Collector::new();
    let (reader, writer) = (col.register(), col.register());
    let objs: Vec<_> = (0..10).map(|_| c.alloc().unwrap()).collect();
    let r = reader.pin();
    for &p in &objs {
        // SAFETY: each object came from `c` and is freed once.
        unsafe { c.free_deferred(p, &writer.pin()) };
    }
    for _ in 0..50 {
        c.flush_deferred(&writer.pin());
    }
    // The reader pinned before the frees: nothing may be reused yet.
    assert_eq!(c.deferred_pending(), 10);
    assert_eq!(c.info().active_objs, 10);
    let fresh: Vec<_> = (0..20).map(|_| c.alloc().unwrap()).collect();
    for p in &fresh {
        assert!(
            !objs.contains(p),
            "an object was reused while a reader was pinned"
        );
    }
    drop(r);
    drain(&c, &writer);
    assert_eq!(c.info().active_objs, 20);
    // SAFETY: each came from `c`, freed once.
    unsafe { c.free_bulk(&fresh) };
    assert_eq!(c.info().active_objs, 0);
}

#[test]
fn full_batches_are_handed_over_without_flush() {
    let k = kmem(1);
    let c = k.create_cache("batches", 32, CacheConfig::new()).unwrap();
    let col = Collector::new();
    let h = col.register();
    // Many batches' worth: full batches go to the collector on their own and are collected as
    // the writer keeps pinning.
    for _ in 0..5000 {
        let p = c.alloc().unwrap();
        // SAFETY: from `c`, freed once.
        unsafe { c.free_deferred(p, &h.pin()) };
    }
    assert!(
        c.deferred_pending() < 5000,
        "no batch ran: {}",
        c.deferred_pending()
    );
    drain(&c, &h);
    assert_eq!(c.info().active_objs, 0);
}

#[test]
fn unprotected_guard_frees_at_once() {
    let k = kmem(1);
    let c = k
        .create_cache("unprotected", 64, CacheConfig::new())
        .unwrap();
    let p = c.alloc().unwrap();
    // SAFETY: no other thread uses `c`; `p` came from it and is freed once.
    unsafe { c.free_deferred(p, epoch::unprotected()) };
    assert_eq!(c.info().active_objs, 0);
    assert_eq!(c.deferred_pending(), 0);
    let q = c.alloc().unwrap();
    assert_eq!(q, p);
    // SAFETY: from `c`, freed once.
    unsafe { c.free(q) };
}

#[test]
fn batches_of_another_collector_are_handed_to_it() {
    let k = kmem(1);
    let c = k
        .create_cache("two-collectors", 64, CacheConfig::new())
        .unwrap();
    let (a, b) = (Collector::new(), Collector::new());
    let (ha, hb) = (a.register(), b.register());
    let ra = ha.pin(); // a reader of collector a
    let p = c.alloc().unwrap();
    let q = c.alloc().unwrap();
    // SAFETY: from `c`, each freed once.
    unsafe { c.free_deferred(p, &hb.pin()) };
    // SAFETY: as above.
    unsafe { c.free_deferred(q, &a.register().pin()) };
    // `p` (collector b, nobody pinned there) can go; `q` waits for `ra`.
    for _ in 0..50 {
        c.flush_deferred(&hb.pin());
    }
    assert_eq!(c.deferred_pending(), 1);
    drop(ra);
    drain(&c, &ha);
    assert_eq!(c.info().active_objs, 0);
}

#[test]
fn dropped_cache_stays_alive_until_its_deferred_objects_are_freed() {
    let k = kmem(2);
    let col = Collector::new();
    let (reader, writer) = (col.register(), col.register());
    let c = k.create_cache("dying", 128, CacheConfig::new()).unwrap();
    let objs: Vec<_> = (0..100).map(|_| c.alloc().unwrap()).collect();
    let r = reader.pin();
    for &p in &objs {
        // SAFETY: from `c`, freed once.
        unsafe { c.free_deferred(p, &writer.pin()) };
    }
    drop(c);
    // Still registered and holding its objects: the reader may be reading them.
    let rows = k.slabinfo();
    let row = rows
        .iter()
        .find(|r| r.name == "dying")
        .expect("cache destroyed too early");
    assert_eq!(row.active_objs, 100);
    drop(r);
    for _ in 0..1000 {
        if k.slabinfo().is_empty() {
            break;
        }
        writer.pin().flush();
    }
    assert!(k.slabinfo().is_empty(), "the cache was never destroyed");
    let ps = k.page_stats();
    // Free pages are on the buddy lists or on the per-CPU page lists.
    assert_eq!(
        ps.free_bytes + ps.pcp_bytes,
        ps.mapped_bytes,
        "pages lost: {ps:?}"
    );
}

#[test]
fn dropping_the_collector_runs_everything() {
    let k = kmem(1);
    let col = Collector::new();
    let c = k
        .create_cache("collector-drop", 64, CacheConfig::new())
        .unwrap();
    {
        let h = col.register();
        for _ in 0..10 {
            let p = c.alloc().unwrap();
            // SAFETY: from `c`, freed once.
            unsafe { c.free_deferred(p, &h.pin()) };
        }
    }
    drop(c); // hands the partial batch to `col`; 10 objects pending
    assert_eq!(k.slabinfo().len(), 1);
    drop(col); // the collector runs every deferred closure as it goes away
    assert!(k.slabinfo().is_empty());
}

struct Counted(Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn slab_box_drop_deferred_drops_after_the_grace_period() {
    let k = kmem(1);
    let cache: Cache<Counted> = Cache::with_config(&k, "typed", CacheConfig::new()).unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let col = Collector::new();
    let (reader, writer) = (col.register(), col.register());
    let r = reader.pin();
    for _ in 0..5 {
        let b = cache
            .alloc(Counted(dropped.clone()))
            .map_err(|_| ())
            .unwrap();
        SlabBox::drop_deferred(b, &writer.pin());
    }
    for _ in 0..50 {
        cache.raw().flush_deferred(&writer.pin());
    }
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        0,
        "dropped while a reader was pinned"
    );
    drop(r);
    drain(cache.raw(), &writer);
    assert_eq!(dropped.load(Ordering::SeqCst), 5);
    assert_eq!(cache.raw().info().active_objs, 0);
}

#[test]
fn shrink_hands_batches_over() {
    let k = kmem(1);
    let c = k.create_cache("shrunk", 64, CacheConfig::new()).unwrap();
    let col = Collector::new();
    let h = col.register();
    let p = c.alloc().unwrap();
    // SAFETY: from `c`, freed once.
    unsafe { c.free_deferred(p, &h.pin()) };
    c.shrink(); // the partial batch goes to the collector
    for _ in 0..100 {
        if c.deferred_pending() == 0 {
            break;
        }
        h.pin().flush(); // no flush_deferred: the batch is already with the collector
    }
    assert_eq!(c.deferred_pending(), 0);
    c.shrink();
    assert_eq!(c.info().num_slabs, 0);
}

#[test]
fn threads_defer_while_others_read() {
    let k = kmem(4);
    let c = Arc::new(k.create_cache("mt", 48, CacheConfig::new()).unwrap());
    let col = Collector::new();
    let stop = Arc::new(AtomicUsize::new(0));
    // Readers pin and unpin continuously.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (col, stop) = (col.clone(), stop.clone());
            std::thread::spawn(move || {
                let h = col.register();
                while stop.load(Ordering::Relaxed) == 0 {
                    let _g = h.pin();
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let writers: Vec<_> = (0..3)
        .map(|_| {
            let (c, col) = (c.clone(), col.clone());
            std::thread::spawn(move || {
                let h = col.register();
                for _ in 0..20_000 {
                    let p: NonNull<u8> = c.alloc().unwrap();
                    // SAFETY: a live object of `c`.
                    unsafe { p.as_ptr().write_bytes(0x5a, 48) };
                    // SAFETY: from `c`, freed once.
                    unsafe { c.free_deferred(p, &h.pin()) };
                }
                c.flush_deferred(&h.pin());
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(1, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let h = col.register();
    drain(&c, &h);
    assert_eq!(c.info().active_objs, 0);
}
