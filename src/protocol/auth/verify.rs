//! Token verification: the signature against the pinned keys, then the claims against the rules and a time
//! passed in.
//!
//! herald understands no JWS extension header parameter, so a header with a `crit` list is refused before any
//! signature work (RFC 7515 section 4.1.11).
//!
//! `exp` is required. `nbf`, when present, must have passed; both are judged with `leeway` seconds of clock
//! skew allowed. When issuers or audiences are configured, a token must carry a matching `iss`/`aud`: a missing
//! claim is refused like a wrong one. The claims kept are only those the server acts on (`sub`, `exp`,
//! `subscribe`, `publish`); the token itself is never stored or logged.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;

use super::keys::KeySet;

/// Why a token was refused (each is a 401 before the upgrade, or close 4401 after it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in any enabled carrier.
    #[error("no token")]
    Missing,
    /// Not three base64url parts, or a header/claims part that is not the JSON it should be.
    #[error("malformed token")]
    Malformed,
    /// Larger than `auth.max_token_size`.
    #[error("token too large")]
    TooLarge,
    /// The header's `alg` is not one any key is pinned to (this includes `none`).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No key with the token's `kid` (or, without `kid`, no key without one) takes its algorithm.
    #[error("unknown signing key")]
    UnknownKey,
    /// The header has a `crit` list (RFC 7515 section 4.1.11): it names extension parameters the recipient
    /// must understand, and herald understands none.
    #[error("unsupported critical header parameter")]
    UnsupportedCritical,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past (leeway included).
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead (leeway included).
    #[error("token not yet valid")]
    NotYetValid,
    /// A required claim is absent (`exp`, or a configured `iss`/`aud`).
    #[error("missing claim `{0}`")]
    MissingClaim(&'static str),
    /// `iss` is not one of the configured issuers.
    #[error("wrong issuer")]
    WrongIssuer,
    /// No `aud` value is one of the configured audiences.
    #[error("wrong audience")]
    WrongAudience,
}

impl AuthError {
    /// The `error_description` and close reason: short, fixed text (never the token).
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::Missing => "no token",
            AuthError::Malformed => "malformed token",
            AuthError::TooLarge => "token too large",
            AuthError::AlgorithmNotAllowed => "algorithm not allowed",
            AuthError::UnknownKey => "unknown signing key",
            AuthError::UnsupportedCritical => "unsupported critical header parameter",
            AuthError::BadSignature => "bad signature",
            AuthError::Expired => "token expired",
            AuthError::NotYetValid => "token not yet valid",
            AuthError::MissingClaim("exp") => "missing claim exp",
            AuthError::MissingClaim("iss") => "missing claim iss",
            AuthError::MissingClaim("aud") => "missing claim aud",
            AuthError::MissingClaim(_) => "missing claim",
            AuthError::WrongIssuer => "wrong issuer",
            AuthError::WrongAudience => "wrong audience",
        }
    }
}

/// The claim rules a server applies beyond the signature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimRules {
    /// Accepted `iss` values; empty means `iss` is not checked.
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway: u64,
    /// Longest token accepted, in bytes.
    pub max_token_size: usize,
}

/// What a verified token says, kept after the token itself is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The subject (`sub`), if any.
    pub sub: Option<String>,
    /// When the token stops being valid (its `exp` plus the leeway), in Unix seconds.
    pub expires: u64,
    /// Topic patterns it may subscribe to.
    pub subscribe: Vec<String>,
    /// Topic patterns it may publish to.
    pub publish: Vec<String>,
}

/// Verifies tokens against a key set and claim rules. Cheap to clone (the keys are shared).
#[derive(Debug, Clone)]
pub struct Verifier {
    keys: Arc<KeySet>,
    rules: ClaimRules,
}

impl Verifier {
    /// A verifier over `keys` applying `rules`.
    pub fn new(keys: Arc<KeySet>, rules: ClaimRules) -> Self {
        Verifier { keys, rules }
    }

    /// Replaces the keys (rotation), keeping the rules.
    pub fn set_keys(&mut self, keys: Arc<KeySet>) {
        self.keys = keys;
    }

    /// The keys in use.
    pub fn keys(&self) -> &Arc<KeySet> {
        &self.keys
    }

    /// The claim rules in use.
    pub fn rules(&self) -> &ClaimRules {
        &self.rules
    }

