//! Sheaves (Linux 7.0, `struct slab_sheaf`; SLAB's `array_cache` reborn): arrays of free object
//! pointers that sit in front of the slabs, one `main` and one `spare` per CPU slot, and
//! the memory they live in.
//!
//! ```text
//!   KmemCacheCpu.sheaves (SheafSlot)        Sheaf (a power of two of bytes, aligned to it)
//!     head.top     ──▶ into `main`:          size | capacity | next | objects[capacity]
//!                      the first free cell   (size: the count while no slot holds it);
//!                      0: no `main`, or taken by a flush (percpu/array.rs)
//!     spare            under `lock`
//!     lock             the slow paths (try_lock), the fast paths in the locked mode
//! ```
//!
//! The slot holds no pointer to `main` apart from its top: `main` is `top` rounded down to the
//! sheaf size, its count the distance from the first cell (`percpu/array.rs`). So a sheaf's
//! `size` field is its count only while no slot holds it; taking a sheaf out of a slot writes
//! the count its top said.
//!
//! A sheaf is *owned* by exactly one place at a time: a slot (as its `main` or `spare`), a
//! barn list (`barn.rs`), the pool's free list, or the thread that took it out of one of those
//! (to refill or flush it with no lock held). Only a slot's `main` is touched by other threads
//! (the fast paths' sequences, or lock holders in the locked mode); every other owner uses a
//! sheaf with plain loads and stores.
//!
//! The objects in a sheaf are allocated as far as their slabs know (`inuse` counts them) and
//! free as far as the cache's users know: `slabinfo` counts them as free (`teardown.rs`).
//!
//! # Memory
//!
//! Sheaves are carved from page blocks of the cache's own instance ([`SheafPool`]), never
//! from the global allocator (kmem may be it). A block holds at least four sheaves; blocks
//! stay with the cache until it is destroyed. The number of sheaves is bounded: two per CPU
//! slot, the barn shards' limits ([`super::barn`]), and one in flight per thread refilling or
//! flushing.

use crate::cpu::percpu::{ArrayGeo, ArrayHead, ArraySlot, ARRAY_OBJECTS};
use crate::page::{GfpFlags, Page, PAGE_SIZE};
use crate::sync::{Cell, SpinLock};
use core::ptr::{self, NonNull};

/// The largest sheaf capacity a cache may ask for (a sheaf of 8 KiB: a 32-byte head and 1020
/// cells).
pub const MAX_SHEAF_CAPACITY: usize = 1020;

/// A sheaf: an [`ArrayHead`] (count, capacity), a link for the barn and pool lists, then
/// `capacity` object cells at [`ARRAY_OBJECTS`].
#[repr(C)]
pub(crate) struct Sheaf {
    /// The count and capacity (what the sequences read).
    pub(crate) head: ArrayHead,
    /// Next sheaf on a barn list or the pool's free list (the owner's).
    pub(crate) next: Cell<*mut Sheaf>,
    /// Pads the head to [`ARRAY_OBJECTS`] bytes, where the cells start.
    pub(crate) _pad: usize,
}

#[cfg(not(loom))]
const _: () = assert!(core::mem::size_of::<Sheaf>() == ARRAY_OBJECTS);
#[cfg(loom)]
const _: () = assert!(core::mem::size_of::<Sheaf>() <= ARRAY_OBJECTS);

