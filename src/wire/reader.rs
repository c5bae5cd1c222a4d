//! A bounds-checked cursor over a frame body, the only way the decoder reads
//! bytes: every read checks the length first and fails with
//! [`WireError::BadLength`] instead of panicking.

use super::{WireError, validate_channel};

/// A cursor over a frame body that checks every length before it reads.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(WireError::BadLength)?;
        self.buf = rest;
        Ok(*head)
    }

    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.buf.len() < n {
            return Err(WireError::BadLength);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(super) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take::<1>()?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, WireError> {
        self.take().map(u16::from_le_bytes)
    }

    pub(super) fn u32(&mut self) -> Result<u32, WireError> {
        self.take().map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self) -> Result<u64, WireError> {
        self.take().map(u64::from_le_bytes)
    }

    /// Bytes after a one-byte length: the form of channel and counter names.
    fn len_prefixed(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.u8()? as usize;
        self.bytes(len)
    }

    pub(super) fn channel(&mut self) -> Result<&'a str, WireError> {
        validate_channel(self.len_prefixed()?)
    }

    /// A channel name; `last`, a name checked before, when the bytes are
    /// the same (a comparison instead of the check).
    pub(super) fn channel_after(&mut self, last: Option<&'a str>) -> Result<&'a str, WireError> {
        let name = self.len_prefixed()?;
        match last {
            Some(last) if last.as_bytes() == name => Ok(last),
            _ => validate_channel(name),
        }
    }

    pub(super) fn stat_entry(&mut self) -> Result<(&'a str, u64), WireError> {
        let name = std::str::from_utf8(self.len_prefixed()?)
            .map_err(|_| WireError::InvalidField("stat name"))?;
        Ok((name, self.u64()?))
    }

    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// The bytes not read yet, without consuming them.
    pub(super) fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub(super) fn rest_is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(super) fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::BadLength)
        }
    }
}
