//! The key file: TOML naming each key, its id, its secret and its
//! permissions, plus what anonymous clients may do.
//!
//! ```toml
//! [anonymous]                 # optional; absent = nothing
//! publish = ["public.>"]
//! subscribe = ["public.>"]
//!
//! [[key]]
//! name = "sensor-7"           # unique
//! id = 1                      # 1 or more, unique; names the key in datagrams
//! secret = "<base64 of 32 random bytes>"
//! publish = ["sensors.>"]     # patterns (crate::subject); default none
//! subscribe = []
//! deny-publish = []           # deny takes precedence over allow
//! deny-subscribe = []
//! admin = false               # may see other clients in STATS
//! # quotas, across every session of the key; absent = no limit of its own
//! messages-per-sec = 10000     # published (a burst of one second's worth)
//! bytes-per-sec = 10000000     # of published payload
//! max-subscriptions = 100
//! max-sessions = 10            # reliable publishing sessions
//! reassembly-bytes = 8388608   # of unreliable messages arriving in pieces
//! ```
//!
//! Every mistake is one line naming the entry and the field, and the secret
//! is never repeated in one. [`KeyFile::add_key`] (behind `udprelay key new`)
//! appends a table to the file as text, so the operator's comments and layout
//! stay as they were.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{AuthError, Permissions, Secret, decode_secret, derive_secret};
use crate::subject::Pattern;

/// Why a key file could not be read, used or written.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The text is not TOML.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        /// Line of the mistake, from 1.
        line: usize,
        /// Column (in characters) of the mistake, from 1.
        column: usize,
        /// What is wrong there.
        message: String,
    },
    /// An entry, or one of its fields, is wrong.
    #[error("{entry}: {problem}")]
    Invalid {
        /// Which entry: `key "sensor-7" (entry 2)`, `[anonymous]` or `top level`.
        entry: String,
        /// What is wrong, naming the field where there is one.
        problem: String,
    },
    /// A mistake in a file, with the file's path.
    #[error("{path}: {error}")]
    InFile {
        /// The key file.
        path: PathBuf,
        /// The mistake.
        error: Box<KeyFileError>,
    },
    /// A key of this name is already in the file.
    #[error("{path}: there is already a key named {name:?}")]
    DuplicateName {
        /// The key file.
        path: PathBuf,
        /// The name asked for.
        name: String,
    },
    /// Every key id is taken.
    #[error("{0}: no key id left (the highest, 4294967295, is taken)")]
    NoIdLeft(PathBuf),
    /// The operating system gave no random bytes for a secret.
    #[error("no random secret: {0}")]
    Random(getrandom::Error),
}

/// One key of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// Unique name; also what derived credentials are bound to.
    name: String,
    /// Unique id, 1 or more, carried in datagrams.
    id: u32,
    /// The master secret.
    secret: Secret,
    /// What a client holding this key may do.
    permissions: Permissions,
    /// How much it may use.
    quota: Quota,
}

/// How much of the relay one key may use, across every session opened
/// under it at once. `None` is no limit of the key's own: the relay-wide
/// and per-address limits still apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Messages it may publish per second, in a burst of one second's worth.
    pub messages_per_sec: Option<u64>,
    /// Payload bytes it may publish per second, likewise.
    pub bytes_per_sec: Option<u64>,
    /// Subscriptions it may hold.
    pub max_subscriptions: Option<u64>,
    /// Reliable publishing sessions it may hold.
    pub max_sessions: Option<u64>,
    /// Bytes it may have held for unreliable messages still arriving in
    /// pieces.
    pub reassembly_bytes: Option<u64>,
}

impl Key {
    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key's own secret.
    pub fn secret(&self) -> &Secret {
        &self.secret
    }

    /// What a client holding this key may do.
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    /// How much a client holding this key may use.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }
}

/// A parsed, checked key file.
#[derive(Debug, Clone, Default)]
pub struct KeyFile {
    /// What clients without a key may do.
    anonymous: Permissions,
    /// The keys, in file order.
    keys: Vec<Key>,
    /// Index into `keys` by id: a datagram names its key by id.
    by_id: HashMap<u32, usize>,
}

