//! Chunks: mapping one from the OS and carving it into free blocks (`grow`), unmapping it
//! (`destroy_chunk`, `Drop`), and finding a pointer's page descriptor (`virt_to_page`).
//! (Part of `impl PageAllocator`: see `page/mod.rs` for why it is split by concern.)

use super::buddy::*;
use super::*;
use crate::os::{self, Num};
use crate::sync::{Cell, Ordering};
use core::ptr::{self, null_mut, NonNull};

/// The out-of-band metadata of one chunk: header, then one descriptor per page.
#[repr(C, align(64))]
pub(crate) struct ChunkMeta {
    /// The chunk's first byte (CHUNK_SIZE-aligned), with provenance.
    pub(super) base: *mut u8,
    /// Pages that exist (the rest are Absent).
    pub(super) usable_pages: usize,
    /// Identity of the owning allocator instance.
    pub(super) budget: *const PageBudget,
    /// Owning node.
    pub(super) node: usize,
    /// Next chunk of the same node (node lock).
    pub(super) next: Cell<*mut ChunkMeta>,
    /// The descriptors.
    pub(super) pages: [Page; PAGES_PER_CHUNK],
}

/// Bytes of a chunk's metadata in use: the header and descriptors, in whole pages (its mapping
/// is [`META_RESERVE`] bytes).
const META_BYTES: usize = core::mem::size_of::<ChunkMeta>().next_multiple_of(PAGE_SIZE);

/// The reservation a chunk's metadata is mapped in, and its alignment: the metadata's size in
/// whole pages, rounded up to a power of two, and at least 64 KiB (a 4 MiB chunk's metadata
/// takes 13 pages of it; the rest is never touched). Aligned to its size, its address is a key
/// of the metadata table (`radix::meta_of`, keyed by `addr >> META_SHIFT`).
///
/// The 64 KiB floor gives the table the same shape in every build. Under Miri's small chunks
/// the metadata fits one page, and a 4 KiB granule made a root of 2^18 entries, which Miri's
/// borrow tracker handles about four times slower (measured on the page tests).
pub(super) const META_RESERVE: usize = {
    let size = META_BYTES.next_power_of_two();
    if size < 1 << 16 {
        1 << 16
    } else {
        size
    }
};
/// log2 of [`META_RESERVE`].
pub(super) const META_SHIFT: u32 = META_RESERVE.trailing_zeros();

impl ChunkMeta {
    /// Descriptor `i` (raw: no reference to the whole header is ever formed).
    #[inline(always)]
    pub(super) unsafe fn page(meta: *mut ChunkMeta, i: usize) -> *mut Page {
        // SAFETY: the caller passes a live chunk and `i < PAGES_PER_CHUNK`.
        unsafe { ptr::addr_of_mut!((*meta).pages).cast::<Page>().add(i) }
    }
}

/// The chunk metadata and page index of the descriptor at `p`, if `p` is the address of a
/// descriptor of a registered chunk (of any allocator instance).
///
/// Goes through the metadata table (`radix::meta_of`) rather than stepping back from `p`: a
/// descriptor pointer made from a `&Page` only has provenance over that descriptor, while the
/// table's pointer covers the whole metadata mapping.
#[inline(always)]
pub(super) fn descriptor_index(p: *const Page) -> Option<(*mut ChunkMeta, usize)> {
    // `addr()`, not `as usize`: the descriptor's provenance is never exposed. (Exposing it on
    // every lookup would keep each retag of the descriptor alive for Miri's borrow tracker,
    // whose stacks then grow without bound.)
    let meta = radix::meta_of(p.addr())?.as_ptr();
    let first = meta.addr() + core::mem::offset_of!(ChunkMeta, pages);
    let off = p.addr().checked_sub(first)?;
    let idx = off / core::mem::size_of::<Page>();
    (off % core::mem::size_of::<Page>() == 0 && idx < PAGES_PER_CHUNK).then_some((meta, idx))
}

/// The chunk metadata and page index of a genuine descriptor.
///
/// # Safety
/// `p` is a descriptor of a registered (live) chunk.
#[inline(always)]
pub(super) unsafe fn chunk_of(p: *const Page) -> (*mut ChunkMeta, usize) {
    match descriptor_index(p) {
        Some(found) => found,
        None => {
            crate::os::abort_msg(&["kmem: internal error: descriptor of an unregistered chunk"])
        }
    }
}

/// The descriptor of the page containing `ptr` if it lies in a registered chunk.
#[inline]
pub(super) fn page_of(ptr: usize) -> Option<*mut Page> {
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

/// [`virt_to_page`] for a pointer that should be in an allocated block (a slab object being
/// freed): one step from a tail to its head, as allocated tails lead there directly, and no
/// loop. For a pointer into an allocated block (or slab) the result is its head, as with
/// `virt_to_page`; for any other pointer it is some descriptor that is not the head of an
/// allocated block (a free interior page, an `Absent` page), and a caller that finds no
/// allocated head of the kind it expects asks `virt_to_page` for the precise page to report.
#[inline(always)]
pub(crate) fn virt_to_page_allocated(ptr: *const u8) -> Option<&'static Page> {
    let mut p = page_of(ptr as usize)?;
    // SAFETY: `p` is a descriptor of a registered (live) chunk.
    let info = unsafe { &*p }.info();
    if info.kind() == PageKind::Tail {
        // SAFETY: a tail's offset stays inside its chunk's descriptor array.
        p = unsafe { p.sub(info.head_offset()) };
    }
    // SAFETY: descriptors of registered chunks live as long as the chunk.
    Some(unsafe { &*p })
}