impl Sheaf {
    /// The number of objects in it (a sheaf no slot holds).
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.head.len()
    }

    /// Its capacity.
    #[inline(always)]
    pub(crate) fn capacity(&self) -> usize {
        self.head.capacity
    }

    /// The objects `objects[0 .. len]` of a sheaf the caller owns, as a slice.
    ///
    /// # Safety
    /// The caller owns the sheaf (no one else may change it while the slice lives).
    pub(crate) unsafe fn objects(&self) -> &[NonNull<u8>] {
        // SAFETY: cells `0 .. len` hold non-null object pointers, `len <= capacity` cells follow the head (the pool carved them); the caller's ownership keeps them unchanged.
        unsafe { core::slice::from_raw_parts(self.head.cell(0) as *const NonNull<u8>, self.len()) }
    }

    /// The free cells `objects[len .. capacity]` of a sheaf the caller owns, for a refill.
    ///
    /// # Safety
    /// As [`Self::objects`].
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn free_cells(&self) -> &mut [*mut u8] {
        let n = self.len();
        // SAFETY: cells `len .. capacity` follow the head inside the sheaf's memory; the caller owns the sheaf, so no one else reads or writes them.
        unsafe {
            core::slice::from_raw_parts_mut(self.head.cell(n) as *mut *mut u8, self.capacity() - n)
        }
    }

    /// Sets the count of a sheaf the caller owns.
    pub(crate) fn set_len(&self, n: usize) {
        debug_assert!(n <= self.capacity());
        self.head.set_len(n);
    }

    /// The top a slot holding `this` (with its count) stores (0 for null).
    #[inline(always)]
    pub(crate) fn top(this: *mut Sheaf) -> usize {
        if this.is_null() {
            return 0;
        }
        // SAFETY: a live sheaf its caller owns (not in a slot: its `size` is its count).
        ArrayGeo::top_of(this as *mut ArrayHead, unsafe { (*this).len() })
    }
}

/// The sheaf part of a CPU slot (`struct slub_percpu_sheaves`: `main`, `spare`, the lock).
#[repr(C)]
pub(crate) struct SheafSlot {
    /// `main` (the fast paths' sheaf): its `top`, what the sequences read.
    pub(crate) head: ArraySlot,
    /// The counters of the inline pop and push (`alloc_cpu_sheaf`, `free_cpu_sheaf`), on the
    /// line of `head`: the fast paths touch one line of the slot, not two (the slot's other
    /// counters are lines further on). See `KmemCacheCpu::stat_add`.
    #[cfg(feature = "stats")]
    pub(crate) fast_stats: [crate::sync::AtomicU64; 2],
    /// The spare sheaf, or null (under `lock`).
    spare: Cell<*mut Sheaf>,
    /// Guards `spare`, the choice of `main`, and in the locked mode the fast paths.
    pub(crate) lock: SpinLock<()>,
    /// Objects the next refill from the slabs takes (0: none yet), under `lock`
    /// ([`SheafSlot::next_refill`]).
    refill: Cell<usize>,
    /// The slot's `(top, spare)` at the decay's last look ([`SheafSlot::unchanged_since_last_look`]),
    /// under `lock`.
    seen: Cell<(usize, *mut Sheaf)>,
}

impl SheafSlot {
    /// A slot with no sheaves.
    pub(crate) fn new() -> Self {
        SheafSlot {
            head: ArraySlot::new(),
            #[cfg(feature = "stats")]
            fast_stats: [
                crate::sync::AtomicU64::new(0),
                crate::sync::AtomicU64::new(0),
            ],
            spare: Cell::new(ptr::null_mut()),
            lock: SpinLock::new("kmem CPU sheaf lock", ()),
            refill: Cell::new(0),
            seen: Cell::new((0, ptr::null_mut())),
        }
    }

    /// Whether the slot's `top` and spare are those the previous call saw (then no sheaf
    /// operation of the slot is likely to have happened in between: a pop and a push that
    /// cancel out are missed, which only costs a refill); records them for the next call
    /// (the caller holds `lock`). The decay's CPU-sheaf trim
    /// ([`CacheInner::trim_cpu_sheaves`](super::CacheInner::trim_cpu_sheaves)) asks once per
    /// delay.
    pub(crate) fn unchanged_since_last_look(
        &self,
        g: &crate::sync::SpinGuard<'_, ()>,
        top: usize,
        spare: *mut Sheaf,
    ) -> bool {
        // SAFETY: `seen` is only accessed under `lock`, which the guard proves held.
        let before = unsafe { self.seen.get() };
        self.record_look(g, top, spare);
        before == (top, spare)
    }

