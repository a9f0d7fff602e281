//! The auth core's behaviour, with tokens minted here from the test keys in `tests/fixtures/auth`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use super::carrier::{self, Carrier, Carriers};
use super::grants::{Grants, Interner, Pattern};
use super::keys::{KeyError, KeySet};
use super::policy::{AuthPolicy, Denied, Mode, Need, WorkerAuth};
use super::session::{parse_auth_message, ConnAuth, Lapse};
use super::verify::{AuthError, ClaimRules, Verifier};
use crate::protocol::handshake::parse_request;

const SECRET: &[u8] = include_bytes!("../../../tests/fixtures/auth/hs.secret");
const RSA_KEY: &[u8] = include_bytes!("../../../tests/fixtures/auth/rsa.key");
const RSA_PUB: &[u8] = include_bytes!("../../../tests/fixtures/auth/rsa.pub");
const EC_KEY: &[u8] = include_bytes!("../../../tests/fixtures/auth/ec.key");
const ED_KEY: &[u8] = include_bytes!("../../../tests/fixtures/auth/ed.key");
const JWKS: &[u8] = include_bytes!("../../../tests/fixtures/auth/jwks.json");
const NOW: u64 = 1_800_000_000;

fn hs(claims: serde_json::Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).expect("sign")
}

fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    encode(&h, &claims, key).expect("sign")
}

fn rules() -> ClaimRules {
    ClaimRules { issuers: vec![], audiences: vec![], leeway: 30, max_token_size: 8192 }
}

fn secret_verifier(rules: ClaimRules) -> Verifier {
    let mut keys = KeySet::new();
    keys.add_secret(SECRET, &[Algorithm::HS256]).expect("secret");
    Verifier::new(Arc::new(keys), rules)
}

fn all_keys() -> Verifier {
    let mut keys = KeySet::new();
    keys.add_secret(SECRET, &[Algorithm::HS256, Algorithm::HS512]).expect("secret");
    keys.add_pem(RSA_PUB, &[Algorithm::RS256, Algorithm::PS256], None).expect("rsa pem");
    keys.add_jwks(JWKS).expect("jwks");
    Verifier::new(Arc::new(keys), rules())
}

fn valid() -> serde_json::Value {
    json!({"sub": "alice", "exp": NOW + 600, "subscribe": ["news", "user.alice.*"], "publish": "chat"})
}

#[test]
fn a_valid_hs256_token_yields_its_subject_expiry_and_patterns() {
    let v = secret_verifier(rules()).verify(&hs(valid()), NOW).expect("valid");
    assert_eq!(v.sub.as_deref(), Some("alice"));
    assert_eq!(v.expires, NOW + 600 + 30, "expiry includes the leeway");
    assert_eq!(v.subscribe, vec!["news".to_string(), "user.alice.*".to_string()]);
    assert_eq!(v.publish, vec!["chat".to_string()], "a single string is a one-pattern list");
}

#[test]
fn every_supported_key_kind_verifies_its_own_tokens() {
    let v = all_keys();
    let cases = [
        signed(Algorithm::HS512, None, &EncodingKey::from_secret(SECRET), valid()),
        signed(Algorithm::RS256, None, &EncodingKey::from_rsa_pem(RSA_KEY).expect("rsa"), valid()),
        signed(Algorithm::PS256, None, &EncodingKey::from_rsa_pem(RSA_KEY).expect("rsa"), valid()),
        signed(Algorithm::RS256, Some("rsa-1"), &EncodingKey::from_rsa_pem(RSA_KEY).expect("rsa"), valid()),
        signed(Algorithm::ES256, Some("ec-1"), &EncodingKey::from_ec_pem(EC_KEY).expect("ec"), valid()),
        signed(Algorithm::EdDSA, Some("ed-1"), &EncodingKey::from_ed_pem(ED_KEY).expect("ed"), valid()),
    ];
    for (i, token) in cases.iter().enumerate() {
        assert!(v.verify(token, NOW).is_ok(), "case {i}: {:?}", v.verify(token, NOW));
    }
}

#[test]
fn a_jwks_key_is_chosen_by_kid_and_pinned_to_its_alg() {
    let v = all_keys();
    let ec = EncodingKey::from_ec_pem(EC_KEY).expect("ec");
    // Signed by the EC key but naming the Ed25519 key's kid: that key does not take ES256.
    let wrong_kid = signed(Algorithm::ES256, Some("ed-1"), &ec, valid());
    assert_eq!(v.verify(&wrong_kid, NOW), Err(AuthError::UnknownKey));
    let unknown_kid = signed(Algorithm::ES256, Some("nope"), &ec, valid());
    assert_eq!(v.verify(&unknown_kid, NOW), Err(AuthError::UnknownKey), "no kid-less key takes ES256");
}

