//! Owner tracking (`SLAB_STORE_USER`): `struct track`, `set_track`, `init_tracking`, and how
//! the caller's return address reaches the debug paths.
//!
//! Each object of a `STORE_USER` cache carries two records after its free pointer: the last
//! allocation and the last free. A record holds
//!
//! - `addr`: the return address of the call that entered kmem's debug path;
//! - `when`: `CLOCK_MONOTONIC` in nanoseconds (`clock_gettime`, a vDSO call, no allocation);
//! - `tid`: the thread id (`gettid`);
//! - `cpu`: the CPU the thread ran on (the CPU id kmem uses to pick its slot).
//!
//! Reports print them as the kernel does (`Allocated in ... age=... cpu=... pid=...`), with the
//! address resolved through `/proc/self/maps` to `file+offset` (feed it to `addr2line -e file`).
//!
//! # Which return address (the choice, and its limits)
//!
//! The kernel records `_RET_IP_`, the return address of its exported entry point. kmem's
//! entry points are inlined into their callers (`KmemCache::alloc` is `#[inline]` and the
//! fast paths are `#[inline(always)]`), so the debug path is entered by a `call` that sits
//! in the caller's own code whenever the entry point was inlined there. On x86_64 that call
//! goes through a two-instruction trampoline (`global_asm!` below) that loads the return
//! address from `[rsp]` into the next argument register and jumps to the real function: the
//! address recorded is the instruction after that `call`. No frame pointers, no unwinding,
//! no allocation. `core::panic::Location` (`#[track_caller]`) was not chosen: it is not a
//! return address, it says nothing for the global allocator (the caller of `GlobalAlloc::alloc`
//! is always the standard library's shim) and nothing for the C ABI.
//!
//! The limit: when the entry point was *not* inlined — `Kmalloc::alloc` behind
//! `__rust_alloc`, the C ABI's `malloc` in `libkmem.so`, or `KmemCache::alloc` called from
//! another crate without cross-crate inlining — the address is inside that entry point, one
//! frame below the user's code. Thread, CPU and time are exact in every case. On other
//! architectures, under Miri and under loom, `addr` is 0 and reports print no address.

use super::CacheInner;
use crate::page::Page;

/// Bytes of one record: `addr`, `when`, then `tid` and `cpu` packed in one word.
pub(crate) const TRACK_SIZE: usize = 3 * core::mem::size_of::<u64>();

/// Which record.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TrackItem {
    /// `TRACK_ALLOC`.
    Alloc = 0,
    /// `TRACK_FREE`.
    Free = 1,
}

/// `struct track`, as read back from an object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Track {
    pub(crate) addr: u64,
    pub(crate) when: u64,
    pub(crate) tid: u32,
    pub(crate) cpu: u32,
}

/// The calling thread's id (`gettid`; no allocation).
pub(crate) fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

impl CacheInner {
    /// The address of record `item` of the object at `obj`.
    #[inline]
    fn track_addr(&self, obj: usize, item: TrackItem) -> *mut u64 {
        (obj + self.get_info_end() + item as usize * TRACK_SIZE) as *mut u64
    }

    /// `set_track`: records the caller `addr`, the thread, CPU and time.
    ///
    /// # Safety
    /// `obj` is an object of this `STORE_USER` cache whose metadata the caller may write (it
    /// holds the node's `list_lock`, or the slab is not published yet).
    pub(crate) unsafe fn set_track(&self, obj: usize, item: TrackItem, addr: usize) {
        let p = self.track_addr(obj, item);
        let id = ((gettid() as u64) << 32) | crate::cpu::current_cpu() as u32 as u64;
        // SAFETY: three aligned words inside the object's slot (layout.rs), ours (contract).
        unsafe {
            p.write(addr as u64);
            p.add(1).write(crate::os::now_ns());
            p.add(2).write(id);
        }
    }

    /// `init_tracking`: both records cleared (a new slab).
    ///
    /// # Safety
    /// As [`Self::set_track`].
    pub(crate) unsafe fn init_tracking(&self, obj: usize) {
        // SAFETY: two records inside the slot (contract).
        unsafe { core::ptr::write_bytes(self.track_addr(obj, TrackItem::Alloc), 0, 6) };
    }