    /// Records `(top, spare)` as what the decay's last look saw (the caller holds `lock`): the
    /// trim records the state it leaves.
    pub(crate) fn record_look(
        &self,
        _g: &crate::sync::SpinGuard<'_, ()>,
        top: usize,
        spare: *mut Sheaf,
    ) {
        // SAFETY: `seen` is only accessed under `lock`, which the guard proves held.
        unsafe { self.seen.set((top, spare)) };
    }

    /// Forgets the refill ramp ([`SheafSlot::next_refill`]): the slot's next refill starts
    /// small again (the caller holds `lock`).
    pub(crate) fn reset_refill(&self, _g: &crate::sync::SpinGuard<'_, ()>) {
        // SAFETY: as in `next_refill`.
        unsafe { self.refill.set(0) };
    }

    /// How many objects this slot's next refill from the slabs takes, for sheaves of `cap`:
    /// a quarter of the capacity the first time (at least 4, or `cap` if smaller), twice the
    /// last refill's after that, up to `cap` (the caller holds `lock`).
    ///
    /// A slot that a thread allocates a few objects of a cache on then holds a few objects,
    /// not a whole sheaf's worth taken from the slabs (each pinning its slab's page); a slot
    /// that keeps allocating reaches full refills by its third (tcmalloc grows its per-CPU
    /// capacities, and jemalloc its fill count, for the same reason).
    pub(crate) fn next_refill(&self, _g: &crate::sync::SpinGuard<'_, ()>, cap: usize) -> usize {
        // SAFETY: `refill` is only accessed under `lock`, which the guard proves held.
        let last = unsafe { self.refill.get() };
        let want = if last == 0 {
            cap.div_ceil(4).max(cap.min(4))
        } else {
            last.saturating_mul(2).min(cap)
        };
        // SAFETY: as above.
        unsafe { self.refill.set(want) };
        want
    }

    /// `(top, main, count)`: the slot's top, the sheaf it points into (null: none) and its
    /// count. The sheaf is stable for the holder of `lock`; the count is not, in the rseq mode
    /// (the fast paths move the top): a replace re-checks the top it was computed from.
    #[inline(always)]
    pub(crate) fn main(&self, geo: ArrayGeo) -> (usize, *mut Sheaf, usize) {
        let top = self.head.top();
        let (arr, n) = geo.split(top);
        (top, arr as *mut Sheaf, n)
    }

    /// The `main` sheaf the caller took out of the slot with its top `top` (by
    /// `percpu::take_array`, or under the lock in the locked mode; the slot's top is 0 now):
    /// writes its count into it and returns it (null: none).
    pub(crate) fn own_main(&self, geo: ArrayGeo, top: usize) -> *mut Sheaf {
        let (main, n) = geo.split(top);
        let main = main as *mut Sheaf;
        if !main.is_null() {
            // SAFETY: the top was taken out of the slot: the sheaf is the caller's now.
            unsafe { (*main).set_len(n) };
        }
        main
    }

    /// The spare sheaf (the caller holds `lock`).
    pub(crate) fn spare(&self, _g: &crate::sync::SpinGuard<'_, ()>) -> *mut Sheaf {
        // SAFETY: `spare` is only accessed under `lock`, which the guard proves held.
        unsafe { self.spare.get() }
    }

    /// Sets the spare sheaf (the caller holds `lock`).
    pub(crate) fn set_spare(&self, _g: &crate::sync::SpinGuard<'_, ()>, s: *mut Sheaf) {
        // SAFETY: as in `spare`.
        unsafe { self.spare.set(s) }
    }
}

