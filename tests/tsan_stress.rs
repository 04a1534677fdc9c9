//! A small concurrent workload for ThreadSanitizer (`scripts/tsan.sh`): allocation and free
//! fast paths on shared CPU slots, remote frees (objects freed by a thread other than the one
//! that allocated them), CPU partial lists, bulk operations and shrink, on a private instance.
//! Also a quick smoke test in normal builds.
#![cfg(not(loom))]

use kmem::{CacheConfig, Kmem};
use std::ptr::NonNull;
use std::sync::mpsc;

#[derive(Clone, Copy)]
struct Obj(NonNull<u8>);
// SAFETY: an object pointer handed between threads; only one thread uses it at a time.
unsafe impl Send for Obj {}

#[test]
#[cfg_attr(miri, ignore)]
fn tsan_alloc_free_remote_free() {
    let k = Kmem::builder().cpus(2).nodes(1).build().unwrap();
    let c = k
        .create_cache(
            "tsan",
            256,
            CacheConfig::new().min_partial(1).cpu_partial_slabs(2),
        )
        .unwrap();
    let rounds = if cfg!(debug_assertions) {
        3_000
    } else {
        20_000
    };
    std::thread::scope(|s| {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..4 {
            let (tx, rx) = mpsc::sync_channel::<Obj>(64);
            senders.push(tx);
            receivers.push(rx);
        }
        for (i, rx) in receivers.into_iter().enumerate() {
            let tx = senders[(i + 1) % 4].clone();
            let c = &c;
            s.spawn(move || {
                let mut mine = Vec::new();
                for r in 0..rounds {
                    let p = c.alloc().unwrap();
                    // Write the whole object, as a user would.
                    // SAFETY: a fresh 256-byte object.
                    unsafe { p.as_ptr().write_bytes(i as u8, 256) };
                    if r % 3 == 0 {
                        if let Err(
                            mpsc::TrySendError::Full(o) | mpsc::TrySendError::Disconnected(o),
                        ) = tx.try_send(Obj(p))
                        {
                            mine.push(o);
                        }
                    } else {
                        mine.push(Obj(p));
                    }
                    while let Ok(o) = rx.try_recv() {
                        // SAFETY: received from another thread, which no longer uses it.
                        unsafe { c.free(o.0) };
                    }
                    if mine.len() > 32 {
                        let batch: Vec<NonNull<u8>> = mine.drain(..16).map(|o| o.0).collect();
                        // SAFETY: ours, each once.
                        unsafe { c.free_bulk(&batch) };
                        for o in mine.drain(..) {
                            // SAFETY: ours.
                            unsafe { c.free(o.0) };
                        }
                    }
                    if r % 1000 == 0 {
                        let mut out = [core::ptr::null_mut(); 8];
                        let n = c.alloc_bulk(&mut out);
                        let objs: Vec<NonNull<u8>> =
                            out[..n].iter().map(|&p| NonNull::new(p).unwrap()).collect();
                        // SAFETY: just allocated, each once.
                        unsafe { c.free_bulk(&objs) };
                    }
                }
                drop(tx);
                for o in mine {
                    // SAFETY: ours.
                    unsafe { c.free(o.0) };
                }
                while let Ok(o) = rx.recv() {
                    // SAFETY: as above.
                    unsafe { c.free(o.0) };
                }
            });
        }
        drop(senders);
    });
    c.shrink();
    let info = c.info();
    assert_eq!(info.active_objs, 0, "{info:?}");
    assert_eq!(info.num_slabs, 0, "{info:?}");
}
