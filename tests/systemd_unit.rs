//! `dist/udprelay.service` passes `systemd-analyze verify` (with its
//! ExecStart pointed at the binary built here): no error, no warning.
//! Skipped, saying so, where systemd-analyze is not installed, unless
//! `UDPRELAY_REQUIRE_SYSTEMD` is set.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_unit_file_verifies_clean() {
    if !tool_available(
        "systemd-analyze",
        "UDPRELAY_REQUIRE_SYSTEMD",
        "apt-get install systemd",
    ) {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("dist/udprelay.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/udprelay "), "{unit}");
    let built = std::fs::canonicalize(udprelay_bin()).unwrap();
    let here = unit.replace("/usr/bin/udprelay", built.to_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("udprelay.service");
    std::fs::write(&path, here).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.trim().is_empty(), "warnings: {said}");
}
