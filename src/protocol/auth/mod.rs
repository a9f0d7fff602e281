//! Authentication and authorization decisions, sans-IO: JWTs in, grants and refusals out.
//!
//! Nothing here reads a file, a socket or the clock: key material arrives as bytes ([`keys`]), the current
//! time as an argument (`now` as an `Instant` for deadlines, `unix` as seconds since the epoch for claims), so
//! every backend and every test drives the same decisions.
//!
//! - [`keys`]: the verification keys, each pinned to its algorithms (HMAC secrets, PEM public keys, JWKS).
//! - [`verify`]: signature and claim checks (`exp`, `nbf` with leeway, `iss`, `aud`), typed errors.
//! - [`grants`]: what a token allows (`subscribe`/`publish` topic patterns), interned per worker.
//! - [`carrier`]: where a token travels in an upgrade request, and the `Origin` check.
//! - [`policy`]: the per-server decision: may this request upgrade, may this connection publish here.
//! - [`cache`]: a worker's recently verified tokens, so a reconnecting client skips the signature check.
//! - [`session`]: one connection's auth state (awaiting the auth message, granted until `exp`, per-message
//!   token cache).

pub mod cache;
pub mod carrier;
pub mod grants;
pub mod keys;
pub mod policy;
pub mod session;
pub mod verify;

#[cfg(test)]
mod tests;

pub use carrier::{Carrier, Carriers};
pub use grants::{Grants, Interner};
pub use keys::{KeyError, KeySet};
pub use policy::{AuthPolicy, Authenticated, Denied, Mode, WorkerAuth};
pub use session::ConnAuth;
pub use verify::{AuthError, ClaimRules, Verified, Verifier};

/// Close code for "not authenticated": the auth message is missing, late or bad, or the token expired.
/// (Private-use range 4000-4999 of RFC 6455 section 7.4.2, mirroring HTTP 401.)
pub const CLOSE_UNAUTHORIZED: u16 = 4401;
/// Close code for "authenticated, but not allowed here" (mirroring HTTP 403).
pub const CLOSE_FORBIDDEN: u16 = 4403;
