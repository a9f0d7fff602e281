//! Several herald nodes, one topic space, over Redis Pub/Sub: what the workers and the bridge share.
//!
//! - [`resp`]: the RESP2 codec (sans-IO), pipelined commands.
//! - [`envelope`]: the binary envelope a message crosses Redis in, and the sequence check.
//! - [`shard`]: which Redis instance carries a topic (standalone mode).
//! - [`slots`]: Redis Cluster slots and topology (sharded mode).
//! - [`tls`]: `rediss://`, the client side of TLS on the bridge's non-blocking sockets.
//! - [`bridge`]: the one thread per node that owns the Redis connections.
//!
//! A worker hands each publish it accepts to the bridge through a [`WorkerLink`] (after delivering it locally
//! as always), and tells it which topics have local subscribers (the interest announcements the workers
//! already exchange). The bridge hands foreign messages to one worker per topic as [`ForeignPublish`], which
//! frames them once and fans them out like its own publishes, and reports lost messages as gaps.

pub mod bridge;
pub mod envelope;
pub mod resp;
pub mod shard;
pub mod slots;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam_channel::Sender;

use crate::config::OverflowPolicy;
pub use envelope::Kind;

/// Close code for raw `/sub` subscribers on a gap when `cluster.on_gap = "close"`: messages were lost, reconnect
/// and resync.
pub const CLOSE_GAP: u16 = 4410;
/// Close code for a raw `/pub` publisher refused because the queue to Redis is full (`on_overflow = "reject"`).
pub const CLOSE_OVERLOADED: u16 = 1013;

/// `redis://host:port[/db]` or `rediss://host:port[/db]` (TLS; the database is accepted and unused: Pub/Sub
/// channels are global to an instance).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address (with `rediss://`, also the name Redis's certificate must carry).
    pub host: String,
    /// Port (default 6379).
    pub port: u16,
    /// `rediss://`: the connection is TLS, verified against `cluster.tls_ca_file`.
    pub tls: bool,
}

/// A Redis URL this build does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Neither `redis://` nor `rediss://`.
    #[error("`{0}`: only redis://host:port and rediss://host:port (TLS) are supported")]
    Scheme(String),
    /// A password in the URL (it would show in `ps`, logs and `--check`).
    #[error("`{0}`: put the password in cluster.password_file or cluster.password_env, not in the URL")]
    Password(String),
    /// No host, or a bad port.
    #[error("`{0}` is not redis://host:port")]
    Form(String),
}

