//! The `log_recovery` target's input: the files of one channel's directory,
//! and how the harness writes them.
//!
//! ```text
//! flags     1  bit 0 open with --truncate-corrupt for the channel
//!              bit 1 fix each record's CRC before writing (so that the
//!                    fuzzer gets past the checksum to what follows it)
//!              bit 2 fix each record's offset (base, base + 1, ...)
//!              bit 3 a DAMAGED note in the channel directory
//!              bit 4 the bytes after the last segment are the sessions
//!                    snapshot (its CRC fixed too with bit 1)
//!              bit 5 fsync interval (recovery then syncs what it keeps)
//!              bit 6 retention: after the first scan, delete every old
//!                    segment, then scan again
//! count     1  segments: 1 + count % 4
//! each segment:
//!   kind    1  bit 0 the harness writes a valid 32-byte segment header
//!              (the bytes are then the records from byte 32) and bits 1-7
//!              are slack: capacity = header + bytes rounded up to 8
//!              + 64 x slack; bit 0 clear: the bytes are the whole file
//!   base       the first segment: u64 LE; the others: u32 LE added to
//!              the previous base (wrapping)
//!   len     2  u16 LE, then that many bytes
//! rest         the sessions snapshot, with flag bit 4
//! ```
//!
//! A capacity field over [`MAX_CAPACITY`] in a file from the input is cut
//! down before the file is written: recovery allocates a segment shorter
//! than its header says to the full size, and the scratch directory is on
//! a shared disk.

use crate::scratch_dir;
use std::path::{Path, PathBuf};

/// Bytes of a segment header.
pub const SEGMENT_HEADER: usize = 32;
/// Bytes of a record header.
pub const RECORD_HEADER: usize = 28;
/// Largest segment capacity the harness lets a header claim.
pub const MAX_CAPACITY: u64 = 1 << 20;
/// The channel every input is for.
pub const CHANNEL: &str = "fuzz";

/// Flag bits of the first byte.
pub mod flag {
    /// Open with `--truncate-corrupt`.
    pub const TRUNCATE: u8 = 1;
    /// Fix record (and snapshot) CRCs.
    pub const FIX_CRC: u8 = 2;
    /// Fix record offsets.
    pub const FIX_OFFSETS: u8 = 4;
    /// Write a DAMAGED note.
    pub const DAMAGED: u8 = 8;
    /// The rest of the input is a sessions snapshot.
    pub const SNAPSHOT: u8 = 16;
    /// Open with fsync interval.
    pub const FSYNC: u8 = 32;
    /// Enforce retention between scans.
    pub const RETENTION: u8 = 64;
}

/// One segment file of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInput<'a> {
    /// The base offset in the file name (and the made header).
    pub base: u64,
    /// `Some(slack)`: the harness writes the header, with capacity slack
    /// of 64 x slack bytes; `None`: `bytes` is the whole file.
    pub header: Option<u8>,
    /// The records (with a made header) or the whole file.
    pub bytes: &'a [u8],
}

/// A parsed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogInput<'a> {
    /// The flag byte (see [`flag`]).
    pub flags: u8,
    /// The segments, in input order.
    pub segments: Vec<SegmentInput<'a>>,
    /// The sessions snapshot, if flagged.
    pub snapshot: Option<&'a [u8]>,
}

impl LogInput<'_> {
    /// True if `bit` (one of [`flag`]) is set.
    pub fn has(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }
}

/// Reads an input.
pub fn parse(data: &[u8]) -> LogInput<'_> {
    let mut rest = data;
    let flags = take(&mut rest, 1).first().copied().unwrap_or(0);
    let count = 1 + take(&mut rest, 1).first().copied().unwrap_or(0) % 4;
    let mut segments = Vec::new();
    let mut base = 0u64;
    for k in 0..count {
        if rest.is_empty() {
            break;
        }
        let kind = take(&mut rest, 1)[0];
        base = if k == 0 {
            u64::from_le_bytes(padded(take(&mut rest, 8)))
        } else {
            let delta = u32::from_le_bytes(padded(take(&mut rest, 4)));
            base.wrapping_add(u64::from(delta))
        };
        let len = u16::from_le_bytes(padded(take(&mut rest, 2)));
        let bytes = take(&mut rest, usize::from(len));
        segments.push(SegmentInput {
            base,
            header: (kind & 1 == 1).then_some(kind >> 1),
            bytes,
        });
    }
    let snapshot = (flags & flag::SNAPSHOT != 0).then_some(rest);
    LogInput {
        flags,
        segments,
        snapshot,
    }
}

