//! Heavy oversubscription through the global allocator: 16 threads per core churn working sets
//! of random sizes 16–512 B (the kmem-bench `many-threads` workload), then print which SLUB
//! paths the kmalloc caches took. `cargo run --release --example oversubscribed [seconds]`
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: kmem::Kmalloc = kmem::Kmalloc::new();

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let threads = cores * 16;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ops = std::sync::atomic::AtomicU64::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (stop, ops) = (&stop, &ops);
            s.spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut set: Vec<Vec<u8>> = (0..2000)
                    .map(|_| Vec::with_capacity(16 + (next() % 497) as usize))
                    .collect();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..64 {
                        let i = (next() % set.len() as u64) as usize;
                        set[i] = Vec::with_capacity(16 + (next() % 497) as usize);
                    }
                    n += 64;
                }
                ops.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let el = t0.elapsed().as_secs_f64();
    let n = ops.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{threads} threads on {cores} cores: {:.1} ns per free+alloc pair",
        el * 1e9 * cores as f64 / n as f64
    );
    for (name, s) in kmem::Kmem::global().cache_stats() {
        if s.alloc_fastpath + s.alloc_slowpath + s.alloc_cpu_sheaf == 0 {
            continue;
        }
        println!(
            "{name:>12}: sheaf alloc {} free {} refill {} flush {} | alloc fast {} slow {} | free fast {} slow {} (frozen {}, cpu_partial_free {}) | cas_cpu_fail {} cas_fail {} | from_partial {} new_slab {} free_slab {} drain {}",
            s.alloc_cpu_sheaf, s.free_cpu_sheaf, s.sheaf_refill, s.sheaf_flush,
            s.alloc_fastpath, s.alloc_slowpath, s.free_fastpath, s.free_slowpath, s.free_frozen,
            s.cpu_partial_free, s.cmpxchg_double_cpu_fail, s.cmpxchg_double_fail, s.alloc_from_partial,
            s.alloc_slab, s.free_slab, s.cpu_partial_drain
        );
    }
}
