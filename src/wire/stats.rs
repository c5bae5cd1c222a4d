//! STATS paging: the counter entries a STATS frame carries, their size, and
//! how a reply is cut into pages that fit the request's room.

use super::reader::Reader;

/// A list of `(name, value)` counters: a slice when encoding, the raw bytes of
/// a received frame when decoding (iterate with [`StatEntries::iter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatEntries<'a> {
    /// Entries to encode.
    List(&'a [(&'a str, u64)]),
    /// Entries as received, already validated by the decoder.
    Encoded(&'a [u8]),
}

impl<'a> StatEntries<'a> {
    /// Iterates over the entries in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        let (list, mut raw): (&'a [(&'a str, u64)], &'a [u8]) = match *self {
            StatEntries::List(l) => (l, &[]),
            StatEntries::Encoded(b) => (&[], b),
        };
        let decoded = std::iter::from_fn(move || {
            let mut r = Reader::new(raw);
            let entry = r.stat_entry().ok()?;
            raw = r.rest();
            Some(entry)
        });
        list.iter().copied().chain(decoded)
    }

    /// Bytes the entries take in a frame body.
    pub(super) fn encoded_len(&self) -> usize {
        match *self {
            StatEntries::List(l) => l.iter().map(|(n, _)| stat_entry_len(n)).sum(),
            StatEntries::Encoded(b) => b.len(),
        }
    }
}

/// Bytes one STATS entry takes: length, name (cut at 255 bytes), value.
pub fn stat_entry_len(name: &str) -> usize {
    1 + name.len().min(255) + 8
}

/// Fixed part of a STATS frame body: the cursor it answers and the next one.
pub const STATS_FIXED: usize = 4 + 4;
/// Fixed part of a STATS_REQUEST frame body: the cursor.
pub const STATS_REQUEST_FIXED: usize = 4;
/// The `next` of the last page of STATS.
pub(super) const STATS_LAST_PAGE: u32 = u32::MAX;

/// The page of `entries` that starts at entry `cursor` and fits in `room`
/// bytes of entries, and the cursor of the page after it (`None` if this
/// page reaches the end).
pub fn stats_page<'a>(
    entries: impl IntoIterator<Item = (&'a str, u64)>,
    cursor: u32,
    room: usize,
) -> (Vec<(&'a str, u64)>, Option<u32>) {
    let mut page = Vec::new();
    let mut used = 0;
    let mut rest = entries.into_iter().skip(cursor as usize).peekable();
    while let Some(&(name, value)) = rest.peek() {
        // The last cursor value means "no next page", so a page never
        // reaches it.
        if used + stat_entry_len(name) > room
            || cursor as usize + page.len() >= STATS_LAST_PAGE as usize
        {
            break;
        }
        used += stat_entry_len(name);
        page.push((name, value));
        rest.next();
    }
    let next = rest.peek().map(|_| cursor + page.len() as u32);
    (page, next)
}
