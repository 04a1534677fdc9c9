//! The allocators under test, behind one enum, and the dispatching `#[global_allocator]`.
//!
//! Every allocator is measured through the same code path: a value implementing
//! [`GlobalAlloc`] (`kmem::Kmalloc`, `std::alloc::System`, `mimalloc::MiMalloc`,
//! `tikv_jemallocator::Jemalloc`). Workloads are generic over `A: GlobalAlloc`, and
//! [`with_backend!`](crate::with_backend) monomorphises them for the chosen one, so no workload
//! pays a dynamic dispatch that another does not.
//!
//! The binary's own global allocator is [`Dispatch`]: on its first call it reads
//! [`GLOBAL_ENV`] with `libc::getenv` (which does not allocate) and forwards every later call
//! to that backend. The parent process runs with the default (`system`); child processes are
//! started with the variable set, so that whole-program behaviour (RSS, thread stacks'
//! allocations, the harness's own vectors) belongs to the allocator under test.
//!
//! This is the only module that names kmem's allocator API.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU8, Ordering};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// Environment variable that selects the global allocator of a (child) process.
pub const GLOBAL_ENV: &str = "KMEM_BENCH_GLOBAL";

/// One allocator under test.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// kmem's `Kmalloc` (the kmalloc size classes over SLUB caches), in its default design
    /// (sheaves in front of the CPU slabs).
    Kmem,
    /// kmem's `Kmalloc` with the sheaves switched off: the cpu-slab design alone
    /// (`KMEM_SHEAVES=0` in a child, `kmem::kmalloc_set_sheaves(false)` in process).
    #[value(name = "kmem-cpuslab")]
    #[serde(rename = "kmem-cpuslab")]
    KmemCpuSlab,
    /// glibc malloc through `std::alloc::System`.
    System,
    /// mimalloc through `mimalloc::MiMalloc`.
    Mimalloc,
    /// jemalloc through `tikv_jemallocator::Jemalloc`.
    Jemalloc,
}

impl Backend {
    /// All backends, kmem first (the reference for ratios).
    pub const ALL: [Backend; 5] = [
        Backend::Kmem,
        Backend::KmemCpuSlab,
        Backend::System,
        Backend::Mimalloc,
        Backend::Jemalloc,
    ];

    /// The name used on the command line, in `KMEM_BENCH_GLOBAL` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Kmem => "kmem",
            Backend::KmemCpuSlab => "kmem-cpuslab",
            Backend::System => "system",
            Backend::Mimalloc => "mimalloc",
            Backend::Jemalloc => "jemalloc",
        }
    }

    /// Parses a name as written by [`Backend::name`].
    pub fn from_name(s: &[u8]) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name().as_bytes() == s)
    }

    fn code(self) -> u8 {
        match self {
            Backend::Kmem => 1,
            Backend::System => 2,
            Backend::Mimalloc => 3,
            Backend::Jemalloc => 4,
            Backend::KmemCpuSlab => 5,
        }
    }

    /// Returns memory that the allocator holds but no longer uses to the OS, with the
    /// allocator's own release call. Returns a description of the call made.
    pub fn release(self) -> &'static str {
        match self {
            Backend::Kmem | Backend::KmemCpuSlab => kmem_backend::release(),
            Backend::System => {
                // SAFETY: malloc_trim has no preconditions; it only takes glibc's arena locks.
                unsafe {
                    libc::malloc_trim(0);
                }
                "malloc_trim(0)"
            }
            Backend::Mimalloc => {
                // SAFETY: mi_collect has no preconditions.
                unsafe { libmimalloc_sys::mi_collect(true) };
                "mi_collect(true)"
            }
            Backend::Jemalloc => {
                // "arena.<MALLCTL_ARENAS_ALL>.purge": purge every arena's unused dirty pages.
                let name = c"arena.4096.purge";
                // SAFETY: a void mallctl: no old or new value, NUL-terminated name.
                let rc = unsafe {
                    tikv_jemalloc_sys::mallctl(
                        name.as_ptr(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        0,
                    )
                };
                if rc == 0 {
                    "mallctl(arena.all.purge)"
                } else {
                    "mallctl(arena.all.purge) failed"
                }
            }
        }
    }
}

/// kmem's backend: the one place that names kmem's API.
pub mod kmem_backend {
    /// The `GlobalAlloc` value for kmem.
    pub type Alloc = kmem::Kmalloc;
    /// The value itself.
    pub const ALLOC: Alloc = kmem::Kmalloc::new();

