//! Shared harness of the loom models in `tests/` (see `docs/verification.md`).
//!
//! Every model builds a private [`kmem::Kmem`] with the smallest configuration that shows its
//! race (2048-byte objects: two per 4 KiB slab), records every object it holds in a [`Live`]
//! set (an object handed out twice fails the insertion), and ends with [`finish`]: everything
//! freed, `shrink()`, no active objects, no slabs, the page allocator's free bytes equal to
//! its mapped bytes, and the node partial lists well formed.
#![cfg(loom)]

use kmem::{CacheConfig, Kmem, KmemCache};
use loom::sync::{Arc, Mutex};
use std::collections::BTreeSet;
use std::ptr::NonNull;

/// Object size used by every model: two objects per one-page slab.
pub const OBJ: usize = 2048;

/// Runs `f` under loom with a preemption bound of 2 unless `LOOM_MAX_PREEMPTIONS` says
/// otherwise.
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.max_branches = 100_000;
    let bound = b.preemption_bound;
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    RUNS.store(0, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::Instant::now();
    b.check(move || {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    eprintln!(
        "loom: {} interleavings explored in {:.2?} (preemption bound {:?})",
        RUNS.load(std::sync::atomic::Ordering::Relaxed),
        t.elapsed(),
        bound
    );
}

/// A private allocator and one cache of two-object slabs (the locked commit mode).
pub fn setup(cpus: usize, min_partial: usize, cpu_partial_slabs: usize) -> (Kmem, Arc<KmemCache>) {
    setup_mode(
        kmem::cpu::CommitMode::Locked,
        cpus,
        min_partial,
        cpu_partial_slabs,
    )
}

/// As [`setup`], in the rseq commit mode (the fast paths run `src/cpu/percpu/`'s sequences,
/// modelled as running under their model CPU's mutex; slot `i` is model CPU `i`).
pub fn setup_rseq(
    cpus: usize,
    min_partial: usize,
    cpu_partial_slabs: usize,
) -> (Kmem, Arc<KmemCache>) {
    setup_mode(
        kmem::cpu::CommitMode::Rseq,
        cpus,
        min_partial,
        cpu_partial_slabs,
    )
}

/// A private allocator and one cache of two-object slabs with sheaves of 4 objects (the
/// smallest capacity: a sheaf fills one cache line), in commit mode `mode`.
pub fn setup_sheaves(mode: kmem::cpu::CommitMode, cpus: usize) -> (Kmem, Arc<KmemCache>) {
    setup_cfg(mode, cpus, CacheConfig::new().sheaf_capacity(4))
}

fn setup_mode(
    mode: kmem::cpu::CommitMode,
    cpus: usize,
    min_partial: usize,
    cpu_partial_slabs: usize,
) -> (Kmem, Arc<KmemCache>) {
    setup_cfg(
        mode,
        cpus,
        CacheConfig::new()
            .min_partial(min_partial)
            .cpu_partial_slabs(cpu_partial_slabs),
    )
}

fn setup_cfg(mode: kmem::cpu::CommitMode, cpus: usize, cfg: CacheConfig) -> (Kmem, Arc<KmemCache>) {
    let k = Kmem::builder()
        .cpus(cpus)
        .nodes(1)
        .commit_mode(mode)
        .build()
        .expect("kmem");
    assert_eq!(k.commit_mode(), mode);
    let c = k
        .create_cache("loom", OBJ, cfg.min_order(0).max_order(0))
        .expect("cache");
    assert_eq!(
        c.objects_per_slab(),
        2,
        "the models assume two objects per slab"
    );
    (k, Arc::new(c))
}

/// Pins the calling model thread to CPU slot `slot`.
pub fn on_cpu(slot: usize) {
    kmem::cpu::set_current_cpu_for_model(slot);
}

/// The objects the model holds; an object handed out twice panics on insertion.
#[derive(Clone, Default)]
pub struct Live(Arc<Mutex<BTreeSet<usize>>>);

impl Live {
    /// An empty set.
    pub fn new() -> Self {
        Live(Arc::new(Mutex::new(BTreeSet::new())))
    }

    /// Records a freshly allocated object.
    pub fn add(&self, p: NonNull<u8>) -> NonNull<u8> {
        let fresh = self.0.lock().unwrap().insert(p.as_ptr() as usize);
        assert!(fresh, "object {p:p} handed out twice");
        p
    }

    /// Allocates one object from `c` and records it.
    pub fn alloc(&self, c: &KmemCache) -> NonNull<u8> {
        self.add(c.alloc().expect("alloc"))
    }

    /// Forgets `p` (before freeing it).
    pub fn remove(&self, p: NonNull<u8>) {
        let was = self.0.lock().unwrap().remove(&(p.as_ptr() as usize));
        assert!(was, "freeing {p:p}, which the model does not hold");
    }

    /// Forgets and frees `p`.
    pub fn free(&self, c: &KmemCache, p: NonNull<u8>) {
        self.remove(p);
        // SAFETY: `p` was allocated from `c` and is freed once (the set proves both).
        unsafe { c.free(p) };
    }

    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Whether no object is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes and returns every object held.
    pub fn take_all(&self) -> Vec<NonNull<u8>> {
        let all = std::mem::take(&mut *self.0.lock().unwrap());
        all.into_iter()
            .map(|a| NonNull::new(a as *mut u8).unwrap())
            .collect()
    }
}

/// Checks at quiescence (all model threads joined) that the live set and the cache agree.
///
/// With `exact_stats` (no two model threads shared a CPU slot, so no slot counter lost an
/// increment), also checks `alloc_slab - free_slab == num_slabs`.
pub fn check_quiescent(c: &KmemCache, live: &Live, exact_stats: bool) {
    kmem::__loom::check_lists(c).unwrap();
    let info = c.info();
    assert_eq!(
        info.active_objs,
        live.len(),
        "active_objs disagrees with the objects held: {info:?}"
    );
    assert_eq!(info.num_objs, 2 * info.num_slabs, "{info:?}");
    if exact_stats {
        let s = c.stats();
        assert_eq!(
            s.alloc_slab - s.free_slab,
            info.num_slabs as u64,
            "slab counters: {s:?} vs {info:?}"
        );
    }
}

/// Frees everything still held (one new object first, to show the freelists are sound:
/// it must not be one of the objects held), shrinks, and checks that nothing is lost.
pub fn finish(k: &Kmem, c: &KmemCache, live: &Live, exact_stats: bool) {
    check_quiescent(c, live, exact_stats);
    // Two more allocations must not return an object that someone holds.
    let a = live.alloc(c);
    let b = live.alloc(c);
    let _ = (a, b);
    for p in live.take_all() {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(p) };
    }
    c.shrink();
    kmem::__loom::check_lists(c).unwrap();
    let info = c.info();
    assert_eq!(info.active_objs, 0, "objects lost: {info:?}");
    assert_eq!(info.num_slabs, 0, "slabs lost: {info:?}");
    assert_eq!(info.num_objs, 0, "{info:?}");
    let ps = k.page_stats();
    assert_eq!(ps.free_bytes, ps.mapped_bytes, "pages lost: {ps:?}");
}
