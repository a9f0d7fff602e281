//! Auth costs: what a handshake pays to verify its token, and what a per-message token costs once cached.
//!
//! - `auth/verify/{HS256,RS256,ES256,EdDSA}`: `Verifier::verify` of one token (signature, then claims) with
//!   realistic claims (`sub`, `exp`, two `subscribe` patterns, one `publish`). The key set holds the HMAC
//!   secret and the JWKS of `tests/fixtures/auth` (kids `rsa-1`, `ec-1`, `ed-1`); asymmetric tokens name their
//!   `kid`. This is the verification cost per authenticated handshake.
//! - `auth/upgrade_check/bearer_hs256_subscribe`: `AuthPolicy::check_upgrade` in `handshake` mode on a parsed
//!   `/sub/news` upgrade carrying `Authorization: Bearer <HS256 token>`: carrier lookup, `Origin` check,
//!   verification, grant interning (a worker's persistent `WorkerAuth` with its token cache off, so the grants
//!   are already interned but the signature is checked every time, as
//!   for every connection after the first with the same claims) and the topic check. The full per-handshake
//!   auth cost, parsing excluded (see `handshake/parse_validate_browser_upgrade`). Beside it,
//!   `bearer_hs256_subscribe_seen_before`: the same with the worker's token cache on (the default), for a
//!   token the worker has verified before (a reconnecting client).
//! - `auth/verify_seen_before/RS256`: `AuthPolicy::verify` of an RS256 token the worker's cache holds: what a
//!   reconnect storm costs per handshake instead of `auth/verify/RS256`.
//! - `auth/per_message_cached/conn_auth_cached`: `ConnAuth::cached` on a per-message connection whose cache
//!   holds the token, i.e. a repeated per-message token; beside it, `hashmap_lookup`: the same token bytes
//!   looked up in a `HashMap<Vec<u8>, u64>` of 1000 tokens (std SipHash), the bar the cached check must not
//!   exceed.
//! - `auth/grants/may_subscribe_wildcard_of_4`: `Grants::may_subscribe` for a topic matched only by the last of
//!   four patterns (the wildcard `user.123.*`), so every pattern is tried.
//!
//! Times are fixed (`NOW`), and tokens expire far after it, so results do not depend on the clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use herald::protocol::auth::policy::Need;
use herald::protocol::auth::{AuthPolicy, Carriers, ClaimRules, ConnAuth, Grants, KeySet, Mode, Verifier, WorkerAuth};
use herald::protocol::handshake::parse_request;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const SECRET: &[u8] = include_bytes!("../tests/fixtures/auth/hs.secret");
const RSA_KEY: &[u8] = include_bytes!("../tests/fixtures/auth/rsa.key");
const EC_KEY: &[u8] = include_bytes!("../tests/fixtures/auth/ec.key");
const ED_KEY: &[u8] = include_bytes!("../tests/fixtures/auth/ed.key");
const JWKS: &[u8] = include_bytes!("../tests/fixtures/auth/jwks.json");

/// The Unix time every check runs at.
const NOW: u64 = 1_800_000_000;
/// Token expiry: far after `NOW`.
const EXP: u64 = NOW + 10 * 365 * 24 * 3600;

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "exp": EXP, "subscribe": ["news", "user.123.*"], "publish": ["chat"]})
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &serde_json::Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    encode(&header, claims, key).expect("sign")
}

fn hs256(sub: &str) -> String {
    sign(Algorithm::HS256, None, &EncodingKey::from_secret(SECRET), &claims(sub))
}

fn rules() -> ClaimRules {
    ClaimRules { issuers: vec![], audiences: vec![], leeway: 30, max_token_size: 8192 }
}

fn verifier() -> Verifier {
    let mut keys = KeySet::new();
    keys.add_secret(SECRET, &[Algorithm::HS256]).expect("secret");
    keys.add_jwks(JWKS).expect("jwks");
    Verifier::new(Arc::new(keys), rules())
}

fn verify(c: &mut Criterion) {
    let v = verifier();
    let user = claims("user-123");
    let cases = [
        ("HS256", hs256("user-123")),
        ("RS256", sign(Algorithm::RS256, Some("rsa-1"), &EncodingKey::from_rsa_pem(RSA_KEY).expect("rsa"), &user)),
        ("ES256", sign(Algorithm::ES256, Some("ec-1"), &EncodingKey::from_ec_pem(EC_KEY).expect("ec"), &user)),
        ("EdDSA", sign(Algorithm::EdDSA, Some("ed-1"), &EncodingKey::from_ed_pem(ED_KEY).expect("ed"), &user)),
    ];
    let mut group = c.benchmark_group("auth/verify");
    for (name, token) in &cases {
        // Measure the success path only.
        let ok = v.verify(token, NOW).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ok.subscribe.len(), 2, "{name}");
        group.bench_function(*name, |b| b.iter(|| v.verify(black_box(token), black_box(NOW))));
    }
    group.finish();
}

