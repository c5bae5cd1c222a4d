//! Which reliable publishing sessions stored records in a channel, and how
//! far each got: what a restarted relay needs to drop a retransmission of a
//! message it stored before it was killed, instead of storing it twice.
//!
//! The truth is in the records (each carries a [`SessionMark`]); this table
//! is derived from them. Scanning a whole log at every start would cost too
//! much, so when a segment is sealed the table is written beside it as a
//! snapshot covering every record before the new segment, and recovery
//! reads the snapshot, then the marks of the newest segment (which it reads
//! anyway). Without a valid snapshot it reads every segment's marks.
//!
//! Snapshot file `sessions` (little-endian):
//!
//! ```text
//!   0  magic     8  "URSESS\0\x02"
//!   8  covers    8  every record below this offset is accounted for
//!   16 count     4  entries
//!   20 crc       4  CRC-32 of bytes 0..20, then of the entries
//!   24 entries   count x 32: client 8, session 8, seq 8, timestamp 8
//! ```
//!
//! The table forgets sessions whose last record is older than
//! [`SESSION_MEMORY`] and keeps at most [`MAX_SESSIONS`] (the most recent):
//! a publisher retransmits within seconds, and the bound keeps the file and
//! the memory small whatever clients do.

use foldhash::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::LogError;
use super::segment::SessionMark;

/// How long after its last stored message a session is remembered.
pub const SESSION_MEMORY: Duration = Duration::from_secs(3600);
/// Most sessions a channel's table keeps.
pub const MAX_SESSIONS: usize = 4096;

const MAGIC: [u8; 8] = *b"URSESS\0\x02";
const HEADER: usize = 24;
const ENTRY: usize = 32;
/// The snapshot's file name in a channel's directory.
pub const SNAPSHOT_FILE: &str = "sessions";

/// The last stored sequence number of each session, with when.
#[derive(Debug, Default, Clone)]
pub struct SessionTable {
    /// (client, session id) -> (last stored seq, its record's timestamp).
    last: HashMap<(u64, u64), (u64, u64)>,
}

impl SessionTable {
    /// Notes a stored record's mark.
    pub fn note(&mut self, mark: SessionMark, timestamp: u64) {
        let entry = self
            .last
            .entry((mark.client, mark.session))
            .or_insert((mark.seq, timestamp));
        if mark.seq >= entry.0 {
            *entry = (mark.seq, timestamp.max(entry.1));
        }
        if self.last.len() > 2 * MAX_SESSIONS {
            self.prune();
        }
    }

    /// Every session's mark: the last sequence number it stored.
    pub fn marks(&self) -> impl Iterator<Item = SessionMark> + '_ {
        self.last
            .iter()
            .map(|(&(client, session), &(seq, _))| SessionMark {
                client,
                session,
                seq,
            })
    }

    /// The last sequence number `session` of `client` stored here, if known.
    pub fn last_seq(&self, client: u64, session: u64) -> Option<u64> {
        self.last.get(&(client, session)).map(|&(seq, _)| seq)
    }

    /// Sessions remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// True if no session is remembered.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Forgets what [`SESSION_MEMORY`] and [`MAX_SESSIONS`] say to.
    fn prune(&mut self) {
        let newest = self.last.values().map(|&(_, ts)| ts).max().unwrap_or(0);
        let horizon = newest.saturating_sub(SESSION_MEMORY.as_nanos() as u64);
        self.last.retain(|_, &mut (_, ts)| ts >= horizon);
        if self.last.len() > MAX_SESSIONS {
            let mut by_age: Vec<u64> = self.last.values().map(|&(_, ts)| ts).collect();
            let cut = by_age.len() - MAX_SESSIONS;
            let (_, &mut oldest_kept, _) = by_age.select_nth_unstable(cut);
            self.last.retain(|_, &mut (_, ts)| ts >= oldest_kept);
        }
    }

    /// Writes the snapshot covering every record below `covers` into
    /// `dir`, atomically (temporary file, then rename); with `durable`, on
    /// disk before it returns.
    pub fn write_snapshot(
        &mut self,
        dir: &Path,
        covers: u64,
        durable: bool,
    ) -> Result<(), LogError> {
        self.prune();
        let mut entries = Vec::with_capacity(self.last.len() * ENTRY);
        for (&(client, session), &(seq, ts)) in &self.last {
            entries.extend_from_slice(&client.to_le_bytes());
            entries.extend_from_slice(&session.to_le_bytes());
            entries.extend_from_slice(&seq.to_le_bytes());
            entries.extend_from_slice(&ts.to_le_bytes());
        }
        let mut head = [0u8; HEADER];
        head[..8].copy_from_slice(&MAGIC);
        head[8..16].copy_from_slice(&covers.to_le_bytes());
        head[16..20].copy_from_slice(&(self.last.len() as u32).to_le_bytes());
        let crc = snapshot_crc(&head, &entries);
        head[20..24].copy_from_slice(&crc.to_le_bytes());
        let path = dir.join(SNAPSHOT_FILE);
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source: std::io::Error| {
                // A full disk is refused like a segment that cannot be
                // allocated: the write is retried, the channel not stopped.
                if source.kind() == std::io::ErrorKind::StorageFull {
                    LogError::NoSpace(p)
                } else {
                    LogError::Io { path: p, source }
                }
            }
        };
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&head).map_err(io(&tmp))?;
        file.write_all(&entries).map_err(io(&tmp))?;
        if durable {
            file.sync_data().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        if durable {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io(dir))?;
        }
        Ok(())
    }

    /// Reads the snapshot in `dir`: the table and the offset it covers, or
    /// `None` if there is none or it is damaged (the caller then reads the
    /// marks from the records themselves).
    pub fn read_snapshot(dir: &Path) -> Option<(SessionTable, u64)> {
        let bytes = std::fs::read(dir.join(SNAPSHOT_FILE)).ok()?;
        let (head, entries) = bytes.split_first_chunk::<HEADER>()?;
        let count = u32::from_le_bytes(head[16..20].try_into().ok()?) as usize;
        let stored_crc = u32::from_le_bytes(head[20..24].try_into().ok()?);
        if head[..8] != MAGIC || entries.len() != count.checked_mul(ENTRY)? {
            return None;
        }
        let mut unsigned = *head;
        unsigned[20..24].fill(0);
        if snapshot_crc(&unsigned, entries) != stored_crc {
            return None;
        }
        let covers = u64::from_le_bytes(head[8..16].try_into().ok()?);
        let mut table = SessionTable::default();
        for e in entries.chunks_exact(ENTRY) {
            let field = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8 bytes"));
            let mark = SessionMark {
                client: field(0),
                session: field(8),
                seq: field(16),
            };
            table.note(mark, field(24));
        }
        Some((table, covers))
    }
}

