//! What the machine is, what time it is, and how much memory this process holds.

use std::fs;

/// The CPU model from `/proc/cpuinfo` ("unknown CPU" when it cannot be read).
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| parse_cpu_model(&s))
        .unwrap_or_else(|| "unknown CPU".to_string())
}

fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// CPUs this process may run on.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The current UTC date and time, `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Formats seconds since the Unix epoch as a UTC date and time (proleptic Gregorian).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Peak resident set size of this process in KiB (`getrusage(RUSAGE_SELF).ru_maxrss`).
pub fn peak_rss_kib() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we pass; no other precondition.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc == 0 {
        ru.ru_maxrss.max(0) as u64
    } else {
        0
    }
}

/// Current resident set size of this process in KiB (from `/proc/self/statm`).
pub fn current_rss_kib() -> u64 {
    let page_kib = {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 {
            p as u64 / 1024
        } else {
            4
        }
    };
    fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| parse_statm_resident(&s))
        .map_or(0, |pages| pages * page_kib)
}

fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// glibc's account of its heap at the fragmentation fill's peak (`mallinfo2`), in the terms of
/// kmem's breakdown (`--slabinfo`): the bytes requested against the main arena's bytes (`arena`:
/// from `brk`), the bytes of chunks in use (`uordblks`: requests plus headers and rounding),
/// the free bytes inside the arena (`fordblks`), the `mmap`ed chunks (`hblkhd`) and the RSS.
/// MiB.
pub fn glibc_footprint(requested: usize, objects: usize) -> String {
    // SAFETY: mallinfo2 has no preconditions; it takes glibc's arena locks.
    let m = unsafe { libc::mallinfo2() };
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    format!(
        "glibc at the fill's peak (MiB): {objects} objects requested {:.1}; heap (arena) {:.1}, \
         chunks in use {:.1} (+{:.1} headers and rounding), free in the heap {:.1}; mmapped {:.1}; \
         process RSS {:.1}",
        mib(requested),
        mib(m.arena),
        mib(m.uordblks),
        mib(m.uordblks.saturating_sub(requested)),
        mib(m.fordblks),
        mib(m.hblkhd),
        current_rss_kib() as f64 / 1024.0,
    )
}

/// Held by the tests that measure this process's RSS or move megabytes through glibc, so that
/// one's frees (which glibc may trim back to the OS) do not land inside another's measurement.
#[cfg(test)]
pub static RSS_TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_footprint_counts_chunks_in_use() {
        use std::alloc::{GlobalAlloc, Layout, System};
        let _rss = RSS_TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let l = Layout::from_size_align(1000, 8).unwrap();
        // SAFETY: a non-zero layout; every block is freed below with it.
        let objs: Vec<*mut u8> = (0..4096).map(|_| unsafe { System.alloc(l) }).collect();
        let s = glibc_footprint(4096 * 1000, 4096);
        for p in objs {
            // SAFETY: allocated above with `l`, freed once.
            unsafe { System.dealloc(p, l) };
        }
        // "chunks in use X (+Y headers and rounding)": at least the 3.9 MiB just allocated.
        let in_use: f64 = s
            .split("chunks in use ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{s}"));
        assert!(in_use >= 3.9, "{s}");
        assert!(s.contains("4096 objects requested 3.9;"), "{s}");
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn proc_parsing() {
        let info = "processor\t: 0\nvendor_id\t: X\nmodel name\t: Fancy CPU @ 3GHz\n";
        assert_eq!(parse_cpu_model(info).as_deref(), Some("Fancy CPU @ 3GHz"));
        assert_eq!(parse_cpu_model("processor: 0\n"), None);
        assert_eq!(parse_statm_resident("1000 250 30 1 0 100 0\n"), Some(250));
        assert_eq!(parse_statm_resident(""), None);
    }

    #[test]
    fn rss_is_measured() {
        assert!(current_rss_kib() > 0);
        assert!(peak_rss_kib() >= current_rss_kib() / 2);
    }
}