/// What `udprelay key new` adds: a name and permissions as given on the
/// command line. Patterns are checked when the grown file is parsed again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewKey {
    /// The new key's name.
    pub name: String,
    /// Patterns it may publish to.
    pub publish: Vec<String>,
    /// Patterns it may subscribe to.
    pub subscribe: Vec<String>,
    /// Patterns it may not publish to.
    pub deny_publish: Vec<String>,
    /// Patterns it may not subscribe to.
    pub deny_subscribe: Vec<String>,
    /// May see other clients in STATS.
    pub admin: bool,
    /// Its quotas.
    pub quota: Quota,
}

/// The file's top level, with entries left as values so that each one's
/// mistakes can be reported with its name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    anonymous: Option<toml::Value>,
    #[serde(default)]
    key: Vec<toml::Value>,
}

/// A `[[key]]` table as written.
#[derive(Deserialize, Serialize)]
#[serde(
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "a [[key]] table"
)]
struct RawKey {
    name: String,
    id: u32,
    secret: String,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    deny_publish: Vec<String>,
    #[serde(default)]
    deny_subscribe: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    messages_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bytes_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_subscriptions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_sessions: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reassembly_bytes: Option<u64>,
}

/// The four pattern lists as written: the `[anonymous]` table (which has
/// no `admin`: a client without a key never gets it), and part of a key.
#[derive(Deserialize, Default)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "kebab-case",
    expecting = "an [anonymous] table"
)]
struct RawPermissions {
    publish: Vec<String>,
    subscribe: Vec<String>,
    deny_publish: Vec<String>,
    deny_subscribe: Vec<String>,
}

/// One serde error as one line, `field F: problem` where toml names the
/// field (it appends "in `F`" on a line of its own).
fn serde_problem(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let mut field = None;
    let mut lines = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.strip_prefix("in `").and_then(|l| l.strip_suffix('`')) {
            Some(f) => field = Some(f.to_string()),
            None => lines.push(line),
        }
    }
    match field {
        Some(f) => format!("field {f}: {}", lines.join("; ")),
        None => lines.join("; "),
    }
}

/// A TOML syntax error as line, column and message.
fn syntax_error(text: &str, e: &toml::de::Error) -> KeyFileError {
    let start = e.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    KeyFileError::Syntax {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
        message: e.message().lines().collect::<Vec<_>>().join("; "),
    }
}

/// Parses each pattern of a field, naming the field in the error.
fn patterns(field: &str, list: &[String]) -> Result<Vec<Pattern>, String> {
    list.iter()
        .map(|p| Pattern::parse(p).map_err(|e| format!("field {field}: {e}")))
        .collect()
}

impl RawPermissions {
    /// Parses every pattern, naming the field of a bad one.
    fn check(&self, admin: bool) -> Result<Permissions, String> {
        Ok(Permissions {
            publish: patterns("publish", &self.publish)?,
            subscribe: patterns("subscribe", &self.subscribe)?,
            deny_publish: patterns("deny-publish", &self.deny_publish)?,
            deny_subscribe: patterns("deny-subscribe", &self.deny_subscribe)?,
            admin,
        })
    }
}