    /// `get_track`.
    ///
    /// # Safety
    /// `obj` is an object of this `STORE_USER` cache (its slot is mapped slab memory).
    pub(crate) unsafe fn get_track(&self, obj: usize, item: TrackItem) -> Track {
        let p = self.track_addr(obj, item);
        // SAFETY: three aligned words inside the slot (contract).
        let (addr, when, id) = unsafe { (p.read(), p.add(1).read(), p.add(2).read()) };
        Track {
            addr,
            when,
            tid: (id >> 32) as u32,
            cpu: id as u32,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entering the debug paths with the caller's return address
// ---------------------------------------------------------------------------------------------

/// The node argument of the alloc entry: `usize::MAX` for "any node".
const ANY_NODE: usize = usize::MAX;

/// The debug allocation path, with the caller's return address (`ret`).
extern "C-unwind" fn debug_alloc_ret(s: usize, node: usize, ret: usize) -> *mut u8 {
    // SAFETY: `s` is the address of the `&CacheInner` the entry was called with.
    let s = unsafe { &*(s as *const CacheInner) };
    s.debug_slab_alloc((node != ANY_NODE).then_some(node), ret)
}

/// The debug free path, with the caller's return address (`ret`).
///
/// # Safety
/// As [`CacheInner::do_slab_free`].
unsafe extern "C-unwind" fn debug_free_ret(
    s: usize,
    slab: usize,
    head: usize,
    tail: usize,
    cnt: usize,
    ret: usize,
) {
    // SAFETY: `s` is the entry's `&CacheInner`; the rest is the caller's contract.
    unsafe {
        (*(s as *const CacheInner)).debug_slab_free(slab as *mut Page, head, tail, cnt as u32, ret)
    }
}

// The trampolines: at entry `[rsp]` holds the return address into the caller; it becomes the
// last argument (System V: rdx is the third, r9 the sixth) and the real function is entered
// by a jump, so it returns straight to the caller and no trampoline frame is ever on the
// stack (unwinding sees the caller directly).
#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
core::arch::global_asm!(
    ".pushsection .text.kmem_debug_entry,\"ax\",@progbits",
    ".p2align 4",
    ".globl __kmem_debug_alloc_entry",
    ".hidden __kmem_debug_alloc_entry",
    ".type __kmem_debug_alloc_entry,@function",
    "__kmem_debug_alloc_entry:",
    "mov rdx, qword ptr [rsp]",
    "jmp {alloc}",
    ".size __kmem_debug_alloc_entry, .-__kmem_debug_alloc_entry",
    ".p2align 4",
    ".globl __kmem_debug_free_entry",
    ".hidden __kmem_debug_free_entry",
    ".type __kmem_debug_free_entry,@function",
    "__kmem_debug_free_entry:",
    "mov r9, qword ptr [rsp]",
    "jmp {free}",
    ".size __kmem_debug_free_entry, .-__kmem_debug_free_entry",
    ".popsection",
    alloc = sym debug_alloc_ret,
    free = sym debug_free_ret,
);

#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
extern "C-unwind" {
    #[cold]
    fn __kmem_debug_alloc_entry(s: usize, node: usize) -> *mut u8;
    #[cold]
    fn __kmem_debug_free_entry(s: usize, slab: usize, head: usize, tail: usize, cnt: usize);
}

/// Enters the debug allocation path (called at the top of `slab_alloc` for a debug cache).
#[inline(always)]
pub(crate) fn alloc_entry(s: &CacheInner, node: Option<usize>) -> *mut u8 {
    let node = node.unwrap_or(ANY_NODE);
    #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
    {
        // SAFETY: the trampoline passes its arguments on unchanged, adds its return address as the third, and jumps to `debug_alloc_ret`, whose signature this matches.
        unsafe { __kmem_debug_alloc_entry(s as *const CacheInner as usize, node) }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
    {
        debug_alloc_ret(s as *const CacheInner as usize, node, 0)
    }
}

/// Enters the debug free path (called at the top of `do_slab_free` for a debug cache).
///
/// # Safety
/// As [`CacheInner::do_slab_free`].
#[inline(always)]
pub(crate) unsafe fn free_entry(
    s: &CacheInner,
    slab: *mut Page,
    head: usize,
    tail: usize,
    cnt: u32,
) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
    {
        // SAFETY: as in `alloc_entry` (the return address becomes the sixth argument of `debug_free_ret`); the rest is the caller's contract.
        unsafe {
            __kmem_debug_free_entry(
                s as *const CacheInner as usize,
                slab as usize,
                head,
                tail,
                cnt as usize,
            )
        }
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
    {
        // SAFETY: the caller's contract.
        unsafe {
            debug_free_ret(
                s as *const CacheInner as usize,
                slab as usize,
                head,
                tail,
                cnt as usize,
                0,
            )
        }
    }
}
