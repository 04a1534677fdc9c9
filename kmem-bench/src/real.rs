//! The `real` group: a real program on each allocator, side by side. redis-server runs under
//! `LD_PRELOAD` of each allocator's shared library in turn (alternating: the starting allocator
//! rotates each repetition), redis-benchmark drives it with fixed, bounded parameters over
//! 127.0.0.1, and the server's peak RSS (`VmHWM` in `/proc/PID/status`) is read before it is
//! shut down.
//!
//! The allocators: `kmem` (this workspace's `libkmem.so`, built here with `cargo build
//! --release -p kmem-preload`), `glibc`, `jemalloc` (libjemalloc2), `mimalloc`
//! (libmimalloc2.0) and `tcmalloc` (libtcmalloc-minimal4). Debian's redis-server is linked
//! with jemalloc, so "glibc" preloads `libc.so.6` itself, which puts glibc's `malloc` ahead of
//! the linked jemalloc in the symbol search order. A missing program or library is one clear
//! skip line (a note), not an error.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::alloc::Backend;
use crate::report::Raw;

/// The redis-benchmark tests, in report order.
pub const TESTS: [&str; 4] = ["SET", "GET", "LPUSH", "LPOP"];

/// Fixed benchmark parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RealParams {
    /// Requests per test.
    pub requests: u32,
    /// Parallel client connections.
    pub clients: u32,
    /// Requests per pipeline.
    pub pipeline: u32,
    /// Random keys drawn from this many (`-r`).
    pub keyspace: u32,
    /// Value size in bytes (`-d`).
    pub value_bytes: u32,
}

impl RealParams {
    /// The parameters for a run (`quick`: a quarter of the requests).
    pub fn new(quick: bool) -> Self {
        RealParams {
            requests: if quick { 50_000 } else { 200_000 },
            clients: 50,
            pipeline: 16,
            keyspace: 100_000,
            value_bytes: 100,
        }
    }
}

/// One allocator of the group: its report name and the library to preload.
#[derive(Clone, Debug, PartialEq)]
pub struct Preload {
    /// Report name.
    pub name: &'static str,
    /// The shared library preloaded into redis-server.
    pub lib: PathBuf,
}

/// Library directories searched for the peers' shared objects.
const LIB_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];

fn find_lib(file: &str) -> Option<PathBuf> {
    LIB_DIRS
        .iter()
        .map(|d| Path::new(d).join(file))
        .find(|p| p.exists())
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}

/// Builds (or finds up to date) `libkmem.so` next to this executable's target directory.
fn kmem_lib(notes: &mut Vec<String>) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let lib = exe.parent()?.join("libkmem.so");
    // Cargo sets CARGO for the programs it runs; build the preload library with the same
    // cargo and target directory so the measured kmem is this tree's.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--release", "-q", "-p", "kmem-preload"])
        .stdin(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !built {
        notes.push("real: `cargo build --release -p kmem-preload` failed".into());
    }
    if lib.exists() {
        Some(lib)
    } else {
        notes.push(format!(
            "real: SKIPPED kmem: {} not found (cargo build --release -p kmem-preload)",
            lib.display()
        ));
        None
    }
}

/// The allocators to measure: those selected with `-a` (`system` is glibc here), plus
/// tcmalloc when every allocator was selected; each missing library is one skip note.
pub fn preloads(selected: &[Backend], notes: &mut Vec<String>) -> Vec<Preload> {
    let all = selected.len() == Backend::ALL.len();
    let mut out = Vec::new();
    let wanted: [(&'static str, Option<Backend>, &str, &str); 5] = [
        ("kmem", Some(Backend::Kmem), "libkmem.so", "kmem-preload"),
        ("glibc", Some(Backend::System), "libc.so.6", "libc6"),
        (
            "jemalloc",
            Some(Backend::Jemalloc),
            "libjemalloc.so.2",
            "libjemalloc2",
        ),
        (
            "mimalloc",
            Some(Backend::Mimalloc),
            "libmimalloc.so.2",
            "libmimalloc2.0",
        ),
        (
            "tcmalloc",
            None,
            "libtcmalloc_minimal.so.4",
            "libtcmalloc-minimal4",
        ),
    ];
    for (name, backend, file, package) in wanted {
        let chosen = match backend {
            Some(b) => selected.contains(&b),
            None => all,
        };
        if !chosen {
            continue;
        }
        let lib = if name == "kmem" {
            kmem_lib(notes)
        } else {
            let l = find_lib(file);
            if l.is_none() {
                notes.push(format!(
                    "real: SKIPPED {name}: {file} not found (apt-get install {package})"
                ));
            }
            l
        };
        if let Some(lib) = lib {
            out.push(Preload { name, lib });
        }
    }
    out
}

/// The redis programs, or the skip note.
pub fn programs() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    match (
        which("redis-server"),
        which("redis-benchmark"),
        which("redis-cli"),
    ) {
        (Some(s), Some(b), Some(c)) => Ok((s, b, c)),
        _ => Err(
            "real: SKIPPED: redis-server/redis-benchmark/redis-cli not installed \
                  (apt-get install redis-server redis-tools)"
                .into(),
        ),
    }
}

/// One run's figures: requests per second per test, and the server's peak RSS.
#[derive(Clone, Debug, PartialEq)]
pub struct RunResult {
    /// (test, requests per second).
    pub rps: Vec<(String, f64)>,
    /// `VmHWM` of redis-server, KiB.
    pub peak_rss_kib: u64,
}