#[test]
fn a_bad_signature_is_refused() {
    let other = EncodingKey::from_secret(b"another secret entirely");
    let token = signed(Algorithm::HS256, None, &other, valid());
    assert_eq!(secret_verifier(rules()).verify(&token, NOW), Err(AuthError::BadSignature));
    let mut tampered = hs(valid());
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(secret_verifier(rules()).verify(&tampered, NOW), Err(AuthError::BadSignature));
}

#[test]
fn alg_none_is_refused() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(valid().to_string());
    for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
        assert_eq!(secret_verifier(rules()).verify(&token, NOW), Err(AuthError::AlgorithmNotAllowed), "{token}");
    }
}

/// An HS256 token whose header carries `crit` and the extension parameters it names.
fn hs_with_header(crit: Option<serde_json::Value>, params: &[(&str, serde_json::Value)]) -> String {
    let mut h = Header::new(Algorithm::HS256);
    if let Some(crit) = crit {
        h.extras.insert("crit", crit);
    }
    for (name, value) in params {
        h.extras.insert(*name, value.clone());
    }
    encode(&h, &valid(), &EncodingKey::from_secret(SECRET)).expect("sign")
}

/// RFC 7515 section 4.1.11: "If any of the listed extension Header Parameters are not understood and supported
/// by the recipient, then the JWS is invalid." herald understands no extension, so every `crit` list names one
/// it does not support, even when the token is correctly signed and the named parameter is present.
#[test]
fn a_token_with_a_crit_header_naming_an_unsupported_extension_is_refused() {
    let v = secret_verifier(rules());
    let cases = [
        hs_with_header(Some(json!(["exp"])), &[("exp", json!(NOW + 600))]),
        hs_with_header(Some(json!(["foo"])), &[("foo", json!("bar"))]),
        hs_with_header(Some(json!(["foo"])), &[]),
        // "Producers MUST NOT use the empty list" and a `crit` that is not a list are broken `crit`s.
        hs_with_header(Some(json!([])), &[]),
        hs_with_header(Some(json!("foo")), &[("foo", json!("bar"))]),
    ];
    for token in &cases {
        assert_eq!(v.verify(token, NOW), Err(AuthError::UnsupportedCritical), "{token}");
    }
    assert_eq!(AuthError::UnsupportedCritical.description(), "unsupported critical header parameter");
    // Extension parameters that are not marked critical may be ignored, as before.
    assert!(v.verify(&hs_with_header(None, &[("foo", json!("bar"))]), NOW).is_ok());
    assert!(v.verify(&hs(valid()), NOW).is_ok(), "a token without crit still passes");
}

#[test]
fn algorithm_confusion_with_the_rsa_public_key_as_hmac_secret_is_refused() {
    let mut keys = KeySet::new();
    keys.add_pem(RSA_PUB, &[Algorithm::RS256], None).expect("rsa");
    let v = Verifier::new(Arc::new(keys), rules());
    let forged = signed(Algorithm::HS256, None, &EncodingKey::from_secret(RSA_PUB), valid());
    assert_eq!(v.verify(&forged, NOW), Err(AuthError::AlgorithmNotAllowed));
}

#[test]
fn keys_refuse_algorithms_of_another_family() {
    let mut keys = KeySet::new();
    assert!(matches!(keys.add_secret(SECRET, &[Algorithm::RS256]), Err(KeyError::WrongFamily { .. })));
    assert!(matches!(keys.add_pem(RSA_PUB, &[Algorithm::HS256], None), Err(KeyError::WrongFamily { .. })));
    assert!(matches!(keys.add_secret(b"", &[Algorithm::HS256]), Err(KeyError::EmptySecret)));
    assert!(keys.add_jwks(b"{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}").is_err(), "no kid, no alg");
}

