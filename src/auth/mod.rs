//! Who a client is and what it may do: keys, credentials and permissions.
//!
//! This module owns the key file (`keys.rs`: names, ids, secrets and each
//! key's permissions, read from TOML), the credential string a client is
//! handed (`credential.rs`, including the time-limited credentials derived
//! from a master key, the TURN REST pattern), and the permission check
//! ([`Permissions`]: NATS subject patterns, deny before allow), and the
//! keyed session (`session.rs`: the Noise NNpsk0 handshake through `snow`,
//! datagrams sealed with AES-256-GCM under its keys, the replay
//! window). It reads no socket and no clock: the current time is an
//! argument. The relay's table of sessions is `relay::secure`; the client's
//! handshake is `client::secure`.

mod credential;
mod keys;
mod session;

pub use credential::{Credential, CredentialError, derive_secret};
pub use keys::{Key, KeyFile, KeyFileError, NewKey, Quota};
pub use session::{
    Initiator, NOISE_PARAMS, REPLAY_WINDOW, ReplayWindow, Sealer, SessionError, SessionKeys, Side,
    is_sealed, respond, sealed_header, verify,
};

use std::fmt;

use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroize;

use crate::subject::Pattern;

/// Length of every secret, in bytes.
pub const SECRET_LEN: usize = 32;

/// Why a key id and expiry a client presents give no secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No key in the file has this id.
    #[error("no key with id {0}")]
    UnknownKey(u32),
    /// The credential's expiry has passed.
    #[error("credential for key {id} expired at {expires} (now {now}, unix seconds)")]
    Expired {
        /// The key id the credential names.
        id: u32,
        /// Its expiry, unix seconds.
        expires: u64,
        /// The time it was checked at, unix seconds.
        now: u64,
    },
}

/// A 32-byte secret. Equality takes the same time whatever the bytes; it is
/// never printed (its `Debug` shows no byte) and it is zeroed when dropped.
#[derive(Clone)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// Wraps bytes as a secret.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Secret {
        Secret(bytes)
    }

    /// A new secret from the operating system's random source.
    pub fn random() -> Result<Secret, getrandom::Error> {
        let mut secret = Secret([0; SECRET_LEN]);
        getrandom::fill(&mut secret.0)?;
        Ok(secret)
    }

    /// The bytes, for keying a MAC or encoding a credential; do not log them.
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Decodes exactly [`SECRET_LEN`] bytes of base64 in `engine`'s alphabet;
/// `None` for anything else. The scratch buffer is zeroed either way.
fn decode_secret(engine: &impl base64::Engine, text: &str) -> Option<Secret> {
    // Room for more than a secret, so a longer text is refused as the wrong
    // length rather than overflowing.
    let mut buf = [0u8; SECRET_LEN + 3];
    let secret = match engine.decode_slice(text, &mut buf) {
        Ok(SECRET_LEN) => {
            let mut bytes = [0u8; SECRET_LEN];
            bytes.copy_from_slice(&buf[..SECRET_LEN]);
            Some(Secret(bytes))
        }
        _ => None,
    };
    buf.zeroize();
    secret
}

/// Something a client asks to do on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to the channel.
    Publish,
    /// Subscribe to the channel.
    Subscribe,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        })
    }
}

/// A refused request: the permission that is missing, for the ERROR a
/// client is sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("no permission to {action} to channel {channel:?}")]
pub struct Denied {
    /// What was asked.
    pub action: Action,
    /// The channel it was asked on.
    pub channel: String,
}

/// What one key (or anonymous access) may do. The default permits nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// Channels it may publish to.
    pub publish: Vec<Pattern>,
    /// Channels it may subscribe to.
    pub subscribe: Vec<Pattern>,
    /// Channels it may not publish to, whatever `publish` says.
    pub deny_publish: Vec<Pattern>,
    /// Channels it may not subscribe to, whatever `subscribe` says.
    pub deny_subscribe: Vec<Pattern>,
    /// May see other clients' rows in STATS.
    pub admin: bool,
}

impl Permissions {
    /// Ok if publishing to `channel` is allowed and not denied.
    pub fn publish(&self, channel: &str) -> Result<(), Denied> {
        check(Action::Publish, &self.publish, &self.deny_publish, channel)
    }

    /// Ok if subscribing to `channel` is allowed and not denied.
    pub fn subscribe(&self, channel: &str) -> Result<(), Denied> {
        check(
            Action::Subscribe,
            &self.subscribe,
            &self.deny_subscribe,
            channel,
        )
    }
}

