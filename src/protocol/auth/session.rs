//! One connection's auth state, and the `{"type":"auth","token":"..."}` message that opens or refreshes it.
//!
//! A connection is in one of four states: auth is off for it; it awaits its auth message (message mode, until a
//! deadline); it holds grants until its token's expiry; or (per-message mode on `/ws`) each request carries its
//! own token and the last verified one is cached by its exact bytes until it expires. The state is 24 bytes
//! inline; only the per-message cache allocates.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::grants::Grants;

/// A connection's auth state.
#[derive(Debug, Clone, Default)]
pub enum ConnAuth {
    /// Auth is not in force: everything is allowed, nothing expires.
    #[default]
    Off,
    /// Message mode: nothing is acted on until a valid auth message arrives, which must be by `deadline`.
    Awaiting {
        /// `auth.timeout` after the upgrade.
        deadline: Instant,
    },
    /// Authenticated until `expires` (Unix seconds), with these grants.
    Granted {
        /// What the token allows.
        grants: Arc<Grants>,
        /// The token's `exp` plus leeway, in Unix seconds (saturated at `u32::MAX`, the year 2106).
        expires: u32,
        /// A hash of the token's `sub` ([`subject_hash`]): a refresh must carry the same subject.
        subject: u32,
    },
    /// Per-message mode on `/ws`: every request carries a token.
    PerMessage {
        /// The last token verified on this connection, reused while it is valid.
        cache: Option<Box<CachedToken>>,
        /// Until a first token verifies (`cache` is `None`): the deadline to present one (`auth.timeout` after
        /// the upgrade). Then: when the earliest token that authorized a live subscription expires
        /// (`u64::MAX`: none does).
        expires: u64,
    },
}

/// A verified token remembered by its exact bytes.
#[derive(Debug, Clone)]
pub struct CachedToken {
    token: Box<[u8]>,
    grants: Arc<Grants>,
    expires: u64,
}

/// Why the state says the connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    /// Message mode: no auth message by the deadline.
    Timeout,
    /// The token expired without a refresh.
    Expired,
}

impl Lapse {
    /// The close reason sent with 4401.
    pub fn reason(self) -> &'static str {
        match self {
            Lapse::Timeout => "auth timeout",
            Lapse::Expired => "token expired",
        }
    }
}

/// A 32-bit FNV-1a hash of a subject (0 for none), kept instead of the subject itself.
pub fn subject_hash(sub: Option<&str>) -> u32 {
    sub.map_or(0, |s| s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193)))
}

impl ConnAuth {
    /// Whether requests may be acted on (false only while awaiting the auth message).
    pub fn is_open(&self) -> bool {
        !matches!(self, ConnAuth::Awaiting { .. })
    }

    /// Whether the state has run out at `now` / `unix`.
    pub fn lapsed(&self, now: Instant, unix: u64) -> Option<Lapse> {
        match self {
            ConnAuth::Off => None,
            ConnAuth::Awaiting { deadline } => (now >= *deadline).then_some(Lapse::Timeout),
            ConnAuth::Granted { expires, .. } => (unix >= u64::from(*expires)).then_some(Lapse::Expired),
            ConnAuth::PerMessage { cache: None, expires } => (unix >= *expires).then_some(Lapse::Timeout),
            ConnAuth::PerMessage { expires, .. } => (unix >= *expires).then_some(Lapse::Expired),
        }
    }

    /// When [`lapsed`](Self::lapsed) will next say so, given the clocks `now` and `unix` (Unix seconds) read
    /// together: the worker's timer looks at the connection then. `None`: never.
    pub fn deadline(&self, now: Instant, unix: u64) -> Option<Instant> {
        let at_unix = |expires: u64| now.checked_add(Duration::from_secs(expires.saturating_sub(unix)));
        match self {
            ConnAuth::Off => None,
            ConnAuth::Awaiting { deadline } => Some(*deadline),
            ConnAuth::Granted { expires, .. } => at_unix(u64::from(*expires)),
            ConnAuth::PerMessage { expires, .. } => at_unix(*expires),
        }
    }

