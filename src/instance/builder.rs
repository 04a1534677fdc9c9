//! [`KmemBuilder`]: an instance's parameters, validated, and the construction of its shared
//! state.

use super::shared::reclaim_hook;
use super::*;

/// Configures a private [`Kmem`] instance.
///
/// ```
/// use kmem::{FaultInjection, Kmem};
/// let k = Kmem::builder()
///     .memory_limit(16 << 20)
///     .nodes(2)
///     .cpus(4)
///     .fault_injection(FaultInjection::EveryNth(1000))
///     .build()?;
/// assert_eq!(k.nodes(), 2);
/// # Ok::<(), kmem::KmemError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct KmemBuilder {
    memory_limit: Option<usize>,
    nodes: Option<usize>,
    cpus: Option<usize>,
    fault: FaultInjection,
    commit: Option<cpu::CommitMode>,
    /// `None`: the default delay; `Some(None)`: no decay.
    decay_ms: Option<Option<u64>>,
}

impl KmemBuilder {
    /// The page allocator never maps more than `bytes` of slab and page memory (rounded down to
    /// whole pages; metadata is counted apart, see [`PageStats::metadata_bytes`]). Default: no
    /// limit.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().memory_limit(1 << 20).cpus(1).nodes(1).build().unwrap();
    /// let c = k.create_cache("capped", 4096, kmem::CacheConfig::new()).unwrap();
    /// let mut objs = Vec::new();
    /// while let Some(p) = c.alloc() {
    ///     objs.push(p);
    /// }
    /// // Out of memory at the limit, not before the OS runs out.
    /// assert!(!objs.is_empty() && objs.len() * 4096 <= 1 << 20);
    /// assert!(k.page_stats().mapped_bytes <= 1 << 20);
    /// // SAFETY: every pointer came from `c`, appears once, and is not used afterwards.
    /// unsafe { c.free_bulk(&objs) };
    /// ```
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Fake NUMA nodes: `n` nodes with their own page allocators and partial lists; CPU slots
    /// are split between them in contiguous blocks. Default: the machine's nodes.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().nodes(4).cpus(8).build().unwrap();
    /// assert_eq!(k.nodes(), 4);
    /// assert_eq!((k.slot_node(0), k.slot_node(7)), (0, 3));
    /// ```
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = Some(n);
        self
    }

    /// Per-CPU slots in every cache. A thread on CPU `c` uses slot `c % n`. Default: the
    /// machine's possible CPUs.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(3).nodes(1).build().unwrap();
    /// assert_eq!(k.cpus(), 3);
    /// assert!(kmem::Kmem::builder().cpus(0).build().is_err());
    /// ```
    pub fn cpus(mut self, n: usize) -> Self {
        self.cpus = Some(n);
        self
    }

    /// Asks for a commit mode for this instance's fast paths. `Locked` is always honoured.
    /// `Rseq` (and the default, automatic) gives restartable sequences only when the process
    /// is in rseq mode ([`cpu::commit_mode`]) and every CPU has a slot of its own (`cpus(n)`
    /// with `n` at least [`cpu::possible_cpus`], the default): a slot shared by several CPUs
    /// cannot rely on a sequence's exclusivity, so such an instance uses the locked mode.
    /// [`Kmem::commit_mode`] reports what was chosen.
    ///
    /// ```
    /// use kmem::cpu::CommitMode;
    /// let k = kmem::Kmem::builder().commit_mode(CommitMode::Locked).build().unwrap();
    /// assert_eq!(k.commit_mode(), CommitMode::Locked);
    /// let shared = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// if kmem::cpu::possible_cpus() > 1 {
    ///     assert_eq!(shared.commit_mode(), CommitMode::Locked); // slots != CPUs
    /// }
    /// ```
    pub fn commit_mode(mut self, mode: cpu::CommitMode) -> Self {
        self.commit = Some(mode);
        self
    }

    /// How long free memory stays with the instance before it goes back to the OS by itself
    /// (the decay, in the spirit of jemalloc's `dirty_decay_ms`; see the page module's
    /// `decay.rs`): `Some(ms)` releases a free page block once it has been free for about `ms`
    /// milliseconds (between `ms` and `1.5 ms`), checked from the allocation slow paths — no
    /// background thread; `Some(0)` releases every free block at every check; `None` keeps the older policy
    /// (free blocks of 2 MiB and more are released as they form, smaller ones only by
    /// [`Kmem::shrink_all`]). Default: [`DEFAULT_DECAY_MS`] (200 ms); the global instance
    /// reads `KMEM_DECAY_MS` (milliseconds, or `off`) instead. [`Kmem::shrink_all`] returns
    /// everything at once either way.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().dirty_decay_ms(Some(0)).cpus(1).nodes(1).build()?;
    /// let c = k.create_cache("decaying", 4096, kmem::CacheConfig::new().max_order(0))?;
    /// let objs: Vec<_> = (0..64).map(|_| c.alloc().unwrap()).collect();
    /// // SAFETY: every pointer came from `c`, appears once, and is not used afterwards.
    /// unsafe { c.free_bulk(&objs) }; // most empty slabs go back to the page allocator, dirty
    /// let before = k.page_stats();
    /// assert!(before.resident_bytes > before.mapped_bytes - before.free_bytes);
    /// // The next slow path runs the decay: with a delay of 0 the free pages go back at once.
    /// // (The first allocation takes the CPU slab's free object on the fast path, which never
    /// // ticks; the second one refills.)
    /// let p = [c.alloc().unwrap(), c.alloc().unwrap()];
    /// let after = k.page_stats();
    /// assert!(after.released_bytes_total > before.released_bytes_total);
    /// assert!(after.resident_bytes < before.resident_bytes);
    /// // SAFETY: both came from `c` and are freed once.
    /// unsafe { c.free_bulk(&p) };
    /// let err = kmem::Kmem::builder().dirty_decay_ms(Some(u64::MAX)).build().unwrap_err();
    /// assert!(matches!(err, kmem::KmemError::InvalidConfig { parameter: "dirty_decay_ms", .. }));
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    pub fn dirty_decay_ms(mut self, ms: Option<u64>) -> Self {
        self.decay_ms = Some(ms);
        self
    }

    /// The global instance's decay delay: `KMEM_DECAY_MS` when set (read with `getenv`, which
    /// does not allocate), else the default. A value that is neither a number of milliseconds
    /// nor `off` is reported on stderr once and the default is used.
    #[cfg_attr(any(miri, loom), allow(unused_mut))]
    pub(super) fn decay_from_env(mut self) -> Self {
        #[cfg(not(any(miri, loom)))]
        {
            // SAFETY: a NUL-terminated name; getenv returns null or a NUL-terminated string.
            let v = unsafe { libc::getenv(c"KMEM_DECAY_MS".as_ptr()) };
            if !v.is_null() {
                // SAFETY: as above.
                let v = unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes();
                match parse_decay(v) {
                    Some(d) => self.decay_ms = Some(d),
                    None => os::write_stderr(&[
                        "kmem: KMEM_DECAY_MS is neither a number of milliseconds nor \"off\"; \
                         using the default decay delay",
                    ]),
                }
            }
        }
        self
    }

    /// Makes page allocations fail on purpose (see [`FaultInjection`]). Default: none.
    ///
    /// ```
    /// use kmem::FaultInjection;
    /// let k = kmem::Kmem::builder()
    ///     .cpus(1)
    ///     .nodes(1)
    ///     .fault_injection(FaultInjection::EveryNth(1)) // every page allocation fails
    ///     .build()
    ///     .unwrap();
    /// let c = k.create_cache("doomed", 64, kmem::CacheConfig::new()).unwrap();
    /// assert!(c.alloc().is_none());
    /// assert!(k.page_stats().injected_failures >= 1);
    /// ```
    pub fn fault_injection(mut self, f: FaultInjection) -> Self {
        self.fault = f;
        self
    }

    /// Builds the instance, validating every parameter.
    ///
    /// ```
    /// use kmem::KmemError;
    /// let k = kmem::Kmem::builder().cpus(2).nodes(1).build()?;
    /// assert_eq!(k.cpus(), 2);
    /// let err = kmem::Kmem::builder().memory_limit(100).build().unwrap_err();
    /// assert!(matches!(err, KmemError::InvalidConfig { parameter: "memory_limit", .. }));
    /// # Ok::<(), KmemError>(())
    /// ```
    pub fn build(self) -> Result<Kmem, KmemError> {
        self.build_shared().map(|shared| Kmem { shared })
    }

    pub(super) fn build_shared(self) -> Result<NonNull<KmemShared>, KmemError> {
        if !crate::sync::DWord::is_lock_free() {
            return Err(KmemError::NoDoubleWordCas);
        }
        // KMEM_DEBUG is read once per process; a bad value builds no instance.
        crate::debug::flags::check_env()?;
        // The freelist secret (the `freelist-hardened` feature) exists before any free pointer.
        crate::sync::init_freelist_random();
        let cfg = |parameter, value, reason| KmemError::InvalidConfig {
            parameter,
            value,
            reason,
        };
        let nr_cpus = self.cpus.unwrap_or_else(cpu::possible_cpus);
        if nr_cpus == 0 || nr_cpus > MAX_CPUS {
            return Err(cfg("cpus", nr_cpus, "must be between 1 and 8192"));
        }
        let fake_nodes = self.nodes.is_some();
        let nr_nodes = self.nodes.unwrap_or_else(cpu::possible_nodes);
        if nr_nodes == 0 || nr_nodes > MAX_NODES {
            return Err(cfg("nodes", nr_nodes, "must be between 1 and 1024"));
        }
        check_os_page_size(os::page_size())?;
        let decay_ns = match self.decay_ms.unwrap_or(Some(DEFAULT_DECAY_MS)) {
            None => None,
            Some(ms) if ms <= MAX_DECAY_MS => Some(ms * 1_000_000),
            Some(ms) => {
                return Err(cfg(
                    "dirty_decay_ms",
                    ms.min(usize::MAX as u64) as usize,
                    "must be at most 10^10 ms (about 115 days), or None for no decay",
                ))
            }
        };
        let limit = self.memory_limit.unwrap_or(usize::MAX);
        if limit < PAGE_SIZE {
            return Err(cfg(
                "memory_limit",
                limit,
                "must be at least one page (4096 bytes)",
            ));
        }
        match self.fault {
            FaultInjection::EveryNth(0) => {
                return Err(cfg("fault_injection EveryNth", 0, "n must be at least 1"));
            }
            FaultInjection::Probability { percent, .. } if percent > 100 => {
                return Err(cfg(
                    "fault_injection percent",
                    percent as usize,
                    "must be at most 100",
                ));
            }
            _ => {}
        }

        // The process's mode is decided here, by the first instance built, whatever this one
        // asks for.
        let process_rseq = cpu::commit_mode() == cpu::CommitMode::Rseq;
        let rseq = match self.commit {
            Some(cpu::CommitMode::Locked) => false,
            // Loom models opt in explicitly (the model's CPUs are the slots).
            #[cfg(loom)]
            Some(cpu::CommitMode::Rseq) => {
                let _ = process_rseq;
                nr_cpus <= crate::sync::MODEL_CPUS
            }
            #[cfg(loom)]
            None => false,
            #[cfg(not(loom))]
            _ => process_rseq && nr_cpus >= cpu::possible_cpus(),
        };

        let nodes_off = core::mem::size_of::<KmemShared>().next_multiple_of(128);
        let slot_off =
            (nodes_off + nr_nodes * core::mem::size_of::<PageAllocator>()).next_multiple_of(64);
        // Per node, one per-CPU page list slot per CPU slot (`page/pcp.rs`).
        let pcp_off = (slot_off + nr_cpus * 2).next_multiple_of(128);
        let nr_pcp = nr_nodes * nr_cpus;
        // Per CPU slot, the due time of its sheaves' trim.
        let trim_off = (pcp_off + nr_pcp * core::mem::size_of::<PcpSlot>()).next_multiple_of(64);
        let map_size =
            (trim_off + nr_cpus * core::mem::size_of::<AtomicU64>()).next_multiple_of(PAGE_SIZE);
        let base = os::map(map_size, PAGE_SIZE)
            .ok_or(KmemError::OutOfMemory {
                what: "allocator metadata",
                bytes: map_size,
            })?
            .as_ptr();
        // `base` is a fresh zeroed mapping of `map_size` bytes; each write lands inside it at an
        // offset aligned for its type; the budget's address is final before the page allocators
        // take a pointer to it.
        // SAFETY: each write below stays inside the fresh `base` mapping, aligned for its type.
        unsafe {
            let shared = base as *mut KmemShared;
            let nodes = base.add(nodes_off) as *mut PageAllocator;
            let slot_node = base.add(slot_off) as *mut u16;
            let pcp = base.add(pcp_off) as *mut PcpSlot;
            for i in 0..nr_pcp {
                ptr::write(pcp.add(i), PcpSlot::new());
            }
            let next_sheaf_trim = base.add(trim_off) as *mut AtomicU64;
            for slot in 0..nr_cpus {
                ptr::write(next_sheaf_trim.add(slot), AtomicU64::new(0));
            }
            for slot in 0..nr_cpus {
                let nid = if fake_nodes {
                    slot * nr_nodes / nr_cpus
                } else {
                    cpu::cpu_to_node(slot).min(nr_nodes - 1)
                };
                slot_node.add(slot).write(nid as u16);
            }
            ptr::write(
                shared,
                KmemShared {
                    refs: AtomicUsize::new(1),
                    nr_nodes,
                    nr_cpus,
                    rseq,
                    tid_step: TidStep::new(nr_cpus),
                    budget: PageBudget::new(limit, self.fault).with_decay(decay_ns),
                    nodes,
                    slot_node,
                    registry: SpinLock::new(
                        "kmem cache registry lock",
                        Registry {
                            head: ptr::null(),
                            count: 0,
                        },
                    ),
                    leaked: AtomicBool::new(false),
                    map_size,
                    next_barn_trim: AtomicU64::new(0),
                    next_sheaf_trim,
                },
            );
            let budget = &(*shared).budget as *const PageBudget;
            for nid in 0..nr_nodes {
                // Node `nid` owns slots `[nid * nr_cpus, (nid + 1) * nr_cpus)`.
                ptr::write(
                    nodes.add(nid),
                    PageAllocator::new(nid, budget).with_pcp(pcp.add(nid * nr_cpus), nr_cpus),
                );
                // The instance outlives its page allocators (they live inside it).
                (*nodes.add(nid)).set_reclaim_hook(reclaim_hook, shared as *const ());
            }
            Ok(NonNull::new_unchecked(shared))
        }
    }
}

