//! `PageBudget`: the memory limit shared by an instance's nodes, and fault injection.

use super::*;
use crate::os;
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// The budget shared by every node of one allocator instance: the memory limit, fault
/// injection state.
pub(crate) struct PageBudget {
    pub(super) limit: usize,
    pub(super) reserved: AtomicUsize,
    /// Chunk mappings under way (counted before their reservation is attempted, so that an
    /// allocation that finds the limit reached also sees every chunk still being set up).
    pub(super) growing: AtomicUsize,
    pub(super) fault: FaultInjection,
    pub(super) calls: AtomicU64,
    /// The OS page size (and, in unit tests, the emulated kernel) for releases.
    pub(crate) os: os::OsPages,
    /// The decay delay in nanoseconds (`decay.rs`): free memory goes back to the OS once it has
    /// been free this long. `None`: no decay (blocks of `RELEASE_ORDER` and up are released
    /// as they form, the rest only by `release_free`).
    pub(crate) decay_ns: Option<u64>,
    /// Unit tests: a fake decay clock (nanoseconds; 0: the real coarse clock).
    #[cfg(test)]
    pub(crate) fake_now: AtomicU64,
}

impl PageBudget {
    /// A budget of `limit` bytes of chunk data (`usize::MAX`: none).
    #[allow(dead_code)] // called by the slab layer and Kmem (being written)
    pub(crate) fn new(limit: usize, fault: FaultInjection) -> Self {
        Self::with_os(limit, fault, os::OsPages::current())
    }

    /// A budget whose releases follow `os` (unit tests: an emulated kernel).
    pub(crate) fn with_os(limit: usize, fault: FaultInjection, os: os::OsPages) -> Self {
        PageBudget {
            limit,
            reserved: AtomicUsize::new(0),
            growing: AtomicUsize::new(0),
            fault,
            calls: AtomicU64::new(0),
            os,
            decay_ns: None,
            #[cfg(test)]
            fake_now: AtomicU64::new(0),
        }
    }

    /// The decay clock: `os::coarse_now_ns` (unit tests may set a fake time instead).
    #[inline]
    pub(crate) fn decay_now(&self) -> u64 {
        #[cfg(test)]
        {
            let t = self.fake_now.load(Ordering::Relaxed);
            if t != 0 {
                return t;
            }
        }
        os::coarse_now_ns()
    }

    /// This budget with the decay delay `decay_ns` (`None`: no decay).
    pub(crate) fn with_decay(mut self, decay_ns: Option<u64>) -> Self {
        self.decay_ns = decay_ns;
        self
    }

    /// Reserves up to `CHUNK_SIZE` bytes (a whole number of pages); 0 when exhausted.
    pub(super) fn reserve_chunk(&self) -> usize {
        let mut cur = self.reserved.load(Ordering::Relaxed);
        loop {
            let room = self.limit.saturating_sub(cur) & !(PAGE_SIZE - 1);
            let take = room.min(CHUNK_SIZE);
            if take == 0 {
                return 0;
            }
            match self.reserved.compare_exchange_weak(
                cur,
                cur + take,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(c) => cur = c,
            }
        }
    }

    pub(super) fn unreserve(&self, bytes: usize) {
        self.reserved.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// One draw of fault injection: true if this call must fail.
    pub(super) fn inject(&self) -> bool {
        match self.fault {
            FaultInjection::None | FaultInjection::EveryNth(0) => false,
            FaultInjection::EveryNth(n) => {
                (self.calls.fetch_add(1, Ordering::Relaxed) + 1) % n == 0
            }
            FaultInjection::Probability { percent, seed } => {
                let i = self.calls.fetch_add(1, Ordering::Relaxed);
                splitmix64(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))) % 100
                    < percent as u64
            }
        }
    }
}

/// SplitMix64's finaliser: a good 64-bit mix of a counter.
pub(super) fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
