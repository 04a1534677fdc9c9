//! [`KmemError`]: what went wrong, in words a caller can act on.

use core::fmt;

/// An error from building an allocator or creating a cache.
///
/// Every variant says which input was wrong and why, so that a message such as
/// `invalid alignment 48 for cache "conn": must be a power of two` can be shown as is.
///
/// ```
/// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
/// let err = k.create_cache("bad", 0, kmem::CacheConfig::new()).unwrap_err();
/// assert!(matches!(err, kmem::KmemError::InvalidSize { .. }));
/// assert!(err.to_string().contains("bad"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmemError {
    /// An object size of zero, or one too large for any slab order.
    InvalidSize {
        /// The cache being created.
        cache: String,
        /// The size asked for.
        size: usize,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An alignment that is not a power of two, or larger than a page.
    InvalidAlignment {
        /// The cache being created.
        cache: String,
        /// The alignment asked for.
        align: usize,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A cache or builder parameter out of its range.
    InvalidConfig {
        /// Which parameter.
        parameter: &'static str,
        /// The value given.
        value: usize,
        /// What range or rule it breaks.
        reason: &'static str,
    },
    /// A cache name that is empty or longer than [`MAX_CACHE_NAME`](crate::MAX_CACHE_NAME).
    InvalidName {
        /// The name given (possibly truncated for display).
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The operating system or the configured memory limit refused memory.
    OutOfMemory {
        /// What was being allocated.
        what: &'static str,
        /// How many bytes.
        bytes: usize,
    },
    /// `KMEM_DEBUG` is set to something that is not `slub_debug` syntax (see
    /// [`CacheFlags::CONSISTENCY_CHECKS`](crate::CacheFlags::CONSISTENCY_CHECKS) and the
    /// README's debugging section): no instance is built until it is fixed.
    InvalidDebugOption {
        /// The whole value (at most 1025 bytes of it).
        value: String,
        /// The bad part.
        part: String,
        /// Its byte offset in the value.
        position: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`KmemCache::validate`](crate::KmemCache::validate) found a defect; the full report (the
    /// kernel's `BUG <cache>: <kind>` with hex dumps) is on stderr.
    CacheCorrupted {
        /// The cache.
        cache: String,
        /// The first defect, in the kernel's words (`Right Redzone overwritten`, `Poison
        /// overwritten`, `Freepointer corrupt`, `Wrong object count`, ...).
        kind: &'static str,
        /// The first damaged byte, object or slab (0 for a count of a whole node).
        address: usize,
    },
    /// This CPU has no lock-free 16-byte compare-and-swap, which kmem's fast path needs.
    NoDoubleWordCas,
    /// The OS page size (`sysconf(_SC_PAGESIZE)`) is not a power of two or is larger than
    /// kmem's 4 MiB chunk. (Larger pages than kmem's 4 KiB are supported: 16 KiB, 64 KiB.)
    UnsupportedPageSize {
        /// The OS page size found.
        os_page_size: usize,
    },
}

impl fmt::Display for KmemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KmemError::InvalidSize {
                cache,
                size,
                reason,
            } => {
                write!(
                    f,
                    "invalid object size {size} for cache {cache:?}: {reason}"
                )
            }
            KmemError::InvalidAlignment {
                cache,
                align,
                reason,
            } => {
                write!(f, "invalid alignment {align} for cache {cache:?}: {reason}")
            }
            KmemError::InvalidConfig {
                parameter,
                value,
                reason,
            } => {
                write!(f, "invalid {parameter} = {value}: {reason}")
            }
            KmemError::InvalidName { name, reason } => {
                write!(f, "invalid cache name {name:?}: {reason}")
            }
            KmemError::OutOfMemory { what, bytes } => {
                write!(f, "out of memory allocating {bytes} bytes for {what}")
            }
            KmemError::UnsupportedPageSize { os_page_size } => write!(
                f,
                "unsupported OS page size {os_page_size}: kmem needs a power of two no larger \
                 than its 4 MiB chunk"
            ),
            KmemError::InvalidDebugOption {
                value,
                part,
                position,
                reason,
            } => write!(
                f,
                "invalid KMEM_DEBUG={value:?}: {part:?} at byte {position}: {reason} (the syntax \
                 is slub_debug's: FZPU, FZ,cache-a,cache-b, or -)"
            ),
            KmemError::CacheCorrupted {
                cache,
                kind,
                address,
            } => write!(
                f,
                "cache {cache:?} is corrupt: {kind} at {address:#x} (the report is on stderr)"
            ),
            KmemError::NoDoubleWordCas => f.write_str(
                "this CPU has no lock-free 16-byte compare-and-swap (cmpxchg16b); kmem's \
                 per-CPU fast path cannot run without it",
            ),
        }
    }
}

impl std::error::Error for KmemError {}
