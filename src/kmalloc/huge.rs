//! The table of kmalloc's own OS mappings (allocations above 4 MiB), so that a pointer alone
//! says in O(1) whether it is the start of one, and how long it is, without reading memory in
//! front of it.
//!
//! Every such mapping starts at a multiple of [`CHUNK_SIZE`] (4 MiB), so its start has a key
//! `addr >> CHUNK_SHIFT` that no other live mapping of ours shares. A two-level table like the
//! chunk radix table (`page/radix.rs`) maps that key to the mapping's length in bytes (0: none).
//! The first level is static; leaves are mapped from the OS on first use, zeroed, and never
//! freed, so a reader that loaded a leaf pointer can always dereference it. Lookups take no
//! lock: two Acquire loads. A mapping is registered after `mmap` and unregistered before
//! `munmap`, so a lookup that finds a length finds a live mapping (a concurrent free of the
//! same pointer is a double free: the caller's bug, which the swap in [`unregister`] catches
//! for all but one of the racing callers).

use crate::os;
use crate::page::{CHUNK_SHIFT, CHUNK_SIZE};
use crate::sync::global::{AtomicPtr, AtomicUsize, Ordering};
use core::ptr::{null_mut, NonNull};

/// Address bits covered (x86_64 and aarch64 user space without 5-level paging hints).
const ADDR_BITS: u32 = 48;
const KEY_BITS: u32 = ADDR_BITS - CHUNK_SHIFT;
const L2_BITS: u32 = KEY_BITS / 2;
const L1_BITS: u32 = KEY_BITS - L2_BITS;
const L2_LEN: usize = 1 << L2_BITS;

/// A second-level table: mapping lengths (0: no mapping starts at that key).
struct Leaf([AtomicUsize; L2_LEN]);

static ROOT: [AtomicPtr<Leaf>; 1 << L1_BITS] = [const { AtomicPtr::new(null_mut()) }; 1 << L1_BITS];

/// The table indices of a mapping start, or `None` when `addr` cannot start one.
#[inline(always)]
fn split(addr: usize) -> Option<(usize, usize)> {
    if addr & (CHUNK_SIZE - 1) != 0 {
        return None;
    }
    let key = addr >> CHUNK_SHIFT;
    if key >> KEY_BITS != 0 {
        return None;
    }
    Some((key >> L2_BITS, key & (L2_LEN - 1)))
}

/// The leaf for first-level index `i`, mapping it if `create`.
fn leaf(i: usize, create: bool) -> Option<&'static Leaf> {
    let mut leaf = ROOT[i].load(Ordering::Acquire);
    if leaf.is_null() {
        if !create {
            return None;
        }
        let new = os::map(core::mem::size_of::<Leaf>(), 4096)?
            .as_ptr()
            .cast::<Leaf>();
        match ROOT[i].compare_exchange(null_mut(), new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => leaf = new,
            Err(existing) => {
                // SAFETY: `new` was mapped above with this size and never published.
                unsafe {
                    os::unmap(
                        NonNull::new_unchecked(new.cast()),
                        core::mem::size_of::<Leaf>(),
                        4096,
                    )
                };
                leaf = existing;
            }
        }
    }
    // A leaf is a zeroed mapping (a valid array of zero AtomicUsizes), published with Release
    // after it was mapped, and never unmapped.
    // SAFETY: see above.
    Some(unsafe { &*leaf })
}

/// Encodes a registered mapping: its length (a page multiple, so the low 12 bits are free)
/// and the base-2 logarithm of its alignment in the low 6 bits.
#[inline(always)]
fn encode(bytes: usize, align: usize) -> usize {
    bytes | align.trailing_zeros() as usize
}

/// The length and alignment of the kmalloc OS mapping that starts at `addr`, or `None`.
#[inline]
pub(crate) fn lookup(addr: usize) -> Option<(usize, usize)> {
    let (i, j) = split(addr)?;
    let v = leaf(i, false)?.0[j].load(Ordering::Acquire);
    (v != 0).then_some((v & !63, 1 << (v & 63)))
}

