//! The operating-system interface: address space, returning memory, and non-allocating output.
//!
//! Everything the page allocator needs from the OS goes through here, so that the rest of the
//! crate never names `libc` for memory. Three rules hold for every function:
//!
//! - Nothing allocates through the global allocator (kmem may *be* the global allocator).
//! - Nothing panics: failures are reported as `None` (mapping) or ignored where the only
//!   consequence is a missed optimisation (`madvise`).
//! - Memory handed out is zeroed (fresh anonymous mappings are).
//!
//! # Mappings
//!
//! [`map_partial`] reserves `reserve` bytes of address space aligned to `align` by over-mapping
//! `reserve + align` bytes and trimming the misaligned head and the tail. Only the first
//! `usable` bytes are readable and writable; the rest of the reservation stays `PROT_NONE`, so
//! no foreign mapping can ever land inside a chunk's address range (which would make
//! `virt_to_page` claim pointers that are not ours), and it costs no memory. Every mapping is
//! `MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`: address space is cheap, commit charge is
//! taken page by page as memory is touched. The one exception is [`map_accounted`], for the
//! user's own large allocations (kmalloc's OS mappings above 4 MiB): without
//! `MAP_NORESERVE`, the kernel's overcommit policy judges the request when it is made, so a
//! `malloc` of more than the machine can ever back fails with `ENOMEM` (as glibc's does)
//! instead of succeeding and bringing the OOM killer later.
//!
//! [`release`] is `madvise(MADV_DONTNEED)`: the pages go back to the OS, the mapping stays (so a
//! stale read never faults), and the next touch sees zero-filled pages. It returns whether the
//! OS really dropped the range, and it only ever asks for whole OS pages: kmem's page
//! (`PAGE_SIZE`, 4 KiB) is its own unit, while the OS page size is read at run time
//! ([`page_size`]: `sysconf(_SC_PAGESIZE)`, once) and may be 16 KiB or 64 KiB (aarch64,
//! ppc64). A range smaller than an OS page, or not aligned to one, is refused (`false`) rather
//! than passed to `madvise`, which would either fail (`EINVAL`, unaligned start) or zap the
//! whole OS pages around it, live neighbours included. The page allocator marks a block
//! "released" (reads as zero) only when `release` returned `true`.
//!
//! # Miri
//!
//! Miri cannot `mmap`; under `cfg(miri)` mappings come from `std::alloc::System` (zeroed, with
//! the requested alignment) and `release` writes zeroes, which keeps the "released memory reads
//! as zero" contract that `GfpFlags::ZERO` relies on. The OS page size is taken as 4096.
//!
//! # Tests
//!
//! This crate's unit tests can emulate another OS page size and a failing `madvise` per
//! allocator instance ([`OsPages`] with a `TestOs`), so that the 16 K / 64 K page cases and
//! the failure path run on a 4 K machine.

use crate::sync::global::{AtomicUsize, Ordering};
use core::ptr::NonNull;

/// The OS page size, read once (0: not read yet).
static OS_PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

/// The OS page size (`sysconf(_SC_PAGESIZE)`, read on first use and cached; no allocation).
/// 4096 under Miri, or if `sysconf` fails.
pub(crate) fn page_size() -> usize {
    let cached = OS_PAGE_SIZE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    #[cfg(miri)]
    let v = 4096;
    #[cfg(not(miri))]
    // SAFETY: sysconf has no preconditions and does not allocate.
    let v = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    };
    OS_PAGE_SIZE.store(v, Ordering::Relaxed);
    v
}

/// How one allocator instance returns memory to the OS: the OS page size, and (in this
/// crate's unit tests only) an emulated kernel.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OsPages {
    /// The OS page size: a power of two (the `Kmem` builder refuses anything else).
    pub(crate) size: usize,
    /// Test-only emulation (see [`TestOs`]).
    #[cfg(test)]
    pub(crate) test: TestOs,
}

impl OsPages {
    /// The running kernel's page size.
    pub(crate) fn current() -> Self {
        OsPages {
            size: page_size(),
            #[cfg(test)]
            test: TestOs::default(),
        }
    }
}