/// Parses redis-benchmark's `--csv` output: `"SET","123.45",...` lines after a header.
pub fn parse_csv(out: &str) -> Vec<(String, f64)> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split(',').map(|s| s.trim().trim_matches('"'));
            let test = f.next()?;
            let rps: f64 = f.next()?.parse().ok()?;
            Some((test.to_string(), rps))
        })
        .collect()
}

/// `VmHWM` in KiB from the text of `/proc/PID/status`.
pub fn parse_vmhwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Stops the server if still running (a guard, so an early return never leaks it).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// [`run_once`], retried on two more ports if the server could not start (a port taken by
/// another program on this machine).
pub fn run_retrying(
    progs: &(PathBuf, PathBuf, PathBuf),
    p: &Preload,
    rp: RealParams,
    port: u16,
) -> Result<RunResult, String> {
    let mut last = String::new();
    for k in 0..3u16 {
        match run_once(progs, p, rp, port.wrapping_add(k * 7919) % 20_000 + 20_000) {
            Ok(r) => return Ok(r),
            Err(e) if e.contains(" exited (") => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Starts redis-server under `p`, benchmarks it, reads its peak RSS, shuts it down.
pub fn run_once(
    progs: &(PathBuf, PathBuf, PathBuf),
    p: &Preload,
    rp: RealParams,
    port: u16,
) -> Result<RunResult, String> {
    let (server, bench, cli) = progs;
    let port_s = port.to_string();
    let child = Command::new(server)
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port_s,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .env("LD_PRELOAD", &p.lib)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server under {}: {e}", p.name))?;
    let mut srv = Server(child);
    let pid = srv.0.id();
    let ping = || {
        Command::new(cli)
            .args(["-h", "127.0.0.1", "-p", &port_s, "ping"])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            .unwrap_or(false)
    };
    let t0 = Instant::now();
    while !ping() {
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!("redis-server under {} did not answer", p.name));
        }
        if let Ok(Some(st)) = srv.0.try_wait() {
            let mut log = String::new();
            if let Some(mut o) = srv.0.stdout.take() {
                use std::io::Read;
                let _ = o.read_to_string(&mut log);
            }
            return Err(format!(
                "redis-server under {} on port {port} exited ({st}): {}",
                p.name,
                log.lines().last().unwrap_or("").trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = Command::new(bench)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port_s,
            "-t",
            "set,get,lpush,lpop",
            "-n",
            &rp.requests.to_string(),
            "-c",
            &rp.clients.to_string(),
            "-P",
            &rp.pipeline.to_string(),
            "-r",
            &rp.keyspace.to_string(),
            "-d",
            &rp.value_bytes.to_string(),
            "--csv",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "redis-benchmark against {} failed: {}",
            p.name, out.status
        ));
    }
    let rps = parse_csv(&text);
    for t in TESTS {
        if !rps.iter().any(|(n, _)| n == t) {
            return Err(format!(
                "redis-benchmark against {}: no {t} result in {text:?}",
                p.name
            ));
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let peak_rss_kib =
        parse_vmhwm(&status).ok_or_else(|| format!("no VmHWM in /proc/{pid}/status"))?;
    let _ = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port_s, "shutdown", "nosave"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let t1 = Instant::now();
    while srv.0.try_wait().ok().flatten().is_none() && t1.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(srv);
    Ok(RunResult { rps, peak_rss_kib })
}

/// The raw samples of one run: one per test, ns per request = 1e9 / (requests per second),
/// each carrying the run's peak RSS.
pub fn raws(p: &Preload, r: &RunResult) -> Vec<Raw> {
    TESTS
        .iter()
        .filter_map(|&t| {
            let (_, rps) = r.rps.iter().find(|(n, _)| n == t)?;
            Some(Raw {
                workload: "real".into(),
                variant: format!("redis {t}"),
                allocator: p.name.into(),
                ns_per_op: 1e9 / rps.max(1e-9),
                peak_rss_kib: Some(r.peak_rss_kib),
                extra: Default::default(),
            })
        })
        .collect()
}

/// A port on 127.0.0.1 for run `i` of this process (spread out by the pid).
pub fn port_for(i: usize) -> u16 {
    20_000 + ((std::process::id() as usize * 7 + i) % 20_000) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_parse() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"492610.84\",\"0.7\"\n\"GET\",\"724637.69\",\"0.5\"\n";
        assert_eq!(
            parse_csv(out),
            vec![("SET".into(), 492610.84), ("GET".into(), 724637.69)]
        );
    }

    #[test]
    fn vmhwm_parses() {
        let s = "Name:\tredis-server\nVmPeak:\t  100 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 1 kB\n";
        assert_eq!(parse_vmhwm(s), Some(12345));
        assert_eq!(parse_vmhwm("Name: x\n"), None);
    }

    #[test]
    fn raws_invert_throughput() {
        let p = Preload {
            name: "kmem",
            lib: "/x".into(),
        };
        let r = RunResult {
            rps: vec![("SET".into(), 500_000.0), ("GET".into(), 1_000_000.0)],
            peak_rss_kib: 2048,
        };
        let v = raws(&p, &r);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].variant, "redis SET");
        assert!((v[0].ns_per_op - 2000.0).abs() < 1e-9);
        assert_eq!(v[1].peak_rss_kib, Some(2048));
    }

    #[test]
    fn missing_peers_are_skipped_with_a_note() {
        let mut notes = Vec::new();
        let got = preloads(&[Backend::Mimalloc], &mut notes);
        // Only mimalloc was selected: either it is installed or there is exactly one note.
        assert!(got.iter().all(|p| p.name == "mimalloc"));
        assert_eq!(got.len() + notes.len(), 1, "{notes:?}");
    }
}
