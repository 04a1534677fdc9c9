//! `Kmalloc` as an `allocator_api2` allocator: collections parameterised by it.

use allocator_api2::alloc::{Allocator, Layout};
use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use hashbrown::HashMap;
use kmem::Kmalloc;

#[test]
fn api2_vec_grows_shrinks_and_keeps_contents() {
    let mut v: Vec<u64, Kmalloc> = Vec::new_in(Kmalloc::new());
    for i in 0..1_000_000u64 {
        v.push(i);
    }
    assert_eq!(v.len(), 1_000_000);
    assert_eq!(v[999_999], 999_999);
    v.truncate(100);
    v.shrink_to_fit();
    assert_eq!(v.iter().sum::<u64>(), 4950);
    let mut w: Vec<u8, Kmalloc> = Vec::with_capacity_in(0, Kmalloc);
    w.extend_from_slice(&[3; 10_000]);
    assert!(w.iter().all(|&x| x == 3));
}

#[test]
fn api2_box_and_over_aligned() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let b = Box::new_in(Page([9; 4096]), Kmalloc);
    assert_eq!(&*b as *const Page as usize % 4096, 0);
    assert_eq!(b.0[4095], 9);
    #[repr(align(8192))]
    struct Big([u8; 16]);
    let b = Box::new_in(Big([1; 16]), Kmalloc);
    assert_eq!(&*b as *const Big as usize % 8192, 0);
    assert_eq!(b.0[15], 1);
}

#[test]
fn hashbrown_map_on_kmalloc() {
    let mut m: HashMap<u64, String, hashbrown::DefaultHashBuilder, Kmalloc> =
        HashMap::with_hasher_in(Default::default(), Kmalloc::new());
    for i in 0..200_000u64 {
        m.insert(i, i.to_string());
    }
    assert_eq!(m.len(), 200_000);
    assert_eq!(m[&123_456], "123456");
    for i in (0..200_000u64).step_by(2) {
        m.remove(&i);
    }
    assert_eq!(m.len(), 100_000);
    m.shrink_to_fit();
    assert!(m.get(&2).is_none() && m.get(&3).is_some());
}

#[test]
fn allocator_trait_zero_sized_grow_zeroed_and_shrink() {
    let a = Kmalloc::new();
    let z = a.allocate(Layout::from_size_align(0, 64).unwrap()).unwrap();
    assert_eq!(z.len(), 0);
    assert_eq!(z.cast::<u8>().as_ptr() as usize % 64, 0);
    let l1 = Layout::from_size_align(100, 8).unwrap();
    let l2 = Layout::from_size_align(50_000, 8).unwrap();
    let p = a.allocate(l1).unwrap().cast::<u8>();
    // SAFETY: every pointer is used with the layout it was last (re)allocated with.
    unsafe {
        p.as_ptr().write_bytes(0xcc, 100);
        let q = a.grow_zeroed(p, l1, l2).unwrap().cast::<u8>();
        let s = core::slice::from_raw_parts(q.as_ptr(), 50_000);
        assert!(s[..100].iter().all(|&b| b == 0xcc));
        assert!(s[100..].iter().all(|&b| b == 0));
        let r = a.shrink(q, l2, l1).unwrap().cast::<u8>();
        assert_eq!(*r.as_ptr().add(99), 0xcc);
        let e = a
            .shrink(r, l1, Layout::from_size_align(0, 8).unwrap())
            .unwrap();
        assert_eq!(e.len(), 0);
        let g = a.grow(
            z.cast(),
            Layout::from_size_align(0, 64).unwrap(),
            Layout::from_size_align(64, 64).unwrap(),
        );
        let g = g.unwrap().cast::<u8>();
        assert_eq!(g.as_ptr() as usize % 64, 0);
        a.deallocate(g, Layout::from_size_align(64, 64).unwrap());
    }
}
