//! `validate_slab_cache` (`/sys/kernel/slab/<cache>/validate`): walks every slab a cache's
//! nodes know of and checks it.
//!
//! # A debug cache
//!
//! Every slab is on its node's partial list or full list (`paths.rs`), and only the holder of
//! the node's `list_lock` changes it, so under that lock each slab is checked whole:
//! `check_slab` (counters possible), `on_freelist` (every free pointer an object of the slab,
//! no cycle, free objects + `inuse` = `objects`), then every object — free ones (marked from
//! the freelist in a 32767-bit map on the stack) must be intact free objects
//! (`check_object(0xbb)`: red zones, poison, padding, free pointer), allocated ones intact
//! allocated objects (`0xcc`: red zones, padding) — and the slab's unused end
//! (`slab_pad_check`). Per node, the partial list's length must equal `nr_partial`, a slab on
//! the partial list must have a free object and one on the full list none, and the slabs found
//! may not outnumber `nr_slabs`. (Fewer is not a defect: a `shrink` or reclaim in flight
//! uncounts the slabs it took off the list after dropping the lock.)
//!
//! # Any other cache
//!
//! Its objects have no red zones, poison or records, and its slabs live on CPU slots and CPU
//! partial lists that the lockless fast paths change without any lock. `validate` first
//! flushes every slot (`flush_all`, as the kernel's `validate_slab_cache` does), which puts
//! every slab with a free object on a node partial list; then, under each node's `list_lock`,
//! it checks every partial slab: unfrozen (invariant L), `check_slab`, and its freelist —
//! every pointer an object start of the slab, no cycle, and its length equal to `objects -
//! inuse` read in the same snapshot. That is sound although remote frees keep pushing onto
//! these freelists with a CAS and no lock: an object on a node-partial slab's freelist can be
//! taken only under the lock we hold, so the chain from a snapshot's head stays as it was.
//! What it cannot see: full slabs (on no list), slabs that CPU slots take back after the flush,
//! and the contents of objects. Counts are checked as for a debug cache.
//!
//! Either way the first defect is reported on stderr in the kernel's words and returned as
//! [`KmemError::CacheCorrupted`]; nothing is repaired.

use super::{Defect, SLUB_RED_ACTIVE, SLUB_RED_INACTIVE};
use crate::error::KmemError;
use crate::page::Page;
use crate::slub::node::KmemCacheNode;
use crate::slub::slab::{get_freepointer, MAX_OBJS_PER_SLAB};
use crate::slub::CacheInner;
use crate::sync::Ordering;

impl CacheInner {
    /// `validate_slab_cache`.
    pub(crate) fn validate_slab_cache(&self) -> Result<(), KmemError> {
        let debug = self.debug;
        if !debug {
            self.flush_all();
        }
        let mut map = [0u64; MAX_OBJS_PER_SLAB.div_ceil(64)];
        for nid in 0..self.nr_nodes {
            // The error (a `String`) is built after the lock is dropped: the allocation may
            // come from this very cache when kmem is the global allocator.
            self.validate_node(nid, debug, &mut map)
                .map_err(|d| KmemError::CacheCorrupted {
                    cache: self.name().to_owned(),
                    kind: d.kind,
                    address: d.addr,
                })?;
        }
        Ok(())
    }

    /// `validate_slab_node`: every slab on node `nid`'s lists, under its lock.
    fn validate_node(
        &self,
        nid: usize,
        debug: bool,
        map: &mut [u64; MAX_OBJS_PER_SLAB.div_ceil(64)],
    ) -> Result<(), Defect> {
        let n = self.node(nid);
        let g = n.list_lock.lock();
        let mut found = 0usize;
        let mut nr_partial = 0usize;
        let mut slab = KmemCacheNode::first(&g);
        while !slab.is_null() {
            // SAFETY: on the partial list whose lock we hold.
            let s = unsafe { &*slab };
            if debug {
                // SAFETY: a debug slab; the lock is held.
                unsafe { self.validate_slab(s, map, true)? };
            } else {
                self.validate_lockless_slab(s)?;
            }
            found += 1;
            nr_partial += 1;
            // SAFETY: as above.
            slab = unsafe { KmemCacheNode::next_of(&g, slab) };
        }
        let mut slab = g.full;
        while !slab.is_null() {
            // SAFETY: on the full list whose lock we hold.
            let s = unsafe { &*slab };
            // SAFETY: a debug slab (only debug caches use the full list); the lock is held.
            unsafe { self.validate_slab(s, map, false)? };
            found += 1;
            // SAFETY: on the full list (links ours under the lock).
            slab = unsafe { s.lru_next.get() };
        }
        let counted = n.nr_partial.load(Ordering::Relaxed);
        let slabs = n.nr_slabs.load(Ordering::Relaxed);
        if nr_partial != counted || found > slabs {
            self.slab_bug("Wrong slab count", None);
            let mut l = super::report::Line::new();
            l.s("Node ")
                .dec(nid as u64)
                .s(": ")
                .dec(nr_partial as u64)
                .s(" partial slabs counted but nr_partial=")
                .dec(counted as u64)
                .s("; ")
                .dec(found as u64)
                .s(" slabs on lists, nr_slabs=")
                .dec(slabs as u64);
            l.end();
            return Err(Defect {
                kind: "Wrong slab count",
                addr: 0,
            });
        }
        Ok(())
    }

