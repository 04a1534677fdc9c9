//! The page descriptor: kmem's `struct page`, with `struct slab` overlaid on the head page.
//!
//! Every 4 KiB page of a chunk has one 48-byte descriptor in an out-of-band table (never inside
//! the page itself, so a stray write into an object can never corrupt allocator metadata and
//! the descriptor of any page is found by arithmetic; the page of a descriptor is found from
//! the descriptor's own address, through the chunk table of metadata addresses:
//! `chunk::descriptor_index`). Which fields mean what depends on [`PageKind`]:
//!
//! | kind      | `info`                          | `lru_prev/lru_next`      | `slabs`, slab fields |
//! |-----------|---------------------------------|--------------------------|--------------------|
//! | `Free`    | order, node, released           | buddy free-list links    | `slabs`: the decay stamp |
//! | in transit (`Tail`, offset 0) | node            | transit-list links (blocks being released) | `slabs`: the order (on the transit list) |
//! | `Block`   | order, node, exact page count (0: `2^order`) | `next`: its owner's chain, if any | unused |
//! | `Slab`    | order, node, colour (head of a slab: always `2^order` pages) | node partial-list links (or a debug cache's full list), or `next` (CPU partial list, a discard or hand-over chain) | all meaningful |
//! | `Tail`    | offset to the head page         | unused                   | unused             |
//! | `Pcp`     | order, node (free, on a CPU slot's page list) | `next`: the list link | unused |
//! | `Absent`  | (page beyond a partial chunk)   | unused                   | unused             |
//!
//! `next` ([`Page::next`]) is `lru_next` under another name, as the kernel's `slab->next`
//! shares its words with `slab->slab_list`: a page is on a chain of `next` only while it is on
//! no list of the two links.
//!
//! `info` is atomic because [`virt_to_page`](super::virt_to_page) and the free paths read it
//! without a lock; everything a lock protects is a [`Cell`].

use crate::sync::{AtomicPtr, AtomicU32, Cell, DWord, Ordering};

/// What a page descriptor currently describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum PageKind {
    /// Not part of the usable chunk (beyond the end of a partially mapped chunk), or never set.
    Absent = 0,
    /// Head of a free buddy block of `order`.
    Free = 1,
    /// Head of an allocated block of `order` that is not a slab (a large kmalloc, a test).
    Block = 2,
    /// Head of an allocated block that is a slab.
    Slab = 3,
    /// A non-head page of an allocated block; `head_offset` leads to the head.
    Tail = 4,
    /// Head of a free block of `order` held on a CPU slot's page list (`pcp.rs`): free, but not
    /// on the buddy lists, so never a merge partner.
    Pcp = 5,
}

/// The packed `info` word of a page descriptor.
///
/// Layout (low to high): `kind:3 | order:5 | released:1 | node:10 | head_offset:13`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageInfo(pub(crate) u32);

impl PageInfo {
    const KIND_BITS: u32 = 3;
    const ORDER_SHIFT: u32 = 3;
    const ORDER_BITS: u32 = 5;
    const RELEASED_SHIFT: u32 = 8;
    const NODE_SHIFT: u32 = 9;
    const NODE_BITS: u32 = 10;
    const HEAD_SHIFT: u32 = 19;
    const HEAD_BITS: u32 = 13;

    /// The largest node id that fits.
    pub(crate) const MAX_NODE: usize = (1 << Self::NODE_BITS) - 1;
    /// The largest head offset that fits (pages from a tail page back to its head).
    pub(crate) const MAX_HEAD_OFFSET: usize = (1 << Self::HEAD_BITS) - 1;

    /// A head-page word.
    #[inline]
    pub(crate) const fn head(kind: PageKind, order: u32, node: usize, released: bool) -> Self {
        PageInfo(
            kind as u32
                | (order << Self::ORDER_SHIFT)
                | ((released as u32) << Self::RELEASED_SHIFT)
                | ((node as u32) << Self::NODE_SHIFT),
        )
    }

    /// The head word of an allocated non-slab block of `pages` pages (`alloc_pages_exact`):
    /// kind `Block`, order `order_for_pages(pages)`, the exact page count in the bits a tail
    /// uses for its head offset (0 there means the whole `2^order` block, as
    /// [`PageInfo::head`] writes it).
    #[inline]
    pub(crate) const fn block(order: u32, node: usize, pages: usize) -> Self {
        let full = pages == 1 << order;
        PageInfo(
            PageInfo::head(PageKind::Block, order, node, false).0
                | ((if full { 0 } else { pages as u32 }) << Self::HEAD_SHIFT),
        )
    }

