//! The server's auth decisions: may this request upgrade (and with what state), may this HTTP request
//! publish, is this token good.
//!
//! Modes (`auth.mode`):
//! - `none`: no tokens; everything is allowed (an `Origin` list, when set, still applies).
//! - `handshake`: every WebSocket upgrade needs a valid token in an enabled carrier: 401 without one, 403 when
//!   `/sub/{t}` or `/pub/{t}` names a topic the token does not allow. Nothing is kept for a refused client.
//! - `message`: the upgrade is allowed without a token; the first message must be an auth message within
//!   `auth.timeout`, else close 4401. A token presented in a carrier at the upgrade is checked as in
//!   `handshake` mode and authenticates the connection at once.
//! - `per_message`: raw endpoints authenticate at the upgrade as in `handshake` mode; on `/ws` every subscribe
//!   and publish carries its own token, and a connection that brings no valid token within `auth.timeout` is
//!   closed with 4401.

use std::sync::Arc;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::cache::{CachedVerification, TokenCache};
use super::carrier::{self, Carrier, Carriers};
use super::grants::{Grants, Interner};
use super::keys::KeySet;
use super::session::{subject_hash, ConnAuth};
use super::verify::{AuthError, Verifier};
use crate::protocol::handshake::RequestHead;

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No authentication.
    None,
    /// A token in the upgrade request.
    Handshake,
    /// An auth message first after the upgrade.
    Message,
    /// A token on every `/ws` request (raw endpoints: at the upgrade).
    PerMessage,
}

/// What an upgrade needs to be allowed, beyond a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Nothing more (`/echo`, `/ws`).
    Connect,
    /// Subscribe permission for the topic (`/sub/{t}`).
    Subscribe(&'a str),
    /// Publish permission for the topic (`/pub/{t}`).
    Publish(&'a str),
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No valid token: 401 before the upgrade, 4401 after it.
    Unauthorized(AuthError),
    /// A valid token that does not allow this topic: 403 before the upgrade, 4403 (or a `forbidden` error reply
    /// on `/ws`) after it.
    Forbidden,
    /// An `Origin` that is not allowed: 403.
    BadOrigin,
}

impl Denied {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Unauthorized(_) => 401,
            Denied::Forbidden | Denied::BadOrigin => 403,
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 section 3), when one is due.
    pub fn www_authenticate(&self) -> Option<String> {
        match self {
            Denied::Unauthorized(AuthError::Missing) => Some("Bearer realm=\"herald\"".to_string()),
            Denied::Unauthorized(e) => Some(format!(
                "Bearer realm=\"herald\", error=\"invalid_token\", error_description=\"{}\"",
                e.description()
            )),
            Denied::Forbidden => Some("Bearer realm=\"herald\", error=\"insufficient_scope\"".to_string()),
            Denied::BadOrigin => None,
        }
    }

    /// One line for the response body or close reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Unauthorized(e) => e.description(),
            Denied::Forbidden => "topic not allowed",
            Denied::BadOrigin => "origin not allowed",
        }
    }
}

/// An allowed upgrade.
#[derive(Debug)]
pub struct Admitted {
    /// The connection's auth state.
    pub auth: ConnAuth,
    /// The subprotocol to answer with (`bearer` when the token came in `Sec-WebSocket-Protocol`).
    pub subprotocol: Option<&'static str>,
    /// The token's subject, for the log line (not kept on the connection).
    pub subject: Option<String>,
    /// Whether the worker's token cache answered.
    pub cached: bool,
}

/// A verified token, as the server keeps it: interned grants, the expiry, and the subject.
#[derive(Debug)]
pub struct Authenticated {
    /// What the token allows (shared with every connection whose token allows the same).
    pub grants: Arc<Grants>,
    /// `exp` plus leeway, Unix seconds.
    pub expires: u64,
    /// The subject's hash ([`subject_hash`]).
    pub subject_hash: u32,
    /// The `sub` claim, for one log line (`None` when the token came from the cache).
    pub subject: Option<String>,
    /// Whether the worker's token cache answered (no signature was checked).
    pub cached: bool,
}

impl Authenticated {
    /// The connection state this token gives.
    pub fn into_conn_auth(self) -> ConnAuth {
        ConnAuth::Granted {
            grants: self.grants,
            expires: u32::try_from(self.expires).unwrap_or(u32::MAX),
            subject: self.subject_hash,
        }
    }
}

/// A worker's own auth memory: its interned grants and the tokens it has verified.
#[derive(Debug, Default)]
pub struct WorkerAuth {
    /// Grants shared by the worker's connections.
    pub grants: Interner,
    /// Tokens verified recently (`auth.token_cache`).
    pub tokens: TokenCache,
}

impl WorkerAuth {
    /// Memory with a token cache of `capacity` entries (0: no cache).
    pub fn new(capacity: usize) -> Self {
        WorkerAuth { grants: Interner::default(), tokens: TokenCache::new(capacity) }
    }
}

/// A server's auth settings, as decisions. Each worker holds its own copy (keys shared behind an `Arc`).
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    mode: Mode,
    verifier: Verifier,
    carriers: Carriers,
    allowed_origins: Vec<String>,
    api_key: Option<Arc<[u8]>>,
    timeout: Duration,
    /// Read the subject of a token found in the worker's cache (which keeps only its hash), for the log.
    subjects_from_cache: bool,
}

