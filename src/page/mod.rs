//! The buddy page allocator: kmem's `mm/page_alloc.c`.
//!
//! # Chunks
//!
//! Memory comes from the OS in *chunks* of [`CHUNK_SIZE`] bytes of address space (4 MiB: one
//! block of the largest order), aligned to `CHUNK_SIZE` so that `ptr & !(CHUNK_SIZE - 1)` is the
//! chunk base. Each chunk has an out-of-band metadata mapping ([`ChunkMeta`]): a small header
//! and one 64-byte [`Page`] descriptor per page. Nothing is ever stored inside the pages
//! themselves, so a stray write into an object cannot corrupt allocator state. Chunks are
//! registered in a process-wide two-level radix table (`radix.rs`), which makes
//! [`virt_to_page`] two loads plus arithmetic, lock-free, and able to say "not ours".
//!
//! # Buddies
//!
//! A block of order `k` is `2^k` pages whose first page index is a multiple of `2^k`; its
//! *buddy* is the block at index `i ^ 2^k`. Free blocks sit on per-order doubly-linked lists
//! threaded through their head descriptors (`lru_prev`/`lru_next`). Allocation takes a block
//! from the smallest non-empty list of order `>= k` and splits it, returning each upper half
//! to its list. Freeing looks at the buddy's head descriptor: if it is a free head of the same
//! order, the two merge, repeatedly, up to [`MAX_ORDER`]. A descriptor's [`PageInfo`] says
//! what the page is:
//!
//! - the head of a free block: `Free` with its order and `released` bit;
//! - the head of an allocated block: `Block` (the slab layer turns it into `Slab`);
//! - any other page of an allocated block: `Tail` with the offset back to its head, written at
//!   allocation, so an interior pointer finds its head in O(1);
//! - any other page of a free block: a `Tail` whose offset leads (possibly through an older,
//!   absorbed head that is itself a `Tail`) back to the free head; these are never examined by
//!   the buddy algorithm (a block's buddy head can only be interior to a block that would also
//!   contain the block itself);
//! - a page beyond the end of a partial chunk: `Absent`, never free, never a buddy.
//!
//! # The memory limit
//!
//! All nodes of one allocator instance share a [`PageBudget`]. Before mapping a chunk a node
//! reserves its bytes with a CAS on the budget's counter, so the sum of mapped chunk bytes can
//! never exceed the limit, even transiently. When less than a chunk remains, the last chunk is
//! *partial*: the whole aligned `CHUNK_SIZE` range is reserved (`PROT_NONE`) but only the
//! allowed prefix is readable, writable and counted; its other pages are `Absent`.
//!
//! # Returning memory: the `released` bit and the zero policy
//!
//! A free block whose memory the OS has taken back (`madvise(MADV_DONTNEED)`) or never touched
//! (fresh from `mmap`) has `released` set. Such memory reads as zero, so `GfpFlags::ZERO` skips
//! the `memset` for it. The accounting invariant, exact at every lock release, is
//! `resident_bytes = mapped_bytes - (bytes of free blocks whose released bit is set)`.
//!
//! - A free block that *forms* (after merging) with order `>= RELEASE_ORDER` is released at
//!   once.
//! - Merging a released block with a dirty (non-released) buddy:
//!   - if the merged order is `>= RELEASE_ORDER`, the dirty half is released, so the merged
//!     block is released (it would be released on formation anyway);
//!   - otherwise the merged block is dirty: the released half's bit is dropped and its bytes
//!     count as resident from then on. The count is then an upper bound of what the OS holds
//!     (those pages are really still absent), never an underestimate, and a later `ZERO`
//!     allocation memsets them. We chose this over releasing the dirty half because the
//!     common case (the first page freed in a freshly mapped chunk) would otherwise cost one
//!     `madvise` per small free.
//! - [`PageAllocator::release_free`] releases every free block not yet released.
//!
//! `madvise` and `memset` run without the node lock: the block is detached first (its head is
//! marked with a zero-offset `Tail`, "in transit", so that it cannot be merged or freed twice),
//! then re-inserted, merging again in case a buddy became free meanwhile. A block is marked
//! released only if `madvise` really dropped it ([`os::release`] returns `true`); a failure
//! leaves it dirty. Only blocks of at least one OS page are released (the OS page size is read
//! at run time and may exceed kmem's 4 KiB `PAGE_SIZE`); smaller ones stay dirty. Blocks are
//! aligned to their size inside a chunk aligned to `CHUNK_SIZE`, so a block of at least one OS
//! page is made of whole OS pages.
//!
//! # Blocks in transit, waiting, and fork
//!
//! Every block detached for `madvise` is recorded on its node's *transit list* (under the node
//! lock, through the head's `lru_*` links, its order in `slabs`), so that it is always reachable.
//! An allocation that finds the free lists empty while blocks are in transit waits for them
//! (rather than mapping a chunk it does not need, loom model m8), but only
//!
//! - for at most `WAIT_NS` (100 ms) in all: then it grows, or fails by the limit rules;
//! - if the calling thread is not itself releasing ([`PageReleaseScope`]): a signal handler
//!   that allocates while its thread is inside `madvise` never waits for itself.
//!
//! After a `fork`, the child's node states are copied with blocks in transit whose releasing
//! threads do not exist in the child. The child handler ([`PageAllocator::fork_child_reclaim`])
//! empties each transit list, zeroes the count and bumps a generation number; the blocks go back
//! to the free lists as dirty (whether their `madvise` ran is unknown). If the forking thread was
//! itself inside a release (a `fork` from a signal handler that interrupted it), the blocks are
//! leaked in the child instead, since the interrupted release resumes after the handler: it
//! sees the new generation on re-locking and forgets its blocks.
//!
//! # Reaching the limit
//!
//! When the limit refuses a new chunk, memory may still be on its way: a chunk another thread is
//! mapping (the budget counts mappings under way, `growing`), or blocks in transit. The
//! allocation waits for those (bounded as above), then re-checks the free lists once, then,
//! unless `NORETRY`, calls the reclaim hook once (the `Kmem` instance registers one that
//! discards every cache's empty partial slabs) and retries; only then does it fail.
//!
//! # Locking
//!
//! One [`SpinLock`] per node protects the free lists, the chunk list and the counters. It is the
//! innermost lock of kmem (slot lock -> node list_lock -> page lock); nothing is called while
//! holding it (no syscalls, no hooks). The reclaim hook runs with no page lock held. Page `info` words are atomic so that lock-free readers
//! (`virt_to_page`, the slab free path) see whole values.

mod desc;
mod radix;
#[cfg(all(test, not(loom)))]
mod tests;

#[allow(unused_imports)]
pub(crate) use desc::{Page, PageInfo, PageKind};

use crate::os::{self, Num};
use crate::sync::{
    AtomicPtr, AtomicU64, AtomicUsize, Backoff, Cell, Ordering, PageReleaseScope, SpinGuard,
    SpinLock,
};
use core::ptr::{self, null_mut, NonNull};

