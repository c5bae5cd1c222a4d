//! One segment file: a fixed-size, preallocated, memory-mapped run of records.
//!
//! Layout (little-endian):
//!
//! ```text
//! segment header, 32 bytes:
//!   0  magic      8  "URSEG\0\0\x01"
//!   8  base       8  offset of the first record
//!   16 capacity   8  file size in bytes
//!   24 reserved   8  zero
//! records from byte 32, each 8-byte aligned:
//!   0  length     4  header + payload bytes, unpadded; 0 = not written
//!   4  crc        4  CRC-32 of bytes 0..4 and 8..length
//!   8  offset     8  the record's channel offset
//!   16 timestamp  8  ns since the Unix epoch
//!   24 flags      4  bit 0 (SESSION): a session mark precedes the payload;
//!                    bit 1 (SESSION_NEXT): no mark follows, the record is
//!                    the same session's as the last marked record before
//!                    it in this segment, its seq that one's plus bits
//!                    8..32 (at least 1); at most one of the two is set,
//!                    bits 8..32 are 0 without SESSION_NEXT, and every other
//!                    bit is 0 (a record that breaks this is refused)
//!   28 [session mark, with SESSION: 24 bytes]
//!        0 client   8  a tag of the client's address (opaque to the log)
//!        8 session  8  the reliable publishing session that sent it
//!        16 seq     8  the session's sequence number of the message's
//!                      last piece
//!   28 or 52 payload
//! ```
//!
//! The session mark is what lets a restarted relay tell a publisher's
//! retransmission of a stored message from a new one: exactly once across
//! kill -9, not only while the relay runs. A session's records mostly
//! follow one another, so after the first in a segment they carry the mark
//! in the flags (SESSION_NEXT) and cost no more bytes than unmarked ones;
//! a reader resolves them walking the segment from its start. A copy of a
//! message from another relay of a cluster is marked in full, always, with
//! client bit 63 set (`REMOTE_CLIENT`), the source relay's id as session
//! and its offset there as seq (or `REMOTE_SESSION`, bit 0 too, for a
//! message of a reliable session: the session id and its seq).
//!
//! The record body is written first and the length last, so a reader that
//! sees a length sees a whole record (and the CRC catches a torn one).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::MmapMut;

use super::LogError;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"URSEG\0\0\x01";
/// Bytes before the first record.
pub const SEGMENT_HEADER: usize = 32;
/// Bytes of a record before its payload.
pub const RECORD_HEADER: usize = 28;

/// Record flag: a [`SessionMark`] precedes the payload.
pub const FLAG_SESSION: u32 = 1;
/// Record flag: the record has the session of the last marked record before
/// it in the segment, and a sequence number larger by `flags >> 8`.
pub const FLAG_SESSION_NEXT: u32 = 2;
/// Largest sequence step a [`FLAG_SESSION_NEXT`] record can carry.
pub const MAX_MARK_STEP: u64 = (1 << 24) - 1;
/// Bytes of a [`SessionMark`] in a record.
pub const SESSION_MARK_LEN: usize = 24;

/// Which reliable publishing session stored a record, and the sequence
/// number of the message's last piece in that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionMark {
    /// Names the client's address, so that two clients that chose the same
    /// session id are never taken for one (the relay makes it; the log
    /// only compares it).
    pub client: u64,
    /// The session id the client chose.
    pub session: u64,
    /// The sequence number of the message's last piece.
    pub seq: u64,
}

/// The `client` of a [`SessionMark`] on a message copied from another relay
/// of a cluster: its `session` is that relay's id, its `seq` the message's
/// offset there. (Client tags of addresses never set this bit.)
pub const REMOTE_CLIENT: u64 = 1 << 63;

/// The `client` of a [`SessionMark`] on a copy, from another relay of a
/// cluster, of a message of a reliable publishing session: its `session`
/// is the session id, its `seq` the sequence number of its last piece.
pub const REMOTE_SESSION: u64 = REMOTE_CLIENT | 1;

/// The `client` of every reliable publishing session's marks on a relay
/// in a cluster: there a session is named by its id alone, whichever
/// relay and address it publishes through, so that a publisher that moves
/// to another relay goes on in the same session. (Client tags of addresses
/// never set this bit either.)
pub const CLUSTER_SESSION: u64 = 1 << 62;

impl SessionMark {
    /// The mark of a copy of message `offset` of relay `source`.
    pub fn remote(source: u64, offset: u64) -> SessionMark {
        SessionMark {
            client: REMOTE_CLIENT,
            session: source,
            seq: offset,
        }
    }

