//! The process-wide chunk tables: `ptr >> CHUNK_SHIFT` to the chunk's metadata, in two loads,
//! by the address of the chunk's memory (`lookup`) and by the address of its metadata
//! (`meta_of`: a descriptor leads to its chunk, and so to its page, with no field of its own).
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

use super::chunk::{META_RESERVE, META_SHIFT};
use super::{ChunkMeta, CHUNK_SHIFT, CHUNK_SIZE, PAGES_PER_CHUNK, PAGE_SHIFT};
use crate::sync::global::{AtomicPtr, AtomicU16, Ordering};
use core::ptr::{null_mut, NonNull};

/// Address bits covered (x86_64 and aarch64 user space without 5-level paging hints).
const ADDR_BITS: u32 = 48;

/// Defines a two-level table type `$table` (with leaves `$leaf`) from `addr >> $shift` to a
/// `ChunkMeta`: the high half of the key indexes a static array of leaf pointers, the low half
/// a leaf, mapped from the OS on first use (zeroed: every entry starts empty) and never freed.
macro_rules! chunk_table {
    ($table:ident, $leaf:ident, $shift:expr) => {
        /// A second-level table.
        struct $leaf([AtomicPtr<ChunkMeta>; 1 << $table::L2_BITS]);

        /// A table of leaf pointers (the macro's docs).
        struct $table([AtomicPtr<$leaf>; 1 << $table::L1_BITS]);

        impl $table {
            const SHIFT: u32 = $shift;
            const KEY_BITS: u32 = ADDR_BITS - Self::SHIFT;
            const L2_BITS: u32 = Self::KEY_BITS / 2;
            const L1_BITS: u32 = Self::KEY_BITS - Self::L2_BITS;

            const fn new() -> Self {
                $table([const { AtomicPtr::new(null_mut()) }; 1 << Self::L1_BITS])
            }

            #[inline(always)]
            fn split(addr: usize) -> Option<(usize, usize)> {
                let key = addr >> Self::SHIFT;
                if key >> Self::KEY_BITS != 0 {
                    return None;
                }
                Some((key >> Self::L2_BITS, key & ((1 << Self::L2_BITS) - 1)))
            }

            /// Root entry `i` (`i` below the root's length), without a reference to the whole
            /// table: Miri's borrow tracker retags a reference once per atomic it covers, and
            /// these tables hold up to 2^18 of them.
            #[inline(always)]
            fn root_entry(this: *const Self, i: usize) -> &'static AtomicPtr<$leaf> {
                debug_assert!(i < 1 << Self::L1_BITS);
                // SAFETY: `this` is one of the statics below (it lives for ever), and `i` is
                // below the root's length (`split`).
                unsafe {
                    &*core::ptr::addr_of!((*this).0)
                        .cast::<AtomicPtr<$leaf>>()
                        .add(i)
                }
            }

            /// Entry `j` of a published leaf, without a reference to the whole leaf (as
            /// `root_entry`).
            #[inline(always)]
            fn leaf_entry(leaf: *mut $leaf, j: usize) -> &'static AtomicPtr<ChunkMeta> {
                // Leaves were fully zero-initialised (a valid array of null AtomicPtrs) before
                // the Release CAS that published them.
                // SAFETY: published leaves are never freed and were initialised before
                // publication; `j` is below a leaf's length (`split`).
                unsafe {
                    &*core::ptr::addr_of!((*leaf).0)
                        .cast::<AtomicPtr<ChunkMeta>>()
                        .add(j)
                }
            }

            /// The entry for `addr`, if any.
            #[inline(always)]
            fn lookup(this: *const Self, addr: usize) -> Option<NonNull<ChunkMeta>> {
                let (i, j) = Self::split(addr)?;
                let leaf = Self::root_entry(this, i).load(Ordering::Acquire);
                if leaf.is_null() {
                    return None;
                }
                NonNull::new(Self::leaf_entry(leaf, j).load(Ordering::Acquire))
            }

            /// Publishes `meta` under the key of `addr`. False if the address is outside the
            /// table or a leaf could not be mapped.
            fn insert(this: *const Self, addr: usize, meta: NonNull<ChunkMeta>) -> bool {
                let Some((i, j)) = Self::split(addr) else {
                    return false;
                };
                let slot = Self::root_entry(this, i);
                let mut leaf = slot.load(Ordering::Acquire);
                if leaf.is_null() {
                    let Some(new) = crate::os::map(core::mem::size_of::<$leaf>(), 4096) else {
                        return false;
                    };
                    let new = new.as_ptr().cast::<$leaf>();
                    match slot.compare_exchange(
                        null_mut(),
                        new,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => leaf = new,
                        Err(existing) => {
                            // SAFETY: `new` was mapped above with this size and never published.
                            unsafe {
                                crate::os::unmap(
                                    NonNull::new_unchecked(new.cast()),
                                    core::mem::size_of::<$leaf>(),
                                    4096,
                                )
                            };
                            leaf = existing;
                        }
                    }
                }
                Self::leaf_entry(leaf, j).store(meta.as_ptr(), Ordering::Release);
                true
            }

            /// Clears the entry of `addr` (inserted earlier).
            fn remove(this: *const Self, addr: usize) {
                if let Some((i, j)) = Self::split(addr) {
                    let leaf = Self::root_entry(this, i).load(Ordering::Acquire);
                    if !leaf.is_null() {
                        Self::leaf_entry(leaf, j).store(null_mut(), Ordering::Release);
                    }
                }
            }
        }
    };
}

