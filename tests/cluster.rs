//! Several herald nodes over a real `redis-server` (`[cluster]`): every publish path reaches every subscriber
//! on every node exactly once and in order; topics shard over several instances; loss while Redis is down is
//! made visible (gap notices, 4410) and never duplicates; local delivery never stops; a stalled Redis is
//! noticed and the queue to it stays bounded, with the overflow policy applied and counted.
#[path = "support/redis.rs"]
mod redis;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use redis::Redis;
use serde_json::{json, Value};
use support::{connect, expect_close, next_data, wait_until, Client, HttpConn, Server};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::Message;

const TEXT: &[(&str, &str)] = &[("Content-Type", "text/plain")];

/// Starts a node on `urls` with two workers, and waits until its links to every instance are up.
fn node(urls: &[String], extra: &[&str]) -> Server {
    let joined = urls.join(",");
    let mut args = vec!["--workers", "2", "--cluster-redis-urls", joined.as_str()];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    assert!(wait_until(Duration::from_secs(10), || cluster_state(&server) == "ok"), "links never came up");
    server
}

/// The `cluster.state` member of `/healthz`.
fn cluster_state(server: &Server) -> String {
    let (_, _, body) = server.http("GET", "/healthz", &[], b"");
    let v: Value = serde_json::from_slice(&body).expect("healthz is JSON");
    v["cluster"]["state"].as_str().unwrap_or("none").to_string()
}

/// A `/ws` client subscribed to `topics`.
fn ws_subscriber(server: &Server, topics: &[&str]) -> Client {
    let mut ws = connect(&server.url("/ws"));
    for t in topics {
        ws.send(Message::text(json!({"type":"subscribe","topic":t,"id":t}).to_string())).expect("send");
        let ack: Value = serde_json::from_str(next_data(&mut ws).to_text().expect("text")).expect("JSON");
        assert_eq!(ack, json!({"type":"ack","id":t}));
    }
    ws
}

/// Waits until `redis` counts `n` subscribers (nodes) of topic `t`'s channel.
fn wait_numsub(redis: &Redis, t: &str, n: u64) {
    let channel = format!("herald:{t}");
    assert!(
        wait_until(Duration::from_secs(10), || redis.numsub(&channel) == n),
        "{channel} has {} subscribers, expected {n}",
        redis.numsub(&channel)
    );
}

/// The message key carried by a delivery (the publishers put one in every payload, in every form).
fn key_of_raw(m: &Message) -> String {
    match m {
        Message::Text(t) => {
            let t = t.as_str();
            match serde_json::from_str::<Value>(t) {
                Ok(Value::String(s)) => s,
                Ok(v) if v.get("k").is_some() => v["k"].as_str().expect("k").to_string(),
                _ => t.to_string(),
            }
        }
        Message::Binary(b) => String::from_utf8(b.to_vec()).expect("utf-8 key"),
        other => panic!("unexpected {other:?}"),
    }
}

fn key_of_envelope(v: &Value) -> String {
    if let Some(b) = v.get("data_b64") {
        return String::from_utf8(STANDARD.decode(b.as_str().expect("b64")).expect("base64")).expect("utf-8");
    }
    match &v["data"] {
        Value::String(s) => s.clone(),
        d => d["k"].as_str().expect("k").to_string(),
    }
}

/// Checks that `keys` (`source.index`) hold each of `sources` x `0..n` exactly once, each source in order.
fn assert_exact_in_order(keys: &[String], sources: &[String], n: usize, who: &str) {
    let mut next: HashMap<&str, usize> = sources.iter().map(|s| (s.as_str(), 0)).collect();
    for k in keys {
        let (src, i) = k.rsplit_once('.').expect("source.index");
        let i: usize = i.parse().expect("index");
        let expected = next.get_mut(src).unwrap_or_else(|| panic!("{who}: unknown source {src}"));
        assert_eq!(i, *expected, "{who}: {src} out of order or repeated");
        *expected += 1;
    }
    for (src, got) in next {
        assert_eq!(got, n, "{who}: {src} delivered {got} of {n}");
    }
}