    /// The mark of a copy of the message of session `session` of another
    /// relay whose last piece is `seq`.
    pub fn remote_session(session: u64, seq: u64) -> SessionMark {
        SessionMark {
            client: REMOTE_SESSION,
            session,
            seq,
        }
    }

    /// True for the mark of a copy from another relay.
    pub fn is_remote(&self) -> bool {
        self.client & REMOTE_CLIENT != 0
    }
}

impl RecordMark {
    /// True if the record is a copy from another relay (those are always
    /// marked in full).
    pub fn is_remote(&self) -> bool {
        matches!(self, RecordMark::Full(mark) if mark.is_remote())
    }
}

/// A record's session mark as written: none, in full, or as a step from the
/// last marked record before it in the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordMark {
    /// Not stored by a reliable session.
    None,
    /// The whole mark, in the record's body.
    Full(SessionMark),
    /// The previous marked record's session; its seq plus `step` (1 to
    /// [`MAX_MARK_STEP`]).
    Next {
        /// How much larger the seq is.
        step: u32,
    },
}

impl RecordMark {
    /// How to write `mark` after a segment's last marked record `last`:
    /// as a step when it continues that session, else in full.
    pub fn after(last: Option<SessionMark>, mark: Option<SessionMark>) -> RecordMark {
        let Some(mark) = mark else {
            return RecordMark::None;
        };
        match last {
            // A copy from another relay, and a reliable session's message
            // in a cluster, is marked in full, so that any reader, from any
            // position, sees where it came from (a subscriber that moves
            // between relays is told each message's origin).
            _ if mark.is_remote() || mark.client == CLUSTER_SESSION => RecordMark::Full(mark),
            Some(l)
                if l.client == mark.client
                    && l.session == mark.session
                    && mark.seq > l.seq
                    && mark.seq - l.seq <= MAX_MARK_STEP =>
            {
                RecordMark::Next {
                    step: (mark.seq - l.seq) as u32,
                }
            }
            _ => RecordMark::Full(mark),
        }
    }

    /// The mark this stands for after a segment's last marked record
    /// `last`; `Err` for a step with no marked record before it.
    pub fn resolve(self, last: Option<SessionMark>) -> Result<Option<SessionMark>, &'static str> {
        match self {
            RecordMark::None => Ok(None),
            RecordMark::Full(mark) => Ok(Some(mark)),
            RecordMark::Next { step } => match last {
                Some(l) => Ok(Some(SessionMark {
                    seq: l.seq + u64::from(step),
                    ..l
                })),
                None => Err("a session step with no marked record before it"),
            },
        }
    }
}

/// Bytes of a record's body (mark and payload) for a payload of `len` bytes.
pub const fn body_len(len: usize, mark: RecordMark) -> usize {
    match mark {
        RecordMark::Full(_) => SESSION_MARK_LEN + len,
        RecordMark::None | RecordMark::Next { .. } => len,
    }
}

/// Rounds up to the 8-byte record alignment.
pub const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Space a record with `body_len` bytes after its header (see
/// [`body_len`]) takes in a segment.
pub const fn record_size(body_len: usize) -> usize {
    align8(RECORD_HEADER + body_len)
}

/// The file name of the segment whose first offset is `base`.
pub fn file_name(base: u64) -> String {
    format!("{base:020}.seg")
}

/// The base offset in a segment file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A record as stored, borrowed from the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's channel offset.
    pub offset: u64,
    /// When it was appended, ns since the Unix epoch.
    pub timestamp: u64,
    /// The record's flags (see [`FLAG_SESSION`]).
    pub flags: u32,
    /// The reliable publishing session that stored it, if one did, as
    /// written (resolve a step with [`RecordMark::resolve`]).
    pub mark: RecordMark,
    /// The message.
    pub payload: &'a [u8],
}

/// What was found at a position of a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot<'a> {
    /// A valid record, and the position of the next one.
    Record(Record<'a>, usize),
    /// Nothing written here: the end of the segment's records.
    End,
    /// Something that is not a valid record with the expected offset.
    Bad(&'static str),
}

fn u32_at(buf: &[u8], pos: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[pos..pos + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], pos: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[pos..pos + 8]);
    u64::from_le_bytes(b)
}

/// CRC of a record: its length field, then everything after the CRC field
/// (given in pieces, so a copied header and payload need not be joined).
pub(super) fn record_crc(length: &[u8], rest: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(length);
    for piece in rest {
        h.update(piece);
    }
    h.finalize()
}

