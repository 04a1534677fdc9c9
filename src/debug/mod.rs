//! slub_debug for user space: red zones, poisoning, owner tracking, consistency checks on
//! every allocation and free, reports in the kernel's words, and `validate`.
//!
//! # What a debug cache is
//!
//! A cache with any of [`CacheFlags::CONSISTENCY_CHECKS`] (`F`), [`CacheFlags::RED_ZONE`]
//! (`Z`), [`CacheFlags::POISON`] (`P`) or [`CacheFlags::STORE_USER`] (`U`) — from its
//! [`CacheConfig`](crate::CacheConfig) or from `KMEM_DEBUG` (`flags.rs`, `slub_debug`
//! syntax) — is a *debug cache*. Three things change for it:
//!
//! 1. **Layout** (`layout.rs`, `calculate_sizes`): each object gets a left and a right red
//!    zone, its free pointer moves outside the object when the object is poisoned, and two
//!    owner records follow; the stride (`size`) grows accordingly, the object pointer stays
//!    the object's start and keeps the cache's alignment.
//! 2. **Paths** (`paths.rs`): no CPU slab, no CPU freelist, no CPU partial list, no lockless
//!    fast path. Like Linux since 6.2 (`alloc_single_from_partial`, `free_to_partial_list`
//!    for `kmem_cache_debug(s)` caches), every allocation and free takes the slab's node
//!    `list_lock` and does its checks and its slab update under it; slabs are never frozen.
//!    The test that sends a cache there is one load of `CacheInner::debug` at the top of
//!    `slab_alloc` and `do_slab_free` (and the bulk calls), before the commit-mode test: a
//!    cache with no flag runs exactly the fast path it ran before (measured: see
//!    `docs/performance.md`).
//! 3. **Lists**: besides the partial list, each node keeps its debug slabs with no free object
//!    on a *full* list (`n->full`, which the kernel keeps under `SLAB_STORE_USER`), so that
//!    [`KmemCache::validate`](crate::KmemCache::validate) sees every slab.
//!
//! # The bytes (the kernel's values)
//!
//! | bytes | free object | allocated object |
//! |---|---|---|
//! | left and right red zone (`Z`) | `0xbb` `SLUB_RED_INACTIVE` | `0xcc` `SLUB_RED_ACTIVE` |
//! | object (`P`, no constructor, not `TYPESAFE_BY_RCU`) | `0x6b` `POISON_FREE` … then `0xa5` `POISON_END` | the user's (filled with the free pattern when handed out) |
//! | padding, end of slab (`P`) | `0x5a` `POISON_INUSE` | `0x5a` |
//!
//! # The checks (`check.rs`)
//!
//! On allocation (`alloc_debug_processing`), with `F`: the slab's counters are sane
//! (`check_slab`), the object is an object start of the slab (`check_valid_pointer`), and
//! the free object is intact (`check_object` with `0xbb`: red zones, poison, padding, its free
//! pointer inside the slab). On free (`free_debug_processing`), with `F`: the pointer starts an
//! object, the object is not on the slab's freelist (`on_freelist`, which also counts the free
//! objects against `inuse`), and the allocated object is intact (`check_object` with `0xcc`).
//! Then the owner record is written (`U`) and the object is re-coloured (`init_object`). As
//! in the kernel, without `F` nothing is checked on these paths (only laid out and filled);
//! `validate` checks whatever the layout allows. Whatever the flags, a debug free checks that
//! the pointer starts an object and refuses the cheap double frees of the fast path (the
//! object heads its slab's freelist, or `inuse` would underflow).
//!
//! # Reports (`report.rs`)
//!
//! A failed check writes the kernel's report to stderr, formatted on the stack (no
//! allocation: kmem may be the global allocator, and the heap may be what is corrupt):
//!
//! ```text
//! =============================================================================
//! BUG kmalloc-64 (kmem): Right Redzone overwritten
//! -----------------------------------------------------------------------------
//!
//! 0x7f..40-0x7f..40 @offset=64. First byte 0x0 instead of 0xcc
//! Allocated in 0x55.. (/path/to/prog+0x1234) age=3ms cpu=1 tid=4242
//! Slab 0x7f..00 objects=28 used=1 fp=0x7f..98 order=0 node=0
//! Object 0x7f..08 @offset=8 fp=0x0
//!
//! Redzone  0x7f..00: bb bb bb bb bb bb bb bb                          ........
//! Object   0x7f..08: 6b 6b 6b ...
//! ```
//!
//! and then aborts: `kmem: slub_debug: cache "kmalloc-64" is corrupt (Right Redzone
//! overwritten at 0x…); aborting`. The reasons are the kernel's: `Left Redzone overwritten`,
//! `Right Redzone overwritten`, `Poison overwritten`, `End Poison overwritten`, `Object
//! padding overwritten`, `Padding overwritten`, `Object already free`, `Invalid object pointer`,
//! `Freepointer corrupt`, `Freechain corrupt`, `Wrong object count`, `Wrong number of objects`.
//! (The kernel repairs and continues; kmem stops, since its callers cannot be told.)
//! [`KmemCache::validate`](crate::KmemCache::validate) writes the same report but returns the
//! first defect as [`KmemError::CacheCorrupted`](crate::KmemError::CacheCorrupted) instead of
//! aborting.
//!
//! # Files
//!
//! | file | what | kernel |
//! |---|---|---|
//! | `flags.rs` | `KMEM_DEBUG` | `setup_slub_debug`, `kmem_cache_flags` |
//! | `layout.rs` | the stride and the offsets | `calculate_sizes` |
//! | `track.rs` | owner records, the return address | `struct track`, `set_track` |
//! | `check.rs` | the checks and the colouring of objects | `check_object`, `on_freelist`, `init_object`, `*_debug_processing` |
//! | `report.rs` | allocation-free reports | `slab_bug`, `slab_err`, `object_err`, `print_trailer` |
//! | `paths.rs` | the node-only alloc and free under `list_lock`, the full list | `alloc_single_from_partial`, `free_to_partial_list` |
//! | `validate.rs` | walking every slab | `validate_slab_cache` |
//! | `shuffle.rs` | freelist randomisation (`freelist-random` feature) | `shuffle_freelist` |
//! | `failslab.rs` | per-cache fault injection, deterministic by seed (`CacheConfig::failslab`) | `should_failslab` |
//! | `colour.rs` | slab colouring (`CacheConfig::colour`) | SLAB's `colour_next` |
//!
//! Hardening that is not debugging lives here too: `shuffle.rs`, and the free pointer
//! obfuscation of the `freelist-hardened` feature, which is in `sync/mod.rs`
//! (`load_free_ptr`/`store_free_ptr`) and the rseq sequences because every free pointer
//! passes through them.

