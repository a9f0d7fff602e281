//! Authentication for every scenario: where a connection's token comes from, and how it travels.
//!
//! Tokens: one static token for every connection (`--token`, `--token-file`), or a JWT minted per connection
//! from an HMAC secret (`--jwt-secret-file`, `--jwt-secret-env`; never a command-line value) with the claims
//! herald reads: `sub`, `iat`, `exp`, optional `iss` and `aud`, and the `subscribe` and `publish` topic
//! pattern lists. Workers mint their connections' tokens while they are built, before anything is dialed,
//! so minting never shows in connect times or handshake rates; a subject without `{conn}` is minted once.
//!
//! Carriers ([`Carrier`]): `Authorization: Bearer`, `X-Auth-Token`, a cookie, the `token` query parameter,
//! the `Sec-WebSocket-Protocol: bearer, <jwt>` pair, or a first message `{"type":"auth","token":"..."}`
//! after the upgrade; with `--auth-per-message`, every `/ws` subscribe and publish carries the token too.
//!
//! Minting takes the time as an argument (`now_unix`), so the claims are unit tested without a clock.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::plan;

/// The `{conn}` placeholder of `--jwt-sub`: the connection's number.
pub const CONN_PLACEHOLDER: &str = "{conn}";

/// Options that mint JWTs (the `token` subcommand takes these alone).
#[derive(Debug, Args)]
pub struct JwtArgs {
    /// Mint a JWT per connection, signed with the HMAC secret in this file (a trailing newline is ignored).
    #[arg(long, help_heading = "Authentication", conflicts_with = "jwt_secret_env")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Mint a JWT per connection, signed with the HMAC secret in this environment variable.
    #[arg(long, help_heading = "Authentication")]
    pub jwt_secret_env: Option<String>,
    /// Signature algorithm.
    #[arg(long, help_heading = "Authentication", value_enum, ignore_case = true, default_value = "HS256")]
    pub jwt_alg: JwtAlg,
    /// Lifetime: `exp` is the minting time plus this.
    #[arg(long, help_heading = "Authentication", default_value = "1h")]
    pub jwt_ttl: String,
    /// The `sub` claim; `{conn}` becomes the connection's number.
    #[arg(long, help_heading = "Authentication", default_value = "loadgen-{conn}")]
    pub jwt_sub: String,
    /// The `iss` claim.
    #[arg(long, help_heading = "Authentication")]
    pub jwt_iss: Option<String>,
    /// The `aud` claim.
    #[arg(long, help_heading = "Authentication")]
    pub jwt_aud: Option<String>,
    /// The `subscribe` claim: comma-separated topic patterns (a trailing `*` matches any suffix; empty: none).
    #[arg(long, help_heading = "Authentication", default_value = "*")]
    pub jwt_subscribe: String,
    /// The `publish` claim, likewise.
    #[arg(long, help_heading = "Authentication", default_value = "*")]
    pub jwt_publish: String,
    /// The header's `kid`.
    #[arg(long, help_heading = "Authentication")]
    pub jwt_kid: Option<String>,
}

/// Authentication options of every scenario.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// One token for every connection.
    #[arg(
        long,
        help_heading = "Authentication",
        conflicts_with_all = ["token_file", "jwt_secret_file", "jwt_secret_env"]
    )]
    pub token: Option<String>,
    /// One token for every connection, read from this file.
    #[arg(long, help_heading = "Authentication", conflicts_with_all = ["jwt_secret_file", "jwt_secret_env"])]
    pub token_file: Option<PathBuf>,
    #[command(flatten)]
    pub jwt: JwtArgs,
    /// Where the token travels.
    #[arg(long, help_heading = "Authentication", value_enum, default_value = "bearer")]
    pub auth_carrier: Carrier,
    /// The cookie's name for `--auth-carrier cookie`.
    #[arg(long, help_heading = "Authentication", default_value = "herald_token")]
    pub auth_cookie: String,
    /// `--protocol json`: put the token in every subscribe and publish request as well.
    #[arg(long, help_heading = "Authentication")]
    pub auth_per_message: bool,
    /// Send `Origin: <ORIGIN>` with every upgrade (herald takes a cookie token only with an allowed Origin).
    #[arg(long, help_heading = "Authentication")]
    pub origin: Option<String>,
}

/// The JWT signature algorithms loadgen mints with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum JwtAlg {
    /// HMAC with SHA-256.
    #[value(name = "HS256")]
    HS256,
    /// HMAC with SHA-384.
    #[value(name = "HS384")]
    HS384,
    /// HMAC with SHA-512.
    #[value(name = "HS512")]
    HS512,
}