impl RedisUrl {
    /// Parses one URL of `cluster.redis_urls`.
    pub fn parse(url: &str) -> Result<RedisUrl, UrlError> {
        let (rest, tls) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Err(UrlError::Scheme(url.to_string())),
        };
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(UrlError::Password(url.to_string()));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| UrlError::Form(url.to_string()))?)
            }
            _ => (authority, 6379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(UrlError::Form(url.to_string()));
        }
        Ok(RedisUrl { host: host.to_string(), port, tls })
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The password file could not be read.
    #[error("cannot read cluster.password_file {path}: {source}")]
    PasswordFile {
        /// The path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The password variable is not set.
    #[error("cluster.password_env names {0}, which is not set")]
    PasswordEnv(String),
    /// A URL is not usable (checked with the config already; kept for embedding).
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The TLS settings for `rediss://` are not usable.
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    /// The bridge's poll or thread could not be created.
    #[error("cannot start the cluster bridge: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the Redis password the config names, if any.
pub fn read_password(c: &crate::config::Cluster) -> Result<Option<String>, ClusterError> {
    if !c.password_file.is_empty() {
        let text = std::fs::read_to_string(&c.password_file)
            .map_err(|source| ClusterError::PasswordFile { path: c.password_file.clone(), source })?;
        return Ok(Some(text.strip_suffix('\n').unwrap_or(&text).to_string()));
    }
    if !c.password_env.is_empty() {
        return std::env::var(&c.password_env).map(Some).map_err(|_| ClusterError::PasswordEnv(c.password_env.clone()));
    }
    Ok(None)
}

/// The node's cluster state, shared with the workers for `/healthz`.
#[derive(Debug)]
pub struct ClusterState {
    /// This node's id in envelopes.
    pub id: u64,
    /// This node's id as shown in logs and `/healthz`.
    pub node: String,
    /// Whether `/healthz` answers 503 while degraded.
    pub strict: bool,
    /// One entry per Redis instance (`host:port`, up), in shard order: the configured URLs, or in sharded
    /// mode the cluster's masters (they change with the topology). Read per `/healthz`, written per link
    /// change: never on the message path.
    shards: Mutex<Vec<(String, bool)>>,
}

impl ClusterState {
    /// The state of a node named `node` over these instances, every link down until the bridge connects.
    pub fn new(id: u64, node: String, strict: bool, urls: &[RedisUrl]) -> ClusterState {
        let shards = urls.iter().map(|u| (u.to_string(), false)).collect();
        ClusterState { id, node, strict, shards: Mutex::new(shards) }
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, Vec<(String, bool)>> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.shards.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the instances (sharded mode, after a topology change), all down.
    pub fn set_instances(&self, urls: &[RedisUrl]) {
        *self.shards() = urls.iter().map(|u| (u.to_string(), false)).collect();
    }

    /// Records whether instance `shard` is reachable (both links up).
    pub fn set_up(&self, shard: usize, up: bool) {
        if let Some(s) = self.shards().get_mut(shard) {
            s.1 = up;
        }
    }

    /// Whether any instance is unreachable (or none is known).
    pub fn degraded(&self) -> bool {
        let shards = self.shards();
        shards.is_empty() || shards.iter().any(|s| !s.1)
    }

    /// The per-instance link state for `/metrics` (Prometheus text): `herald_cluster_link_up{redis="host:port"}`
    /// 1 while both links to that instance are up, else 0.
    pub fn metrics_text(&self) -> String {
        let mut out = String::from(
            "# HELP herald_cluster_link_up Links to each Redis instance up (1) or not (0).\n\
             # TYPE herald_cluster_link_up gauge\n",
        );
        for (redis, up) in self.shards().iter() {
            out.push_str(&format!("herald_cluster_link_up{{redis={}}} {}\n", json_string(redis), u8::from(*up)));
        }
        out
    }

    /// The `"cluster"` member of `/healthz`.
    pub fn healthz_json(&self) -> String {
        let state = if self.degraded() { "degraded" } else { "ok" };
        let shards: Vec<String> = self
            .shards()
            .iter()
            .map(|(redis, up)| {
                let state = if *up { "ok" } else { "degraded" };
                format!("{{\"redis\":{},\"state\":\"{state}\"}}", json_string(redis))
            })
            .collect();
        format!("{{\"node\":{},\"state\":\"{state}\",\"shards\":[{}]}}", json_string(&self.node), shards.join(","))
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// A message from another node, for the worker that carries its topic.
#[derive(Debug, Clone)]
pub struct ForeignPublish {
    /// The topic.
    pub topic: Arc<str>,
    /// Text, binary or JSON, as the origin published it.
    pub kind: Kind,
    /// The payload.
    pub payload: Bytes,
}

/// A publish on its way to Redis.
#[derive(Debug)]
pub struct Outgoing {
    /// The topic.
    pub topic: Arc<str>,
    /// Its kind.
    pub kind: Kind,
    /// The payload.
    pub payload: Bytes,
    /// Messages of this topic the worker dropped (queue full, policy drop) since its last one: the sequence
    /// number skips them, so the other nodes see the gap.
    pub skipped: u32,
}

/// What a worker tells the bridge.
#[derive(Debug)]
pub enum ToBridge {
    /// Send these to Redis, in order (a worker's publishes of one loop turn; their payloads share one buffer).
    Publish(Vec<Outgoing>),
    /// Worker `worker` has (`on`) or no longer has local subscribers of `topic`.
    Interest {
        /// The topic.
        topic: Arc<str>,
        /// The worker.
        worker: usize,
        /// Whether it has any.
        on: bool,
    },
}

/// The publish was refused: the queue to Redis is full and `on_overflow = "reject"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the queue to the other nodes is full")]
pub struct Overflow;

/// What became of a publish offered to the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// Queued for Redis.
    Queued,
    /// Not sent: the queue was full and the policy is drop (the other nodes will see a gap).
    Dropped,
}

/// Topics whose dropped counts a worker remembers at most (past it they are forgotten: those gaps go unseen
/// by the sequence numbers, but stay counted).
const MAX_SKIPPED_TOPICS: usize = 65_536;

/// A worker's end of the bridge: a queue (bounded, over all workers, by `cluster.max_pending`) and a waker.
///
/// A loop turn's publishes are gathered and sent as one batch by [`WorkerLink::wake`] (or when the batch is
/// large): one queue operation and one payload buffer per batch, not per message.
#[derive(Debug)]
pub struct WorkerLink {
    tx: Sender<ToBridge>,
    pending: Arc<AtomicUsize>,
    max_pending: usize,
    policy: OverflowPolicy,
    waker: Arc<mio::Waker>,
    wake: bool,
    skipped: HashMap<Box<str>, u32>,
    /// The batch: topic, kind, payload range in `payloads`, skipped count.
    batch: Vec<(Arc<str>, Kind, std::ops::Range<usize>, u32)>,
    payloads: bytes::BytesMut,
    /// The last topic published (hot topics are not allocated again for every message).
    last_topic: Option<Arc<str>>,
}

/// A batch is sent before it holds more messages or payload bytes than this, whatever the loop turn.
const BATCH_MESSAGES: usize = 1024;
const BATCH_BYTES: usize = 256 * 1024;

impl WorkerLink {
    /// Offers a publish; never blocks.
    pub fn offer(&mut self, topic: &str, kind: Kind, payload: &[u8]) -> Result<Offered, Overflow> {
        if self.pending.load(Ordering::Relaxed) >= self.max_pending {
            if self.policy == OverflowPolicy::Reject {
                return Err(Overflow);
            }
            if self.skipped.len() >= MAX_SKIPPED_TOPICS && !self.skipped.contains_key(topic) {
                self.skipped.clear();
            }
            *self.skipped.entry(Box::from(topic)).or_insert(0) += 1;
            return Ok(Offered::Dropped);
        }
        let skipped = if self.skipped.is_empty() { 0 } else { self.skipped.remove(topic).unwrap_or(0) };
        self.pending.fetch_add(1, Ordering::Relaxed);
        let topic = match &self.last_topic {
            Some(last) if **last == *topic => last.clone(),
            _ => {
                let t: Arc<str> = Arc::from(topic);
                self.last_topic = Some(t.clone());
                t
            }
        };
        let start = self.payloads.len();
        self.payloads.extend_from_slice(payload);
        self.batch.push((topic, kind, start..self.payloads.len(), skipped));
        if self.batch.len() >= BATCH_MESSAGES || self.payloads.len() >= BATCH_BYTES {
            self.send_batch();
        }
        self.wake = true;
        Ok(Offered::Queued)
    }

    /// Sends the gathered publishes as one batch.
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let payloads = self.payloads.split().freeze();
        let outs: Vec<Outgoing> = self
            .batch
            .drain(..)
            .map(|(topic, kind, range, skipped)| Outgoing { topic, kind, payload: payloads.slice(range), skipped })
            .collect();
        let n = outs.len();
        if self.tx.send(ToBridge::Publish(outs)).is_err() {
            // The bridge has exited (shutdown): nothing more goes to Redis.
            self.pending.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Tells the bridge whether this worker has local subscribers of `topic`.
    pub fn interest(&mut self, topic: &Arc<str>, worker: usize, on: bool) {
        self.send_batch();
        let _ = self.tx.send(ToBridge::Interest { topic: topic.clone(), worker, on });
        self.wake = true;
    }

    /// Sends the loop turn's publishes and wakes the bridge if anything was sent since the last call (once per
    /// loop turn).
    pub fn wake(&mut self) {
        self.send_batch();
        if std::mem::take(&mut self.wake) {
            if let Err(e) = self.waker.wake() {
                tracing::warn!("cluster: waking the bridge failed: {e}");
            }
        }
    }
}

impl Drop for WorkerLink {
    fn drop(&mut self) {
        // A worker that exits sends what it gathered (the bridge writes it before it stops).
        self.send_batch();
    }
}

/// Offers a publish accepted by a worker to the bridge (when the cluster is on), counting drops and refusals.
pub fn offer(
    mesh: &mut crate::broker::mesh::MeshEnd,
    metrics: &mut crate::metrics::Counters,
    topic: &str,
    kind: Kind,
    payload: &[u8],
) -> Result<(), Overflow> {
    use crate::metrics::Metric;
    let Some(link) = mesh.bridge() else { return Ok(()) };
    match link.offer(topic, kind, payload) {
        Ok(Offered::Queued) => Ok(()),
        Ok(Offered::Dropped) => {
            metrics.inc(Metric::ClusterPublishesDropped);
            Ok(())
        }
        Err(e) => {
            metrics.inc(Metric::ClusterPublishesRejected);
            Err(e)
        }
    }
}

/// The JSON notice `/ws` subscribers get when messages of `topic` from another node were lost.
pub fn gap_notice(topic: &str) -> String {
    format!("{{\"type\":\"gap\",\"topic\":{}}}", json_string(topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_urls_take_host_port_and_an_ignored_database() {
        let url = |host: &str, port, tls| RedisUrl { host: host.into(), port, tls };
        assert_eq!(RedisUrl::parse("redis://127.0.0.1:6380/2"), Ok(url("127.0.0.1", 6380, false)));
        assert_eq!(RedisUrl::parse("redis://cache"), Ok(url("cache", 6379, false)));
        assert_eq!(RedisUrl::parse("redis://[::1]:7000"), Ok(url("::1", 7000, false)));
        assert_eq!(RedisUrl::parse("rediss://cache.internal:6380"), Ok(url("cache.internal", 6380, true)));
        assert_eq!(RedisUrl::parse("redis://[::1]:7000").map(|u| u.to_string()), Ok("[::1]:7000".to_string()));
    }

    #[test]
    fn urls_with_a_password_or_another_scheme_are_refused() {
        assert!(matches!(RedisUrl::parse("redis://:secret@host:6379"), Err(UrlError::Password(_))));
        assert!(matches!(RedisUrl::parse("http://host:6379"), Err(UrlError::Scheme(_))));
        assert!(matches!(RedisUrl::parse("rediss://:pw@host:6379"), Err(UrlError::Password(_))));
        assert!(matches!(RedisUrl::parse("redis://:6379"), Err(UrlError::Form(_))));
        assert!(matches!(RedisUrl::parse("redis://h:0"), Err(UrlError::Form(_))));
    }

    #[test]
    fn healthz_reports_each_instance_and_the_node_state() {
        let urls = [RedisUrl::parse("redis://a:1").expect("url"), RedisUrl::parse("redis://b:2").expect("url")];
        let s = ClusterState::new(1, "n1".into(), false, &urls);
        s.set_up(0, true);
        let v: serde_json::Value = serde_json::from_str(&s.healthz_json()).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({"node":"n1","state":"degraded","shards":[
                {"redis":"a:1","state":"ok"},{"redis":"b:2","state":"degraded"}]})
        );
        assert!(s.metrics_text().contains("herald_cluster_link_up{redis=\"a:1\"} 1\n"));
        assert!(s.metrics_text().contains("herald_cluster_link_up{redis=\"b:2\"} 0\n"));
        s.set_up(1, true);
        assert!(!s.degraded());
    }

    fn link(
        max_pending: usize,
        policy: OverflowPolicy,
    ) -> (WorkerLink, crossbeam_channel::Receiver<ToBridge>, mio::Poll) {
        let poll = mio::Poll::new().expect("poll");
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
        let (tx, rx) = crossbeam_channel::unbounded();
        let link = WorkerLink {
            tx,
            pending: Arc::new(AtomicUsize::new(0)),
            max_pending,
            policy,
            waker,
            wake: false,
            skipped: HashMap::new(),
            batch: Vec::new(),
            payloads: bytes::BytesMut::new(),
            last_topic: None,
        };
        (link, rx, poll)
    }

    /// The publishes of the next batch.
    fn next_batch(link: &mut WorkerLink, rx: &crossbeam_channel::Receiver<ToBridge>) -> Vec<Outgoing> {
        link.wake();
        match rx.try_recv() {
            Ok(ToBridge::Publish(o)) => o,
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    fn next_publish(link: &mut WorkerLink, rx: &crossbeam_channel::Receiver<ToBridge>) -> Outgoing {
        let mut batch = next_batch(link, rx);
        assert_eq!(batch.len(), 1);
        batch.remove(0)
    }

    #[test]
    fn past_max_pending_drop_counts_what_it_skipped_so_the_sequence_jumps() {
        let (mut link, rx, _poll) = link(2, OverflowPolicy::Drop);
        assert_eq!(link.offer("t", Kind::Text, b"1"), Ok(Offered::Queued));
        assert_eq!(link.offer("t", Kind::Text, b"2"), Ok(Offered::Queued));
        assert_eq!(link.offer("t", Kind::Text, b"3"), Ok(Offered::Dropped), "queue full");
        assert_eq!(link.offer("t", Kind::Text, b"4"), Ok(Offered::Dropped));
        assert_eq!(link.offer("u", Kind::Text, b"x"), Ok(Offered::Dropped));
        assert_eq!(next_batch(&mut link, &rx).len(), 2);
        link.pending.store(0, Ordering::Relaxed); // the bridge wrote them
        let next = {
            assert_eq!(link.offer("t", Kind::Text, b"5"), Ok(Offered::Queued));
            next_publish(&mut link, &rx)
        };
        assert_eq!((&next.payload[..], next.skipped), (&b"5"[..], 2), "the two dropped ones are skipped");
        assert_eq!(link.offer("t", Kind::Text, b"6"), Ok(Offered::Queued));
        assert_eq!(next_publish(&mut link, &rx).skipped, 0, "counted once");
        link.pending.store(0, Ordering::Relaxed);
        assert_eq!(link.offer("u", Kind::Text, b"y"), Ok(Offered::Queued));
        assert_eq!(next_publish(&mut link, &rx).skipped, 1, "per topic");
    }

    #[test]
    fn past_max_pending_reject_refuses_and_queues_nothing() {
        let (mut link, rx, _poll) = link(1, OverflowPolicy::Reject);
        assert_eq!(link.offer("t", Kind::Binary, b"1"), Ok(Offered::Queued));
        assert_eq!(link.offer("t", Kind::Binary, b"2"), Err(Overflow));
        assert_eq!(next_batch(&mut link, &rx).len(), 1, "the refused one is not queued");
        assert!(rx.try_recv().is_err());
        assert_eq!(link.pending.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_loop_turns_publishes_go_as_one_batch_in_order_with_their_own_bytes() {
        let (mut link, rx, _poll) = link(10_000, OverflowPolicy::Drop);
        for (t, p) in [("a", &b"1"[..]), ("a", b"22"), ("b", b""), ("a", b"333")] {
            assert_eq!(link.offer(t, Kind::Binary, p), Ok(Offered::Queued));
        }
        assert!(rx.try_recv().is_err(), "nothing sent before the turn ends");
        let batch = next_batch(&mut link, &rx);
        let got: Vec<(&str, &[u8])> = batch.iter().map(|o| (&*o.topic, &o.payload[..])).collect();
        assert_eq!(got, [("a", &b"1"[..]), ("a", b"22"), ("b", b""), ("a", b"333")]);
        link.wake();
        assert!(rx.try_recv().is_err(), "an empty turn sends nothing");
        // A large turn goes in several batches, still in order; a worker that exits sends what it gathered.
        for i in 0..BATCH_MESSAGES + 5 {
            assert_eq!(link.offer("c", Kind::Text, format!("{i}").as_bytes()), Ok(Offered::Queued));
        }
        drop(link);
        let mut all = Vec::new();
        while let Ok(ToBridge::Publish(b)) = rx.try_recv() {
            all.extend(b.into_iter().map(|o| String::from_utf8(o.payload.to_vec()).expect("utf-8")));
        }
        assert_eq!(all, (0..BATCH_MESSAGES + 5).map(|i| i.to_string()).collect::<Vec<_>>());
    }

    #[test]
    fn the_gap_notice_is_the_documented_json() {
        let v: serde_json::Value = serde_json::from_str(&gap_notice("t")).expect("JSON");
        assert_eq!(v, serde_json::json!({"type":"gap","topic":"t"}));
    }
}