/// The slab tag of the page holding `ptr`: 0 when `ptr` lies in no registered chunk or its page
/// holds no tagged slab.
///
/// A *slab tag* is two bytes per page, kept apart from the descriptors in a dense table (32
/// pages per cache line, where a descriptor takes most of a line; the tag map of
/// `radix.rs`, two dependent loads from a pointer to its tag): the slab layer writes a
/// nonzero tag on every page of a slab of a cache that has one ([`slab_tag_of`]: the cache's
/// tag id in the low 12 bits — a kmalloc class index + 1, or an id a sheaf cache took at
/// creation, `slub/tag_id.rs` — and the slab's order above) before any object of the slab is
/// handed out, and clears it before the slab's pages go back to the page allocator. So a
/// nonzero tag names a live slab of that cache, and a free that finds the tag it expects
/// knows the object's cache without reading the descriptor (which a free of a random object
/// would miss in the cache). Any other value sends the free to the descriptor check.
#[inline(always)]
pub(crate) fn slab_tag(ptr: *const u8) -> u16 {
    radix::tag(ptr as usize)
}

/// Bits of a slab tag that hold the cache's tag id (the order is above them).
pub(crate) const TAG_ID_BITS: u32 = 12;
/// The largest tag id.
pub(crate) const TAG_ID_MAX: u16 = (1 << TAG_ID_BITS) - 1;

/// The slab tag of a slab of order `order` of the cache whose tag id is `id` (`1..=TAG_ID_MAX`;
/// [`slab_tag`]).
#[inline(always)]
pub(crate) const fn slab_tag_of(id: u16, order: u32) -> u16 {
    // Orders are at most MAX_ORDER (10): they fit the 4 bits above the id.
    id | (order as u16) << TAG_ID_BITS
}
const _: () = assert!(super::MAX_ORDER < 1 << (16 - TAG_ID_BITS));

/// Writes `tag` on each of the `1 << order` pages of the allocated block headed by `head` (see
/// [`slab_tag`]; 0 clears them).
pub(crate) fn set_slab_tags(head: &Page, order: u32, tag: u16) {
    let first = page_address(head) as usize;
    for i in 0..1usize << order {
        radix::tag_cell(first + (i << PAGE_SHIFT)).store(tag, Ordering::Release);
    }
}

/// The memory described by a descriptor of a live chunk, derived from the chunk's base pointer
/// (so it keeps the mapping's provenance).
#[allow(dead_code)] // for the slab layer (Miri runs it with strict provenance checks)
pub(crate) fn page_address(page: &Page) -> *mut u8 {
    // Outside chunk set-up, a `&Page` can only come from a descriptor of a live chunk.
    // SAFETY: `page` is a descriptor of a live chunk, so its chunk header is initialised.
    unsafe {
        let (meta, idx) = chunk_of(page);
        (*meta).base.add(idx << PAGE_SHIFT)
    }
}

impl PageAllocator {
    /// Maps one chunk (or the partial last one the limit allows) and puts its blocks on the
    /// free lists.
    pub(super) fn grow(&self) -> Grow {
        let budget = self.budget();
        // Counted before reserving: whoever finds the limit reached after our reservation sees
        // this mapping under way until its blocks are on the lists.
        budget.growing.fetch_add(1, Ordering::AcqRel);
        let r = self.grow_reserved(budget);
        budget.growing.fetch_sub(1, Ordering::AcqRel);
        r
    }

    pub(super) fn grow_reserved(&self, budget: &PageBudget) -> Grow {
        let usable = budget.reserve_chunk();
        if usable == 0 {
            return Grow::Limit;
        }
        let Some(base) = os::map_partial(CHUNK_SIZE, usable, CHUNK_SIZE) else {
            budget.unreserve(usable);
            return Grow::Os;
        };
        // Aligned to META_RESERVE in a mapping of that size, so that its address is a key of
        // the metadata table (`radix::meta_of`); the pages past `META_BYTES` are never touched.
        let Some(meta_raw) = os::map(META_RESERVE, META_RESERVE) else {
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
                unsafe { ChunkMeta::page(meta, i + j).write(Page::new(info)) };
            }
            i += 1 << o;
        }
        for j in usable_pages..PAGES_PER_CHUNK {
            let info = PageInfo::head(PageKind::Absent, 0, self.node, false);
            // SAFETY: as above.
            unsafe { ChunkMeta::page(meta, j).write(Page::new(info)) };
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
            st.metadata += META_BYTES;
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
    pub(super) unsafe fn destroy_chunk(meta: *mut ChunkMeta) {
        // SAFETY: caller contract: the header and descriptors are initialised and dead.
        unsafe {
            let base = (*meta).base;
            for i in 0..PAGES_PER_CHUNK {
                ptr::drop_in_place(ChunkMeta::page(meta, i));
            }
            os::unmap(NonNull::new_unchecked(base), CHUNK_SIZE, CHUNK_SIZE);
            os::unmap(
                NonNull::new_unchecked(meta.cast()),
                META_RESERVE,
                META_RESERVE,
            );
        }
    }
}

impl Drop for PageAllocator {
    fn drop(&mut self) {
        // Blocks on the per-CPU lists are free: back to the buddy lists, so chunks that hold
        // nothing else are unmapped.
        self.drain_pcp(false);
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
                    radix::unregister((*chunk).base as usize, NonNull::new_unchecked(chunk));
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
