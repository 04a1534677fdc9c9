//! The barn (Linux 7.0, `struct node_barn`): per node, a stock of full and empty sheaves that CPU
//! slots trade with, so a CPU that only frees and one that only allocates exchange whole sheaves
//! instead of going to the slabs object by object.
//!
//! ```text
//!   Barn (one per node, under its spin lock)
//!     full   ──▶ sheaf ──▶ sheaf ...   at most MAX_FULL_SHEAVES (freeing CPUs put, allocating CPUs get)
//!     empty  ──▶ sheaf ──▶ sheaf ...   at most MAX_EMPTY_SHEAVES (the reverse)
//! ```
//!
//! A full sheaf records the CPU slot whose frees filled it (`Sheaf::filled_on`); a slot that
//! takes a full sheaf takes one of its own if one is among the first [`PREFER_OWN`] of the
//! list, so that objects freed on a CPU are allocated again on it while they are in its
//! caches (kmem-bench's `batch`, one and two threads: 6% faster, docs/performance.md).
//!
//! The lock is held only to link or unlink one sheaf (or to take a whole list for shrink): no
//! other lock is taken under it, and nothing under it can fault or call out. Lock order: a CPU
//! slot's sheaf lock may be held when the barn lock is taken, never the reverse.
//!
//! The empty limit is the kernel's (`MAX_EMPTY_SHEAVES`, 10); the full one is twice the kernel's
//! (`MAX_FULL_SHEAVES`, 20), measured: a thread that allocates 1000 objects of 64 bytes and then
//! frees them (kmem-bench's `batch`) keeps its whole batch in its sheaves and the barn instead of
//! flushing a third of it to the slabs and refilling it again, 8.4 → 6.2 ns per object
//! (docs/performance.md, "Deeper barns"). The decay's barn trim bounds what an idle cache keeps
//! there. A put that
//! would pass them fails and the caller flushes the sheaf to the slabs (full) or returns it to
//! the pool (empty); only a thread that lost a race installing a sheaf it has just refilled puts
//! it past the limit ([`Barn::put_full_force`]), as the kernel does.

use super::sheaf::Sheaf;
use crate::sync::SpinLock;
use core::ptr;

/// Full sheaves a barn keeps at most.
pub(crate) const MAX_FULL_SHEAVES: usize = 20;
/// Empty sheaves a barn keeps at most.
pub(crate) const MAX_EMPTY_SHEAVES: usize = 10;
/// How far down its full list [`Barn::get_full`] looks for a sheaf of the caller's CPU.
pub(crate) const PREFER_OWN: usize = 4;

/// One node's barn.
#[repr(C, align(64))]
pub(crate) struct Barn {
    pub(crate) lists: SpinLock<BarnLists>,
}

/// The barn's two lists, linked through [`Sheaf::next`].
pub(crate) struct BarnLists {
    full: *mut Sheaf,
    nr_full: usize,
    empty: *mut Sheaf,
    nr_empty: usize,
}

// SAFETY: the sheaves on the lists are owned by the barn and only touched under its lock.
unsafe impl Send for BarnLists {}

impl BarnLists {
    fn push(head: &mut *mut Sheaf, n: &mut usize, s: *mut Sheaf) {
        // SAFETY: the caller hands `s` to the barn (it owns it); linked under the barn lock.
        unsafe { (*s).next.set(*head) };
        *head = s;
        *n += 1;
    }

    fn pop(head: &mut *mut Sheaf, n: &mut usize) -> Option<*mut Sheaf> {
        let s = *head;
        if s.is_null() {
            return None;
        }
        // SAFETY: on the list, which the barn lock guards.
        *head = unsafe { (*s).next.get() };
        *n -= 1;
        Some(s)
    }
}

impl Barn {
    /// An empty barn.
    pub(crate) fn new() -> Self {
        Barn {
            lists: SpinLock::new(
                "kmem barn lock",
                BarnLists {
                    full: ptr::null_mut(),
                    nr_full: 0,
                    empty: ptr::null_mut(),
                    nr_empty: 0,
                },
            ),
        }
    }

    /// Takes a full sheaf (`barn_replace_empty_sheaf` without the put, which the caller does
    /// once its slot took the sheaf): among the first [`PREFER_OWN`] of the list, one that slot
    /// `slot` filled (its objects were last written on this CPU: the allocations that take them
    /// find them in its caches), else the first.
    pub(crate) fn get_full(&self, slot: usize) -> Option<*mut Sheaf> {
        let mut l = self.lists.lock();
        let l = &mut *l;
        let mut prev: *mut Sheaf = ptr::null_mut();
        let mut s = l.full;
        let mut i = 0;
        while !s.is_null() && i < PREFER_OWN {
            // SAFETY: on the list, which the held barn lock guards.
            let (filled_on, next) = unsafe { ((*s).filled_on.get(), (*s).next.get()) };
            if filled_on == slot {
                if prev.is_null() {
                    l.full = next;
                } else {
                    // SAFETY: as above.
                    unsafe { (*prev).next.set(next) };
                }
                l.nr_full -= 1;
                return Some(s);
            }
            prev = s;
            s = next;
            i += 1;
        }
        BarnLists::pop(&mut l.full, &mut l.nr_full)
    }

