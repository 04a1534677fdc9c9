//! Concurrency stress: many more threads than cores allocate, stamp, pass objects to each
//! other, verify stamps and free — across several sizes and alignments. Checks that no object is
//! ever handed out twice (a sharded live set), no stamp is lost, alignment holds, and slabinfo
//! balances to zero at the end; then shrink returns every slab.

use kmem::{CacheConfig, CacheFlags, Kmem, KmemCache};
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::mpsc;
use std::sync::Mutex;

const SHARDS: usize = 64;

struct LiveSet(Vec<Mutex<HashSet<usize>>>);

impl LiveSet {
    fn new() -> Self {
        LiveSet((0..SHARDS).map(|_| Mutex::new(HashSet::new())).collect())
    }
    fn shard(&self, p: usize) -> &Mutex<HashSet<usize>> {
        &self.0[(p >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58]
    }
    fn insert(&self, p: usize) {
        assert!(
            self.shard(p).lock().unwrap().insert(p),
            "object {p:#x} handed out twice"
        );
    }
    fn remove(&self, p: usize) {
        assert!(
            self.shard(p).lock().unwrap().remove(&p),
            "object {p:#x} freed but not live"
        );
    }
}

struct Obj {
    cache: usize,
    ptr: usize,
    stamp: u64,
}

fn stamp(ptr: usize, len: usize, v: u64) {
    let words = len / 8;
    // SAFETY: the object is ours and at least `len` bytes, 8-byte aligned (kmem's minimum).
    unsafe {
        let p = ptr as *mut u64;
        for i in 0..words.max(1).min(len / 8) {
            p.add(i).write(v ^ i as u64);
        }
        if len < 8 {
            (ptr as *mut u8).write(v as u8);
        }
    }
}

fn check(ptr: usize, len: usize, v: u64) {
    // SAFETY: as in `stamp`.
    unsafe {
        let p = ptr as *const u64;
        for i in 0..len / 8 {
            assert_eq!(
                p.add(i).read(),
                v ^ i as u64,
                "stamp lost at word {i} of {ptr:#x}"
            );
        }
        if len < 8 {
            assert_eq!((ptr as *const u8).read(), v as u8);
        }
    }
}

/// `sheaves`: every cache with the kernel's sheaf capacity for its size, else the cpu-slab design.
fn run(k: &Kmem, threads: usize, rounds: usize, sheaves: bool) {
    let specs: &[(usize, usize, CacheFlags)] = &[
        (8, 0, CacheFlags::empty()),
        (24, 0, CacheFlags::empty()),
        (64, 0, CacheFlags::empty()),
        (100, 16, CacheFlags::empty()),
        (192, 64, CacheFlags::empty()),
        (200, 0, CacheFlags::HWCACHE_ALIGN),
        (1000, 0, CacheFlags::empty()),
        (3000, 256, CacheFlags::empty()),
        (4096, 4096, CacheFlags::empty()),
    ];
    let caches: Vec<KmemCache> = specs
        .iter()
        .enumerate()
        .map(|(i, &(size, align, flags))| {
            let mut cfg = CacheConfig::new().flags(flags);
            if align != 0 {
                cfg = cfg.align(align);
            }
            if sheaves {
                cfg = cfg.sheaf_capacity(kmem::default_sheaf_capacity(size));
            }
            k.create_cache(&format!("stress-{i}"), size, cfg).unwrap()
        })
        .collect();
    let live = LiveSet::new();
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| mpsc::channel::<Vec<Obj>>()).unzip();

