//! The bridge: one thread per node that owns the Redis connections, on its own `mio` poll.
//!
//! For each Redis instance (shard) it holds a publish connection and a subscribe connection. Publishes from
//! the workers arrive on one queue (bounded over all workers by `cluster.max_pending`), get their envelope
//! (origin node, per-topic sequence number, kind) and are pipelined: every PUBLISH waiting is written in one
//! buffer, replies are counted as they come. Topics are subscribed on demand, in batches, when their first
//! local subscriber appears on any worker, and unsubscribed a linger after the last one left.
//!
//! Messages from other nodes go to the one worker that carries the topic (a hash of its name), which frames
//! them once and fans them out. Sequence numbers are checked per origin and topic; a jump, or a subscribe link
//! that dropped and came back, becomes a gap notice. Each subscribe link carries a self-published probe: a
//! probe not back in time marks the link stalled, and the shard is reconnected with backoff and jitter.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::{ClientConfig, ClientConnection};

use super::envelope::{self, Header, Kind, Order};
use super::resp::{self, Value};
use super::slots::{self, Topology};
use super::{shard, ClusterError, ClusterState, ForeignPublish, Outgoing, RedisUrl, ToBridge, WorkerLink};
use crate::broker::mesh::{MeshMsg, PeerHandle};
use crate::config::{ClusterMode, Config, GapPolicy};
use crate::metrics::{Counters, Metric};
use crate::server::worker::Shared;

const WAKER: Token = Token(usize::MAX);
/// Timers (probes, connect deadlines, lingers) are checked at least this often.
const TICK: Duration = Duration::from_millis(50);
/// A publish link's write buffer is filled up to this size; the rest waits in the shard's queue.
const OUT_CAP: usize = 1 << 20;
/// Bytes per read call on a plain link.
const READ_CHUNK: usize = 128 * 1024;
/// Channels per SUBSCRIBE or UNSUBSCRIBE command.
const SUB_BATCH: usize = 512;
/// First reconnection delay (doubled per failed attempt, up to `cluster.reconnect_max`).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// A topic's outgoing sequence counter is forgotten after this long without a publish (it restarts at 1).
const SEQ_IDLE: Duration = Duration::from_secs(600);

/// Starts the bridge thread for the workers `peers` reach; returns each worker's link and the thread. The
/// bridge's metrics go to `shared.slots[slot]`.
pub fn spawn(
    cfg: Arc<Config>,
    state: Arc<ClusterState>,
    peers: Vec<PeerHandle>,
    shared: Arc<Shared>,
    slot: usize,
) -> Result<(Vec<WorkerLink>, JoinHandle<()>), ClusterError> {
    let c = &cfg.cluster;
    let node = state.id;
    let password = super::read_password(c)?;
    let urls: Vec<RedisUrl> = c.redis_urls.0.iter().map(|u| RedisUrl::parse(u)).collect::<Result<_, _>>()?;
    let tls = super::tls::client_config(c, &urls)?;
    let poll = Poll::new()?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded();
    let pending = Arc::new(AtomicUsize::new(0));
    let links = (0..peers.len())
        .map(|_| WorkerLink {
            tx: tx.clone(),
            pending: pending.clone(),
            max_pending: c.max_pending,
            policy: c.on_overflow,
            waker: waker.clone(),
            wake: false,
            skipped: HashMap::new(),
            batch: Vec::new(),
            payloads: BytesMut::new(),
            last_topic: None,
        })
        .collect();
    drop(tx);
    let prefix = c.channel_prefix.as_bytes().to_vec();
    let now = Instant::now();
    let sharded = c.mode == ClusterMode::Sharded;
    let verbs = if sharded { SHARDED } else { CLASSIC };
    // Sharded mode: the masters, if a seed answers now (else the seeds stand in until one does).
    let topology =
        if sharded { fetch_topology(&urls, &password, &c.username, c.connect_timeout.0, &tls) } else { None };
    let instances = topology.as_ref().map_or(urls.clone(), |t| t.masters.clone());
    state.set_instances(&instances);
    let shards = instances
        .into_iter()
        .enumerate()
        .map(|(i, url)| Shard::new(url, probe_channel(&prefix, node, i, topology.as_ref()), now))
        .collect();
    let workers = peers.len();
    let mut bridge = Bridge {
        poll,
        rx,
        pending,
        peers,
        overflow: (0..workers).map(|_| VecDeque::new()).collect(),
        to_wake: 0,
        shards,
        topics: HashMap::new(),
        linger: VecDeque::new(),
        seq_out: HashMap::new(),
        seq_in: HashMap::new(),
        node,
        prefix,
        password,
        tls,
        state,
        metrics: Counters::default(),
        shared,
        slot,
        rng: node | 1,
        refresh: sharded && topology.is_none(),
        next_refresh: now,
        topology,
        seeds: urls,
        verbs,
        next_sweep: now + SEQ_IDLE,
        max_bulk: cfg.limits.max_message_size.bytes() + envelope::HEADER + 1024,
        channel: Vec::new(),
        cfg,
        paused: false,
    };
    if bridge.refresh {
        tracing::warn!("cluster: no seed node answered CLUSTER SLOTS; retrying");
    }
    bridge.metrics.set(Metric::ClusterShards, bridge.shards.len() as u64);
    let thread = std::thread::Builder::new().name("herald-cluster".into()).spawn(move || bridge.run())?;
    Ok((links, thread))
}

/// The node's cluster state when `[cluster]` is on: its id (the configured name, or a random one), every
/// instance down until the bridge connects.
pub fn state_for(cfg: &Config) -> Option<Arc<ClusterState>> {
    let c = &cfg.cluster;
    if !c.enabled() {
        return None;
    }
    let urls: Vec<RedisUrl> = c.redis_urls.0.iter().filter_map(|u| RedisUrl::parse(u).ok()).collect();
    let (id, name) = if c.node_id.is_empty() {
        let id = random_u64();
        (id, format!("{id:016x}"))
    } else {
        (shard::fnv1a(c.node_id.as_bytes()), c.node_id.clone())
    };
    Some(Arc::new(ClusterState::new(id, name, c.health_503_when_degraded, &urls)))
}

