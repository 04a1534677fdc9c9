//! The global allocator never enters crossbeam-epoch or the deferred-free machinery.
//!
//! `Kmalloc` is this binary's `#[global_allocator]`, so crossbeam-epoch's own allocations
//! (bags, thread handles, collectors) go through kmem. With the `debug-reentrancy` feature
//! (scripts/test.sh builds the workspace with it), every entry into the deferred machinery
//! (`free_deferred`, `flush_deferred`, each deferred batch as it runs) aborts if the calling
//! thread is inside `Kmalloc`, and `Kmalloc` aborts if it is re-entered. `everything` exercises
//! all of it from several threads and with the default collector and a private one: if any
//! `Kmalloc` path reached crossbeam-epoch (and so a deferred batch), or any deferred path
//! allocated while inside `Kmalloc`, the process would abort. `the_check_fires` shows that the
//! check is live: a thread marked as inside the allocator aborts in `free_deferred`.
#![cfg(feature = "debug-reentrancy")]

use kmem::epoch::{self, Collector};
use kmem::{Cache, CacheConfig, SlabBox};
use std::process::Command;
use std::sync::Arc;

#[global_allocator]
static G: kmem::Kmalloc = kmem::Kmalloc::new();

#[test]
fn everything() {
    assert!(kmem::kmalloc_reentrancy_guard());
    let cache = Arc::new(kmem::KmemCache::new("global-deferred", 96, CacheConfig::new()).unwrap());
    let typed: Arc<Cache<Vec<u8>>> = Arc::new(Cache::new("global-deferred-typed").unwrap());
    let private = Collector::new();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (cache, typed, private) = (cache.clone(), typed.clone(), private.clone());
            std::thread::spawn(move || {
                let h = private.register();
                for i in 0..5_000 {
                    // Heap traffic through Kmalloc in between.
                    let v = vec![i as u8; 1 + (i % 300)];
                    let p = cache.alloc().unwrap();
                    // SAFETY: from `cache`, freed once.
                    unsafe {
                        if (i + t) % 2 == 0 {
                            cache.free_deferred(p, &epoch::pin())
                        } else {
                            cache.free_deferred(p, &h.pin())
                        }
                    };
                    let b = typed.alloc(v).map_err(|_| ()).unwrap();
                    SlabBox::drop_deferred(b, &epoch::pin());
                }
                cache.flush_deferred(&h.pin());
                cache.flush_deferred(&epoch::pin());
                typed.raw().flush_deferred(&epoch::pin());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for _ in 0..1000 {
        if cache.deferred_pending() + typed.raw().deferred_pending() == 0 {
            break;
        }
        cache.flush_deferred(&private.register().pin());
        cache.flush_deferred(&epoch::pin());
        typed.raw().flush_deferred(&epoch::pin());
    }
    assert_eq!(cache.deferred_pending(), 0);
    assert_eq!(typed.raw().deferred_pending(), 0);
    assert_eq!(cache.info().active_objs, 0);
    assert_eq!(typed.raw().info().active_objs, 0);
}

#[test]
fn the_check_fires() {
    if std::env::var_os("KMEM_CHILD").is_some() {
        let cache = kmem::KmemCache::new("check-fires", 64, CacheConfig::new()).unwrap();
        let guard = epoch::pin();
        let p = cache.alloc().unwrap();
        // SAFETY: from `cache`, freed once (creates the deferred block).
        unsafe { cache.free_deferred(p, &guard) };
        let q = cache.alloc().unwrap();
        kmem::kmalloc_reentrancy_simulate_enter();
        // SAFETY: from `cache`, freed once; must abort before doing anything.
        unsafe { cache.free_deferred(q, &guard) };
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_check_fires",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KMEM_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(
        stderr.contains("free_deferred was entered from inside the global allocator"),
        "{stderr}"
    );
}