#[test]
fn expiry_and_not_before_are_judged_with_leeway_against_the_given_time() {
    let v = secret_verifier(ClaimRules { leeway: 30, ..rules() });
    let token = hs(json!({"exp": NOW, "nbf": NOW - 10}));
    assert!(v.verify(&token, NOW + 29).is_ok(), "inside the leeway");
    assert_eq!(v.verify(&token, NOW + 30), Err(AuthError::Expired));
    let early = hs(json!({"exp": NOW + 600, "nbf": NOW + 100}));
    assert_eq!(v.verify(&early, NOW), Err(AuthError::NotYetValid));
    assert!(v.verify(&early, NOW + 70).is_ok(), "nbf minus leeway has passed");
    assert_eq!(v.verify(&hs(json!({"sub": "x"})), NOW), Err(AuthError::MissingClaim("exp")));
}

#[test]
fn configured_issuer_and_audience_must_be_present_and_match() {
    let v = secret_verifier(ClaimRules {
        issuers: vec!["https://auth.example".into()],
        audiences: vec!["herald".into()],
        ..rules()
    });
    let good = hs(json!({"exp": NOW + 60, "iss": "https://auth.example", "aud": ["other", "herald"]}));
    assert!(v.verify(&good, NOW).is_ok());
    let cases = [
        (json!({"exp": NOW + 60, "aud": "herald"}), AuthError::MissingClaim("iss")),
        (json!({"exp": NOW + 60, "iss": "https://evil", "aud": "herald"}), AuthError::WrongIssuer),
        (json!({"exp": NOW + 60, "iss": "https://auth.example"}), AuthError::MissingClaim("aud")),
        (json!({"exp": NOW + 60, "iss": "https://auth.example", "aud": "x"}), AuthError::WrongAudience),
    ];
    for (claims, want) in cases {
        assert_eq!(v.verify(&hs(claims.clone()), NOW), Err(want), "{claims}");
    }
}

#[test]
fn garbage_and_oversized_tokens_are_refused_without_panicking() {
    let v = secret_verifier(ClaimRules { max_token_size: 512, ..rules() });
    for t in ["", "abc", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.!!!.sig", "\u{0}\u{1}"] {
        assert!(v.verify(t, NOW).is_err(), "{t:?}");
    }
    assert_eq!(v.verify(&"a".repeat(513), NOW), Err(AuthError::TooLarge));
    let strange = hs(json!({"exp": "tomorrow"}));
    assert_eq!(v.verify(&strange, NOW), Err(AuthError::Malformed));
}

#[test]
fn patterns_match_exact_names_and_trailing_wildcards_only() {
    assert!(Pattern::new("news").matches("news"));
    assert!(!Pattern::new("news").matches("news2"));
    assert!(Pattern::new("user.42.*").matches("user.42.inbox"));
    assert!(!Pattern::new("user.42.*").matches("user.43.inbox"));
    assert!(Pattern::new("*").matches("anything"));
    assert!(!Pattern::new("a*b").matches("axb"), "only a trailing * is a wildcard");
    let g = Grants::new(&["a.*".into()], &[]);
    assert!(g.may_subscribe("a.b") && !g.may_publish("a.b"), "no publish claim, no publishing");
}

#[test]
fn connections_of_different_subjects_with_the_same_patterns_share_grants() {
    let p = policy(Mode::Handshake);
    let mut i = WorkerAuth::default();
    let claims = |sub: &str| json!({"sub": sub, "exp": NOW + 600, "subscribe": ["news"]});
    let a = p.verify(&hs(claims("ann")), NOW, &mut i).expect("valid");
    let b = p.verify(&hs(claims("ben")), NOW, &mut i).expect("valid");
    assert!(Arc::ptr_eq(&a.grants, &b.grants));
    let (ConnAuth::Granted { subject: sa, .. }, ConnAuth::Granted { subject: sb, .. }) =
        (a.into_conn_auth(), b.into_conn_auth())
    else {
        panic!("granted")
    };
    assert_ne!(sa, sb, "the subjects still tell the connections apart for refreshes");
}

#[test]
fn equal_grants_are_interned_to_one_allocation() {
    let mut i = Interner::default();
    let a = i.intern(Grants::new(&["x".into()], &[]));
    let b = i.intern(Grants::new(&["x".into()], &[]));
    let c = i.intern(Grants::new(&["y".into()], &[]));
    assert!(Arc::ptr_eq(&a, &b));
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(i.len(), 2);
}

#[test]
fn the_interner_forgets_grants_nobody_holds_when_it_grows() {
    let mut i = Interner::default();
    for n in 0..5000 {
        drop(i.intern(Grants::new(&[n.to_string()], &[])));
    }
    assert!(i.len() <= 2048, "swept: {}", i.len());
}

fn head(extra: &str) -> crate::protocol::handshake::RequestHead {
    head_at("/sub/news", extra)
}

