//! Bad frees through the `#[global_allocator]` (`Kmalloc`): they must abort with a message
//! naming the kmalloc cache, never panic inside `GlobalAlloc` (which would be undefined
//! behaviour). `cargo test` builds this in the test profile, with overflow checks and debug
//! assertions on, so an arithmetic overflow or `debug_assert!` reached from `dealloc` would
//! show up here as a panic (or, with the re-entrancy guard, as a "re-entered" abort).

mod common;
use common::{assert_aborted, child, in_child};
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static G: kmem::Kmalloc = kmem::Kmalloc::new();

/// Pins the calling thread to CPU 0, so that it keeps one kmem slot.
fn pin0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed with its size to the current thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn kmalloc_interior_pointer_free_aborts() {
    if in_child() {
        let l = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: the dealloc is deliberately wrong (16 bytes into the object).
        unsafe {
            let p = G.alloc(l);
            assert!(!p.is_null());
            G.dealloc(p.add(16), l);
        }
        std::process::exit(0);
    }
    let (st, err) = child("kmalloc_interior_pointer_free_aborts");
    assert_aborted(
        st,
        &err,
        &[
            "kmem: cache \"kmalloc-64\": free of an interior pointer 0x",
            "object size 64",
        ],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn kmalloc_double_free_aborts() {
    if in_child() {
        pin0();
        let l = Layout::from_size_align(96, 8).unwrap();
        // SAFETY: the second dealloc is deliberately wrong.
        unsafe {
            let p = G.alloc(l);
            assert!(!p.is_null());
            G.dealloc(p, l);
            G.dealloc(p, l);
        }
        std::process::exit(0);
    }
    let (st, err) = child("kmalloc_double_free_aborts");
    assert_aborted(st, &err, &["kmem: cache \"kmalloc-96\": double free of 0x"]);
}

/// A double free into a slab whose objects are all free: `inuse` would underflow, which in
/// this debug build was an overflow panic inside `GlobalAlloc::dealloc`.
#[test]
#[cfg_attr(miri, ignore)]
fn kmalloc_double_free_into_an_empty_slab_aborts_without_panicking() {
    if in_child() {
        pin0();
        // The slab-level check (`inuse` underflow): the cpu-slab design, where every free
        // reaches its slab. With sheaves the frees below sit in the CPU's sheaf, and a double
        // free of an object that is not the sheaf's last is not detected (as in the kernel
        // without slub_debug).
        kmem::kmalloc_set_sheaves(false);
        let l = Layout::from_size_align(2048, 8).unwrap();
        let per_slab = 16; // kmalloc-2k: order 3, 32 KiB slabs aligned to 32 KiB
                           // SAFETY: every object is freed once, except the deliberate second free at the end.
        unsafe {
            let objs: Vec<*mut u8> = (0..4 * per_slab).map(|_| G.alloc(l)).collect();
            let extra = G.alloc(l); // moves the CPU slab past every slab of `objs`
            let slab_of = |p: *mut u8| p as usize & !((4096 << 3) - 1);
            let base = objs
                .iter()
                .map(|&p| slab_of(p))
                .find(|&b| {
                    b != slab_of(extra)
                        && objs.iter().filter(|&&p| slab_of(p) == b).count() == per_slab
                })
                .expect("a whole slab of ours");
            let mine: Vec<*mut u8> = objs
                .iter()
                .copied()
                .filter(|&p| slab_of(p) == base)
                .collect();
            for &p in &mine {
                G.dealloc(p, l);
            }
            G.dealloc(mine[3], l);
        }
        std::process::exit(0);
    }
    let (st, err) = child("kmalloc_double_free_into_an_empty_slab_aborts_without_panicking");
    assert_aborted(st, &err, &["kmem: cache \"kmalloc-2k\": double free of 0x"]);
    assert!(!err.contains("panicked"), "{err}");
}
