//! Sheaves (issue 13): per-CPU arrays of objects in front of the slabs, in both commit modes
//! (the suite runs again with `KMEM_RSEQ=0`). See `src/slub/pcs.rs`.

use kmem::{CacheConfig, Kmem, KmemCache};
use std::ptr::NonNull;

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with CPU 0 set; applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn cache(k: &Kmem, name: &str, cap: usize) -> KmemCache {
    k.create_cache(name, 64, CacheConfig::new().sheaf_capacity(cap))
        .unwrap()
}

#[test]
fn one_thread_uses_the_sheaves_and_the_barn() {
    pin_to_cpu0();
    let k = Kmem::builder().build().unwrap();
    let c = cache(&k, "sheaf-one", 4);
    assert_eq!(c.sheaf_capacity(), 4);
    let objs: Vec<NonNull<u8>> = (0..8).map(|_| c.alloc().unwrap()).collect();
    let s = c.stats();
    eprintln!("after 8 allocs: {s:?}");
    for &p in &objs {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(p) };
    }
    let s = c.stats();
    eprintln!("after 8 frees: {s:?}");
    assert_eq!(c.info().active_objs, 0);
    if cfg!(feature = "stats") {
        assert_eq!(s.alloc_cpu_sheaf, 8, "{s:?}");
        assert_eq!(s.free_cpu_sheaf, 8, "{s:?}");
        // Two refills (4 + 4); the frees fill the second sheaf, swap it for the empty spare
        // and fill that one: nothing went to the barn yet.
        assert_eq!(s.sheaf_refill, 2, "{s:?}");
        assert_eq!((s.sheaf_swap, s.barn_put), (1, 0), "{s:?}");
    }
}
