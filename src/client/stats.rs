//! The STATS client: pages through the relay's counters.
//!
//! The relay answers a STATS_REQUEST with one datagram no larger than the
//! request, so the request is padded to the datagram size the client is
//! willing to receive (as QUIC pads its Initial), and a list longer than one
//! page is read page by page, each request naming the first entry it wants.

use std::time::{Duration, Instant};

use thiserror::Error;

use super::{AddressProof, each_frame};
use crate::wire::{
    self, FRAME_HEADER_LEN, Frame, HEADER_LEN, MAX_DATAGRAM, MAX_FRAME_BODY, StatEntries,
};

/// How long a page request waits for its answer before it is sent again.
pub const STATS_RETRY: Duration = Duration::from_millis(250);

/// Most entries collected: a relay lists a few hundred, and a hostile one
/// paging forever must not make the client hold without bound.
pub const MAX_STATS_ENTRIES: usize = 1 << 16;

/// Smallest request datagram: header, address token, frame header, cursor,
/// and padding for the answer's fixed part.
pub const MIN_STATS_REQUEST: usize =
    HEADER_LEN + wire::VALIDATE_LEN + FRAME_HEADER_LEN + wire::STATS_FIXED;

/// Why reading the counters failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StatsError {
    /// No page came back within the reply timeout.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// A page came back empty but not last: the next entry does not fit a
    /// datagram of this size.
    #[error("the relay's next counter does not fit a {0}-byte datagram")]
    TooSmall(usize),
    /// The relay's pages went backwards or on past [`MAX_STATS_ENTRIES`].
    #[error("the relay's pages do not end (more than {MAX_STATS_ENTRIES} entries)")]
    Endless,
}

/// Reads the relay's counters page by page: send what
/// [`StatsPager::poll_transmit`] returns, feed answers to
/// [`StatsPager::handle_datagram`], call [`StatsPager::handle_timeout`] at
/// [`StatsPager::poll_timeout`], and take the list from
/// [`StatsPager::poll_outcome`].
#[derive(Debug)]
pub struct StatsPager {
    /// Bytes of each request datagram, padding included.
    request_size: usize,
    /// Silence after which the pager gives up.
    reply_timeout: Duration,
    /// Index of the first entry of the page wanted.
    cursor: u32,
    /// Entries of the pages read so far, in order.
    entries: Vec<(String, u64)>,
    /// When the next request (first or retry) is due.
    next_send: Instant,
    /// When the relay last answered, or the pager started.
    heard: Instant,
    /// The result, once there is one; `None` inside once taken.
    outcome: Option<Result<Vec<(String, u64)>, StatsError>>,
    /// True once the outcome is known (and maybe taken).
    finished: bool,
    /// The address token sent with every request.
    proof: AddressProof,
}

impl StatsPager {
    /// A pager whose first request is due at `now`, padding each request to
    /// `request_size` bytes (at least [`MIN_STATS_REQUEST`]), that gives up
    /// after `reply_timeout` without a page.
    pub fn new(now: Instant, request_size: usize, reply_timeout: Duration) -> StatsPager {
        // One frame in one UDP datagram.
        let largest = (HEADER_LEN + FRAME_HEADER_LEN + MAX_FRAME_BODY).min(MAX_DATAGRAM);
        StatsPager {
            request_size: request_size.clamp(MIN_STATS_REQUEST, largest),
            reply_timeout,
            cursor: 0,
            entries: Vec::new(),
            next_send: now,
            heard: now,
            outcome: None,
            finished: false,
            proof: AddressProof::new(),
        }
    }