/// Maps `bytes` (a non-zero page multiple) aligned to `max(align, CHUNK_SIZE)`, zeroed, and
/// registers it. Null when the OS refuses (or the table's leaf cannot be mapped).
pub(crate) fn map(bytes: usize, align: usize) -> *mut u8 {
    debug_assert!(bytes != 0 && bytes & 4095 == 0 && align.is_power_of_two());
    let align = align.max(CHUNK_SIZE);
    // Judged by the overcommit policy now (`os::map_accounted`): an impossible size fails here.
    let Some(p) = os::map_accounted(bytes, align) else {
        return null_mut();
    };
    let registered = split(p.as_ptr() as usize)
        .and_then(|(i, j)| Some((leaf(i, true)?, j)))
        .map(|(leaf, j)| leaf.0[j].store(encode(bytes, align), Ordering::Release))
        .is_some();
    if !registered {
        // SAFETY: mapped just above with these arguments, never handed out.
        unsafe { os::unmap(p, bytes, align) };
        return null_mut();
    }
    p.as_ptr()
}

/// Resizes the registered mapping at `ptr` (`bytes` long, aligned to `align`, as [`lookup`]
/// said) to `new` bytes (a non-zero page multiple) with `mremap`, without copying: in place
/// when the OS can (the entry's length is updated), else moved onto a fresh reservation aligned
/// to `align` (whose table leaf exists before anything moves; the new start is registered
/// before the old one is forgotten). Null, with the mapping untouched, when the OS refuses:
/// the caller allocates and copies instead.
///
/// # Safety
/// `ptr` starts a registered mapping of these arguments that the caller owns.
pub(crate) unsafe fn remap(ptr: *mut u8, bytes: usize, align: usize, new: usize) -> *mut u8 {
    debug_assert!(new != 0 && new & 4095 == 0);
    let (Some((i, j)), Some(p)) = (split(ptr as usize), NonNull::new(ptr)) else {
        return null_mut();
    };
    let Some(old_leaf) = leaf(i, false) else {
        return null_mut();
    };
    // SAFETY: the caller owns the mapping (contract).
    if unsafe { os::remap_in_place(p, bytes, new) } {
        old_leaf.0[j].store(encode(new, align), Ordering::Release);
        return ptr;
    }
    let Some(target) = os::map_partial(new, 0, align) else {
        return null_mut();
    };
    let Some((new_leaf, j2)) =
        split(target.as_ptr() as usize).and_then(|(i2, j2)| Some((leaf(i2, true)?, j2)))
    else {
        // SAFETY: the reservation made above, never handed out.
        unsafe { os::unmap(target, new, align) };
        return null_mut();
    };
    // SAFETY: the caller owns the mapping; the reservation is ours and distinct from it.
    if !unsafe { os::remap_to(p, bytes, new, target) } {
        // SAFETY: as above: still our reservation.
        unsafe { os::unmap(target, new, align) };
        return null_mut();
    }
    new_leaf.0[j2].store(encode(new, align), Ordering::Release);
    old_leaf.0[j].store(0, Ordering::Release);
    target.as_ptr()
}

/// Unregisters and unmaps the mapping at `ptr`, which [`lookup`] said is `bytes` long and
/// aligned to `align`. Aborts if it is no longer registered so (a double free racing with this
/// one).
///
/// # Safety
/// `ptr` starts a registered mapping that the caller owns and no longer uses.
pub(crate) unsafe fn unmap(ptr: *mut u8, bytes: usize, align: usize) {
    let gone = split(ptr as usize)
        .and_then(|(i, j)| leaf(i, false).map(|l| l.0[j].swap(0, Ordering::AcqRel)))
        .unwrap_or(0);
    if gone != encode(bytes, align) {
        crate::os::abort_msg(&[
            "kmem: free of a kmalloc OS mapping at ",
            os::Num::hex(ptr as u64).as_str(),
            " that is not (or no longer) registered with that length: double free?",
        ]);
    }
    // SAFETY: `ptr` is a live mapping made by `map` with exactly these arguments (caller contract, confirmed by the table entry above, which no one else can now remove).
    unsafe { os::unmap(NonNull::new_unchecked(ptr), bytes, align) };
}