#[test]
fn every_publish_path_on_every_node_reaches_every_subscriber_on_every_node_once_in_order() {
    let redis = Redis::start();
    let urls = [redis.url()];
    let nodes: Vec<Server> = (0..3).map(|_| node(&urls, &[])).collect();
    let mut raw_subs: Vec<Client> = nodes.iter().map(|n| connect(&n.url("/sub/t"))).collect();
    let mut ws_subs: Vec<Client> = nodes.iter().map(|n| ws_subscriber(n, &["t"])).collect();
    wait_numsub(&redis, "t", 3);

    const N: usize = 20;
    let paths = ["pt", "pb", "ws", "tx", "js", "bn"];
    let mut pubs: Vec<Client> = nodes.iter().map(|n| connect(&n.url("/pub/t"))).collect();
    let mut ws_pubs: Vec<Client> = nodes.iter().map(|n| connect(&n.url("/ws"))).collect();
    let mut posts: Vec<HttpConn> = nodes.iter().map(|n| HttpConn::open(n.addr)).collect();
    for i in 0..N {
        for n in 0..nodes.len() {
            let k = |p: &str| format!("n{n}-{p}.{i}");
            pubs[n].send(Message::text(k("pt"))).expect("pub text");
            pubs[n].send(Message::binary(k("pb").into_bytes())).expect("pub binary");
            let req = json!({"type":"publish","topic":"t","data":k("ws"),"id":i});
            ws_pubs[n].send(Message::text(req.to_string())).expect("ws publish");
            let ack: Value = serde_json::from_str(next_data(&mut ws_pubs[n]).to_text().expect("text")).expect("JSON");
            assert_eq!(ack, json!({"type":"ack","id":i}));
            for (ct, body) in [
                ("text/plain", k("tx")),
                ("application/json", json!({"k": k("js")}).to_string()),
                ("application/octet-stream", k("bn")),
            ] {
                let (status, _, _) = posts[n].request("POST", "/publish/t", &[("Content-Type", ct)], body.as_bytes());
                assert_eq!(status, 200);
            }
        }
    }
    let sources: Vec<String> = (0..nodes.len()).flat_map(|n| paths.iter().map(move |p| format!("n{n}-{p}"))).collect();
    let total = N * sources.len();

    let mut raw_forms: Vec<BTreeMap<String, Message>> = Vec::new();
    for (n, sub) in raw_subs.iter_mut().enumerate() {
        let msgs: Vec<Message> = (0..total).map(|_| next_data(sub)).collect();
        let keys: Vec<String> = msgs.iter().map(key_of_raw).collect();
        assert_exact_in_order(&keys, &sources, N, &format!("raw subscriber on node {n}"));
        raw_forms.push(keys.into_iter().zip(msgs).collect());
    }
    let mut ws_forms: Vec<BTreeMap<String, String>> = Vec::new();
    for (n, sub) in ws_subs.iter_mut().enumerate() {
        let texts: Vec<String> =
            (0..total).map(|_| next_data(sub).into_text().expect("text envelope").to_string()).collect();
        let keys: Vec<String> =
            texts.iter().map(|t| key_of_envelope(&serde_json::from_str(t).expect("JSON envelope"))).collect();
        assert_exact_in_order(&keys, &sources, N, &format!("/ws subscriber on node {n}"));
        ws_forms.push(keys.into_iter().zip(texts).collect());
    }
    for n in 1..nodes.len() {
        assert_eq!(raw_forms[n], raw_forms[0], "raw frames (opcode and bytes) are the same on every node");
        assert_eq!(ws_forms[n], ws_forms[0], "/ws envelopes of foreign messages are the same as local ones");
    }
    let sample = &raw_forms[0];
    assert_eq!(sample["n1-pt.0"], Message::text("n1-pt.0"));
    assert_eq!(sample["n1-pb.0"], Message::binary(b"n1-pb.0".to_vec()));
    assert_eq!(sample["n1-ws.0"], Message::text("\"n1-ws.0\""), "a /ws publish reaches raw subscribers as JSON");
    assert_eq!(sample["n1-bn.0"], Message::binary(b"n1-bn.0".to_vec()));
    let envelope: Value = serde_json::from_str(&ws_forms[2]["n0-js.3"]).expect("JSON");
    assert_eq!(envelope, json!({"type":"message","topic":"t","data":{"k":"n0-js.3"}}));

    // Exactly once: nothing more arrives.
    for sub in raw_subs.iter_mut().chain(ws_subs.iter_mut()) {
        sub.get_ref().set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        assert!(sub.read().is_err(), "a message was delivered twice");
    }
    for n in &nodes {
        let own = n.metric("herald_cluster_publishes_total{result=\"sent\"}");
        assert_eq!(own, (N * paths.len()) as u64, "every publish crossed Redis once");
        assert_eq!(n.metric("herald_cluster_foreign_messages_total"), (2 * N * paths.len()) as u64);
        assert_eq!(n.metric("herald_cluster_gaps_total"), 0);
        assert_eq!(n.metric(&format!("herald_cluster_link_up{{redis=\"127.0.0.1:{}\"}}", redis.port)), 1);
    }
}

