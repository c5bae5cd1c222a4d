//! The log against the real filesystem, in temporary directories.

use super::segment::{self, RECORD_HEADER, SEGMENT_HEADER, Segment, align8};
use super::*;

fn config() -> LogConfig {
    LogConfig::default()
}

fn payload(i: u64) -> Vec<u8> {
    // Varying sizes so records do not all line up the same way.
    format!("message-{i}-{}", "x".repeat((i % 13) as usize)).into_bytes()
}

fn all(log: &mut ChannelLog, from: u64) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    log.scan(from, |r| {
        out.push((r.offset, r.payload.to_vec()));
        true
    })
    .unwrap();
    out
}

fn open_one(
    dir: &Path,
    config: LogConfig,
    truncate: bool,
) -> Result<(ChannelLog, Recovery), LogError> {
    let data = DataDir::open(dir, config)?;
    let names: Vec<String> = if truncate { vec!["c".into()] } else { vec![] };
    let mut opened = data.open_channels(&names)?;
    assert_eq!(opened.len(), 1);
    opened.pop().unwrap().log
}

#[test]
fn appended_records_survive_reopen_and_offsets_continue() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let data = DataDir::open(tmp.path(), config()).unwrap();
        let mut log = data.create_channel("c").unwrap();
        for i in 0..100 {
            assert_eq!(log.append(1000 + i, None, &payload(i)).unwrap(), i);
        }
    }
    let (mut log, recovery) = open_one(tmp.path(), config(), false).unwrap();
    assert_eq!(recovery, Recovery::default());
    assert_eq!(log.next_offset(), 100);
    let records = all(&mut log, 0);
    assert_eq!(records.len(), 100);
    for (i, (offset, p)) in records.iter().enumerate() {
        assert_eq!(*offset, i as u64);
        assert_eq!(*p, payload(i as u64));
    }
    assert_eq!(log.append(0, None, b"next").unwrap(), 100);
}

#[test]
fn scan_finds_any_offset_across_rolled_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_size: 8192,
        ..config()
    };
    let data = DataDir::open(tmp.path(), cfg.clone()).unwrap();
    let mut log = data.create_channel("c").unwrap();
    for i in 0..2000 {
        log.append(i, None, &payload(i)).unwrap();
    }
    assert!(log.stats().segments > 10, "{:?}", log.stats());
    for from in [0, 1, 77, 500, 1234, 1999] {
        let got = all(&mut log, from);
        assert_eq!(got.len() as u64, 2000 - from);
        assert_eq!(got[0], (from, payload(from)));
    }
    assert!(all(&mut log, 2000).is_empty());
    // A fresh open indexes sealed segments lazily and finds the same.
    drop(log);
    drop(data);
    let (mut log, _) = open_one(tmp.path(), cfg, false).unwrap();
    assert_eq!(all(&mut log, 1500)[0], (1500, payload(1500)));
    let mut stop_after_three = 0;
    let next = log
        .scan(10, |_| {
            stop_after_three += 1;
            stop_after_three < 3
        })
        .unwrap();
    assert_eq!(
        next, 12,
        "scan returns the offset of the record it stopped at"
    );
}