/// 64 random bits from the standard library's per-process random hash keys, the clock and the pid.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// The commands and pushes of one pub/sub flavour.
#[derive(Debug, Clone, Copy)]
struct Verbs {
    publish: &'static [u8],
    subscribe: &'static [u8],
    unsubscribe: &'static [u8],
    message: &'static [u8],
    subscribed: &'static [u8],
    unsubscribed: &'static [u8],
}

/// Classic pub/sub (standalone instances).
const CLASSIC: Verbs = Verbs {
    publish: b"PUBLISH",
    subscribe: b"SUBSCRIBE",
    unsubscribe: b"UNSUBSCRIBE",
    message: b"message",
    subscribed: b"subscribe",
    unsubscribed: b"unsubscribe",
};

/// Sharded pub/sub (Redis Cluster 7+): each channel lives on its slot's master only.
const SHARDED: Verbs = Verbs {
    publish: b"SPUBLISH",
    subscribe: b"SSUBSCRIBE",
    unsubscribe: b"SUNSUBSCRIBE",
    message: b"smessage",
    subscribed: b"ssubscribe",
    unsubscribed: b"sunsubscribe",
};

/// Asks each node in turn for the cluster's topology.
/// (With `rediss://` seeds, the masters are reached over TLS too, on the ports CLUSTER SLOTS gives: Redis's
/// `tls-cluster yes`.)
fn fetch_topology(
    nodes: &[RedisUrl],
    password: &Option<String>,
    user: &str,
    timeout: Duration,
    tls: &Option<Arc<ClientConfig>>,
) -> Option<Topology> {
    let auth = password.as_deref().map(|pw| (user, pw));
    // A dead master is asked first while its replica takes over: said only if no node answers.
    let mut failures = Vec::new();
    for n in nodes {
        let tls = if n.tls { tls.as_ref() } else { None };
        match Topology::fetch(n, auth, timeout, tls) {
            Ok(mut t) if !t.masters.is_empty() => {
                for m in &mut t.masters {
                    m.tls = n.tls;
                }
                for (node, why) in failures {
                    tracing::debug!(node = %node, "cluster: cannot read the topology: {why}");
                }
                return Some(t);
            }
            Ok(_) => failures.push((n, "CLUSTER SLOTS lists no master".to_string())),
            Err(e) => failures.push((n, e.to_string())),
        }
    }
    for (node, why) in failures {
        tracing::warn!(node = %node, "cluster: cannot read the topology: {why}");
    }
    None
}

/// The probe channel of shard `i` of node `node`: `/` and `#` are outside the topic charset, so no topic's
/// channel can be it.
fn probe_channel(prefix: &[u8], node: u64, i: usize, topology: Option<&Topology>) -> Vec<u8> {
    let mut c = prefix.to_vec();
    c.extend_from_slice(format!("#probe/{node:016x}/{i}").as_bytes());
    let Some(t) = topology else { return c };
    // Sharded mode: a name whose slot this master owns (a third of names or so for three masters).
    let base = c.len();
    for n in 0u32..100_000 {
        c.truncate(base);
        c.extend_from_slice(format!("/{n}").as_bytes());
        if t.master_of(&c) == Some(i) {
            break;
        }
    }
    c
}

/// One connection to Redis: plain, or TLS (`rediss://`) through a rustls client connection that the link feeds
/// records to and from its non-blocking socket.
#[derive(Debug, Default)]
struct Link {
    stream: Option<TcpStream>,
    tls: Option<Box<ClientConnection>>,
    out: BytesMut,
    inbuf: BytesMut,
    /// What a plain read lands in first ([`READ_CHUNK`] bytes once the link has read).
    scratch: Vec<u8>,
    /// Replies still expected to the connection's opening commands (AUTH, PING or the probe's SUBSCRIBE).
    handshake_left: usize,
    /// PUBLISH replies still expected (publish link), in order: true for a probe's.
    awaiting: VecDeque<bool>,
}

/// What a socket call's error means for the link: go on later (`Ok(false)`), retry now (`Ok(true)`), or fail.
fn retry(e: io::Error) -> Result<bool, LinkError> {
    match e.kind() {
        // Not connected yet: the WRITABLE (or READABLE) edge comes when it is.
        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected => Ok(false),
        io::ErrorKind::Interrupted => Ok(true),
        _ => Err(e.into()),
    }
}

impl Link {
    fn ready(&self) -> bool {
        self.stream.is_some() && self.handshake_left == 0
    }

    /// Drops the connection and everything buffered for it.
    fn close(&mut self, registry: &mio::Registry) {
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
        self.tls = None;
    }