#[test]
fn topics_are_sharded_over_two_instances_and_delivery_stays_exact() {
    let (r1, r2) = (Redis::start(), Redis::start());
    let urls = [r1.url(), r2.url()];
    let (a, b) = (node(&urls, &[]), node(&urls, &[]));
    let topics: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut sub = ws_subscriber(&b, &names);
    assert!(
        wait_until(Duration::from_secs(10), || r1.channels("herald:s*") + r2.channels("herald:s*") == 16),
        "every topic subscribed on exactly one instance"
    );
    let (on1, on2) = (r1.channels("herald:s*"), r2.channels("herald:s*"));
    assert!(on1 > 0 && on2 > 0, "topics land on both instances: {on1} and {on2}");

    let mut post = HttpConn::open(a.addr);
    for i in 0..5 {
        for t in &topics {
            let (status, _, _) = post.request("POST", &format!("/publish/{t}"), &[], format!("{t}.{i}").as_bytes());
            assert_eq!(status, 200);
        }
    }
    let keys: Vec<String> = (0..80)
        .map(|_| key_of_envelope(&serde_json::from_str(next_data(&mut sub).to_text().expect("text")).expect("JSON")))
        .collect();
    assert_exact_in_order(&keys, &topics, 5, "subscriber of 16 topics");
    sub.get_ref().set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    assert!(sub.read().is_err(), "nothing twice");
}

/// Reads `/ws` deliveries until message `last` arrives: (the message numbers in order, position of the
/// first gap notice).
fn read_until(ws: &mut Client, last: u64) -> (Vec<u64>, Option<usize>) {
    let mut seen = Vec::new();
    let mut gap = None;
    loop {
        let v: Value = serde_json::from_str(next_data(ws).to_text().expect("text")).expect("JSON");
        if v["type"] == "gap" {
            assert_eq!(v, json!({"type":"gap","topic":"k"}));
            gap.get_or_insert(seen.len());
            continue;
        }
        let n: u64 = v["data"].as_str().expect("data").parse().expect("number");
        seen.push(n);
        if n == last {
            return (seen, gap);
        }
    }
}

