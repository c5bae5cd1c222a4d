//! `udprelay --config FILE` and `udprelay config check|example`, with the
//! real binary: the example file ships complete and runs the relay, a file
//! sets what its keys say, the command line overrides it, and a misspelled
//! key or a bad value is one line naming it.

mod common;

use std::process::Command;

use common::*;

fn config(args: &[&str]) -> std::process::Output {
    Command::new(udprelay_bin())
        .arg("config")
        .args(args)
        .output()
        .expect("udprelay config")
}

fn example_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/udprelay.toml")
}

#[test]
fn the_shipped_example_is_every_key_at_its_default_and_runs_the_relay() {
    let made = config(&["example"]);
    assert!(made.status.success());
    let shipped = std::fs::read_to_string(example_path()).expect("dist/udprelay.toml");
    assert_eq!(
        shipped,
        String::from_utf8_lossy(&made.stdout),
        "dist/udprelay.toml is not what `udprelay config example` prints: write it again"
    );
    // Each commented default, made a setting, is what no file at all gives.
    let dir = tempfile::tempdir().unwrap();
    let uncommented: String = (shipped.lines())
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = ") && !l.ends_with("(none)"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(uncommented.lines().count() >= 20, "{uncommented}");
    let (set, empty) = (dir.path().join("set.toml"), dir.path().join("empty.toml"));
    std::fs::write(&set, &uncommented).unwrap();
    std::fs::write(&empty, "").unwrap();
    let (a, b) = (
        config(&["check", set.to_str().unwrap()]),
        config(&["check", empty.to_str().unwrap()]),
    );
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout)
    );
    // The relay runs on it (the test's own port and directory given on the
    // command line, over the file's).
    let relay = Relay::start(&["--config", example_path().to_str().unwrap()]);
    let mut client = TestClient::new(relay.addr);
    client.publish("news", b"hello");
    assert_eq!(client.stats()["messages_published"], 1);
}

#[test]
fn a_file_sets_what_its_keys_say_and_the_command_line_overrides_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "max-channels = 2\nlease = \"2s\"\nraw-out = [\"feed=127.0.0.1:9\"]\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let checked = config(&["check", path]);
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(said.contains("max-channels = 2\n"), "{said}");
    assert!(said.contains("lease = \"2s\"\n"), "{said}");
    assert!(
        said.contains("raw-out = [\"feed=127.0.0.1:9\"]\n"),
        "{said}"
    );
    // From the file: two channels at most, the raw-out one and one more.
    let relay = Relay::start(&["--config", path]);
    let mut client = TestClient::new(relay.addr);
    client.publish("one", b"x");
    client.publish("two", b"y");
    let stats = client.stats();
    assert_eq!(
        (stats["messages_published"], stats["dropped_limit"]),
        (1, 1)
    );
    drop(relay);
    // The command line wins.
    let relay = Relay::start(&["--config", path, "--max-channels", "5"]);
    let mut client = TestClient::new(relay.addr);
    client.publish("one", b"x");
    client.publish("two", b"y");
    assert_eq!(client.stats()["messages_published"], 2);
}

#[test]
fn a_misspelled_key_or_a_bad_value_is_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "data-dirr = \"/tmp/x\"\n",
            "unknown key `data-dirr` (did you mean `data-dir`?)",
        ),
        (
            "lease = \"forever\"\n",
            "key `lease`: invalid value 'forever'",
        ),
        (
            "allow-anonymous = \"yes\"\n",
            "key `allow-anonymous`: expected true or false",
        ),
        ("raw-out = [\"nonsense\"]\n", "key `raw-out`:"),
        ("listen = \n", "not TOML"),
        ("segment-size = \"1K\"\n", "segment size"),
    ];
    for (i, (text, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("{i}.toml"));
        std::fs::write(&file, text).unwrap();
        for out in [
            config(&["check", file.to_str().unwrap()]),
            Command::new(udprelay_bin())
                .args([
                    "--config",
                    file.to_str().unwrap(),
                    "--listen",
                    "127.0.0.1:0",
                ])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .output()
                .unwrap(),
        ] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{text:?} was taken");
            assert_eq!(stderr.lines().count(), 1, "{text:?}: {stderr}");
            assert!(stderr.contains(want), "{text:?}: {stderr}");
        }
    }
}
