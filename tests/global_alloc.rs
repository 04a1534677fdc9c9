//! kmem as the process's `#[global_allocator]`, under real std workloads.
//!
//! Everything in this binary (the test harness, its threads, std's collections) allocates
//! through `kmem::Kmalloc`. `scripts/test.sh` runs it with `--features kmem/debug-reentrancy`,
//! which compiles the re-entrancy guard in; the two tests about the guard need that feature and
//! are compiled only with it (a plain `cargo test` runs the rest).

use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::Arc;

#[global_allocator]
static G: kmem::Kmalloc = kmem::Kmalloc::new();

#[cfg(feature = "debug-reentrancy")]
#[test]
fn reentrancy_guard_is_active() {
    assert!(
        kmem::kmalloc_reentrancy_guard(),
        "tests must run with the debug-reentrancy feature"
    );
}

#[test]
fn kmalloc_caches_show_in_slabinfo() {
    let v = vec![1u8; 100];
    let rows = kmem::Kmem::global().slabinfo();
    for name in [
        "kmalloc-8",
        "kmalloc-96",
        "kmalloc-192",
        "kmalloc-1k",
        "kmalloc-8k",
    ] {
        assert!(rows.iter().any(|r| r.name == name), "{name} missing");
    }
    // The 100-byte buffer lives in its class's cache (kmalloc-112 since the classes went to
    // every multiple of 16 up to 128).
    let class = kmem::kmalloc_class_for(Layout::from_size_align(100, 1).unwrap()).unwrap();
    assert_eq!(class, 112);
    let row = rows.iter().find(|r| r.name == "kmalloc-112").unwrap();
    assert!(row.active_objs >= 1, "{row:?}");
    drop(v);
}

#[test]
fn millions_of_short_strings() {
    const N: usize = 1_500_000;
    let mut v: Vec<String> = Vec::with_capacity(16);
    for i in 0..N {
        v.push(format!("s{i}"));
    }
    assert_eq!(v.len(), N);
    assert_eq!(v[123_456], "s123456");
    let total: usize = v.iter().map(|s| s.len()).sum();
    assert!(total > N * 2);
    // Drop every other one, then refill, so the slabs go partial and back.
    let mut kept: Vec<String> = v.into_iter().step_by(2).collect();
    kept.extend((0..N / 2).map(|i| i.to_string()));
    let mut set: HashMap<&str, usize> = HashMap::new();
    for s in kept.iter().take(200_000) {
        *set.entry(s.as_str()).or_default() += 1;
    }
    assert!(set.len() > 100_000);
    let tree: BTreeMap<usize, String> = (0..100_000).map(|i| (i, i.to_string())).collect();
    assert_eq!(tree[&99_999], "99999");
}

#[test]
fn threads_free_each_others_data() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 20_000;
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<Vec<Box<[u8]>>>())
        .unzip();
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = rxs
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            // Thread t sends to thread t + 1, which frees what t allocated.
            let next = txs[(t + 1) % THREADS].clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut freed = 0usize;
                for r in 0..ROUNDS / 100 {
                    let batch: Vec<Box<[u8]>> = (0..100)
                        .map(|i| {
                            vec![(t + r + i) as u8; 1 + (i * 37 + r) % 3000].into_boxed_slice()
                        })
                        .collect();
                    next.send(batch).unwrap();
                    while let Ok(b) = rx.try_recv() {
                        for x in &b {
                            assert!(x.iter().all(|&y| y == x[0]));
                        }
                        freed += b.len();
                    }
                }
                // Every send is done before anyone stops receiving.
                barrier.wait();
                drop(next);
                barrier.wait();
                while let Ok(b) = rx.try_recv() {
                    freed += b.len();
                }
                freed
            })
        })
        .collect();
    drop(txs);
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, THREADS * ROUNDS);
}

#[test]
fn vec_growth_through_realloc() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..3_000_000u64 {
        v.push(i);
    }
    assert_eq!(
        v.iter().copied().step_by(1000).sum::<u64>(),
        (0..3000u64).map(|i| i * 1000).sum()
    );
    v.truncate(10);
    v.shrink_to_fit();
    assert_eq!(v, (0..10).collect::<Vec<_>>());
    let mut s = String::new();
    for i in 0..200_000 {
        s.push(char::from(b'a' + (i % 26) as u8));
    }
    assert_eq!(s.len(), 200_000);
    assert!(s.starts_with("abcdefghijklmnopqrstuvwxyzab"));
}