    /// Selects the design of the kmalloc caches for an in-process sample: sheaves (`kmem`) or
    /// the cpu-slab design alone (`kmem-cpuslab`). Switching flushes the sheaves.
    pub fn select(b: super::Backend) {
        let want = b == super::Backend::Kmem;
        if kmem::kmalloc_sheaves() != want {
            kmem::kmalloc_set_sheaves(want);
        }
    }

    /// The `KMEM_SHEAVES` value a child process of backend `b` runs with.
    pub fn sheaves_env(b: super::Backend) -> &'static str {
        if b == super::Backend::KmemCpuSlab {
            "0"
        } else {
            "1"
        }
    }

    /// Flushes every cache's CPU slabs, discards empty slabs and returns free pages to the OS.
    pub fn release() -> &'static str {
        kmem::Kmem::global().shrink_all();
        "Kmem::global().shrink_all()"
    }

    /// kmem's `/proc/slabinfo`-style table of the global instance, followed by the SLUB path
    /// counts of every cache that allocated (see [`path_counts`]).
    pub fn slabinfo() -> String {
        let mut s = kmem::SlabInfoTable(kmem::Kmem::global().slabinfo()).to_string();
        s.push_str(&path_counts());
        s
    }

    /// Where the global instance's bytes are, for the fragmentation fill's peak: `requested`
    /// bytes in `objects` live objects against their classes' bytes (slabinfo's active
    /// objects), the free objects in slabs (sheaves and barns included), the slabs' unused
    /// tails, page blocks that are not slabs (sheaf pools, large allocations), the page
    /// allocator's free and per-CPU lists, the descriptor tables and the process's RSS. MiB.
    pub fn footprint(requested: usize, objects: usize) -> String {
        use std::fmt::Write;
        let k = kmem::Kmem::global();
        let rows = k.slabinfo();
        let ps = k.page_stats();
        let live: usize = rows.iter().map(|r| r.active_objs).sum();
        let class: usize = rows.iter().map(|r| r.active_objs * r.objsize).sum();
        let capacity: usize = rows.iter().map(|r| r.num_objs * r.objsize).sum();
        let slabs: usize = rows
            .iter()
            .map(|r| r.num_slabs * r.pagesperslab * 4096)
            .sum();
        let in_use = ps.mapped_bytes - ps.free_bytes - ps.pcp_bytes;
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let mut s = format!(
            "footprint at the fill's peak (MiB): {objects} objects requested {:.1}; \
             live kmalloc objects {live}, their classes {:.1} (+{:.1} rounding); free objects in \
             slabs {:.1}; slab tails {:.1}; slabs {:.1}; other page blocks {:.1}; pages \
             mapped {:.1}, resident {:.1}, free {:.1} (per-CPU lists {:.1}); descriptors {:.1}; \
             process RSS {:.1}",
            mib(requested),
            mib(class),
            mib(class.saturating_sub(requested)),
            mib(capacity - class),
            mib(slabs - capacity),
            mib(slabs),
            mib(in_use.saturating_sub(slabs)),
            mib(ps.mapped_bytes),
            mib(ps.resident_bytes),
            mib(ps.free_bytes),
            mib(ps.pcp_bytes),
            mib(ps.metadata_bytes),
            crate::sys::current_rss_kib() as f64 / 1024.0,
        );
        for r in rows.iter().filter(|r| r.num_slabs != 0) {
            let _ = write!(
                s,
                "\n  {:<14} live {:>7} objs {:>7} slabs {:>6} x {} p, free {:.1} MiB, tails {:.1} MiB",
                r.name,
                r.active_objs,
                r.num_objs,
                r.num_slabs,
                r.pagesperslab,
                mib((r.num_objs - r.active_objs) * r.objsize),
                mib(r.num_slabs * r.pagesperslab * 4096 - r.num_objs * r.objsize),
            );
        }
        s
    }

    /// Which SLUB paths every cache of the global instance took (kmem's `stats` feature; the
    /// slot counters are approximate when threads share a slot): allocation fast/slow paths,
    /// where the slow path found its objects (`cpu_partial_alloc`, `alloc_from_partial`, new
    /// slabs), `cpuslab_flush` (CPU slabs deactivated, including a slab installed while the
    /// slot lock was dropped for `new_slab`), and the free paths.
    pub fn path_counts() -> String {
        use std::fmt::Write;
        let mut s = String::from(
            "# paths: cache alloc_sheaf free_sheaf sheaf_refill sheaf_flush barn_get barn_put \
             alloc_fast alloc_slow cpu_partial_alloc from_partial new_slab cpuslab_flush \
             free_fast free_slow cpu_partial_free\n",
        );
        for (name, c) in kmem::Kmem::global().cache_stats() {
            if c.alloc_fastpath + c.alloc_slowpath + c.alloc_cpu_sheaf == 0 {
                continue;
            }
            let _ = writeln!(
                s,
                "{name:<16} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
                c.alloc_cpu_sheaf,
                c.free_cpu_sheaf,
                c.sheaf_refill,
                c.sheaf_flush,
                c.barn_get,
                c.barn_put,
                c.alloc_fastpath,
                c.alloc_slowpath,
                c.cpu_partial_alloc,
                c.alloc_from_partial,
                c.alloc_slab,
                c.cpuslab_flush,
                c.free_fastpath,
                c.free_slowpath,
                c.cpu_partial_free
            );
        }
        s
    }

    /// `objects` with a typed `kmem::Cache<T>`: allocate 1000 objects, then drop them.
    /// `None` when the cache cannot be created.
    pub fn objects_cache<T: Send>(
        name: &str,
        make: fn(u64) -> T,
        duration: std::time::Duration,
    ) -> Option<crate::harness::Sample> {
        use crate::harness::{timed_threads, BATCH};
        use std::sync::atomic::Ordering;
        let cache: kmem::Cache<T> = kmem::Cache::new(name).ok()?;
        let cache = &cache;
        Some(timed_threads(
            1,
            duration,
            |_| Vec::<kmem::SlabBox<'_, T>>::with_capacity(BATCH),
            |_, v, stop| {
                let mut ops = 0;
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..BATCH as u64 {
                        match cache.alloc(make(i)) {
                            Ok(b) => v.push(b),
                            Err(_) => {
                                std::alloc::handle_alloc_error(std::alloc::Layout::new::<T>())
                            }
                        }
                    }
                    std::hint::black_box(&mut *v);
                    v.clear();
                    ops += BATCH as u64;
                }
                ops
            },
        ))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn typed_cache_and_slabinfo() {
            // Its `release` returns kmem's free pages to the OS: not inside an RSS measurement.
            let _rss = crate::sys::RSS_TEST_LOCK
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let s = super::objects_cache(
                "bench-test-obj64",
                crate::harness::make64,
                crate::harness::MIN_SAMPLE,
            )
            .expect("cache created");
            assert!(s.ops >= crate::harness::BATCH as u64);
            let c: kmem::Cache<[u64; 4]> = kmem::Cache::new("bench-test-live").unwrap();
            let b = c.alloc([1; 4]).unwrap();
            let info = super::slabinfo();
            assert!(info.contains("bench-test-live"), "{info}");
            assert!(info.contains("# paths: cache alloc_sheaf"), "{info}");
            assert!(
                info.lines().any(|l| l.starts_with("bench-test-live ")),
                "{info}"
            );
            drop(b);
            assert_eq!(super::release(), "Kmem::global().shrink_all()");
        }

        #[test]
        fn footprint_counts_live_objects_by_class() {
            use std::alloc::{GlobalAlloc, Layout};
            let _rss = crate::sys::RSS_TEST_LOCK
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            // 3000 objects of 1000 B, in the class that serves them (4 per one-page slab).
            let l = Layout::from_size_align(1000, 8).unwrap();
            let class = kmem::kmalloc_class_for(l).unwrap();
            let name = if class.is_multiple_of(1024) {
                format!("kmalloc-{}k ", class / 1024)
            } else {
                format!("kmalloc-{class} ")
            };
            let objs: Vec<*mut u8> = (0..3000)
                // SAFETY: a non-zero layout; every object is freed below with it.
                .map(|_| unsafe { super::ALLOC.alloc(l) })
                .collect();
            assert!(objs.iter().all(|p| !p.is_null()));
            let s = super::footprint(3000 * 1000, 3000);
            for p in objs {
                // SAFETY: allocated above with `l`, freed once.
                unsafe { super::ALLOC.dealloc(p, l) };
            }
            assert!(
                s.starts_with("footprint at the fill's peak (MiB): 3000 objects requested 2.9;"),
                "{s}"
            );
            let row = s
                .lines()
                .find(|l| l.trim_start().starts_with(&name))
                .unwrap_or_else(|| panic!("no {name}row: {s}"));
            let live: usize = row.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert!(live >= 3000, "{row}");
            assert!(row.contains("x 1 p"), "{row}");
        }
    }
}