/// log2 of the page size.
pub(crate) const PAGE_SHIFT: u32 = 12;
/// The page size.
pub(crate) const PAGE_SIZE: usize = 1 << PAGE_SHIFT;
/// The largest block order (orders `0..=MAX_ORDER`); small under loom and Miri to keep models
/// and interpreted tests fast.
pub(crate) const MAX_ORDER: u32 = if cfg!(loom) {
    2
} else if cfg!(miri) {
    5
} else {
    10
};
/// log2 of the chunk size.
pub(crate) const CHUNK_SHIFT: u32 = PAGE_SHIFT + MAX_ORDER;
/// The unit of address space taken from the OS: one block of `MAX_ORDER`.
pub(crate) const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;
/// Pages per chunk.
pub(crate) const PAGES_PER_CHUNK: usize = 1 << MAX_ORDER;
/// Number of orders.
const NR_ORDERS: usize = MAX_ORDER as usize + 1;
/// Free blocks of this order or larger are returned to the OS as soon as they form.
pub(crate) const RELEASE_ORDER: u32 = if MAX_ORDER < 9 { MAX_ORDER } else { 9 };
/// Length of [`PageStats::free_blocks`]: one entry per block order `0..=10` (4 KiB pages up to
/// 4 MiB blocks).
///
/// ```
/// let s = kmem::PageStats::default();
/// assert_eq!(s.free_blocks.len(), kmem::STATS_ORDERS);
/// ```
pub const STATS_ORDERS: usize = 11;

const _: () = assert!(NR_ORDERS <= STATS_ORDERS);
const _: () = assert!(PAGES_PER_CHUNK - 1 <= PageInfo::MAX_HEAD_OFFSET);

/// Allocation flags (`gfp_t`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) struct GfpFlags(u32);

#[allow(dead_code)] // NONE is for callers in the slab layer
impl GfpFlags {
    /// No flags: grow up to the limit, reclaim once when the limit is reached.
    pub(crate) const NONE: GfpFlags = GfpFlags(0);
    /// Fail fast: use free blocks only or grow within the limit; never reclaim.
    pub(crate) const NORETRY: GfpFlags = GfpFlags(1);
    /// Return zeroed memory.
    pub(crate) const ZERO: GfpFlags = GfpFlags(2);

    /// Whether every flag of `o` is set.
    #[inline]
    pub(crate) fn contains(self, o: GfpFlags) -> bool {
        self.0 & o.0 == o.0
    }
}

impl core::ops::BitOr for GfpFlags {
    type Output = GfpFlags;
    fn bitor(self, o: GfpFlags) -> GfpFlags {
        GfpFlags(self.0 | o.0)
    }
}

/// Deterministic failure of page allocations, for testing out-of-memory paths.
///
/// Counts calls of the page allocator across all nodes of one allocator instance.
///
/// ```
/// let f = kmem::FaultInjection::EveryNth(3); // page allocations 3, 6, 9, ... fail
/// assert_ne!(f, kmem::FaultInjection::default());
/// let p = kmem::FaultInjection::Probability { percent: 10, seed: 42 }; // same seed, same failures
/// assert_eq!(p, kmem::FaultInjection::Probability { percent: 10, seed: 42 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FaultInjection {
    /// No injected failures.
    #[default]
    None,
    /// The n-th, 2n-th, 3n-th ... page allocation fails (`EveryNth(0)` means none).
    EveryNth(u64),
    /// Each page allocation fails with probability `percent`/100, drawn from a deterministic
    /// generator seeded with `seed` (the i-th call's fate depends only on `seed` and `i`).
    Probability {
        /// Failure probability in percent (100 or more: every call fails).
        percent: u8,
        /// The generator's seed.
        seed: u64,
    },
}

/// Page allocator figures, summed over the nodes of an allocator instance.
///
/// `resident_bytes` is kmem's own account: mapped memory minus free memory it has returned to
/// the OS (an upper bound of what the OS holds, exact except for pages handed out but never
/// touched and released pages merged into a dirty block; see the page module docs).
///
/// ```
/// let s = kmem::PageStats::default();
/// assert_eq!(s.mapped_bytes, 0);
/// assert!(s.resident_bytes <= s.mapped_bytes);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageStats {
    /// Address space taken from the OS for pages (chunk data only; never above the limit).
    pub mapped_bytes: usize,
    /// Mapped bytes not returned to the OS.
    pub resident_bytes: usize,
    /// Bytes on the buddy free lists.
    pub free_bytes: usize,
    /// Page allocations refused (limit, `NORETRY`, OS refusal, injected).
    pub failed_allocs: u64,
    /// Of `failed_allocs`, those caused by fault injection.
    pub injected_failures: u64,
    /// Bytes of out-of-band metadata (page descriptor tables).
    pub metadata_bytes: usize,
    /// The memory limit (`usize::MAX` when unlimited).
    pub limit_bytes: usize,
    /// Bytes returned to the OS with `madvise` since the start.
    pub released_bytes_total: u64,
    /// Successful page allocations.
    pub allocs: u64,
    /// Page frees.
    pub frees: u64,
    /// Chunks mapped.
    pub chunks: usize,
    /// Times the reclaim hook was called because the limit was reached.
    pub reclaim_calls: u64,
    /// Free blocks per order (index = order; orders above the build's maximum stay 0).
    pub free_blocks: [usize; STATS_ORDERS],
}

/// The budget shared by every node of one allocator instance: the memory limit, fault
/// injection state.
pub(crate) struct PageBudget {
    limit: usize,
    reserved: AtomicUsize,
    /// Chunk mappings under way (counted before their reservation is attempted, so that an
    /// allocation that finds the limit reached also sees every chunk still being set up).
    growing: AtomicUsize,
    fault: FaultInjection,
    calls: AtomicU64,
    /// The OS page size (and, in unit tests, the emulated kernel) for releases.
    pub(crate) os: os::OsPages,
}

impl PageBudget {
    /// A budget of `limit` bytes of chunk data (`usize::MAX`: none).
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn new(limit: usize, fault: FaultInjection) -> Self {
        Self::with_os(limit, fault, os::OsPages::current())
    }

    /// A budget whose releases follow `os` (unit tests: an emulated kernel).
    pub(crate) fn with_os(limit: usize, fault: FaultInjection, os: os::OsPages) -> Self {
        PageBudget {
            limit,
            reserved: AtomicUsize::new(0),
            growing: AtomicUsize::new(0),
            fault,
            calls: AtomicU64::new(0),
            os,
        }
    }

    /// Reserves up to `CHUNK_SIZE` bytes (a whole number of pages); 0 when exhausted.
    fn reserve_chunk(&self) -> usize {
        let mut cur = self.reserved.load(Ordering::Relaxed);
        loop {
            let room = self.limit.saturating_sub(cur) & !(PAGE_SIZE - 1);
            let take = room.min(CHUNK_SIZE);
            if take == 0 {
                return 0;
            }
            match self.reserved.compare_exchange_weak(
                cur,
                cur + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(c) => cur = c,
            }
        }
    }

