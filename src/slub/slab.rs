//! `struct slab`: the slab view of a head [`Page`], its packed counters, and the free pointer.
//!
//! A slab is a block of `2^order` pages cut into `objects` equal objects. Its head page's
//! descriptor carries the double word `{freelist, counters}`:
//!
//! - `freelist`: free objects that are *not* on a CPU freelist — objects freed while the slab
//!   was not some CPU's current slab, or freed by a thread on another CPU slot.
//! - `counters`: `inuse:16 | objects:15 | frozen:1` ([`Counters`]). `inuse` counts objects not on
//!   this `freelist` (handed to users *or* to a CPU freelist). `frozen` means a CPU slot owns the
//!   slab (as its current slab or on its partial list): frees into a frozen slab never touch a
//!   list, so they are one CAS.
//!
//! Both halves change together in one 16-byte CAS, which is what lets a remote free, a freeze
//! and a list decision agree without a lock (see `__slab_free` in `slub/free.rs`).
//!
//! Free objects link through a pointer stored at `offset` inside the object (see
//! [`get_freepointer`]).

use crate::page::Page;
use crate::sync;

/// The most objects one slab may hold (15 bits of `objects`).
pub(crate) const MAX_OBJS_PER_SLAB: usize = (1 << 15) - 1;

/// `inuse:16 | objects:15 | frozen:1`, packed in the tag half of a slab's double word.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters(pub(crate) u64);

impl Counters {
    const INUSE_MASK: u64 = 0xffff;
    const OBJECTS_SHIFT: u32 = 16;
    const OBJECTS_MASK: u64 = 0x7fff;
    const FROZEN_BIT: u64 = 1 << 31;

    /// Packs the three fields.
    #[inline]
    pub(crate) const fn new(inuse: u32, objects: u32, frozen: bool) -> Self {
        Counters(
            (inuse as u64 & Self::INUSE_MASK)
                | ((objects as u64 & Self::OBJECTS_MASK) << Self::OBJECTS_SHIFT)
                | if frozen { Self::FROZEN_BIT } else { 0 },
        )
    }

    /// Objects not on the slab's own freelist.
    #[inline]
    pub(crate) const fn inuse(self) -> u32 {
        (self.0 & Self::INUSE_MASK) as u32
    }

    /// Objects in the slab.
    #[inline]
    pub(crate) const fn objects(self) -> u32 {
        ((self.0 >> Self::OBJECTS_SHIFT) & Self::OBJECTS_MASK) as u32
    }

    /// Owned by a CPU slot.
    #[inline]
    pub(crate) const fn frozen(self) -> bool {
        self.0 & Self::FROZEN_BIT != 0
    }

    /// The same with `inuse` replaced.
    #[inline]
    pub(crate) const fn with_inuse(self, inuse: u32) -> Self {
        Counters((self.0 & !Self::INUSE_MASK) | (inuse as u64 & Self::INUSE_MASK))
    }

    /// The same with `frozen` replaced.
    #[inline]
    pub(crate) const fn with_frozen(self, frozen: bool) -> Self {
        if frozen {
            Counters(self.0 | Self::FROZEN_BIT)
        } else {
            Counters(self.0 & !Self::FROZEN_BIT)
        }
    }
}

impl core::fmt::Debug for Counters {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{{inuse: {}, objects: {}, frozen: {}}}",
            self.inuse(),
            self.objects(),
            self.frozen()
        )
    }
}

impl Page {
    /// Loads the slab's `{freelist, counters}`.
    #[inline(always)]
    pub(crate) fn slab_state(&self) -> (usize, Counters) {
        let (fl, c) = self.freelist_counters.load();
        (fl, Counters(c))
    }

    /// `cmpxchg_double_slab`: swaps `{freelist, counters}` if unchanged.
    #[inline(always)]
    pub(crate) fn slab_cas(&self, old: (usize, Counters), new: (usize, Counters)) -> bool {
        self.freelist_counters
            .compare_exchange((old.0, old.1 .0), (new.0, new.1 .0))
            .is_ok()
    }
}

/// Exact division by a cache's object size, as one multiplication and one rotation: the
/// free path's O(1) check that a pointer is the start of an object, without a `div` (the
/// kernel computes `obj_to_index` with `reciprocal_divide` for the same reason).
///
/// Write the size as `d = q * 2^t` with `q` odd, and let `inv` be the inverse of `q` modulo
/// 2^64. For every `n`, `index(n) = rotate_right(n * inv, t)` (wrapping) is `n / d` when `d`
/// divides `n`, and is greater than `u64::MAX / d` when it does not (Granlund and Montgomery
/// 1994, §9; Lemire, Kaser and Kurz 2019): if `n = k * d`, `n * inv = k * 2^t` exactly, which
/// rotates to `k <= u64::MAX / d`; the map `n -> index(n)` is a bijection on `u64` taking the
/// multiples of `d` onto `0..=u64::MAX / d`, so it takes every other `n` above that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExactDiv {
    inv: u64,
    shift: u32,
    limit: u64,
}