fn head_at(path: &str, extra: &str) -> crate::protocol::handshake::RequestHead {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    );
    parse_request(req.as_bytes(), 8192).expect("parses").expect("complete")
}

#[test]
fn each_carrier_finds_the_token_in_its_place() {
    let c = Carriers::default();
    let cases = [
        ("Authorization: bearer T1\r\n", "T1", Carrier::Authorization),
        ("X-Auth-Token: T2\r\n", "T2", Carrier::XAuthToken),
        ("Cookie: a=1; herald_token=T3; b=2\r\n", "T3", Carrier::Cookie),
        ("Sec-WebSocket-Protocol: bearer, T5\r\n", "T5", Carrier::Subprotocol),
    ];
    for (header, token, carrier) in cases {
        assert_eq!(c.find(&head(header)), Some((token, carrier)), "{header}");
    }
    assert_eq!(c.find(&head_at("/sub/news?x=1&token=T4", "")), Some(("T4", Carrier::Query)));
    assert_eq!(c.find(&head("Authorization: Basic dXNlcg==\r\n")), None, "another scheme is not a token");
}

#[test]
fn carriers_are_tried_in_order_and_can_be_switched_off() {
    let both = head("X-Auth-Token: second\r\nAuthorization: Bearer first\r\n");
    assert_eq!(Carriers::default().find(&both), Some(("first", Carrier::Authorization)));
    let no_auth_header = Carriers { enabled: vec![Carrier::XAuthToken], ..Carriers::default() };
    assert_eq!(no_auth_header.find(&both), Some(("second", Carrier::XAuthToken)));
    let none = Carriers { enabled: vec![Carrier::Query], ..Carriers::default() };
    assert_eq!(none.find(&both), None);
}

#[test]
fn origin_rules_guard_cookie_tokens() {
    let allowed = vec!["https://app.example".to_string()];
    let good = head("Origin: https://app.example\r\n");
    let evil = head("Origin: https://evil.example\r\n");
    let no_origin = head("");
    assert!(carrier::origin_ok(&good, &allowed, Some(Carrier::Cookie)));
    assert!(!carrier::origin_ok(&evil, &allowed, Some(Carrier::Cookie)));
    assert!(!carrier::origin_ok(&evil, &allowed, Some(Carrier::Authorization)), "a set list applies to all");
    assert!(!carrier::origin_ok(&no_origin, &allowed, Some(Carrier::Cookie)), "cookie needs an Origin");
    assert!(!carrier::origin_ok(&good, &[], Some(Carrier::Cookie)), "cookie needs a listed Origin");
    assert!(carrier::origin_ok(&evil, &[], Some(Carrier::Authorization)), "no list, no header token check");
}

fn policy(mode: Mode) -> AuthPolicy {
    AuthPolicy::new(
        mode,
        secret_verifier(rules()),
        Carriers::default(),
        vec![],
        Some(Arc::from(&b"api-key-1"[..])),
        Duration::from_secs(5),
    )
}

#[test]
fn handshake_mode_admits_valid_tokens_and_refuses_with_the_right_status() {
    let p = policy(Mode::Handshake);
    let mut i = WorkerAuth::default();
    let now = Instant::now();
    let token = hs(valid());
    let ok = p.check_upgrade(
        &head(&format!("Authorization: Bearer {token}\r\n")),
        Need::Subscribe("news"),
        false,
        now,
        NOW,
        &mut i,
    );
    let ok = ok.expect("admitted");
    assert!(matches!(ok.auth, ConnAuth::Granted { expires, .. } if u64::from(expires) == NOW + 630));
    assert_eq!(ok.subject.as_deref(), Some("alice"));
    let missing = p.check_upgrade(&head(""), Need::Connect, false, now, NOW, &mut i).expect_err("no token");
    assert_eq!((missing.status(), missing.www_authenticate().as_deref()), (401, Some("Bearer realm=\"herald\"")));
    let forbidden = p
        .check_upgrade(&head(&format!("X-Auth-Token: {token}\r\n")), Need::Publish("news"), false, now, NOW, &mut i)
        .expect_err("may not publish to news");
    assert_eq!(forbidden, Denied::Forbidden);
    assert_eq!(forbidden.status(), 403);
    let expired = hs(json!({"exp": NOW - 100}));
    let e = p
        .check_upgrade(&head(&format!("X-Auth-Token: {expired}\r\n")), Need::Connect, false, now, NOW, &mut i)
        .expect_err("expired");
    assert!(e.www_authenticate().is_some_and(|h| h.contains("error=\"invalid_token\"") && h.contains("expired")));
}

