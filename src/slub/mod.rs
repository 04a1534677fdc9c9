//! SLUB: the data model of a cache and the protocols that move objects between CPU freelists,
//! slabs, partial lists and the page allocator. Names follow `mm/slub.c`.
//!
//! # Data model (this file: `struct kmem_cache`; `slub_def.h` in the kernel)
//!
//! ```text
//! CacheInner (struct kmem_cache): geometry, ctor, flags, in one OS mapping followed by
//!  ├─ cpu_slab[nr_cpus]  KmemCacheCpu (cpu_slab.rs): {freelist, tid} (16-byte CAS), slab,
//!  │                     partial list, slot lock, stats
//!  └─ node[nr_nodes]     KmemCacheNode (node.rs): list_lock, partial list (+ a debug cache's full list), totals
//! Page (struct page / struct slab, slab.rs; 64 B, out of band): {freelist, counters}, cache,
//!  list links, info
//! ```
//!
//! # Files
//!
//! | file | what | kernel |
//! |---|---|---|
//! | `mod.rs` | `CacheInner`, its creation and accessors; lock order; slab states | `slub_def.h` |
//! | `geometry.rs` | sizes, order, objects per slab, limits | `calculate_sizes`, `calc_slab_order` |
//! | `slab.rs` | `struct slab` counters, free pointer, exact division | `struct slab` |
//! | `cpu_slab.rs` | a CPU slot and its tid rule; the fast paths' loads and commits | `struct kmem_cache_cpu` |
//! | `node.rs` | the node partial list | `struct kmem_cache_node` |
//! | `alloc.rs` | fast path and `___slab_alloc` | `slab_alloc_node`, `___slab_alloc`, `new_slab` |
//! | `free.rs` | fast path, object checks, `__slab_free` | `do_slab_free`, `__slab_free` |
//! | `partial.rs` | CPU partial lists, deactivation | `put_cpu_partial`, `deactivate_slab` |
//! | `bulk.rs` | bulk alloc/free | `kmem_cache_alloc_bulk`, `kmem_cache_free_bulk` |
//! | `teardown.rs` | flush, shrink, destroy, slabinfo | `flush_all`, `__kmem_cache_shrink` |
//! | `sheaf.rs` | a sheaf, a slot's sheaves, the memory sheaves live in | `struct slab_sheaf`, `slub_percpu_sheaves` |
//! | `barn.rs` | a node's stock of full and empty sheaves, one shard per CPU slot | `struct node_barn` |
//! | `pcs.rs` | the sheaf policy: alloc, free, barn trades, refill, flush | `alloc_from_pcs`, `free_to_pcs` |
//!
//! `impl CacheInner` is split across `alloc.rs`, `free.rs`, `partial.rs`, `bulk.rs` and
//! `teardown.rs` by protocol, so that each file reads as one part of `mm/slub.c`; the struct and
//! the accessors every protocol uses are here.
//!
//! # Lock order
//!
//! ```text
//!   allocator registry lock          (cache create/destroy, slabinfo)
//!     -> CPU slot lock               (kmem_cache_cpu: slow paths of that slot)
//!       -> CPU sheaf lock            (the slot's sheaves: their slow paths; try_lock only,
//!                                     except flush and slabinfo)
//!         -> sheaf pool lock         (carving sheaves: may allocate pages)
//!           -> node list_lock        (kmem_cache_node: the partial list)
//!             -> page allocator lock (one per node; never calls out)
//!   barn shard lock                  (a leaf: nothing is taken under it; one at a time)
//! ```
//! A sheaf lock is never held across a refill or a flush of a sheaf (`alloc_bulk` and
//! `free_bulk` take CPU slot locks): the sheaf is taken out, the lock dropped.
//! The fast paths take no lock. The slot lock is dropped across `new_slab` (pages, page faults,
//! the constructor): see `CacheInner::new_slab_unlocked` (`alloc.rs`). No path allocates through the
//! global allocator while holding any of these locks.
//!
//! # The fast paths (`CacheInner::slab_alloc`, `CacheInner::do_slab_free`)
//!
//! Allocation reads the slot's `{freelist, tid}` in one 16-byte load, reads the first object's
//! free pointer (speculatively: the object may meanwhile be handed to someone else, whose writes
//! race with this read exactly like a seqlock reader's), and swings `{object, tid}` to
//! `{next, next_tid}` with one CAS. Any change to the slot since the load advanced the tid, so a
//! stale `next` can never be installed. Free links the object in front of the freelist with the
//! same CAS, but only if the object's slab is the slot's current slab; otherwise it goes to
//! `CacheInner::slab_free_slow`.
//!
//! # Slab states
//!
//! ```text
//!            new_slab                     get_freelist finds it empty
//!   (pages) ---------> CPU slab (frozen) ------------------------------> full, no list
//!                        ^    |  deactivate_slab                            |
//!     get_partial_node   |    v                      free into full slab    |
//!   node partial list <--+-- unfrozen ---------------------------------------+
//!     (unfrozen)     \                     (has_cpu_partial: freeze it ----> CPU partial list
//!                     \                                                       (frozen))
//!                      `--> discard_slab when empty and the node keeps min_partial already
//! ```
//! Each arrow that changes list membership is taken by a `{freelist, counters}` CAS on the slab
//! with the node's `list_lock` held *before* the CAS whenever the outcome puts the slab on or
//! takes it off a node list (see `node.rs` for the invariant).