/// The memory sheaves are carved from (per cache): blocks from the instance's page allocator,
/// cut into sheaves of one power-of-two size (each aligned to it), and a free list. Blocks are
/// chained through their page descriptors' `next` link.
pub(crate) struct SheafPool {
    state: SpinLock<PoolState>,
    /// Bytes per sheaf (a power of two, at least 64).
    sheaf_bytes: usize,
    /// Objects per sheaf (0: the cache has no sheaves).
    pub(crate) capacity: usize,
    /// Order of the pool's blocks.
    order: u32,
}

/// The pool's lists (under its lock).
pub(crate) struct PoolState {
    free: *mut Sheaf,
    blocks: *mut Page,
    /// Sheaves carved so far, and how many are on `free`.
    total: usize,
    nr_free: usize,
}

// SAFETY: the raw pointers name pool memory that only the lock holder touches.
unsafe impl Send for PoolState {}

impl SheafPool {
    /// The pool of a cache whose sheaves hold `capacity` objects (0: none).
    pub(crate) fn new(capacity: usize) -> Self {
        let sheaf_bytes = Self::bytes_for(capacity);
        let mut order = 0;
        while (PAGE_SIZE << order) < sheaf_bytes {
            order += 1;
        }
        SheafPool {
            state: SpinLock::new(
                "kmem sheaf pool lock",
                PoolState {
                    free: ptr::null_mut(),
                    blocks: ptr::null_mut(),
                    total: 0,
                    nr_free: 0,
                },
            ),
            sheaf_bytes,
            capacity,
            order,
        }
    }

    /// Bytes of a sheaf of `capacity` cells (a power of two, at least 64).
    fn bytes_for(capacity: usize) -> usize {
        (ARRAY_OBJECTS + 8 * capacity).next_power_of_two().max(64)
    }

    /// The shape of this pool's sheaves, as the sequences see it.
    pub(crate) fn geo(&self) -> ArrayGeo {
        ArrayGeo::new(self.sheaf_bytes, self.capacity)
    }

    /// The capacity a sheaf asked to hold `capacity` objects gets: the sheaf (a 32-byte head
    /// and the cells) rounded up to a power of two of bytes, the cells filling it (the kernel
    /// rounds to a kmalloc size the same way: 60, 28, 12 and 4 fill 512, 256, 128 and 64
    /// bytes exactly). The same under loom, whose larger model head only makes sheaves larger.
    pub(crate) fn capacity_for(capacity: usize) -> usize {
        const HEAD: usize = 32;
        let bytes = (HEAD + 8 * capacity).next_power_of_two().max(64);
        (bytes - HEAD) / 8
    }

    /// An empty sheaf (`alloc_empty_sheaf`), or `None` when the page allocator has no block.
    pub(crate) fn alloc(&self, pages: &crate::page::PageAllocator) -> Option<*mut Sheaf> {
        let mut st = self.state.lock();
        if st.free.is_null() {
            let page = pages.alloc_pages(self.order, GfpFlags::NONE)?;
            // SAFETY: a block just handed to us; its descriptor's list link is unused by the page allocator while the block is allocated.
            let p = unsafe { page.as_ref() };
            // SAFETY: as above.
            unsafe { p.next().set(st.blocks) };
            st.blocks = page.as_ptr();
            let base = crate::page::page_address(p) as usize;
            let mut at = base;
            while at + self.sheaf_bytes <= base + (PAGE_SIZE << self.order) {
                let s = at as *mut Sheaf;
                // SAFETY: `at .. at + sheaf_bytes` lies inside the block and belongs to no other sheaf; aligned to `sheaf_bytes` (the block is aligned to its size).
                unsafe {
                    ptr::write(
                        s,
                        Sheaf {
                            head: ArrayHead::new(self.capacity),
                            next: Cell::new(st.free),
                            _pad: 0,
                        },
                    )
                };
                st.free = s;
                st.total += 1;
                st.nr_free += 1;
                at += self.sheaf_bytes;
            }
        }
        let s = st.free;
        // SAFETY: on the free list, which the lock guards.
        st.free = unsafe { (*s).next.get() };
        st.nr_free -= 1;
        // SAFETY: ours now.
        unsafe { (*s).set_len(0) };
        Some(s)
    }

