//! One channel's log: its segments, the sparse index, append, scan, recovery,
//! retention and sync.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::segment::{self, Record, SEGMENT_HEADER, Segment, Slot, read_slot, record_size};
use super::{FsyncMode, LogConfig, LogError};

/// Bytes of log between two sparse index entries.
const INDEX_EVERY: usize = 4096;

/// Where every few KiB of records start in one segment: derived data, built
/// while appending or by walking the segment when first needed.
#[derive(Debug, Default)]
struct SparseIndex {
    /// (offset, position) pairs, ascending.
    entries: Vec<(u64, usize)>,
    /// Position after the last record.
    end: usize,
    /// Timestamp of the last record (0 if none), for retention by age.
    last_timestamp: u64,
}

impl SparseIndex {
    fn note(&mut self, offset: u64, pos: usize, end: usize, timestamp: u64) {
        let last = self.entries.last().map(|&(_, p)| p);
        if last.is_none_or(|p| pos - p >= INDEX_EVERY) {
            self.entries.push((offset, pos));
        }
        self.end = end;
        self.last_timestamp = timestamp;
    }

    /// The indexed position at or before `offset`.
    fn seek(&self, base: u64, offset: u64) -> (u64, usize) {
        match self.entries.partition_point(|&(o, _)| o <= offset) {
            0 => (base, SEGMENT_HEADER),
            i => self.entries[i - 1],
        }
    }
}

/// A segment with its index, once built.
#[derive(Debug)]
struct IndexedSegment {
    segment: Segment,
    index: Option<SparseIndex>,
}

impl IndexedSegment {
    /// Builds the index of a sealed segment by walking its records up to
    /// `end_offset`; a gap or a bad record there is corruption.
    fn ensure_index(&mut self, end_offset: u64) -> Result<&SparseIndex, LogError> {
        if self.index.is_none() {
            let mut index = SparseIndex::default();
            let bytes = self.segment.bytes();
            let (mut offset, mut pos) = (self.segment.base, SEGMENT_HEADER);
            while offset < end_offset {
                match read_slot(bytes, pos, offset, false) {
                    Slot::Record(r, next) => {
                        index.note(offset, pos, next, r.timestamp);
                        offset += 1;
                        pos = next;
                    }
                    Slot::End => return Err(corrupt(&self.segment.path, pos, "records missing")),
                    Slot::Bad(reason) => return Err(corrupt(&self.segment.path, pos, reason)),
                }
            }
            index.end = pos;
            self.index = Some(index);
        }
        Ok(self.index.as_ref().expect("index built above"))
    }
}

fn corrupt(path: &Path, position: usize, reason: &'static str) -> LogError {
    LogError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason,
    }
}

/// What recovery did when a channel was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes of a torn tail that were zeroed (0 when the log ended cleanly).
    pub torn_bytes: usize,
    /// Position of the first bad record, when there was damage.
    pub damage_at: Option<usize>,
    /// True if valid records after the damage were dropped on the operator's
    /// request (mid-log corruption, truncated).
    pub truncated_corruption: bool,
}

/// A sync of a channel's newest segment, to run off the event loop
/// (`fdatasync`, which writes the file's dirty pages whichever mapping dirtied
/// them).
#[derive(Debug, Clone)]
pub struct SyncJob {
    /// The segment file.
    pub file: Arc<File>,
    /// Its path, for errors.
    pub path: PathBuf,
    /// Every record below this offset is on disk once the job succeeds.
    pub durable_to: u64,
}

impl SyncJob {
    /// Runs the sync; returns the offset below which all is durable.
    pub fn run(&self) -> Result<u64, LogError> {
        self.file.sync_data().map_err(|source| LogError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(self.durable_to)
    }
}

/// Bytes and segments a channel's log occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// Segment files.
    pub segments: usize,
    /// Their total size.
    pub bytes: u64,
}

/// The log of one channel.
#[derive(Debug)]
pub struct ChannelLog {
    /// Its directory.
    dir: PathBuf,
    config: LogConfig,
    /// Every segment, oldest first; the last one is appended to.
    segments: VecDeque<IndexedSegment>,
    /// Position in the last segment where the next record goes.
    write_pos: usize,
    /// Offset the next record gets.
    next_offset: u64,
    /// Start of the bytes of the last segment not yet synced.
    dirty_from: Option<usize>,
}

impl ChannelLog {
    /// Creates an empty log in `dir` (which must exist).
    pub(super) fn create(dir: &Path, config: &LogConfig) -> Result<ChannelLog, LogError> {
        let segment = Segment::create(dir, 0, config.first_segment_size(0))?;
        Ok(ChannelLog::assemble(dir, config, VecDeque::new(), segment))
    }

