//! The sparse offset index of a segment: derived data, built while appending,
//! by recovery, or by walking a sealed segment when it is first read.

use std::path::Path;

use super::LogError;
use super::segment::{self, SEGMENT_HEADER, Segment, SliceReader};

/// Bytes of log between two sparse index entries.
const INDEX_EVERY: usize = 4096;

/// Where every few KiB of records start in one segment.
#[derive(Debug)]
pub(super) struct SparseIndex {
    /// (offset, position) pairs, ascending.
    entries: Vec<(u64, usize)>,
    /// Position after the last record.
    pub(super) end: usize,
    /// Timestamp of the last record (0 if none), for retention by age.
    pub(super) last_timestamp: u64,
}

impl Default for SparseIndex {
    fn default() -> Self {
        SparseIndex {
            entries: Vec::new(),
            end: SEGMENT_HEADER,
            last_timestamp: 0,
        }
    }
}

impl SparseIndex {
    /// Records that the record `offset` spans `pos..end`.
    pub(super) fn note(&mut self, offset: u64, pos: usize, end: usize, timestamp: u64) {
        let last = self.entries.last().map(|&(_, p)| p);
        if last.is_none_or(|p| pos - p >= INDEX_EVERY) {
            self.entries.push((offset, pos));
        }
        self.end = end;
        self.last_timestamp = timestamp;
    }

    /// The indexed position at or before `offset`.
    pub(super) fn seek(&self, base: u64, offset: u64) -> (u64, usize) {
        match self.entries.partition_point(|&(o, _)| o <= offset) {
            0 => (base, SEGMENT_HEADER),
            i => self.entries[i - 1],
        }
    }
}

/// Walks the records of `segment` up to `stop_at` (exclusive), indexing
/// them. With `check_crc` false only the structure is checked.
pub(super) fn index_records(
    segment: &Segment,
    stop_at: Option<u64>,
    check_crc: bool,
) -> (SparseIndex, segment::WalkEnd) {
    let mut index = SparseIndex::default();
    let mut reader = SliceReader {
        bytes: segment.bytes(),
        check_crc,
    };
    let end = segment::walk(&mut reader, segment.base, stop_at, &mut |r, pos| {
        let next = pos + segment::record_size(r.payload.len());
        index.note(r.offset, pos, next, r.timestamp);
        true
    });
    index.end = end.pos;
    (index, end)
}

/// A segment with its index, once built.
#[derive(Debug)]
pub(super) struct IndexedSegment {
    /// The mapped file.
    pub(super) segment: Segment,
    /// `None` for a sealed segment not read yet.
    pub(super) index: Option<SparseIndex>,
}

impl IndexedSegment {
    /// A segment whose records are all indexed (none, for a new one).
    pub(super) fn indexed(segment: Segment, index: SparseIndex) -> IndexedSegment {
        IndexedSegment {
            segment,
            index: Some(index),
        }
    }

    /// Builds the index of a sealed segment by walking its records up to
    /// `end_offset` (structure only: every record handed out is checksummed
    /// when it is read); a gap or a bad record there is corruption.
    pub(super) fn ensure_index(&mut self, end_offset: u64) -> Result<&SparseIndex, LogError> {
        if self.index.is_none() {
            let (index, end) = index_records(&self.segment, Some(end_offset), false);
            if end.next_offset < end_offset {
                let reason = end.bad.unwrap_or("records missing");
                return Err(damaged(
                    &self.segment.path,
                    end.pos,
                    end.next_offset,
                    reason,
                ));
            }
            self.index = Some(index);
        }
        Ok(self.index.as_ref().expect("index built above"))
    }
}

/// A [`LogError::DamagedRecord`]: record `offset` of `path`, at byte `position`.
pub(super) fn damaged(path: &Path, position: usize, offset: u64, reason: &'static str) -> LogError {
    LogError::DamagedRecord {
        path: path.to_path_buf(),
        position,
        offset,
        reason,
    }
}
