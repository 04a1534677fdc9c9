//! The checks and the colouring of objects: `check_valid_pointer`, `check_bytes_and_report`,
//! `check_object`, `check_pad_bytes`, `slab_pad_check`, `check_slab`, `on_freelist`,
//! `init_object`, `alloc_debug_processing`, `free_debug_processing`, and the debug part of
//! `init_slab` (`setup_slab_debug`, `setup_object_debug`).
//!
//! Every check that finds a defect writes its report (`report.rs`) and returns it as a
//! [`Defect`]; the alloc and free paths then abort, `validate` returns it as an error. The
//! callers hold the node's `list_lock` (or own a slab nobody else can see yet), which is what
//! makes reading a slab's freelist and its objects' metadata consistent: on a debug cache
//! nothing changes them without that lock (`paths.rs`).

use super::track::TrackItem;
use super::{Defect, POISON_END, POISON_FREE, POISON_INUSE, SLUB_RED_ACTIVE, SLUB_RED_INACTIVE};
use crate::config::CacheFlags;
use crate::page::Page;
use crate::slub::slab::{get_freepointer, set_freepointer, MAX_OBJS_PER_SLAB};
use crate::slub::CacheInner;

/// The reason strings of `check_bytes_and_report`, by region.
fn overwritten(what: &str) -> &'static str {
    match what {
        "Left Redzone" => "Left Redzone overwritten",
        "Right Redzone" => "Right Redzone overwritten",
        "Alignment padding" => "Alignment padding overwritten",
        "Poison" => "Poison overwritten",
        "End Poison" => "End Poison overwritten",
        "Object padding" => "Object padding overwritten",
        _ => "Padding overwritten",
    }
}

impl CacheInner {
    /// `check_valid_pointer`: `obj` is 0 or the start of one of the slab's objects.
    pub(crate) fn check_valid_pointer(&self, slab: &Page, obj: usize) -> bool {
        if obj == 0 {
            return true;
        }
        let base = Self::slab_base(slab) + self.slab_colour_bytes(slab);
        let objects = slab.slab_state().1.objects() as usize;
        let Some(slot) = obj.checked_sub(self.geo.red_left_pad) else {
            return false;
        };
        // A multiple of the size: the exact division of the free path (no `div`).
        slot >= base
            && slot < base + objects * self.geo.size
            && self.size_div.is_index(self.size_div.index(slot - base))
    }