    /// The page request due at `now`, if any.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.finished {
            return None;
        }
        if !self.proof.is_proven() {
            return self.proof.poll_hello(now);
        }
        if now < self.next_send {
            return None;
        }
        self.next_send = now + STATS_RETRY;
        // The request, token included, is `request_size` bytes.
        let padding = self.request_size
            - HEADER_LEN
            - wire::VALIDATE_LEN
            - FRAME_HEADER_LEN
            - wire::STATS_REQUEST_FIXED;
        let frame = Frame::StatsRequest {
            cursor: self.cursor,
            // Clamped in new() to what one frame body holds.
            padding: padding as u16,
        };
        wire::encode_datagram(&[frame])
            .ok()
            .map(|d| self.proof.stamp(d))
    }

    /// When [`StatsPager::poll_transmit`] or [`StatsPager::handle_timeout`]
    /// next has work; `None` once finished.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next_send = self.proof.poll_timeout().unwrap_or(self.next_send);
        (!self.finished).then(|| next_send.min(self.heard + self.reply_timeout))
    }

    /// Gives up once the reply timeout has passed without a page.
    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.finished && now >= self.heard + self.reply_timeout {
            self.finish(Err(StatsError::NoAnswer(self.reply_timeout)));
        }
    }

    /// Reads a datagram from the relay: the page for the current cursor
    /// advances the pager; pages for other cursors (answers to retries that
    /// came late) are ignored. Returns false if the datagram did not decode.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> bool {
        if self.proof.handle_datagram(now, datagram) {
            self.next_send = now;
        }
        each_frame(datagram, |frame| {
            if let Frame::Stats {
                cursor,
                next,
                entries,
            } = frame
            {
                self.on_page(now, cursor, next, entries);
            }
        })
    }

    fn on_page(&mut self, now: Instant, cursor: u32, next: Option<u32>, entries: StatEntries<'_>) {
        if cursor != self.cursor || self.finished {
            return;
        }
        self.heard = now;
        let before = self.entries.len();
        self.entries.extend(
            entries
                .iter()
                .map(|(name, value)| (name.to_string(), value)),
        );
        let got = self.entries.len() - before;
        match next {
            None => {
                let entries = std::mem::take(&mut self.entries);
                self.finish(Ok(entries));
            }
            Some(_) if got == 0 => self.finish(Err(StatsError::TooSmall(self.request_size))),
            Some(n)
                if u64::from(n) != u64::from(cursor) + got as u64
                    || self.entries.len() > MAX_STATS_ENTRIES =>
            {
                self.finish(Err(StatsError::Endless))
            }
            Some(n) => {
                self.cursor = n;
                self.next_send = now;
            }
        }
    }

    fn finish(&mut self, outcome: Result<Vec<(String, u64)>, StatsError>) {
        self.finished = true;
        self.outcome = Some(outcome);
    }

    /// Every entry in order once the last page is in, or why not; taken, so
    /// it is reported once.
    pub fn poll_outcome(&mut self) -> Option<Result<Vec<(String, u64)>, StatsError>> {
        self.outcome.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// The cursor and datagram size of a page request.
    fn request_of(datagram: &[u8]) -> (u32, usize) {
        match super::super::after_token(datagram).first() {
            Some(Frame::StatsRequest { cursor, .. }) => (*cursor, datagram.len()),
            other => panic!("not a stats request: {other:?}"),
        }
    }

    /// A pager that has sent its hello at `t` and got a token.
    fn proven(mut p: StatsPager, t: Instant) -> StatsPager {
        let hello = p.poll_transmit(t).expect("a hello first");
        assert_eq!(hello, AddressProof::hello());
        p.handle_datagram(t, &super::super::token_datagram());
        p
    }

    fn page(cursor: u32, next: Option<u32>, entries: &[(&str, u64)]) -> Vec<u8> {
        wire::encode_datagram(&[Frame::Stats {
            cursor,
            next,
            entries: StatEntries::List(entries),
        }])
        .unwrap()
    }

    #[test]
    fn pages_until_the_last_each_request_padded() {
        let t = Instant::now();
        let mut p = proven(StatsPager::new(t, 300, 2000 * MS), t);
        assert_eq!(request_of(&p.poll_transmit(t).unwrap()), (0, 300));
        assert!(p.poll_transmit(t).is_none(), "one request at a time");
        assert!(p.handle_datagram(t + MS, &page(0, Some(2), &[("a", 1), ("b", 2)])));
        assert_eq!(
            request_of(&p.poll_transmit(t + MS).unwrap()),
            (2, 300),
            "the next page at once"
        );
        p.handle_datagram(t + 2 * MS, &page(2, None, &[("c", 3)]));
        assert_eq!(
            p.poll_outcome(),
            Some(Ok(vec![("a".into(), 1), ("b".into(), 2), ("c".into(), 3)]))
        );
        assert_eq!(p.poll_timeout(), None);
        assert!(p.poll_transmit(t + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn a_lost_page_is_asked_for_again_and_a_late_duplicate_ignored() {
        let t = Instant::now();
        let mut p = proven(StatsPager::new(t, 1400, 2000 * MS), t);
        p.poll_transmit(t).unwrap();
        assert!(p.poll_transmit(t + STATS_RETRY - MS).is_none());
        assert_eq!(p.poll_timeout(), Some(t + STATS_RETRY));
        assert_eq!(request_of(&p.poll_transmit(t + STATS_RETRY).unwrap()).0, 0);
        // Both requests are answered; the second answer of page 0 comes
        // after page 1 was asked for and must not be taken for page 1.
        let first = page(0, Some(1), &[("a", 1)]);
        p.handle_datagram(t + STATS_RETRY + MS, &first);
        assert_eq!(
            request_of(&p.poll_transmit(t + STATS_RETRY + MS).unwrap()).0,
            1
        );
        p.handle_datagram(t + STATS_RETRY + 2 * MS, &first);
        p.handle_datagram(t + STATS_RETRY + 3 * MS, &page(1, None, &[("b", 2)]));
        assert_eq!(
            p.poll_outcome(),
            Some(Ok(vec![("a".into(), 1), ("b".into(), 2)]))
        );
    }

    #[test]
    fn gives_up_after_the_reply_timeout_of_silence_not_before() {
        let t = Instant::now();
        let mut p = proven(StatsPager::new(t, 1400, 600 * MS), t);
        p.poll_transmit(t).unwrap();
        // A page at 400 ms restarts the wait.
        p.handle_datagram(t + 400 * MS, &page(0, Some(1), &[("a", 1)]));
        p.handle_timeout(t + 999 * MS);
        assert_eq!(p.poll_outcome(), None);
        assert_eq!(p.poll_timeout(), Some(t + 400 * MS), "page 1 is due");
        p.poll_transmit(t + 400 * MS).unwrap();
        assert_eq!(p.poll_timeout(), Some(t + 650 * MS));
        p.poll_transmit(t + 650 * MS).unwrap();
        p.poll_transmit(t + 900 * MS).unwrap();
        assert_eq!(p.poll_timeout(), Some(t + 1000 * MS));
        p.handle_timeout(t + 1000 * MS);
        assert_eq!(p.poll_outcome(), Some(Err(StatsError::NoAnswer(600 * MS))));
    }

    #[test]
    fn pages_that_do_not_advance_end_in_an_error() {
        let t = Instant::now();
        let mut p = proven(StatsPager::new(t, 0, 2000 * MS), t);
        assert_eq!(
            request_of(&p.poll_transmit(t).unwrap()).1,
            MIN_STATS_REQUEST,
            "never smaller than room for an answer"
        );
        p.handle_datagram(t, &page(0, Some(0), &[]));
        assert_eq!(
            p.poll_outcome(),
            Some(Err(StatsError::TooSmall(MIN_STATS_REQUEST)))
        );

        let mut huge = proven(StatsPager::new(t, usize::MAX, 2000 * MS), t);
        assert_eq!(
            request_of(&huge.poll_transmit(t).unwrap()).1,
            MAX_DATAGRAM,
            "never larger than a UDP datagram"
        );

        let mut q = proven(StatsPager::new(t, 1400, 2000 * MS), t);
        q.poll_transmit(t).unwrap();
        q.handle_datagram(t, &page(0, Some(9), &[("a", 1)]));
        assert_eq!(q.poll_outcome(), Some(Err(StatsError::Endless)));
    }

    #[test]
    fn the_real_relay_core_pages_within_the_request_size() {
        use crate::config::RelayConfig;
        use crate::relay::{Now, Relay};

        let t = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let now = Now {
            instant: t,
            unix_nanos: 0,
        };
        let config = RelayConfig {
            data_dir: dir.path().to_path_buf(),
            ..RelayConfig::default()
        };
        let mut relay = Relay::open(&config, now).unwrap();
        let me = "127.0.0.1:4000".parse().unwrap();
        let size = 200;
        let mut p = StatsPager::new(t, size, 2000 * MS);
        let mut pages = 0;
        let entries = loop {
            if let Some(outcome) = p.poll_outcome() {
                break outcome.unwrap();
            }
            let request = p.poll_transmit(t).expect("a request is due");
            relay.handle_datagram(now, me, &request);
            let answer = relay.poll_transmit().expect("one answer");
            assert!(relay.poll_transmit().is_none(), "exactly one answer");
            assert!(answer.payload.len() <= request.len());
            p.handle_datagram(t, &answer.payload);
            pages += 1;
        };
        assert!(pages > 1, "{size}-byte pages cannot hold all counters");
        let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
        let expected = relay.counters().entries(0, 0);
        let expected: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, expected, "every counter once, in order");
    }
}