#[repr(align(64))]
struct A64([u8; 64]);
#[repr(align(512))]
struct A512([u8; 100]);
#[repr(align(4096))]
struct A4096([u8; 10]);
#[repr(align(8192))]
struct A8192([u8; 9000]);

#[test]
fn over_aligned_types() {
    let a: Vec<Box<A64>> = (0..1000).map(|i| Box::new(A64([i as u8; 64]))).collect();
    let b: Vec<Box<A512>> = (0..200).map(|i| Box::new(A512([i as u8; 100]))).collect();
    let c: Vec<Box<A4096>> = (0..50).map(|i| Box::new(A4096([i as u8; 10]))).collect();
    let d: Vec<Box<A8192>> = (0..20).map(|i| Box::new(A8192([i as u8; 9000]))).collect();
    for (i, x) in a.iter().enumerate() {
        assert_eq!(&**x as *const A64 as usize % 64, 0);
        assert_eq!(x.0[63], i as u8);
    }
    for (i, x) in b.iter().enumerate() {
        assert_eq!(&**x as *const A512 as usize % 512, 0);
        assert_eq!(x.0[99], i as u8);
    }
    for (i, x) in c.iter().enumerate() {
        assert_eq!(&**x as *const A4096 as usize % 4096, 0);
        assert_eq!(x.0[9], i as u8);
    }
    for (i, x) in d.iter().enumerate() {
        assert_eq!(&**x as *const A8192 as usize % 8192, 0);
        assert_eq!(x.0[8999], i as u8);
    }
    let mut grow: Vec<A64> = Vec::new();
    for i in 0..5000 {
        grow.push(A64([i as u8; 64]));
        assert_eq!(grow.as_ptr() as usize % 64, 0);
    }
}

#[test]
fn zeroed_allocations_are_zero_even_after_dirty_frees() {
    let sizes = [
        1usize,
        8,
        100,
        192,
        1000,
        4096,
        8192,
        9000,
        65536,
        1 << 20,
        5 << 20,
    ];
    for round in 0..3 {
        for &size in &sizes {
            for align in [8usize, 64, 4096, 8192] {
                let l = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero layouts, each freed once with its own layout.
                unsafe {
                    let dirty = G.alloc(l);
                    assert!(!dirty.is_null());
                    dirty.write_bytes(0xff, size);
                    G.dealloc(dirty, l);
                    let z = G.alloc_zeroed(l);
                    assert!(!z.is_null());
                    assert_eq!(z as usize % align, 0);
                    let s = std::slice::from_raw_parts(z, size);
                    assert!(
                        s.iter().all(|&b| b == 0),
                        "round {round} size {size} align {align}"
                    );
                    z.write_bytes(0xee, size);
                    G.dealloc(z, l);
                }
            }
        }
    }
    let v = vec![0u32; 1 << 20];
    assert!(v.iter().all(|&x| x == 0));
}

#[test]
fn large_allocations_alloc_realloc_free() {
    for &(a, b) in &[
        (1usize << 20, 8usize << 20),
        (8 << 20, 1 << 20),
        (1 << 20, 3 << 20),
        (8 << 20, 16 << 20),
    ] {
        let mut v: Vec<u8> = Vec::with_capacity(a);
        v.resize(a, 0x5a);
        v.reserve_exact(b.saturating_sub(a));
        v.resize(b, 0x6b);
        assert!(v[..a.min(b)].iter().all(|&x| x == 0x5a));
        assert!(v[a.min(b)..].iter().all(|&x| x == 0x6b));
        v.truncate(b / 2);
        v.shrink_to_fit();
        assert_eq!(v.len(), b / 2);
        assert_eq!(v[0], 0x5a);
    }
    let l = Layout::from_size_align(8 << 20, 8).unwrap();
    // SAFETY: paired alloc/realloc/dealloc with matching layouts.
    unsafe {
        let p = G.alloc(l);
        assert!(!p.is_null());
        p.write_bytes(1, 8 << 20);
        let q = G.realloc(p, l, 12 << 20);
        assert!(!q.is_null());
        assert_eq!(*q.add((8 << 20) - 1), 1);
        let r = G.realloc(q, Layout::from_size_align(12 << 20, 8).unwrap(), 4096);
        assert_eq!(*r.add(4095), 1);
        G.dealloc(r, Layout::from_size_align(4096, 8).unwrap());
    }
}

