//! Opening a channel's log: what recovery may repair on its own, what it
//! refuses, and what it cuts off on the operator's say-so.
//!
//! Start-up reads only the newest segment: older ones were complete when
//! they were sealed, and every record is checksummed again when it is read
//! for delivery (see [`super::ChannelLog::scan`]). Damage found that way is
//! noted in the channel's directory ([`DAMAGE_NOTE`]), so that a restart
//! refuses the channel too, without reading the whole log to find out.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::LogError;
use super::index::{IndexedSegment, SparseIndex, index_records};
use super::segment::{self, Segment, SliceReader};

/// The file in a channel's directory that says its log was found damaged
/// while it was served (it holds the error, in words).
pub const DAMAGE_NOTE: &str = "DAMAGED";

/// How much damage recovery may repair without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Check the newest segment; zero a torn tail (nothing valid after the
    /// damage: a write that a crash cut short). Refuse mid-log corruption and
    /// a channel noted as damaged while it was served.
    TolerateTornTail,
    /// The operator's `--truncate-corrupt`: check every record of every
    /// segment, keep exactly the records before the first damaged one, and
    /// delete everything after it, later segments included.
    TruncateCorruption,
}

/// What recovery did when a channel was opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes after the last kept record that were zeroed (0 when the log
    /// ended cleanly).
    pub torn_bytes: usize,
    /// Position of the first bad record in [`Recovery::damaged_file`], when
    /// there was damage.
    pub damage_at: Option<usize>,
    /// The segment file the damage was in.
    pub damaged_file: Option<PathBuf>,
    /// True if valid records after the damage were dropped on the operator's
    /// request (mid-log corruption, truncated).
    pub truncated_corruption: bool,
    /// Segment files after the damaged one that were deleted.
    pub deleted_segments: usize,
}

/// A recovered log, ready to append to.
pub(super) struct Recovered {
    /// Every segment, oldest first; the last one is appended to and indexed.
    pub(super) segments: VecDeque<IndexedSegment>,
    /// Position in the last segment where the next record goes.
    pub(super) write_pos: usize,
    /// Offset the next record gets.
    pub(super) next_offset: u64,
    /// What was repaired.
    pub(super) recovery: Recovery,
}

/// Recovers the log in `dir` under `mode`; `None` if it has no segment yet.
/// `first_segment_size` sizes a segment made anew when even the first one
/// had to go.
pub(super) fn recover(
    dir: &Path,
    mode: RecoveryMode,
    first_segment_size: usize,
) -> Result<Option<Recovered>, LogError> {
    let bases = segment_bases(dir)?;
    let Some(&last_base) = bases.last() else {
        // Nothing is stored, so a damage note names records that are gone:
        // it would refuse the channel at the next start, once a record is
        // written, for damage that is not there.
        remove_damage_note(dir)?;
        return Ok(None);
    };
    match mode {
        RecoveryMode::TolerateTornTail => {
            if let Some(note) = read_damage_note(dir) {
                return Err(LogError::DamageNoted {
                    path: dir.join(DAMAGE_NOTE),
                    note,
                });
            }
            let mut segments = VecDeque::new();
            for &base in &bases[..bases.len() - 1] {
                segments.push_back(IndexedSegment {
                    segment: Segment::open(&dir.join(segment::file_name(base)), base)?,
                    index: None,
                });
            }
            let last = Segment::open(&dir.join(segment::file_name(last_base)), last_base)?;
            recover_tail(segments, last, mode).map(Some)
        }
        RecoveryMode::TruncateCorruption => {
            let recovered = truncate_at_first_damage(dir, &bases, first_segment_size)?;
            remove_damage_note(dir)?;
            Ok(Some(recovered))
        }
    }
}