/// Writes `n` records to a fresh channel and returns the directory, the path
/// of its only segment and each record's (start, unpadded length).
fn written(n: u64) -> (tempfile::TempDir, PathBuf, Vec<(usize, usize)>) {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path(), config()).unwrap();
    let mut log = data.create_channel("c").unwrap();
    let mut spans = Vec::new();
    let mut pos = SEGMENT_HEADER;
    for i in 0..n {
        log.append(i, None, &payload(i)).unwrap();
        let len = RECORD_HEADER + payload(i).len();
        spans.push((pos, len));
        pos += align8(len);
    }
    let seg = tmp.path().join("channels/c/00000000000000000000.seg");
    assert!(seg.exists());
    (tmp, seg, spans)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn cutting_the_tail_anywhere_keeps_exactly_the_whole_records() {
    let (tmp, _, spans) = written(20);
    let last3 = spans[17].0;
    let end = spans[19].0 + align8(spans[19].1);
    for cut in last3..=end {
        let case = tempfile::tempdir().unwrap();
        copy_dir(tmp.path(), case.path());
        let seg = case.path().join("channels/c/00000000000000000000.seg");
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(cut as u64).unwrap();
        drop(file);

        let whole = spans.iter().filter(|(p, l)| p + l <= cut).count() as u64;
        let torn = spans.iter().any(|(p, l)| *p < cut && cut < p + l);
        let (problems, _) = inspect::verify(case.path()).unwrap();
        assert_eq!(!problems.is_empty(), torn, "cut at {cut}: {problems:?}");

        let (mut log, recovery) =
            open_one(case.path(), config(), false).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(log.next_offset(), whole, "cut at {cut}");
        assert_eq!(
            recovery.damage_at.is_some(),
            torn,
            "cut at {cut}: {recovery:?}"
        );
        let records = all(&mut log, 0);
        assert_eq!(records.len() as u64, whole);
        assert_eq!(records.last().map(|r| r.0), whole.checked_sub(1));
        // The log is whole again: appends continue at the next offset, and
        // a second open finds nothing to repair.
        assert_eq!(log.append(0, None, b"after").unwrap(), whole);
        drop(log);
        let (log, recovery) = open_one(case.path(), config(), false).unwrap();
        assert_eq!(recovery, Recovery::default(), "cut at {cut}");
        assert_eq!(log.next_offset(), whole + 1);
        assert!(inspect::verify(case.path()).unwrap().0.is_empty());
    }
}

#[test]
fn flipped_bits_keep_the_valid_prefix_and_refuse_damage_in_the_middle() {
    let (tmp, _, spans) = written(12);
    let first = spans[9].0;
    let end = spans[11].0 + align8(spans[11].1);
    for byte in first..end {
        for bit in 0..8 {
            let case = tempfile::tempdir().unwrap();
            copy_dir(tmp.path(), case.path());
            let seg = case.path().join("channels/c/00000000000000000000.seg");
            let mut bytes = std::fs::read(&seg).unwrap();
            bytes[byte] ^= 1 << bit;
            std::fs::write(&seg, &bytes).unwrap();

            let (j, &(pos, len)) = spans
                .iter()
                .enumerate()
                .find(|(_, (p, l))| *p <= byte && byte < p + align8(*l))
                .unwrap();
            let what = format!("bit {bit} of byte {byte} (record {j})");
            let (problems, _) = inspect::verify(case.path()).unwrap();
            if byte >= pos + len {
                // Padding is not part of the record: nothing is damaged.
                assert!(problems.is_empty(), "{what}: {problems:?}");
                let (log, _) = open_one(case.path(), config(), false).unwrap();
                assert_eq!(log.next_offset(), 12, "{what}");
                continue;
            }
            assert!(!problems.is_empty(), "{what}: verify saw nothing");
            if j == spans.len() - 1 {
                let (mut log, recovery) = open_one(case.path(), config(), false).unwrap();
                assert_eq!(log.next_offset(), j as u64, "{what}");
                assert_eq!(recovery.damage_at, Some(pos), "{what}");
                assert_eq!(all(&mut log, 0).len(), j);
            } else {
                match open_one(case.path(), config(), false) {
                    Err(LogError::MidLogCorruption { position, .. }) => {
                        assert_eq!(position, pos, "{what}")
                    }
                    other => panic!("{what}: expected mid-log corruption, got {other:?}"),
                }
                assert!(
                    problems[0].reason.contains("mid-log"),
                    "{what}: {problems:?}"
                );
                // The operator's choice: cut everything from the damage on.
                let (log, recovery) = open_one(case.path(), config(), true).unwrap();
                assert!(recovery.truncated_corruption, "{what}");
                assert_eq!(log.next_offset(), j as u64, "{what}");
            }
        }
    }
}

