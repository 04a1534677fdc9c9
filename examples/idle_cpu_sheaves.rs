//! What the decay's CPU-sheaf trim gives back: a burst of small objects of every size up to
//! 256 B on CPU 0, freed in random order (each class's CPU sheaves and barn then hold objects
//! of many slabs), then one second in which the thread, still on CPU 0, only allocates and
//! frees 64-byte objects and a 16 KiB block (its slow paths tick the decay). Prints the RSS
//! before the burst, after the free and after the second, and how many objects the kmalloc
//! caches still hold in CPU sheaves. `cargo run --release --example idle_cpu_sheaves`
//! (Linux; CPU 0 must be usable).
use std::alloc::{GlobalAlloc, Layout};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: kmem::Kmalloc = kmem::Kmalloc::new();

/// Resident set size in KiB (`/proc/self/statm`).
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with CPU 0 set; applies to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn main() {
    pin_to_cpu0();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let before = rss_kib();
    // 400 000 objects of 8–256 bytes (about 50 MiB).
    let mut objs: Vec<(*mut u8, Layout)> = (0..400_000)
        .map(|_| {
            let l = Layout::from_size_align(8 + (next() % 249) as usize, 8).unwrap();
            // SAFETY: a non-zero layout.
            let p = unsafe { GLOBAL.alloc(l) };
            assert!(!p.is_null());
            // SAFETY: `p` holds `l.size()` bytes.
            unsafe { p.write_bytes(1, l.size()) };
            (p, l)
        })
        .collect();
    let burst = rss_kib();
    for i in (1..objs.len()).rev() {
        objs.swap(i, (next() % (i as u64 + 1)) as usize);
    }
    for (p, l) in objs.drain(..) {
        // SAFETY: allocated above with `l`, freed once.
        unsafe { GLOBAL.dealloc(p, l) };
    }
    let freed = rss_kib();
    let small = Layout::from_size_align(64, 8).unwrap();
    let block = Layout::from_size_align(16 << 10, 8).unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(1) {
        // SAFETY: non-zero layouts; each pointer freed once, with its layout.
        unsafe {
            let a = GLOBAL.alloc(small);
            let b = GLOBAL.alloc(block);
            GLOBAL.dealloc(b, block);
            GLOBAL.dealloc(a, small);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = rss_kib();
    let in_sheaves: usize = kmem::Kmem::global()
        .slabinfo()
        .iter()
        .map(|r| r.num_objs - r.active_objs)
        .sum();
    println!(
        "RSS before {:.1} MiB, burst {:.1}, freed {:.1}, after 1 s {:.1} (kept {:.1}); \
         free objects in the kmalloc slabs (sheaves and barns included): {in_sheaves}",
        before as f64 / 1024.0,
        burst as f64 / 1024.0,
        freed as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 / 1024.0
    );
}
