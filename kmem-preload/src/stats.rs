//! `KMEM_SHOW_STATS=1`: at exit (the library's `.fini_array` destructor, which runs from
//! `exit()` after `main` returns, not from `_exit`), the slabinfo table, the page statistics and
//! the preload library's own counters go to stderr.

use core::fmt::Write as _;
use core::sync::atomic::Ordering;

/// Writes `parts` to stderr with `write(2)` (no allocation, no lock).
pub(crate) fn write_err(parts: &[&str]) {
    for p in parts {
        let mut b = p.as_bytes();
        while !b.is_empty() {
            // SAFETY: `b` is a live byte slice.
            let n = unsafe { libc::write(2, b.as_ptr().cast(), b.len()) };
            if n <= 0 {
                return;
            }
            b = &b[n as usize..];
        }
    }
}

/// The report. Formats into a `String`: the allocations it makes go through `malloc`, that is
/// kmem itself (they come after everything counted, and the table is a snapshot).
fn report() -> String {
    let k = kmem_core::Kmem::global();
    let mut out = String::new();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let _ = writeln!(out, "kmem: statistics at exit (KMEM_SHOW_STATS), pid {pid}");
    let _ = write!(out, "{}", kmem_core::SlabInfoTable(k.slabinfo()));
    let p = k.page_stats();
    let _ = writeln!(
        out,
        "kmem: pages: mapped {} B, resident {} B, free {} B, metadata {} B, chunks {}, \
         block allocs {}, block frees {}, released to the OS {} B",
        p.mapped_bytes,
        p.resident_bytes,
        p.free_bytes,
        p.metadata_bytes,
        p.chunks,
        p.allocs,
        p.frees,
        p.released_bytes_total
    );
    let (mut objects, mut freed) = (0u64, 0u64);
    for (name, s) in k.cache_stats() {
        if name.starts_with("kmalloc-") {
            // Sheaf pops and pushes, and the cpu-slab paths (which also count the refills and
            // flushes of sheaves: an upper bound, within a few per cent).
            objects += s.alloc_cpu_sheaf + s.alloc_fastpath + s.alloc_slowpath;
            freed += s.free_cpu_sheaf + s.free_fastpath + s.free_slowpath;
        }
    }
    let _ = writeln!(
        out,
        "kmem: served: {objects} kmalloc objects allocated, {freed} freed; foreign pointers \
         routed to the next allocator: {} frees, {} reallocs, {} usable-size calls, {} frees \
         leaked (no next allocator); bootstrap arena: {} allocations, {} frees",
        crate::next::FOREIGN_FREES.load(Ordering::Relaxed),
        crate::next::FOREIGN_REALLOCS.load(Ordering::Relaxed),
        crate::next::FOREIGN_USABLE.load(Ordering::Relaxed),
        crate::next::FOREIGN_LEAKED.load(Ordering::Relaxed),
        crate::boot::ARENA_ALLOCS.load(Ordering::Relaxed),
        crate::boot::ARENA_FREES.load(Ordering::Relaxed),
    );
    out
}

/// The destructor: prints the report if `KMEM_SHOW_STATS` asked for it and kmem was used.
extern "C" fn at_exit() {
    if crate::boot::ready() && crate::boot::SHOW_STATS.load(Ordering::Relaxed) {
        write_err(&[&report()]);
    }
}

/// Runs [`at_exit`] when the library is finalised (at `exit`).
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = at_exit;