#[test]
fn retention_by_bytes_deletes_whole_oldest_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_size: 4096,
        retain_bytes: Some(3 * 4096),
        ..config()
    };
    let data = DataDir::open(tmp.path(), cfg).unwrap();
    let mut log = data.create_channel("c").unwrap();
    for i in 0..1000 {
        log.append(i, None, &payload(i)).unwrap();
        log.enforce_retention(i).unwrap();
    }
    let stats = log.stats();
    assert!(stats.bytes <= 3 * 4096, "{stats:?}");
    let first = log.first_offset();
    assert!(first > 0);
    let records = all(&mut log, 0);
    assert_eq!(
        records[0].0, first,
        "a scan from 0 starts at the first retained offset"
    );
    assert_eq!(records.len() as u64, 1000 - first);
    let files = std::fs::read_dir(tmp.path().join("channels/c"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert_eq!(files, stats.segments, "deleted segments leave no file");
}

#[test]
fn retention_by_age_uses_the_newest_record_of_a_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_size: 4096,
        retain_age: Some(Duration::from_secs(10)),
        ..config()
    };
    let data = DataDir::open(tmp.path(), cfg).unwrap();
    let mut log = data.create_channel("c").unwrap();
    let sec = 1_000_000_000u64;
    for i in 0..200 {
        log.append(i * sec / 10, None, &payload(i)).unwrap(); // 10 records a second
    }
    let before = log.stats().segments;
    // At t = 20 s, records up to t = 10 s are too old.
    let deleted = log.enforce_retention(20 * sec).unwrap();
    assert!(deleted > 0 && deleted < before);
    let first = log.first_offset();
    // Record k was written at k/10 s: the deleted segments ended before 10 s,
    // so the first kept offset is at most 100.
    assert!(first > 0 && first <= 100, "first kept offset {first}");
    assert_eq!(all(&mut log, 0)[0].0, first);
    // Much later, everything but the segment being written goes.
    log.enforce_retention(1000 * sec).unwrap();
    assert_eq!(log.stats().segments, 1);
    assert!(first > 0);
}

#[test]
fn a_data_directory_has_one_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = DataDir::open(tmp.path(), config()).unwrap();
    match DataDir::open(tmp.path(), config()) {
        Err(LogError::Locked(p)) => assert_eq!(p, tmp.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn impossible_allocation_is_an_error_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Segment::create(tmp.path(), 0, 1 << 46).unwrap_err();
    assert!(
        matches!(err, LogError::NoSpace(_) | LogError::Io { .. }),
        "{err:?}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "no half-made segment is left behind");
}

#[test]
fn a_failed_roll_leaves_the_stored_records_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_size: 4096,
        ..config()
    };
    let data = DataDir::open(tmp.path(), cfg).unwrap();
    let mut log = data.create_channel("c").unwrap();
    let mut n = 0;
    while log.stats().segments == 1 {
        log.append(n, None, &payload(n)).unwrap();
        n += 1;
    }
    // Take the directory away: the next roll cannot create its file.
    let sealed_records = log.first_offset();
    std::fs::remove_dir_all(tmp.path().join("channels/c")).unwrap();
    let mut failures = 0;
    for i in 0..200 {
        if log.append(i, None, &payload(i)).is_err() {
            failures += 1;
        }
    }
    assert!(failures > 0, "a roll must have failed");
    let before = log.next_offset();
    assert_eq!(all(&mut log, 0).len() as u64, before - sealed_records);
}

#[test]
fn channel_names_become_safe_directory_names() {
    assert_eq!(escape_channel("news"), "news");
    assert_eq!(escape_channel("a/b"), "a%2Fb");
    assert_eq!(escape_channel(".."), "%2E.");
    assert_eq!(escape_channel(".hidden"), "%2Ehidden");
    assert_eq!(escape_channel("ü"), "%C3%BC");
    let long = "é".repeat(120);
    let escaped = escape_channel(&long);
    assert!(escaped.len() <= 200, "{}", escaped.len());
    assert_ne!(escaped, escape_channel(&"é".repeat(121)));
    assert!(!escaped.contains('/'));
}

#[test]
fn fsync_modes_parse() {
    assert_eq!("none".parse(), Ok(FsyncMode::None));
    assert_eq!("always".parse(), Ok(FsyncMode::Always));
    assert_eq!(
        "interval=50".parse(),
        Ok(FsyncMode::Interval(Duration::from_millis(50)))
    );
    assert!("interval=0".parse::<FsyncMode>().is_err());
    assert!("sometimes".parse::<FsyncMode>().is_err());
}