pub(crate) mod barn;
pub(crate) mod cpu_slab;
pub(crate) mod geometry;
pub(crate) mod node;
pub(crate) mod sheaf;
pub(crate) mod slab;

mod alloc;
mod bulk;
mod free;
mod partial;
mod pcs;
pub(crate) mod tag_id;
mod teardown;
mod view;

#[cfg_attr(loom, allow(unused_imports))] // kmalloc's (not built under loom)
pub(crate) use view::PcsView;

use crate::config::MAX_CACHE_NAME;
use crate::config::{CacheConfig, CacheFlags};
use crate::cpu::percpu::{ArraySlot, ArraySlots, SlotHead, Slots};
use crate::error::KmemError;
use crate::instance::KmemShared;
use crate::os;
use crate::page::{Page, PAGE_SIZE};
use crate::stats::{CacheStats, NR_STAT_ITEMS};
use crate::sync::{AtomicBool, AtomicU16, AtomicU8, AtomicUsize, Cell, Ordering};
use barn::BarnShard;
use core::ptr::{self, NonNull};
use cpu_slab::{KmemCacheCpu, TidStep};
use geometry::Geometry;
use node::KmemCacheNode;
use sheaf::SheafPool;
use slab::ExactDiv;

/// A frozen slab and the whole freelist taken from it, both owned by the caller: what
/// `get_partial`, `new_slab` and `refill` hand to a CPU slot (the kernel passes the same pair
/// around `___slab_alloc` as `slab` and `freelist`).
#[derive(Clone, Copy)]
pub(crate) struct FrozenSlab {
    /// The slab (frozen by the caller).
    pub(crate) slab: *mut Page,
    /// Its free objects, linked through their free pointers; 0 when it has none.
    pub(crate) freelist: usize,
}

/// The objects of a fresh slab that [`CacheInner::init_slab`] hands to its caller by address
/// instead of linking them: `count` objects from `first`, one object size apart, which kmem
/// never wrote. A page of the slab that holds only such objects (and no free pointer) stays
/// untouched, so not resident, until the objects' user writes it: a bulk allocation or a
/// sheaf refill that takes a whole new slab of a multi-page class touches only what it uses.
#[derive(Clone, Copy, Default)]
pub(crate) struct Taken {
    /// The first object (0 when `count` is 0).
    pub(crate) first: usize,
    /// How many.
    pub(crate) count: usize,
}

/// What [`CacheInner::new_slab_unlocked`] returns: slot `cpu`, locked (`guard`) and detached
/// with `tid`, and a new frozen `slab` whose whole `freelist` the caller owns, as it owns the
/// `taken` objects.
struct NewSlab<'a> {
    cpu: &'a KmemCacheCpu,
    guard: crate::sync::SpinGuard<'a, ()>,
    pub(crate) slab: *mut Page,
    freelist: usize,
    taken: Taken,
    tid: u64,
}

// The sheaf fast paths' fields share the first cache line of a cache.
#[cfg(not(loom))]
const _: () = assert!(
    core::mem::offset_of!(CacheInner, slab_tag) < 64
        && core::mem::offset_of!(CacheInner, check_size) + 4 <= 64
        && core::mem::align_of::<CacheInner>() <= 64
);

