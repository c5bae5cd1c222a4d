//! End to end: the real relay killed with SIGKILL at random moments while a
//! reliable publisher runs, in every durability mode. The publisher rides
//! through each restart, and the log ends holding every message exactly
//! once, in order, at dense offsets. `tools/kill-loop.sh` is the long
//! version (30 kills per mode).

mod common;

use std::process::{Command, Stdio};
use std::thread;

use common::*;
use udprelay::rng::Rng;

const MESSAGES: u64 = 100_000;
const KILLS: usize = 3;

/// How many messages channel `k` holds, as `udprelay log ls` reads them
/// beside the running relay.
fn stored(data: &std::path::Path) -> u64 {
    let out = Command::new(udprelay_bin())
        .args(["log", "ls", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some("k")).then(|| cols.nth(1)?.parse().ok())?
        })
        .unwrap_or(0)
}

fn kill_loop(fsync: &str) {
    let seed = std::env::var("UDPRELAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Rng::from_entropy().next_u64());
    let mut rng = Rng::new(seed);
    let args = ["--fsync", fsync];
    let mut relay = Relay::start(&args);
    let listen = relay.addr_str();
    let input: String = (1..=MESSAGES).map(|i| format!("{i}\n")).collect();
    let mut cmd = Command::new(udpcat_bin());
    cmd.args(["pub", &listen, "k", "--reliable", "--reply-timeout", "30s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut publisher = ChildGuard::spawn("udpcat pub", &mut cmd);
    let mut stdin = publisher.child().stdin.take().unwrap();
    let writer = thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(input.as_bytes());
    });
    // Each kill comes once the log holds a random number more messages,
    // short of the end: in the middle of the run, at no particular moment.
    let mut mid_run = 0;
    let mut target = 0;
    for _ in 0..KILLS {
        target += 1 + rng.below(MESSAGES / (KILLS as u64 + 1));
        let data = relay.data_dir();
        let mut finished = false;
        wait_until("the publisher to store more messages", || {
            finished = publisher.child().try_wait().unwrap().is_some();
            finished || stored(&data) >= target
        });
        if finished {
            break;
        }
        mid_run += 1;
        let dir = relay.kill9();
        relay = Relay::start_at(dir, &listen, &args);
    }
    let out = publisher.output_deadline(DEADLINE);
    writer.join().unwrap();
    assert!(
        mid_run > 0,
        "fsync={fsync} seed={seed}: no kill came mid-run"
    );
    assert!(
        out.status.success(),
        "fsync={fsync} seed={seed}: the publisher failed: {}\nrelay:\n{}",
        String::from_utf8_lossy(&out.stderr),
        relay.stderr()
    );
    let (status, _, dir) = relay.terminate();
    assert!(status.success());
    let dump = Command::new(udprelay_bin())
        .args(["log", "dump", "k", "--format", "json", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(dump.status.success());
    let records = json_lines(&dump.stdout);
    let offsets: Vec<u64> = records
        .iter()
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    let payloads: Vec<u64> = records
        .iter()
        .map(|r| r["payload"].as_str().unwrap().parse().unwrap())
        .collect();
    let stored_twice = payloads.len() as i64 - MESSAGES as i64;
    assert_eq!(
        offsets,
        (0..records.len() as u64).collect::<Vec<_>>(),
        "fsync={fsync} seed={seed}: offsets are dense"
    );
    assert!(
        payloads == (1..=MESSAGES).collect::<Vec<_>>(),
        "fsync={fsync} seed={seed}: {} stored for {MESSAGES} sent ({stored_twice} extra); every message once, in order",
        payloads.len()
    );
}

#[test]
fn no_message_is_lost_or_stored_twice_across_kills_without_fsync() {
    kill_loop("none");
}

#[test]
fn no_message_is_lost_or_stored_twice_across_kills_with_interval_fsync() {
    kill_loop("interval=10");
}

#[test]
fn no_message_is_lost_or_stored_twice_across_kills_with_fsync_always() {
    kill_loop("always");
}
