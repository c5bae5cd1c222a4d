//! Address validation: proof that a peer receives at the address its
//! datagrams claim, before the relay sends that address more than it got
//! from it.
//!
//! The proof is a stateless token, as DTLS's cookie and WireGuard's cookie
//! reply: the time it was issued and a MAC (keyed BLAKE3) over the peer's IP
//! address, port and that time, under a secret only the relay knows. The
//! relay sends it in an ADDRESS_TOKEN frame to the claimed address; a client
//! that receives there echoes it in a VALIDATE frame at the head of its
//! datagrams. Checking a token costs one hash and holds no state per peer,
//! so a flood of forged requests costs the relay nothing it keeps.
//!
//! The secret rotates every [`ROTATION`]; tokens made under the previous one
//! are still accepted until the next rotation, and a token is refused once
//! it is older than [`LIFETIME`]. A client that keeps talking is handed a
//! fresh token once its own is older than [`REFRESH_AFTER`], so it never
//! sees one expire.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::wire::{Frame, TOKEN_LEN};

/// True for a frame the relay serves only from a proven address: one whose
/// answer may be larger than it, or that changes what another client of
/// the same address gets (a forged UNSUBSCRIBE, ACK or session piece).
/// PUBLISH, FRAGMENT and PING need no proof: plain publishing stays one
/// datagram, and their answers are never larger than they are.
pub(super) fn needs_proof(frame: &Frame<'_>) -> bool {
    !matches!(
        frame,
        Frame::Publish { .. } | Frame::Fragment { .. } | Frame::Ping { .. }
    )
}

/// How often the secret changes.
pub const ROTATION: Duration = Duration::from_secs(120);
/// The age past which a token is refused.
pub const LIFETIME: Duration = Duration::from_secs(2 * 120);
/// The age past which a client is handed a fresh token.
pub const REFRESH_AFTER: Duration = Duration::from_secs(60);
/// Bytes of a token's MAC.
const MAC_LEN: usize = TOKEN_LEN - 4;
/// Domain separation for the token MAC.
const CONTEXT: &[u8] = b"udprelay address token v1";

/// What a token says about the address it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proof {
    /// The address is proven.
    Valid {
        /// The token is old enough that the client should get a fresh one.
        stale: bool,
    },
    /// No token, or one that is forged, for another address or expired.
    Invalid,
}

/// The secrets tokens are made and checked with.
pub(super) struct AddressTokens {
    current: [u8; 32],
    previous: Option<[u8; 32]>,
    /// When `current` was made.
    rotated_at: Instant,
}

impl std::fmt::Debug for AddressTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secrets are never printed.
        f.debug_struct("AddressTokens")
            .field("rotated_at", &self.rotated_at)
            .finish_non_exhaustive()
    }
}

impl AddressTokens {
    /// A fresh random secret, from the operating system.
    pub(super) fn new(now: Instant) -> std::io::Result<AddressTokens> {
        Ok(AddressTokens {
            current: random_secret()?,
            previous: None,
            rotated_at: now,
        })
    }

    /// Rotates the secret if it is due. Called on every use: it is one
    /// comparison unless a rotation is due.
    fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated_at) < ROTATION {
            return;
        }
        // Without randomness the old secret stays: tokens still expire by
        // their time, so nothing is accepted that should not be.
        if let Ok(fresh) = random_secret() {
            self.previous = Some(std::mem::replace(&mut self.current, fresh));
        }
        self.rotated_at = now;
    }

    /// A token for `addr`, issued at `unix_secs`.
    pub(super) fn issue(
        &mut self,
        now: Instant,
        unix_secs: u64,
        addr: SocketAddr,
    ) -> [u8; TOKEN_LEN] {
        self.rotate(now);
        let issued = unix_secs as u32;
        let mut token = [0u8; TOKEN_LEN];
        token[..4].copy_from_slice(&issued.to_le_bytes());
        token[4..].copy_from_slice(&mac(&self.current, addr, issued));
        token
    }

    /// Checks `token` from `addr` at `unix_secs`.
    pub(super) fn check(
        &mut self,
        now: Instant,
        unix_secs: u64,
        addr: SocketAddr,
        token: &[u8; TOKEN_LEN],
    ) -> Proof {
        self.rotate(now);
        let issued = u32::from_le_bytes([token[0], token[1], token[2], token[3]]);
        // Ages are taken modulo 2^32 seconds, so the clock wrapping in 2106
        // costs one refused token. A token from the future is refused too.
        let age = (unix_secs as u32).wrapping_sub(issued);
        if u64::from(age) >= LIFETIME.as_secs() {
            return Proof::Invalid;
        }
        let claimed = &token[4..];
        let matches = |secret: &[u8; 32]| bool::from(mac(secret, addr, issued).ct_eq(claimed));
        if matches(&self.current) || self.previous.as_ref().is_some_and(matches) {
            Proof::Valid {
                stale: u64::from(age) >= REFRESH_AFTER.as_secs(),
            }
        } else {
            Proof::Invalid
        }
    }
}