fn upgrade_check(c: &mut Criterion) {
    let policy =
        AuthPolicy::new(Mode::Handshake, verifier(), Carriers::default(), vec![], None, Duration::from_secs(5));
    let request = format!(
        "GET /sub/news HTTP/1.1\r\nHost: push.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        hs256("user-123")
    );
    let head = parse_request(request.as_bytes(), 8192).expect("valid").expect("complete");
    // Without the worker's token cache: every upgrade checks the signature.
    let mut mem = WorkerAuth::new(0);
    let now = Instant::now();
    let admitted = policy.check_upgrade(&head, Need::Subscribe("news"), false, now, NOW, &mut mem).expect("admitted");
    assert!(matches!(admitted.auth, ConnAuth::Granted { .. }) && !admitted.cached);
    drop(admitted);

    let check = |mem: &mut WorkerAuth| {
        policy.check_upgrade(black_box(&head), black_box(Need::Subscribe("news")), false, now, black_box(NOW), mem)
    };
    let mut group = c.benchmark_group("auth/upgrade_check");
    group.bench_function("bearer_hs256_subscribe", |b| b.iter(|| check(&mut mem)));
    assert_eq!(mem.grants.len(), 1, "one set of claims, one interned grant");
    // With it (the default): the same token again, as a reconnecting client brings it.
    let mut cached = WorkerAuth::default();
    let first = policy.check_upgrade(&head, Need::Subscribe("news"), false, now, NOW, &mut cached).expect("ok");
    assert!(!first.cached);
    group.bench_function("bearer_hs256_subscribe_seen_before", |b| b.iter(|| check(&mut cached)));
    group.finish();
}

fn verify_seen_before(c: &mut Criterion) {
    let policy =
        AuthPolicy::new(Mode::Handshake, verifier(), Carriers::default(), vec![], None, Duration::from_secs(5));
    let user = claims("user-123");
    let rs256 = sign(Algorithm::RS256, Some("rsa-1"), &EncodingKey::from_rsa_pem(RSA_KEY).expect("rsa"), &user);
    let mut mem = WorkerAuth::default();
    assert!(!policy.verify(&rs256, NOW, &mut mem).expect("valid").cached);
    assert!(policy.verify(&rs256, NOW, &mut mem).expect("valid").cached);
    let mut group = c.benchmark_group("auth/verify_seen_before");
    group.bench_function("RS256", |b| b.iter(|| policy.verify(black_box(&rs256), black_box(NOW), &mut mem)));
    group.finish();
}

fn per_message_cached(c: &mut Criterion) {
    let token = hs256("user-123");
    let verified = verifier().verify(&token, NOW).expect("valid");
    let grants = Arc::new(Grants::new(&verified.subscribe, &verified.publish));
    let mut auth = ConnAuth::PerMessage { cache: None, expires: u64::MAX };
    auth.remember(token.as_bytes(), grants, verified.expires);
    // The token as a new message would bring it: the same bytes in another buffer.
    let presented = token.as_bytes().to_vec();
    assert!(auth.cached(&presented, NOW).is_some());

    // 1000 distinct tokens of the same shape and length (`user-000` to `user-999`), the presented one among them.
    let map: HashMap<Vec<u8>, u64> = (0..1000).map(|n| (hs256(&format!("user-{n:03}")).into_bytes(), n)).collect();
    assert_eq!(map.len(), 1000);
    assert_eq!(map.get(presented.as_slice()), Some(&123));

    let mut group = c.benchmark_group("auth/per_message_cached");
    group.bench_function("conn_auth_cached", |b| {
        b.iter(|| auth.cached(black_box(presented.as_slice()), black_box(NOW)))
    });
    group.bench_function("hashmap_lookup", |b| b.iter(|| map.get(black_box(presented.as_slice())).copied()));
    group.finish();
}

fn grants(c: &mut Criterion) {
    let subscribe: Vec<String> = ["news", "alerts", "prices.fx.*", "user.123.*"].map(String::from).to_vec();
    let grants = Grants::new(&subscribe, &["chat".to_string()]);
    assert!(grants.may_subscribe("user.123.inbox"));
    let mut group = c.benchmark_group("auth/grants");
    group.bench_function("may_subscribe_wildcard_of_4", |b| {
        b.iter(|| grants.may_subscribe(black_box("user.123.inbox")))
    });
    group.finish();
}

criterion_group!(benches, verify, verify_seen_before, upgrade_check, per_message_cached, grants);
criterion_main!(benches);