/// CRC of a snapshot: its header with the CRC field zero, then its entries.
fn snapshot_crc(head: &[u8; HEADER], entries: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut head = *head;
    head[20..24].fill(0);
    h.update(&head);
    h.update(entries);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(session: u64, seq: u64) -> SessionMark {
        SessionMark {
            client: 7,
            session,
            seq,
        }
    }

    #[test]
    fn a_snapshot_reads_back_what_was_written_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut table = SessionTable::default();
        table.note(mark(1, 10), 100);
        table.note(mark(1, 7), 101); // an older piece noted later: no step back
        table.note(mark(2, 3), 102);
        table.write_snapshot(dir.path(), 42, true).unwrap();
        let (read, covers) = SessionTable::read_snapshot(dir.path()).unwrap();
        assert_eq!(covers, 42);
        let mut marks: Vec<_> = read.marks().collect();
        marks.sort_by_key(|m| m.session);
        assert_eq!(marks, [mark(1, 10), mark(2, 3)]);

        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 0x40;
            std::fs::write(&path, &bytes).unwrap();
            assert!(
                SessionTable::read_snapshot(dir.path()).is_none(),
                "a flipped byte at {i} was accepted"
            );
            bytes[i] ^= 0x40;
        }
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(SessionTable::read_snapshot(dir.path()).is_none());
    }

    #[test]
    fn the_same_session_id_from_two_clients_is_two_sessions() {
        let mut table = SessionTable::default();
        table.note(mark(1, 10), 100);
        table.note(
            SessionMark {
                client: 8,
                ..mark(1, 3)
            },
            101,
        );
        assert_eq!(table.last_seq(7, 1), Some(10));
        assert_eq!(table.last_seq(8, 1), Some(3));
        assert_eq!(table.last_seq(9, 1), None);
    }

    #[test]
    fn old_and_excess_sessions_are_forgotten() {
        let hour = SESSION_MEMORY.as_nanos() as u64;
        let mut table = SessionTable::default();
        table.note(mark(1, 1), 1);
        table.note(mark(2, 1), 2 * hour);
        table.prune();
        assert_eq!(table.marks().collect::<Vec<_>>(), [mark(2, 1)]);
        let start = 3 * hour;
        for s in 0..(2 * MAX_SESSIONS as u64 + 1) {
            table.note(mark(100 + s, 0), start + s);
        }
        assert!(table.len() <= MAX_SESSIONS + 1, "{}", table.len());
        assert!(
            table
                .marks()
                .any(|m| m.session == 100 + 2 * MAX_SESSIONS as u64),
            "the newest is kept"
        );
    }
}
