//! slub_debug (issue 15) on private instances: each kind of corruption injected in a child
//! process, whose report must name the cache and the kind (in the kernel's words) before it
//! aborts; owner tracking in the report; `validate` on clean and corrupted caches (with and
//! without debug flags); `KMEM_DEBUG` for builders and the global instance; bulk calls,
//! constructors, and threads on a debug cache; `failslab`; and, with the `freelist-random`
//! feature, shuffled slabs.
//!
//! Abort tests run this binary again as a child executing only that test (`KMEM_CHILD=1`).

mod common;
use common::{assert_aborted, child, in_child};
use kmem::{CacheConfig, CacheFlags, Kmem, KmemCache, KmemError};
use std::process::Command;
use std::ptr::NonNull;

fn fzpu() -> CacheFlags {
    CacheFlags::CONSISTENCY_CHECKS
        | CacheFlags::RED_ZONE
        | CacheFlags::POISON
        | CacheFlags::STORE_USER
}

fn debug_cache(k: &Kmem, name: &str, size: usize) -> KmemCache {
    k.create_cache(name, size, CacheConfig::new().flags(fzpu()))
        .unwrap()
}

fn one_slot() -> Kmem {
    Kmem::builder().cpus(1).nodes(1).build().unwrap()
}

/// The report header of `kind` for `cache`.
fn bug(cache: &str, kind: &str) -> String {
    format!("BUG {cache} (kmem): {kind}")
}

