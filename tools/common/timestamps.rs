//! `--timestamps`: how `udpcat sub` and `udprelay log dump` show the time
//! the relay stored with each message (nanoseconds since the Unix epoch).

use time::OffsetDateTime;
use time::macros::format_description;

/// How each message's stored time is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Timestamps {
    /// Not shown.
    None,
    /// Nanoseconds since the Unix epoch, as stored.
    UnixNs,
    /// RFC 3339 in UTC, always to the nanosecond: 2026-12-04T01:02:03.456789012Z.
    Rfc3339,
}

impl Timestamps {
    /// What a text line shows for `unix_nanos`; nothing for `none`.
    pub fn text(self, unix_nanos: u64) -> Option<String> {
        match self {
            Timestamps::None => None,
            Timestamps::UnixNs => Some(unix_nanos.to_string()),
            Timestamps::Rfc3339 => Some(rfc3339(unix_nanos)),
        }
    }

    /// Adds to a message's JSON object what this shows beyond its
    /// `timestamp` (nanoseconds, always there, so a consumer's key never
    /// changes type): `timestamp_rfc3339` for `rfc3339`.
    pub fn add_to(self, message: &mut serde_json::Value, unix_nanos: u64) {
        if self == Timestamps::Rfc3339 {
            message["timestamp_rfc3339"] = rfc3339(unix_nanos).into();
        }
    }
}

/// `unix_nanos` as RFC 3339 in UTC with all nine digits of the fraction, so
/// that every line is as wide and they sort as text.
pub fn rfc3339(unix_nanos: u64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");
    // Every u64 of nanoseconds (up to the year 2554) is a date `time` can
    // write; the number itself is the fallback all the same.
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_nanos))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| unix_nanos.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_to_the_nanosecond_with_every_digit() {
        // 2026-12-04T01:02:03Z is 1796346123 s after the epoch.
        assert_eq!(
            rfc3339(1_796_346_123_456_789_012),
            "2026-12-04T01:02:03.456789012Z"
        );
        assert_eq!(
            rfc3339(1_796_346_123_000_000_000),
            "2026-12-04T01:02:03.000000000Z"
        );
        assert_eq!(rfc3339(u64::MAX), "2554-07-21T23:34:33.709551615Z");
        assert_eq!(Timestamps::None.text(5), None);
        assert_eq!(Timestamps::UnixNs.text(5).as_deref(), Some("5"));
    }
}
