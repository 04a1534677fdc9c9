//! `failslab`: object-level fault injection per cache (`CacheConfig::failslab`), the kernel's
//! `should_failslab` with its attributes replaced by kmem's deterministic
//! [`FaultInjection`](crate::FaultInjection): the i-th allocation attempt of the cache fails
//! according to the rule and `i` alone (`EveryNth(n)`: `i + 1` a multiple of `n`;
//! `Probability { percent, seed }`: SplitMix64 of `seed` and `i` below `percent` of 100), the
//! same decision the page allocator makes for instance-wide injection. The count is one
//! relaxed atomic per cache; the test runs on the debug allocation path, which a cache with
//! injection always takes, so no other cache executes it.

use crate::page::FaultInjection;
use crate::slub::CacheInner;
use crate::sync::Ordering;

impl CacheInner {
    /// `should_failslab`: whether this allocation attempt fails by injection.
    pub(crate) fn should_failslab(&self) -> bool {
        match self.failslab {
            FaultInjection::None | FaultInjection::EveryNth(0) => false,
            FaultInjection::EveryNth(n) => {
                (self.failslab_calls.fetch_add(1, Ordering::Relaxed) + 1) % n == 0
            }
            FaultInjection::Probability { percent, seed } => {
                let i = self.failslab_calls.fetch_add(1, Ordering::Relaxed);
                super::shuffle::splitmix64(seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                    % 100
                    < percent as u64
            }
        }
    }
}
