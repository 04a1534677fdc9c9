//! # kmem — a user-space, SLUB-style, lockless slab allocator
//!
//! kmem brings the Linux SLUB allocator (the `kmem_cache_cpu` generation, Linux 3.x–6.x) to
//! user space: every cache has a per-CPU slot whose `{freelist, tid}` pair is swapped by one
//! 16-byte compare-and-swap on the fast path; slabs owned by a CPU are *frozen* and take remote
//! frees with one CAS and no list work; per-CPU and per-node partial lists hold partly used
//! slabs; slabs come from a per-node buddy page allocator with order fallback; kmalloc size
//! classes back a drop-in `#[global_allocator]`.
//!
//! ```
//! use kmem::{CacheConfig, Kmem};
//! let k = Kmem::builder().memory_limit(64 << 20).nodes(2).cpus(4).build()?;
//! let cache = k.create_cache("conn", 192, CacheConfig::new().align(64))?;
//! let p = cache.alloc().unwrap();
//! unsafe { cache.free(p) };
//! println!("{:?}", cache.stats());
//! let typed: kmem::Cache<[u64; 8]> = kmem::Cache::new("block")?;
//! let b = typed.alloc([0; 8]).unwrap();
//! # drop(b);
//! # Ok::<(), kmem::KmemError>(())
//! ```
//!
//! ## Data model (names follow `mm/slub.c`)
//!
//! ```text
//! Kmem ──────────── KmemShared: nodes[] (PageAllocator each), slot→node table, registry
//!  └─ KmemCache ─── CacheInner (struct kmem_cache): geometry, ctor, flags
//!       ├─ cpu_slab[nr_cpus]  KmemCacheCpu: {freelist, tid} (16-byte CAS), slab, partial, lock
//!       └─ node[nr_nodes]     KmemCacheNode: list_lock, partial list, totals
//! Page (struct page / struct slab, 64 B, out of band): {freelist, counters}, cache, links, info
//! ```
//!
//! Modules, one per concept: [`cpu`] (which slot am I on), `page` (buddy page allocator and
//! page descriptors), `slab` (`struct slab` and its counters), `cpu_slab`
//! (`kmem_cache_cpu`), `node` (`kmem_cache_node`), `cache` (`kmem_cache`: geometry and the
//! public handle), `slub` (the protocols), `kmalloc` (size classes and the global allocator),
//! `stats`, and `sync` (the only module that names atomics, cells and locks; loom under
//! `--cfg loom`). The lock order is documented at the top of `slub.rs`.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod cache;
pub mod cpu;
mod cpu_slab;
mod error;
mod kmem;
mod node;
mod os;
mod page;
mod slab;
mod slub;
mod stats;
mod sync;
mod typed;

pub use cache::{CacheConfig, CacheFlags, KmemCache, CACHE_LINE_SIZE};
pub use error::KmemError;
pub use kmem::{Kmem, KmemBuilder, MAX_CPUS, MAX_NODES};
pub use page::{FaultInjection, PageStats, STATS_ORDERS};
pub use stats::{CacheStats, SlabInfo, SlabInfoTable};
pub use typed::{Cache, SlabBox};

/// The longest cache name accepted.
pub const MAX_CACHE_NAME: usize = 64;

/// Writes each part to stderr without allocating.
pub(crate) fn warn_msg(parts: &[&str]) {
    for p in parts {
        // SAFETY: writing a valid byte slice to fd 2; no allocation, async-signal-safe.
        unsafe {
            libc::write(2, p.as_ptr().cast(), p.len());
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::write(2, b"\n".as_ptr().cast(), 1);
    }
}

/// Writes each part to stderr without allocating, then aborts the process.
///
/// Used where memory is already corrupt (a double free, a foreign pointer) or where continuing
/// could corrupt it: unwinding out of an allocator is not an option.
#[cold]
#[inline(never)]
pub(crate) fn abort_msg(parts: &[&str]) -> ! {
    warn_msg(parts);
    std::process::abort()
}

/// Formats numbers into a stack buffer for [`abort_msg`] (no allocation).
pub(crate) struct Hex {
    buf: [u8; 24],
}

impl Hex {
    pub(crate) const fn new() -> Self {
        Hex { buf: [0; 24] }
    }

    /// `0x...` hexadecimal.
    pub(crate) fn fmt(&mut self, v: usize) -> &str {
        let mut i = self.buf.len();
        let mut v = v;
        loop {
            i -= 1;
            self.buf[i] = b"0123456789abcdef"[v & 15];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        i -= 1;
        self.buf[i] = b'x';
        i -= 1;
        self.buf[i] = b'0';
        core::str::from_utf8(&self.buf[i..]).unwrap_or("?")
    }

    /// Decimal.
    pub(crate) fn dec(&mut self, v: usize) -> &str {
        let mut i = self.buf.len();
        let mut v = v;
        loop {
            i -= 1;
            self.buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        core::str::from_utf8(&self.buf[i..]).unwrap_or("?")
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    #[test]
    fn hex_and_dec_format_without_allocating() {
        let mut h = super::Hex::new();
        assert_eq!(h.fmt(0), "0x0");
        assert_eq!(h.fmt(0xdead_beef), "0xdeadbeef");
        assert_eq!(h.fmt(usize::MAX), "0xffffffffffffffff");
        assert_eq!(h.dec(0), "0");
        assert_eq!(h.dec(1234567), "1234567");
        assert_eq!(h.dec(usize::MAX), "18446744073709551615");
    }
}
