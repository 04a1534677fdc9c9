//! `kmem-bench`: kmem against the system allocator, mimalloc and jemalloc.
//!
//! ```text
//! cargo run --release -p kmem-bench                 # the default suite (a few minutes)
//! cargo run --release -p kmem-bench -- --quick      # under a minute
//! cargo run --release -p kmem-bench -- -w fastpath,larson -a kmem,mimalloc --runs 9
//! cargo run --release -p kmem-bench -- -w real      # redis-server on each allocator (LD_PRELOAD)
//! ```
//!
//! The `real` group ([`real`]) is in the default suite but not in `--quick` unless asked for
//! with `-w real`.
//!
//! Every workload runs against every selected allocator in one run; repetitions alternate the
//! allocators (rep-major, with the starting allocator rotated each repetition) so that drift
//! (frequency scaling, other load) spreads over all of them. Each figure is the median over
//! repetitions, with the min–max range beside it. See [`workloads`] for what each workload
//! measures and how, and [`alloc`] for how one binary measures four allocators both as plain
//! `GlobalAlloc` values and as the process's `#[global_allocator]` (in child processes).
//!
//! Results go to the terminal (a table per workload, each peer's ratio to kmem) and to
//! `target/kmem-bench/`: `results.csv`, `results.json` and one `<workload>.svg` chart each.

mod alloc;
mod harness;
mod real;
mod report;
mod stats;
mod sys;
mod workloads;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use alloc::{kmem_backend, Backend, GLOBAL_ENV};
use report::Raw;
use workloads::{ChildReport, ChildResult, Params, Workload};

#[global_allocator]
static GLOBAL: alloc::Dispatch = alloc::Dispatch;

/// Benchmarks kmem against the system allocator, mimalloc and jemalloc.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Workloads to run, comma-separated [default: all]
    #[arg(short, long, value_enum, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// Allocators to compare, comma-separated [default: all]
    #[arg(short, long, value_enum, value_delimiter = ',')]
    allocators: Vec<Backend>,
    /// Threads for "one per core" workloads; many-threads uses 16x this [default: CPUs]
    #[arg(short, long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Object sizes in bytes for fastpath, batch and remote-free [default: 64,256]
    #[arg(short, long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=(1 << 20)))]
    sizes: Vec<u32>,
    /// Length of one timed sample in milliseconds, at least 10 [default: 200; quick: 25]
    #[arg(short, long, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    duration: Option<u64>,
    /// Repetitions of every measurement [default: 7; quick: 3]
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    runs: Option<u16>,
    /// Objects per thread in many-threads and larson [default: 2000; quick: 500]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    working_set: Option<u32>,
    /// MiB requested by the fragmentation fill (idle: half of it in small objects) [default: 256; quick: 64]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    frag_mib: Option<u32>,
    /// Seed of every random choice
    #[arg(long, default_value_t = 0x5eed)]
    seed: u64,
    /// Small, fast settings: the whole suite in well under a minute
    #[arg(long)]
    quick: bool,
    /// No progress bar and no file list; only the results table
    #[arg(short, long)]
    quiet: bool,
    /// Print kmem's slabinfo after the run
    #[arg(long)]
    slabinfo: bool,
    /// Pin the workers of runs with at most one thread per CPU, thread t to the t-th CPU the
    /// process may use (less noise for A/B comparisons; many-threads is never pinned)
    #[arg(long)]
    pin: bool,
    /// Where to write CSV, JSON and SVG [default: <target dir>/kmem-bench]
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Internal: run one workload as a child process and print its result as JSON
    #[arg(long, hide = true, value_enum)]
    child: Option<Workload>,
    /// Internal: the parent's resolved parameters, as JSON
    #[arg(long, hide = true)]
    child_params: Option<String>,
}

impl Cli {
    /// The parameters of this run, with the defaults (or the `--quick` ones) filled in.
    fn params(&self, cores: usize) -> Params {
        let q = self.quick;
        Params {
            duration_ms: self.duration.unwrap_or(if q { 25 } else { 200 }).max(10),
            runs: usize::from(self.runs.unwrap_or(if q { 3 } else { 7 })),
            threads: self.threads.map_or(cores, usize::from).max(1),
            sizes: if self.sizes.is_empty() {
                vec![64, 256]
            } else {
                self.sizes.iter().map(|&s| s as usize).collect()
            },
            working_set: self.working_set.unwrap_or(if q { 500 } else { 2000 }) as usize,
            frag_mib: self.frag_mib.unwrap_or(if q { 64 } else { 256 }) as usize,
            seed: self.seed,
            slabinfo: self.slabinfo,
            pin: self.pin,
            cache_host: None,
        }
    }

