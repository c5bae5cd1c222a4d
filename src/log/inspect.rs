//! Read-only views of a data directory for `udprelay log ls | dump | verify`.
//!
//! They take no lock and write nothing, so they can run beside a live relay:
//! they see whatever valid records the relay has written so far.

use std::path::{Path, PathBuf};

use super::recovery::{DAMAGE_NOTE, read_damage_note};
use super::segment::{self, Record, WalkEnd};
use super::shared::ReadOnlySegment;
use super::{LogError, channel_dirs};

/// What `log ls` shows of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSummary {
    /// The channel's name.
    pub name: String,
    /// Oldest stored offset.
    pub first_offset: u64,
    /// Offset the next record will get.
    pub next_offset: u64,
    /// Segment files.
    pub segments: usize,
    /// Their total size on disk.
    pub bytes: u64,
}

/// One thing `log verify` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The channel.
    pub channel: String,
    /// The file.
    pub path: PathBuf,
    /// Byte position in the file.
    pub position: usize,
    /// What is wrong, in words.
    pub reason: String,
}

/// Walks the checksummed records of `seg` from its start until `stop_at`
/// (exclusive) or the end, calling `visit` on each record at or after `from`
/// until it returns false. Each record is a copy: the relay may be writing
/// the file.
fn walk(
    seg: &ReadOnlySegment,
    stop_at: Option<u64>,
    from: u64,
    visit: &mut dyn FnMut(Record<'_>) -> bool,
) -> WalkEnd {
    segment::walk(&mut seg.reader(), seg.base, stop_at, &mut |r, _| {
        r.offset < from || visit(r)
    })
}

/// The segments of a channel directory, oldest first.
fn segments(dir: &Path) -> Result<Vec<ReadOnlySegment>, LogError> {
    let io = |source| LogError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok())
        .filter_map(|e| segment::parse_file_name(&e.file_name().to_string_lossy()))
        .collect();
    bases.sort_unstable();
    bases
        .into_iter()
        .map(|b| ReadOnlySegment::open(&dir.join(segment::file_name(b)), b))
        .collect()
}

/// Every channel with its offset range and size.
pub fn list(data_dir: &Path) -> Result<Vec<ChannelSummary>, LogError> {
    let mut out = Vec::new();
    for (name, dir) in channel_dirs(data_dir)? {
        let segs = segments(&dir)?;
        let bytes = segs.iter().map(|s| s.len() as u64).sum();
        let (first_offset, next_offset) = match (segs.first(), segs.last()) {
            (Some(first), Some(last)) => {
                let end = walk(last, None, u64::MAX, &mut |_| true);
                (first.base, end.next_offset)
            }
            _ => (0, 0),
        };
        out.push(ChannelSummary {
            name,
            first_offset,
            next_offset,
            segments: segs.len(),
            bytes,
        });
    }
    Ok(out)
}

/// Calls `visit` on up to `count` checksummed records of `channel` from
/// offset `from` (or the oldest stored). Fails if the channel does not exist
/// or a sealed segment is damaged on the way.
pub fn dump(
    data_dir: &Path,
    channel: &str,
    from: u64,
    count: u64,
    visit: &mut dyn FnMut(Record<'_>),
) -> Result<(), LogError> {
    let Some((_, dir)) = channel_dirs(data_dir)?
        .into_iter()
        .find(|(n, _)| n == channel)
    else {
        return Err(LogError::Io {
            path: data_dir.join("channels"),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no channel named {channel:?}"),
            ),
        });
    };
    let segs = segments(&dir)?;
    let start = segs.partition_point(|s| s.base <= from).saturating_sub(1);
    let mut left = count;
    for (i, seg) in segs.iter().enumerate().skip(start) {
        if left == 0 {
            break;
        }
        let stop_at = segs.get(i + 1).map(|s| s.base);
        let end = walk(seg, stop_at, from, &mut |r| {
            visit(r);
            left -= 1;
            left > 0
        });
        if let (Some(reason), Some(_)) = (end.bad, stop_at) {
            return Err(LogError::Corrupt {
                path: seg.path.clone(),
                position: end.pos,
                reason,
            });
        }
    }
    Ok(())
}

/// Checks every record of every channel against its checksum and sequence.
/// Returns the problems found and the number of records checked.
pub fn verify(data_dir: &Path) -> Result<(Vec<Problem>, u64), LogError> {
    let mut problems = Vec::new();
    let mut checked = 0u64;
    for (name, dir) in channel_dirs(data_dir)? {
        let segs = match segments(&dir) {
            Ok(s) => s,
            Err(e) => {
                problems.push(Problem {
                    channel: name.clone(),
                    path: dir.clone(),
                    position: 0,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if let Some(note) = read_damage_note(&dir) {
            problems.push(Problem {
                channel: name.clone(),
                path: dir.join(DAMAGE_NOTE),
                position: 0,
                reason: format!("the relay found this channel damaged while serving it: {note}"),
            });
        }
        for (i, seg) in segs.iter().enumerate() {
            let stop_at = segs.get(i + 1).map(|s| s.base);
            let end = walk(seg, stop_at, 0, &mut |_| true);
            checked += end.next_offset - seg.base;
            let mut problem = |position, reason: String| {
                problems.push(Problem {
                    channel: name.clone(),
                    path: seg.path.clone(),
                    position,
                    reason,
                })
            };
            match stop_at {
                Some(next_base) if end.next_offset < next_base => problem(
                    end.pos,
                    format!(
                        "{}; offsets {}..{next_base} are missing from a sealed segment",
                        end.bad.unwrap_or("records end early"),
                        end.next_offset
                    ),
                ),
                Some(_) => {}
                None => {
                    let written_end = seg.written_end();
                    let resumes = segment::resumes_at(
                        &mut seg.reader(),
                        end.pos,
                        written_end,
                        end.next_offset,
                    );
                    if let Some(q) = resumes {
                        problem(
                            end.pos,
                            format!(
                                "{}; valid records resume at byte {q}: mid-log corruption",
                                end.bad.unwrap_or("unwritten record")
                            ),
                        );
                    } else if let Some(reason) = end.bad {
                        problem(
                            end.pos,
                            format!("{reason}: damaged or torn record at the tail"),
                        );
                    } else if written_end > end.pos {
                        problem(
                            end.pos,
                            format!(
                                "{} bytes of an unfinished record after the last one (a torn write; the relay zeroes it when it opens the channel)",
                                written_end - end.pos
                            ),
                        );
                    }
                }
            }
        }
    }
    Ok((problems, checked))
}
