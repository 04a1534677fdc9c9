//! Helpers shared by the integration tests that check an abort: they run the test binary
//! again as a child executing only one test (`KMEM_CHILD=1`) and look at how it died.

#![allow(dead_code)] // each test binary uses its own subset

use std::process::{Command, ExitStatus};

/// Runs this test binary again as a child executing only `name` with `KMEM_CHILD=1`, and
/// returns (exit status, stderr).
pub fn child(name: &str) -> (ExitStatus, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("KMEM_CHILD", "1")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether this process is such a child.
pub fn in_child() -> bool {
    std::env::var_os("KMEM_CHILD").is_some()
}

/// The child died of SIGABRT and its stderr contains every needle.
pub fn assert_aborted(status: ExitStatus, stderr: &str, needles: &[&str]) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "child did not abort ({status}); stderr:\n{stderr}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "missing {needle:?} in stderr:\n{stderr}"
        );
    }
}