/// Runs `$body` with `$a` bound to a `&'static` value of the backend's `GlobalAlloc` type.
#[macro_export]
macro_rules! with_backend {
    ($backend:expr, |$a:ident| $body:expr) => {
        match $backend {
            $crate::alloc::Backend::Kmem | $crate::alloc::Backend::KmemCpuSlab => {
                let $a: &'static $crate::alloc::kmem_backend::Alloc = &$crate::alloc::KMEM;
                $body
            }
            $crate::alloc::Backend::System => {
                let $a: &'static ::std::alloc::System = &::std::alloc::System;
                $body
            }
            $crate::alloc::Backend::Mimalloc => {
                let $a: &'static ::mimalloc::MiMalloc = &::mimalloc::MiMalloc;
                $body
            }
            $crate::alloc::Backend::Jemalloc => {
                let $a: &'static ::tikv_jemallocator::Jemalloc = &::tikv_jemallocator::Jemalloc;
                $body
            }
        }
    };
}

/// kmem's allocator value (a static so that `with_backend!` can lend it out as `&'static`).
pub static KMEM: kmem_backend::Alloc = kmem_backend::ALLOC;
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// 0: not chosen yet; otherwise `Backend::code`.
static CHOSEN: AtomicU8 = AtomicU8::new(0);

