//! NATS subject syntax over channel names: the patterns that permissions and
//! wildcard subscriptions name.
//!
//! A name is a channel name (the rule of [`crate::wire::validate_channel`]:
//! UTF-8, 1 to 255 bytes, no control characters) made of dot-separated,
//! non-empty tokens. A pattern is written the same way, except that a token
//! may be `*`, standing for exactly one token, and the last token may be `>`,
//! standing for one or more. So `orders.*` matches `orders.new` but neither
//! `orders` nor `orders.new.eu`; `sensors.>` matches `sensors.a` and
//! `sensors.a.b` but not `sensors`; `>` matches every name.
//!
//! This module owns the syntax and matching only; what a match permits is
//! `auth`'s business. It depends on nothing but the channel name rule.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubjectError {
    /// The pattern breaks the channel name rule.
    #[error("invalid pattern {0:?}: 1 to 255 bytes of UTF-8, no control characters")]
    BadName(String),
    /// Two dots in a row, or a dot at either end.
    #[error("invalid pattern {0:?}: empty token (two dots in a row, or a dot at an end)")]
    EmptyToken(String),
    /// `>` somewhere other than the last token.
    #[error("invalid pattern {0:?}: `>` may only be the last token")]
    RestNotLast(String),
}

/// One token of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Matches this exact token.
    Literal(Box<str>),
    /// `*`: matches any one token.
    One,
    /// `>`: matches one or more tokens; only ever last.
    Rest,
}

/// True if `name` can be a NATS subject as it is (`udprelay.<name>`): no
/// whitespace, no empty token, no `*` or `>` token. Other channels are
/// served by their relay only.
pub fn is_bridgeable(name: &str) -> bool {
    !name.contains(char::is_whitespace) && name.split('.').all(is_name_token)
}

/// True if pattern `pattern` can be a NATS subject filter as it is
/// (`udprelay.<pattern>`): no whitespace, no empty token; `*` and `>` mean
/// the same in NATS.
pub fn is_bridgeable_pattern(pattern: &str) -> bool {
    !pattern.contains(char::is_whitespace) && pattern.split('.').all(|t| !t.is_empty())
}

/// A parsed NATS-style subject pattern, such as `sensors.>` or `orders.*.eu`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// As written, for display and error messages.
    text: Box<str>,
    /// The tokens in order; a `Rest` is only ever last.
    tokens: Box<[Token]>,
}

impl Pattern {
    /// Parses a pattern, checking the channel name rule and the token rules.
    pub fn parse(text: &str) -> Result<Pattern, SubjectError> {
        if crate::wire::validate_channel(text.as_bytes()).is_err() {
            return Err(SubjectError::BadName(text.to_string()));
        }
        let parts: Vec<&str> = text.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            tokens.push(match *part {
                "" => return Err(SubjectError::EmptyToken(text.to_string())),
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => return Err(SubjectError::RestNotLast(text.to_string())),
                literal => Token::Literal(literal.into()),
            });
        }
        Ok(Pattern {
            text: text.into(),
            tokens: tokens.into(),
        })
    }

    /// True if the pattern has no wildcard: it matches exactly one name,
    /// itself.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if `name` is a valid name and the pattern matches it.
    ///
    /// A string that is not a name matches nothing: one that breaks the
    /// channel rule or has an empty token (`a..b`), so no spelling of a name
    /// slips past a deny pattern; and one holding a `*` or `>` token, which is
    /// a pattern, not a name (permission to subscribe to `a.*` must not read as
    /// permission to subscribe to `a.>`).
    pub fn matches(&self, name: &str) -> bool {
        if crate::wire::validate_channel(name.as_bytes()).is_err() {
            return false;
        }
        let mut names = name.split('.');
        for token in &*self.tokens {
            match token {
                Token::Rest => {
                    // One or more tokens remain, all of them valid name tokens.
                    let mut rest = names.peekable();
                    return rest.peek().is_some() && rest.all(is_name_token);
                }
                Token::One => match names.next() {
                    Some(n) if is_name_token(n) => {}
                    _ => return false,
                },
                Token::Literal(lit) => match names.next() {
                    Some(n) if n == &**lit => {}
                    _ => return false,
                },
            }
        }
        names.next().is_none()
    }
}

impl Pattern {
    /// True if every name `other` matches, this pattern matches too: what
    /// a permission to subscribe to this pattern says about a wildcard
    /// subscription to `other` (as NATS checks a subscription's subject).
    pub fn covers(&self, other: &Pattern) -> bool {
        let mut theirs = other.tokens.iter();
        for token in &*self.tokens {
            let Some(t) = theirs.next() else {
                return false;
            };
            match (token, t) {
                // One or more tokens remain in `other`: `t` is the first.
                (Token::Rest, _) => return true,
                (Token::One, Token::Literal(_) | Token::One) => {}
                (Token::Literal(a), Token::Literal(b)) if a == b => {}
                _ => return false,
            }
        }
        theirs.next().is_none()
    }
}

/// True if `name` holds a `*` or `>` token: a pattern, which a SUBSCRIBE
/// reads as a wildcard subscription and a publish may not name.
pub fn is_pattern(name: &str) -> bool {
    // Every publish asks: most names hold neither byte, and need no split.
    name.bytes().any(|b| b == b'*' || b == b'>') && name.split('.').any(|t| t == "*" || t == ">")
}