#[test]
#[cfg_attr(miri, ignore)]
fn one_byte_past_the_end_is_a_right_redzone_overwrite() {
    if in_child() {
        let c = debug_cache(&one_slot(), "conn", 64);
        let p = c.alloc().unwrap();
        // SAFETY: deliberately one byte past the object, into its red zone (the test).
        unsafe { p.as_ptr().add(64).write(0x41) };
        // SAFETY: `p` came from `c`; the free must abort.
        unsafe { c.free(p) };
        std::process::exit(0);
    }
    let (st, err) = child("one_byte_past_the_end_is_a_right_redzone_overwrite");
    assert_aborted(
        st,
        &err,
        &[
            &bug("conn", "Right Redzone overwritten"),
            "@offset=64 (from the object). First byte 0x41 instead of 0xcc",
            "Redzone  0x",
            "Object   0x",
            "kmem: slub_debug: cache \"conn\" is corrupt (Right Redzone overwritten at 0x",
        ],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn one_byte_before_the_start_is_a_left_redzone_overwrite() {
    if in_child() {
        let c = debug_cache(&one_slot(), "conn", 40);
        let p = c.alloc().unwrap();
        // SAFETY: deliberately one byte before the object, in its left red zone.
        unsafe { p.as_ptr().sub(1).write(0) };
        // SAFETY: `p` came from `c`; the free must abort.
        unsafe { c.free(p) };
        std::process::exit(0);
    }
    let (st, err) = child("one_byte_before_the_start_is_a_left_redzone_overwrite");
    assert_aborted(
        st,
        &err,
        &[
            &bug("conn", "Left Redzone overwritten"),
            "First byte 0x0 instead of 0xcc",
        ],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_write_after_free_is_poison_overwritten_at_the_next_allocation() {
    if in_child() {
        let c = debug_cache(&one_slot(), "conn", 64);
        let keep = c.alloc().unwrap();
        let p = c.alloc().unwrap();
        // SAFETY: `p` came from `c` and is freed once.
        unsafe { c.free(p) };
        // SAFETY: deliberately a write after free (the memory stays mapped slab memory).
        unsafe { p.as_ptr().add(10).write(0x77) };
        // The freed object heads its slab's freelist: this allocation checks it and aborts.
        let q = c.alloc();
        eprintln!("not reached: {q:?} {keep:?}");
        std::process::exit(0);
    }
    let (st, err) = child("a_write_after_free_is_poison_overwritten_at_the_next_allocation");
    assert_aborted(
        st,
        &err,
        &[
            &bug("conn", "Poison overwritten"),
            "@offset=10 (from the object). First byte 0x77 instead of 0x6b",
            "Freed in ",
        ],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_double_free_is_object_already_free() {
    if in_child() {
        let c = debug_cache(&one_slot(), "conn", 64);
        let _keep = c.alloc().unwrap();
        let p = c.alloc().unwrap();
        let _q = c.alloc().unwrap();
        // SAFETY: `p` came from `c`; the second free is the bug under test.
        unsafe {
            c.free(p);
            c.free(p);
        }
        std::process::exit(0);
    }
    let (st, err) = child("a_double_free_is_object_already_free");
    assert_aborted(st, &err, &[&bug("conn", "Object already free")]);
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_double_free_deep_in_the_freelist_is_found() {
    if in_child() {
        let c = debug_cache(&one_slot(), "conn", 64);
        let objs: Vec<_> = (0..5).map(|_| c.alloc().unwrap()).collect();
        // SAFETY: every pointer came from `c`; freeing objs[1] again, now third on its slab's freelist (not its head, which the fast path's check would see), is the bug.
        unsafe {
            c.free(objs[1]);
            c.free(objs[2]);
            c.free(objs[3]);
            c.free(objs[1]);
        }
        std::process::exit(0);
    }
    let (st, err) = child("a_double_free_deep_in_the_freelist_is_found");
    assert_aborted(st, &err, &[&bug("conn", "Object already free")]);
}

#[test]
#[cfg_attr(miri, ignore)]
fn an_interior_pointer_free_is_an_invalid_object_pointer() {
    if in_child() {
        let c = debug_cache(&one_slot(), "conn", 64);
        let p = c.alloc().unwrap();
        // SAFETY: deliberately 8 bytes into the object (the test).
        unsafe { c.free(NonNull::new(p.as_ptr().add(8)).unwrap()) };
        std::process::exit(0);
    }
    let (st, err) = child("an_interior_pointer_free_is_an_invalid_object_pointer");
    assert_aborted(st, &err, &[&bug("conn", "Invalid object pointer 0x")]);
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_free_of_a_slot_start_is_an_invalid_object_pointer() {
    // The slot's start (the left red zone) is a multiple of the stride from the slab base:
    // the O(1) free check passes it, the debug path must not.
    if in_child() {
        let c = debug_cache(&one_slot(), "conn", 64);
        let _p = c.alloc().unwrap();
        let q = c.alloc().unwrap();
        // SAFETY: deliberately the left red zone's start of `q` (the test).
        let slot = unsafe { q.as_ptr().sub(8) };
        // SAFETY: as above.
        unsafe { c.free(NonNull::new(slot).unwrap()) };
        std::process::exit(0);
    }
    let (st, err) = child("a_free_of_a_slot_start_is_an_invalid_object_pointer");
    assert_aborted(st, &err, &[&bug("conn", "Invalid object pointer 0x")]);
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_free_into_the_wrong_cache_names_both() {
    if in_child() {
        let k = one_slot();
        let a = debug_cache(&k, "dentry", 64);
        let b = debug_cache(&k, "inode", 64);
        let p = a.alloc().unwrap();
        // SAFETY: deliberately freed to the wrong cache (the test).
        unsafe { b.free(p) };
        std::process::exit(0);
    }
    let (st, err) = child("a_free_into_the_wrong_cache_names_both");
    assert_aborted(
        st,
        &err,
        &["freed to cache \"inode\" belongs to cache \"dentry\""],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn store_user_prints_the_last_owners() {
    if in_child() {
        let c = debug_cache(&one_slot(), "owned", 64);
        let p = c.alloc().unwrap();
        // SAFETY: `p` came from `c`; then a write after free (the test).
        unsafe {
            c.free(p);
            p.as_ptr().write(1);
        }
        let _ = c.alloc();
        std::process::exit(0);
    }
    let (st, err) = child("store_user_prints_the_last_owners");
    assert_aborted(
        st,
        &err,
        &[
            &bug("owned", "Poison overwritten"),
            "Allocated in 0x",
            "Freed in 0x",
            "ms cpu=",
            " tid=",
            "Slab 0x",
        ],
    );
    // The recorded addresses are in this test binary (resolved by dladdr).
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_name().unwrap().to_str().unwrap();
    let line = err.lines().find(|l| l.starts_with("Freed in ")).unwrap();
    assert!(line.contains(name), "{line}");
    // Tracked allocation: the thread id is this child's main thread, not 0.
    assert!(!line.contains(" tid=0"), "{line}");
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_corrupt_free_pointer_is_found_at_allocation() {
    if in_child() {
        let c = debug_cache(&one_slot(), "fp", 64);
        let p = c.alloc().unwrap();
        let q = c.alloc().unwrap();
        // SAFETY: `q`, `p` came from `c` and are freed once each.
        unsafe {
            c.free(q);
            c.free(p);
        }
        // The free pointer sits right after the red zone (offset 72 from the object):
        // SAFETY: deliberately corrupting `p`'s free pointer (kmem metadata in slab memory).
        unsafe { p.as_ptr().add(72).cast::<usize>().write(0x1234) };
        let _ = c.alloc();
        std::process::exit(0);
    }
    let (st, err) = child("a_corrupt_free_pointer_is_found_at_allocation");
    assert_aborted(st, &err, &[&bug("fp", "Freepointer corrupt")]);
}

#[test]
#[cfg_attr(miri, ignore)]
fn validate_accepts_a_clean_debug_cache_in_every_state() {
    let k = Kmem::builder().cpus(2).nodes(2).build().unwrap();
    for (name, size) in [("v24", 24), ("v64", 64), ("v100", 100), ("v4k", 4096)] {
        let c = debug_cache(&k, name, size);
        assert!(c.validate().is_ok());
        // Full slabs, partial slabs, empty slabs kept on the partial list.
        let mut objs: Vec<_> = (0..3 * c.objects_per_slab() + 3)
            .map(|i| c.alloc_node(i % 2).unwrap())
            .collect();
        for p in &objs {
            // SAFETY: each is a live object of `size` bytes.
            unsafe { p.as_ptr().write_bytes(0xee, size) };
        }
        assert!(c.validate().is_ok(), "{name}");
        let (freed, kept): (Vec<_>, Vec<_>) =
            objs.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let freed: Vec<_> = freed.into_iter().map(|(_, p)| *p).collect();
        objs = kept.into_iter().map(|(_, p)| *p).collect();
        // SAFETY: every pointer came from `c` and is freed once.
        unsafe { c.free_bulk(&freed) };
        assert!(c.validate().is_ok(), "{name}");
        assert_eq!(c.info().active_objs, objs.len(), "{name}");
        // SAFETY: as above.
        unsafe { c.free_bulk(&objs) };
        assert!(c.validate().is_ok(), "{name}");
        c.shrink();
        assert!(c.validate().is_ok(), "{name}");
        assert_eq!(c.info().num_slabs, 0, "{name}");
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn validate_reports_the_first_defect() {
    let k = one_slot();
    let c = debug_cache(&k, "corrupt", 64);
    let p = c.alloc().unwrap();
    let q = c.alloc().unwrap();
    // SAFETY: `q` came from `c` and is freed once.
    unsafe { c.free(q) };
    assert!(c.validate().is_ok());
    // SAFETY: deliberately a write after free into `q` (mapped slab memory).
    unsafe { q.as_ptr().add(5).write(0) };
    let e = c.validate().unwrap_err();
    match &e {
        KmemError::CacheCorrupted {
            cache,
            kind,
            address,
        } => {
            assert_eq!((cache.as_str(), *kind), ("corrupt", "Poison overwritten"));
            assert_eq!(*address, q.as_ptr() as usize + 5);
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("Poison overwritten"), "{e}");
    // SAFETY: restore the poison so the cache is whole again, then corrupt the allocated one.
    unsafe {
        q.as_ptr().add(5).write(0x6b);
        p.as_ptr().sub(3).write(7);
    }
    let e = c.validate().unwrap_err();
    assert!(
        matches!(
            e,
            KmemError::CacheCorrupted {
                kind: "Left Redzone overwritten",
                ..
            }
        ),
        "{e}"
    );
    // SAFETY: restore the red zone.
    unsafe { p.as_ptr().sub(3).write(0xcc) };
    assert!(c.validate().is_ok());
    // SAFETY: `p` came from `c`; freed once.
    unsafe { c.free(p) };
}

#[test]
#[cfg_attr(miri, ignore)]
fn validate_without_debug_flags_checks_node_freelists() {
    let k = one_slot();
    let c = k.create_cache("plain", 64, CacheConfig::new()).unwrap();
    let n = c.objects_per_slab();
    let objs: Vec<_> = (0..3 * n).map(|_| c.alloc().unwrap()).collect();
    // One free object in each of the first two slabs (remote frees into full slabs).
    // SAFETY: each came from `c` and is freed once.
    unsafe {
        c.free(objs[0]);
        c.free(objs[n]);
    }
    assert!(c.validate().is_ok());
    // The free object's free pointer is in its middle (offset 32). validate flushed the CPU
    // partial list, so both slabs are on the node partial list now.
    let word = objs[n].as_ptr().wrapping_add(32).cast::<usize>();
    // SAFETY: deliberately corrupting a free object's free pointer (kept to restore it: with `freelist-hardened` it is stored encoded).
    let saved = unsafe { word.read() };
    // SAFETY: as above.
    unsafe { word.write(0xdead_0000) };
    let e = c.validate().unwrap_err();
    assert!(
        matches!(
            e,
            KmemError::CacheCorrupted {
                kind: "Freepointer corrupt",
                ..
            }
        ),
        "{e}"
    );
    #[cfg(not(feature = "freelist-hardened"))]
    assert!(
        matches!(
            e,
            KmemError::CacheCorrupted {
                address: 0xdead_0000,
                ..
            }
        ),
        "{e}"
    );
    // SAFETY: repair it.
    unsafe { word.write(saved) };
    assert!(c.validate().is_ok());
    // SAFETY: every other pointer came from `c` and is freed once.
    unsafe { c.free_bulk(&objs[1..n]) };
    // SAFETY: as above.
    unsafe { c.free_bulk(&objs[n + 1..]) };
    assert!(c.validate().is_ok());
    assert_eq!(c.info().active_objs, 0);
}

#[test]
#[cfg_attr(miri, ignore)]
fn debug_caches_keep_alignment_constructors_and_counts() {
    fn ctor(p: NonNull<u8>) {
        // SAFETY: the constructor gets a whole object of 48 bytes.
        unsafe { p.cast::<u64>().write(0x5eed) };
    }
    let k = one_slot();
    let c = k
        .create_cache("aligned", 100, CacheConfig::new().align(64).flags(fzpu()))
        .unwrap();
    let d = k
        .create_cache(
            "constructed",
            48,
            CacheConfig::new().ctor(ctor).flags(fzpu()),
        )
        .unwrap();
    let mut objs = Vec::new();
    for _ in 0..500 {
        let p = c.alloc().unwrap();
        assert_eq!(p.as_ptr() as usize % 64, 0);
        let q = d.alloc().unwrap();
        // SAFETY: a constructed object of `d`.
        assert_eq!(unsafe { q.cast::<u64>().read() }, 0x5eed);
        objs.push((p, q));
    }
    assert_eq!(c.info().active_objs, 500);
    assert!(c.validate().is_ok() && d.validate().is_ok());
    for (p, q) in objs {
        // SAFETY: each came from its cache and is freed once, constructed state kept.
        unsafe {
            c.free(p);
            d.free(q);
        }
    }
    assert!(c.validate().is_ok() && d.validate().is_ok());
    assert_eq!((c.info().active_objs, d.info().active_objs), (0, 0));
    // Every call took the debug path: no fast path, a counted slow path.
    #[cfg(feature = "stats")]
    {
        let s = c.stats();
        assert_eq!(s.alloc_fastpath + s.free_fastpath, 0, "{s:?}");
        assert!(s.alloc_slowpath >= 500 && s.free_slowpath >= 500, "{s:?}");
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn bulk_calls_on_a_debug_cache() {
    let k = one_slot();
    let c = debug_cache(&k, "bulk", 32);
    let mut out = [core::ptr::null_mut(); 300];
    assert_eq!(c.alloc_bulk(&mut out), 300);
    let objs: Vec<_> = out.iter().map(|&p| NonNull::new(p).unwrap()).collect();
    assert_eq!(c.info().active_objs, 300);
    assert!(c.validate().is_ok());
    // SAFETY: every pointer came from `c` and is freed once.
    unsafe { c.free_bulk(&objs) };
    assert_eq!(c.info().active_objs, 0);
    assert!(c.validate().is_ok());
}

#[test]
#[cfg_attr(miri, ignore)]
fn threads_on_a_debug_cache_leave_it_valid() {
    let k = Kmem::builder().cpus(4).nodes(2).build().unwrap();
    let c = debug_cache(&k, "shared", 96);
    let handoff = std::sync::Mutex::new(Vec::<usize>::new());
    std::thread::scope(|s| {
        for t in 0..4 {
            let (c, handoff) = (&c, &handoff);
            s.spawn(move || {
                let mut mine = Vec::new();
                for i in 0..4000 {
                    let p = c.alloc().unwrap();
                    // SAFETY: a live 96-byte object.
                    unsafe { p.as_ptr().write_bytes(t as u8, 96) };
                    if i % 3 == 0 {
                        handoff.lock().unwrap().push(p.as_ptr() as usize);
                    } else {
                        mine.push(p);
                    }
                    if mine.len() > 50 {
                        for p in mine.drain(..25) {
                            // SAFETY: ours, freed once.
                            unsafe { c.free(p) };
                        }
                    }
                    if i % 7 == 0 {
                        let other = handoff.lock().unwrap().pop();
                        if let Some(o) = other {
                            // SAFETY: handed over by its allocating thread, freed once here.
                            unsafe { c.free(NonNull::new(o as *mut u8).unwrap()) };
                        }
                    }
                }
                for p in mine {
                    // SAFETY: ours, freed once.
                    unsafe { c.free(p) };
                }
            });
        }
        s.spawn(|| {
            for _ in 0..20 {
                assert!(c.validate().is_ok());
            }
        });
    });
    for o in handoff.into_inner().unwrap() {
        // SAFETY: handed over, freed once.
        unsafe { c.free(NonNull::new(o as *mut u8).unwrap()) };
    }
    assert!(c.validate().is_ok());
    assert_eq!(c.info().active_objs, 0);
}

/// Runs test `name` of this binary in a child with `KMEM_DEBUG=value`.
fn child_with_debug(name: &str, value: &str) -> (std::process::ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("KMEM_CHILD", "1")
        .env("KMEM_DEBUG", value)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[cfg_attr(miri, ignore)]
fn kmem_debug_applies_by_cache_name() {
    if in_child() {
        let k = one_slot();
        let plain = k.create_cache("plain", 64, CacheConfig::new()).unwrap();
        let conn = k.create_cache("conn", 64, CacheConfig::new()).unwrap();
        let conn_a = k.create_cache("conn-a", 64, CacheConfig::new()).unwrap();
        assert_eq!(plain.size(), 64);
        assert!(conn.size() > 64, "{conn:?}");
        assert!(conn_a.size() > 64, "{conn_a:?}");
        println!("sizes ok");
        let p = conn.alloc().unwrap();
        // SAFETY: deliberately past the end (the test).
        unsafe { p.as_ptr().add(64).write(1) };
        // SAFETY: `p` came from `conn`; this free must abort.
        unsafe { conn.free(p) };
        std::process::exit(0);
    }
    let (st, err) = child_with_debug("kmem_debug_applies_by_cache_name", "FZ,conn*");
    assert_aborted(st, &err, &[&bug("conn", "Right Redzone overwritten")]);
    // `FZ` without `U`: no owner lines.
    assert!(!err.contains("Allocated in"), "{err}");
}

#[test]
#[cfg_attr(miri, ignore)]
fn kmem_debug_off_and_bad_values() {
    if in_child() {
        let which = std::env::var("KMEM_DEBUG").unwrap();
        match Kmem::builder().cpus(1).nodes(1).build() {
            Ok(k) => {
                let c = k.create_cache("conn", 64, CacheConfig::new()).unwrap();
                println!("built {} size {}", which, c.size());
            }
            Err(e) => {
                println!("error {e}");
                if let KmemError::InvalidDebugOption { part, position, .. } = &e {
                    println!("part {part:?} at {position}");
                }
            }
        }
        std::process::exit(0);
    }
    let run = |v: &str| {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kmem_debug_off_and_bad_values", "--nocapture"])
            .env("KMEM_CHILD", "1")
            .env("KMEM_DEBUG", v)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run("-").contains("built - size 64"));
    assert!(run("").contains("built  size 64"));
    let bad = run("FZ;PT,conn");
    assert!(bad.contains("part \"T\" at 4"), "{bad}");
    assert!(bad.contains("invalid KMEM_DEBUG=\"FZ;PT,conn\""), "{bad}");
    assert!(bad.contains("unknown flag"), "{bad}");
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_bad_kmem_debug_stops_the_global_instance_with_a_message() {
    if in_child() {
        let c = KmemCache::new("on-global", 64, CacheConfig::new());
        eprintln!("not reached: {c:?}");
        std::process::exit(0);
    }
    let (st, err) = child_with_debug(
        "a_bad_kmem_debug_stops_the_global_instance_with_a_message",
        "FZ,a,,b",
    );
    assert_aborted(
        st,
        &err,
        &[
            "kmem: KMEM_DEBUG=\"FZ,a,,b\": \"",
            "at byte 5: empty cache name",
        ],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn failslab_is_deterministic_by_seed() {
    use kmem::FaultInjection;
    let k = one_slot();
    let pattern = |f: FaultInjection, name: &str| {
        let c = k
            .create_cache(name, 48, CacheConfig::new().failslab(f))
            .unwrap();
        let got: Vec<_> = (0..200).map(|_| c.alloc()).collect();
        let fates: Vec<bool> = got.iter().map(Option::is_none).collect();
        for p in got.into_iter().flatten() {
            // SAFETY: each came from `c` and is freed once.
            unsafe { c.free(p) };
        }
        assert!(c.validate().is_ok());
        assert_eq!(c.info().active_objs, 0);
        fates
    };
    let every = pattern(FaultInjection::EveryNth(4), "every4");
    assert!(every
        .iter()
        .enumerate()
        .all(|(i, &f)| f == ((i + 1) % 4 == 0)));
    let p = FaultInjection::Probability {
        percent: 30,
        seed: 7,
    };
    let a = pattern(p, "seed7-a");
    let b = pattern(p, "seed7-b");
    assert_eq!(a, b, "the same seed must fail the same allocations");
    let failed = a.iter().filter(|&&f| f).count();
    assert!((30..=90).contains(&failed), "{failed} of 200 failed at 30%");
    let c = pattern(
        FaultInjection::Probability {
            percent: 30,
            seed: 8,
        },
        "seed8",
    );
    assert_ne!(a, c, "another seed, another pattern");
    // Bulk allocation stops at the first injected failure.
    let bulk = k
        .create_cache(
            "bulk-every5",
            32,
            CacheConfig::new().failslab(FaultInjection::EveryNth(5)),
        )
        .unwrap();
    let mut out = [core::ptr::null_mut(); 10];
    assert_eq!(bulk.alloc_bulk(&mut out), 4);
    let objs: Vec<_> = out[..4].iter().map(|&p| NonNull::new(p).unwrap()).collect();
    // SAFETY: every pointer came from `bulk` and is freed once.
    unsafe { bulk.free_bulk(&objs) };
}

/// `freelist-random`: a fresh slab hands its objects out in a random order, each once.
#[test]
#[cfg(feature = "freelist-random")]
#[cfg_attr(miri, ignore)]
fn shuffled_slabs_hand_out_every_object_once_out_of_order() {
    let k = one_slot();
    let c = k
        .create_cache("shuffled", 64, CacheConfig::new().max_order(0))
        .unwrap();
    let n = c.objects_per_slab();
    let objs: Vec<_> = (0..n)
        .map(|_| c.alloc().unwrap().as_ptr() as usize)
        .collect();
    let mut sorted = objs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), n);
    assert_eq!(sorted[n - 1] - sorted[0], (n - 1) * 64, "one slab");
    assert_ne!(objs, sorted, "address order (chance 1/{n}!)");
    for p in objs {
        // SAFETY: each came from `c` and is freed once.
        unsafe { c.free(NonNull::new(p as *mut u8).unwrap()) };
    }
}

#[test]
#[cfg_attr(miri, ignore)]
fn coloured_slabs_spread_their_objects_and_still_check_frees() {
    let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
    // One 2560-byte object per page: 1536 spare bytes, 25 colours of 64 bytes.
    let c = k
        .create_cache(
            "coloured",
            2560,
            CacheConfig::new().max_order(0).colour(true),
        )
        .unwrap();
    let plain = k
        .create_cache("plain2560", 2560, CacheConfig::new().max_order(0))
        .unwrap();
    let objs: Vec<_> = (0..100).map(|_| c.alloc().unwrap()).collect();
    let others: Vec<_> = (0..100).map(|_| plain.alloc().unwrap()).collect();
    let mut offsets: Vec<usize> = objs.iter().map(|p| p.as_ptr() as usize % 4096).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 25, "{offsets:?}");
    assert!(offsets.iter().all(|o| o % 64 == 0 && o + 2560 <= 4096));
    assert!(others.iter().all(|p| p.as_ptr() as usize % 4096 == 0));
    assert!(c.validate().is_ok());
    // SAFETY: every pointer came from its cache and is freed once.
    unsafe {
        c.free_bulk(&objs[..50]);
        for p in &objs[50..] {
            c.free(*p);
        }
        plain.free_bulk(&others);
    }
    assert!(c.validate().is_ok());
    assert_eq!(c.info().active_objs, 0);
    c.shrink();
    assert_eq!(c.info().num_slabs, 0);
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_coloured_cache_refuses_an_interior_pointer() {
    if in_child() {
        let k = one_slot();
        let c = k
            .create_cache(
                "coloured",
                2560,
                CacheConfig::new().max_order(0).colour(true),
            )
            .unwrap();
        let _a = c.alloc().unwrap();
        let b = c.alloc().unwrap(); // colour 1: 64 bytes into its page
        assert_eq!(b.as_ptr() as usize % 4096, 64);
        // The page start: a multiple of the size from the slab, but not b's object start.
        let page = b.as_ptr().wrapping_sub(64);
        // SAFETY: deliberately wrong (the test).
        unsafe { c.free(NonNull::new(page).unwrap()) };
        std::process::exit(0);
    }
    let (st, err) = child("a_coloured_cache_refuses_an_interior_pointer");
    assert_aborted(
        st,
        &err,
        &["kmem: cache \"coloured\": free of an interior pointer 0x"],
    );
}
