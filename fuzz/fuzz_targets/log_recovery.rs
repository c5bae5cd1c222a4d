//! Writes arbitrary bytes as the segment files (and sessions snapshot) of
//! one channel in a scratch data directory (the input format is
//! `udprelay_fuzz::log_input`), then:
//!
//! 1. reads them with the offline tools (`udprelay log ls | dump | verify`);
//! 2. opens them as the relay does at start (`DataDir::open`,
//!    `open_channels`), scans the channel from 0, optionally enforces
//!    retention and scans again, appends a record and scans again;
//! 3. if that all went cleanly, opens the directory once more and scans.
//!
//! It checks that nothing panics (failures are `LogError`s), that every
//! record handed out (by `dump` or `scan`) is stored, byte for byte, with a
//! CRC that matches it (found in the files by the harness's own reading of
//! the format, not the library's), that a scan hands out consecutive
//! offsets from the first stored one and, when it succeeds, all of them up
//! to the next offset, that an append lands where the log said it would,
//! and that a log that opened and scanned cleanly opens again holding the
//! same records.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use udprelay::log::{ChannelLog, DataDir, FsyncMode, LogConfig, Record, RecordMark, inspect};
use udprelay_fuzz::log_input::{self, CHANNEL, LogInput, StoredRecords, flag};

/// What the harness appends after recovery.
const APPENDED: &[u8] = b"appended by the fuzz harness";

fuzz_target!(|data: &[u8]| {
    // No known bug is sidestepped: the ones found (fuzz/artifacts/
    // log_recovery: offsets reaching u64::MAX, a DAMAGED note with no
    // segment) are fixed, each with a test in src/log/tests.rs.
    let input = log_input::parse(data);
    let (data_dir, channel_dir) = log_input::write_files(&input);

    // The offline tools take no lock and write nothing: the files as written.
    let stored = StoredRecords::read(&channel_dir);
    let _ = inspect::list(&data_dir);
    let _ = inspect::verify(&data_dir);
    let _ = inspect::dump(&data_dir, CHANNEL, 0, u64::MAX, &mut |r| {
        check_stored(&stored, &r, "log dump")
    });

    let Some(records) = open_and_scan(&data_dir, &channel_dir, &input, true) else {
        return;
    };
    let again = open_and_scan(&data_dir, &channel_dir, &input, false)
        .expect("a log that opened, scanned and took an append cleanly opens and scans again");
    assert_eq!(
        again, records,
        "the log holds other records after a restart"
    );
});

/// A scan's result: first offset, next offset, and each record's offset,
/// timestamp and payload.
type Scanned = (u64, u64, Vec<(u64, u64, Vec<u8>)>);

/// Opens the data directory and the channel, scans it (with `first`:
/// enforces retention if the input asks, scans, appends a record and scans
/// again). `None` if the log refused to open or a scan found damage.
fn open_and_scan(
    data_dir: &Path,
    channel_dir: &Path,
    input: &LogInput<'_>,
    first: bool,
) -> Option<Scanned> {
    let config = LogConfig {
        segment_size: 64 << 10,
        fsync: if input.has(flag::FSYNC) {
            FsyncMode::Interval(std::time::Duration::from_secs(1))
        } else {
            FsyncMode::None
        },
        retain_bytes: input.has(flag::RETENTION).then_some(0),
        retain_age: None,
    };
    let truncate = if input.has(flag::TRUNCATE) {
        vec![CHANNEL.to_string()]
    } else {
        Vec::new()
    };
    let dir = DataDir::open(data_dir, config).expect("the scratch data directory opens");
    let mut opened = dir
        .open_channels(&truncate)
        .expect("the channels directory can be listed");
    assert_eq!(opened.len(), 1, "one channel directory, one channel");
    let channel = opened.pop().expect("one channel");
    assert_eq!(channel.name, CHANNEL);
    let mut log = match channel.log {
        Ok((log, _recovery)) => log,
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
    };
    // Recovery may have zeroed a torn tail or deleted segments: the scan
    // reads the files as they are now.
    let mut scanned = scan(&mut log, &StoredRecords::read(channel_dir))?;
    if !first {
        return Some(scanned);
    }
    if input.has(flag::RETENTION) {
        if let Err(e) = log.enforce_retention(u64::MAX) {
            let _ = e.to_string();
            return None;
        }
        scanned = scan(&mut log, &StoredRecords::read(channel_dir))?;
    }
    let next = log.next_offset();
    match log.append(1, None, APPENDED) {
        Ok(offset) => assert_eq!(
            offset, next,
            "an append took another offset than next_offset"
        ),
        Err(e) => {
            let _ = e.to_string();
            return None;
        }
    }
    let after = scan(&mut log, &StoredRecords::read(channel_dir))
        .expect("a log that scanned cleanly scans cleanly after an append");
    let mut expected = scanned.2;
    expected.push((next, 1, APPENDED.to_vec()));
    assert_eq!(after.2, expected, "an append changed the records before it");
    Some(after)
}

/// Scans `log` from 0, checking every record against the files; `None` if
/// the scan stopped at damage.
fn scan(log: &mut ChannelLog, stored: &StoredRecords) -> Option<Scanned> {
    let (first, next) = (log.first_offset(), log.next_offset());
    assert!(
        first <= next,
        "first offset {first} after next offset {next}"
    );
    let mut records = Vec::new();
    let result = log.scan(0, |r| {
        check_stored(stored, &r, "scan");
        let expected = first.wrapping_add(records.len() as u64);
        assert_eq!(r.offset, expected, "scan skipped or repeated an offset");
        records.push((r.offset, r.timestamp, r.payload.to_vec()));
        true
    });
    match result {
        Ok(end) => {
            assert_eq!(
                end, next,
                "a clean scan from 0 ended before the next offset"
            );
            assert_eq!(
                records.len() as u64,
                next - first,
                "a clean scan missed records"
            );
            Some((first, next, records))
        }
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}

/// Asserts that `record`, handed out by `by`, is stored with a valid CRC.
fn check_stored(stored: &StoredRecords, record: &Record<'_>, by: &str) {
    let mut body = Vec::with_capacity(24 + record.payload.len());
    if let RecordMark::Full(mark) = record.mark {
        body.extend_from_slice(&mark.client.to_le_bytes());
        body.extend_from_slice(&mark.session.to_le_bytes());
        body.extend_from_slice(&mark.seq.to_le_bytes());
    }
    body.extend_from_slice(record.payload);
    assert!(
        stored.holds(record.offset, record.timestamp, record.flags, &body),
        "{by} handed out record {} that is not stored with a valid CRC",
        record.offset
    );
}