impl JwtAlg {
    fn algorithm(self) -> Algorithm {
        match self {
            JwtAlg::HS256 => Algorithm::HS256,
            JwtAlg::HS384 => Algorithm::HS384,
            JwtAlg::HS512 => Algorithm::HS512,
        }
    }
}

/// Where a connection's token travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Carrier {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `X-Auth-Token: <token>`.
    XAuthToken,
    /// `Cookie: <name>=<token>` (`--auth-cookie`).
    Cookie,
    /// `?token=<token>` on the path (`&token=` if the path has a query already).
    Query,
    /// `Sec-WebSocket-Protocol: bearer, <token>`; the server answers `Sec-WebSocket-Protocol: bearer`.
    Subprotocol,
    /// A first message `{"type":"auth","token":"<token>"}` after the upgrade.
    Message,
    /// Nowhere at the upgrade (with `--auth-per-message`: only in the requests).
    None,
}

/// An error in the authentication options.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The secret's environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// An empty secret.
    #[error("the JWT secret is empty")]
    EmptySecret,
    /// A static token that is empty or has characters no carrier can take.
    #[error("the token must be non-empty visible ASCII")]
    BadToken,
    /// `--jwt-ttl` is not a duration.
    #[error("--jwt-ttl: {0}")]
    Ttl(plan::PlanError),
    /// Options that need a token without one.
    #[error("{0} needs a token: --token, --token-file, --jwt-secret-file or --jwt-secret-env")]
    NoToken(&'static str),
    /// Minting failed.
    #[error("minting a JWT: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// The claims of a minted token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: `--jwt-sub` with `{conn}` filled in.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Topic patterns the token may subscribe to.
    pub subscribe: Vec<String>,
    /// Topic patterns the token may publish to.
    pub publish: Vec<String>,
}

/// Mints JWTs from an HMAC secret.
pub struct Minter {
    key: EncodingKey,
    header: Header,
    alg: JwtAlg,
    ttl_s: u64,
    sub: String,
    iss: Option<String>,
    aud: Option<String>,
    subscribe: Vec<String>,
    publish: Vec<String>,
}

impl fmt::Debug for Minter {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter").field("alg", &self.alg).field("sub", &self.sub).finish_non_exhaustive()
    }
}

/// Splits a comma list of topic patterns (empty: none).
fn pattern_list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// A secret file's bytes without one trailing newline.
fn strip_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    bytes
}

impl Minter {
    /// A minter from the options, or `None` when no secret is given.
    pub fn from_args(a: &JwtArgs) -> Result<Option<Minter>, AuthError> {
        let secret = match (&a.jwt_secret_file, &a.jwt_secret_env) {
            (Some(path), _) => strip_newline(std::fs::read(path).map_err(|e| AuthError::Read(path.clone(), e))?),
            (None, Some(var)) => {
                use std::os::unix::ffi::OsStringExt;
                std::env::var_os(var).ok_or_else(|| AuthError::MissingEnv(var.clone()))?.into_vec()
            }
            (None, None) => return Ok(None),
        };
        if secret.is_empty() {
            return Err(AuthError::EmptySecret);
        }
        let ttl = plan::parse_duration(&a.jwt_ttl).map_err(AuthError::Ttl)?;
        let mut header = Header::new(a.jwt_alg.algorithm());
        header.kid = a.jwt_kid.clone();
        Ok(Some(Minter {
            key: EncodingKey::from_secret(&secret),
            header,
            alg: a.jwt_alg,
            ttl_s: ttl.as_secs_f64().ceil() as u64,
            sub: a.jwt_sub.clone(),
            iss: a.jwt_iss.clone(),
            aud: a.jwt_aud.clone(),
            subscribe: pattern_list(&a.jwt_subscribe),
            publish: pattern_list(&a.jwt_publish),
        }))
    }

    /// Whether each connection gets its own token (the subject names the connection).
    pub fn per_connection(&self) -> bool {
        self.sub.contains(CONN_PLACEHOLDER)
    }

    /// The claims for connection `conn` minted at `now_unix` (seconds since the epoch).
    pub fn claims(&self, conn: usize, now_unix: u64) -> Claims {
        Claims {
            sub: self.sub.replace(CONN_PLACEHOLDER, &conn.to_string()),
            iat: now_unix,
            exp: now_unix.saturating_add(self.ttl_s),
            iss: self.iss.clone(),
            aud: self.aud.clone(),
            subscribe: self.subscribe.clone(),
            publish: self.publish.clone(),
        }
    }