    /// Writes what is buffered until done or the socket is full.
    fn flush(&mut self) -> Result<(), LinkError> {
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        if let Some(tls) = self.tls.as_mut() {
            loop {
                // Plaintext into rustls (sealed into records, or held until the handshake is done, up to its
                // buffer limit), then its records out.
                while !self.out.is_empty() {
                    let n = tls.writer().write(&self.out)?;
                    if n == 0 {
                        break;
                    }
                    let _ = self.out.split_to(n);
                }
                let mut wrote = false;
                while tls.wants_write() {
                    match tls.write_tls(stream) {
                        Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                        Ok(_) => wrote = true,
                        Err(e) => {
                            if !retry(e)? {
                                break;
                            }
                        }
                    }
                }
                if self.out.is_empty() || tls.wants_write() || !wrote {
                    break;
                }
            }
        } else {
            while !self.out.is_empty() {
                match stream.write(&self.out) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                    Ok(n) => {
                        let _ = self.out.split_to(n);
                    }
                    Err(e) => {
                        if !retry(e)? {
                            break;
                        }
                    }
                }
            }
        }
        if self.out.is_empty() && self.out.capacity() > 4 * OUT_CAP {
            self.out = BytesMut::new();
        }
        Ok(())
    }

    /// Reads what is available, up to about 4 MiB: (false at EOF, true when the socket may hold more).
    fn fill(&mut self) -> Result<(bool, bool), LinkError> {
        let Some(stream) = self.stream.as_mut() else { return Ok((true, false)) };
        if let Some(tls) = self.tls.as_mut() {
            let result = Self::fill_tls(tls, stream, &mut self.inbuf);
            if result.is_err() {
                // rustls queued an alert saying why: best effort, the link is dropped next.
                let _ = tls.write_tls(stream);
                return result;
            }
            // A handshake message, a key update or plaintext held during the handshake may wait to go out.
            self.flush()?;
            return result;
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0; READ_CHUNK];
        }
        loop {
            // Read into the scratch buffer, then copy what came: cheaper than zeroing the input buffer's spare
            // capacity before every read.
            match stream.read(&mut self.scratch) {
                Ok(0) => return Ok((false, false)),
                Ok(n) => self.inbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) => {
                    if !retry(e)? {
                        return Ok((true, false));
                    }
                }
            }
            if self.inbuf.len() >= 4 * 1024 * 1024 {
                // Enough to work on: the caller decodes it, then reads on (the edge will not come again).
                return Ok((true, true));
            }
        }
    }

    /// [`Link::fill`] through TLS: records from the socket into rustls, plaintext out of it.
    fn fill_tls(
        tls: &mut ClientConnection,
        stream: &mut TcpStream,
        inbuf: &mut BytesMut,
    ) -> Result<(bool, bool), LinkError> {
        loop {
            match tls.read_tls(stream) {
                Ok(0) => return Ok((false, false)),
                Ok(_) => {}
                Err(e) => {
                    if retry(e)? {
                        continue;
                    }
                    return Ok((true, false));
                }
            }
            let state = tls.process_new_packets().map_err(|e| LinkError::Tls(super::tls::describe(&e)))?;
            let mut left = state.plaintext_bytes_to_read();
            while left > 0 {
                let len = inbuf.len();
                inbuf.resize(len + left, 0);
                match tls.reader().read(&mut inbuf[len..]) {
                    Ok(n) => {
                        inbuf.truncate(len + n);
                        left -= n.min(left);
                        if n == 0 {
                            break;
                        }
                    }
                    Err(e) => {
                        inbuf.truncate(len);
                        return Err(e.into());
                    }
                }
            }
            if state.peer_has_closed() {
                return Ok((false, false));
            }
            if inbuf.len() >= 4 * 1024 * 1024 {
                return Ok((true, true));
            }
        }
    }
}

/// One Redis instance: its two links, what waits for it, and what is subscribed there.
#[derive(Debug)]
struct Shard {
    url: RedisUrl,
    publ: Link,
    sub: Link,
    probe_channel: Vec<u8>,
    /// Publishes waiting for the publish link (envelope header made, payload shared).
    queue: VecDeque<([u8; envelope::HEADER], Outgoing)>,
    /// Channels (topics) this node wants from this instance.
    channels: HashSet<Arc<str>>,
    to_sub: Vec<Arc<str>>,
    to_unsub: Vec<Arc<str>>,
    /// Subscribe confirmations still expected after a reconnection, and the topics to notify once they came.
    resub_left: usize,
    gap_topics: Vec<Arc<str>>,
    up: bool,
    /// The subscribe link has been up once: a reconnection means messages may have been missed.
    was_up: bool,
    connect_deadline: Option<Instant>,
    retry_at: Instant,
    attempt: u32,
    probe: Option<(u64, Instant)>,
    next_probe: Instant,
    probe_token: u64,
}

impl Shard {
    fn new(url: RedisUrl, probe_channel: Vec<u8>, now: Instant) -> Shard {
        Shard {
            url,
            publ: Link::default(),
            sub: Link::default(),
            probe_channel,
            queue: VecDeque::new(),
            channels: HashSet::new(),
            to_sub: Vec::new(),
            to_unsub: Vec::new(),
            resub_left: 0,
            gap_topics: Vec::new(),
            up: false,
            was_up: false,
            connect_deadline: None,
            retry_at: now,
            attempt: 0,
            probe: None,
            next_probe: now,
            probe_token: 0,
        }
    }

    fn connecting(&self) -> bool {
        self.publ.stream.is_some() || self.sub.stream.is_some()
    }
}

#[derive(Debug)]
struct TopicState {
    /// Workers with local subscribers (bit per worker).
    workers: u64,
}

struct Bridge {
    poll: Poll,
    rx: Receiver<ToBridge>,
    pending: Arc<AtomicUsize>,
    peers: Vec<PeerHandle>,
    /// Messages for a worker whose inbox was full, in order; while any waits, Redis is not read.
    overflow: Vec<VecDeque<MeshMsg>>,
    to_wake: u64,
    shards: Vec<Shard>,
    topics: HashMap<Arc<str>, TopicState>,
    linger: VecDeque<(Instant, Arc<str>)>,
    seq_out: HashMap<Arc<str>, (u64, Instant)>,
    /// Last sequence number seen per topic and origin.
    seq_in: HashMap<Arc<str>, Vec<(u64, u64)>>,
    node: u64,
    prefix: Vec<u8>,
    password: Option<String>,
    /// The client configuration for `rediss://` links (None when no URL uses TLS).
    tls: Option<Arc<ClientConfig>>,
    state: Arc<ClusterState>,
    metrics: Counters,
    /// The process's shared state: the bridge publishes its metrics in `slots[slot]`, after the workers'.
    shared: Arc<Shared>,
    slot: usize,
    rng: u64,
    /// Sharded mode: the topology must be read again (MOVED, an unrequested SUNSUBSCRIBE, a lost master).
    refresh: bool,
    next_refresh: Instant,
    /// Sharded mode: the slots' owners (None in standalone mode, or until a seed answers).
    topology: Option<Topology>,
    /// The configured URLs (sharded mode: where the topology is asked, after the current masters).
    seeds: Vec<RedisUrl>,
    verbs: Verbs,
    next_sweep: Instant,
    max_bulk: usize,
    /// The channel of the message being handled (reused).
    channel: Vec<u8>,
    cfg: Arc<Config>,
    paused: bool,
}