/// Refuses an OS page size kmem cannot work with. kmem's page (`PAGE_SIZE`, 4 KiB) is its own
/// unit; the OS page may be larger (16 KiB, 64 KiB): then only free blocks of at least one OS
/// page are returned to the OS. A chunk must be a whole number of OS pages (mappings are
/// trimmed and protected in OS pages), and every power of two up to `CHUNK_SIZE` is.
fn check_os_page_size(os_page_size: usize) -> Result<(), KmemError> {
    if os_page_size.is_power_of_two() && os_page_size <= CHUNK_SIZE {
        Ok(())
    } else {
        Err(KmemError::UnsupportedPageSize { os_page_size })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn os_page_sizes_up_to_a_chunk_are_supported() {
        // Every power of two from 4 KiB up to a chunk (4 MiB normally; smaller under Miri, whose
        // MAX_ORDER is 5).
        for p in [4096, 16 << 10, 64 << 10, 2 << 20, CHUNK_SIZE] {
            if p <= CHUNK_SIZE {
                assert_eq!(check_os_page_size(p), Ok(()), "{p}");
            }
        }
        for p in [0, 3000, 12 << 10, 2 * CHUNK_SIZE] {
            let e = check_os_page_size(p).unwrap_err();
            assert_eq!(e, KmemError::UnsupportedPageSize { os_page_size: p });
            assert!(e.to_string().contains("page size"), "{e}");
        }
        assert_eq!(check_os_page_size(os::page_size()), Ok(()));
    }
}

/// The largest decay delay accepted (ms): about 115 days, far from overflowing nanoseconds.
const MAX_DECAY_MS: u64 = 10_000_000_000;

/// Parses `KMEM_DECAY_MS`: `off` (no decay) or a decimal number of milliseconds up to
/// [`MAX_DECAY_MS`]; `None` for anything else.
#[cfg_attr(any(miri, loom), allow(dead_code))]
fn parse_decay(v: &[u8]) -> Option<Option<u64>> {
    if v == b"off" {
        return Some(None);
    }
    if v.is_empty() || v.len() > 11 {
        return None;
    }
    let mut n = 0u64;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as u64;
    }
    (n <= MAX_DECAY_MS).then_some(Some(n))
}

#[cfg(all(test, not(loom)))]
mod decay_tests {
    use super::parse_decay;

    #[test]
    fn decay_env_values() {
        assert_eq!(parse_decay(b"off"), Some(None));
        assert_eq!(parse_decay(b"0"), Some(Some(0)));
        assert_eq!(parse_decay(b"250"), Some(Some(250)));
        assert_eq!(parse_decay(b"10000000000"), Some(Some(10_000_000_000)));
        for bad in [
            &b""[..],
            b"-1",
            b"1.5",
            b"10000000001",
            b"99999999999999",
            b"Off",
            b"1s",
        ] {
            assert_eq!(parse_decay(bad), None, "{:?}", core::str::from_utf8(bad));
        }
    }
}
