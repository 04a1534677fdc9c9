//! The process-wide chunk table: `ptr >> CHUNK_SHIFT` to the chunk's metadata, in two loads.
//!
//! A two-level radix table covers the 48-bit user address space. The first level is a static
//! array of leaf pointers; leaves are mapped from the OS on first use (zeroed, so every slot
//! starts empty) and are never freed, so a reader that loaded a leaf pointer can always
//! dereference it. A chunk is published with a Release store of its metadata pointer after the
//! metadata is fully built, and readers load with Acquire, so a reader that finds a chunk sees
//! its descriptors. Lookups take no lock; registration only races with other registrations of
//! *different* chunks (a chunk's key is unique while it is mapped), and leaf installation is a
//! CAS whose loser unmaps its own leaf.
//!
//! Beside it, the *tag map*: the slab tags (`chunk.rs`, `slab_tag`), one `u16` per 4 KiB page
//! of the address space, in leaves of [`TAG_LEAF_PAGES`] tags (16 MiB of address space each,
//! reserved without backing: a leaf's page becomes resident when a chunk whose tags it holds
//! writes one, and reads elsewhere see the shared zero page). A static root of leaf pointers
//! indexed by `ptr >> TAG_LEAF_SHIFT` leads to them, so a free's tag is two dependent loads
//! (root, then the tag) where going through the chunk table took three (root, leaf, then the
//! chunk's own table). A chunk's registration installs the leaf its pages fall in; its
//! unregistration clears its tags, so a later mapping at the same address (another
//! allocator's memory) reads untagged.

use super::{ChunkMeta, CHUNK_SHIFT, CHUNK_SIZE, PAGES_PER_CHUNK, PAGE_SHIFT};
use crate::sync::global::{AtomicPtr, AtomicU16, Ordering};
use core::ptr::{null_mut, NonNull};

/// Address bits covered (x86_64 and aarch64 user space without 5-level paging hints).
const ADDR_BITS: u32 = 48;
const KEY_BITS: u32 = ADDR_BITS - CHUNK_SHIFT;
const L2_BITS: u32 = KEY_BITS / 2;
const L1_BITS: u32 = KEY_BITS - L2_BITS;
const L2_LEN: usize = 1 << L2_BITS;

/// A second-level table.
struct Leaf([AtomicPtr<ChunkMeta>; L2_LEN]);

static ROOT: [AtomicPtr<Leaf>; 1 << L1_BITS] = [const { AtomicPtr::new(null_mut()) }; 1 << L1_BITS];

/// Address bits one tag leaf covers (32 GiB: 2^23 pages, a 16 MiB leaf).
const TAG_LEAF_SHIFT: u32 = 35;
/// Tags per leaf.
const TAG_LEAF_PAGES: usize = 1 << (TAG_LEAF_SHIFT - PAGE_SHIFT);
/// Bytes of a tag leaf.
const TAG_LEAF_BYTES: usize = TAG_LEAF_PAGES * core::mem::size_of::<u16>();
/// Leaves in the tag root.
const TAG_ROOT_LEN: usize = 1 << (ADDR_BITS - TAG_LEAF_SHIFT);
// A chunk's tags never straddle two leaves.
const _: () = assert!(TAG_LEAF_SHIFT >= CHUNK_SHIFT);

/// The tag root (module docs): leaf `i` holds the tags of the pages of
/// `[i << TAG_LEAF_SHIFT, (i + 1) << TAG_LEAF_SHIFT)`.
static TAG_ROOT: [AtomicPtr<AtomicU16>; TAG_ROOT_LEN] =
    [const { AtomicPtr::new(null_mut()) }; TAG_ROOT_LEN];

/// The slab tag of the page holding `addr` (0 outside every registered chunk's tagged slabs).
#[inline(always)]
pub(super) fn tag(addr: usize) -> u16 {
    let i = addr >> TAG_LEAF_SHIFT;
    if i >= TAG_ROOT_LEN {
        return 0;
    }
    let leaf = crate::sync::static_ref!(TAG_ROOT)[i].load(Ordering::Acquire);
    if leaf.is_null() {
        return 0;
    }
    let j = (addr >> PAGE_SHIFT) & (TAG_LEAF_PAGES - 1);
    // SAFETY: published leaves are never freed, were zero-filled (valid atomics) before the
    // Release that published them, and hold TAG_LEAF_PAGES tags, `j` being below that.
    unsafe { &*leaf.add(j) }.load(Ordering::Acquire)
}