/// [`CacheInner::pcs_mode`]: the cache uses its sheaves.
pub(crate) const PCS_ON: u8 = 1;
/// [`CacheInner::pcs_mode`]: the allocation fast path pops the sheaf inline (rseq mode).
pub(crate) const PCS_FAST_ALLOC: u8 = 2;
/// [`CacheInner::pcs_mode`]: the free fast path pushes inline (rseq mode, one node).
pub(crate) const PCS_FAST_FREE: u8 = 4;

/// The [`CacheInner::pcs_mode`] of a cache whose sheaves are `on`, in the rseq mode or not,
/// with `nr_nodes` nodes.
pub(crate) fn pcs_mode(on: bool, rseq: bool, nr_nodes: usize) -> u8 {
    match (on, rseq, nr_nodes == 1) {
        (false, _, _) => 0,
        (true, false, _) => PCS_ON,
        (true, true, false) => PCS_ON | PCS_FAST_ALLOC,
        (true, true, true) => PCS_ON | PCS_FAST_ALLOC | PCS_FAST_FREE,
    }
}

/// The shared state of one cache (`struct kmem_cache`). Lives in its own OS mapping (or a
/// [`MetaArena`]'s piece), followed by its CPU slots and its nodes.
#[repr(C)]
pub(crate) struct CacheInner {
    // ---- the sheaf fast paths and the free checks: the first cache line (the metadata
    // starts page- or 128-byte aligned), so a `Kmalloc` alloc or free reads one line of its
    // cache ----
    /// The slots' sheaf parts as the array sequences see them.
    pub(crate) sheaf_slots: ArraySlots<{ KmemCacheCpu::STRIDE }>,
    /// Exact division by `geo.size` for the free path's object-boundary check
    /// ([`CacheInner::starts_object`]).
    pub(crate) size_div: ExactDiv,
    /// The free check's end test: `off + check_size <= slab bytes`. `geo.size`, or, for a
    /// coloured cache (`CacheConfig::colour`), a value no offset passes (`u32::MAX`):
    /// the inline check knows no colour, so every free of a coloured cache is checked, with
    /// the slab's colour, in the cold path.
    pub(crate) check_size: u32,
    /// How the fast paths use the sheaves now, one byte for one load: [`PCS_ON`] (the cache
    /// uses its sheaves: only ever with a capacity; a sheaf cache can be switched to the
    /// cpu-slab design and back, [`CacheInner::set_sheaves`]), [`PCS_FAST_ALLOC`] (`PCS_ON` in
    /// the rseq mode: the allocation pops inline), [`PCS_FAST_FREE`] (`PCS_FAST_ALLOC` with one
    /// node: the free pushes inline; with several the node test is the out-of-line path's).
    pub(crate) pcs_mode: AtomicU8,
    /// One of the global instance's published kmalloc caches (set once, before publication;
    /// kmalloc caches are never destroyed): the C ABI's `free` accepts its objects.
    pub(crate) is_kmalloc: AtomicBool,
    /// The tag id of this cache's slabs (`page::slab_tag`, `tag_id.rs`): a kmalloc class's
    /// index plus one, an id of its own for a sheaf cache without debug flags or colours, 0
    /// for none. Set at creation, and for a kmalloc cache once more before it is published;
    /// always before the cache has a slab.
    pub(crate) slab_tag: AtomicU16,
    // ---- the cpu-slab fast paths ----
    /// `nr_cpus` slots, each on its own cache lines.
    pub(crate) cpu_slab: *const KmemCacheCpu,
    pub(crate) nr_cpus: usize,
    /// rseq mode: the fast paths run `cpu/percpu/`'s sequences on `slots` (the same slots).
    pub(crate) rseq: bool,
    /// A debug cache (any slub_debug flag): every allocation and free takes the node-only
    /// paths of `debug/paths.rs`. Such a cache has `rseq == false`, so the fast paths test
    /// this only after the rseq test (an rseq-mode cache pays nothing for it).
    pub(crate) debug: bool,
    pub(crate) slots: Slots<Page>,
    /// Offset of the free pointer inside an object.
    pub(crate) offset: usize,
    pub(crate) tid_step: TidStep,
    /// Sheaves: `pool.capacity` objects per sheaf, 0 when the cache uses the cpu-slab design
    /// only; the slots' sheaf parts as the array sequences see them; one barn shard per slot
    /// (a node's barn is its slots' shards, `barn.rs`).
    pub(crate) pool: SheafPool,
    /// Objects of the `TYPESAFE_BY_RCU` slabs handed to a collector and not yet released
    /// (free objects of slabs on no list: `slabinfo` counts them as free).
    pub(crate) handed_over_objs: AtomicUsize,
    pub(crate) barn: *const BarnShard,
    // ---- slow paths ----
    pub(crate) geo: Geometry,
    pub(crate) flags: CacheFlags,
    pub(crate) ctor: Option<fn(NonNull<u8>)>,
    pub(crate) node: *const KmemCacheNode,
    pub(crate) nr_nodes: usize,
    pub(crate) kmem: *const KmemShared,
    /// Registry links (under the allocator's registry lock).
    pub(crate) reg_prev: Cell<*const CacheInner>,
    pub(crate) reg_next: Cell<*const CacheInner>,
    name_len: usize,
    name_buf: [u8; MAX_CACHE_NAME],
    /// Bytes of the cache's own metadata mapping; 0 for a cache placed in a [`MetaArena`]
    /// (its bytes belong to the arena, which is never unmapped).
    map_size: usize,
    /// `freelist-random`: the cache's permutation of `0..random_seq_len` (in this mapping;
    /// null without the feature and for debug caches), and its secret.
    pub(crate) random_seq: *const u16,
    pub(crate) random_seq_len: usize,
    pub(crate) random: u64,
    /// `failslab` (`debug/failslab.rs`): the injection and the allocations counted so far.
    pub(crate) failslab: crate::page::FaultInjection,
    pub(crate) failslab_calls: crate::sync::AtomicU64,
    /// Slab colouring (`CacheConfig::colour`): the colour the next new slab takes
    /// (`colour_next`, modulo the colours its unused tail allows).
    pub(crate) colour_next: crate::sync::AtomicUsize,
}

