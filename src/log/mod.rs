//! The message log: one directory per channel, fixed-size preallocated segment
//! files mapped into memory, checksummed records, recovery, retention, sync.
//!
//! This module knows nothing of the network. It owns the on-disk format (see
//! [`segment`]) and the rules that keep stored data safe: a segment's blocks
//! are allocated before it is mapped (a full disk is an error, never SIGBUS),
//! a mapping is never truncated or remapped while it lives, a record's length
//! is written last, recovery keeps exactly the valid prefix ([`RecoveryMode`]
//! modes), and no record is handed out without its CRC checked.
//!
//! Files: [`segment`] (the format and the writer's mapping), [`shared`]
//! (reading a segment another process writes), `index` (sparse offsets),
//! `recovery` (opening a log), `channel` (append, scan, retention, sync),
//! [`sessions`] (what reliable sessions stored, for exactly-once restarts),
//! [`inspect`] (the read-only tools).
//!
//! Layout of a data directory:
//!
//! ```text
//! DATA_DIR/LOCK                          held exclusively by the running relay
//! DATA_DIR/channels/ESCAPED/NAME         the channel's real name
//! DATA_DIR/channels/ESCAPED/00000000000000000000.seg   segments by base offset
//! DATA_DIR/channels/ESCAPED/DAMAGED      present once a damaged record was read
//! DATA_DIR/channels/ESCAPED/sessions     reliable sessions' progress as of the
//!                                         newest segment's start (see sessions)
//! ```

mod channel;
mod index;
pub mod inspect;
mod recovery;
pub mod segment;
pub mod sessions;
pub mod shared;

pub use channel::{ChannelLog, LogStats, SyncJob};
pub use recovery::{DAMAGE_NOTE, Recovery, RecoveryMode};
pub use segment::{
    CLUSTER_SESSION, REMOTE_CLIENT, REMOTE_SESSION, Record, RecordMark, SessionMark,
};

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

/// Why the log could not do what was asked.
#[derive(Debug, Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The disk is full: the segment could not be allocated.
    #[error("{0}: no space left on device")]
    NoSpace(PathBuf),
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another udprelay")]
    Locked(PathBuf),
    /// Stored bytes are not what was written.
    #[error("{path}: corrupt at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte position in the file.
        position: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A stored record failed its checks when it was read: it was not handed
    /// out, and the channel is not to be served until the operator decides.
    #[error(
        "{path}: record {offset} at byte {position} is damaged ({reason}); it was not sent. \
         Restart the relay with --truncate-corrupt CHANNEL to keep the records before it and drop the rest"
    )]
    DamagedRecord {
        /// The segment file.
        path: PathBuf,
        /// Byte position of the record in the file.
        position: usize,
        /// The record's offset.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The channel was found damaged while it was served (a
    /// [`LogError::DamagedRecord`]), and the operator has not yet chosen to
    /// truncate it.
    #[error("{path}: the log was found damaged while it was served: {note}")]
    DamageNoted {
        /// The damage note (see [`DAMAGE_NOTE`]).
        path: PathBuf,
        /// What it says.
        note: String,
    },
    /// Valid records follow damaged ones: not a torn tail, so not repaired
    /// without the operator's say-so.
    #[error(
        "{path}: corrupt at byte {position}, but valid records resume at byte {resumes_at}: \
         mid-log corruption (start the relay with --truncate-corrupt CHANNEL to drop everything from byte {position})"
    )]
    MidLogCorruption {
        /// The segment file.
        path: PathBuf,
        /// Where the damage starts.
        position: usize,
        /// Where a valid record was found again.
        resumes_at: usize,
    },
}

/// When appended records are forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncMode {
    /// Never: the page cache has them, which survives a crash of the relay
    /// (kill -9) but not of the machine.
    #[default]
    None,
    /// Every so often, in groups.
    Interval(Duration),
    /// Before anything that depends on them is sent.
    Always,
}

