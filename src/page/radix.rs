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

use super::{ChunkMeta, CHUNK_SHIFT};
use crate::sync::global::{AtomicPtr, Ordering};
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

/// Removes the chunk at `base` (registered earlier).
pub(super) fn unregister(base: usize) {
    if let Some((i, j)) = split(base) {
        let leaf = ROOT[i].load(Ordering::Acquire);
        if !leaf.is_null() {
            // SAFETY: as in `lookup`.
            unsafe { &*leaf }.0[j].store(null_mut(), Ordering::Release);
        }
    }
}