/// The MAC of a token: keyed BLAKE3 over the address and the issue time.
fn mac(secret: &[u8; 32], addr: SocketAddr, issued: u32) -> [u8; MAC_LEN] {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut hasher = blake3::Hasher::new_keyed(secret);
    hasher.update(CONTEXT);
    hasher.update(&ip);
    hasher.update(&addr.port().to_le_bytes());
    hasher.update(&issued.to_le_bytes());
    let mut out = [0u8; MAC_LEN];
    hasher.finalize_xof().fill(&mut out);
    out
}

fn random_secret() -> std::io::Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_token_proves_only_the_address_it_was_issued_for() {
        let now = Instant::now();
        let mut tokens = AddressTokens::new(now).unwrap();
        let a = addr("127.0.0.1:4000");
        let token = tokens.issue(now, 1_000, a);
        assert_eq!(
            tokens.check(now, 1_000, a, &token),
            Proof::Valid { stale: false }
        );
        for other in ["127.0.0.1:4001", "127.0.0.2:4000", "[::1]:4000"] {
            assert_eq!(
                tokens.check(now, 1_000, addr(other), &token),
                Proof::Invalid
            );
        }
        // Any changed byte, in the time or the MAC, is refused.
        for i in 0..TOKEN_LEN {
            let mut forged = token;
            forged[i] ^= 1;
            assert_eq!(
                tokens.check(now, 1_000, a, &forged),
                Proof::Invalid,
                "byte {i}"
            );
        }
        assert_eq!(tokens.check(now, 1_000, a, &[0; TOKEN_LEN]), Proof::Invalid);
    }

    #[test]
    fn tokens_age_stale_then_expire_and_survive_one_rotation() {
        let start = Instant::now();
        let mut tokens = AddressTokens::new(start).unwrap();
        let a = addr("10.0.0.1:9");
        let token = tokens.issue(start, 5_000, a);
        let refresh = REFRESH_AFTER.as_secs();
        let lifetime = LIFETIME.as_secs();
        assert_eq!(
            tokens.check(start, 5_000 + refresh - 1, a, &token),
            Proof::Valid { stale: false }
        );
        assert_eq!(
            tokens.check(start, 5_000 + refresh, a, &token),
            Proof::Valid { stale: true }
        );
        // One rotation later the old secret still checks.
        let later = start + ROTATION;
        assert_eq!(
            tokens.check(later, 5_000 + lifetime - 1, a, &token),
            Proof::Valid { stale: true }
        );
        assert_eq!(
            tokens.check(later, 5_000 + lifetime, a, &token),
            Proof::Invalid
        );
        // From the future: refused.
        assert_eq!(tokens.check(later, 4_000, a, &token), Proof::Invalid);
        // Two rotations later the secret it was made with is gone.
        let much_later = later + ROTATION;
        assert_eq!(tokens.check(much_later, 5_001, a, &token), Proof::Invalid);
        let fresh = tokens.issue(much_later, 5_001, a);
        assert_eq!(
            tokens.check(much_later, 5_001, a, &fresh),
            Proof::Valid { stale: false }
        );
    }
}