/// Unit tests only: an emulated kernel behind [`release`].
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TestOs {
    /// Emulate `madvise(MADV_DONTNEED)` of a kernel whose page size is [`OsPages::size`]
    /// instead of calling it: an unaligned start fails (`EINVAL`, nothing dropped); otherwise
    /// the length is rounded up to whole pages, which are zeroed (dropped).
    pub(crate) emulate: bool,
    /// Every `madvise` fails (as with `EAGAIN` or `ENOMEM`) and drops nothing.
    pub(crate) fail_madvise: bool,
}

/// `madvise(ptr, len, MADV_DONTNEED)`: whether it succeeded (the unit tests' emulated kernel
/// when asked).
#[cfg(not(miri))]
fn madvise_dontneed(ptr: *mut u8, len: usize, os: &OsPages) -> bool {
    #[cfg(test)]
    {
        if os.test.fail_madvise {
            return false;
        }
        if os.test.emulate {
            if ptr as usize % os.size != 0 {
                return false; // EINVAL
            }
            let len = len.next_multiple_of(os.size);
            // SAFETY: the emulated kernel drops whole pages; tests only emulate ranges inside their own mappings (the chunk is CHUNK_SIZE-aligned, a multiple of the page).
            unsafe { core::ptr::write_bytes(ptr, 0, len) };
            return true;
        }
    }
    let _ = os;
    // MADV_DONTNEED on a private anonymous mapping only drops its pages.
    // SAFETY: the caller guarantees the range is ours and dead.
    unsafe { libc::madvise(ptr.cast(), len, libc::MADV_DONTNEED) == 0 }
}

/// Maps `size` bytes aligned to `align` (a power of two), zeroed, readable and writable.
pub(crate) fn map(size: usize, align: usize) -> Option<NonNull<u8>> {
    map_partial(size, size, align)
}

/// Reserves `reserve` bytes of address space aligned to `align` (a power of two) of which the
/// first `usable` bytes (a multiple of the page size, `<= reserve`) are readable, writable and
/// zeroed. Undo with [`unmap`]`(ptr, reserve, align)`.
#[cfg(not(miri))]
pub(crate) fn map_partial(reserve: usize, usable: usize, align: usize) -> Option<NonNull<u8>> {
    map_with(reserve, usable, align, libc::MAP_NORESERVE)
}

/// [`map`] judged by the kernel's overcommit policy when it is made (no `MAP_NORESERVE`: module
/// docs), for mappings a caller asked for by size. Undo with [`unmap`]`(ptr, size, align)`.
#[cfg(not(miri))]
#[cfg_attr(loom, allow(dead_code))] // kmalloc's, which loom builds do not use
pub(crate) fn map_accounted(size: usize, align: usize) -> Option<NonNull<u8>> {
    map_with(size, size, align, 0)
}

/// Under Miri: [`map`].
#[cfg(miri)]
pub(crate) fn map_accounted(size: usize, align: usize) -> Option<NonNull<u8>> {
    map(size, align)
}

/// [`map_partial`] with `flags` added to `MAP_PRIVATE | MAP_ANONYMOUS`.
#[cfg(not(miri))]
fn map_with(reserve: usize, usable: usize, align: usize, flags: i32) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two() && usable <= reserve);
    let page = page_size();
    let align = align.max(page);
    let over = reserve.checked_add(align - page)?;
    let prot = if usable == reserve {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_NONE
    };
    // The result is checked for MAP_FAILED.
    // SAFETY: an anonymous private mapping at a kernel-chosen address touches no existing memory.
    let raw = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            over,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return None;
    }
    let start = raw as usize;
    let aligned = (start + align - 1) & !(align - 1);
    let head = aligned - start;
    let tail = over - head - reserve;
    if head != 0 {
        // SAFETY: [start, aligned) is the untouched misaligned head of the mapping made above.
        unsafe { libc::munmap(raw, head) };
    }
    if tail != 0 {
        // SAFETY: the tail lies past the reservation inside the mapping made above.
        unsafe { libc::munmap((aligned + reserve) as *mut libc::c_void, tail) };
    }
    if usable != reserve && usable != 0 {
        // SAFETY: [aligned, aligned + usable) lies inside our fresh PROT_NONE reservation.
        let rc = unsafe {
            libc::mprotect(
                aligned as *mut libc::c_void,
                usable,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            // SAFETY: the whole reservation is ours and nothing points into it yet.
            unsafe { libc::munmap(aligned as *mut libc::c_void, reserve) };
            return None;
        }
    }
    NonNull::new(aligned as *mut u8)
}