    /// The pages of an allocated block (heads of kind `Block` or `Slab`): its exact page count
    /// when it was allocated or resized to one, else `2^order`. A slab is always a whole
    /// `2^order` block: its head-offset bits hold its colour (`CacheConfig::colour`), not a
    /// page count.
    #[inline]
    pub(crate) const fn block_pages(self) -> usize {
        if matches!(self.kind(), PageKind::Slab) {
            return 1 << self.order();
        }
        match self.head_offset() {
            0 => 1 << self.order(),
            n => n,
        }
    }

    /// A tail-page word, `offset` pages after its head.
    #[inline]
    pub(crate) const fn tail(offset: usize, node: usize) -> Self {
        PageInfo(
            PageKind::Tail as u32
                | ((node as u32) << Self::NODE_SHIFT)
                | ((offset as u32) << Self::HEAD_SHIFT),
        )
    }

    /// The kind.
    #[inline]
    pub(crate) const fn kind(self) -> PageKind {
        match self.0 & ((1 << Self::KIND_BITS) - 1) {
            1 => PageKind::Free,
            2 => PageKind::Block,
            3 => PageKind::Slab,
            4 => PageKind::Tail,
            5 => PageKind::Pcp,
            _ => PageKind::Absent,
        }
    }

    /// The block order (head pages).
    #[inline]
    pub(crate) const fn order(self) -> u32 {
        (self.0 >> Self::ORDER_SHIFT) & ((1 << Self::ORDER_BITS) - 1)
    }

    /// Whether a free block's memory has been returned to the OS (reads as zero when reused).
    #[inline]
    pub(crate) const fn released(self) -> bool {
        (self.0 >> Self::RELEASED_SHIFT) & 1 != 0
    }

    /// The NUMA node (any page).
    #[inline]
    pub(crate) const fn node(self) -> usize {
        ((self.0 >> Self::NODE_SHIFT) & ((1 << Self::NODE_BITS) - 1)) as usize
    }

    /// Pages back to the head (tail pages).
    #[inline]
    pub(crate) const fn head_offset(self) -> usize {
        ((self.0 >> Self::HEAD_SHIFT) & ((1 << Self::HEAD_BITS) - 1)) as usize
    }

    /// A slab head's colour (`CacheConfig::colour`: its objects start `colour * colour_off`
    /// bytes into the slab), kept in the head-offset bits, which only tail pages use. At most
    /// [`Self::MAX_HEAD_OFFSET`].
    #[inline]
    pub(crate) const fn colour(self) -> usize {
        self.head_offset()
    }

    /// The same word with colour `c` (`c <= MAX_HEAD_OFFSET`; slab heads only).
    #[inline]
    pub(crate) const fn with_colour(self, c: usize) -> Self {
        let mask = ((1u32 << Self::HEAD_BITS) - 1) << Self::HEAD_SHIFT;
        PageInfo((self.0 & !mask) | (((c as u32) << Self::HEAD_SHIFT) & mask))
    }
}

impl core::fmt::Debug for PageInfo {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageInfo")
            .field("kind", &self.kind())
            .field("order", &self.order())
            .field("released", &self.released())
            .field("node", &self.node())
            .field("head_offset", &self.head_offset())
            .finish()
    }
}

/// One page descriptor (48 bytes). See the module docs for which fields mean what.
///
/// Three descriptors take 144 bytes, so a descriptor may straddle two cache lines; its
/// 16-byte double word never does (the stride keeps it 16-byte aligned).
#[repr(C, align(16))]
pub(crate) struct Page {
    // ---- struct slab (head page of a slab) ----
    /// `{freelist, counters}`: the slab's own freelist (objects freed while the slab is not the
    /// CPU slab, or remotely) and its packed [`Counters`](crate::slub::slab::Counters).
    pub(crate) freelist_counters: DWord,
    /// The owning cache (`*const CacheInner`), set before the slab is published; read without a
    /// lock by the free paths for the O(1) owner check.
    pub(crate) cache: AtomicPtr<u8>,
    /// The packed [`PageInfo`].
    pub(crate) info: AtomicU32,
    /// Slabs on the CPU partial list from this one to its end (slot lock); a free buddy head's
    /// decay stamp; a block in transit's order.
    pub(crate) slabs: Cell<u32>,
    // ---- list links: buddy free list or transit list (Free, in transit), node partial list
    // (Slab); `lru_next` is also [`Page::next`] ----
    /// Previous page on the list this page is on.
    pub(crate) lru_prev: Cell<*mut Page>,
    /// Next page on the list this page is on; the single link of the other chains.
    pub(crate) lru_next: Cell<*mut Page>,
}