/// Writes an input in the form [`parse`] reads.
pub fn encode(input: &LogInput<'_>) -> Vec<u8> {
    let mut out = vec![
        input.flags,
        (input.segments.len() as u8).wrapping_sub(1) % 4,
    ];
    let mut prev = 0u64;
    for (k, seg) in input.segments.iter().enumerate() {
        out.push(seg.header.map_or(0, |slack| slack << 1 | 1));
        if k == 0 {
            out.extend_from_slice(&seg.base.to_le_bytes());
        } else {
            let delta = u32::try_from(seg.base.wrapping_sub(prev)).expect("bases close together");
            out.extend_from_slice(&delta.to_le_bytes());
        }
        prev = seg.base;
        let len = u16::try_from(seg.bytes.len()).expect("a segment's bytes fit a u16 length");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(seg.bytes);
    }
    if let Some(snapshot) = input.snapshot {
        out.extend_from_slice(snapshot);
    }
    out
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

fn padded<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out[..bytes.len()].copy_from_slice(bytes);
    out
}

/// The segment file name of `base`: 20 digits and `.seg` (as
/// `udprelay::log::segment::file_name`).
pub fn file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// Writes the channel directory of `input` into a fresh scratch data
/// directory; returns the data directory and the channel directory.
pub fn write_files(input: &LogInput<'_>) -> (PathBuf, PathBuf) {
    let data_dir = scratch_dir("log_recovery");
    let dir = data_dir.join("channels").join(CHANNEL);
    std::fs::create_dir_all(&dir).expect("the channel directory can be made");
    std::fs::write(dir.join("NAME"), CHANNEL).expect("NAME can be written");
    if input.has(flag::DAMAGED) {
        std::fs::write(dir.join("DAMAGED"), "damaged, says the fuzzer\n")
            .expect("DAMAGED can be written");
    }
    for seg in &input.segments {
        let file = segment_file(seg, input.has(flag::FIX_OFFSETS), input.has(flag::FIX_CRC));
        // Two segments of one base: the later one wins, as a rename would.
        std::fs::write(dir.join(file_name(seg.base)), file).expect("a segment can be written");
    }
    if let Some(snapshot) = input.snapshot {
        let mut snapshot = snapshot.to_vec();
        if input.has(flag::FIX_CRC) {
            fix_snapshot_crc(&mut snapshot);
        }
        std::fs::write(dir.join("sessions"), snapshot).expect("the snapshot can be written");
    }
    (data_dir, dir)
}

/// The bytes of one segment file.
fn segment_file(seg: &SegmentInput<'_>, fix_offsets: bool, fix_crc: bool) -> Vec<u8> {
    let mut file = match seg.header {
        Some(slack) => {
            let mut file = vec![0u8; SEGMENT_HEADER];
            file[..8].copy_from_slice(b"URSEG\0\0\x01");
            file[8..16].copy_from_slice(&seg.base.to_le_bytes());
            file.extend_from_slice(seg.bytes);
            let capacity =
                align8(file.len()).max(SEGMENT_HEADER + RECORD_HEADER) + 64 * usize::from(slack);
            file[16..24].copy_from_slice(&(capacity as u64).to_le_bytes());
            file
        }
        None => {
            let mut file = seg.bytes.to_vec();
            if let Some(field) = file.get_mut(16..24) {
                let capacity = u64::from_le_bytes(field.try_into().expect("8 bytes"));
                if capacity > MAX_CAPACITY {
                    field.copy_from_slice(&(capacity % MAX_CAPACITY).to_le_bytes());
                }
            }
            file
        }
    };
    if fix_offsets || fix_crc {
        fix_records(&mut file, seg.base, fix_offsets, fix_crc);
    }
    file
}