/// Forks a child that runs `f` and exits with its result; returns the child's wait status.
fn fork_and_wait(f: impl FnOnce() -> i32) -> i32 {
    // `f` may allocate through kmem: the atfork handlers released kmem's locks in the child.
    // `_exit` runs no destructors or atexit handlers.
    // SAFETY: the child only runs `f` and then `_exit`s.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = f();
            libc::_exit(code);
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        status
    }
}

#[test]
fn fork_from_a_multithreaded_process_child_allocates() {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Busy allocator threads, so that the fork lands while kmem's locks are in use.
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut keep: Vec<Vec<u8>> = Vec::new();
                let mut i = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    keep.push(vec![t as u8; 1 + (i * 131) % 20_000]);
                    if keep.len() > 500 {
                        keep.drain(..250);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for round in 0..20 {
        let status = fork_and_wait(|| {
            let v: Vec<String> = (0..50_000).map(|i| i.to_string()).collect();
            let big = vec![7u8; 3 << 20];
            let h: HashMap<usize, Vec<u8>> = (0..1000).map(|i| (i, vec![0; i])).collect();
            if v[49_999] == "49999" && big[(3 << 20) - 1] == 7 && h[&999].len() == 999 {
                42
            } else {
                1
            }
        });
        assert!(
            libc::WIFEXITED(status),
            "round {round}: child died (status {status:#x})"
        );
        assert_eq!(libc::WEXITSTATUS(status), 42, "round {round}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
}

#[cfg(feature = "debug-reentrancy")]
#[test]
fn reentrancy_guard_aborts_on_nested_entry() {
    let status = fork_and_wait(|| {
        // Silence the expected abort message in the test output.
        // SAFETY: redirecting our own stderr in the child.
        unsafe {
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            libc::dup2(fd, 2);
        }
        kmem::kmalloc_reentrancy_simulate_enter();
        let v = std::hint::black_box(vec![1u8; 10]);
        v.len() as i32
    });
    assert!(
        libc::WIFSIGNALED(status),
        "child should have aborted (status {status:#x})"
    );
    assert_eq!(libc::WTERMSIG(status), libc::SIGABRT);
}

/// Runs before `main` (an ELF `.init_array` constructor): the very first allocation of the
/// process may come from here, so it builds the global instance and the kmalloc caches.
#[used]
#[link_section = ".init_array"]
static BEFORE_MAIN: extern "C" fn() = before_main;

static BEFORE_MAIN_SUM: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn before_main() {
    let v: Vec<usize> = (0..1000).collect();
    let s = String::from("allocated before main");
    BEFORE_MAIN_SUM.store(
        v.iter().sum::<usize>() + s.len(),
        std::sync::atomic::Ordering::SeqCst,
    );
}

#[test]
fn allocation_before_main_works() {
    assert_eq!(
        BEFORE_MAIN_SUM.load(std::sync::atomic::Ordering::SeqCst),
        499_500 + "allocated before main".len()
    );
}

#[test]
fn allocation_during_thread_local_destruction_works() {
    struct AllocOnDrop(Vec<u64>);
    impl Drop for AllocOnDrop {
        fn drop(&mut self) {
            // Runs in the thread's TLS destructors, after other thread-locals may be gone: kmem
            // must not depend on any thread-local with a destructor.
            let v: Vec<u64> = self.0.iter().map(|x| x * 2).collect();
            let b = Box::new([7u8; 300]);
            DONE.fetch_add(v.len() + b.len(), std::sync::atomic::Ordering::SeqCst);
        }
    }
    thread_local! {
        static T: std::cell::RefCell<Option<AllocOnDrop>> = const { std::cell::RefCell::new(None) };
    }
    static DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let handles: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                T.with(|t| *t.borrow_mut() = Some(AllocOnDrop((0..100).collect())));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        DONE.load(std::sync::atomic::Ordering::SeqCst),
        8 * (100 + 300)
    );
}
