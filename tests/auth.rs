//! Authentication and authorization against a real server: every token carrier, every refusal with its HTTP
//! status before the upgrade (no slot kept), the message and per-message modes, expiry and refresh, the API key
//! for `POST /publish`, key rotation on SIGHUP, and a flood of bad handshakes beside good clients.
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{connect, expect_close, next_data, raw_exchange, Client, Server};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::Message;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");
const SECRET: &[u8] = include_bytes!("fixtures/auth/hs.secret");
const RSA_PUB: &[u8] = include_bytes!("fixtures/auth/rsa.pub");

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

/// An HS256 token signed with the test secret.
fn token(claims: Value) -> String {
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET)).expect("sign")
}

/// A token for `sub` that may subscribe to `news` and `user.<sub>.*` and publish to `news`, valid for an hour.
fn good(sub: &str) -> String {
    token(json!({"sub": sub, "exp": now() + 3600, "subscribe": ["news", format!("user.{sub}.*")], "publish": ["news"]}))
}

/// A server with the HMAC secret configured (so `auth.mode` is `handshake` unless `extra` says otherwise).
fn server(extra: &[&str]) -> Server {
    let secret = fixture("hs.secret");
    let mut args = vec!["--workers", "2", "--auth-secret-file", secret.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// Sends a WebSocket upgrade for `path` with `headers` and returns (status, head, body) of the answer.
fn upgrade_raw(srv: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect(srv.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(req.as_bytes()).expect("write");
    let mut buf = support::read_head(&mut s);
    if !buf.starts_with(b"HTTP/1.1 101") {
        let _ = s.read_to_end(&mut buf);
    }
    support::parse_response(&buf)
}

/// A tungstenite client on `path` with extra request headers.
fn connect_with(srv: &Server, path: &str, headers: &[(&str, &str)]) -> Client {
    let mut req = srv.url(path).into_client_request().expect("request");
    for (k, v) in headers {
        let name: tungstenite::http::HeaderName = k.parse().expect("header name");
        req.headers_mut().insert(name, HeaderValue::from_str(v).expect("header value"));
    }
    let stream = TcpStream::connect(srv.addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let (ws, _) = tungstenite::client(req, stream).expect("handshake");
    ws
}

fn publish(srv: &Server, topic: &str, body: &str) -> u16 {
    let auth = "Bearer api-key-for-tests";
    srv.http(
        "POST",
        &format!("/publish/{topic}"),
        &[("Authorization", auth), ("Content-Type", "text/plain")],
        body.as_bytes(),
    )
    .0
}

/// The flags that configure the test API key (`tests/fixtures/auth/api.key`, "api-key-for-tests").
fn with_api_key() -> [String; 2] {
    ["--auth-api-key-file".to_string(), fixture("api.key")]
}

fn text(ws: &mut Client) -> String {
    match next_data(ws) {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

fn json_request(ws: &mut Client, req: Value) -> Value {
    ws.send(Message::text(req.to_string())).expect("send");
    serde_json::from_str(&text(ws)).expect("JSON reply")
}

#[test]
fn every_carrier_authenticates_a_subscriber_in_handshake_mode() {
    let api = with_api_key();
    let srv = server(&[&api[0], &api[1], "--auth-allowed-origins", "https://app.example"]);
    let t = good("alice");
    let bearer = format!("Bearer {t}");
    let cookie = format!("other=1; herald_token={t}");
    let proto = format!("bearer, {t}");
    let query = format!("/sub/news?token={t}");
    let mut clients = vec![
        connect_with(&srv, "/sub/news", &[("Authorization", &bearer)]),
        connect_with(&srv, "/sub/news", &[("X-Auth-Token", &t)]),
        connect_with(&srv, "/sub/news", &[("Cookie", &cookie), ("Origin", "https://app.example")]),
        connect_with(&srv, &query, &[]),
    ];
    // The subprotocol carrier is answered with `bearer` (tungstenite checks it is one it offered).
    let (status, head, _) = upgrade_raw(&srv, "/sub/news", &[("Sec-WebSocket-Protocol", &proto)]);
    assert_eq!(status, 101, "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-protocol: bearer"), "{head}");
    clients.push(connect_with(&srv, "/sub/news", &[("Sec-WebSocket-Protocol", &proto)]));
    assert_eq!(srv.wait_metric("herald_subscriptions", 5, Duration::from_secs(5)), 5);
    assert_eq!(publish(&srv, "news", "hello"), 200);
    for (i, ws) in clients.iter_mut().enumerate() {
        assert_eq!(text(ws), "hello", "client {i}");
    }
    assert_eq!(
        srv.wait_metric("herald_auth_checks_total{result=\"ok\"}", 6 + 1, Duration::from_secs(5)),
        6 + 1,
        "5 sockets + the 101 probe + POST"
    );
}

/// Asserts a 401 with an `invalid_token` challenge mentioning `why`.
fn assert_401(srv: &Server, path: &str, headers: &[(&str, &str)], why: &str) {
    let (status, head, body) = upgrade_raw(srv, path, headers);
    assert_eq!(status, 401, "{why}: {head}");
    let challenge = head.lines().find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:")).unwrap_or("");
    assert!(challenge.contains("Bearer realm=\"herald\""), "{why}: {head}");
    assert!(challenge.contains("error=\"invalid_token\""), "{why}: {head}");
    assert!(String::from_utf8_lossy(&body).contains(why), "{why}: body {:?}", String::from_utf8_lossy(&body));
}

#[test]
fn bad_tokens_are_refused_with_401_before_the_upgrade_and_keep_no_slot() {
    let srv = server(&["--auth-issuer", "https://auth.example", "--auth-audience", "herald", "--auth-leeway", "0s"]);
    let claims = |extra: Value| {
        let mut c =
            json!({"sub": "a", "exp": now() + 600, "iss": "https://auth.example", "aud": "herald", "subscribe": ["*"]});
        c.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        c
    };
    let ok = token(claims(json!({})));
    assert_eq!(upgrade_raw(&srv, "/sub/news", &[("X-Auth-Token", &ok)]).0, 101, "the baseline token is good");

    // Missing: a bare challenge (RFC 6750 3.1: no error code when no token was sent).
    let (status, head, _) = upgrade_raw(&srv, "/sub/news", &[]);
    assert_eq!(status, 401);
    assert!(head.lines().any(|l| l == "WWW-Authenticate: Bearer realm=\"herald\""), "{head}");

    let other_secret =
        encode(&Header::new(Algorithm::HS256), &claims(json!({})), &EncodingKey::from_secret(b"wrong")).expect("sign");
    assert_401(&srv, "/sub/news", &[("X-Auth-Token", &other_secret)], "bad signature");
    assert_401(&srv, "/sub/news", &[("X-Auth-Token", &token(claims(json!({"exp": now() - 5}))))], "token expired");
    assert_401(&srv, "/sub/news", &[("X-Auth-Token", &token(claims(json!({"nbf": now() + 600}))))], "not yet valid");
    assert_401(&srv, "/sub/news", &[("X-Auth-Token", &token(claims(json!({"iss": "https://evil"}))))], "wrong issuer");
    assert_401(&srv, "/sub/news", &[("X-Auth-Token", &token(claims(json!({"aud": "other"}))))], "wrong audience");
    let mut no_iss = claims(json!({}));
    no_iss.as_object_mut().expect("object").remove("iss");
    assert_401(&srv, "/sub/news", &[("X-Auth-Token", &token(no_iss))], "missing claim iss");

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    assert_401(&srv, "/sub/news", &[("X-Auth-Token", &none)], "algorithm not allowed");
    assert_401(&srv, "/sub/news", &[("X-Auth-Token", "not.a.jwt")], "malformed token");

    assert_eq!(srv.wait_metric("herald_handshakes_failed_total{status=\"401\"}", 9, Duration::from_secs(5)), 9);
    assert_eq!(srv.wait_metric("herald_auth_checks_total{result=\"unauthorized\"}", 9, Duration::from_secs(5)), 9);
    assert_eq!(srv.wait_metric("herald_websockets_open", 0, Duration::from_secs(5)), 0, "no slot kept");
}

/// RFC 7515 section 4.1.11: a token whose `crit` header names an extension herald does not understand is
/// invalid, however well signed; the upgrade is refused with 401 and the reason. Without `crit` the same token
/// is admitted.
#[test]
fn a_token_with_a_crit_header_naming_an_unknown_extension_gets_401() {
    let srv = server(&[]);
    let claims = json!({"sub": "a", "exp": now() + 600, "subscribe": ["*"]});
    for (crit, param, value) in [("exp", "exp", json!(now() + 600)), ("foo", "foo", json!("bar"))] {
        let mut header = Header::new(Algorithm::HS256);
        header.extras.insert("crit", json!([crit]));
        header.extras.insert(param, value);
        let critical = encode(&header, &claims, &EncodingKey::from_secret(SECRET)).expect("sign");
        let bearer = format!("Bearer {critical}");
        assert_401(&srv, "/sub/news", &[("Authorization", &bearer)], "unsupported critical header parameter");
    }
    assert_eq!(upgrade_raw(&srv, "/sub/news", &[("X-Auth-Token", &token(claims))]).0, 101, "no crit: admitted");
}

#[test]
fn an_hs256_token_signed_with_the_rsa_public_key_is_refused() {
    let pem = fixture("rsa.pub");
    let srv = Server::start(&["--auth-public-key-file", &pem, "--auth-public-key-algorithms", "RS256"]);
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "mallory", "exp": now() + 600, "subscribe": ["*"]}),
        &EncodingKey::from_secret(RSA_PUB),
    )
    .expect("sign");
    assert_401(&srv, "/sub/news", &[("Authorization", &format!("Bearer {forged}"))], "algorithm not allowed");
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("fixtures/auth/rsa.key")).expect("rsa key");
    let real =
        encode(&Header::new(Algorithm::RS256), &json!({"exp": now() + 600, "subscribe": ["*"]}), &rsa).expect("sign");
    assert_eq!(upgrade_raw(&srv, "/sub/news", &[("Authorization", &format!("Bearer {real}"))]).0, 101);
}

#[test]
fn a_valid_token_for_another_topic_or_origin_gets_403() {
    let srv = server(&["--auth-allowed-origins", "https://app.example"]);
    let t = good("bob");
    let (status, head, body) = upgrade_raw(&srv, "/sub/secret", &[("X-Auth-Token", &t)]);
    assert_eq!(status, 403, "{head}");
    assert!(head.contains("error=\"insufficient_scope\""), "{head}");
    assert_eq!(String::from_utf8_lossy(&body), "topic not allowed\n");
    assert_eq!(upgrade_raw(&srv, "/pub/user.bob.inbox", &[("X-Auth-Token", &t)]).0, 403, "subscribe != publish");
    assert_eq!(upgrade_raw(&srv, "/sub/user.bob.inbox", &[("X-Auth-Token", &t)]).0, 101, "wildcard match");
    let evil = [("X-Auth-Token", t.as_str()), ("Origin", "https://evil.example")];
    assert_eq!(upgrade_raw(&srv, "/sub/news", &evil).0, 403, "origin not in the list");
    let cookie = format!("herald_token={t}");
    assert_eq!(upgrade_raw(&srv, "/sub/news", &[("Cookie", &cookie)]).0, 403, "cookie without an Origin");
    assert_eq!(srv.wait_metric("herald_auth_checks_total{result=\"forbidden\"}", 2, Duration::from_secs(5)), 2);
    assert_eq!(srv.wait_metric("herald_auth_checks_total{result=\"bad_origin\"}", 2, Duration::from_secs(5)), 2);
}

#[test]
fn ws_requests_for_topics_the_token_does_not_allow_get_a_forbidden_reply_and_the_socket_stays() {
    let srv = server(&[]);
    let t = good("carol");
    let mut ws = connect_with(&srv, "/ws", &[("X-Auth-Token", &t)]);
    let r = json_request(&mut ws, json!({"type": "subscribe", "topic": "secret", "id": 1}));
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = json_request(&mut ws, json!({"type": "publish", "topic": "user.carol.x", "data": 1, "id": 2}));
    assert_eq!(r["code"], "forbidden", "may subscribe there, not publish: {r}");
    assert_eq!(
        json_request(&mut ws, json!({"type": "subscribe", "topic": "news", "id": 3})),
        json!({"type": "ack", "id": 3})
    );
    assert_eq!(
        json_request(&mut ws, json!({"type": "publish", "topic": "news", "data": "x", "id": 4})),
        json!({"type": "ack", "id": 4})
    );
    let delivery: Value = serde_json::from_str(&text(&mut ws)).expect("JSON");
    assert_eq!(delivery, json!({"type": "message", "topic": "news", "data": "x"}));
}

#[test]
fn post_publish_needs_the_api_key_or_a_token_that_may_publish() {
    let api = with_api_key();
    let srv = server(&[&api[0], &api[1]]);
    assert_eq!(publish(&srv, "anything", "x"), 200, "the API key may publish anywhere");
    let (status, head, _) = srv.http("POST", "/publish/news", &[], b"x");
    assert_eq!(status, 401, "{head}");
    let t = good("dave");
    let bearer = format!("Bearer {t}");
    assert_eq!(srv.http("POST", "/publish/news", &[("Authorization", &bearer)], b"x").0, 200);
    assert_eq!(srv.http("POST", "/publish/other", &[("Authorization", &bearer)], b"x").0, 403);
    assert_eq!(srv.http("POST", "/publish/news", &[("Authorization", "Bearer api-key-for-tests!")], b"x").0, 401);
}

#[test]
fn message_mode_waits_for_the_auth_message_and_acts_on_nothing_before_it() {
    let srv = server(&["--auth-mode", "message", "--auth-timeout", "700ms"]);
    // Timeout: nothing sent.
    let mut idle = connect(&srv.url("/sub/news"));
    let (code, reason) = expect_close(&mut idle);
    assert_eq!((u16::from(code), reason.as_str()), (4401, "auth timeout"));
    // Anything but an auth message first.
    let mut wrong = connect(&srv.url("/echo"));
    wrong.send(Message::text("hello")).expect("send");
    let (code, reason) = expect_close(&mut wrong);
    assert_eq!((u16::from(code), reason.as_str()), (4401, "auth message required first"));
    // A bad token.
    let mut bad = connect(&srv.url("/sub/news"));
    bad.send(Message::text(json!({"type": "auth", "token": "x.y.z"}).to_string())).expect("send");
    assert_eq!(u16::from(expect_close(&mut bad).0), 4401);
    // A topic the token does not allow.
    let mut forbidden = connect(&srv.url("/sub/secret"));
    forbidden.send(Message::text(json!({"type": "auth", "token": good("erin")}).to_string())).expect("send");
    assert_eq!(u16::from(expect_close(&mut forbidden).0), 4403);
    // A good one: subscribed only from then on.
    let mut sub = connect(&srv.url("/sub/news"));
    sub.send(Message::text(json!({"type": "auth", "token": good("erin")}).to_string())).expect("send");
    assert_eq!(srv.wait_metric("herald_subscriptions", 1, Duration::from_secs(5)), 1);
    let mut json = connect(&srv.url("/ws"));
    let r = json_request(&mut json, json!({"type": "auth", "token": good("erin"), "id": "a"}));
    assert_eq!(r, json!({"type": "ack", "id": "a"}));
    let mut publisher = connect(&srv.url("/pub/news"));
    publisher.send(Message::text(json!({"type": "auth", "token": good("erin")}).to_string())).expect("send");
    publisher.send(Message::text("first")).expect("send");
    assert_eq!(text(&mut sub), "first");
    assert_eq!(srv.wait_metric("herald_auth_closes_total{reason=\"timeout\"}", 1, Duration::from_secs(5)), 1);
}

#[test]
fn an_expiring_token_closes_with_4401_unless_refreshed_in_time() {
    let srv = server(&["--auth-leeway", "0s"]);
    let short = |sub: &str| token(json!({"sub": sub, "exp": now() + 2, "subscribe": ["news"]}));
    let mut lapsing = connect_with(&srv, "/sub/news", &[("X-Auth-Token", &short("frank"))]);
    let mut refreshed = connect_with(&srv, "/sub/news", &[("X-Auth-Token", &short("grace"))]);
    refreshed.send(Message::text(json!({"type": "auth", "token": good("grace")}).to_string())).expect("refresh");
    let mut other_subject = connect_with(&srv, "/sub/news", &[("X-Auth-Token", &short("heidi"))]);
    other_subject.send(Message::text(json!({"type": "auth", "token": good("mallory")}).to_string())).expect("send");
    let (code, reason) = expect_close(&mut other_subject);
    assert_eq!((u16::from(code), reason.as_str()), (4401, "a refresh must name the same subject"));

    let (code, reason) = expect_close(&mut lapsing);
    assert_eq!((u16::from(code), reason.as_str()), (4401, "token expired"));
    std::thread::sleep(Duration::from_millis(300));
    let mut ws = connect_with(&srv, "/pub/news", &[("X-Auth-Token", &good("grace"))]);
    ws.send(Message::text("still here")).expect("publish");
    assert_eq!(text(&mut refreshed), "still here", "the refreshed connection outlives its first token");
    assert_eq!(srv.wait_metric("herald_auth_closes_total{reason=\"expired\"}", 1, Duration::from_secs(5)), 1);
}

#[test]
fn per_message_mode_checks_each_request_and_caches_a_repeated_token() {
    let srv = server(&["--auth-mode", "per_message"]);
    let mut ws = connect(&srv.url("/ws"));
    let t = good("ivan");
    let r = json_request(&mut ws, json!({"type": "subscribe", "topic": "news", "id": 1}));
    assert_eq!((r["code"].as_str(), r["id"].as_i64()), (Some("unauthorized"), Some(1)), "{r}");
    let r = json_request(&mut ws, json!({"type": "subscribe", "topic": "news", "token": "bad.to.ken", "id": 2}));
    assert_eq!(r["code"], "unauthorized", "{r}");
    let r = json_request(&mut ws, json!({"type": "subscribe", "topic": "secret", "token": t, "id": 3}));
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = json_request(&mut ws, json!({"type": "subscribe", "topic": "news", "token": t, "id": 4}));
    assert_eq!(r, json!({"type": "ack", "id": 4}));
    for i in 0..5 {
        let r = json_request(&mut ws, json!({"type": "publish", "topic": "news", "data": i, "token": t, "id": 10 + i}));
        assert_eq!(r, json!({"type": "ack", "id": 10 + i}));
        let d: Value = serde_json::from_str(&text(&mut ws)).expect("JSON");
        assert_eq!(d["data"], i);
    }
    let r = json_request(&mut ws, json!({"type": "publish", "topic": "news", "data": 0, "id": 99}));
    assert_eq!(r["code"], "unauthorized", "a request without its token is refused even after good ones: {r}");
    // Verified once (the forbidden subscribe), then from the cache: the good subscribe and five publishes.
    assert_eq!(
        srv.metric("herald_auth_cache_hits_total{cache=\"per_message\"}"),
        6,
        "one verification, then the cache"
    );
    assert_eq!(
        srv.wait_metric("herald_auth_checks_total{result=\"ok\"}", 1, Duration::from_secs(5)),
        1,
        "the one signature check"
    );
    // Raw endpoints authenticate at the upgrade in this mode.
    assert_eq!(upgrade_raw(&srv, "/sub/news", &[]).0, 401);
    assert_eq!(upgrade_raw(&srv, "/sub/news", &[("X-Auth-Token", &t)]).0, 101);
}

#[test]
fn keys_rotate_on_sighup_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("herald-auth-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let jwks_path = dir.join("jwks.json");
    let all: Value = serde_json::from_slice(include_bytes!("fixtures/auth/jwks.json")).expect("jwks");
    let only = |kid: &str| {
        let keys: Vec<Value> =
            all["keys"].as_array().expect("keys").iter().filter(|k| k["kid"] == kid).cloned().collect();
        json!({"keys": keys}).to_string()
    };
    std::fs::write(&jwks_path, only("ec-1")).expect("write jwks");
    let path = jwks_path.to_string_lossy().to_string();
    let srv = Server::start(&["--workers", "2", "--auth-jwks-file", &path]);
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("ed-1".into());
    let ed = EncodingKey::from_ed_pem(include_bytes!("fixtures/auth/ed.key")).expect("ed key");
    let t = encode(&h, &json!({"exp": now() + 600}), &ed).expect("sign");
    let bearer = format!("Bearer {t}");
    assert_eq!(upgrade_raw(&srv, "/echo", &[("Authorization", &bearer)]).0, 401, "ed-1 is not configured yet");
    std::fs::write(&jwks_path, only("ed-1")).expect("rewrite jwks");
    srv.signal(libc::SIGHUP);
    assert_eq!(srv.wait_metric("herald_auth_key_reloads_total", 2, Duration::from_secs(5)), 2, "each worker");
    assert_eq!(upgrade_raw(&srv, "/echo", &[("Authorization", &bearer)]).0, 101, "ed-1 now verifies");
    // A broken file on the next SIGHUP keeps the keys in force.
    std::fs::write(&jwks_path, "{not json").expect("break jwks");
    srv.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upgrade_raw(&srv, "/echo", &[("Authorization", &bearer)]).0, 101, "old keys kept");
    // A key taken out is out at once, even for tokens the workers have verified (and cached) before.
    std::fs::write(&jwks_path, only("ec-1")).expect("rewrite jwks");
    srv.signal(libc::SIGHUP);
    assert_eq!(srv.wait_metric("herald_auth_key_reloads_total", 4, Duration::from_secs(5)), 4);
    for _ in 0..4 {
        assert_eq!(upgrade_raw(&srv, "/echo", &[("Authorization", &bearer)]).0, 401, "ed-1 is gone");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_flood_of_bad_handshakes_leaves_authenticated_clients_served() {
    let api = with_api_key();
    let srv = server(&[&api[0], &api[1]]);
    let mut sub = connect_with(&srv, "/sub/news", &[("X-Auth-Token", &good("judy"))]);
    assert_eq!(srv.wait_metric("herald_subscriptions", 1, Duration::from_secs(5)), 1);
    let addr = srv.addr;
    let flooders: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let bad = token(json!({"exp": 1, "subscribe": ["*"]}));
                let req = format!(
                    "GET /sub/news HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Auth-Token: {bad}\r\n\r\n"
                );
                (0..500).filter(|_| raw_exchange(addr, req.as_bytes()).0 == 401).count()
            })
        })
        .collect();
    for i in 0..50 {
        assert_eq!(publish(&srv, "news", &format!("m{i}")), 200);
        assert_eq!(text(&mut sub), format!("m{i}"), "the good subscriber is served during the flood");
    }
    let refused: usize = flooders.into_iter().map(|t| t.join().expect("flooder")).sum();
    assert_eq!(refused, 2000, "every bad handshake got its 401");
    assert_eq!(srv.wait_metric("herald_websockets_open", 1, Duration::from_secs(5)), 1);
}