    /// A signed token for connection `conn`, minted at `now_unix`.
    pub fn mint(&self, conn: usize, now_unix: u64) -> Result<String, AuthError> {
        Ok(jsonwebtoken::encode(&self.header, &self.claims(conn, now_unix), &self.key)?)
    }
}

/// Where tokens come from.
#[derive(Debug)]
enum Tokens {
    /// The same token for every connection.
    Static(Arc<str>),
    /// Minted.
    Minted(Box<Minter>),
}

/// A run's authentication: the tokens and their carrier.
#[derive(Debug)]
pub struct Auth {
    tokens: Tokens,
    /// Where the token travels at the upgrade.
    pub carrier: Carrier,
    cookie: String,
    /// `/ws` requests carry the token as well.
    pub per_message: bool,
}

/// What the report records about authentication (never a token or a secret).
#[derive(Debug, Clone, Serialize)]
pub struct AuthSummary {
    /// `token` (one static token) or `jwt` (minted per connection, or once without `{conn}`).
    pub source: &'static str,
    /// The minting algorithm.
    pub alg: Option<JwtAlg>,
    /// The carrier.
    pub carrier: Carrier,
    /// Tokens in every `/ws` request too.
    pub per_message: bool,
}

/// Percent-encodes everything but RFC 3986 unreserved characters (JWTs pass unchanged).
fn query_escape(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

impl Auth {
    /// The run's authentication from the options, or `None` when no token source is given.
    pub fn from_args(a: &AuthArgs) -> Result<Option<Auth>, AuthError> {
        let static_token = match (&a.token, &a.token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(path)) => Some(
                String::from_utf8_lossy(&std::fs::read(path).map_err(|e| AuthError::Read(path.clone(), e))?)
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let tokens = match (static_token, Minter::from_args(&a.jwt)?) {
            (Some(t), _) => {
                if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(AuthError::BadToken);
                }
                Tokens::Static(t.into())
            }
            (None, Some(m)) => Tokens::Minted(Box::new(m)),
            (None, None) if a.auth_per_message => return Err(AuthError::NoToken("--auth-per-message")),
            (None, None) => return Ok(None),
        };
        Ok(Some(Auth {
            tokens,
            carrier: a.auth_carrier,
            cookie: a.auth_cookie.clone(),
            per_message: a.auth_per_message,
        }))
    }

    /// The tokens of connections `conns`, in order, minted at `now_unix`. A subject without `{conn}` (or a
    /// static token) gives every connection the same token, made once.
    pub fn tokens(&self, conns: &[usize], now_unix: u64) -> Result<Vec<Arc<str>>, AuthError> {
        match &self.tokens {
            Tokens::Static(t) => Ok(vec![t.clone(); conns.len()]),
            Tokens::Minted(m) if !m.per_connection() => {
                let t: Arc<str> = m.mint(0, now_unix)?.into();
                Ok(vec![t; conns.len()])
            }
            Tokens::Minted(m) => conns.iter().map(|&c| m.mint(c, now_unix).map(Arc::from)).collect(),
        }
    }

    /// The upgrade request's path and extra header for a connection holding `token`.
    pub fn upgrade(&self, path: &str, token: &str) -> (String, Option<(&'static str, String)>) {
        let header = match self.carrier {
            Carrier::Bearer => Some(("Authorization", format!("Bearer {token}"))),
            Carrier::XAuthToken => Some(("X-Auth-Token", token.to_owned())),
            Carrier::Cookie => Some(("Cookie", format!("{}={token}", self.cookie))),
            Carrier::Subprotocol => Some(("Sec-WebSocket-Protocol", format!("bearer, {token}"))),
            Carrier::Query => {
                let mut with = String::with_capacity(path.len() + token.len() + 8);
                with.push_str(path);
                with.push_str(if path.contains('?') { "&token=" } else { "?token=" });
                query_escape(&mut with, token);
                return (with, None);
            }
            Carrier::Message | Carrier::None => None,
        };
        (path.to_owned(), header)
    }

    /// The message to send first after the upgrade (the `message` carrier).
    pub fn first_message(&self, token: &str) -> Option<Vec<u8>> {
        (self.carrier == Carrier::Message).then(|| crate::json::auth_message(token))
    }

    /// For the report.
    pub fn summary(&self) -> AuthSummary {
        let (source, alg) = match &self.tokens {
            Tokens::Static(_) => ("token", None),
            Tokens::Minted(m) => ("jwt", Some(m.alg)),
        };
        AuthSummary { source, alg, carrier: self.carrier, per_message: self.per_message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};

    /// Parses `loadgen-like <args>` into [`AuthArgs`].
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        auth: AuthArgs,
    }

    fn args(list: &[&str]) -> AuthArgs {
        Cli::try_parse_from(std::iter::once("t").chain(list.iter().copied())).expect("valid options").auth
    }

    fn secret_file(bytes: &[u8]) -> (PathBuf, impl Drop) {
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("loadgen-auth-test-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).expect("write secret");
        (path.clone(), Remove(path))
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn minted_token_verifies_with_the_secret_and_carries_the_claims() {
        let (path, _rm) = secret_file(b"0123456789-abcdefghijklmnop\n");
        let p = path.to_str().expect("utf-8 path");
        for (alg, name) in [(Algorithm::HS256, "HS256"), (Algorithm::HS384, "hs384"), (Algorithm::HS512, "HS512")] {
            let a = args(&[
                "--jwt-secret-file",
                p,
                "--jwt-alg",
                name,
                "--jwt-ttl",
                "90s",
                "--jwt-iss",
                "loadgen-test",
                "--jwt-aud",
                "herald",
                "--jwt-subscribe",
                "news.*, sport",
                "--jwt-publish",
                "",
                "--jwt-kid",
                "hs-1",
            ]);
            let auth = Auth::from_args(&a).expect("options").expect("auth");
            let tokens = auth.tokens(&[7, 8], NOW).expect("mint");
            assert_ne!(tokens[0], tokens[1], "one token per connection");
            let header = decode_header(&*tokens[0]).expect("header");
            assert_eq!((header.alg, header.kid.as_deref()), (alg, Some("hs-1")));
            let mut v = Validation::new(alg);
            v.set_audience(&["herald"]);
            v.set_issuer(&["loadgen-test"]);
            v.validate_exp = false; // NOW is in the past
                                    // The newline at the end of the file is not part of the secret.
            let key = DecodingKey::from_secret(b"0123456789-abcdefghijklmnop");
            let claims = decode::<Claims>(&*tokens[0], &key, &v).expect("verifies").claims;
            assert_eq!(
                claims,
                Claims {
                    sub: "loadgen-7".into(),
                    iat: NOW,
                    exp: NOW + 90,
                    iss: Some("loadgen-test".into()),
                    aud: Some("herald".into()),
                    subscribe: vec!["news.*".into(), "sport".into()],
                    publish: vec![],
                }
            );
            assert!(decode::<Claims>(&*tokens[0], &DecodingKey::from_secret(b"wrong"), &v).is_err());
        }
    }

    #[test]
    fn fresh_token_passes_default_validation() {
        let var = format!("LOADGEN_TEST_SECRET_{}", std::process::id());
        std::env::set_var(&var, "s3cret");
        let auth = Auth::from_args(&args(&["--jwt-secret-env", &var])).expect("options").expect("auth");
        let now = crate::sys::unix_now_s();
        let token = auth.tokens(&[0], now).expect("mint").remove(0);
        let claims = decode::<Claims>(&*token, &DecodingKey::from_secret(b"s3cret"), &Validation::default())
            .expect("valid now: exp in an hour")
            .claims;
        assert_eq!((claims.sub.as_str(), claims.exp - claims.iat), ("loadgen-0", 3600));
        assert_eq!((claims.subscribe, claims.publish), (vec!["*".to_owned()], vec!["*".to_owned()]));
        std::env::remove_var(&var);
        assert!(matches!(
            Auth::from_args(&args(&["--jwt-secret-env", &var])),
            Err(AuthError::MissingEnv(v)) if v == var
        ));
    }

    #[test]
    fn fixed_subject_is_minted_once() {
        let (path, _rm) = secret_file(b"k");
        let a = args(&["--jwt-secret-file", path.to_str().expect("path"), "--jwt-sub", "alice"]);
        let auth = Auth::from_args(&a).expect("options").expect("auth");
        let tokens = auth.tokens(&[0, 1, 2], NOW).expect("mint");
        assert!(Arc::ptr_eq(&tokens[0], &tokens[2]));
    }

    #[test]
    fn token_sources_are_exclusive_and_checked() {
        assert!(Cli::try_parse_from(["t", "--token", "a", "--jwt-secret-env", "X"]).is_err());
        assert!(Cli::try_parse_from(["t", "--token-file", "a", "--jwt-secret-file", "b"]).is_err());
        assert!(Cli::try_parse_from(["t", "--jwt-secret-file", "a", "--jwt-secret-env", "b"]).is_err());
        assert!(Auth::from_args(&args(&[])).expect("no auth").is_none());
        assert!(matches!(Auth::from_args(&args(&["--auth-per-message"])), Err(AuthError::NoToken(_))));
        assert!(matches!(Auth::from_args(&args(&["--token", "a b"])), Err(AuthError::BadToken)));
        let (path, _rm) = secret_file(b"");
        assert!(matches!(
            Auth::from_args(&args(&["--jwt-secret-file", path.to_str().expect("path")])),
            Err(AuthError::EmptySecret)
        ));
        let (path, _rm) = secret_file(b"tok.en.file\n");
        let auth = Auth::from_args(&args(&["--token-file", path.to_str().expect("path")])).expect("ok").expect("auth");
        assert_eq!(&*auth.tokens(&[3], NOW).expect("static")[0], "tok.en.file");
        assert_eq!(auth.summary().source, "token");
    }

    /// The upgrade request loadgen writes for `carrier`, as text.
    fn request_for(extra: &[&str], path: &str) -> String {
        let mut list = vec!["--token", "h.p.s"];
        list.extend_from_slice(extra);
        let auth = Auth::from_args(&args(&list)).expect("options").expect("auth");
        let (path, header) = auth.upgrade(path, "h.p.s");
        let header: Vec<(&str, &str)> = header.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let h = crate::client::Handshake::new("h", &path, [0; 16], &header);
        String::from_utf8(h.request_bytes().to_vec()).expect("ascii")
    }

    #[test]
    fn each_carrier_puts_the_token_where_herald_looks() {
        let bearer = request_for(&[], "/sub/t");
        assert!(
            bearer.starts_with("GET /sub/t HTTP/1.1\r\n") && bearer.contains("\r\nAuthorization: Bearer h.p.s\r\n")
        );
        let x = request_for(&["--auth-carrier", "x-auth-token"], "/ws");
        assert!(x.contains("\r\nX-Auth-Token: h.p.s\r\n"), "{x}");
        let cookie = request_for(&["--auth-carrier", "cookie"], "/ws");
        assert!(cookie.contains("\r\nCookie: herald_token=h.p.s\r\n"), "{cookie}");
        let cookie = request_for(&["--auth-carrier", "cookie", "--auth-cookie", "sid"], "/ws");
        assert!(cookie.contains("\r\nCookie: sid=h.p.s\r\n"), "{cookie}");
        let query = request_for(&["--auth-carrier", "query"], "/sub/t");
        assert!(query.starts_with("GET /sub/t?token=h.p.s HTTP/1.1\r\n"), "{query}");
        let query = request_for(&["--auth-carrier", "query"], "/sub/t?x=1");
        assert!(query.starts_with("GET /sub/t?x=1&token=h.p.s HTTP/1.1\r\n"), "{query}");
        let sub = request_for(&["--auth-carrier", "subprotocol"], "/ws");
        assert!(sub.contains("\r\nSec-WebSocket-Protocol: bearer, h.p.s\r\n"), "{sub}");
        for carrier in ["message", "none"] {
            let r = request_for(&["--auth-carrier", carrier], "/ws");
            assert!(!r.contains("h.p.s"), "{carrier}: nothing at the upgrade\n{r}");
        }
        for r in [&bearer, &query] {
            assert!(!r.contains("Cookie") && !r.contains("Sec-WebSocket-Protocol"), "{r}");
        }
    }

    #[test]
    fn message_carrier_sends_the_auth_message_first() {
        let auth = Auth::from_args(&args(&["--token", "h.p.s", "--auth-carrier", "message"])).expect("ok").expect("a");
        let msg = auth.first_message("h.p.s").expect("a message");
        assert_eq!(msg, br#"{"type":"auth","token":"h.p.s"}"#);
        let auth = Auth::from_args(&args(&["--token", "h.p.s"])).expect("ok").expect("a");
        assert_eq!(auth.first_message("h.p.s"), None);
    }

    #[test]
    fn query_tokens_are_percent_encoded() {
        let mut out = String::new();
        query_escape(&mut out, "a.b_c-d~e+f/g=");
        assert_eq!(out, "a.b_c-d~e%2Bf%2Fg%3D");
    }
}