    fn unreserve(&self, bytes: usize) {
        self.reserved.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// One draw of fault injection: true if this call must fail.
    fn inject(&self) -> bool {
        match self.fault {
            FaultInjection::None | FaultInjection::EveryNth(0) => false,
            FaultInjection::EveryNth(n) => {
                (self.calls.fetch_add(1, Ordering::Relaxed) + 1) % n == 0
            }
            FaultInjection::Probability { percent, seed } => {
                let i = self.calls.fetch_add(1, Ordering::Relaxed);
                splitmix64(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))) % 100
                    < percent as u64
            }
        }
    }
}

/// SplitMix64's finaliser: a good 64-bit mix of a counter.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The out-of-band metadata of one chunk: header, then one descriptor per page.
#[repr(C, align(64))]
pub(crate) struct ChunkMeta {
    /// The chunk's first byte (CHUNK_SIZE-aligned), with provenance.
    base: *mut u8,
    /// Pages that exist (the rest are Absent).
    usable_pages: usize,
    /// Identity of the owning allocator instance.
    budget: *const PageBudget,
    /// Owning node.
    node: usize,
    /// Bytes of this metadata mapping.
    meta_size: usize,
    /// Next chunk of the same node (node lock).
    next: Cell<*mut ChunkMeta>,
    /// The descriptors.
    pages: [Page; PAGES_PER_CHUNK],
}

impl ChunkMeta {
    /// Descriptor `i` (raw: no reference to the whole header is ever formed).
    #[inline(always)]
    unsafe fn page(meta: *mut ChunkMeta, i: usize) -> *mut Page {
        // SAFETY: the caller passes a live chunk and `i < PAGES_PER_CHUNK`.
        unsafe { ptr::addr_of_mut!((*meta).pages).cast::<Page>().add(i) }
    }
}

/// The chunk metadata and page index of a genuine descriptor.
///
/// Goes through the radix table rather than stepping back from `p`: a descriptor pointer made
/// from a `&Page` only has provenance over those 64 bytes, while the table's pointer covers the
/// whole metadata mapping.
///
/// # Safety
/// `p` is a descriptor of a registered (live) chunk.
#[inline(always)]
unsafe fn chunk_of(p: *const Page) -> (*mut ChunkMeta, usize) {
    // SAFETY: `p` is a live descriptor (caller contract); `addr` is immutable.
    let addr = unsafe { (*p).addr };
    let idx = (addr & (CHUNK_SIZE - 1)) >> PAGE_SHIFT;
    match radix::lookup(addr) {
        Some(meta) => (meta.as_ptr(), idx),
        None => crate::abort_msg(&["kmem: internal error: descriptor of an unregistered chunk"]),
    }
}

/// The descriptor of the page containing `ptr` if it lies in a registered chunk.
#[inline]
fn page_of(ptr: usize) -> Option<*mut Page> {
    let meta = radix::lookup(ptr)?.as_ptr();
    let idx = (ptr & (CHUNK_SIZE - 1)) >> PAGE_SHIFT;
    // SAFETY: registered chunks are live and idx < PAGES_PER_CHUNK.
    Some(unsafe { ChunkMeta::page(meta, idx) })
}

/// The head page of the allocated block (or slab) containing `ptr`, or `None` when `ptr` lies
/// in no chunk of any live allocator.
///
/// For a pointer into a free block, returns that free block's head (kind `Free`); for a
/// pointer into an `Absent` page (beyond a partial chunk), that page's own descriptor. Lock-free:
/// two loads for the chunk, one more for a tail page.
#[allow(dead_code)] // called by the slab layer (virt_to_slab) and kfree
pub(crate) fn virt_to_page(ptr: *const u8) -> Option<&'static Page> {
    let mut p = page_of(ptr as usize)?;
    // Allocated tails lead to their head in one step; free interior pages may need a few
    // (bounded by the order count). The offset strictly decreases the index, so this ends.
    for _ in 0..=NR_ORDERS {
        // SAFETY: `p` is a descriptor of a registered (live) chunk.
        let info = unsafe { &*p }.info();
        if info.kind() != PageKind::Tail || info.head_offset() == 0 {
            break;
        }
        // SAFETY: a tail's offset stays inside its chunk's descriptor array.
        p = unsafe { p.sub(info.head_offset()) };
    }
    // Callers must not use the reference past their allocator instance.
    // SAFETY: descriptors of registered chunks live as long as the chunk.
    Some(unsafe { &*p })
}

/// The memory described by a descriptor of a live chunk, derived from the chunk's base pointer
/// (so it keeps the mapping's provenance, unlike [`Page::address`], which casts an integer).
#[allow(dead_code)] // for the slab layer (Miri runs it with strict provenance checks)
pub(crate) fn page_address(page: &Page) -> *mut u8 {
    // Outside chunk set-up, a `&Page` can only come from a descriptor of a live chunk.
    // SAFETY: `page` is a descriptor of a live chunk, so its chunk header is initialised.
    unsafe {
        let (meta, idx) = chunk_of(page);
        (*meta).base.add(idx << PAGE_SHIFT)
    }
}

/// Why `take_free` found nothing.
enum Empty {
    /// The free lists are empty.
    Empty,
    /// The free lists are empty but blocks are in transit and will be back shortly.
    InTransit,
}

/// How long an allocation may wait in all for memory on its way to the free lists (blocks in
/// transit, chunks being mapped) before it grows or fails.
#[cfg(not(loom))]
const WAIT_NS: u64 = 100_000_000;
/// Under loom: how many yields (each lets the other threads progress).
#[cfg(loom)]
const WAIT_YIELDS: u32 = 16;

/// The bounded wait of one allocation (or of the reclaim hook for the registry lock).
pub(crate) struct BoundedWait {
    backoff: Backoff,
    /// Deadline in `os::now_ns` time (0: not started); loom: yields left.
    #[cfg(not(loom))]
    deadline: u64,
    #[cfg(loom)]
    left: u32,
}

impl BoundedWait {
    pub(crate) fn new() -> Self {
        BoundedWait {
            backoff: Backoff::new(),
            #[cfg(not(loom))]
            deadline: 0,
            #[cfg(loom)]
            left: WAIT_YIELDS,
        }
    }

    /// Snoozes and returns true if the caller may keep waiting; false once the budget is
    /// spent, or at once when this thread is itself releasing (a signal handler must not wait
    /// for the thread it interrupted).
    pub(crate) fn again(&mut self) -> bool {
        if PageReleaseScope::active() {
            return false;
        }
        #[cfg(not(loom))]
        {
            let now = os::now_ns();
            if self.deadline == 0 {
                self.deadline = now.saturating_add(WAIT_NS);
            } else if now >= self.deadline {
                return false;
            }
        }
        #[cfg(loom)]
        {
            if self.left == 0 {
                return false;
            }
            self.left -= 1;
        }
        self.backoff.snooze();
        true
    }
}

/// The free lists and counters of one node.
struct BuddyState {
    free: [*mut Page; NR_ORDERS],
    nr_free: [usize; NR_ORDERS],
    chunks: *mut ChunkMeta,
    nr_chunks: usize,
    mapped: usize,
    metadata: usize,
    free_bytes: usize,
    released_free: usize,
    released_total: u64,
    allocs: u64,
    frees: u64,
    /// Free blocks detached while the lock is dropped for `madvise` ("in transit"): the length
    /// of `isolated`. While non-zero, an allocation that finds the free lists empty waits
    /// (bounded) for them instead of mapping a new chunk (found by loom model m8: a spare
    /// chunk, or a spurious failure under the limit).
    transit: usize,
    /// The blocks in transit, linked through their heads' `lru_prev`/`lru_next`, each head's
    /// `slabs` holding its order: reachable by the fork child handler.
    isolated: *mut Page,
    /// Bumped when a fork child takes the transit list over: a release that began before the
    /// fork (in the forking thread) then forgets its blocks.
    generation: u64,
}