    fn workloads(&self) -> Vec<Workload> {
        let mut w = if self.workloads.is_empty() {
            // The real-program group takes tens of seconds: not in --quick unless named.
            Workload::ALL
                .into_iter()
                .filter(|&w| !(self.quick && w == Workload::Real))
                .collect()
        } else {
            self.workloads.clone()
        };
        w.sort();
        w.dedup();
        w
    }

    fn allocators(&self) -> Vec<Backend> {
        let mut a = if self.allocators.is_empty() {
            Backend::ALL.to_vec()
        } else {
            self.allocators.clone()
        };
        a.sort();
        a.dedup();
        a
    }
}

fn main() {
    let cli = Cli::parse();
    harness::PIN.store(cli.pin, std::sync::atomic::Ordering::Relaxed);
    if let Some(w) = cli.child {
        let params: Params = match cli.child_params.as_deref().map(serde_json::from_str) {
            Some(Ok(p)) => p,
            _ => {
                eprintln!("kmem-bench: --child needs valid --child-params");
                std::process::exit(2);
            }
        };
        harness::PIN.store(params.pin, std::sync::atomic::Ordering::Relaxed);
        let report = run_child(w, &params);
        let line = serde_json::to_string(&report).expect("child report serialises");
        println!("{line}");
        return;
    }
    if let Err(e) = run_parent(&cli) {
        eprintln!("kmem-bench: {e}");
        std::process::exit(1);
    }
}

/// The figures of one child-process run of a workload, under the global allocator.
fn run_child(w: Workload, p: &Params) -> ChildReport {
    let b = alloc::global_backend();
    let d = p.duration();
    let mut results = Vec::new();
    let mut notes = Vec::new();
    let mut push = |variant: String, allocator: &str, s: workloads::Sample, extra| {
        results.push(ChildResult {
            variant,
            allocator: allocator.to_string(),
            ops: s.ops,
            elapsed_ns: s.elapsed.as_nanos() as u64,
            peak_rss_kib: sys::peak_rss_kib(),
            extra,
        })
    };
    match w {
        Workload::Churn | Workload::ManyThreads => {
            let threads = if w == Workload::Churn {
                p.threads
            } else {
                16 * p.threads
            };
            let m = with_backend!(b, |a| workloads::many_threads(
                a,
                threads,
                p.working_set,
                p.seed,
                d
            ));
            push(
                format!("{threads} threads"),
                b.name(),
                m.churn,
                Default::default(),
            );
            push(
                format!("{threads} threads, fill"),
                b.name(),
                m.fill,
                Default::default(),
            );
        }
        Workload::Larson => {
            let threads = p.threads.max(2);
            let s = with_backend!(b, |a| workloads::larson(
                a,
                threads,
                p.working_set,
                p.seed,
                d
            ));
            push(
                format!("{threads} threads"),
                b.name(),
                s,
                Default::default(),
            );
        }
        Workload::Fragmentation => {
            let mut call = "";
            let mut breakdown = None;
            let want = p.slabinfo;
            let f = with_backend!(b, |a| workloads::fragmentation(
                a,
                p.frag_mib << 20,
                p.seed,
                |requested, objects| {
                    if want {
                        breakdown = match b {
                            Backend::Kmem | Backend::KmemCpuSlab => {
                                Some(kmem_backend::footprint(requested, objects))
                            }
                            Backend::System => Some(sys::glibc_footprint(requested, objects)),
                            _ => None,
                        };
                    }
                },
                || call = b.release()
            ));
            if let Some(s) = breakdown {
                notes.push(s);
            }
            let extra = [
                ("rss_base_kib", f.rss_base_kib),
                ("rss_filled_kib", f.rss_filled_kib),
                ("rss_freed_kib", f.rss_freed_kib),
                ("rss_released_kib", f.rss_released_kib),
                ("page_floor_kib", f.page_floor_kib),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v as f64))
            .collect();
            push(format!("{} MiB", p.frag_mib), b.name(), f.sample, extra);
            notes.push(format!("fragmentation: {} released with {call}", b.name()));
        }
        Workload::Large => {
            let threads = p.threads;
            let s = with_backend!(b, |a| workloads::large(a, threads, p.seed, d));
            push(
                format!("{threads} thr, 8 KiB-1 MiB"),
                b.name(),
                s,
                Default::default(),
            );
        }
        Workload::Idle => {
            let small = (p.frag_mib << 20) / 2;
            let f = with_backend!(b, |a| workloads::idle(a, small, p.seed));
            let extra = [
                ("rss_base_kib", f.rss_base_kib),
                ("rss_burst_kib", f.rss_burst_kib),
                ("rss_freed_kib", f.rss_freed_kib),
                ("rss_idle_kib", f.rss_idle_kib),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v as f64))
            .collect();
            push(
                format!("{} MiB small + 64 MiB large", p.frag_mib / 2),
                b.name(),
                f.sample,
                extra,
            );
        }
        Workload::Objects => {
            let s = workloads::objects_box(workloads::make64, d);
            push("64 B".into(), b.name(), s, Default::default());
            if p.cache_host == Some(b) {
                if let Some(s) = kmem_backend::objects_cache("bench-obj64", workloads::make64, d) {
                    push("64 B".into(), "kmem-cache", s, Default::default());
                }
            }
            let s = workloads::objects_box(workloads::make256, d);
            push("256 B".into(), b.name(), s, Default::default());
            if p.cache_host == Some(b) {
                if let Some(s) = kmem_backend::objects_cache("bench-obj256", workloads::make256, d)
                {
                    push("256 B".into(), "kmem-cache", s, Default::default());
                }
            }
        }
        Workload::Fastpath | Workload::Batch | Workload::RemoteFree | Workload::Real => {
            eprintln!("kmem-bench: {} runs in process, not as a child", w.name());
            std::process::exit(2);
        }
    }
    let slabinfo = (p.slabinfo && matches!(b, Backend::Kmem | Backend::KmemCpuSlab))
        .then(kmem_backend::slabinfo);
    ChildReport {
        results,
        slabinfo,
        notes,
    }
}