/// A closed log of `n` records in 4 KiB segments; returns the directory and
/// the channel's directory.
fn several_segments(n: u64) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path(), small_segments()).unwrap();
    let mut log = data.create_channel("c").unwrap();
    for i in 0..n {
        log.append(i, None, &payload(i)).unwrap();
    }
    assert!(log.stats().segments >= 4, "{:?}", log.stats());
    let dir = tmp.path().join("channels/c");
    (tmp, dir)
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_size: 4096,
        ..config()
    }
}

/// Flips a bit in the payload of record `i` of segment `seg`; returns the
/// record's position.
fn damage_record(seg: &Path, i: u64) -> usize {
    let mut bytes = std::fs::read(seg).unwrap();
    let needle = format!("message-{i}-");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("record {i} in {}", seg.display()));
    bytes[at + 3] ^= 0x10;
    std::fs::write(seg, &bytes).unwrap();
    at - RECORD_HEADER
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_damaged_record_in_a_sealed_segment_is_never_handed_out_and_is_truncated_on_request() {
    let (tmp, dir) = several_segments(500);
    let files = segment_files(&dir);
    let position = damage_record(&files[0], 20);

    // Start-up reads only the newest segment: the damage is found on read.
    let (mut log, recovery) = open_one(tmp.path(), small_segments(), false).unwrap();
    assert_eq!(recovery, Recovery::default());
    let mut seen = Vec::new();
    let err = log
        .scan(0, |r| {
            seen.push(r.offset);
            true
        })
        .unwrap_err();
    assert_eq!(
        seen,
        (0..20).collect::<Vec<_>>(),
        "only the records before it"
    );
    match &err {
        LogError::DamagedRecord {
            path,
            position: p,
            offset: 20,
            reason: "checksum mismatch",
        } => assert_eq!((path, *p), (&files[0], position)),
        other => panic!("expected a damaged record, got {other:?}"),
    }
    assert!(err.to_string().contains("--truncate-corrupt"), "{err}");
    // Reading past it from a later offset works, but the channel is noted.
    assert_eq!(all(&mut log, 21).len(), 500 - 21);
    drop(log);

    let (problems, _) = inspect::verify(tmp.path()).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.reason.contains("damaged while serving it")),
        "{problems:?}"
    );
    match open_one(tmp.path(), small_segments(), false) {
        Err(LogError::DamageNoted { note, .. }) => assert!(note.contains("record 20"), "{note}"),
        other => panic!("a restart refuses the channel, got {other:?}"),
    }

    let (mut log, recovery) = open_one(tmp.path(), small_segments(), true).unwrap();
    assert_eq!(recovery.damaged_file.as_ref(), Some(&files[0]));
    assert_eq!(recovery.damage_at, Some(position));
    assert!(recovery.truncated_corruption);
    assert_eq!(recovery.deleted_segments, files.len() - 1);
    assert_eq!(segment_files(&dir), files[..1]);
    assert_eq!(log.next_offset(), 20);
    let kept = all(&mut log, 0);
    assert_eq!(kept.len(), 20);
    assert!(kept.iter().all(|(o, p)| *p == payload(*o)));
    assert_eq!(log.append(0, None, b"after").unwrap(), 20);
    drop(log);

    let (log, recovery) = open_one(tmp.path(), small_segments(), false).unwrap();
    assert_eq!(recovery, Recovery::default(), "the note is gone");
    assert_eq!(log.next_offset(), 21);
    assert!(inspect::verify(tmp.path()).unwrap().0.is_empty());
}

