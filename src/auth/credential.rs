//! The credential: the one string a client is handed, and the derivation of
//! time-limited credentials from a master key.
//!
//! Written `udprelay1:<id>:<expires>:<secret>`: the key id, the expiry in
//! unix seconds (0 for never: a key's own credential), and the secret in
//! base64url without padding, so it survives shells, URLs and config files
//! unquoted. A time-limited credential names its master key's id; its secret
//! is derived from the master secret, the expiry and the key's name, so an
//! operator can hand one out without touching the relay, and the relay
//! recomputes it from the key file ([`super::KeyFile::secret_for`]).

use std::fmt;
use std::str::FromStr;

use super::{Key, Secret, decode_secret};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use thiserror::Error;

/// What every credential string starts with; the digit is the format version.
const PREFIX: &str = "udprelay1";

/// Why a credential string was refused. None of them repeats the secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CredentialError {
    /// Not four `:`-separated fields starting with `udprelay1`.
    #[error("not a udprelay credential: expected udprelay1:<id>:<expires>:<secret>")]
    Format,
    /// The key id is not a number from 1 to 4294967295.
    #[error("credential key id must be a number from 1 to 4294967295")]
    BadId,
    /// The expiry is not a number of unix seconds.
    #[error("credential expiry must be a number of unix seconds (0 for never)")]
    BadExpires,
    /// The secret is not 32 bytes in base64url without padding.
    #[error("credential secret must be 32 bytes in base64url without padding")]
    BadSecret,
}

/// A client's credential: which key, until when, and the secret to prove it.
/// `Display` writes the string to hand to the client (secret included);
/// `Debug` leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The key id, as in the key file.
    pub id: u32,
    /// Unix seconds after which it is refused; 0 for never.
    pub expires: u64,
    /// The key's own secret (expires 0) or one derived from it.
    pub secret: Secret,
}

/// The secret of a time-limited credential: BLAKE3 keyed by the master
/// secret over `udprelay derive v1 {expires}:{name}`, where `name` is the
/// master key's name. The text is unambiguous: the expiry is all digits, so
/// the first `:` ends it.
pub fn derive_secret(master: &Secret, name: &str, expires: u64) -> Secret {
    let input = format!("udprelay derive v1 {expires}:{name}");
    Secret::from_bytes(*blake3::keyed_hash(master.expose(), input.as_bytes()).as_bytes())
}

impl Key {
    /// The key's own credential: its secret, never expiring.
    pub fn credential(&self) -> Credential {
        Credential {
            id: self.id(),
            expires: 0,
            secret: self.secret().clone(),
        }
    }

    /// A credential refused from `expires` (unix seconds, not 0) on, derived
    /// from this key; the relay recomputes it from the file alone.
    pub fn derive(&self, expires: u64) -> Credential {
        Credential {
            id: self.id(),
            expires,
            secret: derive_secret(self.secret(), self.name(), expires),
        }
    }
}

/// Parses a field of ASCII digits only: no sign, no spaces.
fn digits<T: FromStr>(field: &str) -> Option<T> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

impl Credential {
    /// The credential of a `--credential STRING` or `--credential-file
    /// FILE` flag (the file's first line), if either is given: what every
    /// client binary takes. The error names the flag, never the secret.
    pub fn from_flags(
        text: Option<&str>,
        file: Option<&std::path::Path>,
    ) -> Result<Option<Credential>, String> {
        let (text, flag) = match (text, file) {
            (Some(t), _) => (t.to_string(), "--credential".to_string()),
            (None, Some(path)) => {
                let mut text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                text.truncate(text.find('\n').unwrap_or(text.len()));
                (text, format!("--credential-file {}", path.display()))
            }
            (None, None) => return Ok(None),
        };
        text.parse().map(Some).map_err(|e| format!("{flag}: {e}"))
    }
}

impl FromStr for Credential {
    type Err = CredentialError;

    /// Surrounding whitespace (a file's last newline) is ignored.
    fn from_str(s: &str) -> Result<Credential, CredentialError> {
        let mut fields = s.trim().split(':');
        let (Some(PREFIX), Some(id), Some(expires), Some(secret), None) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(CredentialError::Format);
        };
        let id = digits::<u32>(id)
            .filter(|&id| id != 0)
            .ok_or(CredentialError::BadId)?;
        let expires = digits(expires).ok_or(CredentialError::BadExpires)?;
        let secret = decode_secret(&URL_SAFE_NO_PAD, secret).ok_or(CredentialError::BadSecret)?;
        Ok(Credential {
            id,
            expires,
            secret,
        })
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = URL_SAFE_NO_PAD.encode(self.secret.expose());
        write!(f, "{PREFIX}:{}:{}:{secret}", self.id, self.expires)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("expires", &self.expires)
            .field("secret", &self.secret)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SECRET_LEN;