/// The base offsets of the segment files in `dir`, ascending. Removes the
/// temporary files of segments whose creation was interrupted.
fn segment_bases(dir: &Path) -> Result<Vec<u64>, LogError> {
    let io = |source| LogError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.ends_with(".seg.tmp") {
            // Never used: it only gets its real name once complete.
            let _ = std::fs::remove_file(entry.path());
        } else if let Some(base) = segment::parse_file_name(&file_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// Checks the newest segment record by record from its start (the
/// checkpoint: older segments were complete when they were sealed), zeroes
/// whatever follows the last valid record, and refuses valid records after
/// damage unless `mode` allows cutting them off.
fn recover_tail(
    mut segments: VecDeque<IndexedSegment>,
    mut last: Segment,
    mode: RecoveryMode,
) -> Result<Recovered, LogError> {
    let (index, end) = index_records(&last, None, true);
    let written_end = written_end(last.bytes());
    let mut recovery = Recovery::default();
    if end.bad.is_some() || written_end > end.pos {
        let mut reader = SliceReader {
            bytes: last.bytes(),
            check_crc: true,
        };
        if let Some(resumes_at) =
            segment::resumes_at(&mut reader, end.pos, written_end, end.next_offset)
        {
            if mode != RecoveryMode::TruncateCorruption {
                return Err(LogError::MidLogCorruption {
                    path: last.path.clone(),
                    position: end.pos,
                    resumes_at,
                });
            }
            recovery.truncated_corruption = true;
        }
        recovery.torn_bytes = zero_from(&mut last, end.pos)?;
        recovery.damage_at = Some(end.pos);
        recovery.damaged_file = Some(last.path.clone());
    }
    segments.push_back(IndexedSegment::indexed(last, index));
    Ok(Recovered {
        segments,
        write_pos: end.pos,
        next_offset: end.next_offset,
        recovery,
    })
}

/// Checks every record of every segment. At the first damage (a bad record,
/// a gap before the next segment's base, or a segment that will not open),
/// deletes every later segment, newest first, then zeroes the damaged
/// segment from the damage on: a crash part way leaves the damage note in
/// place, and the same start finishes the job.
fn truncate_at_first_damage(
    dir: &Path,
    bases: &[u64],
    first_segment_size: usize,
) -> Result<Recovered, LogError> {
    let mut sealed = VecDeque::new();
    for (k, &base) in bases.iter().enumerate() {
        let path = dir.join(segment::file_name(base));
        let Some(&next_base) = bases.get(k + 1) else {
            return match Segment::open(&path, base) {
                Ok(last) => recover_tail(sealed, last, RecoveryMode::TruncateCorruption),
                Err(e @ LogError::Corrupt { .. }) => {
                    cut_before_segment(dir, bases, k, sealed, first_segment_size, e)
                }
                Err(e) => Err(e),
            };
        };
        let mut seg = match Segment::open(&path, base) {
            Ok(seg) => seg,
            Err(e @ LogError::Corrupt { .. }) => {
                return cut_before_segment(dir, bases, k, sealed, first_segment_size, e);
            }
            Err(e) => return Err(e),
        };
        let (index, end) = index_records(&seg, Some(next_base), true);
        if end.next_offset == next_base {
            sealed.push_back(IndexedSegment::indexed(seg, index));
            continue;
        }
        let deleted_segments = delete_segments(dir, &bases[k + 1..])?;
        let torn_bytes = zero_from(&mut seg, end.pos)?;
        tracing::warn!(
            file = %path.display(),
            position = end.pos,
            offset = end.next_offset,
            reason = end.bad.unwrap_or("records missing"),
            deleted_segments,
            "--truncate-corrupt: kept the records before the damage, dropped offsets \
             {}.. and deleted the later segments",
            end.next_offset
        );
        sealed.push_back(IndexedSegment::indexed(seg, index));
        return Ok(Recovered {
            segments: sealed,
            write_pos: end.pos,
            next_offset: end.next_offset,
            recovery: Recovery {
                torn_bytes,
                damage_at: Some(end.pos),
                damaged_file: Some(path),
                truncated_corruption: true,
                deleted_segments,
            },
        });
    }
    unreachable!("bases is not empty and its last element returns above")
}

/// Segment `k` is damaged where even its header is (`why`, a
/// [`LogError::Corrupt`]): deletes it and every later one and appends after
/// segment `k - 1`, or, if `k` is the first, starts the log anew at its base
/// so that no offset is ever given out twice.
fn cut_before_segment(
    dir: &Path,
    bases: &[u64],
    k: usize,
    mut sealed: VecDeque<IndexedSegment>,
    first_segment_size: usize,
    why: LogError,
) -> Result<Recovered, LogError> {
    tracing::warn!("--truncate-corrupt: {why}; deleting it and every later segment");
    let deleted_segments = delete_segments(dir, &bases[k..])?;
    let (mut last, index) = match sealed.pop_back() {
        Some(prev) => {
            let index = prev.index.expect("segments before the damage were indexed");
            (prev.segment, index)
        }
        None => (
            Segment::create(dir, bases[0], first_segment_size)?,
            SparseIndex::default(),
        ),
    };
    let torn_bytes = zero_from(&mut last, index.end)?;
    let (write_pos, next_offset) = (index.end, bases[k]);
    sealed.push_back(IndexedSegment::indexed(last, index));
    let (damaged_file, damage_at) = match why {
        LogError::Corrupt { path, position, .. } => (Some(path), Some(position)),
        _ => (None, None),
    };
    Ok(Recovered {
        segments: sealed,
        write_pos,
        next_offset,
        recovery: Recovery {
            torn_bytes,
            damage_at,
            damaged_file,
            truncated_corruption: true,
            deleted_segments,
        },
    })
}

/// Deletes the segments with these bases, newest first; returns how many.
fn delete_segments(dir: &Path, bases: &[u64]) -> Result<usize, LogError> {
    for &base in bases.iter().rev() {
        let path = dir.join(segment::file_name(base));
        std::fs::remove_file(&path).map_err(|source| LogError::Io { path, source })?;
    }
    Ok(bases.len())
}

/// Position after the last non-zero byte of `bytes`.
fn written_end(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// Zeroes and syncs everything written from `pos` on; returns the bytes zeroed.
fn zero_from(seg: &mut Segment, pos: usize) -> Result<usize, LogError> {
    let end = written_end(seg.bytes()).max(pos);
    seg.bytes_mut()[pos..end].fill(0);
    seg.sync_range(pos, end)?;
    Ok(end - pos)
}

/// Notes in `dir` that its log was found damaged (`why`), so that the next
/// start refuses it as well. Best effort: a note that cannot be written is
/// logged, and the running relay refuses the channel either way.
pub(super) fn note_damage(dir: &Path, why: &LogError) {
    let tmp = dir.join(format!("{DAMAGE_NOTE}.tmp"));
    let written = std::fs::write(&tmp, format!("{why}\n"))
        .and_then(|()| std::fs::rename(&tmp, dir.join(DAMAGE_NOTE)));
    if let Err(e) = written {
        tracing::warn!(dir = %dir.display(), "cannot note the damage for the next start: {e}");
    }
}

/// The damage note of `dir`, if there is one (at most its first 4 KiB).
pub(super) fn read_damage_note(dir: &Path) -> Option<String> {
    let file = std::fs::File::open(dir.join(DAMAGE_NOTE)).ok()?;
    let mut note = Vec::new();
    // An unreadable note still means the channel was found damaged.
    let _ = file.take(4096).read_to_end(&mut note);
    Some(String::from_utf8_lossy(&note).trim().to_string())
}

fn remove_damage_note(dir: &Path) -> Result<(), LogError> {
    let path = dir.join(DAMAGE_NOTE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LogError::Io { path, source: e }),
        _ => Ok(()),
    }
}