#[test]
fn truncation_drops_a_segment_whose_header_is_damaged_and_everything_after() {
    let (tmp, dir) = several_segments(500);
    let files = segment_files(&dir);
    let mut bytes = std::fs::read(&files[2]).unwrap();
    bytes[0] ^= 0xFF;
    std::fs::write(&files[2], &bytes).unwrap();
    let base2: u64 =
        segment::parse_file_name(&files[2].file_name().unwrap().to_string_lossy()).unwrap();

    assert!(matches!(
        open_one(tmp.path(), small_segments(), false),
        Err(LogError::Corrupt { position: 0, .. })
    ));
    let (mut log, recovery) = open_one(tmp.path(), small_segments(), true).unwrap();
    assert_eq!(recovery.damaged_file.as_ref(), Some(&files[2]));
    assert_eq!(recovery.deleted_segments, files.len() - 2);
    assert_eq!(segment_files(&dir), files[..2]);
    assert_eq!(log.next_offset(), base2);
    assert_eq!(all(&mut log, 0).len() as u64, base2);
    assert_eq!(log.append(0, None, b"after").unwrap(), base2);
    assert_eq!(all(&mut log, base2), [(base2, b"after".to_vec())]);
}

#[test]
fn session_marks_after_the_first_in_a_segment_cost_no_bytes_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mark = |session, seq| {
        Some(SessionMark {
            client: 7,
            session,
            seq,
        })
    };
    let mut b_seq = 0;
    let mut a_seq;
    {
        let data = DataDir::open(tmp.path(), small_segments()).unwrap();
        let mut log = data.create_channel("c").unwrap();
        let body = [b'p'; 40];
        let mut buf = vec![0u8; 1024];
        let plain = segment::write_record(&mut buf, 0, 0, 0, segment::RecordMark::None, &body);
        let full = segment::RecordMark::after(None, mark(1, 1));
        let step = segment::RecordMark::after(mark(1, 1), mark(1, 4));
        assert_eq!(step, segment::RecordMark::Next { step: 3 });
        let full_len = segment::write_record(&mut buf, 0, 0, 0, full, &body);
        let step_len = segment::write_record(&mut buf, 0, 0, 0, step, &body);
        assert!(full_len > step_len, "the first mark is written out");
        assert_eq!(
            plain, step_len,
            "the next costs what an unmarked record does"
        );
        log.append(0, mark(1, 1), &body).unwrap();
        log.append(0, mark(1, 4), &body).unwrap();
        a_seq = 4;
        // Two sessions taking turns, an unmarked record now and then, over
        // several segments.
        for i in 0..300u64 {
            if i % 10 == 3 {
                b_seq += 2;
                log.append(i, mark(2, b_seq), &body).unwrap();
            } else if i % 17 == 0 {
                log.append(i, None, &body).unwrap();
            } else {
                a_seq += 1 + i % 3;
                log.append(i, mark(1, a_seq), &body).unwrap();
            }
        }
        assert!(log.stats().segments >= 4, "{:?}", log.stats());
    }
    // Without the snapshot recovery resolves every segment's steps.
    std::fs::remove_file(
        tmp.path()
            .join("channels/c")
            .join(super::sessions::SNAPSHOT_FILE),
    )
    .unwrap();
    let (mut log, _) = open_one(tmp.path(), small_segments(), false).unwrap();
    assert_eq!(log.session_last_seq(7, 1), Some(a_seq));
    assert_eq!(log.session_last_seq(7, 2), Some(b_seq));
    // After a restart the same session goes on in the same segment.
    log.append(0, mark(1, a_seq + 1), b"after").unwrap();
    log.append(0, mark(1, a_seq + 2), b"after").unwrap();
    drop(log);
    let (log, _) = open_one(tmp.path(), small_segments(), false).unwrap();
    assert_eq!(log.session_last_seq(7, 1), Some(a_seq + 2));
    assert_eq!(log.session_last_seq(7, 2), Some(b_seq));
}