// SAFETY: the raw pointers name descriptors and chunks owned by this node; the state is only
// reached through the node's SpinLock.
unsafe impl Send for BuddyState {}

impl BuddyState {
    /// Records the detached block `p` of `order` (head already marked in transit) on the
    /// transit list.
    ///
    /// # Safety
    /// The node lock is held and `p` heads a detached block of ours.
    unsafe fn isolate(&mut self, p: *mut Page, order: u32) {
        // SAFETY: the links of a detached head are ours under the node lock.
        unsafe {
            (*p).slabs.set(order);
            (*p).lru_prev.set(null_mut());
            (*p).lru_next.set(self.isolated);
            if !self.isolated.is_null() {
                (*self.isolated).lru_prev.set(p);
            }
        }
        self.isolated = p;
        self.transit += 1;
    }

    /// Removes `p` from the transit list.
    ///
    /// # Safety
    /// The node lock is held and `p` is on the transit list.
    unsafe fn unisolate(&mut self, p: *mut Page) {
        // SAFETY: as in `isolate`.
        unsafe {
            let prev = (*p).lru_prev.get();
            let next = (*p).lru_next.get();
            if prev.is_null() {
                self.isolated = next;
            } else {
                (*prev).lru_next.set(next);
            }
            if !next.is_null() {
                (*next).lru_prev.set(prev);
            }
            (*p).lru_prev.set(null_mut());
            (*p).lru_next.set(null_mut());
            (*p).slabs.set(0);
        }
        self.transit -= 1;
    }

    /// Pushes free head `p` (info already `Free(order, released)`) on its list.
    ///
    /// # Safety
    /// The node lock is held (we are inside it) and `p` is a detached block of ours.
    unsafe fn push(&mut self, p: *mut Page, order: u32, released: bool) {
        let o = order as usize;
        let head = self.free[o];
        // SAFETY: the node lock protects the list links of every free head of this node.
        unsafe {
            (*p).lru_prev.set(null_mut());
            (*p).lru_next.set(head);
            if !head.is_null() {
                (*head).lru_prev.set(p);
            }
        }
        self.free[o] = p;
        self.nr_free[o] += 1;
        self.free_bytes += PAGE_SIZE << order;
        if released {
            self.released_free += PAGE_SIZE << order;
        }
    }

    /// Unlinks free head `p` of `order` from its list.
    ///
    /// # Safety
    /// The node lock is held and `p` is on list `order`.
    unsafe fn unlink(&mut self, p: *mut Page, order: u32) {
        let o = order as usize;
        // SAFETY: as in `push`.
        unsafe {
            let prev = (*p).lru_prev.get();
            let next = (*p).lru_next.get();
            if prev.is_null() {
                self.free[o] = next;
            } else {
                (*prev).lru_next.set(next);
            }
            if !next.is_null() {
                (*next).lru_prev.set(prev);
            }
            (*p).lru_prev.set(null_mut());
            (*p).lru_next.set(null_mut());
            if (*p).info().released() {
                self.released_free -= PAGE_SIZE << order;
            }
        }
        self.nr_free[o] -= 1;
        self.free_bytes -= PAGE_SIZE << order;
    }
}

/// The owner of a chunk leaked by a dropped allocator (never a real, aligned budget address).
const LEAKED_OWNER: *const PageBudget = core::ptr::dangling::<PageBudget>();

/// The marker of a block detached from the lists while it is being freed or released.
#[inline]
fn in_transit(node: usize) -> PageInfo {
    PageInfo::tail(0, node)
}

/// Outcome of trying to map a chunk.
enum Grow {
    Grown,
    Limit,
    Os,
}

/// One node's buddy allocator.
pub(crate) struct PageAllocator {
    node: usize,
    budget: *const PageBudget,
    state: SpinLock<BuddyState>,
    failed: AtomicU64,
    injected: AtomicU64,
    reclaim_calls: AtomicU64,
    hook: AtomicPtr<()>,
    hook_arg: AtomicPtr<()>,
}

// SAFETY: `budget` points to a Sync PageBudget that outlives the allocator (constructor
// contract); everything else is Sync/Send on its own.
unsafe impl Send for PageAllocator {}
// SAFETY: as above.
unsafe impl Sync for PageAllocator {}

impl PageAllocator {
    /// An empty allocator for `node`. `budget` outlives the allocator (it lives in the same
    /// heap-less instance block).
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn new(node: usize, budget: *const PageBudget) -> Self {
        if node > PageInfo::MAX_NODE {
            crate::abort_msg(&["kmem: page allocator node id out of range"]);
        }
        PageAllocator {
            node,
            budget,
            state: SpinLock::new(
                "page allocator lock",
                BuddyState {
                    free: [null_mut(); NR_ORDERS],
                    nr_free: [0; NR_ORDERS],
                    chunks: null_mut(),
                    nr_chunks: 0,
                    mapped: 0,
                    metadata: 0,
                    free_bytes: 0,
                    released_free: 0,
                    released_total: 0,
                    allocs: 0,
                    frees: 0,
                    transit: 0,
                    isolated: null_mut(),
                    generation: 0,
                },
            ),
            failed: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            reclaim_calls: AtomicU64::new(0),
            hook: AtomicPtr::new(null_mut()),
            hook_arg: AtomicPtr::new(null_mut()),
        }
    }

    #[inline]
    fn budget(&self) -> &PageBudget {
        // SAFETY: the budget outlives the allocator (constructor contract).
        unsafe { &*self.budget }
    }

    /// Registers the function called (once, without any kmem page lock held, possibly inside a
    /// slot lock) when an allocation without `NORETRY` finds the limit reached; the allocation
    /// is then retried. `Kmem` registers `KmemShared::reclaim` (every cache's empty partial
    /// slabs back to the buddy lists).
    pub(crate) fn set_reclaim_hook(&self, hook: fn(*const ()), arg: *const ()) {
        self.hook_arg.store(arg as *mut (), Ordering::Relaxed);
        self.hook.store(hook as *mut (), Ordering::Release);
    }