/// A record header that passed every check but the CRC.
pub(super) struct Header {
    /// Header and payload bytes, unpadded.
    pub(super) length: usize,
    /// The CRC it claims.
    pub(super) crc: u32,
    /// The record's fields, payload left empty.
    pub(super) record: Record<'static>,
}

/// Checks the header `head` (the first [`RECORD_HEADER`] bytes at `pos` of a
/// segment of `segment_len` bytes) against the offset `expected`.
pub(super) fn check_header(
    head: &[u8],
    pos: usize,
    segment_len: usize,
    expected: u64,
) -> Result<Header, Slot<'static>> {
    let length = u32_at(head, 0) as usize;
    if length == 0 {
        return Err(Slot::End);
    }
    if length < RECORD_HEADER {
        return Err(Slot::Bad("length shorter than a record header"));
    }
    // The padding may be missing from a file that was cut short; the record
    // itself must be whole.
    if pos + length > segment_len {
        return Err(Slot::Bad("length runs past the end of the segment"));
    }
    let offset = u64_at(head, 8);
    if offset != expected {
        return Err(Slot::Bad("offset out of sequence"));
    }
    let flags = u32_at(head, 24);
    let step = flags >> 8;
    match flags & 0xff {
        0 if step == 0 => {}
        FLAG_SESSION if step == 0 => {
            if length < RECORD_HEADER + SESSION_MARK_LEN {
                return Err(Slot::Bad("session mark missing"));
            }
        }
        FLAG_SESSION_NEXT if step > 0 => {}
        _ => return Err(Slot::Bad("unknown record flags")),
    }
    Ok(Header {
        length,
        crc: u32_at(head, 4),
        record: Record {
            offset,
            timestamp: u64_at(head, 16),
            flags,
            mark: match flags & 0xff {
                FLAG_SESSION_NEXT => RecordMark::Next { step },
                _ => RecordMark::None,
            },
            payload: &[],
        },
    })
}

impl Header {
    /// The record, given its body (the `length - RECORD_HEADER` bytes after
    /// the header, checked by [`check_header`] to hold a mark if the flags
    /// say so).
    pub(super) fn with_body(self, body: &[u8]) -> Record<'_> {
        if self.record.flags & FLAG_SESSION == 0 {
            return Record {
                payload: body,
                ..self.record
            };
        }
        let (mark, payload) = body.split_at(SESSION_MARK_LEN);
        Record {
            mark: RecordMark::Full(SessionMark {
                client: u64_at(mark, 0),
                session: u64_at(mark, 8),
                seq: u64_at(mark, 16),
            }),
            payload,
            ..self.record
        }
    }
}

/// Reads the slot at `pos` of segment bytes `buf`, expecting offset
/// `expected`. With `check_crc` false only the structure is checked: for
/// building an index, and for records this process wrote (never for one
/// that came from disk).
pub fn read_slot(buf: &[u8], pos: usize, expected: u64, check_crc: bool) -> Slot<'_> {
    if pos + RECORD_HEADER > buf.len() {
        return Slot::End;
    }
    let header = match check_header(&buf[pos..pos + RECORD_HEADER], pos, buf.len(), expected) {
        Ok(header) => header,
        Err(slot) => return slot,
    };
    let record_end = pos + header.length;
    if check_crc && record_crc(&buf[pos..pos + 4], &[&buf[pos + 8..record_end]]) != header.crc {
        return Slot::Bad("checksum mismatch");
    }
    let next = pos + align8(header.length);
    Slot::Record(
        header.with_body(&buf[pos + RECORD_HEADER..record_end]),
        next,
    )
}

/// Segment bytes that records can be read from: the writer's own mapping, or
/// a copy-out view of a file another process may be writing.
pub trait RecordReader {
    /// The slot at `pos`, expecting offset `expected`.
    fn slot(&mut self, pos: usize, expected: u64) -> Slot<'_>;

    /// The offset field of whatever is at `pos`, unchecked (`None` past the end).
    fn offset_field(&mut self, pos: usize) -> Option<u64>;
}

/// A [`RecordReader`] over bytes this process owns.
pub struct SliceReader<'a> {
    /// The whole segment.
    pub bytes: &'a [u8],
    /// False to check only the structure (see [`read_slot`]).
    pub check_crc: bool,
}