/// The tag cell of page `addr` of a registered chunk (its leaf exists: `register` made sure).
#[inline(always)]
pub(super) fn tag_cell(addr: usize) -> &'static AtomicU16 {
    let leaf = TAG_ROOT[addr >> TAG_LEAF_SHIFT].load(Ordering::Acquire);
    if leaf.is_null() {
        crate::os::abort_msg(&["kmem: internal error: a slab tag outside the tag map"]);
    }
    // SAFETY: as in `tag`.
    unsafe { &*leaf.add((addr >> PAGE_SHIFT) & (TAG_LEAF_PAGES - 1)) }
}

/// Installs the tag leaf covering `base` if none is (false if it could not be mapped).
fn install_tag_leaf(base: usize) -> bool {
    let slot = &TAG_ROOT[base >> TAG_LEAF_SHIFT];
    if !slot.load(Ordering::Acquire).is_null() {
        return true;
    }
    let Some(new) = crate::os::map(TAG_LEAF_BYTES, 4096) else {
        return false;
    };
    let new = new.as_ptr().cast::<AtomicU16>();
    if slot
        .compare_exchange(null_mut(), new, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // SAFETY: `new` was mapped above with this size and never published.
        unsafe { crate::os::unmap(NonNull::new_unchecked(new.cast()), TAG_LEAF_BYTES, 4096) };
    }
    true
}

#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    let key = addr >> CHUNK_SHIFT;
    if key >> KEY_BITS != 0 {
        return None;
    }
    Some((key >> L2_BITS, key & (L2_LEN - 1)))
}

/// The metadata of the registered chunk containing `addr`, if any.
#[inline]
pub(super) fn lookup(addr: usize) -> Option<NonNull<ChunkMeta>> {
    let (i, j) = split(addr)?;
    let leaf = ROOT[i].load(Ordering::Acquire);
    if leaf.is_null() {
        return None;
    }
    // Leaves were fully zero-initialised (a valid array of null AtomicPtrs) before the Release CAS
    // that published them.
    // SAFETY: published leaves are never freed and were initialised before publication.
    NonNull::new(unsafe { &*leaf }.0[j].load(Ordering::Acquire))
}

/// Publishes `meta` for the chunk at `base`. False if the address is outside the table or a
/// leaf could not be mapped.
pub(super) fn register(base: usize, meta: NonNull<ChunkMeta>) -> bool {
    let Some((i, j)) = split(base) else {
        return false;
    };
    // The chunk's tags first (all zero: no slab yet), so that a published chunk has them.
    if !install_tag_leaf(base) {
        return false;
    }
    let mut leaf = ROOT[i].load(Ordering::Acquire);
    if leaf.is_null() {
        let Some(new) = crate::os::map(core::mem::size_of::<Leaf>(), 4096) else {
            return false;
        };
        let new = new.as_ptr().cast::<Leaf>();
        match ROOT[i].compare_exchange(null_mut(), new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => leaf = new,
            Err(existing) => {
                // SAFETY: `new` was mapped above with this size and never published.
                unsafe {
                    crate::os::unmap(
                        NonNull::new_unchecked(new.cast()),
                        core::mem::size_of::<Leaf>(),
                        4096,
                    )
                };
                leaf = existing;
            }
        }
    }
    // SAFETY: as in `lookup`: published leaves live forever.
    unsafe { &*leaf }.0[j].store(meta.as_ptr(), Ordering::Release);
    true
}

/// Removes the chunk at `base` (registered earlier), and clears its tags.
pub(super) fn unregister(base: usize) {
    for p in 0..PAGES_PER_CHUNK {
        tag_cell(base + (p << PAGE_SHIFT)).store(0, Ordering::Release);
    }
    debug_assert_eq!(base & (CHUNK_SIZE - 1), 0);
    if let Some((i, j)) = split(base) {
        let leaf = ROOT[i].load(Ordering::Acquire);
        if !leaf.is_null() {
            // SAFETY: as in `lookup`.
            unsafe { &*leaf }.0[j].store(null_mut(), Ordering::Release);
        }
    }
}
