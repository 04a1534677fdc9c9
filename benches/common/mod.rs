//! Helpers shared by the criterion benches (included with `#[path]`; not a bench itself).

#![allow(dead_code)]

use std::alloc::Layout;

/// Pins the calling thread to `cpu` with `sched_setaffinity`; returns whether it worked.
pub fn pin_to_cpu(cpu: usize) -> bool {
    // `set` is a zeroed, properly sized cpu_set_t on our stack; CPU_SET writes inside it, and
    // sched_setaffinity(0, ..) only reads it.
    // SAFETY: `set` is a valid local cpu_set_t, and both calls stay within it.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Number of CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A `size`-byte layout with word alignment, as a `malloc(size)` would get.
pub fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, core::mem::size_of::<usize>()).expect("valid layout")
}

/// A criterion measurement on `CLOCK_THREAD_CPUTIME_ID` (the calling thread's CPU time), so
/// that time spent descheduled — this shared 2-vCPU machine runs other jobs — does not count.
/// `KMEM_BENCH_CLOCK=wall` switches to `CLOCK_MONOTONIC` (criterion's usual wall time).
/// Values are `Duration`s, formatted like criterion's wall time.
pub struct ThreadTime {
    clock: libc::clockid_t,
    wall: criterion::measurement::WallTime,
}

impl Default for ThreadTime {
    fn default() -> Self {
        let wall = std::env::var("KMEM_BENCH_CLOCK").is_ok_and(|v| v == "wall");
        ThreadTime {
            clock: if wall {
                libc::CLOCK_MONOTONIC
            } else {
                libc::CLOCK_THREAD_CPUTIME_ID
            },
            wall: criterion::measurement::WallTime,
        }
    }
}

impl ThreadTime {
    /// The clock in use, for the bench's stderr header.
    pub fn describe(&self) -> &'static str {
        if self.clock == libc::CLOCK_MONOTONIC {
            "CLOCK_MONOTONIC (wall)"
        } else {
            "CLOCK_THREAD_CPUTIME_ID (thread CPU time)"
        }
    }

    fn now(&self) -> std::time::Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec on our stack; both clocks exist on Linux.
        let r = unsafe { libc::clock_gettime(self.clock, &mut ts) };
        assert_eq!(r, 0, "clock_gettime failed");
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}

impl criterion::measurement::Measurement for ThreadTime {
    type Intermediate = std::time::Duration;
    type Value = std::time::Duration;

    fn start(&self) -> Self::Intermediate {
        self.now()
    }
    fn end(&self, i: Self::Intermediate) -> Self::Value {
        self.now().saturating_sub(i)
    }
    fn add(&self, v1: &Self::Value, v2: &Self::Value) -> Self::Value {
        *v1 + *v2
    }
    fn zero(&self) -> Self::Value {
        std::time::Duration::ZERO
    }
    fn to_f64(&self, value: &Self::Value) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        criterion::measurement::Measurement::formatter(&self.wall)
    }
}