/// Runs `w` in a child process whose global allocator is `b`.
fn spawn_child(w: Workload, b: Backend, p: &Params) -> Result<ChildReport, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let out = Command::new(exe)
        .arg("--child")
        .arg(w.name())
        .arg("--child-params")
        .arg(serde_json::to_string(p).expect("params serialise"))
        .env(GLOBAL_ENV, b.name())
        .env("KMEM_SHEAVES", kmem_backend::sheaves_env(b))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("spawning the {} child: {e}", b.name()))?;
    if !out.status.success() {
        return Err(format!(
            "{} child for {} failed: {}",
            b.name(),
            w.name(),
            out.status
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("{} child for {} printed no result", b.name(), w.name()))?;
    serde_json::from_str(line).map_err(|e| format!("{} child's result: {e}", b.name()))
}

/// The `real` group: every preloadable allocator in turn, alternating, `params.runs` times.
fn run_real(
    cli: &Cli,
    params: &Params,
    allocs: &[Backend],
    pb: &ProgressBar,
    raws: &mut Vec<Raw>,
    notes: &mut Vec<String>,
) {
    let progs = match real::programs() {
        Ok(p) => p,
        Err(skip) => {
            pb.println(&skip);
            notes.push(skip);
            return;
        }
    };
    let mut group_notes = Vec::new();
    let preloads = real::preloads(allocs, &mut group_notes);
    for n in group_notes {
        pb.println(&n);
        notes.push(n);
    }
    let rp = real::RealParams::new(cli.quick);
    notes.push(format!(
        "real: redis-benchmark -t set,get,lpush,lpop -n {} -c {} -P {} -r {} -d {} on 127.0.0.1; \
         peak RSS = the server's VmHWM; glibc = LD_PRELOAD=libc.so.6 (Debian's redis-server \
         links jemalloc)",
        rp.requests, rp.clients, rp.pipeline, rp.keyspace, rp.value_bytes
    ));
    let n = preloads.len();
    pb.inc_length((params.runs * n) as u64);
    let mut i = 0;
    for rep in 0..params.runs {
        for k in 0..n {
            let p = &preloads[(k + rep) % n];
            pb.set_message(format!("real / {} / run {}", p.name, rep + 1));
            match real::run_retrying(&progs, p, rp, real::port_for(i)) {
                Ok(r) => raws.extend(real::raws(p, &r)),
                Err(e) => {
                    pb.println(format!("warning: {e}"));
                    notes.push(e);
                }
            }
            i += 1;
            pb.inc(1);
        }
    }
}

/// One in-process sample.
fn run_case(w: Workload, c: &workloads::Case, b: Backend, d: Duration) -> workloads::Sample {
    if matches!(b, Backend::Kmem | Backend::KmemCpuSlab) {
        kmem_backend::select(b);
    }
    with_backend!(b, |a| match w {
        Workload::Fastpath => workloads::fastpath(a, c.size, d),
        Workload::Batch => workloads::batch(a, c.size, c.threads, d),
        Workload::RemoteFree => workloads::remote_free(a, c.size, c.threads, d),
        _ => unreachable!("{} runs in a child", w.name()),
    })
}

fn default_out_dir() -> PathBuf {
    // <target>/<profile>/kmem-bench -> <target>/kmem-bench
    std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("kmem-bench")))
        .unwrap_or_else(|| PathBuf::from("target/kmem-bench"))
}