/// A token a name may hold: not empty, not a wildcard.
fn is_name_token(token: &str) -> bool {
    !matches!(token, "" | "*" | ">")
}

impl FromStr for Pattern {
    type Err = SubjectError;

    fn from_str(s: &str) -> Result<Pattern, SubjectError> {
        Pattern::parse(s)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Pattern {
        Pattern::parse(text).unwrap()
    }

    /// The examples of the NATS documentation's "Subject-Based Messaging"
    /// page, as (pattern, name, matches).
    #[test]
    fn nats_documentation_examples() {
        let cases = [
            ("time.us", "time.us", true),
            ("time.us", "time.us.east", false),
            ("time.*.east", "time.us.east", true),
            ("time.*.east", "time.eu.east", true),
            ("time.*.east", "time.us.west", false),
            ("time.*.east", "time.us.east.atlanta", false),
            ("time.us.*", "time.us.east", true),
            ("time.us.*", "time.us.east.atlanta", false),
            ("time.us.>", "time.us.east", true),
            ("time.us.>", "time.us.east.atlanta", true),
            ("time.us.>", "time.us", false),
            ("time.>", "time.eu.east", true),
            ("*.*.east.>", "time.us.east.atlanta", true),
            ("*.*.east.>", "time.us.east", false),
            (">", "time", true),
            (">", "time.us.east.atlanta", true),
            ("*", "time", true),
            ("*", "time.us", false),
            ("foo.>", "foo", false),
            ("foo.>", "foo.bar", true),
            ("foo.*", "foo", false),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(p(pattern).matches(name), expected, "{pattern} vs {name}");
        }
    }

    #[test]
    fn a_wildcard_is_a_whole_token_only() {
        // Inside a token, `*` and `>` are ordinary characters.
        let pattern = p("a*b.c>");
        assert!(pattern.is_literal());
        assert!(pattern.matches("a*b.c>"));
        assert!(!pattern.matches("axb.c"));
    }

    #[test]
    fn literal_patterns_have_no_wildcard_token() {
        assert!(p("orders").is_literal());
        assert!(p("orders.eu.new").is_literal());
        assert!(!p("orders.*").is_literal());
        assert!(!p("orders.>").is_literal());
        assert!(!p(">").is_literal());
    }

    #[test]
    fn a_name_is_a_pattern_only_with_a_wildcard_token() {
        for name in ["orders.*", "orders.>", ">", "*.eu", "a.*.b"] {
            assert!(is_pattern(name), "{name}");
        }
        for name in ["orders", "orders.eu.new", "a*b", "a>", "x.*y", "a.b>"] {
            assert!(!is_pattern(name), "{name}");
        }
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in ["", ".", "a.", ".a", "a..b"] {
            assert!(
                matches!(
                    Pattern::parse(bad),
                    Err(SubjectError::EmptyToken(_) | SubjectError::BadName(_))
                ),
                "{bad:?}"
            );
        }
        for bad in [">.a", "a.>.b", "a.>.>"] {
            assert_eq!(
                Pattern::parse(bad),
                Err(SubjectError::RestNotLast(bad.to_string()))
            );
        }
        let too_long = "a".repeat(256);
        for bad in ["a\nb", "tab\there", too_long.as_str()] {
            assert_eq!(
                Pattern::parse(bad),
                Err(SubjectError::BadName(bad.to_string()))
            );
        }
        assert!(Pattern::parse(&"a".repeat(255)).is_ok());
        assert!(Pattern::parse("日本.*").is_ok());
    }

    #[test]
    fn strings_that_are_not_names_match_nothing() {
        for pattern in [">", "a.>", "a.*.c", "*.b.c"] {
            let pattern = p(pattern);
            for not_a_name in ["", "a..c", "a.b.", ".a.b", "a.*.c", "a.>", "a.b\n", "a.b.>"] {
                assert!(!pattern.matches(not_a_name), "{pattern} vs {not_a_name:?}");
            }
        }
    }

    #[test]
    fn display_and_from_str_round_trip() {
        let pattern: Pattern = "sensors.*.temp".parse().unwrap();
        assert_eq!(pattern.to_string(), "sensors.*.temp");
        assert_eq!(pattern.as_str(), "sensors.*.temp");
    }

    #[test]
    fn a_pattern_covers_the_patterns_whose_every_name_it_matches() {
        let p = |s| Pattern::parse(s).unwrap();
        for (a, b) in [
            (">", ">"),
            (">", "a.*"),
            ("a.>", "a.b.>"),
            ("a.>", "a.*"),
            ("a.*", "a.*"),
            ("a.*", "a.b"),
            ("*.b", "a.b"),
            ("a.*.c", "a.*.c"),
        ] {
            assert!(p(a).covers(&p(b)), "{a} covers {b}");
        }
        for (a, b) in [
            ("a.*", "a.>"),
            ("a.>", "a"),
            ("a.>", ">"),
            ("a.b", "a.*"),
            ("a.*", "a.b.c"),
            ("a.*.c", "a.*"),
            ("a.*", "b.*"),
        ] {
            assert!(!p(a).covers(&p(b)), "{a} does not cover {b}");
        }
        assert!(is_pattern("a.*") && is_pattern(">") && is_pattern("a.>"));
        assert!(!is_pattern("a.b*") && !is_pattern("a>b") && !is_pattern("news"));
    }
}