#[test]
fn the_subprotocol_carrier_is_answered_with_bearer() {
    let p = policy(Mode::Handshake);
    let token = hs(valid());
    let h = head(&format!("Sec-WebSocket-Protocol: bearer, {token}\r\n"));
    let a = p.check_upgrade(&h, Need::Connect, false, Instant::now(), NOW, &mut WorkerAuth::default()).expect("ok");
    assert_eq!(a.subprotocol, Some("bearer"));
}

#[test]
fn the_subprotocol_carrier_takes_only_the_exact_name_bearer_so_the_answer_is_one_the_client_offered() {
    // RFC 6455 4.2.2: the server's subprotocol is selected "from the values in the client's handshake", and a
    // client fails the connection on any other (4.1). herald answers the literal `bearer`, so a `Bearer` or
    // `BEARER` offer must not be taken as the carrier (found by the `auth` fuzz target).
    let token = hs(valid());
    for name in ["Bearer", "BEARER", "beareR"] {
        let h = head(&format!("Sec-WebSocket-Protocol: {name}, {token}\r\n"));
        assert_eq!(Carriers::default().find(&h), None, "{name}");
        let p = policy(Mode::Handshake);
        let denied = p.check_upgrade(&h, Need::Connect, false, Instant::now(), NOW, &mut WorkerAuth::default());
        assert!(matches!(denied, Err(Denied::Unauthorized(AuthError::Missing))), "{name}: {denied:?}");
    }
}

#[test]
fn message_mode_admits_without_a_token_but_awaits_one_until_the_timeout() {
    let p = policy(Mode::Message);
    let now = Instant::now();
    let a = p.check_upgrade(&head(""), Need::Connect, false, now, NOW, &mut WorkerAuth::default()).expect("admitted");
    assert!(!a.auth.is_open());
    assert_eq!(a.auth.lapsed(now + Duration::from_secs(4), NOW), None);
    assert_eq!(a.auth.lapsed(now + Duration::from_secs(5), NOW), Some(Lapse::Timeout));
}

#[test]
fn per_message_mode_admits_ws_without_a_token_but_not_raw_endpoints() {
    let p = policy(Mode::PerMessage);
    let mut i = WorkerAuth::default();
    let now = Instant::now();
    let ws = p.check_upgrade(&head_at("/ws", ""), Need::Connect, true, now, NOW, &mut i).expect("ws admitted");
    assert!(matches!(ws.auth, ConnAuth::PerMessage { .. }));
    assert!(p.check_upgrade(&head(""), Need::Subscribe("news"), false, now, NOW, &mut i).is_err());
}

#[test]
fn a_cached_per_message_token_is_reused_only_while_valid_and_only_for_its_exact_bytes() {
    let mut auth = ConnAuth::PerMessage { cache: None, expires: u64::MAX };
    let g = Arc::new(Grants::new(&["*".into()], &[]));
    auth.remember(b"tok", g.clone(), NOW + 10);
    assert!(auth.cached(b"tok", NOW + 9).is_some());
    assert!(auth.cached(b"tok", NOW + 10).is_none(), "expired");
    assert!(auth.cached(b"tok2", NOW).is_none(), "other bytes");
    auth.hold_until(NOW + 10);
    assert_eq!(auth.lapsed(Instant::now(), NOW + 10), Some(Lapse::Expired));
}

#[test]
fn post_publish_takes_the_api_key_or_a_token_that_may_publish() {
    let p = policy(Mode::Handshake);
    let mut i = WorkerAuth::default();
    let post = |extra: &str| head_at("/publish/chat", extra);
    assert!(p.check_http_publish(&post("Authorization: Bearer api-key-1\r\n"), "anything", NOW, &mut i).is_ok());
    let token = hs(valid());
    assert!(p.check_http_publish(&post(&format!("Authorization: Bearer {token}\r\n")), "chat", NOW, &mut i).is_ok());
    assert_eq!(
        p.check_http_publish(&post(&format!("Authorization: Bearer {token}\r\n")), "news", NOW, &mut i),
        Err(Denied::Forbidden)
    );
    assert_eq!(p.check_http_publish(&post(""), "chat", NOW, &mut i), Err(Denied::Unauthorized(AuthError::Missing)));
    let none = policy(Mode::None);
    assert!(none.check_http_publish(&post(""), "chat", NOW, &mut i).is_err(), "an API key set means it is needed");
    assert!(AuthPolicy::off().check_http_publish(&post(""), "chat", NOW, &mut i).is_ok());
}