    fn fail(&self, injected: bool) -> Option<NonNull<Page>> {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if injected {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// Head descriptor of a block of `2^order` pages: kind `Block`, every tail page `Tail`
    /// with its head offset. `None` on failure (order too large, limit, `NORETRY`, injected
    /// fault, OS refusal), counted in `failed_allocs`.
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn alloc_pages(&self, order: u32, flags: GfpFlags) -> Option<NonNull<Page>> {
        if order > MAX_ORDER {
            return self.fail(false);
        }
        if self.budget().inject() {
            return self.fail(true);
        }
        let mut wait = BoundedWait::new();
        let mut limit_hits = 0u32;
        let mut reclaimed = false;
        loop {
            match self.take_free(order) {
                Ok((page, released)) => {
                    self.finish_alloc(page, order, released, flags);
                    // SAFETY: descriptors are never null.
                    return Some(unsafe { NonNull::new_unchecked(page) });
                }
                // Free memory is on its way back to the lists (a concurrent madvise): wait for
                // it (bounded) rather than mapping a chunk we do not need.
                Err(Empty::InTransit) if wait.again() => continue,
                Err(_) => {}
            }
            match self.grow() {
                Grow::Grown => continue,
                Grow::Os => return self.fail(false),
                Grow::Limit => {
                    // A chunk another thread is mapping will reach the lists shortly.
                    if self.budget().growing.load(Ordering::Acquire) != 0 && wait.again() {
                        continue;
                    }
                    limit_hits += 1;
                    if limit_hits == 1 {
                        // Re-check the free lists once: a concurrent free or grow may have
                        // filled them since `take_free` looked.
                        continue;
                    }
                    let hook = self.hook.load(Ordering::Acquire);
                    if flags.contains(GfpFlags::NORETRY) || reclaimed || hook.is_null() {
                        return self.fail(false);
                    }
                    reclaimed = true;
                    self.reclaim_calls.fetch_add(1, Ordering::Relaxed);
                    // No page lock is held here (take_free and grow released it).
                    // SAFETY: `hook` was stored from a `fn(*const ())` in set_reclaim_hook.
                    let f: fn(*const ()) = unsafe { core::mem::transmute(hook) };
                    f(self.hook_arg.load(Ordering::Relaxed));
                }
            }
        }
    }

    /// Takes a free block of exactly `order` (splitting a larger one), marks its head
    /// `Block`, and says whether its memory is released (zero).
    fn take_free(&self, order: u32) -> Result<(*mut Page, bool), Empty> {
        let mut st = self.state.lock();
        let mut o = order;
        while (o as usize) < NR_ORDERS && st.free[o as usize].is_null() {
            o += 1;
        }
        if o as usize >= NR_ORDERS {
            // (Planted bug for loom-tests: ignore blocks in transit and map a spare chunk.)
            let wait = st.transit > 0 && !cfg!(kmem_mutant = "alloc_ignores_transit");
            return Err(if wait { Empty::InTransit } else { Empty::Empty });
        }
        let p = st.free[o as usize];
        // SAFETY: `p` is a free head on list `o` of this node; the lock is held.
        let released = unsafe { (*p).info() }.released();
        // SAFETY: as above.
        unsafe { st.unlink(p, o) };
        while o > order {
            o -= 1;
            // SAFETY: the upper half of a block of order o+1 lies inside the same chunk.
            let hi = unsafe { p.add(1 << o) };
            // SAFETY: `hi` is a descriptor of our detached block; the lock is held.
            unsafe {
                (*hi).set_info(PageInfo::head(PageKind::Free, o, self.node, released));
                st.push(hi, o, released);
            }
        }
        // SAFETY: `p` is ours now.
        unsafe { (*p).set_info(PageInfo::head(PageKind::Block, order, self.node, false)) };
        st.allocs += 1;
        Ok((p, released))
    }

    /// Writes the tail descriptors and zeroes if asked; runs without the lock (the block is
    /// ours and no buddy check ever reads its interior descriptors).
    fn finish_alloc(&self, p: *mut Page, order: u32, released: bool, flags: GfpFlags) {
        for i in 1..(1usize << order) {
            // SAFETY: the block's pages are descriptors i < 2^order after the head, same chunk.
            unsafe { (*p.add(i)).set_info(PageInfo::tail(i, self.node)) };
        }
        if flags.contains(GfpFlags::ZERO) && !released {
            // SAFETY: `p` is a genuine descriptor (from our free list).
            let (meta, idx) = unsafe { chunk_of(p) };
            // SAFETY: the block's memory is mapped, writable, and exclusively ours.
            unsafe { ptr::write_bytes((*meta).base.add(idx << PAGE_SHIFT), 0, PAGE_SIZE << order) };
        }
    }

    /// Maps one chunk (or the partial last one the limit allows) and puts its blocks on the
    /// free lists.
    fn grow(&self) -> Grow {
        let budget = self.budget();
        // Counted before reserving: whoever finds the limit reached after our reservation sees
        // this mapping under way until its blocks are on the lists.
        budget.growing.fetch_add(1, Ordering::AcqRel);
        let r = self.grow_reserved(budget);
        budget.growing.fetch_sub(1, Ordering::AcqRel);
        r
    }

    fn grow_reserved(&self, budget: &PageBudget) -> Grow {
        let usable = budget.reserve_chunk();
        if usable == 0 {
            return Grow::Limit;
        }
        let Some(base) = os::map_partial(CHUNK_SIZE, usable, CHUNK_SIZE) else {
            budget.unreserve(usable);
            return Grow::Os;
        };
        let meta_size = (core::mem::size_of::<ChunkMeta>() + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let Some(meta_raw) = os::map(meta_size, PAGE_SIZE) else {
            // SAFETY: `base` was just mapped with these arguments and is unused.
            unsafe { os::unmap(base, CHUNK_SIZE, CHUNK_SIZE) };
            budget.unreserve(usable);
            return Grow::Os;
        };
        let meta = meta_raw.as_ptr().cast::<ChunkMeta>();
        let usable_pages = usable >> PAGE_SHIFT;
        // Every field is written before the chunk is published.
        // SAFETY: `meta` is a fresh, private, page-aligned mapping large enough for a `ChunkMeta`.
        unsafe {
            ptr::addr_of_mut!((*meta).base).write(base.as_ptr());
            ptr::addr_of_mut!((*meta).usable_pages).write(usable_pages);
            ptr::addr_of_mut!((*meta).budget).write(self.budget);
            ptr::addr_of_mut!((*meta).node).write(self.node);
            ptr::addr_of_mut!((*meta).meta_size).write(meta_size);
            ptr::addr_of_mut!((*meta).next).write(Cell::new(null_mut()));
        }
        // Carve [0, usable_pages) into maximal aligned blocks; fresh memory is "released".
        let base_addr = base.as_ptr() as usize;
        let mut blocks = [(0usize, 0u32); PAGES_PER_CHUNK.trailing_zeros() as usize + 2];
        let mut nblocks = 0;
        let mut i = 0;
        while i < usable_pages {
            let mut o = MAX_ORDER;
            while (i & ((1 << o) - 1)) != 0 || i + (1 << o) > usable_pages {
                o -= 1;
            }
            blocks[nblocks] = (i, o);
            nblocks += 1;
            for j in 0..(1usize << o) {
                let info = if j == 0 {
                    PageInfo::head(PageKind::Free, o, self.node, true)
                } else {
                    PageInfo::tail(j, self.node)
                };
                // SAFETY: i + j < PAGES_PER_CHUNK inside our private metadata mapping.
                unsafe {
                    ChunkMeta::page(meta, i + j)
                        .write(Page::new(base_addr + ((i + j) << PAGE_SHIFT), info))
                };
            }
            i += 1 << o;
        }
        for j in usable_pages..PAGES_PER_CHUNK {
            let info = PageInfo::head(PageKind::Absent, 0, self.node, false);
            // SAFETY: as above.
            unsafe {
                ChunkMeta::page(meta, j).write(Page::new(base_addr + (j << PAGE_SHIFT), info))
            };
        }
        // SAFETY: `meta` is non-null (from a NonNull mapping).
        if !radix::register(base_addr, unsafe { NonNull::new_unchecked(meta) }) {
            // Drop the descriptors (loom atomics) and unmap both.
            // SAFETY: neither mapping was published, so both are still ours alone.
            unsafe {
                Self::destroy_chunk(meta);
            }
            budget.unreserve(usable);
            return Grow::Os;
        }
        let mut st = self.state.lock();
        // Its blocks are detached and described as free heads.
        // SAFETY: `meta` is ours and the state lock is held.
        unsafe {
            (*meta).next.set(st.chunks);
            st.chunks = meta;
            st.nr_chunks += 1;
            st.mapped += usable;
            st.metadata += meta_size;
            for &(i, o) in &blocks[..nblocks] {
                st.push(ChunkMeta::page(meta, i), o, true);
            }
        }
        Grow::Grown
    }

    /// Drops the descriptors and unmaps a chunk and its metadata.
    ///
    /// # Safety
    /// The chunk is unregistered, fully built, and nothing will touch it again.
    unsafe fn destroy_chunk(meta: *mut ChunkMeta) {
        // SAFETY: caller contract: the header and descriptors are initialised and dead.
        unsafe {
            let base = (*meta).base;
            let meta_size = (*meta).meta_size;
            for i in 0..PAGES_PER_CHUNK {
                ptr::drop_in_place(ChunkMeta::page(meta, i));
            }
            os::unmap(NonNull::new_unchecked(base), CHUNK_SIZE, CHUNK_SIZE);
            os::unmap(NonNull::new_unchecked(meta.cast()), meta_size, PAGE_SIZE);
        }
    }

    /// Frees a block of `2^order` pages whose head is `page`.
    ///
    /// Validates in O(1), in every build: `page` must be a descriptor of a registered chunk of
    /// this node and allocator instance, of kind `Block` or `Slab`, of order `order`. Anything
    /// else (double free, wrong order, tail page, foreign descriptor) aborts with a message
    /// naming the failed check. Coalesces with free buddies.
    ///
    /// # Safety
    /// The caller no longer uses the block's memory.
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) unsafe fn free_pages(&self, page: NonNull<Page>, order: u32) {
        let p = page.as_ptr();
        // A garbage pointer is the caller's bug and is caught by the check below when readable.
        // SAFETY: reading the immutable `addr` of what the caller claims is a descriptor.
        let addr = unsafe { (*p).addr };
        let p = match page_of(addr) {
            // From here on use the table's pointer: it carries the metadata's provenance.
            Some(q) if q == p => q,
            _ => bad_free(
                "not a kmem page descriptor (no registered chunk describes it)",
                addr,
                order,
                None,
            ),
        };
        // SAFETY: `p` is a genuine descriptor of a registered chunk (checked above).
        let (meta, _) = unsafe { chunk_of(p) };
        // SAFETY: registered chunk headers are initialised and immutable (except `next`).
        let (owner, node) = unsafe { ((*meta).budget, (*meta).node) };
        if owner != self.budget {
            bad_free(
                if owner == LEAKED_OWNER {
                    "block belongs to a dropped allocator (its chunk was leaked)"
                } else {
                    "block belongs to another allocator instance"
                },
                addr,
                order,
                None,
            );
        }
        if node != self.node {
            bad_free("block belongs to another node", addr, order, None);
        }
        let st = self.state.lock();
        // SAFETY: genuine descriptor.
        let info = unsafe { &*p }.info();
        match info.kind() {
            PageKind::Block | PageKind::Slab => {}
            PageKind::Free => bad_free(
                "double free: block is already free",
                addr,
                order,
                Some(info),
            ),
            PageKind::Tail if info.head_offset() == 0 => bad_free(
                "double free: block is being freed concurrently",
                addr,
                order,
                Some(info),
            ),
            PageKind::Tail => {
                // A tail of an allocated block, or an interior page of a free one.
                // SAFETY: `addr` is in a registered chunk.
                let head = virt_to_page(addr as *const u8).map(|h| h.info().kind());
                if head == Some(PageKind::Free) {
                    bad_free(
                        "double free: page lies inside a free block",
                        addr,
                        order,
                        Some(info),
                    )
                }
                bad_free(
                    "not the head of a block (tail page)",
                    addr,
                    order,
                    Some(info),
                )
            }
            PageKind::Absent => bad_free(
                "page beyond the end of a partial chunk",
                addr,
                order,
                Some(info),
            ),
        }
        if info.order() != order {
            bad_free(
                "wrong order: the block was allocated with another order",
                addr,
                order,
                Some(info),
            );
        }
        // Clear the slab owner so stale slab frees see no cache.
        // SAFETY: the block is ours (validated under the lock).
        unsafe {
            (*p).cache.store(null_mut(), Ordering::Relaxed);
            (*p).set_info(in_transit(self.node));
        }
        let mut st = st;
        st.frees += 1;
        // SAFETY: `p` is a detached, in-transit block of ours of `order`.
        unsafe { self.insert_merging(st, p, order, false) };
    }

    /// Changes the order of an allocated, non-slab block in place (`krealloc` of a page block):
    /// shrinking returns the upper halves to the free lists; growing absorbs the free buddies
    /// above the block, which works only when the block is aligned for the new order and each
    /// of those buddies is a whole free block. Returns whether the block now has order `new`
    /// (on `false` nothing changed and the caller copies instead).
    ///
    /// # Safety
    /// `page` heads a block of `old` pages allocated from this node, owned by the caller.
    pub(crate) unsafe fn resize_in_place(&self, page: NonNull<Page>, old: u32, new: u32) -> bool {
        let p = page.as_ptr();
        if new == old {
            return true;
        }
        if new > MAX_ORDER {
            return false;
        }
        // SAFETY: a genuine descriptor of a block we own (contract).
        let (meta, idx) = unsafe { chunk_of(p) };
        // SAFETY: chunk headers are immutable after publication.
        let usable = unsafe { (*meta).usable_pages };
        // SAFETY: as above.
        let info = unsafe { &*p }.info();
        if info.kind() != PageKind::Block || info.order() != old {
            return false;
        }
        if new < old {
            // Give back the upper halves, largest first: each one's buddy is the part we keep,
            // so none can merge. Their interior pages are rewritten to point at their own head
            // before they are published.
            for o in (new..old).rev() {
                let up_idx = idx + (1 << o);
                // SAFETY: inside our block, hence inside the chunk.
                let up = unsafe { ChunkMeta::page(meta, up_idx) };
                for j in 1..(1usize << o) {
                    // SAFETY: pages of our own block.
                    unsafe {
                        (*ChunkMeta::page(meta, up_idx + j)).set_info(PageInfo::tail(j, self.node))
                    };
                }
                let mut st = self.state.lock();
                // SAFETY: `up` heads a detached block of ours; the lock is held.
                unsafe { (*up).set_info(in_transit(self.node)) };
                st.frees += 1;
                // SAFETY: as above.
                unsafe { self.insert_merging(st, up, o, false) };
            }
            // SAFETY: our block's head.
            unsafe { (*p).set_info(PageInfo::head(PageKind::Block, new, self.node, false)) };
            return true;
        }
        if idx & ((1 << new) - 1) != 0 || idx + (1 << new) > usable {
            return false;
        }
        {
            let mut st = self.state.lock();
            for o in old..new {
                // SAFETY: idx + 2^o < idx + 2^new <= usable.
                let b = unsafe { ChunkMeta::page(meta, idx + (1 << o)) };
                // SAFETY: genuine descriptor; read under the lock.
                let bi = unsafe { &*b }.info();
                if bi.kind() != PageKind::Free || bi.order() != o {
                    return false;
                }
            }
            for o in old..new {
                // SAFETY: checked above: a free head of order `o` on this node's list; lock held.
                unsafe {
                    let b = ChunkMeta::page(meta, idx + (1 << o));
                    st.unlink(b, o);
                    (*b).set_info(in_transit(self.node));
                }
            }
            // SAFETY: our block's head; the absorbed pages are ours now.
            unsafe { (*p).set_info(PageInfo::head(PageKind::Block, new, self.node, false)) };
        }
        for j in (1usize << old)..(1usize << new) {
            // SAFETY: pages of our (grown) block.
            unsafe { (*ChunkMeta::page(meta, idx + j)).set_info(PageInfo::tail(j, self.node)) };
        }
        true
    }

    /// Whether a block of `order` spans whole OS pages (and so can be released).
    #[inline]
    fn releasable(&self, order: u32) -> bool {
        PAGE_SIZE << order >= self.budget().os.size
    }

    /// Releases `[ptr, ptr + len)`, part or all of the detached block `(head, order)`, with the
    /// node lock dropped: records the block on the transit list, unlocks, `madvise`s, re-locks.
    /// Returns the guard and whether the OS dropped the range; `None` (lock released) when a
    /// fork child took the transit list over meanwhile (only in the child of a `fork` made by a
    /// signal handler that interrupted this call): the caller must then forget the block.
    ///
    /// # Safety
    /// `head` heads a detached block of ours of `order`, marked in transit, that contains the
    /// range; `st` guards this node's state.
    unsafe fn release_detached<'a>(
        &'a self,
        mut st: SpinGuard<'a, BuddyState>,
        head: *mut Page,
        order: u32,
        ptr: *mut u8,
        len: usize,
    ) -> Option<(SpinGuard<'a, BuddyState>, bool)> {
        let scope = PageReleaseScope::enter();
        let generation = st.generation;
        // SAFETY: forwarded contract.
        unsafe { st.isolate(head, order) };
        drop(st);
        // SAFETY: the range lies in a detached free block of ours (contract).
        let ok = unsafe { os::release(ptr, len, &self.budget().os) };
        let mut st = self.state.lock();
        drop(scope);
        if st.generation != generation {
            return None;
        }
        // SAFETY: still on the transit list (same generation); lock held.
        unsafe { st.unisolate(head) };
        if ok {
            st.released_total += len as u64;
        }
        Some((st, ok))
    }

    /// Merges the detached block `(head, order)` with free buddies and puts the result on a
    /// free list, releasing it (without the lock) if it reaches RELEASE_ORDER.
    ///
    /// # Safety
    /// `head` heads a detached block of ours whose head is marked in transit; `st` guards this
    /// node's state; `released` is true only if the block's memory reads as zero.
    unsafe fn insert_merging<'a>(
        &'a self,
        mut st: SpinGuard<'a, BuddyState>,
        mut head: *mut Page,
        mut order: u32,
        mut released: bool,
    ) {
        // SAFETY: `head` is a genuine descriptor (contract).
        let (meta, mut idx) = unsafe { chunk_of(head) };
        // SAFETY: chunk headers are immutable after publication.
        let (usable, base) = unsafe { ((*meta).usable_pages, (*meta).base) };
        // After a failed release, this call tries no other (the block stays dirty).
        let mut may_release = true;
        loop {
            while order < MAX_ORDER {
                let bidx = idx ^ (1 << order);
                if bidx >= usable {
                    break;
                }
                // SAFETY: bidx < usable <= PAGES_PER_CHUNK.
                let b = unsafe { ChunkMeta::page(meta, bidx) };
                // SAFETY: genuine descriptor.
                let bi = unsafe { &*b }.info();
                // (Planted bug for loom-tests: merging with a free buddy of another order.)
                if bi.kind() != PageKind::Free
                    || (bi.order() != order && !cfg!(kmem_mutant = "buddy_merge_skips_order_check"))
                {
                    break;
                }
                let (lo, hi) = if bidx < idx { (bidx, idx) } else { (idx, bidx) };
                // SAFETY: a Free head of this node's chunk is on list `order`; lock held. Both
                // halves are ours now: `hi` becomes an interior page of the merged block, `lo`
                // its in-transit head.
                unsafe {
                    st.unlink(b, order);
                    (*b).set_info(in_transit(self.node));
                    (*ChunkMeta::page(meta, hi)).set_info(PageInfo::tail(hi - lo, self.node));
                    head = ChunkMeta::page(meta, lo);
                    (*head).set_info(in_transit(self.node));
                }
                let new_order = order + 1;
                if released != bi.released() {
                    if new_order >= RELEASE_ORDER && may_release && self.releasable(order) {
                        let dirty = if released { bidx } else { idx };
                        // SAFETY: the dirty half lies in the detached merged block.
                        let r = unsafe {
                            self.release_detached(
                                st,
                                head,
                                new_order,
                                base.add(dirty << PAGE_SHIFT),
                                PAGE_SIZE << order,
                            )
                        };
                        let Some((g, ok)) = r else { return };
                        st = g;
                        released = ok;
                        may_release &= ok;
                    } else {
                        released = false;
                    }
                }
                idx = lo;
                order = new_order;
            }
            if order >= RELEASE_ORDER && !released && may_release && self.releasable(order) {
                // SAFETY: a detached free block of ours.
                let r = unsafe {
                    self.release_detached(
                        st,
                        head,
                        order,
                        base.add(idx << PAGE_SHIFT),
                        PAGE_SIZE << order,
                    )
                };
                let Some((g, ok)) = r else { return };
                st = g;
                released = ok;
                may_release = ok;
                // A buddy may have been freed while we were unlocked.
                continue;
            }
            break;
        }
        // SAFETY: `head` is our detached block; the lock is held.
        unsafe {
            (*head).set_info(PageInfo::head(PageKind::Free, order, self.node, released));
            st.push(head, order, released);
        }
    }

