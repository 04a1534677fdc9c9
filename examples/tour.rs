//! A walk through kmem's API: a private instance with a memory limit and fake NUMA nodes,
//! object caches, typed caches, bulk operations, statistics, slabinfo, shrink, and what happens
//! when memory runs out.
//!
//! `cargo run --example tour`

use kmem::{Cache, CacheConfig, CacheFlags, FaultInjection, Kmem, SlabInfoTable};

fn main() -> Result<(), kmem::KmemError> {
    let k = Kmem::builder()
        .memory_limit(32 << 20)
        .nodes(2)
        .cpus(4)
        .build()?;
    println!("instance: {} nodes, {} CPU slots", k.nodes(), k.cpus());

    // An object cache of 192-byte connections, cache-line aligned.
    let conns = k.create_cache(
        "conn",
        192,
        CacheConfig::new().flags(CacheFlags::HWCACHE_ALIGN),
    )?;
    println!(
        "conn: size {} order {} ({} objects/slab, min_partial {}, cpu_partial_slabs {})",
        conns.size(),
        conns.order(),
        conns.objects_per_slab(),
        conns.min_partial(),
        conns.cpu_partial_slabs()
    );
    let objs: Vec<_> = (0..10_000)
        .map(|_| conns.alloc().expect("memory"))
        .collect();
    for &p in &objs[..5_000] {
        // SAFETY: allocated from `conns` above, freed once.
        unsafe { conns.free(p) };
    }

    // Bulk: one slot-lock round trip for the whole batch.
    let mut batch = [core::ptr::null_mut(); 256];
    let n = conns.alloc_bulk(&mut batch);
    let batch: Vec<_> = batch[..n]
        .iter()
        .map(|&p| core::ptr::NonNull::new(p).unwrap())
        .collect();
    // SAFETY: allocated from `conns`, no duplicates.
    unsafe { conns.free_bulk(&batch) };

    // A typed cache on the same instance.
    let blocks: Cache<[u64; 8]> = Cache::with_config(&k, "block", CacheConfig::new())?;
    let b = blocks.alloc([1; 8]).expect("memory");
    println!("block sum = {}", b.iter().sum::<u64>());

    println!("\nconn stats: {:#?}", conns.stats());
    print!("\n{}", SlabInfoTable(k.slabinfo()));
    println!("\npages: {:?}", k.page_stats());

    for &p in &objs[5_000..] {
        // SAFETY: the other half, freed once.
        unsafe { conns.free(p) };
    }
    drop(b);
    conns.shrink();
    println!("\nafter free + shrink: {}", conns.info());
    println!(
        "pages: resident {} of {} mapped bytes",
        k.page_stats().resident_bytes,
        k.page_stats().mapped_bytes
    );

    // Failure is testable: every 3rd page allocation fails.
    let faulty = Kmem::builder()
        .cpus(1)
        .nodes(1)
        .fault_injection(FaultInjection::EveryNth(3))
        .build()?;
    let c = faulty.create_cache(
        "faulty",
        4096,
        CacheConfig::new().max_order(0).min_partial(0),
    )?;
    let mut got = 0;
    let mut failed = 0;
    let mut keep = Vec::new();
    for _ in 0..30 {
        match c.alloc() {
            Some(p) => {
                got += 1;
                keep.push(p);
            }
            None => failed += 1,
        }
    }
    println!("\nfault injection: {got} allocations succeeded, {failed} failed (page allocator: {} failed)", faulty.page_stats().failed_allocs);
    for p in keep {
        // SAFETY: allocated from `c`, freed once.
        unsafe { c.free(p) };
    }
    Ok(())
}
