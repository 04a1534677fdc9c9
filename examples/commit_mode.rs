//! Prints how this process's fast paths commit (`kmem::cpu::commit_mode`) and why, and the
//! mode of a default instance: `cargo run --example commit_mode` (`KMEM_RSEQ=0` forces the
//! locked mode; `scripts/test.sh` runs it before each pass of the test suite).

fn main() {
    let k = kmem::Kmem::builder().build().expect("kmem instance");
    println!(
        "kmem commit mode: process {:?} ({}); default instance {:?} ({} slots, {} possible CPUs)",
        kmem::cpu::commit_mode(),
        kmem::cpu::commit_mode_reason(),
        k.commit_mode(),
        k.cpus(),
        kmem::cpu::possible_cpus()
    );
}