    /// `madvise(MADV_DONTNEED)`s every free block not yet released that spans whole OS pages;
    /// returns the bytes the OS dropped. Blocks are detached (in transit) while the lock is
    /// dropped, so a concurrent allocation may wait for them, or a `NORETRY` one fail.
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn release_free(&self) -> usize {
        // Entered before any block is detached: a signal handler on this thread never waits
        // for them.
        let _scope = PageReleaseScope::enter();
        let mut detached: *mut Page = null_mut();
        let generation;
        {
            let mut st = self.state.lock();
            generation = st.generation;
            for o in 0..NR_ORDERS as u32 {
                if !self.releasable(o) {
                    continue;
                }
                let mut p = st.free[o as usize];
                while !p.is_null() {
                    // SAFETY: free heads of this node; lock held.
                    unsafe {
                        let next = (*p).lru_next.get();
                        if !(*p).info().released() {
                            st.unlink(p, o);
                            (*p).set_info(in_transit(self.node));
                            st.isolate(p, o);
                            (*p).next.set(detached);
                            detached = p;
                        }
                        p = next;
                    }
                }
            }
        }
        let mut total = 0;
        let mut p = detached;
        while !p.is_null() {
            // SAFETY: detached blocks are ours; `slabs` holds the order, `next` the link.
            unsafe {
                let order = (*p).slabs.get();
                let next = (*p).next.get();
                let (meta, idx) = chunk_of(p);
                let len = PAGE_SIZE << order;
                let ok = os::release((*meta).base.add(idx << PAGE_SHIFT), len, &self.budget().os);
                let mut st = self.state.lock();
                if st.generation != generation {
                    // A fork child took the rest over (see the module docs).
                    return total;
                }
                st.unisolate(p);
                (*p).next.set(null_mut());
                if ok {
                    total += len;
                    st.released_total += len as u64;
                }
                self.insert_merging(st, p, order, ok);
                p = next;
            }
        }
        total
    }