#[test]
fn before_the_auth_message_a_client_may_not_send_more_than_a_token_s_worth() {
    let srv = server(&["--auth-mode", "message", "--auth-max-token-size", "4KiB"]);
    let mut big = connect(&srv.url("/echo"));
    big.send(Message::text("x".repeat(64 * 1024))).expect("send");
    assert_eq!(u16::from(expect_close(&mut big).0), 1009, "over auth.max_token_size + 1 KiB before auth");
    // After auth the configured max_message_size applies again.
    let mut ws = connect(&srv.url("/echo"));
    ws.send(Message::text(json!({"type": "auth", "token": good("kim")}).to_string())).expect("auth");
    let payload = "y".repeat(64 * 1024);
    ws.send(Message::text(payload.clone())).expect("send");
    assert_eq!(text(&mut ws), payload);
}

#[test]
fn a_per_message_ws_connection_that_never_brings_a_token_is_closed() {
    let srv = server(&["--auth-mode", "per_message", "--auth-timeout", "1s"]);
    let mut idle = connect(&srv.url("/ws"));
    let r = json_request(&mut idle, json!({"type": "subscribe", "topic": "news", "id": 1}));
    assert_eq!(r["code"], "unauthorized", "{r}");
    let (code, reason) = expect_close(&mut idle);
    assert_eq!((u16::from(code), reason.as_str()), (4401, "auth timeout"));
    let mut busy = connect(&srv.url("/ws"));
    let r =
        json_request(&mut busy, json!({"type": "publish", "topic": "news", "data": 1, "token": good("lee"), "id": 2}));
    assert_eq!(r, json!({"type": "ack", "id": 2}));
    std::thread::sleep(Duration::from_millis(2500));
    let r =
        json_request(&mut busy, json!({"type": "publish", "topic": "news", "data": 2, "token": good("lee"), "id": 3}));
    assert_eq!(r, json!({"type": "ack", "id": 3}), "a connection that brought a valid token stays");
}

#[test]
fn a_client_reconnecting_with_the_same_token_skips_the_signature_check() {
    let secret = fixture("hs.secret");
    let srv = Server::start(&["--workers", "1", "--auth-secret-file", &secret]);
    let t = good("mia");
    for _ in 0..5 {
        assert_eq!(upgrade_raw(&srv, "/sub/news", &[("X-Auth-Token", &t)]).0, 101);
    }
    assert_eq!(
        srv.wait_metric("herald_auth_cache_hits_total{cache=\"verified\"}", 4, Duration::from_secs(5)),
        4,
        "verified once, then remembered"
    );
    assert_eq!(srv.wait_metric("herald_auth_checks_total{result=\"ok\"}", 5, Duration::from_secs(5)), 5);
    let off = Server::start(&["--workers", "1", "--auth-secret-file", &secret, "--auth-token-cache", "0"]);
    for _ in 0..3 {
        assert_eq!(upgrade_raw(&off, "/sub/news", &[("X-Auth-Token", &t)]).0, 101);
    }
    assert_eq!(off.metric("herald_auth_cache_hits_total{cache=\"verified\"}"), 0, "auth.token_cache = 0");
}