/// Reserves `reserve` bytes (Miri: a zeroed `System` allocation of the whole reservation).
#[cfg(miri)]
pub(crate) fn map_partial(reserve: usize, usable: usize, align: usize) -> Option<NonNull<u8>> {
    use std::alloc::{GlobalAlloc, Layout, System};
    let _ = usable;
    let layout = Layout::from_size_align(reserve, align.max(4096)).ok()?;
    // SAFETY: the layout has a non-zero size (callers never map zero bytes).
    NonNull::new(unsafe { System.alloc_zeroed(layout) })
}

/// Unmaps a reservation made by [`map`] or [`map_partial`].
///
/// # Safety
/// `ptr`, `reserve` and `align` are exactly those of one earlier successful mapping, and no one
/// will access the memory again.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, reserve: usize, align: usize) {
    #[cfg(not(miri))]
    {
        let _ = align;
        // SAFETY: the caller passes back a whole reservation of ours that is no longer used.
        unsafe { libc::munmap(ptr.as_ptr().cast(), reserve) };
    }
    #[cfg(miri)]
    {
        use std::alloc::{GlobalAlloc, Layout, System};
        // SAFETY: same layout as the allocation in `map_partial` (caller contract).
        unsafe {
            System.dealloc(
                ptr.as_ptr(),
                Layout::from_size_align_unchecked(reserve, align.max(4096)),
            )
        };
    }
}

/// Resizes a mapping made by [`map`] from `old` to `new` bytes (page multiples) where it is,
/// keeping its contents: `mremap` without `MREMAP_MAYMOVE` (always possible when shrinking;
/// when growing, only if the address space after the mapping is free). On `false` nothing
/// changed. Under Miri: always `false` (the caller copies).
///
/// # Safety
/// `ptr` and `old` are those of one live mapping of ours whose owner is the caller.
#[cfg_attr(loom, allow(dead_code))] // kmalloc's, which loom builds do not use
pub(crate) unsafe fn remap_in_place(ptr: NonNull<u8>, old: usize, new: usize) -> bool {
    #[cfg(not(miri))]
    {
        // SAFETY: the caller owns the whole mapping; without MREMAP_MAYMOVE it stays put or the call fails and changes nothing.
        unsafe { libc::mremap(ptr.as_ptr().cast(), old, new, 0) != libc::MAP_FAILED }
    }
    #[cfg(miri)]
    {
        let _ = (ptr, old, new);
        false
    }
}

/// Moves a mapping of ours (`old` bytes at `ptr`) onto the reservation `target` of `new`
/// bytes (made by [`map_partial`]), growing or shrinking it, with
/// `mremap(MREMAP_MAYMOVE | MREMAP_FIXED)`: the page table entries move, not the bytes. On
/// `true` the old range is unmapped and `target` holds the contents; on `false` nothing
/// changed (the reservation is still the caller's). Under Miri: always `false`.
///
/// # Safety
/// The caller owns both the mapping and the reservation, which do not overlap.
#[cfg_attr(loom, allow(dead_code))] // kmalloc's, which loom builds do not use
pub(crate) unsafe fn remap_to(
    ptr: NonNull<u8>,
    old: usize,
    new: usize,
    target: NonNull<u8>,
) -> bool {
    #[cfg(not(miri))]
    {
        // SAFETY: both ranges are the caller's; MREMAP_FIXED replaces the reservation.
        let r = unsafe {
            libc::mremap(
                ptr.as_ptr().cast(),
                old,
                new,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                target.as_ptr().cast::<libc::c_void>(),
            )
        };
        r != libc::MAP_FAILED
    }
    #[cfg(miri)]
    {
        let _ = (ptr, old, new, target);
        false
    }
}