#[test]
fn auth_messages_are_recognised_and_nothing_else_is() {
    let m = parse_auth_message(br#"{"type":"auth","token":"abc","id":7}"#).expect("auth message");
    assert_eq!(m.token, "abc");
    assert_eq!(m.id.map(|r| r.get().to_string()).as_deref(), Some("7"));
    for text in [&br#"{"type":"subscribe","topic":"auth"}"#[..], b"auth", br#"{"type":"auth"}"#, b"\xff\xfe"] {
        assert!(parse_auth_message(text).is_none(), "{:?}", String::from_utf8_lossy(text));
    }
}

#[test]
fn a_per_message_connection_must_bring_a_valid_token_within_the_timeout() {
    let p = policy(Mode::PerMessage);
    let now = Instant::now();
    let a = p.check_upgrade(&head_at("/ws", ""), Need::Connect, true, now, NOW, &mut WorkerAuth::default());
    let mut auth = a.expect("admitted").auth;
    assert_eq!(auth.lapsed(now, NOW + 4), None);
    assert_eq!(auth.lapsed(now, NOW + 5), Some(Lapse::Timeout), "auth.timeout is 5 s");
    auth.remember(b"tok", Arc::new(Grants::new(&[], &[])), NOW + 600);
    assert_eq!(auth.lapsed(now, NOW + 100), None, "a verified token ends the deadline");
}

#[test]
fn a_token_seen_before_is_answered_by_the_worker_cache_until_it_expires() {
    let p = policy(Mode::Handshake);
    let mut mem = WorkerAuth::default();
    let token = hs(valid());
    let first = p.verify(&token, NOW, &mut mem).expect("valid");
    let again = p.verify(&token, NOW + 1, &mut mem).expect("cached");
    assert!(!first.cached && again.cached);
    assert!(Arc::ptr_eq(&first.grants, &again.grants));
    assert_eq!((again.expires, again.subject_hash), (first.expires, first.subject_hash));
    assert_eq!(p.verify(&token, first.expires, &mut mem).map(|a| a.cached), Err(AuthError::Expired), "not past exp");
    let mut other = token.clone();
    other.push('x');
    assert!(p.verify(&other, NOW, &mut mem).is_err(), "one byte more is another token, verified (and refused)");
    mem.tokens.clear();
    assert!(!p.verify(&token, NOW, &mut mem).expect("valid").cached, "cleared on rotation");
    let mut off = WorkerAuth::new(0);
    assert!(!p.verify(&token, NOW, &mut off).expect("valid").cached);
    assert!(!p.verify(&token, NOW, &mut off).expect("valid").cached, "capacity 0: no cache");
}

#[test]
fn the_worker_token_cache_stays_within_its_capacity() {
    let p = policy(Mode::Handshake);
    let mut mem = WorkerAuth::new(8);
    for n in 0..20 {
        let t = hs(json!({"sub": format!("u{n}"), "exp": NOW + 600}));
        p.verify(&t, NOW, &mut mem).expect("valid");
        assert!(mem.tokens.len() <= 8, "{} entries", mem.tokens.len());
    }
}

#[test]
fn the_deadline_is_when_the_auth_state_lapses() {
    let now = Instant::now();
    let unix = 1_000_000;
    let granted = ConnAuth::Granted { grants: Arc::new(Grants::default()), expires: 1_000_030, subject: 0 };
    let at = granted.deadline(now, unix).expect("a token expires");
    assert_eq!(at - now, Duration::from_secs(30));
    assert!(granted.lapsed(now, unix + 29).is_none() && granted.lapsed(now, unix + 30).is_some());
    let awaiting = ConnAuth::Awaiting { deadline: now + Duration::from_secs(5) };
    assert_eq!(awaiting.deadline(now, unix), Some(now + Duration::from_secs(5)));
    let never = ConnAuth::PerMessage { cache: None, expires: u64::MAX };
    assert_eq!(never.deadline(now, unix), None, "u64::MAX is 'no token limits it'");
    assert_eq!(ConnAuth::Off.deadline(now, unix), None);
    let past = ConnAuth::PerMessage { cache: None, expires: unix - 5 };
    assert_eq!(past.deadline(now, unix), Some(now), "an expiry already past is due now");
}