impl std::str::FromStr for FsyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(FsyncMode::None),
            "always" => Ok(FsyncMode::Always),
            _ => {
                let ms = s
                    .strip_prefix("interval=")
                    .ok_or_else(|| format!("expected none, always or interval=MS, got {s:?}"))?;
                let ms: u64 = ms.parse().map_err(|_| {
                    format!("interval=MS needs a whole number of milliseconds, got {s:?}")
                })?;
                if ms == 0 {
                    return Err("interval=MS needs at least 1 ms".into());
                }
                Ok(FsyncMode::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

/// Settings of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Largest segment file. New channels start with small segments that
    /// double up to this, so an idle channel costs little disk.
    pub segment_size: usize,
    /// When to sync.
    pub fsync: FsyncMode,
    /// Delete oldest segments while a channel holds more than this.
    pub retain_bytes: Option<u64>,
    /// Delete oldest segments whose newest record is older than this.
    pub retain_age: Option<Duration>,
}

/// The first segment of a channel is this size (or the segment size, if
/// smaller).
pub const FIRST_SEGMENT_SIZE: usize = 64 << 10;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_size: 64 << 20,
            fsync: FsyncMode::None,
            retain_bytes: None,
            retain_age: None,
        }
    }
}

impl LogConfig {
    fn first_segment_size(&self, need: usize) -> usize {
        FIRST_SEGMENT_SIZE
            .min(self.segment_size)
            .max(segment::SEGMENT_HEADER + need)
    }

    fn next_segment_size(&self, previous: usize, need: usize) -> usize {
        previous
            .saturating_mul(2)
            .min(self.segment_size)
            .max(segment::SEGMENT_HEADER + need)
    }
}

/// A locked data directory.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    config: LogConfig,
    /// Holds the exclusive lock for as long as the directory is open.
    _lock: File,
}

/// The result of opening one channel found on disk.
#[derive(Debug)]
pub struct OpenedChannel {
    /// The channel's name (from its NAME file).
    pub name: String,
    /// The log and what recovery did, or why it cannot be served.
    pub log: Result<(ChannelLog, Recovery), LogError>,
}