    /// Verifies `token` at Unix time `unix` (seconds).
    pub fn verify(&self, token: &str, unix: u64) -> Result<Verified, AuthError> {
        if token.len() > self.rules.max_token_size {
            return Err(AuthError::TooLarge);
        }
        let header = match jsonwebtoken::decode_header(token) {
            Ok(h) => h,
            Err(_) => return Err(classify_bad_header(token)),
        };
        // RFC 7515 section 4.1.11: "If any of the listed extension Header Parameters are not understood and
        // supported by the recipient, then the JWS is invalid." herald supports no extension parameter, so any
        // `crit` list (the empty one too: "Producers MUST NOT use the empty list") makes the token invalid.
        // jsonwebtoken parses `crit` but leaves this rule to its caller.
        if header.crit.is_some() {
            return Err(AuthError::UnsupportedCritical);
        }
        if !self.keys.allows(header.alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }
        let mut outcome = Err(AuthError::UnknownKey);
        for key in self.keys.candidates(header.alg, header.kid.as_deref()) {
            let Some(validation) = key.validation(header.alg) else { continue };
            match jsonwebtoken::decode::<WireClaims>(token, key.decoding_key(), validation) {
                Ok(data) => {
                    outcome = Ok(data.claims);
                    break;
                }
                Err(e) => {
                    outcome = Err(match e.kind() {
                        ErrorKind::InvalidSignature
                        | ErrorKind::InvalidEcdsaKey
                        | ErrorKind::InvalidEddsaKey
                        | ErrorKind::InvalidRsaKey(_) => AuthError::BadSignature,
                        ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
                        _ => AuthError::Malformed,
                    });
                    if !matches!(outcome, Err(AuthError::BadSignature)) {
                        break;
                    }
                }
            }
        }
        let claims = outcome?;
        self.check_claims(claims, unix)
    }

    fn check_claims(&self, c: WireClaims, unix: u64) -> Result<Verified, AuthError> {
        let leeway = self.rules.leeway;
        let exp = c.exp.ok_or(AuthError::MissingClaim("exp"))?;
        let expires = exp.saturating_add(leeway);
        if unix >= expires {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = c.nbf {
            if unix.saturating_add(leeway) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        if !self.rules.issuers.is_empty() {
            let iss = c.iss.as_deref().ok_or(AuthError::MissingClaim("iss"))?;
            if !self.rules.issuers.iter().any(|i| i == iss) {
                return Err(AuthError::WrongIssuer);
            }
        }
        if !self.rules.audiences.is_empty() {
            let aud = c.aud.ok_or(AuthError::MissingClaim("aud"))?;
            if !aud.0.iter().any(|a| self.rules.audiences.iter().any(|want| want == a)) {
                return Err(AuthError::WrongAudience);
            }
        }
        Ok(Verified {
            sub: c.sub,
            expires,
            subscribe: c.subscribe.map(|l| l.0).unwrap_or_default(),
            publish: c.publish.map(|l| l.0).unwrap_or_default(),
        })
    }
}

/// Tells a header that is not JSON at all from one naming an algorithm we do not know (such as `none`), or
/// one whose `crit` is not the list of names it should be.
fn classify_bad_header(token: &str) -> AuthError {
    #[derive(Deserialize)]
    struct AlgOnly {
        alg: Option<String>,
        #[serde(default)]
        crit: Option<serde::de::IgnoredAny>,
    }
    let first = token.split('.').next().unwrap_or("");
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(first) else { return AuthError::Malformed };
    match serde_json::from_slice::<AlgOnly>(&bytes) {
        Ok(AlgOnly { crit: Some(_), .. }) => AuthError::UnsupportedCritical,
        Ok(AlgOnly { alg: Some(_), .. }) => AuthError::AlgorithmNotAllowed,
        _ => AuthError::Malformed,
    }
}

/// The claims as they arrive; unknown claims are ignored.
#[derive(Debug, Deserialize)]
struct WireClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<OneOrMany>,
    #[serde(default)]
    subscribe: Option<OneOrMany>,
    #[serde(default)]
    publish: Option<OneOrMany>,
}

/// A claim that may be one string or a list of them (as `aud` is in RFC 7519).
#[derive(Debug)]
struct OneOrMany(Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(OneOrMany(match Raw::deserialize(d)? {
            Raw::One(s) => vec![s],
            Raw::Many(v) => v,
        }))
    }
}