    fn credential(expires: u64) -> Credential {
        Credential {
            id: 7,
            expires,
            secret: Secret::from_bytes(std::array::from_fn(|i| i as u8)),
        }
    }

    #[test]
    fn display_and_parse_round_trip() {
        for expires in [0, 1_700_000_000, u64::MAX] {
            let c = credential(expires);
            let text = c.to_string();
            assert!(
                text.starts_with(&format!("udprelay1:7:{expires}:")),
                "{text}"
            );
            assert!(!text.contains('='), "no padding: {text}");
            assert_eq!(text.parse::<Credential>(), Ok(c));
        }
        let with_newline = format!("{}\n", credential(0));
        assert_eq!(with_newline.parse::<Credential>(), Ok(credential(0)));
    }

    #[test]
    fn the_secret_is_base64url_without_padding() {
        // 0xfb bytes encode as `-_v7` in base64url (`+/v7` in plain base64).
        let c = Credential {
            secret: Secret::from_bytes([0xfb; SECRET_LEN]),
            ..credential(0)
        };
        let text = c.to_string();
        let secret = text.rsplit(':').next().unwrap();
        assert_eq!(secret.len(), 43);
        assert!(secret.contains('-') || secret.contains('_'), "{secret}");
        assert!(!secret.contains('+') && !secret.contains('/'), "{secret}");
    }

    #[test]
    fn debug_leaves_the_secret_out() {
        let c = credential(0);
        let secret = c.to_string().rsplit(':').next().unwrap().to_string();
        let debug = format!("{c:?}");
        assert!(!debug.contains(&secret), "{debug}");
        assert_eq!(
            debug,
            "Credential { id: 7, expires: 0, secret: Secret(redacted) }"
        );
    }

    #[test]
    fn malformed_credentials_are_refused() {
        let good = credential(0).to_string();
        let secret = good.rsplit(':').next().unwrap();
        let cases = [
            (String::new(), CredentialError::Format),
            ("udprelay1:7:0".to_string(), CredentialError::Format),
            (format!("udprelay2:7:0:{secret}"), CredentialError::Format),
            (format!("udprelay1:7:0:{secret}:x"), CredentialError::Format),
            (format!("udprelay1:0:0:{secret}"), CredentialError::BadId),
            (format!("udprelay1:+7:0:{secret}"), CredentialError::BadId),
            (
                format!("udprelay1:4294967296:0:{secret}"),
                CredentialError::BadId,
            ),
            (
                format!("udprelay1:7:-1:{secret}"),
                CredentialError::BadExpires,
            ),
            (
                format!("udprelay1:7: 1:{secret}"),
                CredentialError::BadExpires,
            ),
            (
                format!("udprelay1:7:0:{secret}="),
                CredentialError::BadSecret,
            ),
            (
                format!("udprelay1:7:0:{}", &secret[..42]),
                CredentialError::BadSecret,
            ),
            (
                format!("udprelay1:7:0:{secret}AAAA"),
                CredentialError::BadSecret,
            ),
            ("udprelay1:7:0:".to_string(), CredentialError::BadSecret),
            (
                format!("udprelay1:7:0:+{}", &secret[1..]),
                CredentialError::BadSecret,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Credential>(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn derived_secrets_depend_on_master_name_and_expiry() {
        let master = Secret::from_bytes([1; SECRET_LEN]);
        let base = derive_secret(&master, "sensor-7", 100);
        assert_eq!(base, derive_secret(&master, "sensor-7", 100));
        assert_ne!(base, master);
        assert_ne!(base, derive_secret(&master, "sensor-7", 101));
        assert_ne!(base, derive_secret(&master, "sensor-8", 100));
        assert_ne!(
            base,
            derive_secret(&Secret::from_bytes([2; SECRET_LEN]), "sensor-7", 100)
        );
        // The construction as documented, computed independently.
        let expected = blake3::keyed_hash(&[1; SECRET_LEN], b"udprelay derive v1 100:sensor-7");
        assert_eq!(base.expose(), expected.as_bytes());
    }
}