    /// `check_bytes_and_report`: the `len` bytes at `start` all equal `value`; if not, reports
    /// the damaged range (the header only for the first defect of this object: `*reported`).
    fn check_bytes_and_report(
        &self,
        obj: usize,
        what: &'static str,
        start: usize,
        value: u8,
        len: usize,
        reported: &mut Option<Defect>,
    ) -> bool {
        // SAFETY: the caller names bytes inside the object's slot (mapped slab memory).
        let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, len) };
        let Some(first) = bytes.iter().position(|&b| b != value) else {
            return true;
        };
        let last = bytes.iter().rposition(|&b| b != value).unwrap_or(first);
        if reported.is_none() {
            self.slab_bug(overwritten(what), None);
            *reported = Some(Defect {
                kind: overwritten(what),
                addr: start + first,
            });
        } else {
            super::report::line(&[what, " overwritten too:"]);
        }
        let mut l = super::report::Line::new();
        l.hex((start + first) as u64)
            .s("-")
            .hex((start + last) as u64)
            .s(" @offset=");
        if start + first < obj {
            l.s("-").dec((obj - start - first) as u64);
        } else {
            l.dec((start + first - obj) as u64);
        }
        l.s(" (from the object). First byte ")
            .hex(bytes[first] as u64)
            .s(" instead of ")
            .hex(value as u64);
        l.end();
        false
    }

    /// `check_pad_bytes`: the padding after the records holds `POISON_INUSE`.
    fn check_pad_bytes(&self, obj: usize, reported: &mut Option<Defect>) -> bool {
        let mut off = self.get_info_end();
        if self.has(CacheFlags::STORE_USER) {
            off += 2 * super::track::TRACK_SIZE;
        }
        let end = self.size_from_object();
        if off == end {
            return true;
        }
        self.check_bytes_and_report(
            obj,
            "Object padding",
            obj + off,
            POISON_INUSE,
            end - off,
            reported,
        )
    }

    /// `check_object`: red zones, poison, padding and the free pointer of `obj`, expected to
    /// be free (`val == SLUB_RED_INACTIVE`) or allocated (`SLUB_RED_ACTIVE`).
    ///
    /// # Safety
    /// `obj` is an object of `slab` (checked by the caller), whose slot the caller may read
    /// consistently (it holds the node's `list_lock`).
    pub(crate) unsafe fn check_object(
        &self,
        slab: &Page,
        obj: usize,
        val: u8,
    ) -> Result<(), Defect> {
        let g = &self.geo;
        let mut rep = None;
        if self.has(CacheFlags::RED_ZONE) {
            self.check_bytes_and_report(
                obj,
                "Left Redzone",
                obj - g.red_left_pad,
                val,
                g.red_left_pad,
                &mut rep,
            );
            self.check_bytes_and_report(
                obj,
                "Right Redzone",
                obj + g.object_size,
                val,
                g.inuse - g.object_size,
                &mut rep,
            );
        } else if self.has(CacheFlags::POISON) && g.object_size < g.inuse {
            self.check_bytes_and_report(
                obj,
                "Alignment padding",
                obj + g.object_size,
                POISON_INUSE,
                g.inuse - g.object_size,
                &mut rep,
            );
        }
        if self.has(CacheFlags::POISON) {
            if val != SLUB_RED_ACTIVE && self.object_poison() {
                self.check_bytes_and_report(
                    obj,
                    "Poison",
                    obj,
                    POISON_FREE,
                    g.object_size - 1,
                    &mut rep,
                );
                self.check_bytes_and_report(
                    obj,
                    "End Poison",
                    obj + g.object_size - 1,
                    POISON_END,
                    1,
                    &mut rep,
                );
            }
            self.check_pad_bytes(obj, &mut rep);
        }
        if self.freeptr_outside_object() || val != SLUB_RED_ACTIVE {
            // SAFETY: the free pointer's word is inside the slot (contract).
            let fp = unsafe { get_freepointer(obj, g.offset) };
            if !self.check_valid_pointer(slab, fp) {
                if rep.is_none() {
                    self.slab_bug("Freepointer corrupt", None);
                    rep = Some(Defect {
                        kind: "Freepointer corrupt",
                        addr: obj + g.offset,
                    });
                }
                let mut l = super::report::Line::new();
                l.s("Free pointer of ")
                    .hex(obj as u64)
                    .s(" is ")
                    .hex(fp as u64)
                    .s(", not an object of its slab");
                l.end();
            }
        }
        match rep {
            None => Ok(()),
            Some(d) => {
                self.print_trailer(slab, obj);
                Err(d)
            }
        }
    }

    /// `slab_pad_check`: the end of the slab after its last object holds `POISON_INUSE`.
    pub(crate) fn slab_pad_check(&self, slab: &Page) -> Result<(), Defect> {
        if !self.has(CacheFlags::POISON) {
            return Ok(());
        }
        let base = Self::slab_base(slab);
        let objects = slab.slab_state().1.objects() as usize;
        let start = base + objects * self.geo.size;
        let end = base + Self::slab_bytes(slab);
        // SAFETY: the slab's own bytes.
        let bytes = unsafe { core::slice::from_raw_parts(start as *const u8, end - start) };
        let Some(first) = bytes.iter().position(|&b| b != POISON_INUSE) else {
            return Ok(());
        };
        let last = bytes
            .iter()
            .rposition(|&b| b != POISON_INUSE)
            .unwrap_or(first);
        self.slab_err(slab, "Padding overwritten", None);
        let mut l = super::report::Line::new();
        l.hex((start + first) as u64)
            .s("-")
            .hex((start + last) as u64)
            .s(" @offset=")
            .dec((start + first - base) as u64)
            .s(". First byte ")
            .hex(bytes[first] as u64)
            .s(" instead of ")
            .hex(POISON_INUSE as u64);
        l.end();
        let from = (start + first) & !15;
        super::report::print_section("Padding  ", from, (start + last + 1 - from).min(64));
        Err(Defect {
            kind: "Padding overwritten",
            addr: start + first,
        })
    }

    /// `check_slab`: the counters are possible for the slab's size.
    pub(crate) fn check_slab(&self, slab: &Page) -> Result<(), Defect> {
        let (_, c) = slab.slab_state();
        let max = (Self::slab_bytes(slab) / self.geo.size).min(MAX_OBJS_PER_SLAB);
        let base = Self::slab_base(slab);
        if c.objects() as usize > max {
            self.slab_err(
                slab,
                "Wrong number of objects (more than the slab holds)",
                None,
            );
            return Err(Defect {
                kind: "Wrong number of objects",
                addr: base,
            });
        }
        if c.inuse() > c.objects() {
            self.slab_err(slab, "Wrong object count (inuse above objects)", None);
            return Err(Defect {
                kind: "Wrong object count",
                addr: base,
            });
        }
        Ok(())
    }

    /// `on_freelist`: walks the slab's freelist (at most `objects` steps) looking for
    /// `search` (0: none), checking every pointer and, when the walk ends, that the objects
    /// it counted agree with `inuse`. `Ok(true)`: found.
    ///
    /// # Safety
    /// The caller holds the node's `list_lock` of this debug slab (nothing else changes it).
    pub(crate) unsafe fn on_freelist(&self, slab: &Page, search: usize) -> Result<bool, Defect> {
        let (mut fp, c) = slab.slab_state();
        let objects = c.objects();
        let mut nr = 0u32;
        let mut object = 0usize;
        while fp != 0 && nr <= objects {
            if fp == search {
                return Ok(true);
            }
            if !self.check_valid_pointer(slab, fp) {
                return Err(if object != 0 {
                    self.object_err(slab, object, "Freechain corrupt");
                    Defect {
                        kind: "Freechain corrupt",
                        addr: object + self.geo.offset,
                    }
                } else {
                    self.slab_err(slab, "Freepointer corrupt", None);
                    Defect {
                        kind: "Freepointer corrupt",
                        addr: fp,
                    }
                });
            }
            object = fp;
            // SAFETY: `fp` is an object of the slab (checked just above).
            fp = unsafe { get_freepointer(object, self.geo.offset) };
            nr += 1;
        }
        let base = Self::slab_base(slab);
        if nr > objects {
            self.slab_err(slab, "Freelist cycle detected", None);
            return Err(Defect {
                kind: "Freelist cycle detected",
                addr: base,
            });
        }
        let max = (Self::slab_bytes(slab) / self.geo.size).min(MAX_OBJS_PER_SLAB) as u32;
        if objects != max {
            self.slab_bug("Wrong number of objects", None);
            let mut l = super::report::Line::new();
            l.s("Found ")
                .dec(objects as u64)
                .s(" but should be ")
                .dec(max as u64);
            l.end();
            self.print_slab_info(slab);
            return Err(Defect {
                kind: "Wrong number of objects",
                addr: base,
            });
        }
        if c.inuse() != objects - nr {
            self.slab_bug("Wrong object count", None);
            let mut l = super::report::Line::new();
            l.s("Counter is ")
                .dec(c.inuse() as u64)
                .s(" but counted were ")
                .dec((objects - nr) as u64);
            l.end();
            self.print_slab_info(slab);
            return Err(Defect {
                kind: "Wrong object count",
                addr: base,
            });
        }
        Ok(search == 0)
    }

    /// `init_object`: colours the red zones with `val` and poisons the object.
    ///
    /// # Safety
    /// `obj` is an object of this cache that the caller may write (it holds the list lock and
    /// the object is being allocated or freed, or the slab is new).
    pub(crate) unsafe fn init_object(&self, obj: usize, val: u8) {
        let g = &self.geo;
        let p = obj as *mut u8;
        // SAFETY: every range below is inside the object's slot (layout.rs).
        unsafe {
            if self.has(CacheFlags::RED_ZONE) {
                core::ptr::write_bytes(p.sub(g.red_left_pad), val, g.red_left_pad);
            }
            if self.object_poison() {
                core::ptr::write_bytes(p, POISON_FREE, g.object_size - 1);
                p.add(g.object_size - 1).write(POISON_END);
            }
            if self.has(CacheFlags::RED_ZONE) {
                core::ptr::write_bytes(p.add(g.object_size), val, g.inuse - g.object_size);
            }
        }
    }

    /// `alloc_debug_processing`: checks the free object about to be handed out (with `F`),
    /// records the owner (`U`) and colours it allocated.
    ///
    /// # Safety
    /// The caller holds the node's `list_lock` and took `obj` from the head of `slab`'s
    /// freelist.
    pub(crate) unsafe fn alloc_debug_processing(
        &self,
        slab: &Page,
        obj: usize,
        ret: usize,
    ) -> Result<(), Defect> {
        if self.has(CacheFlags::CONSISTENCY_CHECKS) {
            self.check_slab(slab)?;
            if !self.check_valid_pointer(slab, obj) {
                self.slab_err(slab, "Freelist Pointer check fails", Some(obj));
                return Err(Defect {
                    kind: "Freelist Pointer check fails",
                    addr: obj,
                });
            }
            // SAFETY: `obj` is an object of `slab`; list lock held (contract).
            unsafe { self.check_object(slab, obj, SLUB_RED_INACTIVE)? };
        }
        // SAFETY: a free object we are taking under the list lock.
        unsafe {
            if self.has(CacheFlags::STORE_USER) {
                self.set_track(obj, TrackItem::Alloc, ret);
            }
            self.init_object(obj, SLUB_RED_ACTIVE);
        }
        Ok(())
    }

    /// `free_consistency_checks` + the bookkeeping of `free_debug_processing` for one object.
    ///
    /// # Safety
    /// The caller holds the node's `list_lock`; `obj` is handed back by its owner.
    pub(crate) unsafe fn free_debug_processing(
        &self,
        slab: &Page,
        obj: usize,
        ret: usize,
    ) -> Result<(), Defect> {
        if !self.check_valid_pointer(slab, obj) {
            self.slab_err(slab, "Invalid object pointer", Some(obj));
            return Err(Defect {
                kind: "Invalid object pointer",
                addr: obj,
            });
        }
        if self.has(CacheFlags::CONSISTENCY_CHECKS) {
            // SAFETY: list lock held (contract).
            if unsafe { self.on_freelist(slab, obj)? } {
                self.object_err(slab, obj, "Object already free");
                return Err(Defect {
                    kind: "Object already free",
                    addr: obj,
                });
            }
            // SAFETY: as above; `obj` is an object of `slab`.
            unsafe { self.check_object(slab, obj, SLUB_RED_ACTIVE)? };
        }
        // SAFETY: the owner gave `obj` back; list lock held.
        unsafe {
            if self.has(CacheFlags::STORE_USER) {
                self.set_track(obj, TrackItem::Free, ret);
            }
            // The free pointer is not touched: POISON moved it out of the object.
            self.init_object(obj, SLUB_RED_INACTIVE);
        }
        Ok(())
    }

    /// The debug part of `init_slab` (`setup_slab_debug` + `setup_object_debug` + the
    /// constructor): fills the slab, colours every object free, clears its records, runs the
    /// constructor, and links the objects in order. Returns the first object.
    ///
    /// # Safety
    /// The caller owns the fresh block of `bytes` bytes at `base`, for `objects` objects.
    pub(crate) unsafe fn setup_slab_debug(
        &self,
        base: usize,
        bytes: usize,
        objects: usize,
    ) -> usize {
        // SAFETY: the caller owns the whole block.
        unsafe {
            if self.has(CacheFlags::POISON) {
                core::ptr::write_bytes(base as *mut u8, POISON_INUSE, bytes);
            }
            for i in 0..objects {
                let obj = self.object_at(base, i);
                self.init_object(obj, SLUB_RED_INACTIVE);
                if self.has(CacheFlags::STORE_USER) {
                    self.init_tracking(obj);
                }
                if let Some(ctor) = self.ctor {
                    ctor(core::ptr::NonNull::new_unchecked(obj as *mut u8));
                }
                let next = if i + 1 < objects {
                    self.object_at(base, i + 1)
                } else {
                    0
                };
                set_freepointer(obj, self.geo.offset, next);
            }
        }
        self.object_at(base, 0)
    }
}
