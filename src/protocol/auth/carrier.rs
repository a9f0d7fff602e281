//! Where a token travels in an upgrade request, and the `Origin` check that guards cookie auth.
//!
//! Carriers are tried in a fixed order, each one switchable: `Authorization: Bearer <jwt>`,
//! `X-Auth-Token: <jwt>`, a cookie (default name `herald_token`), the `token` query parameter (browsers cannot
//! set headers on a WebSocket), and the `Sec-WebSocket-Protocol` pair `bearer, <jwt>` (answered with the
//! `bearer` subprotocol).

use crate::protocol::handshake::RequestHead;

/// One place a token can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer <jwt>`.
    Authorization,
    /// `X-Auth-Token: <jwt>`.
    XAuthToken,
    /// A cookie.
    Cookie,
    /// `?token=<jwt>`.
    Query,
    /// `Sec-WebSocket-Protocol: bearer, <jwt>`.
    Subprotocol,
}

impl Carrier {
    /// Every carrier, in the order they are tried.
    pub const ALL: [Carrier; 5] =
        [Carrier::Authorization, Carrier::XAuthToken, Carrier::Cookie, Carrier::Query, Carrier::Subprotocol];

    /// The config name (`authorization`, `x-auth-token`, `cookie`, `query`, `subprotocol`).
    pub fn name(self) -> &'static str {
        match self {
            Carrier::Authorization => "authorization",
            Carrier::XAuthToken => "x-auth-token",
            Carrier::Cookie => "cookie",
            Carrier::Query => "query",
            Carrier::Subprotocol => "subprotocol",
        }
    }

    /// The carrier of that config name.
    pub fn from_name(name: &str) -> Option<Carrier> {
        Carrier::ALL.into_iter().find(|c| c.name().eq_ignore_ascii_case(name.trim()))
    }
}

/// Which carriers are on, and the cookie's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carriers {
    /// The enabled carriers (tried in [`Carrier::ALL`] order whatever the order here).
    pub enabled: Vec<Carrier>,
    /// The cookie that carries the token.
    pub cookie_name: String,
}

impl Default for Carriers {
    fn default() -> Self {
        Carriers { enabled: Carrier::ALL.to_vec(), cookie_name: "herald_token".to_string() }
    }
}

impl Carriers {
    /// Whether `c` is on.
    pub fn has(&self, c: Carrier) -> bool {
        self.enabled.contains(&c)
    }

    /// The first token found, and where.
    pub fn find<'a>(&self, head: &'a RequestHead) -> Option<(&'a str, Carrier)> {
        Carrier::ALL.into_iter().filter(|&c| self.has(c)).find_map(|c| self.take(head, c).map(|t| (t, c)))
    }

    fn take<'a>(&self, head: &'a RequestHead, c: Carrier) -> Option<&'a str> {
        let token = match c {
            Carrier::Authorization => head.headers_named("authorization").find_map(bearer),
            Carrier::XAuthToken => head.header("x-auth-token").map(str::trim),
            Carrier::Cookie => head.headers_named("cookie").find_map(|v| cookie(v, &self.cookie_name)),
            Carrier::Query => head.query.as_deref().and_then(|q| query_param(q, "token")),
            Carrier::Subprotocol => head.headers_named("sec-websocket-protocol").find_map(subprotocol_bearer),
        };
        token.filter(|t| !t.is_empty())
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, RFC 6750 section 2.1).
pub fn bearer(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// The value of cookie `name` in a `Cookie` header (RFC 6265 section 4.2.1).
fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The (not percent-decoded: a JWT needs no escaping) value of `name` in a query string.
fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The token after `bearer` in a `Sec-WebSocket-Protocol` list. The name must be exactly `bearer`: the 101
/// answers with that literal, and RFC 6455 4.2.2 has the server select one of the client's own values (a
/// client fails the connection on any other, 4.1), so `Bearer` would get an answer its client refuses.
fn subprotocol_bearer(value: &str) -> Option<&str> {
    let mut items = value.split(',').map(str::trim);
    items.find(|p| *p == "bearer")?;
    items.next()
}

/// Whether the request's `Origin` passes `allowed`.
///
/// - An `Origin` not in a non-empty `allowed` list fails (browsers always send `Origin` on a WebSocket).
/// - A token taken from the cookie needs an `Origin` that is in the list: browsers attach cookies to requests
///   any site makes, so without this a hostile page could open an authenticated socket (cross-site WebSocket
///   hijacking). With an empty list, cookie tokens are therefore never accepted from browsers.
/// - Otherwise (no `Origin`: not a browser) it passes.
pub fn origin_ok(head: &RequestHead, allowed: &[String], carrier: Option<Carrier>) -> bool {
    let origin = head.header("origin").map(str::trim);
    let listed = |o: &str| allowed.iter().any(|a| a.eq_ignore_ascii_case(o));
    match origin {
        Some(o) if !allowed.is_empty() && !listed(o) => false,
        Some(o) if carrier == Some(Carrier::Cookie) => listed(o),
        None if carrier == Some(Carrier::Cookie) => false,
        _ => true,
    }
}