impl RawKey {
    /// Checks every field but uniqueness, which needs the other entries.
    fn check(self) -> Result<Key, String> {
        if self.name.is_empty() || self.name.len() > 255 || self.name.chars().any(char::is_control)
        {
            return Err("field name: must be 1 to 255 bytes, no control characters".into());
        }
        if self.id == 0 {
            return Err("field id: must be at least 1 (0 means no key)".into());
        }
        let secret = decode_secret(&STANDARD, &self.secret).ok_or(
            "field secret: must be 32 bytes in base64 (44 characters ending in =, \
             as `udprelay key new` writes)",
        )?;
        let permissions = RawPermissions {
            publish: self.publish,
            subscribe: self.subscribe,
            deny_publish: self.deny_publish,
            deny_subscribe: self.deny_subscribe,
        }
        .check(self.admin)?;
        let quota = Quota {
            messages_per_sec: at_least_one("messages-per-sec", self.messages_per_sec)?,
            bytes_per_sec: at_least_one("bytes-per-sec", self.bytes_per_sec)?,
            max_subscriptions: at_least_one("max-subscriptions", self.max_subscriptions)?,
            max_sessions: at_least_one("max-sessions", self.max_sessions)?,
            reassembly_bytes: at_least_one("reassembly-bytes", self.reassembly_bytes)?,
        };
        Ok(Key {
            name: self.name,
            id: self.id,
            secret,
            permissions,
            quota,
        })
    }
}

/// A quota as given: absent, or at least one (0 would refuse everything,
/// which is what leaving a permission out does).
fn at_least_one(field: &str, value: Option<u64>) -> Result<Option<u64>, String> {
    match value {
        Some(0) => Err(format!(
            "field {field}: must be at least 1 (leave it out for no limit of the key's own)"
        )),
        v => Ok(v),
    }
}

/// How an entry is named in errors: by its name when it has one.
fn entry_label(number: usize, value: &toml::Value) -> String {
    match value.get("name").and_then(toml::Value::as_str) {
        Some(name) => format!("key {name:?} (entry {number})"),
        None => format!("key entry {number}"),
    }
}

impl KeyFile {
    /// Reads and checks the key file at `path`; errors name the file.
    pub fn load(path: &Path) -> Result<KeyFile, KeyFileError> {
        let text = fs::read_to_string(path).map_err(io_error(path))?;
        KeyFile::parse(&text).map_err(|e| in_file(path, e))
    }

    /// Parses and checks a key file's text.
    pub fn parse(text: &str) -> Result<KeyFile, KeyFileError> {
        let table: toml::Table = text.parse().map_err(|e| syntax_error(text, &e))?;
        let invalid = |entry: &str, problem: String| KeyFileError::Invalid {
            entry: entry.to_string(),
            problem,
        };
        let raw = RawFile::deserialize(toml::Value::Table(table))
            .map_err(|e| invalid("top level", serde_problem(&e)))?;
        let mut file = KeyFile::default();
        if let Some(value) = raw.anonymous {
            let anonymous = RawPermissions::deserialize(value)
                .map_err(|e| serde_problem(&e))
                .and_then(|raw| raw.check(false))
                .map_err(|problem| invalid("[anonymous]", problem))?;
            file.anonymous = anonymous;
        }
        for (i, value) in raw.key.into_iter().enumerate() {
            let label = entry_label(i + 1, &value);
            let key = RawKey::deserialize(value)
                .map_err(|e| serde_problem(&e))
                .and_then(RawKey::check)
                .map_err(|problem| invalid(&label, problem))?;
            if let Some(j) = file.keys.iter().position(|k| k.name == key.name) {
                let problem = format!("field name: {:?} is already entry {}", key.name, j + 1);
                return Err(invalid(&label, problem));
            }
            if let Some(&j) = file.by_id.get(&key.id) {
                let other = &file.keys[j].name;
                let problem = format!(
                    "field id: {} is already the id of key {other:?} (entry {})",
                    key.id,
                    j + 1
                );
                return Err(invalid(&label, problem));
            }
            file.by_id.insert(key.id, file.keys.len());
            file.keys.push(key);
        }
        Ok(file)
    }

    /// What clients without a key may do (nothing if the file says nothing).
    pub fn anonymous(&self) -> &Permissions {
        &self.anonymous
    }

    /// The keys, in file order.
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key with this id.
    pub fn key(&self, id: u32) -> Option<&Key> {
        self.by_id.get(&id).map(|&i| &self.keys[i])
    }