/// Caches created so far, for [`meta_colour`].
static META_COLOURS: crate::sync::global::AtomicUsize = crate::sync::global::AtomicUsize::new(0);

/// How far the next cache's slots (and what follows them) are moved into the slack at the end
/// of its metadata mapping: a multiple of 64 bytes, at most `slack`, different for consecutive
/// caches.
///
/// A cache's metadata (outside a [`MetaArena`]) is a page-aligned mapping of its own with
/// `CacheInner` first, so without this each cache's slot for CPU `c` sat at the same offset in its page, and the
/// lines the inline paths write (a slot's first line: the sheaf's `top` and its counters) of
/// every cache fell into one set of the L1 data cache (its index is address bits 6–11):
/// eight ways for the twenty classes a mixed-size workload uses on each CPU. Moving them costs
/// no memory: the slack is the unused end of the last page.
fn meta_colour(slack: usize) -> usize {
    let colours = slack / 64 + 1;
    let n = META_COLOURS.fetch_add(1, crate::sync::global::Ordering::Relaxed);
    (n % colours.min(64)) * 64
}

/// Shared pages for the metadata of caches that live as long as the process (the global
/// instance's kmalloc caches): each cache takes the next `used` bytes, rounded to 128, instead
/// of a mapping of whole pages of its own.
///
/// With two CPUs a kmalloc cache's metadata (the cache, its slots, node and barn shards) is
/// 1 792 bytes: 33 caches took 33 pages, all resident, and now take 15. The
/// caches sit at different offsets of their pages by construction (1 792 bytes apart), so their
/// slots' hot lines spread over the L1 data cache's sets without [`meta_colour`]. A cache
/// that does not fit the arena's rest gets a mapping of its own, as any other cache.
pub(crate) struct MetaArena {
    /// The next free byte (128-byte aligned) of the current mapping, null before the first.
    next: *mut u8,
    /// Bytes left in the current mapping from `next`.
    left: usize,
}