/// Returns the pages of `[ptr, ptr + size)` to the OS; on `true` the range stays mapped and
/// reads as zero afterwards. Returns `false`, with the memory untouched, when the range is not
/// made of whole OS pages (`os.size`), or when `madvise` fails: the caller must then treat the
/// memory as still holding its old contents.
///
/// # Safety
/// The range lies inside a readable/writable mapping of ours, and no one uses its contents any
/// more.
pub(crate) unsafe fn release(ptr: *mut u8, size: usize, os: &OsPages) -> bool {
    if size == 0 || (ptr as usize | size) & (os.size - 1) != 0 {
        // Part of an OS page: madvise would fail or drop the neighbours sharing that page.
        return false;
    }
    #[cfg(not(miri))]
    {
        madvise_dontneed(ptr, size, os)
    }
    #[cfg(miri)]
    {
        // SAFETY: the range is ours and writable (caller contract).
        unsafe { core::ptr::write_bytes(ptr, 0, size) };
        true
    }
}

/// Coarse monotonic time in nanoseconds (`CLOCK_MONOTONIC_COARSE`: the last timer tick, a few
/// milliseconds of resolution, read from the vDSO without a system call; no allocation), for
/// the decay's due times.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Runs `f` with every blockable signal blocked in the calling thread (`pthread_sigmask`: no
/// allocation), so that no signal handler of this thread can run while `f` holds kmem locks
/// that its slow paths would need (the barns' trim). Under Miri and loom, just runs `f`.
pub(crate) fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(not(any(miri, loom)))]
    {
        let mut all = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
        let mut old = core::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `sigfillset` initialises `all`; `pthread_sigmask` reads it and writes `old`.
        let blocked = unsafe {
            libc::sigfillset(all.as_mut_ptr()) == 0
                && libc::pthread_sigmask(libc::SIG_BLOCK, all.as_ptr(), old.as_mut_ptr()) == 0
        };
        let r = f();
        if blocked {
            // SAFETY: `old` was written by the successful call above.
            unsafe {
                libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), core::ptr::null_mut())
            };
        }
        r
    }
    #[cfg(any(miri, loom))]
    {
        f()
    }
}

/// Monotonic time in nanoseconds (`CLOCK_MONOTONIC`; no allocation), for bounded waits.
#[cfg_attr(loom, allow(dead_code))]
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Resident pages of this process according to the OS (`/proc/self/statm`, second field);
/// 0 when unavailable (Miri, no procfs). For tests and diagnostics.
#[allow(dead_code)] // used by the tests and, later, by diagnostics
pub(crate) fn resident_pages_of_process() -> usize {
    #[cfg(miri)]
    {
        0
    }
    #[cfg(not(miri))]
    {
        let mut buf = [0u8; 256];
        // SAFETY: a NUL-terminated path; the descriptor is closed below.
        let fd = unsafe { libc::open(c"/proc/self/statm".as_ptr(), libc::O_RDONLY) };
        if fd < 0 {
            return 0;
        }
        // SAFETY: reading into a stack buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        if n <= 0 {
            return 0;
        }
        let text = &buf[..n as usize];
        let mut fields = text.split(|&b| b == b' ');
        let _size = fields.next();
        let mut v = 0usize;
        for &b in fields.next().unwrap_or(&[]) {
            if !b.is_ascii_digit() {
                break;
            }
            v = v.wrapping_mul(10).wrapping_add((b - b'0') as usize);
        }
        v
    }
}

/// Writes the parts and a newline to stderr without allocating.
pub(crate) fn write_stderr(parts: &[&str]) {
    for p in parts {
        // SAFETY: writing a valid byte slice to fd 2; no allocation.
        unsafe { libc::write(2, p.as_ptr().cast(), p.len()) };
    }
    // SAFETY: as above.
    unsafe { libc::write(2, b"\n".as_ptr().cast(), 1) };
}