impl ExactDiv {
    /// The divider for `d >= 1` (a cache's object size).
    pub(crate) const fn new(d: usize) -> Self {
        let d = if d == 0 { 1 } else { d as u64 };
        let shift = d.trailing_zeros();
        let q = d >> shift;
        // Newton's iteration for the inverse modulo 2^64: `q * q == 1 (mod 8)` for odd `q`,
        // so `inv = q` is right to 3 bits, and each step doubles the bits: 3, 6, 12, 24, 48, 96.
        let mut inv = q;
        let mut i = 0;
        while i < 5 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(q.wrapping_mul(inv)));
            i += 1;
        }
        ExactDiv {
            inv,
            shift,
            limit: u64::MAX / d,
        }
    }

    /// `n / d` if `d` divides `n`, else some value above `u64::MAX / d`; see
    /// [`ExactDiv::is_index`].
    #[inline(always)]
    pub(crate) const fn index(self, n: usize) -> u64 {
        (n as u64).wrapping_mul(self.inv).rotate_right(self.shift)
    }

    /// Whether `index` came from a multiple of `d`.
    #[inline(always)]
    pub(crate) const fn is_index(self, index: u64) -> bool {
        index <= self.limit
    }
}

/// "Is `off` the start of one of a slab's objects `0..=last`?" as one multiplication and one
/// comparison, for offsets inside a slab (below 4 MiB): the inline free check of kmalloc's
/// views (`view.rs`), where [`ExactDiv`]'s rotation by a per-cache amount cost a variable
/// shift and the register it needs.
///
/// With `c = floor(2^64 / d) + 1`, `d * c = 2^64 + e` where `e = d - (2^64 mod d)` is in
/// `1..=d`. Modulo 2^64, the multiple `n = k * d` maps to `n * c = k * e`, which grows with
/// `k`; any other `n = k * d + r` (`0 < r < d`) maps to `k * e + r * c`, at least
/// `c > 2^41` (for `d <= 2^23`), with no wrap-around while `n < 2^23` and `d < 2^20`.
/// So `n * c <= last * e` holds exactly for the multiples `0, d, …, last * d` (Lemire, Kaser
/// and Kurz 2019 use the same `c` for their divisibility test; the ordering of the multiples
/// is what lets one comparison also bound the index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(loom, allow(dead_code))] // kmalloc's views (not built under loom)
pub(crate) struct StartCheck {
    mul: u64,
    limit: u64,
}

impl StartCheck {
    /// The largest object size the check is exact for.
    pub(crate) const MAX_SIZE: usize = 1 << 19;
    /// The largest offset the check is exact for (a slab is at most 4 MiB).
    pub(crate) const MAX_OFFSET: usize = (1 << 23) - 1;

    /// The check for objects of `d` bytes (`1..=MAX_SIZE`) with indexes `0..=last`.
    pub(crate) const fn new(d: usize, last: u64) -> Self {
        assert!(d >= 1 && d <= Self::MAX_SIZE);
        let d = d as u64;
        // `floor(2^64 / d) + 1` modulo 2^64 (it is 2^64 + 1 only for `d = 1`, where 1 works).
        let mul = ((1u128 << 64) / d as u128 + 1) as u64;
        // `d * mul` wraps to `e`; `last * e <= last * d` (a slab's bytes) cannot overflow.
        let e = d.wrapping_mul(mul);
        StartCheck {
            mul,
            limit: last * e,
        }
    }

    /// Whether `off <= MAX_OFFSET` is `k * d` for some `k <= last`.
    #[inline(always)]
    pub(crate) const fn is_start(self, off: usize) -> bool {
        (off as u64).wrapping_mul(self.mul) <= self.limit
    }
}

/// Reads the free pointer of the free object at `object` (`offset` bytes in).
///
/// # Safety
/// `object` is a slab object of a cache whose free pointer is at `offset`; slab memory stays
/// mapped while its allocator lives. The value may be stale if the object is concurrently
/// allocated; callers validate it with a CAS or own the list they walk.
#[inline(always)]
pub(crate) unsafe fn get_freepointer(object: usize, offset: usize) -> usize {
    // SAFETY: `object + offset` is a usize-aligned word inside mapped slab memory (contract).
    unsafe { sync::load_free_ptr((object + offset) as *const usize) }
}