/// Why a shard's links are being dropped.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed by Redis")]
    Eof,
    #[error(transparent)]
    Resp(#[from] resp::RespError),
    #[error("Redis refused: {0}")]
    Refused(String),
    #[error("no reply within cluster.connect_timeout")]
    ConnectTimeout,
    #[error("probe not back within cluster.probe_timeout: link stalled")]
    Stalled,
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("{0}")]
    Tls(String),
}

impl Bridge {
    fn run(mut self) {
        tracing::info!(node = %self.state.node, shards = self.shards.len(), "cluster bridge started");
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if self.paused { Duration::from_millis(1) } else { TICK };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!("cluster bridge: poll failed: {e}");
                    return;
                }
            }
            let now = Instant::now();
            for event in events.iter() {
                if event.token() == WAKER {
                    continue;
                }
                let (s, is_sub) = (event.token().0 / 2, event.token().0 % 2 == 1);
                if s >= self.shards.len() {
                    continue;
                }
                let result = if event.is_writable() { self.flush_shard(s, is_sub) } else { Ok(()) };
                let result = result.and_then(|()| {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read_shard(s, is_sub, now)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = result {
                    self.fail(s, &e, now);
                }
            }
            let open = self.drain_queue(now);
            self.retry_overflow();
            if self.paused && self.overflow.iter().all(VecDeque::is_empty) {
                self.paused = false;
                for s in 0..self.shards.len() {
                    if let Err(e) = self.read_shard(s, true, now) {
                        self.fail(s, &e, now);
                    }
                }
            }
            self.timers(now);
            for s in 0..self.shards.len() {
                if let Err(e) = self.write_shard(s) {
                    self.fail(s, &e, now);
                }
            }
            self.wake_workers();
            self.publish_metrics();
            if !open {
                self.shutdown();
                return;
            }
        }
    }

    /// Takes everything the workers sent; false once every worker has gone (shutdown).
    fn drain_queue(&mut self, now: Instant) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(ToBridge::Publish(batch)) => {
                    for out in batch {
                        self.enqueue(out, now);
                    }
                }
                Ok(ToBridge::Interest { topic, worker, on }) => self.interest(topic, worker, on, now),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// The shard that carries `topic`: its slot's master (sharded mode), or by the stable hash.
    fn shard_for(&self, topic: &str) -> usize {
        match &self.topology {
            Some(t) => {
                let mut channel = Vec::with_capacity(self.prefix.len() + topic.len());
                channel.extend_from_slice(&self.prefix);
                channel.extend_from_slice(topic.as_bytes());
                t.master_of(&channel).unwrap_or(0).min(self.shards.len().saturating_sub(1))
            }
            None => shard::shard_of(topic, self.shards.len()),
        }
    }

    fn enqueue(&mut self, out: Outgoing, now: Instant) {
        let entry = self.seq_out.entry(out.topic.clone()).or_insert((0, now));
        entry.0 = entry.0.wrapping_add(1 + u64::from(out.skipped));
        entry.1 = now;
        let header = Header { kind: out.kind, origin: self.node, seq: entry.0 }.encode();
        let s = self.shard_for(&out.topic);
        self.shards[s].queue.push_back((header, out));
    }

    fn interest(&mut self, topic: Arc<str>, worker: usize, on: bool, now: Instant) {
        let bit = 1u64 << (worker % 64);
        let s = self.shard_for(&topic);
        let state = self.topics.entry(topic.clone()).or_insert(TopicState { workers: 0 });
        if on {
            state.workers |= bit;
            let shard = &mut self.shards[s];
            if shard.channels.insert(topic.clone()) {
                shard.to_sub.push(topic);
            }
        } else {
            state.workers &= !bit;
            if state.workers == 0 {
                self.linger.push_back((now + self.cfg.cluster.unsubscribe_linger.0, topic));
            }
        }
    }

    fn timers(&mut self, now: Instant) {
        while self.linger.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, topic)) = self.linger.pop_front() else { break };
            if self.topics.get(&topic).is_some_and(|t| t.workers == 0) {
                self.topics.remove(&topic);
                self.seq_in.remove(&topic);
                let s = self.shard_for(&topic);
                let shard = &mut self.shards[s];
                if shard.channels.remove(&topic) {
                    shard.to_unsub.push(topic);
                }
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + SEQ_IDLE / 4;
            self.seq_out.retain(|_, (_, last)| now.duration_since(*last) < SEQ_IDLE);
            self.seq_out.shrink_to_fit();
        }
        if self.refresh && now >= self.next_refresh {
            self.refresh_topology(now);
        }
        let c = &self.cfg.cluster;
        let (probe_interval, probe_timeout) = (c.probe_interval.0, c.probe_timeout.0);
        for s in 0..self.shards.len() {
            let shard = &mut self.shards[s];
            if !shard.connecting() {
                if now >= shard.retry_at {
                    if let Err(e) = self.connect(s, now) {
                        self.fail(s, &e, now);
                    }
                }
                continue;
            }
            if shard.connect_deadline.is_some_and(|d| now >= d) {
                self.fail(s, &LinkError::ConnectTimeout, now);
                continue;
            }
            if !shard.up {
                continue;
            }
            match shard.probe {
                Some((_, sent)) if now.duration_since(sent) >= probe_timeout => {
                    self.fail(s, &LinkError::Stalled, now);
                }
                None if now >= shard.next_probe => {
                    shard.probe_token = shard.probe_token.wrapping_add(1);
                    shard.probe = Some((shard.probe_token, now));
                    shard.next_probe = now + probe_interval;
                    let header = Header { kind: Kind::Probe, origin: self.node, seq: shard.probe_token }.encode();
                    resp::command(&mut shard.publ.out, &[&[self.verbs.publish], &[&shard.probe_channel], &[&header]]);
                    shard.publ.awaiting.push_back(true);
                }
                _ => {}
            }
        }
    }

    /// Opens both links of shard `s` and queues their opening commands (AUTH, then PING on the publish link,
    /// the probe's SUBSCRIBE and every wanted channel, in batches, on the subscribe link).
    fn connect(&mut self, s: usize, now: Instant) -> Result<(), LinkError> {
        let addr = resolve(&self.shards[s].url)?;
        let tls = match (self.shards[s].url.tls, &self.tls) {
            (false, _) => None,
            (true, Some(config)) => {
                let name =
                    super::tls::server_name(&self.shards[s].url.host).map_err(|e| LinkError::Tls(e.to_string()))?;
                Some((config, name))
            }
            (true, None) => return Err(LinkError::Tls("rediss:// without cluster.tls_ca_file".to_string())),
        };
        let shard = &mut self.shards[s];
        shard.connect_deadline = Some(now + self.cfg.cluster.connect_timeout.0);
        let auth = self.password.as_deref().map(|pw| {
            let mut cmd = BytesMut::new();
            let user = self.cfg.cluster.username.as_bytes();
            if user.is_empty() {
                resp::command_args(&mut cmd, &[b"AUTH", pw.as_bytes()]);
            } else {
                resp::command_args(&mut cmd, &[b"AUTH", user, pw.as_bytes()]);
            }
            cmd
        });
        for (is_sub, link) in [(false, &mut shard.publ), (true, &mut shard.sub)] {
            let mut stream = TcpStream::connect(addr)?;
            let _ = stream.set_nodelay(true);
            let token = Token(s * 2 + usize::from(is_sub));
            self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
            link.stream = Some(stream);
            link.tls = match &tls {
                Some((config, name)) => Some(Box::new(
                    ClientConnection::new(Arc::clone(config), name.clone())
                        .map_err(|e| LinkError::Tls(super::tls::describe(&e)))?,
                )),
                None => None,
            };
            link.out.clear();
            link.inbuf.clear();
            link.awaiting.clear();
            link.handshake_left = 1;
            if let Some(cmd) = &auth {
                link.out.extend_from_slice(cmd);
                link.handshake_left += 1;
            }
        }
        resp::command_args(&mut shard.publ.out, &[b"PING"]);
        resp::command_args(&mut shard.sub.out, &[self.verbs.subscribe, &shard.probe_channel]);
        shard.to_sub.clear();
        shard.to_unsub.clear();
        let all: Vec<Arc<str>> = shard.channels.iter().cloned().collect();
        write_batches(&mut shard.sub.out, self.verbs.subscribe, &self.prefix, &all, self.topology.is_some());
        shard.resub_left = all.len();
        shard.gap_topics = if shard.was_up { all } else { Vec::new() };
        if shard.was_up {
            // Messages were missed while the link was down: the next sequence numbers would jump again.
            for t in &shard.gap_topics {
                self.seq_in.remove(t);
            }
        }
        tracing::debug!(shard = s, redis = %shard.url, "cluster: connecting");
        Ok(())
    }

    /// Sharded mode: reads the topology again (current masters first, then the seeds) and, when it changed,
    /// moves every channel and waiting publish to its slot's new master.
    fn refresh_topology(&mut self, now: Instant) {
        let c = &self.cfg.cluster;
        let mut nodes: Vec<RedisUrl> = self.shards.iter().map(|s| s.url.clone()).collect();
        nodes.extend(self.seeds.iter().cloned());
        nodes.dedup();
        let Some(topology) = fetch_topology(&nodes, &self.password, &c.username, c.connect_timeout.0, &self.tls) else {
            self.next_refresh = now + BACKOFF_MIN * 5;
            return;
        };
        self.refresh = false;
        if self.topology.as_ref() == Some(&topology) {
            return;
        }
        tracing::info!(masters = topology.masters.len(), "cluster: topology changed; moving channels");
        let mut queued = Vec::new();
        let mut was_up = false;
        for shard in &mut self.shards {
            for link in [&mut shard.publ, &mut shard.sub] {
                link.close(self.poll.registry());
            }
            let lost = shard.publ.awaiting.iter().filter(|&&probe| !probe).count();
            self.metrics.add(Metric::ClusterPublishesFailed, lost as u64);
            was_up |= shard.up || shard.was_up;
            queued.extend(shard.queue.drain(..));
        }
        self.state.set_instances(&topology.masters);
        self.shards = topology
            .masters
            .iter()
            .enumerate()
            .map(|(i, url)| Shard::new(url.clone(), probe_channel(&self.prefix, self.node, i, Some(&topology)), now))
            .collect();
        self.topology = Some(topology);
        for shard in &mut self.shards {
            shard.was_up = was_up;
        }
        let topics: Vec<Arc<str>> = self.topics.keys().cloned().collect();
        for t in topics {
            let s = self.shard_for(&t);
            self.shards[s].channels.insert(t);
        }
        for (header, out) in queued {
            let s = self.shard_for(&out.topic);
            self.shards[s].queue.push_back((header, out));
        }
        self.metrics.set(Metric::ClusterShards, self.shards.len() as u64);
    }

    /// Drops shard `s`'s links after `why` and schedules a reconnection with backoff and jitter.
    fn fail(&mut self, s: usize, why: &LinkError, now: Instant) {
        let shard = &mut self.shards[s];
        let lost = shard.publ.awaiting.iter().filter(|&&probe| !probe).count();
        for link in [&mut shard.publ, &mut shard.sub] {
            link.close(self.poll.registry());
            link.out = BytesMut::new();
            link.inbuf = BytesMut::new();
            link.awaiting = VecDeque::new();
            link.handshake_left = 0;
        }
        if lost > 0 {
            self.metrics.add(Metric::ClusterPublishesFailed, lost as u64);
        }
        if shard.up {
            tracing::warn!(shard = s, redis = %shard.url, "cluster: link lost ({why}); reconnecting");
        } else if shard.attempt == 0 || shard.attempt.is_power_of_two() {
            tracing::warn!(shard = s, redis = %shard.url, attempt = shard.attempt, "cluster: cannot connect ({why})");
        }
        shard.was_up |= shard.up || shard.was_up;
        // Sharded mode: a lost master may have failed over to a replica.
        self.refresh |= self.topology.is_some() || self.cfg.cluster.mode == ClusterMode::Sharded;
        shard.up = false;
        shard.probe = None;
        shard.connect_deadline = None;
        shard.resub_left = 0;
        shard.gap_topics.clear();
        self.metrics.inc(Metric::ClusterReconnects);
        let max = self.cfg.cluster.reconnect_max.0;
        let base = BACKOFF_MIN.saturating_mul(1u32 << shard.attempt.min(16)).min(max);
        shard.attempt = shard.attempt.saturating_add(1);
        // Jitter: between half and all of the delay, so nodes that lost the same instance do not reconnect
        // in step.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = (self.rng % 1000) as u32;
        shard.retry_at = now + base / 2 + base / 2 * jitter / 1000;
        self.state.set_up(s, false);
    }

    fn flush_shard(&mut self, s: usize, is_sub: bool) -> Result<(), LinkError> {
        let shard = &mut self.shards[s];
        let link = if is_sub { &mut shard.sub } else { &mut shard.publ };
        link.flush()?;
        Ok(())
    }

    /// Moves waiting publishes and (un)subscriptions into the links' buffers and writes them.
    fn write_shard(&mut self, s: usize) -> Result<(), LinkError> {
        let shard = &mut self.shards[s];
        if !shard.up {
            return Ok(());
        }
        let mut moved = 0usize;
        while shard.publ.out.len() < OUT_CAP {
            let Some((header, out)) = shard.queue.pop_front() else { break };
            let topic = out.topic.as_bytes();
            resp::command(
                &mut shard.publ.out,
                &[&[self.verbs.publish], &[&self.prefix, topic], &[&header, &out.payload]],
            );
            shard.publ.awaiting.push_back(false);
            moved += 1;
        }
        if moved > 0 {
            self.pending.fetch_sub(moved, Ordering::Relaxed);
        }
        if !shard.to_unsub.is_empty() {
            let gone: Vec<Arc<str>> =
                std::mem::take(&mut shard.to_unsub).into_iter().filter(|t| !shard.channels.contains(t)).collect();
            write_batches(&mut shard.sub.out, self.verbs.unsubscribe, &self.prefix, &gone, self.topology.is_some());
        }
        if !shard.to_sub.is_empty() {
            let new: Vec<Arc<str>> =
                std::mem::take(&mut shard.to_sub).into_iter().filter(|t| shard.channels.contains(t)).collect();
            write_batches(&mut shard.sub.out, self.verbs.subscribe, &self.prefix, &new, self.topology.is_some());
        }
        shard.publ.flush()?;
        shard.sub.flush()?;
        Ok(())
    }

    /// Reads and handles what arrived on one link.
    fn read_shard(&mut self, s: usize, is_sub: bool, now: Instant) -> Result<(), LinkError> {
        if is_sub && self.paused {
            // Workers' inboxes are full: Redis waits (its output buffer limit is the bound).
            return Ok(());
        }
        loop {
            let shard = &mut self.shards[s];
            let link = if is_sub { &mut shard.sub } else { &mut shard.publ };
            if link.stream.is_none() {
                return Ok(());
            }
            let (open, more) = link.fill()?;
            self.decode_shard(s, is_sub, now)?;
            if !open {
                return Err(LinkError::Eof);
            }
            if !more || (is_sub && self.paused) {
                return Ok(());
            }
        }
    }

    /// Handles every complete value read on one link.
    fn decode_shard(&mut self, s: usize, is_sub: bool, now: Instant) -> Result<(), LinkError> {
        loop {
            let shard = &mut self.shards[s];
            let link = if is_sub { &mut shard.sub } else { &mut shard.publ };
            if link.handshake_left == 0 {
                // The bulk of the traffic, without building values: messages, and PUBLISH replies.
                if is_sub {
                    let (verb, max) = (self.verbs.message, self.max_bulk);
                    if let Some(payload) = resp::take_message(&mut link.inbuf, verb, max, &mut self.channel)? {
                        let channel = std::mem::take(&mut self.channel);
                        self.on_message(s, &channel, payload, now);
                        self.channel = channel;
                        if self.paused {
                            break;
                        }
                        continue;
                    }
                } else if let Some(n) = resp::take_integer(&mut link.inbuf)? {
                    self.on_reply(s, &Value::Integer(n));
                    continue;
                }
            }
            let Some(value) = resp::decode(&mut link.inbuf, self.max_bulk)? else { break };
            if link.handshake_left > 0 {
                if let Value::Error(e) = &value {
                    return Err(LinkError::Refused(String::from_utf8_lossy(e).into_owned()));
                }
                link.handshake_left -= 1;
                if shard.publ.ready() && shard.sub.ready() && !shard.up {
                    self.link_up(s, now);
                }
                continue;
            }
            if is_sub {
                self.on_push(s, value, now);
                if self.paused {
                    break;
                }
            } else {
                self.on_reply(s, &value);
            }
        }
        Ok(())
    }

    fn link_up(&mut self, s: usize, now: Instant) {
        let shard = &mut self.shards[s];
        shard.up = true;
        shard.attempt = 0;
        shard.connect_deadline = None;
        shard.next_probe = now;
        self.state.set_up(s, true);
        tracing::info!(shard = s, redis = %shard.url, channels = shard.channels.len(), "cluster: link up");
        if shard.resub_left == 0 {
            self.emit_resub_gaps(s);
        }
    }

    /// A reply on the publish link: a PUBLISH's receiver count, or an error.
    fn on_reply(&mut self, s: usize, value: &Value) {
        let shard = &mut self.shards[s];
        let probe = shard.publ.awaiting.pop_front().unwrap_or(false);
        match value {
            Value::Integer(_) if probe => {}
            Value::Integer(_) => self.metrics.inc(Metric::ClusterPublishesSent),
            Value::Error(e) => {
                if !probe {
                    self.metrics.inc(Metric::ClusterPublishesFailed);
                }
                if self.topology.is_some() && (e.starts_with(b"MOVED") || e.starts_with(b"ASK")) {
                    // The slot moved: lost like any publish during a topology change; read the new one.
                    self.refresh = true;
                } else {
                    tracing::warn!(shard = s, "cluster: PUBLISH refused: {}", String::from_utf8_lossy(e));
                }
            }
            _ => {}
        }
    }

    /// A push on the subscribe link: a message, or a (un)subscribe confirmation.
    fn on_push(&mut self, s: usize, value: Value, now: Instant) {
        let mut parts = match value {
            Value::Array(parts) if parts.len() >= 3 => parts,
            Value::Error(e) => {
                // Sharded mode: SSUBSCRIBE to a node that no longer owns the slot (MOVED).
                tracing::debug!(shard = s, "cluster: subscribe refused: {}", String::from_utf8_lossy(&e));
                self.refresh |= self.topology.is_some();
                return;
            }
            _ => return,
        };
        let Some(kind) = parts[0].as_bytes().cloned() else { return };
        let verbs = self.verbs;
        match &kind[..] {
            k if k == verbs.unsubscribed => {
                // A channel we still want, unsubscribed by Redis: its slot moved (sharded mode).
                let wanted = parts[1]
                    .as_bytes()
                    .and_then(|c| c.strip_prefix(&self.prefix[..]))
                    .is_some_and(|t| std::str::from_utf8(t).is_ok_and(|t| self.shards[s].channels.contains(t)));
                if wanted && self.topology.is_some() {
                    self.refresh = true;
                }
            }
            k if k == verbs.message => {
                let payload = match parts.pop() {
                    Some(Value::Bulk(b)) => b,
                    _ => return,
                };
                let Some(channel) = parts.pop().and_then(|v| v.as_bytes().cloned()) else { return };
                self.on_message(s, &channel, payload, now);
            }
            k if k == verbs.subscribed => {
                let shard = &mut self.shards[s];
                if shard.resub_left > 0 && parts[1].as_bytes().is_some_and(|c| c[..] != shard.probe_channel[..]) {
                    shard.resub_left -= 1;
                    if shard.resub_left == 0 && shard.up {
                        self.emit_resub_gaps(s);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_message(&mut self, s: usize, channel: &[u8], payload: Bytes, now: Instant) {
        let header = match Header::decode(&payload) {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(shard = s, "cluster: not a herald envelope ({e}), ignored");
                return;
            }
        };
        if header.kind == Kind::Probe {
            let shard = &mut self.shards[s];
            if header.origin == self.node && channel == &shard.probe_channel[..] {
                if let Some((token, sent)) = shard.probe {
                    if token == header.seq {
                        shard.probe = None;
                        let rtt = now.duration_since(sent).as_micros() as u64;
                        self.metrics.set(Metric::ClusterProbeRttMicros, rtt);
                    }
                }
            }
            return;
        }
        self.metrics.inc(Metric::ClusterMessagesReceived);
        if header.origin == self.node {
            // Our own publish coming back.
            return;
        }
        let Some(name) = channel.strip_prefix(&self.prefix[..]).and_then(|t| std::str::from_utf8(t).ok()) else {
            return;
        };
        let Some((topic, _)) = self.topics.get_key_value(name) else { return };
        let topic = topic.clone();
        let seen = self.seq_in.entry(topic.clone()).or_default();
        let order = match seen.iter_mut().find(|(o, _)| *o == header.origin) {
            Some((_, last)) => {
                let order = envelope::check(Some(*last), header.seq);
                *last = header.seq;
                order
            }
            None => {
                seen.push((header.origin, header.seq));
                Order::InOrder
            }
        };
        if order == Order::Gap {
            self.gaps(vec![topic.clone()]);
        }
        let w = worker_for(&topic, self.peers.len());
        let payload = payload.slice(envelope::HEADER..);
        self.metrics.inc(Metric::ClusterForeignDelivered);
        self.send_worker(w, MeshMsg::Foreign(ForeignPublish { topic, kind: header.kind, payload }));
    }

    fn emit_resub_gaps(&mut self, s: usize) {
        let topics = std::mem::take(&mut self.shards[s].gap_topics);
        let topics: Vec<Arc<str>> = topics.into_iter().filter(|t| self.topics.contains_key(t)).collect();
        if !topics.is_empty() {
            tracing::info!(shard = s, topics = topics.len(), "cluster: resubscribed; gap notices sent");
            self.gaps(topics);
        }
    }

    /// Tells the subscribers of `topics` that messages were lost: each topic's worker queues a notice for its
    /// `/ws` subscribers in order with its messages; with `on_gap = close` every worker closes its raw ones.
    fn gaps(&mut self, topics: Vec<Arc<str>>) {
        self.metrics.add(Metric::ClusterGaps, topics.len() as u64);
        let workers = self.peers.len();
        let mut per: Vec<Vec<Arc<str>>> = vec![Vec::new(); workers];
        for t in &topics {
            per[worker_for(t, workers)].push(t.clone());
        }
        for (w, list) in per.into_iter().enumerate() {
            if !list.is_empty() {
                self.send_worker(w, MeshMsg::Gap(list.into()));
            }
        }
        if self.cfg.cluster.on_gap == GapPolicy::Close {
            let all: Arc<[Arc<str>]> = topics.into();
            for p in &self.peers {
                p.send_control(MeshMsg::GapClose(all.clone()));
            }
        }
    }

    fn send_worker(&mut self, w: usize, msg: MeshMsg) {
        if !self.overflow[w].is_empty() {
            self.overflow[w].push_back(msg);
            return;
        }
        match self.peers[w].try_send_data(msg) {
            Ok(()) => self.to_wake |= 1 << w,
            Err(m) => {
                self.overflow[w].push_back(m);
                self.to_wake |= 1 << w;
                self.paused = true;
            }
        }
    }

    fn retry_overflow(&mut self) {
        for w in 0..self.overflow.len() {
            while let Some(msg) = self.overflow[w].pop_front() {
                match self.peers[w].try_send_data(msg) {
                    Ok(()) => self.to_wake |= 1 << w,
                    Err(m) => {
                        self.overflow[w].push_front(m);
                        break;
                    }
                }
            }
        }
    }

    fn wake_workers(&mut self) {
        let mut mask = std::mem::take(&mut self.to_wake);
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            self.peers[w].wake();
        }
    }

    fn publish_metrics(&mut self) {
        let m = &mut self.metrics;
        m.set(Metric::ClusterQueueDepth, self.pending.load(Ordering::Relaxed) as u64);
        m.set(Metric::ClusterChannels, self.shards.iter().map(|s| s.channels.len() as u64).sum());
        m.set(Metric::ClusterLinksUp, self.shards.iter().filter(|s| s.up).count() as u64);
        m.set(Metric::ClusterShards, self.shards.len() as u64);
        m.publish(&self.shared.slots[self.slot]);
    }

    /// Every worker has exited: write what is queued (best effort, bounded by a short deadline), then close.
    fn shutdown(&mut self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        for s in 0..self.shards.len() {
            let _ = self.write_shard(s);
            while !self.shards[s].publ.out.is_empty() && self.shards[s].up && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                if self.shards[s].publ.flush().is_err() {
                    break;
                }
            }
            self.state.set_up(s, false);
        }
        self.publish_metrics();
        tracing::debug!("cluster bridge stopped");
    }
}

/// Appends SUBSCRIBE or UNSUBSCRIBE commands for `topics`' channels, [`SUB_BATCH`] channels per command. With
/// `by_slot` (sharded pub/sub) one command holds channels of one slot only, as Redis Cluster requires.
fn write_batches(out: &mut BytesMut, verb: &[u8], prefix: &[u8], topics: &[Arc<str>], by_slot: bool) {
    let channel = |t: &Arc<str>| [prefix, t.as_bytes()].concat();
    let mut groups: Vec<&[Arc<str>]> = Vec::new();
    let mut sorted: Vec<Arc<str>>;
    if by_slot {
        sorted = topics.to_vec();
        sorted.sort_by_cached_key(|t| slots::slot_of(&channel(t)));
        let mut start = 0;
        for i in 1..=sorted.len() {
            if i == sorted.len() || slots::slot_of(&channel(&sorted[i])) != slots::slot_of(&channel(&sorted[start])) {
                groups.push(&sorted[start..i]);
                start = i;
            }
        }
    } else {
        groups.push(topics);
    }
    for group in groups {
        for chunk in group.chunks(SUB_BATCH) {
            let channels: Vec<[&[u8]; 2]> = chunk.iter().map(|t| [prefix, t.as_bytes()]).collect();
            let mut args: Vec<&[&[u8]]> = Vec::with_capacity(chunk.len() + 1);
            let verb_parts: [&[u8]; 1] = [verb];
            args.push(&verb_parts);
            for c in &channels {
                args.push(c);
            }
            resp::command(out, &args);
        }
    }
}

/// The worker that carries `topic`'s foreign messages (so they keep their order).
fn worker_for(topic: &str, workers: usize) -> usize {
    (shard::fnv1a(topic.as_bytes()) % workers.max(1) as u64) as usize
}

fn resolve(url: &RedisUrl) -> Result<SocketAddr, LinkError> {
    (url.host.as_str(), url.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| LinkError::Resolve(url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_batched_into_few_commands() {
        let topics: Vec<Arc<str>> = (0..1100).map(|i| Arc::from(format!("t{i}"))).collect();
        let mut out = BytesMut::new();
        write_batches(&mut out, b"SUBSCRIBE", b"h:", &topics, false);
        let mut commands = 0;
        let mut channels = 0;
        while let Some(Value::Array(args)) = resp::decode(&mut out, 1 << 20).expect("valid RESP") {
            commands += 1;
            assert_eq!(args[0], Value::Bulk(Bytes::from_static(b"SUBSCRIBE")));
            channels += args.len() - 1;
            assert!(args[1..].iter().all(|a| a.as_bytes().is_some_and(|b| b.starts_with(b"h:t"))));
        }
        assert_eq!((commands, channels), (3, 1100), "512 + 512 + 76");
    }

    #[test]
    fn probe_channels_cannot_be_topic_channels() {
        let c = probe_channel(b"herald:", 0xab, 1, None);
        let name = std::str::from_utf8(&c[7..]).expect("ascii");
        assert!(crate::broker::topic::validate(name).is_err(), "{name} must be outside the topic charset");
    }
}