// The arena's pieces are 128-byte aligned: enough for every part of a cache's metadata.
const _: () = assert!(
    core::mem::align_of::<CacheInner>() <= 128
        && core::mem::align_of::<KmemCacheCpu>() <= 128
        && core::mem::align_of::<KmemCacheNode>() <= 128
        && core::mem::align_of::<BarnShard>() <= 128
        && core::mem::align_of::<PcsView>() <= 128
);

impl MetaArena {
    /// Bytes the arena maps at a time (a cache larger than a quarter of it gets its own:
    /// with sheaves, a cache takes about 1 KiB plus 576 bytes per CPU, so up to about 110
    /// CPUs fit). Pages of a mapping that no cache reaches are never touched, so not
    /// resident.
    pub(crate) const CHUNK: usize = 256 << 10;

    /// An arena with no pages yet.
    #[cfg_attr(loom, allow(dead_code))] // kmalloc's, which loom builds do not use
    pub(crate) const fn new() -> Self {
        MetaArena {
            next: ptr::null_mut(),
            left: 0,
        }
    }

    /// `bytes` (rounded up to 128) of zeroed memory, never freed; `None` when `bytes` is too
    /// large for the arena or the OS has no memory (the caller then maps its own).
    pub(crate) fn take(&mut self, bytes: usize) -> Option<*mut u8> {
        let bytes = bytes.next_multiple_of(128);
        if bytes > Self::CHUNK / 4 {
            return None;
        }
        if self.left < bytes {
            // The rest of the previous mapping stays unused (and untouched: not resident).
            self.next = os::map(Self::CHUNK, PAGE_SIZE)?.as_ptr();
            self.left = Self::CHUNK;
        }
        let p = self.next;
        // SAFETY: `bytes <= left`: the result stays inside the mapping (or one past its end).
        self.next = unsafe { p.add(bytes) };
        self.left -= bytes;
        Some(p)
    }
}

// SAFETY: all shared mutable state inside is reached through atomics, `Cell`s under locks, or the
// CPU slots' and nodes' own synchronisation; the raw pointers name memory that lives as long as
// the cache.
unsafe impl Send for CacheInner {}
// SAFETY: as above.
unsafe impl Sync for CacheInner {}