fn run_parent(cli: &Cli) -> Result<(), String> {
    let started = Instant::now();
    let cores = sys::cores();
    let mut params = cli.params(cores);
    let workloads = cli.workloads();
    let mut notes: Vec<String> = Vec::new();
    let allocs = cli.allocators();
    if allocs.is_empty() {
        return Err("no allocator left to measure".into());
    }
    params.cache_host = allocs.first().copied();
    let date = sys::utc_now();
    let cpu = sys::cpu_model();
    println!("kmem-bench  {date}");
    println!("machine: {cpu}, {cores} CPUs");
    println!(
        "allocators: {}   runs: {}   sample: {} ms   threads/core-workloads: {}{}   sizes: {:?}",
        allocs
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", "),
        params.runs,
        params.duration().as_millis(),
        params.threads,
        if params.pin { " (pinned)" } else { "" },
        params.sizes
    );
    println!("ns/op = wall time per alloc+free over all threads; vs kmem = median / kmem's median (>1: kmem faster)");
    let _ = std::io::stdout().flush();

    let n = allocs.len();
    let total: u64 = workloads
        .iter()
        .map(|&w| {
            let per = if w == Workload::Real {
                0 // counted when the group knows its allocators
            } else if w.in_child() {
                1
            } else {
                workloads::cases(w, &params).len()
            };
            (params.runs * n * per) as u64
        })
        .sum();
    let pb = if cli.quiet {
        ProgressBar::hidden()
    } else {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb
    };

    let mut raws: Vec<Raw> = Vec::new();
    let mut slabinfos: Vec<(Workload, String)> = Vec::new();
    let d = params.duration();
    for &w in &workloads {
        if w == Workload::Real {
            run_real(cli, &params, &allocs, &pb, &mut raws, &mut notes);
            continue;
        }
        if w.in_child() {
            for rep in 0..params.runs {
                for i in 0..n {
                    let b = allocs[(i + rep) % n];
                    pb.set_message(format!("{} / {} / run {}", w.name(), b.name(), rep + 1));
                    match spawn_child(w, b, &params) {
                        Ok(r) => {
                            for res in r.results {
                                raws.push(Raw {
                                    workload: w.name().into(),
                                    variant: res.variant,
                                    allocator: res.allocator,
                                    ns_per_op: workloads::Sample {
                                        ops: res.ops,
                                        elapsed: Duration::from_nanos(res.elapsed_ns),
                                    }
                                    .ns_per_op(),
                                    peak_rss_kib: Some(res.peak_rss_kib),
                                    extra: res.extra,
                                });
                            }
                            for n in r.notes {
                                if !notes.contains(&n) {
                                    notes.push(n);
                                }
                            }
                            if let Some(s) = r.slabinfo {
                                slabinfos.retain(|(x, _)| *x != w);
                                slabinfos.push((w, s));
                            }
                        }
                        Err(e) => {
                            pb.println(format!("warning: {e}"));
                            notes.push(e);
                        }
                    }
                    pb.inc(1);
                }
            }
        } else {
            let cases = workloads::cases(w, &params);
            // Warm-up, not recorded: first-touch of each allocator's structures and pages.
            let warm = (d / 4).max(workloads::MIN_SAMPLE);
            pb.set_message(format!("{} / warm-up", w.name()));
            for c in &cases {
                for &b in &allocs {
                    run_case(w, c, b, warm);
                }
            }
            for rep in 0..params.runs {
                for i in 0..n {
                    let b = allocs[(i + rep) % n];
                    for c in &cases {
                        pb.set_message(format!(
                            "{} / {} / {} / run {}",
                            w.name(),
                            c.variant,
                            b.name(),
                            rep + 1
                        ));
                        let s = run_case(w, c, b, d);
                        raws.push(Raw {
                            workload: w.name().into(),
                            variant: c.variant.clone(),
                            allocator: b.name().into(),
                            ns_per_op: s.ns_per_op(),
                            peak_rss_kib: None,
                            extra: Default::default(),
                        });
                        pb.inc(1);
                    }
                }
            }
        }
    }
    pb.finish_and_clear();

    let rows = report::aggregate(&raws);
    for &w in &workloads {
        let wr: Vec<&report::Row> = rows.iter().filter(|r| r.workload == w.name()).collect();
        if wr.is_empty() {
            continue;
        }
        println!("\n== {} — {}", w.name(), w.description());
        print!("{}", report::workload_table(&wr));
    }

    let out_dir = cli.out_dir.clone().unwrap_or_else(default_out_dir);
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let mut written = Vec::new();
    let csv = out_dir.join("results.csv");
    std::fs::write(&csv, report::to_csv(&rows)).map_err(|e| format!("{}: {e}", csv.display()))?;
    written.push(csv);
    for &w in &workloads {
        let wr: Vec<&report::Row> = rows.iter().filter(|r| r.workload == w.name()).collect();
        if wr.is_empty() {
            continue;
        }
        match report::workload_chart(&out_dir, w.name(), &wr) {
            Ok(p) => written.push(p),
            Err(e) => notes.push(format!("chart for {}: {e}", w.name())),
        }
        if w == Workload::Real {
            match report::rss_chart(&out_dir, w.name(), &wr) {
                Ok(p) => written.push(p),
                Err(e) => notes.push(format!("RSS chart for {}: {e}", w.name())),
            }
        }
    }
    if cli.slabinfo {
        println!("\n== kmem slabinfo (this process: fastpath, batch, remote-free)");
        print!("{}", kmem_backend::slabinfo());
        for (w, s) in &slabinfos {
            println!("\n== kmem slabinfo (the last kmem child of {})", w.name());
            print!("{s}");
        }
    }
    notes.push(format!(
        "suite time {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    let json = out_dir.join("results.json");
    let report = report::Report {
        date: &date,
        cpu: &cpu,
        cores,
        params: &params,
        notes: &notes,
        rows: &rows,
    };
    std::fs::write(&json, report::to_json(&report))
        .map_err(|e| format!("{}: {e}", json.display()))?;
    written.push(json);
    println!();
    for n in &notes {
        println!("note: {n}");
    }
    if !cli.quiet {
        for p in &written {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_quick() {
        let cli = Cli::try_parse_from(["kmem-bench"]).unwrap();
        let p = cli.params(2);
        assert_eq!((p.duration_ms, p.runs, p.threads), (200, 7, 2));
        assert_eq!(p.sizes, vec![64, 256]);
        assert_eq!(cli.workloads(), Workload::ALL.to_vec());
        assert_eq!(cli.allocators(), Backend::ALL.to_vec());
        let q = Cli::try_parse_from(["kmem-bench", "--quick"])
            .unwrap()
            .params(2);
        assert!(q.duration_ms < p.duration_ms && q.runs < p.runs && q.frag_mib < p.frag_mib);
    }

    #[test]
    fn flags_select() {
        let cli = Cli::try_parse_from([
            "kmem-bench",
            "-w",
            "larson,fastpath,larson",
            "-a",
            "mimalloc,kmem",
            "--threads",
            "3",
            "--sizes",
            "16,4096",
            "--duration",
            "15",
            "--runs",
            "7",
            "--quiet",
            "--slabinfo",
        ])
        .unwrap();
        assert_eq!(cli.workloads(), vec![Workload::Fastpath, Workload::Larson]);
        assert_eq!(cli.allocators(), vec![Backend::Kmem, Backend::Mimalloc]);
        let p = cli.params(2);
        assert_eq!((p.threads, p.duration_ms, p.runs), (3, 15, 7));
        assert_eq!(p.sizes, vec![16, 4096]);
        assert!(cli.quiet && p.slabinfo);
    }

    #[test]
    fn bad_flags_are_rejected() {
        for bad in [
            &["kmem-bench", "--duration", "5"][..],
            &["kmem-bench", "-a", "tcmalloc"],
            &["kmem-bench", "-w", "nope"],
            &["kmem-bench", "--sizes", "0"],
            &["kmem-bench", "--threads", "0"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn child_params_round_trip() {
        let p = Cli::try_parse_from(["kmem-bench", "--quick"])
            .unwrap()
            .params(4);
        assert!(!p.pin);
        let back: Params = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        // `--pin` reaches the children.
        let p = Cli::try_parse_from(["kmem-bench", "--pin"])
            .unwrap()
            .params(4);
        let back: Params = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert!(back.pin);
    }
}