    /// Fork support, in the child: takes over the blocks that were in transit when the process
    /// forked (their releasing threads do not exist here) and returns them to the free lists as
    /// dirty, or leaks them if this thread was itself releasing (see the module docs). Call with
    /// no lock of this node held.
    #[cfg(not(any(loom, miri)))]
    pub(crate) fn fork_child_reclaim(&self) {
        let mut st = self.state.lock();
        if st.transit == 0 {
            return;
        }
        let mut p = st.isolated;
        st.isolated = null_mut();
        st.transit = 0;
        st.generation += 1;
        if PageReleaseScope::active() {
            // Our own interrupted release resumes after the handler and may still madvise one
            // of these blocks: leak them all (in this child only).
            return;
        }
        while !p.is_null() {
            // SAFETY: blocks of the transit list are detached, in-transit heads of ours whose
            // releasers are gone; the lock is held.
            unsafe {
                let next = (*p).lru_next.get();
                let order = (*p).slabs.get();
                (*p).lru_prev.set(null_mut());
                (*p).lru_next.set(null_mut());
                (*p).slabs.set(0);
                (*p).next.set(null_mut());
                self.insert_merging(st, p, order, false);
                st = self.state.lock();
                p = next;
            }
        }
    }

    /// Fork support (`kmalloc.rs`): takes this node's page lock and keeps it held with no guard,
    /// so that a `fork` cannot copy it in a locked state. Undo with [`PageAllocator::fork_unlock`].
    #[cfg(not(any(loom, miri)))]
    pub(crate) fn fork_lock(&self) {
        self.state.raw_lock();
    }