    /// Gives an empty sheaf back (`free_empty_sheaf`).
    ///
    /// # Safety
    /// `s` came from [`Self::alloc`] on this pool, the caller owns it, and it holds no object.
    pub(crate) unsafe fn free(&self, s: *mut Sheaf) {
        // SAFETY: the caller owns `s` (contract).
        debug_assert_eq!(unsafe { (*s).len() }, 0);
        let mut st = self.state.lock();
        // SAFETY: ours (contract); linked under the pool lock.
        unsafe { (*s).next.set(st.free) };
        st.free = s;
        st.nr_free += 1;
    }

    /// Gives back to `pages` every block whose sheaves are all free (shrink). Sheaves in use
    /// (installed again since the flush, or in flight) keep their blocks.
    pub(crate) fn trim(&self, pages: &crate::page::PageAllocator) {
        let block_bytes = PAGE_SIZE << self.order;
        let per_block = block_bytes / self.sheaf_bytes;
        let mut st = self.state.lock();
        let st = &mut *st;
        let mut keep_blocks: *mut Page = ptr::null_mut();
        let mut b = st.blocks;
        // SAFETY: the block list (through the descriptors' `next`) and the free list are guarded by the pool lock we hold; a sheaf lies inside the block it was carved from.
        unsafe {
            while !b.is_null() {
                let next_block = (*b).next().get();
                let base = crate::page::page_address(&*b) as usize;
                let mut free_here = 0;
                let mut s = st.free;
                while !s.is_null() {
                    if (s as usize).wrapping_sub(base) < block_bytes {
                        free_here += 1;
                    }
                    s = (*s).next.get();
                }
                let in_use = if cfg!(kmem_mutant = "pool_trim_ignores_in_flight") {
                    // Planted bug (loom-tests): a block with any free sheaf goes, even if a
                    // thread is refilling or flushing another sheaf carved from it.
                    free_here == 0
                } else {
                    free_here < per_block
                };
                if in_use {
                    (*b).next().set(keep_blocks);
                    keep_blocks = b;
                } else {
                    // Rebuild the free list without its sheaves, then give the block back.
                    let mut keep: *mut Sheaf = ptr::null_mut();
                    let mut s = st.free;
                    while !s.is_null() {
                        let next = (*s).next.get();
                        if (s as usize).wrapping_sub(base) >= block_bytes {
                            (*s).next.set(keep);
                            keep = s;
                        }
                        s = next;
                    }
                    st.free = keep;
                    st.total -= per_block;
                    st.nr_free -= free_here;
                    pages.free_pages(NonNull::new_unchecked(b), self.order);
                }
                b = next_block;
            }
        }
        st.blocks = keep_blocks;
    }

    /// Gives every block back to `pages` (cache destroy).
    ///
    /// # Safety
    /// No sheaf of this pool is used again.
    pub(crate) unsafe fn release(&self, pages: &crate::page::PageAllocator) {
        let mut st = self.state.lock();
        let mut b = st.blocks;
        st.blocks = ptr::null_mut();
        st.free = ptr::null_mut();
        st.total = 0;
        st.nr_free = 0;
        drop(st);
        while !b.is_null() {
            // SAFETY: a block of this pool (its descriptor links the list); no sheaf is used again (contract).
            let next = unsafe { (*b).next().get() };
            // SAFETY: the block came from `pages` at `self.order` and is freed once.
            unsafe { pages.free_pages(NonNull::new_unchecked(b), self.order) };
            b = next;
        }
    }

    /// The pool lock, for the fork handlers.
    #[cfg_attr(any(loom, miri), allow(dead_code))]
    pub(crate) fn lock_for_fork(&self) -> &SpinLock<PoolState> {
        &self.state
    }
}
