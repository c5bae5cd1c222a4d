//! One channel's log: its segments, append, scan, retention and sync.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::{IndexedSegment, SparseIndex, damaged};
use super::recovery::{self, Recovery, RecoveryMode};
use super::segment::{
    self, Record, RecordMark, Segment, SessionMark, SliceReader, Slot, read_slot, record_size,
};
use super::sessions::SessionTable;
use super::{FsyncMode, LogConfig, LogError};

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
    /// How far each reliable publishing session got in this channel.
    sessions: SessionTable,
    /// The mark of the active segment's last marked record: the next one
    /// of the same session is written as a step from it.
    last_mark: Option<SessionMark>,
    /// Where the last scan stopped: a segment's base, an offset in it and
    /// that record's position. A reader that goes on from there (a reliable
    /// subscriber, replay) starts at the record instead of stepping over
    /// the records since the index entry before it.
    resume: Option<(u64, u64, usize)>,
    /// The first offset this process appended. Records below it came from
    /// disk and are checked against their CRC whenever they are read;
    /// records from here on were written by this process through this
    /// mapping, so a reader of the live tail (a reliable subscriber, a
    /// replay of this run) does not pay for a CRC per record. (A bit that
    /// flips on the disk under a page the kernel wrote back, dropped and
    /// read again within one run is not caught; at the next start it is.)
    appended_from: u64,
}

impl ChannelLog {
    /// Creates an empty log in `dir` (which must exist).
    fn create(dir: &Path, config: &LogConfig) -> Result<ChannelLog, LogError> {
        let segment = Segment::create(dir, 0, config.first_segment_size(0))?;
        Ok(ChannelLog {
            dir: dir.to_path_buf(),
            config: config.clone(),
            segments: VecDeque::from([IndexedSegment::indexed(segment, SparseIndex::default())]),
            write_pos: segment::SEGMENT_HEADER,
            next_offset: 0,
            dirty_from: None,
            sessions: SessionTable::default(),
            last_mark: None,
            resume: None,
            appended_from: 0,
        })
    }

    /// Opens the log in `dir` (or creates it, if it has no segment), repaired
    /// as far as `mode` allows (see [`RecoveryMode`]).
    pub(super) fn open(
        dir: &Path,
        config: &LogConfig,
        mode: RecoveryMode,
    ) -> Result<(ChannelLog, Recovery), LogError> {
        let Some(recovered) = recovery::recover(dir, mode, config.first_segment_size(0))? else {
            return Ok((ChannelLog::create(dir, config)?, Recovery::default()));
        };
        let mut log = ChannelLog {
            dir: dir.to_path_buf(),
            config: config.clone(),
            segments: recovered.segments,
            write_pos: recovered.write_pos,
            next_offset: recovered.next_offset,
            dirty_from: None,
            sessions: SessionTable::default(),
            last_mark: None,
            resume: None,
            appended_from: recovered.next_offset,
        };
        log.recover_sessions();
        if config.fsync != FsyncMode::None && log.write_pos > segment::SEGMENT_HEADER {
            // What a killed relay left in the page cache is on disk before
            // anything is acknowledged from it (a restarted session counts
            // its stored messages as acknowledged).
            log.active()
                .sync_range(segment::SEGMENT_HEADER, log.write_pos)?;
        }
        Ok((log, recovered.recovery))
    }

    /// Rebuilds the session table: the snapshot written when the newest
    /// segment was started, then the marks of the records after it. Without
    /// a snapshot (or with a damaged one), every segment's marks.
    fn recover_sessions(&mut self) {
        let snapshot = SessionTable::read_snapshot(&self.dir);
        if snapshot
            .as_ref()
            .is_some_and(|&(_, covers)| covers > self.next_offset)
        {
            // Recovery cut the log below what the snapshot covers: it would
            // count messages that are no longer stored, now or once the log
            // grows past it again.
            let _ = std::fs::remove_file(self.dir.join(super::sessions::SNAPSHOT_FILE));
        }
        let (table, covers) = snapshot
            .filter(|&(_, covers)| covers <= self.next_offset)
            .unwrap_or_default();
        self.sessions = table;
        let next = self.next_offset;
        for seg in &self.segments {
            let base = seg.segment.base;
            let end = self.segments.iter().find(|s| s.segment.base > base);
            let seg_end = end.map_or(next, |s| s.segment.base);
            if seg_end <= covers {
                continue;
            }
            let sessions = &mut self.sessions;
            let mut reader = SliceReader {
                bytes: seg.segment.bytes(),
                check_crc: true,
            };
            // A damaged record ends the walk: the marks before it count, and
            // reading it for delivery reports the damage as scan() does.
            let mut last = None;
            let mut unresolved = None;
            let end = segment::walk(&mut reader, base, Some(seg_end), &mut |r, _| {
                match r.mark.resolve(last) {
                    Ok(Some(mark)) => {
                        sessions.note(mark, r.timestamp);
                        last = Some(mark);
                    }
                    Ok(None) => {}
                    Err(reason) => {
                        unresolved.get_or_insert((r.offset, reason));
                    }
                }
                true
            });
            if let Some((offset, reason)) = unresolved {
                tracing::warn!(
                    file = %seg.segment.path.display(),
                    offset,
                    "{reason}: that record's session is not known; a \
                     retransmission of it may be stored again"
                );
            }
            if let Some(reason) = end.bad {
                tracing::warn!(
                    file = %seg.segment.path.display(),
                    position = end.pos,
                    "{reason}: sessions' marks after it are not known; a \
                     retransmission of a message stored after it may be stored again"
                );
            }
        }
    }