#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::size_of::<Page>() == 48);
    assert!(core::mem::offset_of!(Page, freelist_counters) % 16 == 0);
};

impl Page {
    /// A descriptor with the given info word.
    pub(crate) fn new(info: PageInfo) -> Self {
        Page {
            freelist_counters: DWord::new(0, 0),
            cache: AtomicPtr::new(core::ptr::null_mut()),
            info: AtomicU32::new(info.0),
            slabs: Cell::new(0),
            lru_prev: Cell::new(core::ptr::null_mut()),
            lru_next: Cell::new(core::ptr::null_mut()),
        }
    }

    /// The link of the chains a page is on while it is on no list of `lru_prev`/`lru_next`
    /// (the kernel's `slab->next`, which shares its words with `slab->slab_list` the same
    /// way): a frozen slab's CPU partial list (slot lock), a chain of slabs taken off their
    /// lists (discard, hand-over), a block on a CPU page list (`pcp.rs`), an allocated block's
    /// owner's chain (the sheaf pool's blocks). It *is* `lru_next`: every user takes a page off
    /// its list before linking it here (`remove_partial`, `unlink` clear the links) and reads
    /// this link before putting the page on a list again.
    #[inline(always)]
    pub(crate) fn next(&self) -> &Cell<*mut Page> {
        &self.lru_next
    }

    /// The info word (Acquire: pairs with the Release in [`Page::set_info`]).
    #[inline(always)]
    pub(crate) fn info(&self) -> PageInfo {
        PageInfo(self.info.load(Ordering::Acquire))
    }

    /// Sets the info word (Release).
    #[inline]
    pub(crate) fn set_info(&self, info: PageInfo) {
        self.info.store(info.0, Ordering::Release)
    }

    /// The node this page belongs to.
    #[inline]
    pub(crate) fn node(&self) -> usize {
        self.info().node()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_every_field() {
        for kind in [
            PageKind::Free,
            PageKind::Block,
            PageKind::Slab,
            PageKind::Pcp,
        ] {
            for order in [0u32, 1, 10, 31] {
                for node in [0usize, 1, PageInfo::MAX_NODE] {
                    for released in [false, true] {
                        let i = PageInfo::head(kind, order, node, released);
                        assert_eq!(i.kind(), kind);
                        assert_eq!(i.order(), order);
                        assert_eq!(i.node(), node);
                        assert_eq!(i.released(), released);
                        assert_eq!(i.head_offset(), 0);
                    }
                }
            }
        }
        for pages in [1usize, 3, 5, 8, 1000, 1024] {
            let order = pages.next_power_of_two().trailing_zeros();
            let b = PageInfo::block(order, 7, pages);
            assert_eq!(b.kind(), PageKind::Block);
            assert_eq!((b.order(), b.node(), b.released()), (order, 7, false));
            assert_eq!(b.block_pages(), pages);
        }
        // A whole block reads as a plain head.
        assert_eq!(
            PageInfo::block(3, 1, 8),
            PageInfo::head(PageKind::Block, 3, 1, false)
        );
        let t = PageInfo::tail(PageInfo::MAX_HEAD_OFFSET, 3);
        assert_eq!(t.kind(), PageKind::Tail);
        assert_eq!(t.head_offset(), PageInfo::MAX_HEAD_OFFSET);
        assert_eq!(t.node(), 3);
        assert_eq!(PageInfo(0).kind(), PageKind::Absent);
    }

    #[test]
    fn descriptor_is_48_bytes_with_an_aligned_double_word() {
        assert_eq!(core::mem::size_of::<Page>(), 48);
        assert_eq!(core::mem::align_of::<Page>(), 16);
        assert_eq!(core::mem::offset_of!(Page, freelist_counters), 0);
        // `next` is `lru_next` (the overlay the module docs describe).
        let p = Page::new(PageInfo(0));
        assert!(core::ptr::eq(p.next(), &p.lru_next));
    }
}