    /// The key with this name.
    pub fn named(&self, name: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.name == name)
    }

    /// The key a credential names and the secret it must hold: the key's own
    /// for `expires` 0, otherwise the one derived for that expiry, which is
    /// refused once `now_unix` has reached it.
    pub fn secret_for(
        &self,
        id: u32,
        expires: u64,
        now_unix: u64,
    ) -> Result<(&Key, Secret), AuthError> {
        let key = self.key(id).ok_or(AuthError::UnknownKey(id))?;
        match expires {
            0 => Ok((key, key.secret.clone())),
            _ if expires <= now_unix => Err(AuthError::Expired {
                id,
                expires,
                now: now_unix,
            }),
            _ => Ok((key, derive_secret(&key.secret, &key.name, expires))),
        }
    }

    /// Adds a key with a new random secret and the next id (highest + 1) to
    /// the file at `path`, creating it with mode 0600 if it does not exist;
    /// returns the grown file and the new id.
    ///
    /// The table is appended as text, so what the operator wrote stays as it
    /// was. The file must be valid before, and the grown text is parsed
    /// before anything is written, so this never leaves an invalid file.
    /// Two of these at once on one file are not guarded against.
    pub fn add_key(path: &Path, new: &NewKey) -> Result<(KeyFile, u32), KeyFileError> {
        let existing = match fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(path)(e)),
        };
        let old = existing.as_deref().unwrap_or("");
        let file = KeyFile::parse(old).map_err(|e| in_file(path, e))?;
        if file.named(&new.name).is_some() {
            return Err(KeyFileError::DuplicateName {
                path: path.to_path_buf(),
                name: new.name.clone(),
            });
        }
        let highest = file.keys.iter().map(|k| k.id).max().unwrap_or(0);
        let id = highest
            .checked_add(1)
            .ok_or_else(|| KeyFileError::NoIdLeft(path.to_path_buf()))?;
        let secret = Secret::random().map_err(KeyFileError::Random)?;
        let addition = appended_text(old, new, id, &secret);
        let grown = KeyFile::parse(&format!("{old}{addition}")).map_err(|e| in_file(path, e))?;
        let write = || -> io::Result<()> {
            let mut f = match existing {
                None => fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?,
                Some(_) => fs::OpenOptions::new().append(true).open(path)?,
            };
            f.write_all(addition.as_bytes())?;
            f.sync_all()
        };
        write().map_err(io_error(path))?;
        Ok((grown, id))
    }
}

/// The text to append to `old` for a new key: a blank line after what is
/// there, then the `[[key]]` table with every field spelled out, so the
/// operator sees what can be set.
fn appended_text(old: &str, new: &NewKey, id: u32, secret: &Secret) -> String {
    #[derive(Serialize)]
    struct OneKey<'a> {
        key: [&'a RawKey; 1],
    }
    let raw = RawKey {
        name: new.name.clone(),
        id,
        secret: STANDARD.encode(secret.expose()),
        publish: new.publish.clone(),
        subscribe: new.subscribe.clone(),
        deny_publish: new.deny_publish.clone(),
        deny_subscribe: new.deny_subscribe.clone(),
        admin: new.admin,
        messages_per_sec: new.quota.messages_per_sec,
        bytes_per_sec: new.quota.bytes_per_sec,
        max_subscriptions: new.quota.max_subscriptions,
        max_sessions: new.quota.max_sessions,
        reassembly_bytes: new.quota.reassembly_bytes,
    };
    let table = toml::to_string(&OneKey { key: [&raw] })
        .expect("a table of strings, integers and booleans always serializes");
    let separator = match old {
        "" => "",
        _ if old.ends_with('\n') => "\n",
        _ => "\n\n",
    };
    format!("{separator}{table}")
}