impl CacheInner {
    /// Creates a cache and returns it, unregistered: its metadata in `arena` when one is given
    /// and has room (such a cache is never destroyed: [`Self::unmap`] aborts for one), else in
    /// a mapping of its own.
    pub(crate) fn create(
        kmem: &KmemShared,
        name: &str,
        object_size: usize,
        cfg: &CacheConfig,
        arena: Option<&mut MetaArena>,
    ) -> Result<NonNull<CacheInner>, KmemError> {
        if name.is_empty() {
            return Err(KmemError::InvalidName {
                name: String::new(),
                reason: "must not be empty",
            });
        }
        if name.len() > MAX_CACHE_NAME {
            return Err(KmemError::InvalidName {
                name: name.chars().take(MAX_CACHE_NAME).collect(),
                reason: "longer than 64 bytes",
            });
        }
        let nr_cpus = kmem.nr_cpus;
        let nr_nodes = kmem.nr_nodes;
        // KMEM_DEBUG (slub_debug syntax) adds its flags for this name (debug/flags.rs).
        let mut cfg = cfg.clone();
        cfg.flags = cfg.flags | crate::debug::flags::env_flags_for(name);
        let cfg = &cfg;
        // failslab takes the debug paths too (its test is there, off every fast path).
        let debug = cfg.flags.0 & CacheFlags::DEBUG != 0
            || cfg.failslab != crate::page::FaultInjection::None;
        let geo = Geometry::compute(name, object_size, cfg, nr_cpus)?;

        let sheaf_capacity = match cfg.sheaf_capacity {
            0 => 0,
            n => SheafPool::capacity_for(n),
        };
        // One barn shard per slot (`barn.rs`), none without sheaves.
        let nr_barns = if sheaf_capacity != 0 { nr_cpus } else { 0 };
        let seq_len = if debug { 0 } else { geo.oo.objects as usize };
        // The layout after `CacheInner`, its slots starting `cpu_off` bytes in: the end of
        // the random sequence (the mapping's used bytes), and the offsets of the parts.
        let layout = |cpu_off: usize| {
            let node_off = cpu_off + nr_cpus * core::mem::size_of::<KmemCacheCpu>();
            let node_off = node_off.next_multiple_of(128);
            let barn_off =
                (node_off + nr_nodes * core::mem::size_of::<KmemCacheNode>()).next_multiple_of(128);
            let seq_off = barn_off + nr_barns * core::mem::size_of::<BarnShard>();
            let end = seq_off + crate::debug::shuffle::random_seq_bytes(seq_len);
            (end, node_off, barn_off, seq_off)
        };
        let first_off = core::mem::size_of::<CacheInner>().next_multiple_of(128);
        let used = layout(first_off).0;
        let placed = arena.and_then(|a| a.take(used));
        let (base, map_size, cpu_off) = if let Some(base) = placed {
            (base, 0, first_off)
        } else {
            let map_size = used.next_multiple_of(PAGE_SIZE);
            // Moved by a colour that still fits the pages (the 128-byte roundings of the
            // parts after the slots may take more than the colour itself: then a smaller one).
            let mut cpu_off = first_off + meta_colour(map_size - used);
            while layout(cpu_off).0 > map_size {
                cpu_off -= 64;
            }
            let base = os::map(map_size, PAGE_SIZE)
                .ok_or(KmemError::OutOfMemory {
                    what: "cache metadata",
                    bytes: map_size,
                })?
                .as_ptr();
            (base, map_size, cpu_off)
        };
        let (_, node_off, barn_off, seq_off) = layout(cpu_off);
        let tid_step = kmem.tid_step;
        // `base` is fresh, zeroed memory of at least `layout(cpu_off).0` bytes, 128-byte aligned
        // (its own page-aligned mapping, or an arena's piece); every write below
        // lands inside it at an offset aligned for its type (128-byte multiples for the
        // 64-byte-aligned slot and node types).
        // SAFETY: each write below stays inside the fresh `base` memory (its own mapping or the
        // arena's piece, both at least `layout(cpu_off).0` bytes), aligned for its type.
        unsafe {
            let cpus = base.add(cpu_off) as *mut KmemCacheCpu;
            for i in 0..nr_cpus {
                ptr::write(
                    cpus.add(i),
                    KmemCacheCpu::new(tid_step.init_tid(i), i, kmem.rseq && !debug),
                );
            }
            let nodes = base.add(node_off) as *mut KmemCacheNode;
            for i in 0..nr_nodes {
                ptr::write(nodes.add(i), KmemCacheNode::new());
            }
            let barns = base.add(barn_off) as *mut BarnShard;
            for i in 0..nr_barns {
                // The shard's limits split its node's bound among the node's slots.
                let nid = kmem.slot_node(i);
                let on_node = (0..nr_cpus).filter(|&j| kmem.slot_node(j) == nid).count();
                let (full, empty) = barn::shard_limits(on_node);
                ptr::write(barns.add(i), BarnShard::new(full, empty));
            }
            let random = crate::debug::shuffle::cache_random();
            let random_seq = if crate::debug::shuffle::random_seq_bytes(seq_len) != 0 {
                let seq = base.add(seq_off) as *mut u16;
                crate::debug::shuffle::init_random_seq(seq, seq_len, random);
                seq as *const u16
            } else {
                ptr::null()
            };
            let mut name_buf = [0u8; MAX_CACHE_NAME];
            name_buf[..name.len()].copy_from_slice(name.as_bytes());
            let pool = SheafPool::new(sheaf_capacity);
            let sheaf_geo = pool.geo();
            let inner = base as *mut CacheInner;
            ptr::write(
                inner,
                CacheInner {
                    cpu_slab: cpus,
                    nr_cpus,
                    // A debug cache never runs a fast path: its (unused) slots take the locked
                    // protocol, and the rseq test below stays the fast paths' only test.
                    rseq: kmem.rseq && !debug,
                    debug,
                    // A slot starts with its `SlotHead` (`repr(C)`, first field).
                    slots: Slots::new(
                        cpus as *const SlotHead<Page>,
                        core::mem::size_of::<KmemCacheCpu>(),
                        nr_cpus,
                    ),
                    pool,
                    // A debug cache checks every object on the node-only paths: no sheaves.
                    pcs_mode: AtomicU8::new(pcs_mode(
                        sheaf_capacity != 0 && !debug,
                        kmem.rseq,
                        nr_nodes,
                    )),
                    is_kmalloc: AtomicBool::new(false),
                    // Frees check a sheaf cache's objects with the tag (`KmemCache::free`) when
                    // they push inline (rseq mode, one node: both fixed for the instance); a
                    // coloured cache's objects fail the inline object test anyway.
                    slab_tag: AtomicU16::new(
                        if sheaf_capacity != 0
                            && !debug
                            && geo.colour_off == 0
                            && kmem.rseq
                            && nr_nodes == 1
                        {
                            tag_id::take()
                        } else {
                            0
                        },
                    ),
                    handed_over_objs: AtomicUsize::new(0),
                    // The sheaf part of each slot, at a fixed offset in it.
                    sheaf_slots: ArraySlots::new(
                        (cpus as *const u8).add(KmemCacheCpu::SHEAVES_OFFSET) as *const ArraySlot,
                        nr_cpus,
                        sheaf_geo,
                    ),
                    barn: barns,
                    offset: geo.offset,
                    tid_step,
                    size_div: ExactDiv::new(geo.size),
                    // A debug cache's objects start `red_left_pad` into their slots: its
                    // pointers fail the inline check and are checked (and accepted) in the
                    // cold path, which knows the padding.
                    check_size: if geo.colour_off != 0 {
                        u32::MAX
                    } else {
                        // Objects are at most a slab, which is at most 4 MiB.
                        geo.size as u32
                    },
                    geo,
                    flags: cfg.flags,
                    ctor: cfg.ctor,
                    node: nodes,
                    nr_nodes,
                    kmem,
                    reg_prev: Cell::new(ptr::null()),
                    reg_next: Cell::new(ptr::null()),
                    name_len: name.len(),
                    name_buf,
                    map_size,
                    random_seq,
                    random_seq_len: seq_len,
                    random,
                    failslab: cfg.failslab,
                    failslab_calls: crate::sync::AtomicU64::new(0),
                    colour_next: crate::sync::AtomicUsize::new(0),
                },
            );
            Ok(NonNull::new_unchecked(inner))
        }
    }