    /// The last sequence number that session `session` of `client` stored
    /// in this channel, if it is remembered (see [`super::sessions`]).
    pub fn session_last_seq(&self, client: u64, session: u64) -> Option<u64> {
        self.sessions.last_seq(client, session)
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
    ///
    /// With `session`, the record carries the mark of the reliable
    /// publishing session that sent it, so that a restarted relay knows it
    /// was stored.
    pub fn append(
        &mut self,
        timestamp: u64,
        session: Option<SessionMark>,
        payload: &[u8],
    ) -> Result<u64, LogError> {
        if self.next_offset == u64::MAX {
            // Only a hand-made segment name gets here: 2^64 - 1 is never
            // reached by appending.
            return Err(LogError::Corrupt {
                path: self.dir.clone(),
                position: 0,
                reason: "the channel's offsets are used up (a segment named at 2^64 - 1)",
            });
        }
        let mut mark = RecordMark::after(self.last_mark, session);
        let need = record_size(segment::body_len(payload.len(), mark));
        if self.write_pos + need > self.active().capacity() {
            // A new segment's first marked record carries its mark in full.
            mark = RecordMark::after(None, session);
            self.roll(record_size(segment::body_len(payload.len(), mark)))?;
        }
        let offset = self.next_offset;
        let pos = self.write_pos;
        let seg = self.segments.back_mut().expect("a log has a segment");
        let end = segment::write_record(
            seg.segment.bytes_mut(),
            pos,
            offset,
            timestamp,
            mark,
            payload,
        );
        if let Some(index) = seg.index.as_mut() {
            index.note(offset, pos, end, timestamp);
        }
        if let Some(mark) = session {
            self.sessions.note(mark, timestamp);
            self.last_mark = Some(mark);
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
        // Before the new segment exists: recovery reads only the newest
        // segment's marks, so the snapshot must cover all before it.
        let durable = self.config.fsync != FsyncMode::None;
        self.sessions
            .write_snapshot(&self.dir, self.next_offset, durable)?;
        let segment = Segment::create(&self.dir, self.next_offset, capacity)?;
        self.segments
            .push_back(IndexedSegment::indexed(segment, SparseIndex::default()));
        self.write_pos = segment::SEGMENT_HEADER;
        self.last_mark = None;
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
    ///
    /// Every record that came from disk (stored before this log was opened)
    /// is checked against its CRC before `visit` sees it: a damaged one is
    /// never handed out. Records this process appended are not checked
    /// again. It ends the scan with
    /// [`LogError::DamagedRecord`], and is noted in the channel's directory so
    /// that the next start refuses the channel too (see [`RecoveryMode`]).
    pub fn scan(
        &mut self,
        from: u64,
        visit: impl FnMut(Record<'_>) -> bool,
    ) -> Result<u64, LogError> {
        let result = self.scan_checked(from, visit);
        if let Err(e) = &result {
            recovery::note_damage(&self.dir, e);
        }
        result
    }

    /// The first offset of each segment, oldest first (the first may be
    /// below [`ChannelLog::first_offset`] when retention trimmed it).
    pub fn segment_bases(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.segments.iter().map(|s| s.segment.base)
    }

    /// The session mark of the last marked record before `offset` in the
    /// segment that holds `offset`: what a step mark at `offset` continues
    /// (see [`RecordMark::resolve`]). Walks that segment from its start, so
    /// it is for a reader that starts mid-segment once, not for every
    /// record.
    pub fn mark_before(&mut self, offset: u64) -> Result<Option<SessionMark>, LogError> {
        let i = self
            .segments
            .partition_point(|s| s.segment.base <= offset)
            .saturating_sub(1);
        let Some(base) = self.segments.get(i).map(|s| s.segment.base) else {
            return Ok(None);
        };
        let mut last = None;
        self.scan(base, |r| {
            if r.offset >= offset {
                return false;
            }
            // A step with nothing before it is damage the recovery warned
            // of: it is not a mark to go on from.
            if let Ok(Some(mark)) = r.mark.resolve(last) {
                last = Some(mark);
            }
            true
        })?;
        Ok(last)
    }

    fn scan_checked(
        &mut self,
        from: u64,
        mut visit: impl FnMut(Record<'_>) -> bool,
    ) -> Result<u64, LogError> {
        let mut offset = from.max(self.first_offset());
        let next_offset = self.next_offset;
        let (resume, appended_from) = (self.resume, self.appended_from);
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
            if let Some((b, a, p)) = resume
                && b == base
                && at < a
                && a <= offset
            {
                (at, pos) = (a, p);
            }
            let bytes = seg.segment.bytes();
            while at < end_offset {
                // Records before `offset` are only stepped over: their
                // structure is enough to find the next one.
                let check_crc = at >= offset && at < appended_from;
                let (record, next) = match read_slot(bytes, pos, at, check_crc) {
                    Slot::Record(record, next) => (record, next),
                    Slot::End => {
                        return Err(damaged(&seg.segment.path, pos, at, "records missing"));
                    }
                    Slot::Bad(reason) => return Err(damaged(&seg.segment.path, pos, at, reason)),
                };
                if at >= offset {
                    if !visit(record) {
                        self.resume = Some((base, at, pos));
                        return Ok(at);
                    }
                    offset = at + 1;
                }
                at += 1;
                pos = next;
            }
            // Records appended later start here.
            self.resume = Some((base, at, pos));
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
