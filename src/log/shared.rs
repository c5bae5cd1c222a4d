//! Reading segment files that another process may be writing: what
//! `udprelay log ls | dump | verify` use beside a running relay.
//!
//! A `&[u8]` over such a mapping would be undefined behaviour (the compiler
//! may assume the bytes behind a shared reference never change), so none is
//! ever formed: bytes are copied out with volatile reads into buffers this
//! process owns, and only the copies are checked and parsed. The relay's own
//! writable mapping ([`super::segment::Segment`]) is one process's, borrowed
//! as usual.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::ptr;

use memmap2::{MmapOptions, MmapRaw};

use super::LogError;
use super::segment::{
    RECORD_HEADER, RecordReader, Slot, align8, check_header, io_err, read_header, record_crc,
};

/// A segment mapped read-only, for the offline tools: they may run beside a
/// live relay and never write.
pub struct ReadOnlySegment {
    /// The file's path.
    pub path: PathBuf,
    /// Offset of the first record.
    pub base: u64,
    /// `None` for an empty file (which cannot be mapped).
    map: Option<MmapRaw>,
}

impl ReadOnlySegment {
    /// Opens and checks the header of a segment.
    pub fn open(path: &Path, base: u64) -> Result<ReadOnlySegment, LogError> {
        let file = File::open(path).map_err(io_err(path))?;
        read_header(&file, path, base)?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let map = if len == 0 {
            None
        } else {
            Some(
                MmapOptions::new()
                    .map_raw_read_only(&file)
                    .map_err(io_err(path))?,
            )
        };
        Ok(ReadOnlySegment {
            path: path.to_path_buf(),
            base,
            map,
        })
    }

    /// Bytes mapped (the file may be shorter than its header says if cut).
    pub fn len(&self) -> usize {
        self.map.as_ref().map_or(0, MmapRaw::len)
    }

    /// True if nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the bytes at `pos..pos + dst.len()` into `dst`; false (and
    /// nothing copied) if they are not all inside the mapping.
    pub fn copy_to(&self, pos: usize, dst: &mut [u8]) -> bool {
        let Some(map) = &self.map else {
            return dst.is_empty();
        };
        if pos.checked_add(dst.len()).is_none_or(|end| end > map.len()) {
            return false;
        }
        // SAFETY: `pos..pos + dst.len()` lies inside the mapping (checked
        // above), which lives as long as `self`; the relay never truncates a
        // segment file, so every mapped page stays backed.
        unsafe { volatile_copy(map.as_ptr().add(pos), dst) };
        true
    }

    /// Position after the last non-zero byte (0 if all are zero): where
    /// anything written, whole or torn, ends.
    pub fn written_end(&self) -> usize {
        let mut chunk = [0u8; 4096];
        let mut end = self.len();
        while end > 0 {
            let start = end.saturating_sub(chunk.len());
            let part = &mut chunk[..end - start];
            if !self.copy_to(start, part) {
                return 0;
            }
            if let Some(i) = part.iter().rposition(|&b| b != 0) {
                return start + i + 1;
            }
            end = start;
        }
        0
    }

    /// A reader of this segment's records that copies each into its own buffer.
    pub fn reader(&self) -> CopyingReader<'_> {
        CopyingReader {
            segment: self,
            buf: Vec::new(),
        }
    }
}

/// Copies `dst.len()` bytes from `src` with volatile reads, a word at a time
/// where `src` is aligned. Bytes another process is writing meanwhile arrive
/// as some value, old or new; the caller checks them after the copy.
///
/// # Safety
///
/// `src..src + dst.len()` must be mapped, readable memory for the whole call.
unsafe fn volatile_copy(src: *const u8, dst: &mut [u8]) {
    const WORD: usize = std::mem::size_of::<u64>();
    let n = dst.len();
    let mut i = 0;
    let read_byte = |i: usize| {
        // SAFETY: `src..src + n` is readable (this function's contract) and
        // `i < n`; a byte read has no alignment requirement.
        unsafe { ptr::read_volatile(src.add(i)) }
    };
    while i < n && !(src as usize + i).is_multiple_of(WORD) {
        dst[i] = read_byte(i);
        i += 1;
    }
    while i + WORD <= n {
        // SAFETY: `src + i` is 8-aligned (the loop above) and its 8 bytes
        // lie inside `src..src + n`, which is readable (the contract).
        let word = unsafe { ptr::read_volatile(src.add(i).cast::<u64>()) };
        dst[i..i + WORD].copy_from_slice(&word.to_ne_bytes());
        i += WORD;
    }
    while i < n {
        dst[i] = read_byte(i);
        i += 1;
    }
}

/// Reads the records of a [`ReadOnlySegment`]: copies the header, checks it,
/// copies the payload, checks the CRC of the copy, and hands out the copy.
pub struct CopyingReader<'a> {
    segment: &'a ReadOnlySegment,
    /// The last record read: its bytes after the length and CRC fields.
    buf: Vec<u8>,
}

impl RecordReader for CopyingReader<'_> {
    fn slot(&mut self, pos: usize, expected: u64) -> Slot<'_> {
        let len = self.segment.len();
        let mut head = [0u8; RECORD_HEADER];
        if !self.segment.copy_to(pos, &mut head) {
            return Slot::End;
        }
        let header = match check_header(&head, pos, len, expected) {
            Ok(header) => header,
            Err(slot) => return slot,
        };
        // The length bounds the copy: it was checked against the mapping.
        self.buf.resize(header.length - RECORD_HEADER, 0);
        if !self.segment.copy_to(pos + RECORD_HEADER, &mut self.buf) {
            return Slot::Bad("length runs past the end of the segment");
        }
        if record_crc(&head[..4], &[&head[8..], &self.buf]) != header.crc {
            return Slot::Bad("checksum mismatch");
        }
        let next = pos + align8(header.length);
        Slot::Record(header.with_body(&self.buf), next)
    }

    fn offset_field(&mut self, pos: usize) -> Option<u64> {
        let mut field = [0u8; 8];
        self.segment
            .copy_to(pos + 8, &mut field)
            .then(|| u64::from_le_bytes(field))
    }
}