#[test]
fn a_session_step_with_no_full_mark_before_it_is_not_taken_for_a_session() {
    let last = SessionMark {
        client: 1,
        session: 2,
        seq: 10,
    };
    assert_eq!(
        segment::RecordMark::after(Some(last), Some(SessionMark { seq: 12, ..last })),
        segment::RecordMark::Next { step: 2 }
    );
    // Another session, a seq that goes back, or a step too large: in full.
    for other in [
        SessionMark { session: 3, ..last },
        SessionMark { client: 9, ..last },
        SessionMark { seq: 10, ..last },
        SessionMark {
            seq: 10 + segment::MAX_MARK_STEP + 1,
            ..last
        },
    ] {
        assert_eq!(
            segment::RecordMark::after(Some(last), Some(other)),
            segment::RecordMark::Full(other)
        );
    }
    assert!(segment::RecordMark::Next { step: 1 }.resolve(None).is_err());
    // A step written at the head of a segment is refused by no check but
    // resolves to nothing: written by hand, it must not crash recovery.
    let mut buf = vec![0u8; 256];
    segment::write_record(
        &mut buf,
        0,
        0,
        0,
        segment::RecordMark::Next { step: 1 },
        b"x",
    );
    match segment::read_slot(&buf, 0, 0, true) {
        segment::Slot::Record(r, _) => {
            assert_eq!(r.mark, segment::RecordMark::Next { step: 1 });
            assert!(r.mark.resolve(None).is_err());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reader_that_goes_on_where_it_stopped_gets_every_record_across_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    let data = DataDir::open(tmp.path(), small_segments()).unwrap();
    let mut log = data.create_channel("c").unwrap();
    let mut next = 0;
    // Append one, read one from where the last read stopped: the reliable
    // subscriber's pattern, which the scan resumes instead of re-seeking.
    for i in 0..400u64 {
        log.append(i, None, &payload(i)).unwrap();
        let mut got = Vec::new();
        next = log
            .scan(next, |r| {
                got.push((r.offset, r.payload.to_vec()));
                true
            })
            .unwrap();
        assert_eq!(got, [(i, payload(i))]);
        // Now and then a reader elsewhere (a replay from the start of an
        // older segment, or of one record in the middle) in between.
        if i % 37 == 0 {
            assert_eq!(all(&mut log, i / 2)[0], (i / 2, payload(i / 2)));
            let mut one = None;
            log.scan(i / 3, |r| {
                one = Some(r.offset);
                false
            })
            .unwrap();
            assert_eq!(one, Some(i / 3));
        }
    }
    assert!(log.stats().segments >= 4, "{:?}", log.stats());
    assert_eq!(all(&mut log, 0).len(), 400);
}

/// A data directory holding channel "c" with no segment file in it, and
/// that channel's directory.
fn channel_without_segments() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    {
        let data = DataDir::open(tmp.path(), config()).unwrap();
        drop(data.create_channel("c").unwrap());
    }
    let dir = tmp.path().join("channels/c");
    for seg in segment_files(&dir) {
        std::fs::remove_file(seg).unwrap();
    }
    (tmp, dir)
}

#[test]
fn a_segment_named_at_the_last_offset_is_refused_not_overflowed() {
    // Found by the log_recovery fuzz target: offsets reaching 2^64 - 1
    // overflowed, in recovery's walk and in the next append.
    let (tmp, dir) = channel_without_segments();
    for base in [u64::MAX - 1, u64::MAX] {
        // One record at base, written as the log writes it.
        let seg = Segment::create(&dir, base, 4096).unwrap();
        drop(seg);
        let path = segment_files(&dir).pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        segment::write_record(
            &mut bytes,
            SEGMENT_HEADER,
            base,
            1,
            segment::RecordMark::None,
            b"x",
        );
        std::fs::write(&path, &bytes).unwrap();
        match open_one(tmp.path(), config(), false) {
            Ok((mut log, _)) => {
                // Whatever recovery kept, appending must refuse, not wrap.
                while log.next_offset() < u64::MAX {
                    log.append(1, None, b"y").unwrap();
                }
                assert!(log.append(1, None, b"z").is_err());
                assert!(all(&mut log, 0).iter().all(|(o, _)| *o >= base));
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn a_damage_note_with_nothing_stored_is_dropped_not_kept_for_later() {
    // Found by the log_recovery fuzz target: the note was ignored while the
    // channel had no segment, then refused it at the start after the first
    // append.
    let (tmp, dir) = channel_without_segments();
    std::fs::write(dir.join(recovery::DAMAGE_NOTE), "damaged once\n").unwrap();
    let (mut log, _) = open_one(tmp.path(), config(), false).unwrap();
    log.append(1, None, b"after").unwrap();
    drop(log);
    let (mut log, _) = open_one(tmp.path(), config(), false).expect("served after a restart");
    assert_eq!(all(&mut log, 0), [(0, b"after".to_vec())]);
}