#[test]
fn redis_killed_mid_stream_loses_nothing_locally_reports_the_gap_and_resumes_without_duplicates() {
    let mut redis = Redis::start();
    let urls = [redis.url()];
    let fast =
        ["--cluster-probe-interval", "200ms", "--cluster-probe-timeout", "1s", "--cluster-reconnect-max", "300ms"];
    let a = node(&urls, &fast);
    let mut b_args = fast.to_vec();
    b_args.extend_from_slice(&["--cluster-on-gap", "close"]);
    let b = node(&urls, &b_args);
    let mut local = connect(&a.url("/sub/k"));
    let mut remote = ws_subscriber(&b, &["k"]);
    let mut remote_raw = connect(&b.url("/sub/k"));
    wait_numsub(&redis, "k", 2);

    let mut publisher = connect(&a.url("/pub/k"));
    let mut send = |range: std::ops::Range<u64>| {
        for i in range {
            publisher.send(Message::text(i.to_string())).expect("publish");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    send(0..200);
    redis.kill();
    send(200..400);
    let port = redis.port;
    drop(redis);
    let redis = Redis::start_with(port, None);
    let restarted = Instant::now();
    assert!(wait_until(Duration::from_secs(15), || cluster_state(&a) == "ok" && cluster_state(&b) == "ok"));
    wait_numsub(&redis, "k", 2);
    let resubscribed = restarted.elapsed();
    send(400..600);

    for i in 0..600u64 {
        assert_eq!(next_data(&mut local), Message::text(i.to_string()), "local delivery lost nothing");
    }
    let (seen, gap) = read_until(&mut remote, 599);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, nothing twice: {seen:?}");
    assert!(seen.starts_with(&(0..200).collect::<Vec<_>>()), "everything before the kill arrived");
    assert!(seen.ends_with(&(400..600).collect::<Vec<_>>()), "delivery resumed after the restart");
    let gap = gap.expect("a gap notice");
    let first_after = seen.iter().position(|&n| n >= 400).expect("resumed");
    assert!(gap <= first_after, "the gap notice comes before the messages published after the restart");
    assert_eq!(expect_close(&mut remote_raw).0, CloseCode::Library(4410));
    assert!(b.metric("herald_cluster_gaps_total") >= 1);
    assert!(b.metric("herald_cluster_reconnects_total") >= 1);
    eprintln!("resubscribed {resubscribed:?} after the restart");
    remote.get_ref().set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    assert!(remote.read().is_err(), "nothing after the last message: no duplicate");
}

#[test]
fn a_killed_node_leaves_the_others_unaffected() {
    let redis = Redis::start();
    let urls = [redis.url()];
    let (a, b, c) = (node(&urls, &[]), node(&urls, &[]), node(&urls, &[]));
    let mut sub_b = connect(&b.url("/sub/k"));
    let _sub_c = connect(&c.url("/sub/k"));
    wait_numsub(&redis, "k", 2);
    c.signal(libc::SIGKILL);
    wait_numsub(&redis, "k", 1);
    let mut publisher = connect(&a.url("/pub/k"));
    for i in 0..100 {
        publisher.send(Message::text(format!("{i}"))).expect("publish");
    }
    for i in 0..100 {
        assert_eq!(next_data(&mut sub_b), Message::text(format!("{i}")));
    }
    assert_eq!((cluster_state(&a), cluster_state(&b)), ("ok".to_string(), "ok".to_string()));
}

#[test]
fn a_stalled_redis_is_noticed_and_the_queue_stays_bounded_under_either_overflow_policy() {
    let redis = Redis::start();
    let urls = [redis.url()];
    let common = [
        "--cluster-probe-interval",
        "100ms",
        "--cluster-probe-timeout",
        "500ms",
        "--cluster-connect-timeout",
        "300ms",
        "--cluster-max-pending",
        "50",
        "--cluster-health-503-when-degraded",
        "true",
    ];
    let mut reject_args = common.to_vec();
    reject_args.extend_from_slice(&["--cluster-on-overflow", "reject"]);
    let rejecting = node(&urls, &reject_args);
    let dropping = node(&urls, &common);
    let mut local_r = connect(&rejecting.url("/sub/p"));
    let mut local_d = connect(&dropping.url("/sub/p"));
    wait_numsub(&redis, "p", 2);

    redis.pause();
    for n in [&rejecting, &dropping] {
        assert!(
            wait_until(Duration::from_secs(10), || n.http("GET", "/healthz", &[], b"").0 == 503),
            "the probe notices the stall and /healthz says so"
        );
        assert!(n.metric("herald_cluster_reconnects_total") >= 1);
        let link = format!("herald_cluster_link_up{{redis=\"127.0.0.1:{}\"}}", redis.port);
        assert_eq!(n.metric(&link), 0, "the link state per instance says so too");
    }
    let (mut accepted, mut refused) = (Vec::new(), 0u64);
    let mut post = HttpConn::open(rejecting.addr);
    for i in 0..200 {
        match post.request("POST", "/publish/p", TEXT, format!("{i}").as_bytes()).0 {
            200 => accepted.push(i),
            503 => {
                refused += 1;
                post = HttpConn::open(rejecting.addr);
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(refused > 0, "past max_pending, publishes are refused");
    assert!(accepted.len() <= 50 + 2, "at most max_pending queued (plus one per worker racing): {}", accepted.len());
    assert_eq!(rejecting.metric("herald_cluster_publishes_total{result=\"rejected\"}"), refused);
    assert!(rejecting.metric("herald_cluster_queue_depth") <= 52);
    for i in &accepted {
        assert_eq!(next_data(&mut local_r), Message::text(format!("{i}")), "accepted ones are delivered locally");
    }
    let mut ws = connect(&rejecting.url("/ws"));
    ws.send(Message::text(r#"{"type":"publish","topic":"p","data":1,"id":"x"}"#)).expect("send");
    let reply: Value = serde_json::from_str(next_data(&mut ws).to_text().expect("text")).expect("JSON");
    assert_eq!((&reply["type"], &reply["code"], &reply["id"]), (&json!("error"), &json!("overloaded"), &json!("x")));
    let mut raw_pub = connect(&rejecting.url("/pub/p"));
    raw_pub.send(Message::text("refused")).expect("send");
    assert_eq!(expect_close(&mut raw_pub).0, CloseCode::Again, "/pub publisher closed with 1013");

    let mut post = HttpConn::open(dropping.addr);
    for i in 0..200 {
        assert_eq!(post.request("POST", "/publish/p", TEXT, format!("{i}").as_bytes()).0, 200);
    }
    for i in 0..200 {
        assert_eq!(next_data(&mut local_d), Message::text(format!("{i}")), "local delivery never stops");
    }
    let dropped = dropping.metric("herald_cluster_publishes_total{result=\"dropped\"}");
    assert!(dropped >= 200 - 52, "past max_pending, publishes are dropped for Redis and counted: {dropped}");
    assert!(dropping.metric("herald_cluster_queue_depth") <= 52);

    redis.resume();
    for n in [&rejecting, &dropping] {
        assert!(wait_until(Duration::from_secs(15), || cluster_state(n) == "ok"), "back after SIGCONT");
    }
}

#[test]
fn a_redis_password_is_read_from_a_file_and_a_wrong_one_leaves_the_node_degraded() {
    let redis = Redis::start_with_password("s3cret");
    let dir = std::env::temp_dir().join(format!("herald-cluster-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let good = dir.join("good");
    let bad = dir.join("bad");
    std::fs::write(&good, "s3cret\n").expect("write");
    std::fs::write(&bad, "nope\n").expect("write");
    let urls = [redis.url()];
    let a = node(&urls, &["--cluster-password-file", good.to_str().expect("utf-8")]);
    let b = node(&urls, &["--cluster-password-file", good.to_str().expect("utf-8")]);
    let mut sub = connect(&b.url("/sub/k"));
    wait_numsub(&redis, "k", 1);
    let (status, _, _) = a.http("POST", "/publish/k", &[], b"hello");
    assert_eq!(status, 200);
    assert_eq!(next_data(&mut sub), Message::binary(b"hello".to_vec()), "no Content-Type: binary");

    let args =
        ["--workers", "1", "--cluster-redis-urls", &urls[0], "--cluster-password-file", bad.to_str().expect("x")];
    let wrong = Server::start(&args);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(cluster_state(&wrong), "degraded", "a refused AUTH keeps the link down");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn auth_is_enforced_on_every_node_as_on_a_single_one() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use tungstenite::client::IntoClientRequest;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth");
    let secret = format!("{fixtures}/hs.secret");
    let api = format!("{fixtures}/api.key");
    let redis = Redis::start();
    let urls = [redis.url()];
    let auth = ["--auth-secret-file", secret.as_str(), "--auth-api-key-file", api.as_str()];
    let nodes: Vec<Server> = (0..3).map(|_| node(&urls, &auth)).collect();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 600;
    let claims = json!({"sub":"u","exp":exp,"subscribe":["news"]});
    let key = EncodingKey::from_secret(include_bytes!("fixtures/auth/hs.secret"));
    let token = encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign");
    let open = |n: &Server, path: &str, token: Option<&str>| {
        let mut req = n.url(path).into_client_request().expect("request");
        if let Some(t) = token {
            req.headers_mut().insert("Authorization", format!("Bearer {t}").parse().expect("header"));
        }
        let stream = std::net::TcpStream::connect(n.addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        tungstenite::client(req, stream).ok().map(|(ws, _)| ws)
    };
    let mut subs = Vec::new();
    for n in &nodes {
        assert!(open(n, "/sub/news", None).is_none(), "no token, no subscription");
        assert!(open(n, "/sub/secret", Some(&token)).is_none(), "a topic the token does not grant");
        subs.push(open(n, "/sub/news", Some(&token)).expect("granted"));
        assert_eq!(n.http("POST", "/publish/news", TEXT, b"x").0, 401, "POST without the API key");
    }
    wait_numsub(&redis, "news", 3);
    let with_key = [("Content-Type", "text/plain"), ("Authorization", "Bearer api-key-for-tests")];
    assert_eq!(nodes[0].http("POST", "/publish/news", &with_key, b"hello").0, 200);
    for s in &mut subs {
        assert_eq!(next_data(s), Message::text("hello"), "delivered on every node, once");
    }
}

#[test]
fn sharded_mode_on_a_redis_cluster_spreads_channels_over_the_masters_and_delivers_exactly() {
    let masters = Redis::cluster(3);
    let seed = [masters[0].url()];
    let sharded = ["--cluster-mode", "sharded"];
    let (a, b) = (node(&seed, &sharded), node(&seed, &sharded));
    let (_, _, body) = a.http("GET", "/healthz", &[], b"");
    let health: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(health["cluster"]["shards"].as_array().map(Vec::len), Some(3), "every master found from one seed");
    let topics: Vec<String> = (0..30).map(|i| format!("z{i}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut sub = ws_subscriber(&b, &names);
    let on = |m: &Redis| m.shard_channels("herald:z*");
    assert!(
        wait_until(Duration::from_secs(10), || masters.iter().map(on).sum::<usize>() == 30),
        "every topic SSUBSCRIBEd on its slot's master"
    );
    assert!(masters.iter().all(|m| on(m) > 0), "channels on every master");
    let mut post = HttpConn::open(a.addr);
    for i in 0..5 {
        for t in &topics {
            let (status, _, _) = post.request("POST", &format!("/publish/{t}"), TEXT, format!("{t}.{i}").as_bytes());
            assert_eq!(status, 200);
        }
    }
    let keys: Vec<String> = (0..150)
        .map(|_| key_of_envelope(&serde_json::from_str(next_data(&mut sub).to_text().expect("text")).expect("JSON")))
        .collect();
    assert_exact_in_order(&keys, &topics, 5, "subscriber of 30 topics");
    sub.get_ref().set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    assert!(sub.read().is_err(), "nothing twice");
    assert_eq!(a.metric("herald_cluster_publishes_total{result=\"sent\"}"), 150, "SPUBLISH, none refused");
}

#[test]
fn sharded_mode_follows_slots_that_move_to_another_master() {
    let masters = Redis::cluster(3);
    let seed = [masters[0].url()];
    let sharded = ["--cluster-mode", "sharded"];
    let (a, b) = (node(&seed, &sharded), node(&seed, &sharded));
    let topics: Vec<String> = (0..30).map(|i| format!("y{i}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut sub = ws_subscriber(&b, &names);
    let on = |m: &Redis| m.shard_channels("herald:y*");
    assert!(wait_until(Duration::from_secs(10), || masters.iter().map(on).sum::<usize>() == 30));
    let moved = on(&masters[0]);
    assert!(moved > 0, "some channels start on the first master");

    // Every slot of the first master moves to the second: Redis unsubscribes those channels there.
    let id = |m: &Redis| {
        String::from_utf8_lossy(&m.try_command(&["CLUSTER", "MYID"]).expect("MYID"))
            .lines()
            .nth(1)
            .expect("id")
            .to_string()
    };
    let status = std::process::Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", masters[0].port)])
        .args(["--cluster-from", &id(&masters[0]), "--cluster-to", &id(&masters[1]), "--cluster-slots", "16384"])
        .arg("--cluster-yes")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli");
    assert!(status.success(), "reshard");
    assert!(
        wait_until(Duration::from_secs(15), || on(&masters[0]) == 0 && masters.iter().map(on).sum::<usize>() == 30),
        "the moved channels are subscribed on their new master"
    );
    let shards = |n: &Server| {
        let (_, _, body) = n.http("GET", "/healthz", &[], b"");
        serde_json::from_slice::<Value>(&body).expect("JSON")["cluster"]["shards"].as_array().map_or(0, Vec::len)
    };
    // (The subscribing node re-read the slots when Redis unsubscribed its channels; it may have done so
    // before the last empty slots moved, so it can still list the first master, harmlessly.)

    // The publishing node learns it from MOVED replies: round 0 may be partly lost (and reported as gaps).
    let mut post = HttpConn::open(a.addr);
    let mut publish_round = |i: usize| {
        for t in &topics {
            let (status, _, _) = post.request("POST", &format!("/publish/{t}"), TEXT, format!("{t}.{i}").as_bytes());
            assert_eq!(status, 200);
        }
    };
    publish_round(0);
    assert!(wait_until(Duration::from_secs(10), || shards(&a) == 2), "MOVED makes the publisher re-read the slots");
    for i in 1..6 {
        publish_round(i);
    }
    let mut keys = Vec::new();
    while keys.len() < 150 {
        let v: Value = serde_json::from_str(next_data(&mut sub).to_text().expect("text")).expect("JSON");
        if v["type"] == "gap" {
            continue;
        }
        let k = key_of_envelope(&v);
        if !k.ends_with(".0") {
            keys.push(k);
        }
    }
    let shifted: Vec<String> = keys
        .iter()
        .map(|k| {
            let (t, i) = k.rsplit_once('.').expect("key");
            format!("{t}.{}", i.parse::<usize>().expect("n") - 1)
        })
        .collect();
    assert_exact_in_order(&shifted, &topics, 5, "after the move");
}

/// A CA, a Redis with a TLS port serving a certificate for `localhost` only (client certificates required, as
/// is Redis's default), and herald's client certificate: the files in `dir`.
struct TlsRedis {
    redis: Redis,
    ca: String,
    client_cert: String,
    client_key: String,
    _dir: support::tls::Dir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let pki = redis::Pki::new();
        let dir = support::tls::Dir::new("cluster-tls");
        let (cert, key) = pki.issue(&["localhost"]);
        let (client_cert, client_key) = pki.issue(&["herald-node"]);
        let ca = dir.write("ca.pem", &pki.ca_pem);
        let redis = Redis::start_tls(&dir.write("redis.pem", cert), &dir.write("redis.key", key), &ca, true);
        let s = |p: std::path::PathBuf| p.to_str().expect("utf-8").to_string();
        TlsRedis {
            redis,
            ca: s(ca),
            client_cert: s(dir.write("client.pem", client_cert)),
            client_key: s(dir.write("client.key", client_key)),
            _dir: dir,
        }
    }

    /// herald's TLS flags: trust `ca`, present the client certificate.
    fn args<'a>(&'a self, ca: &'a str) -> Vec<&'a str> {
        vec![
            "--cluster-tls-ca-file",
            ca,
            "--cluster-tls-cert-file",
            &self.client_cert,
            "--cluster-tls-key-file",
            &self.client_key,
        ]
    }
}

#[test]
fn rediss_links_verify_redis_against_the_configured_ca_and_carry_every_message_in_order() {
    let tls = TlsRedis::start();
    // Only the TLS port is given to herald; the plain one is the test's view of Redis.
    let urls = [tls.redis.tls_url("localhost")];
    let (a, b) = (node(&urls, &tls.args(&tls.ca)), node(&urls, &tls.args(&tls.ca)));
    let mut raw = connect(&b.url("/sub/t"));
    let mut ws = ws_subscriber(&b, &["t"]);
    wait_numsub(&tls.redis, "t", 1);
    let mut publisher = connect(&a.url("/pub/t"));
    for i in 0..200 {
        publisher.send(Message::text(format!("m.{i}"))).expect("publish");
    }
    let raw_keys: Vec<String> = (0..200).map(|_| key_of_raw(&next_data(&mut raw))).collect();
    assert_exact_in_order(&raw_keys, &["m".to_string()], 200, "raw subscriber over rediss");
    let ws_keys: Vec<String> = (0..200)
        .map(|_| key_of_envelope(&serde_json::from_str(next_data(&mut ws).to_text().expect("text")).expect("JSON")))
        .collect();
    assert_exact_in_order(&ws_keys, &["m".to_string()], 200, "/ws subscriber over rediss");
    assert!(
        wait_until(Duration::from_secs(5), || a.metric("herald_cluster_publishes_total{result=\"sent\"}") == 200),
        "every PUBLISH acknowledged by Redis over TLS"
    );
    assert!(a.metric("herald_cluster_probe_rtt_microseconds") > 0, "the probe goes round over TLS too");
}

#[test]
fn a_rediss_link_to_an_untrusted_or_misnamed_redis_or_without_its_client_certificate_stays_down_with_backoff() {
    let tls = TlsRedis::start();
    let other_ca = redis::Pki::new();
    let dir = support::tls::Dir::new("cluster-tls-other");
    let other_ca_file = dir.write("other-ca.pem", &other_ca.ca_pem);
    let other_ca_file = other_ca_file.to_str().expect("utf-8");
    let good_url = tls.redis.tls_url("localhost");
    // The certificate names localhost, not 127.0.0.1.
    let misnamed_url = tls.redis.tls_url("127.0.0.1");
    let start = |url: &str, args: &[&str]| {
        let mut all = vec!["--workers", "1", "--cluster-redis-urls", url, "--cluster-reconnect-max", "400ms"];
        all.extend_from_slice(args);
        Server::start(&all)
    };
    let untrusted = start(&good_url, &tls.args(other_ca_file));
    let misnamed = start(&misnamed_url, &tls.args(&tls.ca));
    let anonymous = start(&good_url, &["--cluster-tls-ca-file", &tls.ca]);
    let began = Instant::now();
    for (n, why) in [(&untrusted, "untrusted CA"), (&misnamed, "wrong name"), (&anonymous, "no client certificate")] {
        assert!(
            wait_until(Duration::from_secs(10), || n.metric("herald_cluster_reconnects_total") >= 3),
            "{why}: the handshake fails, and is retried"
        );
        assert_eq!(cluster_state(n), "degraded", "{why}: the link is counted as down");
        assert_eq!(n.metric("herald_cluster_redis_instances_up"), 0, "{why}");
    }
    // Backoff from 100ms doubling up to 400ms: a handful of attempts per second, not a busy loop.
    let secs = began.elapsed().as_secs_f64() + 0.5;
    for n in [&untrusted, &misnamed, &anonymous] {
        let attempts = n.metric("herald_cluster_reconnects_total") as f64;
        assert!(attempts <= 10.0 * secs, "{attempts} attempts in {secs:.1}s");
    }
    assert_eq!(tls.redis.numsub("herald:t"), 0);
    // The node itself works on: local delivery is unaffected.
    let mut sub = connect(&untrusted.url("/sub/t"));
    assert_eq!(untrusted.http("POST", "/publish/t", TEXT, b"still here").0, 200);
    assert_eq!(next_data(&mut sub), Message::text("still here"));
}

/// The `(host:port, state)` of each Redis instance in `/healthz`.
fn healthz_shards(n: &Server) -> Vec<(String, String)> {
    let (_, _, body) = n.http("GET", "/healthz", &[], b"");
    let v: Value = serde_json::from_slice(&body).expect("JSON");
    v["cluster"]["shards"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| (s["redis"].as_str().unwrap_or("").to_string(), s["state"].as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sharded_mode_follows_a_failover_to_a_replica_when_a_master_is_killed() {
    let mut instances = Redis::cluster_with_replicas(3, 1);
    let masters: Vec<usize> = (0..instances.len()).filter(|&i| instances[i].is_master()).collect();
    assert_eq!(masters.len(), 3);
    let seeds: Vec<String> = masters.iter().map(|&i| instances[i].url()).collect();
    let args = [
        "--cluster-mode",
        "sharded",
        "--cluster-probe-interval",
        "200ms",
        "--cluster-probe-timeout",
        "1s",
        "--cluster-reconnect-max",
        "300ms",
        "--cluster-connect-timeout",
        "500ms",
    ];
    let (a, b) = (node(&seeds, &args), node(&seeds, &args));
    let topics: Vec<String> = (0..30).map(|i| format!("f{i}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut sub = ws_subscriber(&b, &names);
    let on = |r: &Redis| if r.is_master() { r.shard_channels("herald:f*") } else { 0 };
    assert!(wait_until(Duration::from_secs(10), || instances.iter().map(on).sum::<usize>() == 30));
    // The victim: a master holding some of the channels.
    let victim = *masters.iter().find(|&&i| on(&instances[i]) > 0).expect("a master with channels");
    let lost = on(&instances[victim]);

    let mut post = HttpConn::open(a.addr);
    let mut publish_round = |i: usize| {
        for t in &topics {
            let (status, _, _) = post.request("POST", &format!("/publish/{t}"), TEXT, format!("{t}.{i}").as_bytes());
            assert_eq!(status, 200, "publishing never fails on the node: local delivery goes on");
        }
    };
    publish_round(0);
    let before: Vec<String> = (0..topics.len())
        .map(|_| key_of_envelope(&serde_json::from_str(next_data(&mut sub).to_text().expect("text")).expect("JSON")))
        .collect();
    assert_exact_in_order(&before, &topics, 1, "before the kill");
    let victim_port = instances[victim].port;
    instances[victim].kill();
    publish_round(1); // while the master is down: may be lost (then reported), never duplicated
    let promoted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(20), || {
            instances.iter().filter(|r| r.port != victim_port && r.is_master()).count() == 3
        }),
        "a replica is promoted"
    );
    let promoted = promoted.elapsed();
    let followed = Instant::now();
    let dead = format!("127.0.0.1:{victim_port}");
    for n in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(15), || {
                let shards = healthz_shards(n);
                shards.len() == 3 && shards.iter().all(|(redis, state)| *redis != dead && state == "ok")
            }),
            "the node follows the new master: {:?}",
            healthz_shards(n)
        );
    }
    let live = |r: &Redis| r.port != victim_port;
    assert!(
        wait_until(Duration::from_secs(10), || instances.iter().filter(|r| live(r)).map(on).sum::<usize>() == 30),
        "every channel subscribed again, the lost ones on the promoted replica"
    );
    let followed = followed.elapsed();
    for i in 2..6 {
        publish_round(i);
    }

    // Per topic: rounds in order, none twice, everything after the failover delivered, and a gap notice before
    // the first message after it wherever messages were lost.
    let mut gap_at: HashMap<String, usize> = HashMap::new();
    let mut got: HashMap<String, Vec<usize>> = topics.iter().map(|t| (t.clone(), vec![0])).collect();
    let mut pending: usize = topics.len() * 4; // rounds 2..6
    while pending > 0 {
        let m = match sub.read() {
            Ok(m @ Message::Text(_)) => m,
            Ok(_) => continue,
            Err(e) => panic!("{e}: {pending} not delivered; so far {got:?}, gaps {gap_at:?}"),
        };
        let v: Value = serde_json::from_str(m.to_text().expect("text")).expect("JSON");
        if v["type"] == "gap" {
            let t = v["topic"].as_str().expect("topic").to_string();
            let at = got.get(&t).map_or(1, Vec::len);
            gap_at.entry(t).or_insert(at);
            continue;
        }
        let k = key_of_envelope(&v);
        let (t, i) = k.rsplit_once('.').expect("key");
        let i: usize = i.parse().expect("round");
        if i != 1 {
            pending -= 1;
        }
        got.entry(t.to_string()).or_default().push(i);
    }
    for t in &topics {
        let rounds = &got[t];
        assert!(rounds.windows(2).all(|w| w[0] < w[1]), "{t}: in order, once: {rounds:?}");
        let without_1: Vec<usize> = rounds.iter().copied().filter(|&r| r != 1).collect();
        assert_eq!(without_1, [0, 2, 3, 4, 5], "{t}");
        if !rounds.contains(&1) {
            let at = gap_at.get(t).unwrap_or_else(|| panic!("{t}: round 1 lost without a gap notice"));
            assert_eq!(*at, 1, "{t}: the gap notice comes after round 0, before the messages after the failover");
        }
    }
    let gaps = topics.iter().filter(|t| gap_at.contains_key(*t)).count();
    assert!(gaps >= lost, "at least the {lost} topics of the killed master are notified: {gaps}");
    sub.get_ref().set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    assert!(sub.read().is_err(), "nothing twice");
    eprintln!("replica promoted {promoted:?} after the kill; both nodes followed and resubscribed {followed:?} later");
}