    /// `validate_slab` for a debug slab on the partial (`partial`) or full list.
    ///
    /// # Safety
    /// The caller holds the slab's node `list_lock`.
    unsafe fn validate_slab(
        &self,
        s: &Page,
        map: &mut [u64; MAX_OBJS_PER_SLAB.div_ceil(64)],
        partial: bool,
    ) -> Result<(), Defect> {
        self.check_slab(s)?;
        // SAFETY: lock held (contract).
        unsafe { self.on_freelist(s, 0)? };
        let (fl, c) = s.slab_state();
        let base = Self::slab_base(s);
        if c.frozen() || (fl != 0) != partial {
            self.slab_err(
                s,
                if partial {
                    "Slab on the partial list without a free object"
                } else {
                    "Slab on the full list with a free object"
                },
                None,
            );
            return Err(Defect {
                kind: "Slab on the wrong list",
                addr: base,
            });
        }
        let objects = c.objects() as usize;
        map[..objects.div_ceil(64)].fill(0);
        let mut p = fl;
        while p != 0 {
            // `on_freelist` checked every pointer of this chain.
            let i = (p - self.geo.red_left_pad - base) / self.geo.size;
            map[i / 64] |= 1 << (i % 64);
            // SAFETY: an object of the slab.
            p = unsafe { get_freepointer(p, self.geo.offset) };
        }
        for i in 0..objects {
            let free = map[i / 64] & (1 << (i % 64)) != 0;
            let val = if free {
                SLUB_RED_INACTIVE
            } else {
                SLUB_RED_ACTIVE
            };
            // SAFETY: object `i` of the slab; the lock is held.
            unsafe { self.check_object(s, self.object_at(base, i), val)? };
        }
        self.slab_pad_check(s)
    }

    /// The checks a slab of a cache without debug flags allows (see the module docs).
    fn validate_lockless_slab(&self, s: &Page) -> Result<(), Defect> {
        let (fl, c) = s.slab_state();
        let base = Self::slab_base(s);
        if c.frozen() {
            self.slab_err(s, "Frozen slab on a node partial list", None);
            return Err(Defect {
                kind: "Frozen slab on a node partial list",
                addr: base,
            });
        }
        self.check_slab(s)?;
        let (mut p, mut nr) = (fl, 0u32);
        while p != 0 && nr <= c.objects() {
            if !self.check_valid_pointer(s, p) {
                self.slab_err(s, "Freepointer corrupt", Some(p));
                return Err(Defect {
                    kind: "Freepointer corrupt",
                    addr: p,
                });
            }
            // SAFETY: an object of the slab, on a chain no one can take objects from while we hold the list lock.
            p = unsafe { get_freepointer(p, self.geo.offset) };
            nr += 1;
        }
        if nr > c.objects() {
            self.slab_err(s, "Freelist cycle detected", None);
            return Err(Defect {
                kind: "Freelist cycle detected",
                addr: base,
            });
        }
        if c.inuse() != c.objects() - nr {
            self.slab_bug("Wrong object count", None);
            let mut l = super::report::Line::new();
            l.s("Counter is ")
                .dec(c.inuse() as u64)
                .s(" but counted were ")
                .dec((c.objects() - nr) as u64);
            l.end();
            self.print_slab_info(s);
            return Err(Defect {
                kind: "Wrong object count",
                addr: base,
            });
        }
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::config::{CacheConfig, CacheFlags};
    use crate::error::KmemError;
    use crate::instance::Kmem;
    use crate::slub::slab::{get_freepointer, set_freepointer};

    fn kind(e: Result<(), KmemError>) -> &'static str {
        match e {
            Err(KmemError::CacheCorrupted { kind, .. }) => kind,
            other => panic!("{other:?}"),
        }
    }

    /// Counters and freelists corrupted behind the cache's back: each defect is named.
    #[test]
    #[cfg_attr(miri, ignore)]
    fn validate_names_counter_and_freelist_defects() {
        let k = Kmem::builder().cpus(1).nodes(1).build().unwrap();
        let flags = CacheFlags(CacheFlags::DEBUG);
        let c = k
            .create_cache("counted", 64, CacheConfig::new().flags(flags))
            .unwrap();
        let objs: Vec<_> = (0..4).map(|_| c.alloc().unwrap()).collect();
        let s = c.inner();
        let slab = s.owning_slab(objs[0].as_ptr());
        // SAFETY: a live slab of `c`.
        let p = unsafe { &*slab };
        let (fl, n) = p.slab_state();
        assert!(c.validate().is_ok());

        // `inuse` one too high.
        p.freelist_counters.store(fl, n.with_inuse(n.inuse() + 1).0);
        assert_eq!(kind(c.validate()), "Wrong object count");
        p.freelist_counters.store(fl, n.0);
        assert!(c.validate().is_ok());

        // The second free object's free pointer into the void: the chain is corrupt there.
        // SAFETY: `fl` heads the slab's freelist (nothing else runs on this cache).
        let second = unsafe { get_freepointer(fl, s.geo.offset) };
        // SAFETY: as above.
        let saved = unsafe { get_freepointer(second, s.geo.offset) };
        // SAFETY: as above.
        unsafe { set_freepointer(second, s.geo.offset, 0x10) };
        assert_eq!(kind(c.validate()), "Freechain corrupt");
        // A cycle: the second points back to the first.
        // SAFETY: as above.
        unsafe { set_freepointer(second, s.geo.offset, fl) };
        assert_eq!(kind(c.validate()), "Freelist cycle detected");
        // SAFETY: restore.
        unsafe { set_freepointer(second, s.geo.offset, saved) };
        assert!(c.validate().is_ok());

        for o in objs {
            // SAFETY: each came from `c` and is freed once.
            unsafe { c.free(o) };
        }
        assert!(c.validate().is_ok());
    }
}