    fn assemble(
        dir: &Path,
        config: &LogConfig,
        mut segments: VecDeque<IndexedSegment>,
        last: Segment,
    ) -> ChannelLog {
        let base = last.base;
        segments.push_back(IndexedSegment {
            segment: last,
            index: Some(SparseIndex {
                end: SEGMENT_HEADER,
                ..SparseIndex::default()
            }),
        });
        ChannelLog {
            dir: dir.to_path_buf(),
            config: config.clone(),
            segments,
            write_pos: SEGMENT_HEADER,
            next_offset: base,
            dirty_from: None,
        }
    }

    /// Opens the log in `dir`, recovering the newest segment: records are
    /// checked from its start (the checkpoint: older segments were complete
    /// when they were sealed), a torn tail is zeroed, and valid records after
    /// damage are mid-log corruption, refused unless `truncate_corrupt`.
    pub(super) fn open(
        dir: &Path,
        config: &LogConfig,
        truncate_corrupt: bool,
    ) -> Result<(ChannelLog, Recovery), LogError> {
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|source| LogError::Io {
            path: dir.to_path_buf(),
            source,
        })? {
            let entry = entry.map_err(|source| LogError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.ends_with(".seg.tmp") {
                // A segment whose creation was interrupted: never used.
                let _ = std::fs::remove_file(entry.path());
            } else if let Some(base) = segment::parse_file_name(&file_name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let Some(&last_base) = bases.last() else {
            return Ok((ChannelLog::create(dir, config)?, Recovery::default()));
        };
        let mut sealed = VecDeque::new();
        for &base in &bases[..bases.len() - 1] {
            let segment = Segment::open(&dir.join(segment::file_name(base)), base)?;
            sealed.push_back(IndexedSegment {
                segment,
                index: None,
            });
        }
        let last = Segment::open(&dir.join(segment::file_name(last_base)), last_base)?;
        let mut log = ChannelLog::assemble(dir, config, sealed, last);
        let recovery = log.recover_tail(truncate_corrupt)?;
        Ok((log, recovery))
    }

    fn recover_tail(&mut self, truncate_corrupt: bool) -> Result<Recovery, LogError> {
        let seg = self.segments.back_mut().expect("a log has a segment");
        let mut index = SparseIndex {
            end: SEGMENT_HEADER,
            ..SparseIndex::default()
        };
        let (mut offset, mut pos) = (seg.segment.base, SEGMENT_HEADER);
        let bytes = seg.segment.bytes();
        let damage = loop {
            match read_slot(bytes, pos, offset, true) {
                Slot::Record(r, next) => {
                    index.note(offset, pos, next, r.timestamp);
                    offset += 1;
                    pos = next;
                }
                Slot::End => break None,
                Slot::Bad(reason) => break Some(reason),
            }
        };
        let mut recovery = Recovery::default();
        // Anything non-zero past the last good record is a torn write or damage.
        let last_nonzero = bytes.iter().rposition(|&b| b != 0).unwrap_or(0);
        if damage.is_some() || last_nonzero >= pos {
            let tail_end = last_nonzero + 1;
            let resumes = (pos + 8..tail_end)
                .step_by(8)
                .find(|&q| segment::valid_record_at(bytes, q, offset));
            if let Some(q) = resumes {
                if !truncate_corrupt {
                    return Err(LogError::MidLogCorruption {
                        path: seg.segment.path.clone(),
                        position: pos,
                        resumes_at: q,
                    });
                }
                recovery.truncated_corruption = true;
            }
            recovery.damage_at = Some(pos);
            recovery.torn_bytes = tail_end.saturating_sub(pos);
            let bytes = seg.segment.bytes_mut();
            bytes[pos..tail_end.max(pos)].fill(0);
            seg.segment.sync_range(pos, tail_end.max(pos))?;
        }
        seg.index = Some(index);
        self.write_pos = pos;
        self.next_offset = offset;
        Ok(recovery)
    }

    /// The oldest offset still stored.
    pub fn first_offset(&self) -> u64 {
        self.segments
            .front()
            .map_or(self.next_offset, |s| s.segment.base)
    }

    /// The offset the next appended record gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Segment count and bytes.
    pub fn stats(&self) -> LogStats {
        LogStats {
            segments: self.segments.len(),
            bytes: self
                .segments
                .iter()
                .map(|s| s.segment.capacity() as u64)
                .sum(),
        }
    }

    /// Appends a record and returns its offset. On error nothing was written
    /// and every stored record is intact.
    pub fn append(&mut self, timestamp: u64, payload: &[u8]) -> Result<u64, LogError> {
        let need = record_size(payload.len());
        if self.write_pos + need > self.active().capacity() {
            self.roll(need)?;
        }
        let offset = self.next_offset;
        let pos = self.write_pos;
        let seg = self.segments.back_mut().expect("a log has a segment");
        let end = segment::write_record(seg.segment.bytes_mut(), pos, offset, timestamp, payload);
        if let Some(index) = seg.index.as_mut() {
            index.note(offset, pos, end, timestamp);
        }
        self.write_pos = end;
        self.next_offset += 1;
        self.dirty_from.get_or_insert(pos);
        Ok(offset)
    }

    fn active(&self) -> &Segment {
        &self.segments.back().expect("a log has a segment").segment
    }

    /// Seals the active segment and starts a new one with room for `need`.
    fn roll(&mut self, need: usize) -> Result<(), LogError> {
        if self.config.fsync != FsyncMode::None {
            // A sealed segment is never synced again: finish it now.
            self.sync()?;
        }
        let capacity = self
            .config
            .next_segment_size(self.active().capacity(), need);
        let segment = Segment::create(&self.dir, self.next_offset, capacity)?;
        self.segments.push_back(IndexedSegment {
            segment,
            index: Some(SparseIndex {
                end: SEGMENT_HEADER,
                ..SparseIndex::default()
            }),
        });
        self.write_pos = SEGMENT_HEADER;
        self.dirty_from = None;
        Ok(())
    }

    /// True if appended records are waiting for [`ChannelLog::sync`].
    pub fn is_dirty(&self) -> bool {
        self.dirty_from.is_some()
    }

    /// Writes appended records to disk (msync of the dirty range).
    pub fn sync(&mut self) -> Result<(), LogError> {
        if let Some(from) = self.dirty_from {
            self.active().sync_range(from, self.write_pos)?;
            self.dirty_from = None;
        }
        Ok(())
    }

    /// Hands the unsynced records over to a sync that runs elsewhere (see
    /// [`SyncJob`]); `None` if nothing is waiting. Older segments were synced
    /// when they were sealed.
    pub fn begin_sync(&mut self) -> Option<SyncJob> {
        self.dirty_from.take()?;
        let active = self.active();
        Some(SyncJob {
            file: active.file(),
            path: active.path.clone(),
            durable_to: self.next_offset,
        })
    }

    /// Calls `visit` with each record from offset `from` (or the oldest
    /// stored one, if later) in order, until it returns false or the records
    /// run out. Returns the offset after the last record visited.
    pub fn scan(
        &mut self,
        from: u64,
        mut visit: impl FnMut(Record<'_>) -> bool,
    ) -> Result<u64, LogError> {
        let mut offset = from.max(self.first_offset());
        let next_offset = self.next_offset;
        // The segment holding `offset`: the last whose base is at or below it.
        let mut i = self
            .segments
            .partition_point(|s| s.segment.base <= offset)
            .saturating_sub(1);
        while offset < next_offset && i < self.segments.len() {
            let end_offset = self
                .segments
                .get(i + 1)
                .map_or(next_offset, |s| s.segment.base);
            let seg = &mut self.segments[i];
            let base = seg.segment.base;
            let (mut at, mut pos) = seg.ensure_index(end_offset)?.seek(base, offset);
            let bytes = seg.segment.bytes();
            while at < end_offset {
                let Slot::Record(record, next) = read_slot(bytes, pos, at, false) else {
                    return Err(corrupt(&seg.segment.path, pos, "bad record on read"));
                };
                if at >= offset {
                    if !visit(record) {
                        return Ok(at);
                    }
                    offset = at + 1;
                }
                at += 1;
                pos = next;
            }
            i += 1;
        }
        Ok(offset)
    }

    /// Deletes whole oldest segments while the log is over its byte limit or
    /// they are older than the age limit (never the segment being written).
    /// Returns how many were deleted.
    pub fn enforce_retention(&mut self, now_unix_nanos: u64) -> Result<usize, LogError> {
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let over_bytes = self
                .config
                .retain_bytes
                .is_some_and(|limit| self.stats().bytes > limit);
            let end_offset = self.segments[1].segment.base;
            let too_old = match self.config.retain_age {
                Some(age) => {
                    let last = self.segments[0].ensure_index(end_offset)?.last_timestamp;
                    now_unix_nanos.saturating_sub(last) > age.as_nanos() as u64
                }
                None => false,
            };
            if !over_bytes && !too_old {
                break;
            }
            let oldest = self.segments.pop_front().expect("checked above");
            let path = oldest.segment.path.clone();
            // Unmap before deleting: no slice of it outlives this point.
            drop(oldest);
            std::fs::remove_file(&path).map_err(|source| LogError::Io { path, source })?;
            deleted += 1;
        }
        Ok(deleted)
    }
}
