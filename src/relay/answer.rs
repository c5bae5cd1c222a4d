//! Answers to the sender of a datagram: whether its address is proven (the
//! token it leads with), what may go back to it until it is (at most the
//! bytes it sent, datagram by datagram), the tokens the relay hands out,
//! and errors.

use std::net::SocketAddr;

use super::replies::{self, truncate_utf8};
use super::secure::Handshake;
use super::validation::{self, Proof};
use super::{Now, Relay, stats};
use crate::wire::{self, ErrorCode, Frame};

impl Relay {
    /// Decodes a datagram and handles its frames in order: the ones that
    /// need a proven address only if the datagram leads with a valid token.
    /// A datagram that opened under a session is `proven` from the start:
    /// the session was made for an address that proved it, and only the
    /// key holder can seal a fresh datagram of it.
    pub(super) fn handle_frames(
        &mut self,
        now: Now,
        from: SocketAddr,
        datagram: &[u8],
        proven: bool,
    ) {
        let frames = match wire::decode_datagram(datagram) {
            Ok(frames) => frames,
            Err(e) => {
                if let Some(code) = replies::undecodable(&e, &mut self.counters) {
                    self.reply_error(now, from, code, &e.to_string());
                }
                return;
            }
        };
        let (mut proven, mut sent_token) = (proven, false);
        for (i, frame) in frames.enumerate() {
            match frame {
                Ok(Frame::Validate { token }) if i == 0 => {
                    // A sealed datagram is proven whatever its token says.
                    proven = self.validate(now, from, &token) || proven;
                    sent_token = !proven;
                }
                Ok(Frame::Handshake {
                    key_id,
                    expires,
                    message,
                }) => {
                    // A handshake ends the datagram: what follows it would
                    // be answered under a session the client cannot read yet.
                    self.handshake(now, from, proven, key_id, expires, &message);
                    return;
                }
                Ok(frame) if proven || !validation::needs_proof(&frame) => {
                    self.counters.frames_received += 1;
                    self.handle_frame(now, from, frame);
                }
                Ok(_) => {
                    self.counters.dropped_unproven += 1;
                    if !std::mem::replace(&mut sent_token, true) {
                        self.send_token(now, from);
                    }
                }
                Err(e) => {
                    self.counters.dropped_malformed += 1;
                    self.reply_error(now, from, ErrorCode::MALFORMED, &e.to_string());
                    break;
                }
            }
        }
    }

    /// A plain datagram where keys are required: only the steps to a
    /// session are taken (a token checked, a handshake answered); anything
    /// else is dropped, counted, and gets no answer at all.
    pub(super) fn stranger_frames(&mut self, now: Now, from: SocketAddr, datagram: &[u8]) {
        let Ok(frames) = wire::decode_datagram(datagram) else {
            self.counters.dropped_unauthenticated += 1;
            return;
        };
        let mut proven = false;
        for (i, frame) in frames.enumerate() {
            match frame {
                Ok(Frame::Validate { token }) if i == 0 => {
                    proven = self
                        .tokens
                        .check(now.instant, now.unix_secs(), from, &token)
                        != Proof::Invalid;
                }
                Ok(Frame::Handshake {
                    key_id,
                    expires,
                    message,
                }) => return self.handshake(now, from, proven, key_id, expires, &message),
                _ => break,
            }
        }
        self.counters.dropped_unauthenticated += 1;
    }

    /// Answers a handshake: a token if it verified but the address is not
    /// proven, a new session if it is; a refusal gets no answer.
    fn handshake(
        &mut self,
        now: Now,
        from: SocketAddr,
        proven: bool,
        key_id: u32,
        expires: u64,
        message: &[u8; wire::NOISE_MESSAGE_LEN],
    ) {
        let Some(secure) = &mut self.secure else {
            self.counters.dropped_unsupported += 1;
            return;
        };
        let (session, reply) = match secure.handshake(now, from, proven, key_id, expires, message) {
            Handshake::Refused => {
                self.counters.handshakes_refused += 1;
                return;
            }
            Handshake::Token => return self.send_token(now, from),
            Handshake::Again { session, reply } => (session, reply),
            Handshake::Opened {
                session,
                reply,
                replaced_other_key,
            } => {
                self.counters.handshakes += 1;
                if replaced_other_key {
                    // What the address held was allowed under another key.
                    self.session_ended(from);
                } else if self.peers.get(&from).is_some_and(|p| p.owner().is_none()) {
                    // What it held anonymously was charged to no key and
                    // allowed under other permissions: it goes too.
                    let expired = self.remove_peer(from);
                    self.counters.subscriptions_expired += expired as u64;
                }
                (session, reply)
            }
        };
        // Alone in its datagram: the one datagram to a session's address
        // that is not sealed (the client needs it to make the keys).
        let frame = Frame::HandshakeReply {
            session,
            message: reply,
        };
        if let Ok(datagram) = wire::encode_datagram(&[frame]) {
            self.peers.heard_from(from, now.instant);
            self.outbox.push_raw(from, &datagram);
        }
    }

