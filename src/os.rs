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
//! taken page by page as memory is touched.
//!
//! [`release`] is `madvise(MADV_DONTNEED)`: the pages go back to the OS, the mapping stays (so a
//! stale read never faults), and the next touch sees zero-filled pages.
//!
//! # Miri
//!
//! Miri cannot `mmap`; under `cfg(miri)` mappings come from `std::alloc::System` (zeroed, with
//! the requested alignment) and `release` writes zeroes, which keeps the "released memory reads
//! as zero" contract that `GfpFlags::ZERO` relies on.

use core::ptr::NonNull;

/// The OS page size kmem assumes (checked against the real one in tests).
const OS_PAGE: usize = 4096;

/// Maps `size` bytes aligned to `align` (a power of two), zeroed, readable and writable.
pub(crate) fn map(size: usize, align: usize) -> Option<NonNull<u8>> {
    map_partial(size, size, align)
}

/// Reserves `reserve` bytes of address space aligned to `align` (a power of two) of which the
/// first `usable` bytes (a multiple of the page size, `<= reserve`) are readable, writable and
/// zeroed. Undo with [`unmap`]`(ptr, reserve, align)`.
#[cfg(not(miri))]
pub(crate) fn map_partial(reserve: usize, usable: usize, align: usize) -> Option<NonNull<u8>> {
    debug_assert!(align.is_power_of_two() && usable <= reserve);
    let align = align.max(OS_PAGE);
    let over = reserve.checked_add(align - OS_PAGE)?;
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
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
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
    let layout = Layout::from_size_align(reserve, align.max(OS_PAGE)).ok()?;
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
                Layout::from_size_align_unchecked(reserve, align.max(OS_PAGE)),
            )
        };
    }
}

/// Returns the pages of `[ptr, ptr + size)` to the OS; the range stays mapped and reads as
/// zero afterwards.
///
/// # Safety
/// The range is page-aligned, lies inside a readable/writable mapping of ours, and no one uses
/// its contents any more.
pub(crate) unsafe fn release(ptr: *mut u8, size: usize) {
    #[cfg(not(miri))]
    {
        // MADV_DONTNEED on a private anonymous mapping only drops its pages.
        // SAFETY: the caller guarantees the range is ours and dead.
        unsafe { libc::madvise(ptr.cast(), size, libc::MADV_DONTNEED) };
    }
    #[cfg(miri)]
    {
        // SAFETY: the range is ours and writable (caller contract).
        unsafe { core::ptr::write_bytes(ptr, 0, size) };
    }
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
    fn page_size_matches_os() {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert_eq!(page as usize, OS_PAGE);
        assert!(resident_pages_of_process() > 0);
    }

    #[test]
    fn map_is_aligned_zeroed_and_partial_reservations_work() {
        let align = 1 << 20;
        let p = map_partial(align, 3 * OS_PAGE, align).unwrap();
        assert_eq!(p.as_ptr() as usize % align, 0);
        // SAFETY: the first three pages are usable.
        unsafe {
            assert_eq!(*p.as_ptr().add(3 * OS_PAGE - 1), 0);
            p.as_ptr().write(7);
            release(p.as_ptr(), OS_PAGE);
            assert_eq!(*p.as_ptr(), 0);
            unmap(p, align, align);
        }
    }
}
