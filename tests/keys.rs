//! End to end: `udprelay key new`, `key derive` and `key ls` on a real key
//! file, checked against what the library reads back from it.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::SystemTime;

use common::udprelay_bin;
use udprelay::auth::{AuthError, Credential, KeyFile};

fn key_cmd(action: &str, keys: &Path, args: &[&str]) -> Output {
    Command::new(udprelay_bin())
        .args(["key", action, "--keys", keys.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run udprelay")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Checks success and returns the credential on the last line of stdout.
fn credential_of(out: &Output) -> Credential {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let last = stdout.lines().last().expect("a line on stdout");
    last.parse()
        .unwrap_or_else(|e| panic!("{last:?} is not a credential: {e}"))
}

#[test]
fn key_new_and_derive_give_credentials_the_key_file_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");

    let first = credential_of(&key_cmd(
        "new",
        &keys,
        &["sensor-7", "--publish", "sensors.>"],
    ));
    let mode = fs::metadata(&keys).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    assert_eq!((first.id, first.expires), (1, 0));

    // The operator annotates the file; the next key keeps what they wrote.
    let annotated = format!(
        "# sensors in hall 3\n{}",
        fs::read_to_string(&keys).unwrap()
    );
    fs::write(&keys, &annotated).unwrap();
    let second = credential_of(&key_cmd(
        "new",
        &keys,
        &[
            "dashboard",
            "--subscribe",
            ">",
            "--deny-subscribe",
            "admin.>",
            "--admin",
        ],
    ));
    assert_eq!((second.id, second.expires), (2, 0));
    assert!(fs::read_to_string(&keys).unwrap().starts_with(&annotated));

    let file = KeyFile::load(&keys).unwrap();
    let now = unix_now();
    let (key, secret) = file.secret_for(first.id, first.expires, now).unwrap();
    assert_eq!(key.name(), "sensor-7");
    assert_eq!(secret, first.secret);
    assert!(key.permissions().publish("sensors.hall3.temp").is_ok());
    assert!(key.permissions().subscribe("sensors.hall3.temp").is_err());
    let (key, secret) = file.secret_for(second.id, 0, now).unwrap();
    assert_eq!(secret, second.secret);
    assert!(key.permissions().admin);
    assert!(key.permissions().subscribe("admin.users").is_err());
    assert_ne!(first.secret, second.secret);

    let before = unix_now();
    let derived = credential_of(&key_cmd("derive", &keys, &["sensor-7", "--expires", "1h"]));
    let after = unix_now();
    assert_eq!(derived.id, first.id);
    assert!(
        (before + 3600..=after + 3600).contains(&derived.expires),
        "expires {} not an hour after {before}..{after}",
        derived.expires
    );
    assert_ne!(derived.secret, first.secret);
    let (_, secret) = file
        .secret_for(derived.id, derived.expires, derived.expires - 1)
        .unwrap();
    assert_eq!(secret, derived.secret);
    assert_eq!(
        file.secret_for(derived.id, derived.expires, derived.expires)
            .unwrap_err(),
        AuthError::Expired {
            id: derived.id,
            expires: derived.expires,
            now: derived.expires
        }
    );

    // `key ls` shows names, ids and permissions, and no secret in any form.
    let ls = key_cmd("ls", &keys, &[]);
    assert!(ls.status.success());
    let listing = String::from_utf8(ls.stdout).unwrap();
    assert!(listing.contains("sensor-7") && listing.contains("dashboard"));
    assert!(listing.contains("sensors.>") && listing.contains("admin.>"));
    let text = fs::read_to_string(&keys).unwrap();
    for line in text.lines().filter(|l| l.starts_with("secret = ")) {
        let base64 = line.trim_start_matches("secret = ").trim_matches('"');
        assert!(!listing.contains(base64), "{listing}");
    }
    for credential in [&first, &second] {
        let url_safe = credential
            .to_string()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        assert!(!listing.contains(&url_safe), "{listing}");
    }
}

#[test]
fn a_duplicate_or_invalid_new_key_leaves_the_file_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    credential_of(&key_cmd("new", &keys, &["a"]));
    let before = fs::read(&keys).unwrap();
    for args in [&["a"][..], &["b", "--publish", "x.>.y"], &[""]] {
        let out = key_cmd("new", &keys, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(fs::read(&keys).unwrap(), before, "{args:?}");
    }
}

#[test]
fn a_broken_key_file_is_one_clear_line_and_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    credential_of(&key_cmd(
        "new",
        &keys,
        &["sensor-7", "--publish", "sensors.>"],
    ));
    credential_of(&key_cmd("new", &keys, &["dashboard"]));
    let good = fs::read_to_string(&keys).unwrap();
    let secret_line = good.lines().find(|l| l.starts_with("secret = ")).unwrap();
    let cases = [
        (
            good.replace("admin = false", "admin = false\nowner = \"ops\""),
            "key \"sensor-7\" (entry 1): unknown field `owner`",
        ),
        (
            good.replace("publish = [\"sensors.>\"]", "publish = [\"sensors.>.x\"]"),
            "key \"sensor-7\" (entry 1): field publish: invalid pattern",
        ),
        (
            good.replace("id = 2", "id = 1"),
            "key \"dashboard\" (entry 2): field id: 1 is already the id of key \"sensor-7\"",
        ),
        (
            good.replace(secret_line, "secret = \"c2hvcnQ=\""),
            "key \"sensor-7\" (entry 1): field secret: must be 32 bytes in base64",
        ),
        (
            good.replace(
                "[[key]]\nname = \"dashboard\"",
                "[[key]\nname = \"dashboard\"",
            ),
            "line 11, column",
        ),
    ];
    for (text, expected) in cases {
        fs::write(&keys, &text).unwrap();
        for (action, args) in [
            ("ls", &[][..]),
            ("derive", &["sensor-7", "--expires", "1h"]),
            ("new", &["third"]),
        ] {
            let out = key_cmd(action, &keys, args);
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert!(!out.status.success(), "{action}: {text}");
            assert!(out.stdout.is_empty(), "{action}: nothing on stdout");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            let want = format!("udprelay: {}: {expected}", keys.display());
            assert!(
                stderr.starts_with(&want),
                "{action}: want {want:?}, got {stderr:?}"
            );
            for l in text.lines().filter(|l| l.starts_with("secret = ")) {
                let secret = l.trim_start_matches("secret = ").trim_matches('"');
                assert!(!stderr.contains(secret), "{stderr}");
            }
        }
        assert_eq!(fs::read_to_string(&keys).unwrap(), text, "left as it was");
    }
}