    std::thread::scope(|s| {
        for (t, rx) in receivers.into_iter().enumerate() {
            let caches = &caches;
            let live = &live;
            let senders = senders.clone();
            s.spawn(move || {
                let mut rng = 0x1234_5678_9abc_def0u64 ^ (t as u64) << 32;
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut mine: Vec<Obj> = Vec::new();
                for round in 0..rounds {
                    // Allocate a burst.
                    let n = 1 + (next() % 64) as usize;
                    for j in 0..n {
                        let ci = (next() % caches.len() as u64) as usize;
                        let c = &caches[ci];
                        let Some(p) = c.alloc() else {
                            // Legitimate only under a memory limit that is reached: the live
                            // set (objects queued to descheduled threads) depends on the
                            // scheduler and can outgrow the limit. Then give our objects back
                            // and go on; a failure below the limit is a bug.
                            let ps = k.page_stats();
                            assert!(
                                ps.mapped_bytes + (4 << 20) > ps.limit_bytes,
                                "allocation failed below the memory limit: {ps:?}"
                            );
                            for o in mine.drain(..) {
                                free(caches, live, o);
                            }
                            break;
                        };
                        let p = p.as_ptr() as usize;
                        assert_eq!(p % c.align(), 0, "misaligned object from {}", c.name());
                        live.insert(p);
                        let v = (t as u64) << 48 | (round as u64) << 16 | j as u64;
                        stamp(p, c.object_size(), v);
                        mine.push(Obj {
                            cache: ci,
                            ptr: p,
                            stamp: v,
                        });
                    }
                    // Pass some to another thread; free some of ours; take what others sent.
                    if mine.len() > 32 {
                        let to = (next() % senders.len() as u64) as usize;
                        let give: Vec<Obj> = mine.drain(..mine.len() / 2).collect();
                        let _ = senders[to].send(give);
                    }
                    let k = (next() % (mine.len() as u64 + 1)) as usize;
                    for o in mine.drain(..k) {
                        free(caches, live, o);
                    }
                    while let Ok(batch) = rx.try_recv() {
                        for o in batch {
                            free(caches, live, o);
                        }
                    }
                }
                for o in mine {
                    free(caches, live, o);
                }
                drop(senders);
                // Drain what arrives until every sender is gone.
                for batch in rx {
                    for o in batch {
                        free(caches, live, o);
                    }
                }
            });
        }
        drop(senders);
    });

    for c in &caches {
        let info = c.info();
        assert_eq!(info.active_objs, 0, "{info:?}");
        assert!(info.num_objs >= info.active_objs);
        c.shrink();
        let info = c.info();
        assert_eq!((info.num_slabs, info.num_objs), (0, 0), "{info:?}");
    }
    let ps = k.page_stats();
    assert_eq!(ps.free_bytes, ps.mapped_bytes, "{ps:?}");
}

fn free(caches: &[KmemCache], live: &LiveSet, o: Obj) {
    let c = &caches[o.cache];
    check(o.ptr, c.object_size(), o.stamp);
    live.remove(o.ptr);
    // SAFETY: allocated from `c`, checked above, freed once.
    unsafe { c.free(NonNull::new(o.ptr as *mut u8).unwrap()) };
}

fn threads() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cores * 8).clamp(8, 32)
}

/// Every CPU slot of the machine.
fn machine_slots(sheaves: bool) {
    let k = Kmem::builder().build().unwrap();
    run(&k, threads(), 2000, sheaves);
}

/// Every thread on one CPU slot: maximal fast-path CAS contention and slot-lock sharing (with
/// sheaves, the sheaf lock's `try_lock` fails constantly in the locked mode, so frees and
/// allocations mix sheaves and the cpu-slab bypass).
fn one_shared_slot(sheaves: bool) {
    let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
    run(&k, threads(), 1500, sheaves);
}

/// Four slots on two fake nodes (with sheaves: a barn per node, frees of the other node's
/// objects bypass the sheaves), under a memory limit that forces reuse of freed pages.
fn fake_numa_under_a_limit(sheaves: bool) {
    let k = Kmem::builder()
        .cpus(4)
        .nodes(2)
        .memory_limit(64 << 20)
        .build()
        .unwrap();
    run(&k, threads(), 1500, sheaves);
    assert!(k.page_stats().mapped_bytes <= 64 << 20);
}

#[test]
#[cfg_attr(miri, ignore)]
fn stress_machine_slots() {
    machine_slots(false);
}

#[test]
#[cfg_attr(miri, ignore)]
fn stress_one_shared_slot() {
    one_shared_slot(false);
}

#[test]
#[cfg_attr(miri, ignore)]
fn stress_fake_numa_under_a_limit() {
    fake_numa_under_a_limit(false);
}

#[test]
#[cfg_attr(miri, ignore)]
fn stress_machine_slots_sheaves() {
    machine_slots(true);
}

#[test]
#[cfg_attr(miri, ignore)]
fn stress_one_shared_slot_sheaves() {
    one_shared_slot(true);
}

#[test]
#[cfg_attr(miri, ignore)]
fn stress_fake_numa_under_a_limit_sheaves() {
    fake_numa_under_a_limit(true);
}