    /// Whether the cache's metadata is a piece of a [`MetaArena`] rather than a mapping of its
    /// own.
    pub(crate) fn in_arena(&self) -> bool {
        self.map_size == 0
    }

    /// Unmaps the cache's metadata.
    ///
    /// # Safety
    /// No slab of this cache exists any more and no one will touch the cache again.
    pub(crate) unsafe fn unmap(this: NonNull<CacheInner>) {
        // Drop the slots and nodes (loom objects need it) before the mapping goes.
        // SAFETY: the caller guarantees exclusivity (no slab left, no further use of the cache).
        unsafe {
            let inner = this.as_ref();
            let size = inner.map_size;
            if size == 0 {
                // In a MetaArena (`destroy` refuses those first): never unmapped.
                crate::os::abort_msg(&[
                    "kmem: internal error: a cache placed in the metadata arena was unmapped",
                ]);
            }
            for i in 0..inner.nr_cpus {
                ptr::drop_in_place(inner.cpu_slab.add(i) as *mut KmemCacheCpu);
            }
            for i in 0..inner.nr_nodes {
                ptr::drop_in_place(inner.node.add(i) as *mut KmemCacheNode);
            }
            if inner.pool.capacity != 0 {
                for i in 0..inner.nr_cpus {
                    ptr::drop_in_place(inner.barn.add(i) as *mut BarnShard);
                }
            }
            ptr::drop_in_place(this.as_ptr());
            os::unmap(this.cast(), size, PAGE_SIZE);
        }
    }

    /// The cache's name.
    pub(crate) fn name(&self) -> &str {
        // SAFETY: copied from a `&str` of exactly `name_len` bytes at creation.
        unsafe { core::str::from_utf8_unchecked(&self.name_buf[..self.name_len]) }
    }

    /// The allocator this cache belongs to.
    #[inline(always)]
    pub(crate) fn kmem(&self) -> &KmemShared {
        // SAFETY: the allocator outlives its caches (every handle holds a reference).
        unsafe { &*self.kmem }
    }