    /// Fork support: releases the page lock taken by [`PageAllocator::fork_lock`].
    ///
    /// # Safety
    /// The calling thread took it with `fork_lock` (in the child: the forking thread did).
    #[cfg(not(any(loom, miri)))]
    pub(crate) unsafe fn fork_unlock(&self) {
        // SAFETY: forwarded contract.
        unsafe { self.state.raw_unlock() }
    }

    /// Adds this node's figures into `out` (`limit_bytes` is set, not added: it is shared).
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn add_stats(&self, out: &mut PageStats) {
        {
            let st = self.state.lock();
            out.mapped_bytes += st.mapped;
            out.resident_bytes += st.mapped - st.released_free;
            out.free_bytes += st.free_bytes;
            out.metadata_bytes += st.metadata;
            out.released_bytes_total += st.released_total;
            out.allocs += st.allocs;
            out.frees += st.frees;
            out.chunks += st.nr_chunks;
            for (o, n) in st.nr_free.iter().enumerate() {
                out.free_blocks[o] += n;
            }
        }
        out.failed_allocs += self.failed.load(Ordering::Relaxed);
        out.injected_failures += self.injected.load(Ordering::Relaxed);
        out.reclaim_calls += self.reclaim_calls.load(Ordering::Relaxed);
        out.limit_bytes = self.budget().limit;
    }
}

impl Drop for PageAllocator {
    fn drop(&mut self) {
        let mut leaked_chunks = 0u64;
        let mut leaked_bytes = 0u64;
        let mut chunk = self.state.lock().chunks;
        while !chunk.is_null() {
            // `&mut self` excludes every other user of this node.
            // SAFETY: chunks of this node are live until unmapped here, and no one else uses them.
            unsafe {
                let next = (*chunk).next.get();
                let usable = (*chunk).usable_pages;
                let mut i = 0;
                let mut all_free = true;
                while i < usable {
                    let info = (*ChunkMeta::page(chunk, i)).info();
                    if info.kind() != PageKind::Free {
                        all_free = false;
                        break;
                    }
                    i += 1 << info.order();
                }
                if all_free {
                    radix::unregister((*chunk).base as usize);
                    Self::destroy_chunk(chunk);
                    self.budget().unreserve(usable << PAGE_SHIFT);
                } else {
                    // Someone may still point into it: leak it, registered and mapped,
                    // forever. Its owner becomes a sentinel no live budget can equal, so a late
                    // free into it is refused even if a new budget reuses this one's address.
                    ptr::addr_of_mut!((*chunk).budget).write(LEAKED_OWNER);
                    leaked_chunks += 1;
                    leaked_bytes += (usable << PAGE_SHIFT) as u64;
                }
                chunk = next;
            }
        }
        if leaked_chunks != 0 {
            os::write_stderr(&[
                "kmem: page allocator of node ",
                Num::dec(self.node as u64).as_str(),
                " dropped with pages still allocated (leaked objects?): leaking ",
                Num::dec(leaked_chunks).as_str(),
                " chunk(s), ",
                Num::dec(leaked_bytes).as_str(),
                " bytes",
            ]);
        }
    }
}

/// Aborts with a precise description of a bad `free_pages`.
#[cold]
#[inline(never)]
fn bad_free(what: &str, addr: usize, order: u32, info: Option<PageInfo>) -> ! {
    let a = Num::hex(addr as u64);
    let o = Num::dec(order as u64);
    let (kind, found) = match info {
        Some(i) => (
            match i.kind() {
                PageKind::Absent => "Absent",
                PageKind::Free => "Free",
                PageKind::Block => "Block",
                PageKind::Slab => "Slab",
                PageKind::Tail => "Tail",
            },
            Num::dec(i.order() as u64),
        ),
        None => ("?", Num::dec(0)),
    };
    crate::abort_msg(&[
        "kmem: free_pages: ",
        what,
        " (page ",
        a.as_str(),
        ", order given ",
        o.as_str(),
        ", descriptor kind ",
        kind,
        ", descriptor order ",
        if info.is_some() { found.as_str() } else { "?" },
        ")",
    ])
}