/// A failed read or write of the file at `path`.
fn io_error(path: &Path) -> impl Fn(io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Puts the file's path in front of a mistake found in it.
fn in_file(path: &Path, error: KeyFileError) -> KeyFileError {
    KeyFileError::InFile {
        path: path.to_path_buf(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_A: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    const SECRET_B: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

    fn sample() -> String {
        format!(
            r#"# the operator's comment
[anonymous]
publish = ["public.>"]
subscribe = ["public.>"]

[[key]]
name = "sensor-7"
id = 1
secret = "{SECRET_A}"
publish = ["sensors.>"]
deny-publish = ["sensors.secret"]

[[key]]
name = "dashboard"
id = 5
secret = "{SECRET_B}"
subscribe = [">"]
admin = true
messages-per-sec = 1000
max-subscriptions = 10
"#
        )
    }

    fn error(text: &str) -> String {
        let e = KeyFile::parse(text).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(!e.contains(SECRET_A) && !e.contains(SECRET_B), "{e}");
        e
    }

    #[test]
    fn a_sample_file_parses_with_its_permissions() {
        let file = KeyFile::parse(&sample()).unwrap();
        assert_eq!(file.keys().len(), 2);
        let sensor = file.key(1).unwrap();
        assert_eq!(sensor.name(), "sensor-7");
        assert_eq!(sensor.secret(), &Secret::from_bytes([1; 32]));
        assert!(sensor.permissions().publish("sensors.7").is_ok());
        assert!(sensor.permissions().publish("sensors.secret").is_err());
        assert!(sensor.permissions().subscribe("sensors.7").is_err());
        assert!(!sensor.permissions().admin);
        let dashboard = file.named("dashboard").unwrap();
        assert_eq!(dashboard.id(), 5);
        assert!(dashboard.permissions().admin);
        assert!(dashboard.permissions().subscribe("anything.at.all").is_ok());
        assert_eq!(
            dashboard.quota(),
            &Quota {
                messages_per_sec: Some(1000),
                max_subscriptions: Some(10),
                ..Quota::default()
            }
        );
        assert_eq!(sensor.quota(), &Quota::default(), "no limits of its own");
        assert!(file.anonymous().publish("public.chat").is_ok());
        assert!(file.anonymous().publish("sensors.7").is_err());
        assert!(file.key(2).is_none());
    }

    #[test]
    fn an_empty_file_has_no_keys_and_no_anonymous_access() {
        let file = KeyFile::parse("").unwrap();
        assert!(file.keys().is_empty());
        assert_eq!(file.anonymous(), &Permissions::default());
    }

    #[test]
    fn mistakes_are_one_line_naming_entry_and_field() {
        let base = sample();
        let cases = [
            (
                base.replace("admin = true", "admin = true\ncolour = 1"),
                "key \"dashboard\" (entry 2): unknown field `colour`",
            ),
            (
                base.replace("id = 5", "id = \"five\""),
                "key \"dashboard\" (entry 2): field id: invalid type: string \"five\"",
            ),
            (
                base.replace("id = 5", "id = 0"),
                "key \"dashboard\" (entry 2): field id: must be at least 1",
            ),
            (
                base.replace("id = 5", "id = 1"),
                "key \"dashboard\" (entry 2): field id: 1 is already the id of key \"sensor-7\" (entry 1)",
            ),
            (
                base.replace("\"dashboard\"", "\"sensor-7\""),
                "key \"sensor-7\" (entry 2): field name: \"sensor-7\" is already entry 1",
            ),
            (
                base.replace(SECRET_B, "c2hvcnQ="),
                "key \"dashboard\" (entry 2): field secret: must be 32 bytes in base64",
            ),
            (
                base.replace("[\"sensors.>\"]", "[\"sensors.>.x\"]"),
                "key \"sensor-7\" (entry 1): field publish: invalid pattern \"sensors.>.x\"",
            ),
            (
                base.replace(
                    "deny-publish = [\"sensors.secret\"]",
                    "deny-publish = [\"a..b\"]",
                ),
                "key \"sensor-7\" (entry 1): field deny-publish: invalid pattern \"a..b\"",
            ),
            (
                base.replace("max-subscriptions = 10", "max-subscriptions = 0"),
                "key \"dashboard\" (entry 2): field max-subscriptions: must be at least 1",
            ),
            (
                base.replace("messages-per-sec = 1000", "messages-per-sec = -5"),
                "key \"dashboard\" (entry 2): field messages-per-sec: invalid value",
            ),
            (
                base.replace("name = \"dashboard\"\n", ""),
                "key entry 2: missing field `name`",
            ),
            (
                base.replace("subscribe = [\"public.>\"]", "admin = true"),
                "[anonymous]: unknown field `admin`",
            ),
            (
                format!("{base}\n[extra]\n"),
                "top level: unknown field `extra`",
            ),
            (
                base.replace("id = 5", "id = 5\nid = 6"),
                "line 16, column 1: duplicate key",
            ),
        ];
        for (text, expected) in cases {
            let e = error(&text);
            assert!(e.starts_with(expected), "expected {expected:?}, got {e:?}");
        }
    }

    #[test]
    fn secret_for_gives_the_own_or_a_derived_secret_until_expiry() {
        let file = KeyFile::parse(&sample()).unwrap();
        let (key, secret) = file.secret_for(1, 0, 1_000).unwrap();
        assert_eq!(key.name(), "sensor-7");
        assert_eq!(secret, Secret::from_bytes([1; 32]));

        let derived = key.derive(2_000);
        let (_, secret) = file.secret_for(1, 2_000, 1_999).unwrap();
        assert_eq!(secret, derived.secret);
        assert_ne!(secret, Secret::from_bytes([1; 32]));
        assert_eq!(
            file.secret_for(1, 2_000, 2_000).unwrap_err(),
            AuthError::Expired {
                id: 1,
                expires: 2_000,
                now: 2_000
            }
        );
        assert_eq!(
            file.secret_for(3, 0, 0).unwrap_err(),
            AuthError::UnknownKey(3)
        );
        // A credential derived from one key is no good under another's id.
        let (_, other) = file.secret_for(5, 2_000, 0).unwrap();
        assert_ne!(other, derived.secret);
    }

    #[test]
    fn add_key_takes_the_id_after_the_highest_and_keeps_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        // Ids 1 and 5, and no newline at the end: the table still starts on
        // a line of its own.
        let before = sample().trim_end().to_string();
        fs::write(&path, &before).unwrap();
        let new = NewKey {
            name: "third \"quoted\"".into(),
            publish: vec!["a.>".into()],
            admin: true,
            quota: Quota {
                max_sessions: Some(3),
                ..Quota::default()
            },
            ..NewKey::default()
        };
        let (file, id) = KeyFile::add_key(&path, &new).unwrap();
        assert_eq!(id, 6);
        let after = fs::read_to_string(&path).unwrap();
        assert!(
            after.starts_with(&format!("{before}\n\n[[key]]\n")),
            "{after}"
        );
        let key = file.key(6).unwrap();
        assert_eq!(key.name(), "third \"quoted\"");
        assert!(key.permissions().admin);
        assert!(key.permissions().publish("a.b").is_ok());
        assert_eq!(key.quota().max_sessions, Some(3));
        let added = &after[before.len()..];
        assert!(added.contains("max-sessions = 3"), "{added}");
        assert!(
            !added.contains("per-sec"),
            "unset quotas are left out: {added}"
        );
        assert_ne!(key.secret(), file.key(1).unwrap().secret());
        assert_eq!(KeyFile::load(&path).unwrap().keys().len(), 3);
    }

    #[test]
    fn add_key_creates_no_file_for_an_invalid_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        let bad = NewKey {
            name: "x".into(),
            subscribe: vec!["a.>.b".into()],
            ..NewKey::default()
        };
        let e = KeyFile::add_key(&path, &bad).unwrap_err().to_string();
        assert!(e.contains("field subscribe: invalid pattern"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn add_key_refuses_to_grow_an_already_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        fs::write(&path, "[[key]]\nname = \"a\"\n").unwrap();
        let new = NewKey {
            name: "b".into(),
            ..NewKey::default()
        };
        let e = KeyFile::add_key(&path, &new).unwrap_err().to_string();
        assert!(e.contains("key \"a\" (entry 1): missing field `id`"), "{e}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "[[key]]\nname = \"a\"\n"
        );
    }
}