/// Writes the free pointer of `object`.
///
/// # Safety
/// As [`get_freepointer`], and the caller owns `object` (it is being freed or built).
#[inline(always)]
pub(crate) unsafe fn set_freepointer(object: usize, offset: usize, next: usize) {
    // SAFETY: aligned word inside an object the caller owns (contract).
    unsafe { sync::store_free_ptr((object + offset) as *mut usize, next) }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn counters_pack_and_unpack() {
        let c = Counters::new(65535, 32767, true);
        assert_eq!((c.inuse(), c.objects(), c.frozen()), (65535, 32767, true));
        let c = c.with_inuse(3).with_frozen(false);
        assert_eq!((c.inuse(), c.objects(), c.frozen()), (3, 32767, false));
        let c = Counters::new(0, 1, false).with_frozen(true);
        assert_eq!((c.inuse(), c.objects(), c.frozen()), (0, 1, true));
        assert_eq!(
            Counters::new(7, 9, false).with_inuse(7),
            Counters::new(7, 9, false)
        );
        assert_eq!(
            format!("{:?}", Counters::new(1, 2, true)),
            "{inuse: 1, objects: 2, frozen: true}"
        );
    }

    #[test]
    fn inuse_does_not_spill_into_objects() {
        for inuse in [0u32, 1, 0x7fff, 0xffff] {
            for objects in [1u32, 2, 0x4000, 0x7fff] {
                let c = Counters::new(inuse, objects, false);
                assert_eq!(c.objects(), objects);
                assert_eq!(c.inuse(), inuse);
                assert!(!c.frozen());
            }
        }
    }

    #[test]
    // Millions of divisions: a second natively, far too slow under Miri (pure arithmetic).
    #[cfg_attr(miri, ignore)]
    fn exact_div_finds_exactly_the_multiples() {
        // Every offset inside the largest slab: 4 MiB.
        let max = crate::page::PAGE_SIZE << crate::page::MAX_ORDER;
        // Object sizes are word multiples; a few odd divisors check the arithmetic itself.
        let mut divisors: Vec<usize> = (8..=8192).step_by(8).collect();
        divisors.extend([
            1,
            3,
            7,
            25,
            4104,
            12_288,
            65_536,
            100_000,
            max / 3,
            max - 8,
            max,
        ]);
        for d in divisors {
            let e = ExactDiv::new(d);
            let check = |x: usize| {
                let i = e.index(x);
                if x % d == 0 {
                    assert!(e.is_index(i) && i == (x / d) as u64, "{x} / {d}: {i} {e:?}");
                } else {
                    assert!(!e.is_index(i), "{x} / {d}: {i} {e:?}");
                }
            };
            // Every multiple and its neighbours, plus a stride through the rest.
            let mut n = 0;
            while n < max {
                for x in [n.saturating_sub(1), n, n + 1, n + d / 2] {
                    check(x);
                }
                n += d;
            }
            for x in (0..max).step_by(4099) {
                check(x);
            }
            check(usize::MAX);
        }
    }

    #[test]
    // Every offset of a 4 MiB slab for hundreds of sizes: seconds natively, far too slow
    // under Miri (pure arithmetic).
    #[cfg_attr(miri, ignore)]
    fn start_check_accepts_exactly_the_object_starts() {
        let max = crate::page::PAGE_SIZE << crate::page::MAX_ORDER;
        assert_eq!(max - 1, StartCheck::MAX_OFFSET >> 1);
        let mut sizes: Vec<usize> = (8..=8192).step_by(8).collect();
        sizes.extend([
            1,
            3,
            7,
            25,
            4104,
            12_288,
            65_536,
            100_000,
            StartCheck::MAX_SIZE,
        ]);
        for d in sizes {
            // A full slab of the largest size, one object short, and a single object.
            for last in [
                (max / d) as u64 - 1,
                ((max / d) as u64).saturating_sub(2),
                0,
            ] {
                let c = StartCheck::new(d, last);
                let check = |x: usize| {
                    let want = x % d == 0 && (x / d) as u64 <= last;
                    assert_eq!(c.is_start(x), want, "{x} with size {d}, last {last}: {c:?}");
                };
                let mut n = 0;
                while n <= StartCheck::MAX_OFFSET {
                    for x in [n.saturating_sub(1), n, n + 1, n + d / 2, n + d - 1] {
                        if x <= StartCheck::MAX_OFFSET {
                            check(x);
                        }
                    }
                    n += d;
                }
                for x in (0..=StartCheck::MAX_OFFSET).step_by(4099) {
                    check(x);
                }
            }
        }
    }

    #[test]
    fn freepointer_round_trips() {
        let mut obj = [0usize; 4];
        let base = obj.as_mut_ptr() as usize;
        // SAFETY: `obj` is a live, aligned local array of 4 words; offset 16 is inside it.
        unsafe {
            set_freepointer(base, 16, 0x1234_5678);
            assert_eq!(get_freepointer(base, 16), 0x1234_5678);
        }
        // Stored as is, unless `freelist-hardened` encodes it.
        assert_eq!(obj[2] == 0x1234_5678, !cfg!(feature = "freelist-hardened"));
    }
}