impl RecordReader for SliceReader<'_> {
    fn slot(&mut self, pos: usize, expected: u64) -> Slot<'_> {
        read_slot(self.bytes, pos, expected, self.check_crc)
    }

    fn offset_field(&mut self, pos: usize) -> Option<u64> {
        (pos + RECORD_HEADER <= self.bytes.len()).then(|| u64_at(self.bytes, pos + 8))
    }
}

/// Where a walk over a segment's records stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEnd {
    /// Offset after the last record visited or passed.
    pub next_offset: u64,
    /// Position after it.
    pub pos: usize,
    /// Why the records stopped before `stop_at`, if they were bad rather
    /// than at an end.
    pub bad: Option<&'static str>,
}

/// Walks the records of a segment whose first offset is `base`,
/// until `stop_at` (exclusive), the end of its records, a bad record, or
/// `visit` (given each record and its position) returning false.
pub fn walk<R: RecordReader>(
    reader: &mut R,
    base: u64,
    stop_at: Option<u64>,
    visit: &mut dyn FnMut(Record<'_>, usize) -> bool,
) -> WalkEnd {
    let (mut offset, mut pos) = (base, SEGMENT_HEADER);
    while stop_at.is_none_or(|s| offset < s) {
        if offset == u64::MAX {
            // A segment named (or records numbered) at the very end of the
            // offsets: nothing can follow, and the next offset would wrap.
            return WalkEnd {
                next_offset: offset,
                pos,
                bad: Some("offsets run out at 2^64 - 1"),
            };
        }
        match reader.slot(pos, offset) {
            Slot::Record(r, next) => {
                if !visit(r, pos) {
                    break;
                }
                offset += 1;
                pos = next;
            }
            Slot::End => break,
            Slot::Bad(reason) => {
                return WalkEnd {
                    next_offset: offset,
                    pos,
                    bad: Some(reason),
                };
            }
        }
    }
    WalkEnd {
        next_offset: offset,
        pos,
        bad: None,
    }
}

/// The first 8-aligned position in `(after, before)` where a complete,
/// checksummed record with an offset at least `min_offset` starts: used to
/// tell a torn tail (nothing valid after the damage) from corruption in the
/// middle (valid records after it).
pub fn resumes_at<R: RecordReader>(
    reader: &mut R,
    after: usize,
    before: usize,
    min_offset: u64,
) -> Option<usize> {
    (after + 8..before).step_by(8).find(|&pos| {
        reader.offset_field(pos).is_some_and(|offset| {
            offset >= min_offset && matches!(reader.slot(pos, offset), Slot::Record(..))
        })
    })
}

/// Writes a record at `pos` of `buf` (which must have room): body first, then
/// the length. Returns the position after it.
pub fn write_record(
    buf: &mut [u8],
    pos: usize,
    offset: u64,
    timestamp: u64,
    mark: RecordMark,
    payload: &[u8],
) -> usize {
    let length = RECORD_HEADER + body_len(payload.len(), mark);
    let len_bytes = (length as u32).to_le_bytes();
    buf[pos + 8..pos + 16].copy_from_slice(&offset.to_le_bytes());
    buf[pos + 16..pos + 24].copy_from_slice(&timestamp.to_le_bytes());
    let mut body = pos + RECORD_HEADER;
    let flags = match mark {
        RecordMark::Full(mark) => {
            buf[body..body + 8].copy_from_slice(&mark.client.to_le_bytes());
            buf[body + 8..body + 16].copy_from_slice(&mark.session.to_le_bytes());
            buf[body + 16..body + 24].copy_from_slice(&mark.seq.to_le_bytes());
            body += SESSION_MARK_LEN;
            FLAG_SESSION
        }
        RecordMark::Next { step } => {
            debug_assert!(step >= 1 && u64::from(step) <= MAX_MARK_STEP);
            FLAG_SESSION_NEXT | (step << 8)
        }
        RecordMark::None => 0,
    };
    buf[pos + 24..pos + 28].copy_from_slice(&flags.to_le_bytes());
    buf[body..pos + length].copy_from_slice(payload);
    let crc = record_crc(&len_bytes, &[&buf[pos + 8..pos + length]]);
    buf[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
    // The length goes last: keep the compiler (and the CPU) from moving the
    // body writes after it, so a reader of the mapping never sees a length
    // whose body is not there yet.
    std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    buf[pos..pos + 4].copy_from_slice(&len_bytes);
    pos + align8(length)
}

/// Reserves `len` bytes of disk for `file` so that writes through the mapping
/// can never hit a hole on a full disk (which would be SIGBUS).
fn allocate(file: &File, len: u64, path: &Path) -> Result<(), LogError> {
    let len = libc::off_t::try_from(len).map_err(|_| LogError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::from_raw_os_error(libc::EFBIG),
    })?;
    // SAFETY: posix_fallocate only reads its integer arguments; the fd is
    // open for writing and owned by `file`, which outlives the call.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else if rc == libc::ENOSPC {
        Err(LogError::NoSpace(path.to_path_buf()))
    } else {
        Err(LogError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::from_raw_os_error(rc),
        })
    }
}

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A segment file mapped for appending.
#[derive(Debug)]
pub struct Segment {
    /// The file's path, for error messages.
    pub path: PathBuf,
    /// Offset of the first record.
    pub base: u64,
    /// The whole file, mapped once for its lifetime: never truncated or
    /// remapped while this exists.
    map: MmapMut,
    /// Kept open for the lifetime of the mapping; shared with background
    /// syncs, which may outlive the segment (the descriptor stays valid).
    file: Arc<File>,
}

