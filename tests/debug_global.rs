//! `KMEM_DEBUG` on the global allocator (issue 15): the kmalloc caches behind `Kmalloc` take
//! the flags of their names, report corruption in the kernel's words and abort, and a whole
//! program (threads, collections) runs on debug kmalloc caches. Each case runs in a child
//! process with `KMEM_DEBUG` set, since the variable is read once per process.

mod common;
use common::{assert_aborted, in_child};
use std::alloc::{GlobalAlloc, Layout};
use std::process::Command;

#[global_allocator]
static G: kmem::Kmalloc = kmem::Kmalloc::new();

/// Runs test `name` of this binary in a child with `KMEM_DEBUG=value`.
fn child_with_debug(name: &str, value: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("KMEM_CHILD", "1")
        .env("KMEM_DEBUG", value)
        .output()
        .unwrap()
}

fn objsize(name: &str) -> usize {
    kmem::Kmem::global()
        .slabinfo()
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.objsize)
        .unwrap()
}

#[test]
#[cfg_attr(miri, ignore)]
fn kmalloc_caches_take_the_flags_of_their_names() {
    if in_child() {
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { G.alloc(layout) };
        assert!(!p.is_null());
        assert!(objsize("kmalloc-64") > 64);
        assert_eq!(objsize("kmalloc-32"), 32);
        assert_eq!(objsize("kmalloc-128"), 128);
        println!("layouts ok");
        // SAFETY: deliberately one byte past the 64-byte object (the test).
        unsafe { p.add(64).write(9) };
        // SAFETY: `p` came from `G.alloc(layout)`; this free must abort.
        unsafe { G.dealloc(p, layout) };
        std::process::exit(0);
    }
    let out = child_with_debug(
        "kmalloc_caches_take_the_flags_of_their_names",
        "FZPU,kmalloc-64",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("layouts ok"),
        "{out:?}"
    );
    assert_aborted(
        out.status,
        &err,
        &[
            "BUG kmalloc-64 (kmem): Right Redzone overwritten",
            "First byte 0x9 instead of 0xcc",
            "Allocated in 0x",
        ],
    );
}

#[test]
#[cfg_attr(miri, ignore)]
fn a_program_runs_on_debug_kmalloc_caches() {
    if in_child() {
        // With KMEM_DEBUG=FZPU every class is a debug cache (its stride is more than its
        // size); with KMEM_DEBUG=- none is.
        let on = std::env::var("KMEM_DEBUG").unwrap() != "-";
        let _warm = Box::new(1u8);
        for &size in kmem::kmalloc_size_classes() {
            let name = if size >= 1024 {
                format!("kmalloc-{}k", size / 1024)
            } else {
                format!("kmalloc-{size}")
            };
            assert_eq!(objsize(&name) > size, on, "{name}");
        }
        let total: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    s.spawn(move || {
                        let mut m = std::collections::HashMap::new();
                        for i in 0..20_000usize {
                            m.insert(i, format!("{t}-{i}").repeat(1 + i % 5));
                            if i % 3 == 0 {
                                m.remove(&(i / 2));
                            }
                        }
                        m.values().map(|v| v.len()).sum::<usize>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        println!("total {total}");
        std::process::exit(0);
    }
    let out = child_with_debug("a_program_runs_on_debug_kmalloc_caches", "FZPU");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The same program without debugging computes the same total.
    let plain = child_with_debug("a_program_runs_on_debug_kmalloc_caches", "-");
    assert!(plain.status.success(), "{plain:?}");
    // (The harness prints "test ... " on the same line, before the program's output.)
    let total = |s: &str| {
        s.split("total ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
    };
    assert!(total(&stdout).is_some(), "{stdout}");
    assert_eq!(
        total(&stdout),
        total(&String::from_utf8_lossy(&plain.stdout))
    );
}