/// The global allocator of this binary: forwards to the backend named by `KMEM_BENCH_GLOBAL`.
pub struct Dispatch;

/// The backend this process's global allocator forwards to.
pub fn global_backend() -> Backend {
    match CHOSEN.load(Ordering::Relaxed) {
        1 => Backend::Kmem,
        2 => Backend::System,
        3 => Backend::Mimalloc,
        4 => Backend::Jemalloc,
        5 => Backend::KmemCpuSlab,
        _ => choose(),
    }
}

#[cold]
fn choose() -> Backend {
    // SAFETY: the name is NUL-terminated; getenv neither allocates nor keeps the pointer.
    let p = unsafe { libc::getenv(c"KMEM_BENCH_GLOBAL".as_ptr()) };
    let backend = if p.is_null() {
        Backend::System
    } else {
        // SAFETY: getenv returned a NUL-terminated string owned by the environment.
        let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
        match Backend::from_name(bytes) {
            Some(b) => b,
            None => {
                let msg =
                    b"kmem-bench: KMEM_BENCH_GLOBAL must be kmem, kmem-cpuslab, system, mimalloc or jemalloc\n";
                // SAFETY: writing a valid buffer to stderr, then aborting: no allocation.
                unsafe {
                    libc::write(2, msg.as_ptr().cast(), msg.len());
                    libc::abort();
                }
            }
        }
    };
    // Every racing first caller computes the same value from the same environment.
    CHOSEN.store(backend.code(), Ordering::Relaxed);
    backend
}

macro_rules! forward {
    (|$a:ident| $body:expr) => {
        match global_backend() {
            Backend::Kmem | Backend::KmemCpuSlab => {
                let $a = &KMEM;
                $body
            }
            Backend::System => {
                let $a = &System;
                $body
            }
            Backend::Mimalloc => {
                let $a = &MIMALLOC;
                $body
            }
            Backend::Jemalloc => {
                let $a = &JEMALLOC;
                $body
            }
        }
    };
}

// SAFETY: every method forwards to one backend, chosen once and never changed, so each block
// is freed by the allocator that handed it out; the backends uphold GlobalAlloc's contract.
unsafe impl GlobalAlloc for Dispatch {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: caller upholds GlobalAlloc::alloc's contract.
        forward!(|a| unsafe { a.alloc(layout) })
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from the same backend (see the impl's SAFETY comment).
        forward!(|a| unsafe { a.dealloc(ptr, layout) })
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: caller upholds GlobalAlloc::alloc_zeroed's contract.
        forward!(|a| unsafe { a.alloc_zeroed(layout) })
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: ptr came from the same backend; caller upholds realloc's contract.
        forward!(|a| unsafe { a.realloc(ptr, layout, new_size) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for b in Backend::ALL {
            assert_eq!(Backend::from_name(b.name().as_bytes()), Some(b));
        }
        assert_eq!(Backend::from_name(b"tcmalloc"), None);
    }

    #[test]
    fn every_backend_allocates_and_frees() {
        let layout = Layout::from_size_align(256, 16).unwrap();
        for b in Backend::ALL {
            crate::with_backend!(b, |a| {
                // SAFETY: non-zero layout; freed with the same allocator and layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "{}", b.name());
                    assert_eq!(p as usize % 16, 0);
                    p.write_bytes(0xa5, 256);
                    a.dealloc(p, layout);
                }
            });
        }
    }
}