impl Segment {
    /// Creates a segment of `capacity` bytes: written under a temporary name,
    /// allocated, given its header, then renamed into place, so a crash never
    /// leaves a half-made segment under a real name.
    pub fn create(dir: &Path, base: u64, capacity: usize) -> Result<Segment, LogError> {
        let path = dir.join(file_name(base));
        let tmp = dir.join(format!("{}.tmp", file_name(base)));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        if let Err(e) = allocate(&file, capacity as u64, &tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let mut header = [0u8; SEGMENT_HEADER];
        header[..8].copy_from_slice(&SEGMENT_MAGIC);
        header[8..16].copy_from_slice(&base.to_le_bytes());
        header[16..24].copy_from_slice(&(capacity as u64).to_le_bytes());
        file.write_all(&header).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Segment::map(path, file, base, capacity)
    }

    /// Opens an existing segment for appending, re-allocating it to its full
    /// capacity if the file was cut short.
    pub fn open(path: &Path, base: u64) -> Result<Segment, LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let capacity = read_header(&file, path, base)?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len < capacity as u64 {
            allocate(&file, capacity as u64, path)?;
        }
        Segment::map(path.to_path_buf(), file, base, capacity)
    }

    fn map(path: PathBuf, file: File, base: u64, capacity: usize) -> Result<Segment, LogError> {
        // SAFETY: the data directory is locked by this process, so no other
        // process of ours changes the file; the file is never truncated while
        // mapped (it is only deleted after the mapping is dropped), and its
        // blocks were allocated up front, so no access can fault.
        // Not MAP_POPULATE: measured slower (benches/log.rs), since a new
        // segment's pages would all be faulted in before the first append.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io_err(&path))?;
        if map.len() != capacity {
            return Err(LogError::Corrupt {
                path,
                position: 16,
                reason: "segment size differs from its header",
            });
        }
        Ok(Segment {
            path,
            base,
            map,
            file: Arc::new(file),
        })
    }

    /// The segment's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The segment's bytes, for writing.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }

    /// The open file, for a sync on another thread.
    pub fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Size of the file.
    pub fn capacity(&self) -> usize {
        self.map.len()
    }

    /// Writes the byte range `[start, end)` to disk (msync, MS_SYNC).
    pub fn sync_range(&self, start: usize, end: usize) -> Result<(), LogError> {
        if end <= start {
            return Ok(());
        }
        self.map
            .flush_range(start, end - start)
            .map_err(io_err(&self.path))
    }
}

/// Checks a segment header and returns the capacity it states.
pub(super) fn read_header(file: &File, path: &Path, base: u64) -> Result<usize, LogError> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; SEGMENT_HEADER];
    file.read_exact_at(&mut header, 0)
        .map_err(|_| LogError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason: "segment shorter than its header",
        })?;
    let corrupt = |position, reason| LogError::Corrupt {
        path: path.to_path_buf(),
        position,
        reason,
    };
    if header[..8] != SEGMENT_MAGIC {
        return Err(corrupt(0, "not a segment file (bad magic)"));
    }
    if u64_at(&header, 8) != base {
        return Err(corrupt(8, "base offset differs from the file name"));
    }
    let capacity = u64_at(&header, 16);
    if capacity < (SEGMENT_HEADER + RECORD_HEADER) as u64 || capacity > (1 << 40) {
        return Err(corrupt(16, "implausible segment size"));
    }
    Ok(capacity as usize)
}