pub(crate) mod flags;
pub(crate) mod layout;
pub(crate) mod track;

mod check;
mod colour;
mod failslab;
mod paths;
mod report;
pub(crate) mod shuffle;
mod validate;

pub(crate) use track::{alloc_entry, free_entry};

use crate::config::CacheFlags;
use crate::page::{Page, PAGE_SIZE};
use crate::slub::CacheInner;

/// `POISON_INUSE`: padding and the unused end of a slab.
pub(crate) const POISON_INUSE: u8 = 0x5a;
/// `POISON_FREE`: the bytes of a free object.
pub(crate) const POISON_FREE: u8 = 0x6b;
/// `POISON_END`: the last byte of a free object.
pub(crate) const POISON_END: u8 = 0xa5;
/// `SLUB_RED_INACTIVE`: red zones of a free object.
pub(crate) const SLUB_RED_INACTIVE: u8 = 0xbb;
/// `SLUB_RED_ACTIVE`: red zones of an allocated object.
pub(crate) const SLUB_RED_ACTIVE: u8 = 0xcc;

const WORD: usize = core::mem::size_of::<usize>();

/// A defect found by a check: what it is (the kernel's words) and where. The report is already
/// on stderr when one is returned.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Defect {
    pub(crate) kind: &'static str,
    pub(crate) addr: usize,
}

impl CacheInner {
    /// Whether flag `f` is set.
    #[inline]
    pub(crate) fn has(&self, f: CacheFlags) -> bool {
        self.flags.contains(f)
    }

    /// `__OBJECT_POISON`: poisoning that covers the object itself.
    #[inline]
    pub(crate) fn object_poison(&self) -> bool {
        self.has(CacheFlags::POISON)
            && self.ctor.is_none()
            && !self.has(CacheFlags::TYPESAFE_BY_RCU)
    }

    /// `freeptr_outside_object`.
    #[inline]
    pub(crate) fn freeptr_outside_object(&self) -> bool {
        self.geo.offset >= self.geo.inuse
    }

    /// `get_info_end`: where the owner records start, from the object.
    #[inline]
    pub(crate) fn get_info_end(&self) -> usize {
        if self.freeptr_outside_object() {
            self.geo.offset + WORD
        } else {
            self.geo.inuse
        }
    }

    /// `size_from_object`: the stride seen from the object's start.
    #[inline]
    pub(crate) fn size_from_object(&self) -> usize {
        self.geo.size - self.geo.red_left_pad
    }

    /// The first byte of a slab's memory.
    #[inline]
    pub(crate) fn slab_base(slab: &Page) -> usize {
        crate::page::page_address(slab) as usize
    }

    /// The bytes of a slab.
    #[inline]
    pub(crate) fn slab_bytes(slab: &Page) -> usize {
        PAGE_SIZE << slab.info().order()
    }

    /// Where a slab's first object starts, from the slab's base: its colour times
    /// `colour_off` (`CacheConfig::colour`; 0 for other caches).
    #[inline]
    pub(crate) fn slab_colour_bytes(&self, slab: &Page) -> usize {
        slab.info().colour() * self.geo.colour_off
    }

    /// Object `i` of the slab at `base`.
    #[inline]
    pub(crate) fn object_at(&self, base: usize, i: usize) -> usize {
        base + i * self.geo.size + self.geo.red_left_pad
    }

    /// Whether `obj` starts an object of a debug cache's slab (for the free paths' O(1)
    /// pre-check, which knows nothing of the left red zone: see `owning_slab`).
    pub(crate) fn debug_valid_pointer(&self, slab: &Page, obj: usize) -> bool {
        self.check_valid_pointer(slab, obj)
    }
}
