//! The buddy page allocator: kmem's `mm/page_alloc.c`.
//!
//! Files: this one (the constants, flags and public statistics, and the algorithm below),
//! `buddy.rs` (`PageAllocator`: the free lists, allocation, freeing with coalescing, exact page
//! counts, in-place resizing), `chunk.rs` (chunks: mapping and unmapping them, pointer → page
//! descriptor), `release.rs` (returning free blocks to the OS, blocks in transit, fork),
//! `decay.rs` (returning free memory by itself after a delay), `budget.rs` (the
//! memory limit and fault injection), `desc.rs` (`struct page`), `radix.rs` (the chunk tables).
//! `impl PageAllocator` is split across `buddy.rs`, `chunk.rs` and `release.rs` by concern, each
//! file holding the methods of one part of the algorithm.
//!
//! # Chunks
//!
//! Memory comes from the OS in *chunks* of [`CHUNK_SIZE`] bytes of address space (4 MiB: one
//! block of the largest order), aligned to `CHUNK_SIZE` so that `ptr & !(CHUNK_SIZE - 1)` is the
//! chunk base. Each chunk has an out-of-band metadata mapping ([`ChunkMeta`]): a small header
//! and one 48-byte [`Page`] descriptor per page. Nothing is ever stored inside the pages
//! themselves, so a stray write into an object cannot corrupt allocator state. Chunks are
//! registered in a process-wide two-level radix table (`radix.rs`), which makes
//! [`virt_to_page`] two loads plus arithmetic, lock-free, and able to say "not ours". The
//! metadata mapping is itself aligned to its size (64 KiB, a power of two) and registered in a
//! second table by its own address, so a descriptor leads back to its chunk, and its page,
//! with no field for it.
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
//! - the head of an allocated block: `Block` (the slab layer turns it into `Slab`); a block
//!   of an exact page count (`alloc_pages_exact`: kmalloc's large sizes, which round to pages,
//!   not powers of two) keeps the count in its head (the block of the next order is taken and
//!   the pages past the count go back to the free lists as the aligned blocks that tile them;
//!   `free_pages_exact` gives the count back the same way, each piece merging with its buddies);
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
//! - With a decay delay (`decay.rs`, the default for `Kmem` instances), no block is released as
//!   it forms: the decay releases the dirty blocks that have stayed free for the delay, from
//!   the slow paths.
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
//! - for at most `WAIT_NS` (1 s) in all: then it grows, or fails by the limit rules;
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
//! unless `NORETRY`, calls the reclaim hook (the `Kmem` instance registers one that discards
//! every cache's empty partial slabs) and retries, again while the hook reports progress (at
//! most `MAX_RECLAIM_RETRIES` times: a concurrent allocation may take what a reclaim freed);
//! only then does it fail.
//!
//! # Locking
//!
//! One [`SpinLock`] per node protects the free lists, the chunk list and the counters. It is the
//! innermost lock of kmem (slot lock -> node list_lock -> page lock); nothing is called while
//! holding it (no syscalls, no hooks). The reclaim hook runs with no page lock held. Page `info` words are atomic so that lock-free readers
//! (`virt_to_page`, the slab free path) see whole values.

mod buddy;
mod budget;
mod chunk;
mod decay;
mod desc;
mod pcp;
mod radix;
mod release;
#[cfg(all(test, not(loom)))]
mod tests;

pub(crate) use buddy::{BoundedWait, PageAllocator};
pub(crate) use budget::PageBudget;
pub(crate) use chunk::{
    page_address, set_slab_tags, virt_to_page, virt_to_page_allocated, ChunkMeta,
};
pub(crate) use chunk::{slab_tag, slab_tag_of, TAG_ID_MAX};
pub use decay::DEFAULT_DECAY_MS;
pub(crate) use pcp::PcpSlot;

#[allow(unused_imports)]
pub(crate) use desc::{Page, PageInfo, PageKind};

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
    /// No flags: grow up to the limit, reclaim when the limit is reached (again while reclaim
    /// makes progress).
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
    /// Bytes of free blocks held on the per-CPU page lists (free, but not on the buddy lists;
    /// resident).
    pub pcp_bytes: usize,
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
