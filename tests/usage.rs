//! A usage error is one line naming the tool and the problem, exit status
//! 2, for each of the four binaries; `--help` is clap's whole text, exit 0.

mod common;

use std::process::Command;

use common::*;

#[test]
fn a_bad_flag_is_one_line_and_help_is_the_whole_text() {
    let chaos = std::path::Path::new(udpchaos_bin());
    let bench = chaos.with_file_name("udpbench");
    let cases: [(&str, &std::ffi::OsStr, &[&str], &str); 4] = [
        (
            "udprelay",
            udprelay_bin().as_ref(),
            &["--bogus"],
            "unexpected argument '--bogus'",
        ),
        (
            "udpcat",
            udpcat_bin().as_ref(),
            &["pub"],
            "not provided: <ADDR> <CHANNEL>",
        ),
        (
            "udpchaos",
            chaos.as_os_str(),
            &["--loss", "2"],
            "2 is not between 0 and 1",
        ),
        (
            "udpbench",
            bench.as_os_str(),
            &["--size", "x"],
            "invalid value 'x' for '--size",
        ),
    ];
    for (tool, bin, args, want) in cases {
        let out = Command::new(bin).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tool}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{tool}: {stderr}");
        assert!(stderr.starts_with(&format!("{tool}: ")), "{stderr}");
        assert!(stderr.contains(want), "{tool}: {stderr}");
        let help = Command::new(bin).arg("--help").output().unwrap();
        assert!(help.status.success(), "{tool} --help");
        assert!(
            String::from_utf8_lossy(&help.stdout).lines().count() > 5,
            "{tool} --help"
        );
    }
}