chunk_table!(Table, Leaf, CHUNK_SHIFT);
chunk_table!(MetaTable, MetaLeaf, META_SHIFT);

/// The chunks by the address of their memory (`addr >> CHUNK_SHIFT`).
static ROOT: Table = Table::new();

/// The chunks by the address of their metadata (`ChunkMeta`), which is mapped
/// [`META_RESERVE`]-aligned in a reservation of that size (64 KiB: the 48-byte descriptors of
/// a 4 MiB chunk and its header take 13 pages): from a descriptor's own address to its chunk
/// ([`meta_of`]), so a descriptor needs no field naming its page.
static META_ROOT: MetaTable = MetaTable::new();

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

/// The metadata of the registered chunk containing `addr`, if any.
#[inline]
pub(super) fn lookup(addr: usize) -> Option<NonNull<ChunkMeta>> {
    Table::lookup(core::ptr::addr_of!(ROOT), addr)
}

/// The metadata of the registered chunk whose metadata mapping contains `addr` (the address of
/// one of its descriptors), if any. The pointer is the table's: it carries the provenance of
/// the whole metadata mapping, which a pointer made from a `&Page` does not.
#[inline(always)]
pub(super) fn meta_of(addr: usize) -> Option<NonNull<ChunkMeta>> {
    MetaTable::lookup(core::ptr::addr_of!(META_ROOT), addr)
}

/// Publishes `meta` (mapped [`META_RESERVE`]-aligned, in a reservation of that size) for the
/// chunk at `base`, by both addresses. False if an address is outside the table or a leaf
/// could not be mapped (then nothing stays published).
pub(super) fn register(base: usize, meta: NonNull<ChunkMeta>) -> bool {
    debug_assert_eq!(meta.as_ptr() as usize & (META_RESERVE - 1), 0);
    // The chunk's tags first (all zero: no slab yet), so that a published chunk has them; the
    // descriptors' key before the memory's, so that whoever finds the chunk by a pointer into
    // it can go from its descriptors back to it.
    let (root, meta_root) = (core::ptr::addr_of!(ROOT), core::ptr::addr_of!(META_ROOT));
    if !install_tag_leaf(base) || !MetaTable::insert(meta_root, meta.as_ptr() as usize, meta) {
        return false;
    }
    if !Table::insert(root, base, meta) {
        MetaTable::remove(meta_root, meta.as_ptr() as usize);
        return false;
    }
    true
}

/// Removes the chunk at `base` (registered earlier with `meta`), and clears its tags.
pub(super) fn unregister(base: usize, meta: NonNull<ChunkMeta>) {
    for p in 0..PAGES_PER_CHUNK {
        tag_cell(base + (p << PAGE_SHIFT)).store(0, Ordering::Release);
    }
    debug_assert_eq!(base & (CHUNK_SIZE - 1), 0);
    Table::remove(core::ptr::addr_of!(ROOT), base);
    MetaTable::remove(core::ptr::addr_of!(META_ROOT), meta.as_ptr() as usize);
}