    /// Slot `i`.
    #[inline(always)]
    pub(crate) fn cpu(&self, i: usize) -> &KmemCacheCpu {
        // Cannot fire: every caller passes `this_cpu`'s in-range slot or loops over `nr_cpus`.
        debug_assert!(i < self.nr_cpus);
        // SAFETY: `i < nr_cpus`; the slot array lives as long as the cache.
        unsafe { &*self.cpu_slab.add(i) }
    }

    /// The slot of the CPU this thread runs on (or last ran on: a stale answer only costs
    /// speed, see `cpu_slab.rs`).
    #[inline(always)]
    pub(crate) fn this_cpu(&self) -> &KmemCacheCpu {
        let cpu = crate::cpu::current_cpu();
        let n = self.nr_cpus;
        // `n >= 1` (the builder refuses 0 slots): no division by zero, and `slot < n`.
        let slot = crate::cpu::slot_of(cpu, n);
        self.cpu(slot)
    }

    /// The slot at `at`, an address a sequence on `self.slots` returned.
    #[inline(always)]
    pub(crate) fn cpu_at(&self, at: usize) -> &KmemCacheCpu {
        // SAFETY: the sequences return the address of one of `self.slots`, which are this cache's `KmemCacheCpu`s (each starts with its `SlotHead`), live as long as the cache.
        unsafe { &*(at as *const KmemCacheCpu) }
    }

    /// The index of slot `c`.
    pub(crate) fn slot_index(&self, c: &KmemCacheCpu) -> usize {
        // SAFETY: `c` is one of this cache's slots, so both pointers are in the same array.
        unsafe { (c as *const KmemCacheCpu).offset_from(self.cpu_slab) as usize }
    }

    /// Node `n`.
    #[inline]
    pub(crate) fn node(&self, n: usize) -> &KmemCacheNode {
        // Cannot fire: `n` is a loop index below `nr_nodes`, a node checked against it, or the
        // node of one of this cache's slabs, which `init_slab` set from such an index.
        debug_assert!(n < self.nr_nodes);
        // SAFETY: `n < nr_nodes`; the node array lives as long as the cache.
        unsafe { &*self.node.add(n) }
    }

    /// Whether allocations and frees use the sheaves now.
    #[inline(always)]
    pub(crate) fn use_sheaves(&self) -> bool {
        self.pcs_mode.load(Ordering::Relaxed) & PCS_ON != 0
    }

    /// Switches a sheaf cache between its sheaves and the cpu-slab design (for comparisons:
    /// `Kmalloc::set_sheaves`). Switching off flushes every sheaf; an operation that saw the
    /// old setting may still put an object into a sheaf, where it stays free and counted
    /// until the next flush. Returns whether the cache now uses sheaves (never, without a
    /// capacity, nor for a slub_debug cache, whose objects are all checked on the node-only
    /// paths). A kmalloc cache is switched only with all the others, by
    /// [`kmalloc_set_sheaves`](crate::kmalloc_set_sheaves), which also withdraws the inline
    /// paths' views first (`kmalloc/mod.rs`): the views do not follow one cache's switch.
    pub(crate) fn set_sheaves(&self, on: bool) -> bool {
        if self.pool.capacity == 0 || self.debug {
            return false;
        }
        let mode = pcs_mode(on, self.rseq, self.nr_nodes);
        self.pcs_mode.store(mode, Ordering::Relaxed);
        if !on {
            self.flush_sheaves();
        }
        on
    }

    /// The barn shards (one per slot, `barn.rs`; none when the cache has no sheaves).
    pub(crate) fn barns(&self) -> &[BarnShard] {
        let n = if self.pool.capacity != 0 {
            self.nr_cpus
        } else {
            0
        };
        // SAFETY: `n` shards were written at `barn` when the cache was created (none without sheaves); they live as long as the cache.
        unsafe { core::slice::from_raw_parts(self.barn, n) }
    }

    /// Whether per-CPU partial lists are in use.
    #[inline]
    pub(crate) fn has_cpu_partial(&self) -> bool {
        self.geo.cpu_partial_slabs > 0
    }

    /// Sums every slot's counters.
    pub(crate) fn stats(&self) -> CacheStats {
        let mut sum = [0u64; NR_STAT_ITEMS];
        for i in 0..self.nr_cpus {
            self.cpu(i).add_stats(&mut sum);
        }
        CacheStats::from_array(&sum)
    }
}