    /// Checks the token a datagram from `from` starts with. Proven, the
    /// address may be answered in full and its lease runs on; if not, it is
    /// sent a token (the VALIDATE frame paid for it).
    pub(super) fn validate(
        &mut self,
        now: Now,
        from: SocketAddr,
        token: &[u8; wire::TOKEN_LEN],
    ) -> bool {
        match self.tokens.check(now.instant, now.unix_secs(), from, token) {
            Proof::Valid { stale } => {
                self.unproven = None;
                self.peers.heard_from(from, now.instant);
                if stale {
                    self.send_token(now, from);
                }
                true
            }
            Proof::Invalid => {
                self.counters.tokens_refused += 1;
                self.send_token(now, from);
                false
            }
        }
    }

    /// Sends `to` a fresh address token, if what it sent pays for it (and,
    /// unproven, within the rate of tokens to strangers).
    pub(super) fn send_token(&mut self, now: Now, to: SocketAddr) {
        if self.unproven.is_some()
            && !(self.source_replies.take(now.instant, to) && self.token_replies.take(now.instant))
        {
            self.counters.errors_suppressed += 1;
            return;
        }
        let token = self.tokens.issue(now.instant, now.unix_secs(), to);
        let frame = Frame::AddressToken { token };
        if self.may_answer(to, frame.encoded_len()) {
            self.counters.tokens_sent += 1;
            self.outbox.push_frame(to, &frame);
        }
    }

    /// True (and charged) if a frame of `len` bytes may go to `to` in
    /// answer to the datagram being handled: always for a proven address;
    /// for an unproven one, within what it sent, counting the header of a
    /// datagram the frame would open (answers that fill one datagram go on
    /// in another, with a header of its own).
    pub(super) fn may_answer(&mut self, to: SocketAddr, len: usize) -> bool {
        let Some((addr, left)) = self.unproven else {
            return true;
        };
        if addr != to {
            return true;
        }
        let cost = len
            + if self.outbox.opens_datagram(to, len) {
                self.header_cost(to)
            } else {
                0
            };
        if cost > left {
            self.counters.dropped_reply_too_large += 1;
            return false;
        }
        self.unproven = Some((addr, left - cost));
        true
    }

    /// Bytes a datagram to `to` adds around its frames: the header, and
    /// the nonce and tag if it is sealed.
    fn header_cost(&self, to: SocketAddr) -> usize {
        match &self.secure {
            Some(s) if s.has_session(to) => wire::HEADER_LEN + wire::SEAL_OVERHEAD,
            _ => wire::HEADER_LEN,
        }
    }

    /// Sends `to` an ERROR, within the reply rate (and, to an unproven
    /// address, cut to what it sent).
    pub(super) fn reply_error(&mut self, now: Now, to: SocketAddr, code: ErrorCode, reason: &str) {
        let unproven = self.unproven.is_some_and(|(addr, _)| addr == to);
        if unproven && !self.source_replies.take(now.instant, to)
            || !self.error_replies.take(now.instant)
        {
            self.counters.errors_suppressed += 1;
            return;
        }
        // To an unproven address, the reason is cut to what it sent (less
        // a header, should the ERROR open a datagram).
        let room = match self.unproven {
            Some((addr, left)) if addr == to => left.saturating_sub(self.header_cost(to)),
            _ => usize::MAX,
        };
        let fixed = Frame::Error { code, reason: "" }.encoded_len();
        let reason = truncate_utf8(reason, 200.min(room.saturating_sub(fixed)));
        let frame = Frame::Error { code, reason };
        if self.may_answer(to, frame.encoded_len()) {
            self.counters.errors_sent += 1;
            self.outbox.push_frame(to, &frame);
        }
    }

    /// Answers a STATS request (from a proven address): one page at the
    /// reply rate, never larger than the request (its padding is the
    /// answer's room).
    pub(super) fn stats(&mut self, now: Now, from: SocketAddr, cursor: u32, padding: u16) {
        let Some(room) = stats::room(padding) else {
            // Unpadded (as earlier builds asked): no answer fits.
            self.counters.dropped_unsupported += 1;
            return;
        };
        if !self.error_replies.take(now.instant) {
            self.counters.errors_suppressed += 1;
            return;
        }
        let counters = self
            .counters
            .entries(self.channel_count(), self.subscriptions.count());
        // Other clients' rows only for an admin, or where there are no keys.
        let admin = match self.secure.as_ref().and_then(|s| s.permissions(self.who)) {
            Some(perms) => perms.admin,
            None => true,
        };
        let only = (!admin).then_some(from);
        let streams = stats::stream_stats(&self.peers, &self.channels, only);
        stats::push_page(&mut self.outbox, from, counters, &streams, cursor, room);
    }
}