impl DataDir {
    /// Creates the directory if needed and locks it; fails with
    /// [`LogError::Locked`] if another process has it.
    pub fn open(path: &Path, config: LogConfig) -> Result<DataDir, LogError> {
        let io = |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(path.join("channels")).map_err(io)?;
        let lock_path = path.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| LogError::Io {
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::Locked(path.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(LogError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            config,
            _lock: lock,
        })
    }

    /// Opens every channel on disk. `truncate_corrupt` names channels whose
    /// corruption the operator agreed to cut off
    /// ([`RecoveryMode::TruncateCorruption`]); the others are opened with
    /// [`RecoveryMode::TolerateTornTail`].
    pub fn open_channels(
        &self,
        truncate_corrupt: &[String],
    ) -> Result<Vec<OpenedChannel>, LogError> {
        let mut out = Vec::new();
        for (name, dir) in channel_dirs(&self.path)? {
            let mode = if truncate_corrupt.contains(&name) {
                RecoveryMode::TruncateCorruption
            } else {
                RecoveryMode::TolerateTornTail
            };
            let log = ChannelLog::open(&dir, &self.config, mode);
            out.push(OpenedChannel { name, log });
        }
        Ok(out)
    }

    /// Creates (or, if it exists, opens) the log of channel `name`.
    pub fn create_channel(&self, name: &str) -> Result<ChannelLog, LogError> {
        let dir = self.path.join("channels").join(escape_channel(name));
        let io = |source| LogError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let name_file = dir.join("NAME");
        if !name_file.exists() {
            let tmp = dir.join("NAME.tmp");
            std::fs::write(&tmp, name).map_err(io)?;
            std::fs::rename(&tmp, &name_file).map_err(io)?;
        }
        ChannelLog::open(&dir, &self.config, RecoveryMode::TolerateTornTail).map(|(log, _)| log)
    }
}

impl DataDir {
    /// This relay's id in a cluster: made at random the first time (kept
    /// in the file `RELAY_ID`, 16 hex digits), the same on every start.
    pub fn relay_id(&self) -> Result<u64, LogError> {
        let path = self.path.join(RELAY_ID_FILE);
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let text = text.trim();
                match u64::from_str_radix(text, 16) {
                    Ok(id) if text.len() == 16 => Ok(id),
                    _ => Err(LogError::Corrupt {
                        path: path.clone(),
                        position: 0,
                        reason: "not a relay id (16 hex digits)",
                    }),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 8];
                getrandom::fill(&mut bytes).map_err(|e| io(std::io::Error::other(e)))?;
                let id = u64::from_le_bytes(bytes);
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, format!("{id:016x}\n")).map_err(io)?;
                std::fs::rename(&tmp, &path).map_err(io)?;
                Ok(id)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// How far each channel was bridged to the cluster, as last written by
    /// [`DataDir::write_bridged`] (file `BRIDGED`: one `offset<TAB>name`
    /// line per channel). Lines that do not parse are skipped and counted
    /// in the second value: resending from an earlier offset is harmless.
    pub fn read_bridged(&self) -> Result<(Vec<(String, u64)>, usize), LogError> {
        let path = self.path.join(BRIDGED_FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(source) => return Err(LogError::Io { path, source }),
        };
        let (mut out, mut bad) = (Vec::new(), 0);
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let parsed = std::str::from_utf8(line).ok().and_then(|line| {
                let (offset, name) = line.split_once('\t')?;
                crate::wire::validate_channel(name.as_bytes()).ok()?;
                Some((name.to_string(), offset.parse().ok()?))
            });
            match parsed {
                Some(entry) => out.push(entry),
                None => bad += 1,
            }
        }
        Ok((out, bad))
    }

    /// Writes how far each channel was bridged (see
    /// [`DataDir::read_bridged`]), replacing the file whole.
    pub fn write_bridged<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, u64)>,
    ) -> Result<(), LogError> {
        let path = self.path.join(BRIDGED_FILE);
        let mut text = String::new();
        for (name, offset) in entries {
            text.push_str(&format!("{offset}\t{name}\n"));
        }
        let tmp = path.with_extension("tmp");
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// The file holding a relay's cluster id.
pub const RELAY_ID_FILE: &str = "RELAY_ID";
/// The file holding how far each channel was bridged to the cluster.
pub const BRIDGED_FILE: &str = "BRIDGED";

/// Every channel directory under `data_dir` that has a NAME file: (name, dir).
pub fn channel_dirs(data_dir: &Path) -> Result<Vec<(String, PathBuf)>, LogError> {
    let root = data_dir.join("channels");
    let io = |source| LogError::Io {
        path: root.clone(),
        source,
    };
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(e)),
    };
    for entry in entries {
        let dir = entry.map_err(io)?.path();
        // A directory without a NAME file was never finished: skip it.
        if let Ok(name) = std::fs::read_to_string(dir.join("NAME")) {
            out.push((name, dir));
        }
    }
    out.sort();
    Ok(out)
}

/// A directory name for a channel: bytes outside `[A-Za-z0-9_-]` (and `.`
/// except inside) are %XX-escaped; a name that would be too long keeps a
/// prefix and adds a hash. The NAME file holds the real name either way.
pub fn escape_channel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > 200 {
        // FNV-1a: a stable, dependency-free hash to keep long names distinct.
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        out.truncate(160);
        // Escapes are ASCII, so cutting at 160 may split one; drop a partial.
        while let Some(p) = out[out.len().saturating_sub(2)..].find('%') {
            out.truncate(out.len() - 2 + p);
        }
        out.push_str(&format!("~{hash:016x}"));
    }
    out
}

#[cfg(test)]
mod tests;
