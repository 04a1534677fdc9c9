//! Model 11: the restartable-sequence protocol of `src/cpu/percpu/` (the rseq commit mode),
//! on a private array of two CPU slots (`kmem::cpu::__TestSlots`).
//!
//! Under loom a sequence runs under its model CPU's mutex (`sync/loom.rs`, `cpu_sequence`): it
//! is atomic with respect to every other sequence on that CPU and to a fence of that CPU, and
//! unordered with everything on other CPUs — the kernel's guarantee (an interrupted sequence is
//! aborted before its commit and restarted, which is indistinguishable from starting later).
//! The commit is a plain store of the freelist word, so a CAS from another CPU that lands
//! between a sequence's load and its commit is overwritten: the model sees it as an object on a
//! list that someone also holds (the census at the end) or handed out twice (`Live`).
//!
//! - `same_cpu_sequences_are_atomic`: two threads on CPU 0 pop and push (mutant
//!   `rseq_commit_outside_sequence`: the commit falls outside the sequence's range);
//! - `migration_before_the_sequence`: a thread chose slot 0 on CPU 0, migrated to CPU 1, and
//!   takes slot 0's list with the on-CPU CAS, which must refuse (`NotOnCpu`) and fall back to
//!   stop + fence, while a thread on CPU 0 pops (mutant `rseq_cpu_not_rechecked`);
//! - `stop_fence_vs_sequences`: a stopper on CPU 1 stops slot 0, fences CPU 0 and takes the
//!   list with the locked CAS, racing a sequence in flight on CPU 0 and one that starts after
//!   the fence (mutants `rseq_stop_without_fence`, `rseq_fence_before_stop`,
//!   `rseq_ignores_stop`).
#![cfg(loom)]

use kmem::cpu::{__Seq as Seq, __TestSlots as TestSlots};
use kmem_loom_tests::*;
use loom::sync::Arc;
use std::ptr::NonNull;

/// Two objects `x -> y` on slot 0 (built with the main thread's stop + fence, on CPU 0).
fn setup() -> (Arc<TestSlots>, [usize; 2]) {
    let s = Arc::new(TestSlots::new(2));
    // Object memory is plain memory loom does not see (as in every model); leaked per run.
    let objs: &'static mut [[usize; 8]] = Box::leak(vec![[0usize; 8]; 2].into_boxed_slice());
    let x = objs[0].as_mut_ptr() as usize;
    let y = objs[1].as_mut_ptr() as usize;
    // SAFETY: fresh memory: ours.
    unsafe {
        *(y as *mut usize) = 0;
        *(x as *mut usize) = y;
    }
    on_cpu(0);
    let h = s.stop_and_take(0);
    assert_eq!(h, 0);
    // SAFETY: the list is ours; slot 0 is stopped.
    unsafe { s.give_back_and_resume(0, x) };
    (s, [x, y])
}

fn nn(a: usize) -> NonNull<u8> {
    NonNull::new(a as *mut u8).unwrap()
}

/// Pops one object on the calling thread's CPU (waiting while the slot is stopped); `None`
/// when the list is empty.
fn pop(s: &TestSlots, live: &Live) -> Option<usize> {
    loop {
        let (st, _, a) = s.pop();
        match st {
            Seq::Done => {
                live.add(nn(a));
                return Some(a);
            }
            Seq::Empty => return None,
            Seq::Stopped => loom::thread::yield_now(),
            other => panic!("pop: {other:?}"),
        }
    }
}

/// Pushes `a` back on the calling thread's CPU (waiting while the slot is stopped).
fn push(s: &TestSlots, live: &Live, a: usize) {
    live.remove(nn(a));
    loop {
        // SAFETY: `a` is ours (it was in `live`).
        match unsafe { s.push(a) }.0 {
            Seq::Done => return,
            Seq::Stopped => loom::thread::yield_now(),
            other => panic!("push: {other:?}"),
        }
    }
}

/// Claims every object of a detached list.
fn hold_list(live: &Live, mut p: usize) {
    while p != 0 {
        live.add(nn(p));
        // SAFETY: a detached list of our objects.
        p = unsafe { *(p as *const usize) };
    }
}

/// At quiescence: every object is held or on exactly one slot list, never both.
fn census(s: &TestSlots, live: &Live, objs: &[usize; 2]) {
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..s.len() {
        for a in s.walk(i) {
            assert!(seen.insert(a), "object {a:#x} on two lists");
        }
    }
    let held = live.take_all();
    for p in &held {
        assert!(
            seen.insert(p.as_ptr() as usize),
            "object {p:p} is held and on a slot list (a lost update)"
        );
    }
    assert_eq!(seen.len(), objs.len(), "objects lost");
}

#[test]
fn same_cpu_sequences_are_atomic() {
    model(|| {
        let (s, objs) = setup();
        let live = Live::new();
        let (s1, l1) = (s.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(0);
            pop(&s1, &l1);
        });
        let (s2, l2) = (s.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            let p = pop(&s2, &l2);
            pop(&s2, &l2);
            if let Some(p) = p {
                push(&s2, &l2, p);
            }
        });
        a.join().unwrap();
        b.join().unwrap();
        census(&s, &live, &objs);
    });
}

#[test]
fn migration_before_the_sequence() {
    model(|| {
        let (s, objs) = setup();
        let live = Live::new();
        let (s1, l1) = (s.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            // Chose slot 0 while on CPU 0 (a slow path holding slot 0's lock), then migrated.
            on_cpu(0);
            on_cpu(1);
            match s1.take_on_cpu(0) {
                Some(h) => hold_list(&l1, h),
                None => {
                    // Not on CPU 0 any more: stop + fence instead.
                    let h = s1.stop_and_take(0);
                    hold_list(&l1, h);
                    // SAFETY: slot 0 was stopped by us; nothing to give back.
                    unsafe { s1.give_back_and_resume(0, 0) };
                }
            }
        });
        let (s2, l2) = (s.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            if let Some(p) = pop(&s2, &l2) {
                push(&s2, &l2, p);
            }
        });
        a.join().unwrap();
        b.join().unwrap();
        census(&s, &live, &objs);
    });
}

#[test]
fn stop_fence_vs_sequences() {
    model(|| {
        let (s, objs) = setup();
        let live = Live::new();
        let (s1, l1) = (s.clone(), live.clone());
        let a = loom::thread::spawn(move || {
            on_cpu(1);
            let h = s1.stop_and_take(0);
            hold_list(&l1, h);
            // SAFETY: slot 0 was stopped by us; nothing to give back.
            unsafe { s1.give_back_and_resume(0, 0) };
        });
        let (s2, l2) = (s.clone(), live.clone());
        let b = loom::thread::spawn(move || {
            on_cpu(0);
            if let Some(p) = pop(&s2, &l2) {
                push(&s2, &l2, p);
            }
        });
        a.join().unwrap();
        b.join().unwrap();
        census(&s, &live, &objs);
    });
}