impl AuthPolicy {
    /// A policy. `api_key`, when set, authorizes `POST /publish` for any topic.
    pub fn new(
        mode: Mode,
        verifier: Verifier,
        carriers: Carriers,
        allowed_origins: Vec<String>,
        api_key: Option<Arc<[u8]>>,
        timeout: Duration,
    ) -> Self {
        AuthPolicy { mode, verifier, carriers, allowed_origins, api_key, timeout, subjects_from_cache: false }
    }

    /// Whether a token found in the worker's cache still reports its subject (read from its payload, which
    /// the cache hit has shown to be a token verified before). Costs a base64 decode per cached upgrade, so
    /// the server turns it on only when its log would show the subject.
    pub fn set_subjects_from_cache(&mut self, on: bool) {
        self.subjects_from_cache = on;
    }

    /// No auth at all (the default when nothing is configured).
    pub fn off() -> Self {
        let verifier = Verifier::new(Arc::new(KeySet::new()), Default::default());
        AuthPolicy::new(Mode::None, verifier, Carriers::default(), Vec::new(), None, Duration::from_secs(5))
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The verifier (for per-message tokens).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Rotates the keys.
    pub fn set_keys(&mut self, keys: Arc<KeySet>) {
        self.verifier.set_keys(keys);
    }

    /// Decides an upgrade request for an endpoint that needs `need`; `json` is true for `/ws`.
    pub fn check_upgrade(
        &self,
        head: &RequestHead,
        need: Need<'_>,
        json: bool,
        now: Instant,
        unix: u64,
        mem: &mut WorkerAuth,
    ) -> Result<Admitted, Denied> {
        let found = if self.mode == Mode::None { None } else { self.carriers.find(head) };
        if !carrier::origin_ok(head, &self.allowed_origins, found.map(|(_, c)| c)) {
            return Err(Denied::BadOrigin);
        }
        let off = Admitted { auth: ConnAuth::Off, subprotocol: None, subject: None, cached: false };
        let token = match (self.mode, found) {
            (Mode::None, _) => return Ok(off),
            (Mode::PerMessage, _) if json => {
                return Ok(Admitted {
                    // Anonymous until a request brings a valid token, for at most auth.timeout.
                    auth: ConnAuth::PerMessage { cache: None, expires: unix + self.timeout.as_secs().max(1) },
                    subprotocol: None,
                    subject: None,
                    cached: false,
                });
            }
            (Mode::Message, None) => {
                return Ok(Admitted {
                    auth: ConnAuth::Awaiting { deadline: now + self.timeout },
                    subprotocol: None,
                    subject: None,
                    cached: false,
                })
            }
            (_, None) => return Err(Denied::Unauthorized(AuthError::Missing)),
            (_, Some(found)) => found,
        };
        let authed = self.verify(token.0, unix, mem).map_err(Denied::Unauthorized)?;
        let allowed = match need {
            Need::Connect => true,
            Need::Subscribe(t) => authed.grants.may_subscribe(t),
            Need::Publish(t) => authed.grants.may_publish(t),
        };
        if !allowed {
            return Err(Denied::Forbidden);
        }
        let subprotocol = (token.1 == Carrier::Subprotocol).then_some("bearer");
        let (subject, cached) = (authed.subject.clone(), authed.cached);
        Ok(Admitted { auth: authed.into_conn_auth(), subprotocol, subject, cached })
    }

    /// Decides `POST /publish/{topic}`: the API key, or (with auth on) a token from `Authorization` or
    /// `X-Auth-Token` that may publish there. Cookies are never read here: a browser would attach them to a
    /// cross-site POST.
    pub fn check_http_publish(
        &self,
        head: &RequestHead,
        topic: &str,
        unix: u64,
        mem: &mut WorkerAuth,
    ) -> Result<(), Denied> {
        if let Some(key) = &self.api_key {
            let presented = head.headers_named("authorization").find_map(carrier::bearer);
            if presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(key))) {
                return Ok(());
            }
        }
        if self.mode == Mode::None {
            return match &self.api_key {
                Some(_) => Err(Denied::Unauthorized(AuthError::Missing)),
                None => Ok(()),
            };
        }
        let token = head
            .headers_named("authorization")
            .find_map(carrier::bearer)
            .or_else(|| head.header("x-auth-token").map(str::trim))
            .filter(|t| !t.is_empty())
            .ok_or(Denied::Unauthorized(AuthError::Missing))?;
        let authed = self.verify(token, unix, mem).map_err(Denied::Unauthorized)?;
        if authed.grants.may_publish(topic) {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        }
    }

    /// Verifies a token (or finds it in the worker's token cache) and interns its grants.
    pub fn verify(&self, token: &str, unix: u64, mem: &mut WorkerAuth) -> Result<Authenticated, AuthError> {
        if token.len() > self.verifier.rules().max_token_size {
            return Err(AuthError::TooLarge);
        }
        if let Some(c) = mem.tokens.get(token.as_bytes(), unix) {
            return Ok(Authenticated {
                grants: c.grants.clone(),
                expires: c.expires,
                subject_hash: c.subject,
                subject: if self.subjects_from_cache { super::session::unverified_subject(token) } else { None },
                cached: true,
            });
        }
        let v = self.verifier.verify(token, unix)?;
        let grants = mem.grants.intern(Grants::new(&v.subscribe, &v.publish));
        let subject_hash = subject_hash(v.sub.as_deref());
        let entry = CachedVerification { grants: grants.clone(), expires: v.expires, subject: subject_hash };
        mem.tokens.insert(token.as_bytes(), entry, unix);
        Ok(Authenticated { grants, expires: v.expires, subject_hash, subject: v.sub, cached: false })
    }
}