    /// The cached grants and expiry for `token`, when it is the cached one and still valid at `unix`: the cost
    /// of a repeated per-message token is this byte comparison, not a signature check.
    pub fn cached(&self, token: &[u8], unix: u64) -> Option<(Arc<Grants>, u64)> {
        match self {
            ConnAuth::PerMessage { cache: Some(c), .. } if unix < c.expires && *c.token == *token => {
                Some((c.grants.clone(), c.expires))
            }
            _ => None,
        }
    }

    /// Remembers a verified per-message token (replacing the previous one). The first one ends the deadline
    /// to present a token.
    pub fn remember(&mut self, token: &[u8], grants: Arc<Grants>, expires: u64) {
        if let ConnAuth::PerMessage { cache, expires: held } = self {
            if cache.is_none() {
                *held = u64::MAX;
            }
            match cache {
                Some(c) if *c.token == *token => {
                    c.grants = grants;
                    c.expires = expires;
                }
                _ => *cache = Some(Box::new(CachedToken { token: token.into(), grants, expires })),
            }
        }
    }

    /// Per-message mode: a subscription now depends on a token valid until `expires`.
    pub fn hold_until(&mut self, until: u64) {
        if let ConnAuth::PerMessage { expires, .. } = self {
            *expires = (*expires).min(until);
        }
    }
}

/// An auth message: `{"type":"auth","token":"<jwt>","id":...}` (`id` optional, echoed in the reply).
#[derive(Debug)]
pub struct AuthMessage {
    /// The token.
    pub token: String,
    /// The request id, as JSON text.
    pub id: Option<Box<serde_json::value::RawValue>>,
}

/// Reads `text` as an auth message; `None` when it is anything else (which, while awaiting auth, is a 4401).
pub fn parse_auth_message(text: &[u8]) -> Option<AuthMessage> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "type")]
        kind: String,
        token: String,
        #[serde(default)]
        id: Option<Box<serde_json::value::RawValue>>,
    }
    if !looks_like_auth(text) {
        return None;
    }
    let wire: Wire = serde_json::from_slice(text).ok()?;
    (wire.kind == "auth").then_some(AuthMessage { token: wire.token, id: wire.id })
}

/// A cheap pre-check (no parse) that `text` may be an auth message: a JSON object mentioning `"auth"`, or
/// holding a `\u` escape (which could spell it, as the `/ws` parser would read it).
pub fn looks_like_auth(text: &[u8]) -> bool {
    let trimmed = text.iter().position(|b| !b.is_ascii_whitespace()).map(|i| &text[i..]).unwrap_or(&[]);
    trimmed.first() == Some(&b'{') && text.windows(6).any(|w| w == b"\"auth\"" || w.starts_with(b"\\u"))
}

/// The `sub` claim of a token's payload, read without checking the signature: only for a token already
/// verified (a cache hit), to name it in the log.
pub fn unverified_subject(token: &str) -> Option<String> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Sub {
        sub: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Sub>(&json).ok()?.sub
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with_payload(json: &str) -> String {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(json))
    }

    #[test]
    fn an_auth_message_is_recognised_however_its_type_is_spelled_in_json() {
        let plain = parse_auth_message(br#"{"type":"auth","token":"t"}"#).expect("plain");
        let escaped = parse_auth_message(br#"{"type":"\u0061uth","token":"t"}"#).expect("escaped, as /ws reads it");
        assert_eq!((plain.token.as_str(), escaped.token.as_str()), ("t", "t"));
        assert!(parse_auth_message(br#"{"type":"\u0061uthx","token":"t"}"#).is_none());
        assert!(parse_auth_message(br#"{"type":"publish","topic":"auth"}"#).is_none());
    }

    #[test]
    fn the_subject_of_a_cached_token_is_read_from_its_payload() {
        assert_eq!(unverified_subject(&token_with_payload(r#"{"sub":"alice","exp":1}"#)), Some("alice".into()));
        assert_eq!(unverified_subject(&token_with_payload(r#"{"exp":1}"#)), None);
        assert_eq!(unverified_subject("not a token"), None);
        assert_eq!(unverified_subject("a.%%%.c"), None);
    }
}