impl Permissions {
    /// Ok if a wildcard subscription to `pattern` is allowed: an allow
    /// pattern covers it and no deny pattern does (channels it matches that a
    /// deny pattern names are then left out one by one, as NATS does).
    pub fn subscribe_pattern(&self, pattern: &Pattern) -> Result<(), Denied> {
        let allowed = self.subscribe.iter().any(|a| a.covers(pattern));
        if allowed && !self.deny_subscribe.iter().any(|d| d.covers(pattern)) {
            Ok(())
        } else {
            Err(Denied {
                action: Action::Subscribe,
                channel: pattern.as_str().to_string(),
            })
        }
    }
}

/// Deny takes precedence: a channel any deny pattern matches is refused even
/// if an allow pattern matches it too.
fn check(action: Action, allow: &[Pattern], deny: &[Pattern], channel: &str) -> Result<(), Denied> {
    let allowed = allow.iter().any(|p| p.matches(channel));
    if allowed && !deny.iter().any(|p| p.matches(channel)) {
        Ok(())
    } else {
        Err(Denied {
            action,
            channel: channel.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(list: &[&str]) -> Vec<Pattern> {
        list.iter().map(|p| Pattern::parse(p).unwrap()).collect()
    }

    #[test]
    fn default_permissions_permit_nothing() {
        let none = Permissions::default();
        assert!(none.publish("a").is_err());
        assert!(none.subscribe("a").is_err());
        assert!(!none.admin);
    }

    #[test]
    fn deny_takes_precedence_over_allow() {
        let perms = Permissions {
            publish: patterns(&["sensors.>"]),
            subscribe: patterns(&[">"]),
            deny_publish: patterns(&["sensors.secret.*"]),
            deny_subscribe: patterns(&["admin.>"]),
            admin: false,
        };
        assert_eq!(perms.publish("sensors.7.temp"), Ok(()));
        assert_eq!(
            perms.publish("sensors.secret.key"),
            Err(Denied {
                action: Action::Publish,
                channel: "sensors.secret.key".into()
            })
        );
        assert!(perms.publish("orders.new").is_err());
        assert_eq!(perms.subscribe("orders.new"), Ok(()));
        assert!(perms.subscribe("admin.users").is_err());
    }

    #[test]
    fn a_wildcard_subscription_needs_an_allow_pattern_that_covers_it() {
        let perms = Permissions {
            subscribe: patterns(&["sensors.>", "orders.*"]),
            deny_subscribe: patterns(&["sensors.secret.>"]),
            ..Permissions::default()
        };
        let p = |s| Pattern::parse(s).unwrap();
        assert_eq!(perms.subscribe_pattern(&p("sensors.*")), Ok(()));
        assert_eq!(perms.subscribe_pattern(&p("sensors.eu.>")), Ok(()));
        assert_eq!(perms.subscribe_pattern(&p("orders.*")), Ok(()));
        // Wider than any allow pattern: refused whole, as NATS does.
        for wider in [">", "orders.>", "*.eu"] {
            assert!(perms.subscribe_pattern(&p(wider)).is_err(), "{wider}");
        }
        // All inside a deny pattern: nothing could ever be delivered.
        assert!(perms.subscribe_pattern(&p("sensors.secret.*")).is_err());
        // Partly inside one: allowed, and the denied channels are left out
        // one by one (the relay checks each channel it would follow).
        assert_eq!(perms.subscribe_pattern(&p("sensors.>")), Ok(()));
        assert!(perms.subscribe("sensors.secret.key").is_err());
    }

    #[test]
    fn a_denial_names_the_missing_permission() {
        let denied = Permissions::default().subscribe("orders.eu").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "no permission to subscribe to channel \"orders.eu\""
        );
    }

    #[test]
    fn a_name_with_an_empty_token_cannot_dodge_a_deny() {
        let perms = Permissions {
            publish: patterns(&[">"]),
            deny_publish: patterns(&["secret.>"]),
            ..Permissions::default()
        };
        assert!(perms.publish("secret..x").is_err());
        assert!(perms.publish("secret.x").is_err());
        assert!(perms.publish("public.x").is_ok());
    }

    #[test]
    fn secrets_compare_by_value_and_never_print() {
        let a = Secret::from_bytes([7; SECRET_LEN]);
        let mut other = [7; SECRET_LEN];
        assert_eq!(a, Secret::from_bytes(other));
        other[31] = 8;
        assert_ne!(a, Secret::from_bytes(other));
        assert_eq!(format!("{a:?}"), "Secret(redacted)");
        let r1 = Secret::random().unwrap();
        let r2 = Secret::random().unwrap();
        assert_ne!(r1, r2);
    }
}