/// Writes each part to stderr without allocating, then aborts the process.
///
/// Used where memory is already corrupt (a double free, a foreign pointer) or where continuing
/// could corrupt it: unwinding out of an allocator is not an option.
#[cold]
#[inline(never)]
pub(crate) fn abort_msg(parts: &[&str]) -> ! {
    write_stderr(parts);
    std::process::abort()
}

/// A number formatted into a stack buffer, for messages that must not allocate.
pub(crate) struct Num {
    buf: [u8; 24],
    start: usize,
}

impl Num {
    /// `v` in decimal.
    pub(crate) fn dec(v: u64) -> Self {
        Self::radix(v, 10, false)
    }

    /// `v` in hexadecimal with a `0x` prefix.
    pub(crate) fn hex(v: u64) -> Self {
        Self::radix(v, 16, true)
    }

    fn radix(mut v: u64, radix: u64, prefix: bool) -> Self {
        let mut buf = [0u8; 24];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b"0123456789abcdef"[(v % radix) as usize];
            v /= radix;
            if v == 0 {
                break;
            }
        }
        if prefix {
            i -= 2;
            buf[i] = b'0';
            buf[i + 1] = b'x';
        }
        Num { buf, start: i }
    }

    /// The text.
    pub(crate) fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[self.start..]).unwrap_or("?")
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn num_formats() {
        assert_eq!(Num::dec(0).as_str(), "0");
        assert_eq!(Num::dec(u64::MAX).as_str(), "18446744073709551615");
        assert_eq!(Num::hex(0x1f00).as_str(), "0x1f00");
        assert_eq!(Num::hex(u64::MAX).as_str(), "0xffffffffffffffff");
    }

    #[test]
    #[cfg_attr(miri, ignore)]
    fn page_size_is_read_from_the_os() {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert_eq!(page as usize, page_size());
        assert!(page_size().is_power_of_two());
        assert!(resident_pages_of_process() > 0);
    }

    #[test]
    fn map_is_aligned_zeroed_and_partial_reservations_work() {
        let page = page_size();
        let align = 1 << 22;
        let p = map_partial(align, 3 * page, align).unwrap();
        assert_eq!(p.as_ptr() as usize % align, 0);
        let os = OsPages::current();
        // SAFETY: the first three OS pages are usable.
        unsafe {
            assert_eq!(*p.as_ptr().add(3 * page - 1), 0);
            p.as_ptr().write(7);
            p.as_ptr().add(page).write(8);
            assert!(release(p.as_ptr(), page, &os));
            assert_eq!(*p.as_ptr(), 0);
            // Part of an OS page is never released: the neighbour's byte survives.
            assert!(!release(p.as_ptr().add(page), page / 2, &os));
            assert!(!release(p.as_ptr().add(page + page / 2), page / 2, &os));
            assert_eq!(*p.as_ptr().add(page), 8);
            unmap(p, align, align);
        }
    }

    #[test]
    #[cfg_attr(miri, ignore)] // Miri's `release` writes zeroes instead of emulating a kernel
    fn emulated_large_pages_and_madvise_failures() {
        let align = 1 << 22;
        let p = map_partial(align, 1 << 20, align).unwrap().as_ptr();
        let mut os = OsPages {
            size: 64 << 10,
            test: TestOs {
                emulate: true,
                fail_madvise: false,
            },
        };
        // SAFETY: the first MiB is ours and usable.
        unsafe {
            p.write_bytes(1, 1 << 20);
            // 4 KiB inside a 64 KiB page: refused, nothing dropped.
            assert!(!release(p.add(4096), 4096, &os));
            assert!(!release(p, 4096, &os));
            assert_eq!((*p, *p.add(4096)), (1, 1));
            // A whole emulated page is dropped.
            assert!(release(p, 64 << 10, &os));
            assert_eq!((*p, *p.add((64 << 10) - 1), *p.add(64 << 10)), (0, 0, 1));
            // A failing madvise drops nothing and says so.
            os.test.fail_madvise = true;
            assert!(!release(p.add(64 << 10), 64 << 10, &os));
            assert_eq!(*p.add(64 << 10), 1);
            unmap(NonNull::new(p).unwrap(), align, align);
        }
    }
}