/// Walks the records from byte 32 as the format says (length, CRC, offset,
/// ...), setting each one's offset and CRC, until a length that is zero,
/// too short or runs past the end.
pub fn fix_records(file: &mut [u8], base: u64, fix_offsets: bool, fix_crc: bool) {
    let mut pos = SEGMENT_HEADER;
    let mut offset = base;
    while pos + RECORD_HEADER <= file.len() {
        let length = u32::from_le_bytes(file[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        if length < RECORD_HEADER || pos + length > file.len() {
            break;
        }
        if fix_offsets {
            file[pos + 8..pos + 16].copy_from_slice(&offset.to_le_bytes());
        }
        if fix_crc {
            let crc = record_crc(&file[pos..pos + 4], &file[pos + 8..pos + length]);
            file[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        }
        offset = offset.wrapping_add(1);
        pos += align8(length);
    }
}

/// The CRC of a record, as the format defines it: CRC-32 of its length
/// field, then of everything after the CRC field.
pub fn record_crc(length: &[u8], rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(length);
    h.update(rest);
    h.finalize()
}

/// Sets the CRC of a sessions snapshot (bytes 20..24: CRC-32 of the
/// 24-byte header with that field zero, then of the entries).
fn fix_snapshot_crc(snapshot: &mut [u8]) {
    if snapshot.len() < 24 {
        return;
    }
    snapshot[20..24].fill(0);
    let crc = crc32fast::hash(snapshot);
    snapshot[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// Rounds up to 8.
pub fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Every checksummed record in a set of segment files, found without the
/// library's reader: the oracle that a record handed out was stored as it
/// is. Records are looked up by their bytes: length, CRC (computed here),
/// offset, timestamp, flags, body.
#[derive(Debug, Default)]
pub struct StoredRecords {
    /// The files' bytes.
    files: Vec<(PathBuf, Vec<u8>)>,
    /// First 8 bytes (length and CRC) at each 8-aligned position from byte
    /// 32, to (file, position).
    heads: std::collections::HashMap<[u8; 8], Vec<(usize, usize)>>,
}

impl StoredRecords {
    /// Reads every `*.seg` file of `dir`.
    pub fn read(dir: &Path) -> StoredRecords {
        let mut stored = StoredRecords::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return stored;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "seg")
                && let Ok(bytes) = std::fs::read(&path)
            {
                stored.files.push((path, bytes));
            }
        }
        for (f, (_, bytes)) in stored.files.iter().enumerate() {
            let mut pos = SEGMENT_HEADER;
            while pos + 8 <= bytes.len() {
                let head: [u8; 8] = bytes[pos..pos + 8].try_into().expect("8 bytes");
                if head[..4] != [0; 4] {
                    stored.heads.entry(head).or_default().push((f, pos));
                }
                pos += 8;
            }
        }
        stored
    }

    /// True if a record with these fields and `body` (session mark, if
    /// any, and payload) is stored with a CRC that matches it.
    pub fn holds(&self, offset: u64, timestamp: u64, flags: u32, body: &[u8]) -> bool {
        let length = (RECORD_HEADER + body.len()) as u32;
        let mut rest = Vec::with_capacity(20 + body.len());
        rest.extend_from_slice(&offset.to_le_bytes());
        rest.extend_from_slice(&timestamp.to_le_bytes());
        rest.extend_from_slice(&flags.to_le_bytes());
        rest.extend_from_slice(body);
        let crc = record_crc(&length.to_le_bytes(), &rest);
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&length.to_le_bytes());
        head[4..].copy_from_slice(&crc.to_le_bytes());
        self.heads.get(&head).is_some_and(|places| {
            places.iter().any(|&(f, pos)| {
                let bytes = &self.files[f].1;
                bytes.get(pos + 8..pos + length as usize) == Some(&rest[..])
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_inputs_parse_back() {
        let input = LogInput {
            flags: flag::FIX_CRC | flag::SNAPSHOT,
            segments: vec![
                SegmentInput {
                    base: 7,
                    header: Some(3),
                    bytes: b"records",
                },
                SegmentInput {
                    base: 19,
                    header: None,
                    bytes: b"URSEG\0\0\x01",
                },
            ],
            snapshot: Some(b"URSESS"),
        };
        assert_eq!(parse(&encode(&input)), input);
    }
}
