//! End-to-end checks of the binary: a tiny run writes its files, children report through the
//! dispatching global allocator, and a bad allocator name is refused.

use std::path::PathBuf;
use std::process::Command;

fn exe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kmem-bench"))
}

fn tmp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kmem-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn tiny_run_writes_table_csv_json_svg() {
    let dir = tmp_dir("run");
    let out = exe()
        .args([
            "--quiet",
            "-w",
            "fastpath,larson",
            "-a",
            "kmem,system",
            "--runs",
            "2",
            "--duration",
            "10",
            "--working-set",
            "50",
            "--out-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("machine:"), "{stdout}");
    assert!(
        stdout.contains("== fastpath") && stdout.contains("== larson"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    // Header + 2 sizes x 2 allocators (fastpath) + 2 allocators (larson).
    assert_eq!(csv.lines().count(), 1 + 4 + 2, "{csv}");
    for line in csv.lines().skip(1) {
        let runs: usize = line.split(',').nth(3).unwrap().parse().unwrap();
        assert_eq!(runs, 2, "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    for r in rows {
        assert!(r["ns_per_op"]["median"].as_f64().unwrap() > 0.0);
    }
    // larson runs in child processes: they report peak RSS.
    assert!(rows
        .iter()
        .filter(|r| r["workload"] == "larson")
        .all(|r| r["peak_rss_kib"].as_u64().unwrap() > 0));
    for w in ["fastpath", "larson"] {
        let svg = std::fs::read_to_string(dir.join(format!("{w}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn child_reports_json_under_each_global_allocator() {
    for alloc in ["kmem", "system", "mimalloc", "jemalloc"] {
        let params = r#"{"duration_ms":10,"runs":1,"threads":2,"sizes":[64],"working_set":20,
            "frag_mib":4,"seed":1,"slabinfo":false,"cache_host":null}"#;
        let out = exe()
            .args(["--child", "fragmentation", "--child-params", params])
            .env("KMEM_BENCH_GLOBAL", alloc)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{alloc}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let r = &v["results"][0];
        assert_eq!(r["allocator"], alloc);
        assert!(r["extra"]["rss_filled_kib"].as_f64().unwrap() > 0.0);
        assert!(v["notes"][0].as_str().unwrap().contains(alloc));
    }
}

#[test]
fn unknown_global_allocator_aborts() {
    let out = exe()
        .args(["--help"])
        .env("KMEM_BENCH_GLOBAL", "tcmalloc")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("KMEM_BENCH_GLOBAL"));
}

#[test]
fn kmem_child_measures_typed_cache_and_reports_slabinfo() {
    let params = r#"{"duration_ms":10,"runs":1,"threads":2,"sizes":[64],"working_set":20,
        "frag_mib":4,"seed":1,"slabinfo":true,"cache_host":"kmem"}"#;
    let out = exe()
        .args(["--child", "objects", "--child-params", params])
        .env("KMEM_BENCH_GLOBAL", "kmem")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let allocs: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["allocator"].as_str().unwrap())
        .collect();
    assert_eq!(allocs, ["kmem", "kmem-cache", "kmem", "kmem-cache"]);
    let slabinfo = v["slabinfo"].as_str().unwrap();
    assert!(slabinfo.contains("kmalloc-64"), "{slabinfo}");
}
