//! How much does "which CPU am I on" cost? One criterion group, so the ratios between the
//! methods come from one run on one machine:
//!
//! - `kmem_rseq`, `kmem_getcpu`, `kmem_thread_hash`: `kmem::cpu::current_cpu_with(..)`;
//! - `kmem_current_cpu`: `kmem::cpu::current_cpu()` (the method kmem chose for this process);
//! - `libc_sched_getcpu`: glibc's `sched_getcpu()` called directly;
//! - `syscall_getcpu`: the raw `getcpu` system call (no vDSO, no rseq).
//!
//! Run: `cargo bench --bench cpu_id -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use kmem::cpu::{current_cpu, current_cpu_with, method, CpuIdMethod};

fn cpu_id(c: &mut Criterion) {
    eprintln!("kmem::cpu::method() = {:?}", method());
    let mut g = c.benchmark_group("cpu_id");
    g.bench_function("kmem_current_cpu", |b| b.iter(|| black_box(current_cpu())));
    g.bench_function("kmem_rseq", |b| {
        b.iter(|| black_box(current_cpu_with(CpuIdMethod::Rseq)))
    });
    g.bench_function("kmem_getcpu", |b| {
        b.iter(|| black_box(current_cpu_with(CpuIdMethod::Getcpu)))
    });
    g.bench_function("kmem_thread_hash", |b| {
        b.iter(|| black_box(current_cpu_with(CpuIdMethod::ThreadHash)))
    });
    g.bench_function("libc_sched_getcpu", |b| {
        // SAFETY: sched_getcpu has no preconditions.
        b.iter(|| black_box(unsafe { libc::sched_getcpu() }))
    });
    g.bench_function("syscall_getcpu", |b| {
        b.iter(|| {
            let mut cpu: libc::c_uint = 0;
            let mut node: libc::c_uint = 0;
            // getcpu writes one c_uint through each non-null pointer; the third argument (the
            // obsolete tcache) may be null.
            // SAFETY: both non-null pointers point to live c_uint locals (`cpu`, `node`).
            let r = unsafe {
                libc::syscall(
                    libc::SYS_getcpu,
                    &mut cpu as *mut libc::c_uint,
                    &mut node as *mut libc::c_uint,
                    core::ptr::null_mut::<libc::c_void>(),
                )
            };
            black_box((r, cpu))
        })
    });
    g.finish();
}

criterion_group!(benches, cpu_id);
criterion_main!(benches);