    /// Takes an empty sheaf (`barn_get_empty_sheaf`).
    pub(crate) fn get_empty(&self) -> Option<*mut Sheaf> {
        let mut l = self.lists.lock();
        let l = &mut *l;
        BarnLists::pop(&mut l.empty, &mut l.nr_empty)
    }

    /// Whether a full sheaf could be put now (the caller checks before taking its main out).
    pub(crate) fn has_room_for_full(&self) -> bool {
        self.lists.lock().nr_full < MAX_FULL_SHEAVES
    }

    /// Puts a full (or partly full) sheaf, whatever the limit (`barn_put_full_sheaf`).
    ///
    /// # Safety
    /// The caller owns `s` and gives it up.
    pub(crate) unsafe fn put_full_force(&self, s: *mut Sheaf) {
        let mut l = self.lists.lock();
        let l = &mut *l;
        BarnLists::push(&mut l.full, &mut l.nr_full, s);
    }

    /// Puts an empty sheaf if the barn keeps fewer than [`MAX_EMPTY_SHEAVES`]; gives it back
    /// otherwise (the caller returns it to the pool).
    ///
    /// # Safety
    /// The caller owns `s` (empty) and gives it up on `Ok`.
    pub(crate) unsafe fn put_empty(&self, s: *mut Sheaf) -> Result<(), *mut Sheaf> {
        let mut l = self.lists.lock();
        let l = &mut *l;
        if l.nr_empty >= MAX_EMPTY_SHEAVES {
            return Err(s);
        }
        BarnLists::push(&mut l.empty, &mut l.nr_empty, s);
        Ok(())
    }

    /// Takes the full list whole (the decay's barn trim, [`CacheInner::trim_barns`]), linked
    /// through `next`.
    ///
    /// [`CacheInner::trim_barns`]: super::CacheInner::trim_barns
    pub(crate) fn take_full(&self) -> *mut Sheaf {
        let mut l = self.lists.lock();
        let out = l.full;
        if !cfg!(kmem_mutant = "barn_trim_without_take") {
            // Planted bug (loom-tests): the sheaves stay on the barn while the trim flushes
            // them, so a slow path can take one and hand out objects the trim gives back.
            l.full = ptr::null_mut();
            l.nr_full = 0;
        }
        out
    }

    /// Takes both lists whole (shrink, destroy): `(full, empty)`, each linked through `next`.
    pub(crate) fn take_all(&self) -> (*mut Sheaf, *mut Sheaf) {
        let mut l = self.lists.lock();
        let out = (l.full, l.empty);
        l.full = ptr::null_mut();
        l.empty = ptr::null_mut();
        l.nr_full = 0;
        l.nr_empty = 0;
        out
    }

    /// `(full sheaves, empty sheaves, objects in the full ones)`, under the lock.
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let l = self.lists.lock();
        let mut objs = 0;
        let mut s = l.full;
        while !s.is_null() {
            // SAFETY: on the list the held lock guards.
            unsafe {
                objs += (*s).len();
                s = (*s).next.get();
            }
        }
        (l.nr_full, l.nr_empty, objs)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::cpu::percpu::ArrayHead;
    use crate::sync::Cell;

    fn sheaf(filled_on: usize) -> Box<Sheaf> {
        Box::new(Sheaf {
            head: ArrayHead::new(4),
            next: Cell::new(ptr::null_mut()),
            filled_on: Cell::new(filled_on),
        })
    }

    /// `get_full` prefers, among the first `PREFER_OWN` full sheaves, one the caller's slot
    /// filled; else it takes the first. Every sheaf put comes back once, and the count follows.
    #[test]
    fn get_full_prefers_the_callers_own_sheaves() {
        let barn = Barn::new();
        // Put oldest first; the list is then, newest first (slot that filled each):
        // A 0, B 1, C 0, D 2, E 0, F 0, G 3.
        let owners = [3, 0, 0, 2, 0, 1, 0];
        let sheaves: Vec<*mut Sheaf> = owners.iter().map(|&o| Box::into_raw(sheaf(o))).collect();
        let [g, f, e, d, c, b, a] = sheaves[..] else {
            unreachable!()
        };
        for &s in &sheaves {
            // SAFETY: a sheaf we own, given to the barn.
            unsafe { barn.put_full_force(s) };
        }
        // Slot 1: B, the second of the list (its own first).
        assert_eq!(barn.get_full(1), Some(b));
        // Slot 2: D, third now (A, C, D, E, F, G): within the PREFER_OWN = 4 looked at.
        assert_eq!(PREFER_OWN, 4);
        assert_eq!(barn.get_full(2), Some(d));
        // Slot 3: G is fifth (A, C, E, F, G), beyond reach: the first, A, instead.
        assert_eq!(barn.get_full(3), Some(a));
        assert_eq!(barn.counts().0, 4);
        // What is left comes back in list order, each once.
        let rest: Vec<_> = (0..4).map(|_| barn.get_full(7).unwrap()).collect();
        assert_eq!(rest, [c, e, f, g]);
        assert_eq!(barn.get_full(7), None);
        assert_eq!(barn.counts().0, 0);
        for s in sheaves {
            // SAFETY: from Box::into_raw above, off the barn, freed once.
            drop(unsafe { Box::from_raw(s) });
        }
    }
}
