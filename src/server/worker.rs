//! One worker's state: what it owns and decides on its core (its connections, their protocol state, its topic
//! index, outboxes, timers, its end of the mesh, its metrics), whichever driver waits and moves its bytes
//! (see [`super::driver`]).
//!
//! One loop turn, as both drivers run it: wait (or until the next timer tick); [`Worker::begin_turn`]; admit
//! accepted sockets; read and process what arrived (HTTP requests, WebSocket messages); then
//! [`Worker::end_turn`]: drain the mesh inbox; flush the topic index (coalesced batches to local subscribers
//! and other workers); wake peers once; send everything each connection has queued, one vectored write per
//! connection; run the timers; publish the metrics slot; step the graceful shutdown. Nothing here is shared
//! with other workers except through the mesh and [`Shared`].

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{IpAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use slab::Slab;

use super::compress::WorkerDeflate;
use super::conn::{
    Conn, Endpoint, Phase, DIRTY, PEER_EOF, PEER_HUP, READ_AGAIN, READ_PAUSED, SENDING, SHUT_WR, SWEEP, VIA_PROXY,
};
use super::driver::Io;
use super::loglimit::LogLimit;
use super::pool::ReadPool;
use super::timers::Timers;
use super::transport::{TlsConn, Transport};
use crate::broker::index::{Batch, ConnKey, Deliver, TopicIndex};
use crate::broker::mesh::{Inbox, MeshEnd, MeshMsg};
use crate::config::{Config, SlowConsumerPolicy};
use crate::metrics::{Counters, Metric, WorkerSlot};
use crate::protocol::auth::session::Lapse;
use crate::protocol::auth::{AuthPolicy, ConnAuth, WorkerAuth, CLOSE_UNAUTHORIZED};
use crate::protocol::close::CloseCode;
use crate::protocol::codec::DecodeLimits;
use crate::protocol::conn::{ConnSettings, Connection, Ending};
use crate::protocol::error::ProtocolError;
use crate::protocol::proxy;
use crate::protocol::Role;

/// Most bytes read from one connection per loop turn, so one busy publisher cannot starve the others.
const READ_BUDGET: usize = 256 * 1024;
/// Timer resolution: handshake, idle, ping and close deadlines are checked this often.
const TICK: Duration = Duration::from_millis(100);
/// Refused requests logged per second per worker (the rest are counted in the next line that gets out).
const REFUSAL_LOGS_PER_SECOND: u32 = 20;
/// A partial request head or frame up to this size is moved out of its read buffer between reads.
const SMALL_PARTIAL: usize = 2048;

/// State shared by every worker of a process: connection counts, the shutdown flag and the metric slots.
/// Touched per connection (accept, close) and per scrape, never per message.
#[derive(Debug)]
pub struct Shared {
    /// One metrics slot per worker.
    pub slots: Vec<WorkerSlot>,
    /// Open connections in the process (for `max_connections`).
    pub open: AtomicUsize,
    /// Open connections per peer IP (only kept when `max_connections_per_ip` is set).
    pub per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Set on SIGTERM/SIGINT (or `ServerHandle::shutdown`): drain and exit.
    pub draining: AtomicBool,
    /// Number of workers (for `/healthz`).
    pub workers: usize,
    /// The cluster's state (for `/healthz`), when `[cluster]` is on.
    pub cluster: Option<Arc<crate::cluster::ClusterState>>,
}

impl Shared {
    /// Shared state for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Shared {
            slots: (0..workers).map(|_| WorkerSlot::default()).collect(),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            workers,
            cluster: None,
        }
    }
}

/// A worker's listening sockets and what they speak.
#[derive(Debug)]
pub struct Listeners {
    /// The main listener (`server.listen`).
    pub main: std::net::TcpListener,
    /// Whether the main listener speaks TLS (TLS configured with no `tls.listen` of its own).
    pub main_tls: bool,
    /// The TLS listener beside the plain one (`tls.listen`).
    pub tls: Option<std::net::TcpListener>,
    /// The TLS configuration for new handshakes (when TLS is on).
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
}

/// A worker and everything it owns.
pub struct Worker {
    pub(super) id: usize,
    /// The driver: how this worker waits and moves bytes.
    pub(super) io: Io,
    /// The TLS configuration new handshakes use (swapped by a certificate reload).
    pub(super) tls_config: Option<Arc<rustls::ServerConfig>>,
    /// Where a read lands first (`read_buffer` bytes, zeroed once): plain bytes are copied from it to the
    /// connection's read buffer, ciphertext is decrypted from it.
    pub(super) read_scratch: Vec<u8>,
    pub(super) conns: Slab<Conn>,
    pub(super) index: TopicIndex,
    pub(super) mesh: MeshEnd,
    pub(super) inbox: Inbox,
    pub(super) shared: Arc<Shared>,
    pub(super) cfg: Arc<Config>,
    pub(super) settings: ConnSettings,
    pub(super) metrics: Counters,
    /// The auth policy (keys rotate by mesh message).
    pub(super) auth: AuthPolicy,
    /// Grants interned for this worker's connections, and the tokens it verified.
    pub(super) auth_mem: WorkerAuth,
    /// permessage-deflate: the worker's compressors and inflater, shared by its connections.
    pub(super) deflate: WorkerDeflate,
    pool: ReadPool,
    /// Receive memory held by this worker's connections (the sum of their `held`).
    recv_held: usize,
    pub(super) dirty: Vec<ConnKey>,
    read_again: Vec<ConnKey>,
    /// The inbox still held messages when this turn's budget ran out.
    inbox_backlog: bool,
    pub(super) now: Instant,
    /// Seconds since the Unix epoch at the start of this turn (for token expiry).
    pub(super) unix: u64,
    next_tick: Instant,
    /// When each connection next has a deadline: what a tick looks at.
    timers: Timers,
    /// Connections whose outbox was used since the last tick (`SWEEP`): the tick gives an empty one's memory
    /// back and counts the bytes still queued.
    swept: Vec<ConnKey>,
    drain: Drain,
    drain_deadline: Option<Instant>,
    /// Peers whose shutdown marker has arrived.
    peers_drained: usize,
    /// Connections not read while quiescing, read again once the WebSockets are closed.
    paused_reads: Vec<ConnKey>,
    /// The path of the request being answered (no query string: tokens can be there), for refusal logs.
    pub(super) req_path: String,
    /// The budget of refusal log lines.
    pub(super) refusal_log: LogLimit,
}

/// Where a worker is in the graceful shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// Serving.
    Running,
    /// Not accepting, not reading (so no new publishes), delivering what the other workers still send, until
    /// every peer's marker has arrived (or `quiesce_until`).
    Quiescing { quiesce_until: Instant },
    /// Every WebSocket has been sent 1001; flushing until empty or the deadline.
    Closing,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).field("conns", &self.conns.len()).finish_non_exhaustive()
    }
}

/// Delivers broadcast batches into subscribers' outboxes, applying the slow-consumer policy.
pub(super) struct Sink<'a> {
    pub(super) conns: &'a mut Slab<Conn>,
    pub(super) dirty: &'a mut Vec<ConnKey>,
    pub(super) metrics: &'a mut Counters,
    pub(super) cap: usize,
    pub(super) policy: SlowConsumerPolicy,
    /// Compresses a batch once for the subscribers that negotiated permessage-deflate.
    pub(super) deflate: &'a mut WorkerDeflate,
}

impl<'a> Sink<'a> {
    /// A sink over a worker's connections, applying `limits`' backpressure cap and slow-consumer policy.
    pub(super) fn new(
        conns: &'a mut Slab<Conn>,
        dirty: &'a mut Vec<ConnKey>,
        metrics: &'a mut Counters,
        limits: &crate::config::Limits,
        deflate: &'a mut WorkerDeflate,
    ) -> Self {
        Sink { conns, dirty, metrics, cap: limits.max_backpressure.bytes(), policy: limits.slow_consumer, deflate }
    }
}

impl Deliver for Sink<'_> {
    fn deliver_batch(&mut self, key: ConnKey, batch: &mut Batch<'_>, messages: u32) {
        // With compression off no connection negotiated it: no second look-up on the fan-out path.
        let bits = if self.deflate.enabled() {
            self.conns.get(key).and_then(Conn::core).and_then(|c| c.deflate_window())
        } else {
            None
        };
        match bits {
            Some(bits) => {
                let frames = self.deflate.batch_for(batch, bits, self.metrics);
                self.deliver(key, &frames, messages);
            }
            None => self.deliver(key, batch.plain, messages),
        }
    }

    fn deliver(&mut self, key: ConnKey, frames: &Bytes, messages: u32) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let Phase::WebSocket { core, .. } = &mut conn.phase else { return };
        if !core.can_send() {
            return;
        }
        // A subscriber with nothing queued always takes the batch (so one batch larger than the cap, e.g. a
        // max-size message, still goes out): the queue is bounded by the cap plus one batch.
        if !conn.outbox.is_empty() && conn.outbox.would_exceed(frames.len(), self.cap) {
            match self.policy {
                SlowConsumerPolicy::Drop => {
                    self.metrics.add(Metric::BackpressureDrops, u64::from(messages));
                    return;
                }
                SlowConsumerPolicy::Close => {
                    self.metrics.inc(Metric::BackpressureCloses);
                    core.close(CloseCode::POLICY, "slow consumer");
                }
            }
        } else {
            conn.outbox.push(frames.clone());
            self.metrics.add(Metric::Deliveries, u64::from(messages));
            self.metrics.add(Metric::MessagesOut, u64::from(messages));
        }
        mark_dirty(conn, key, self.dirty);
    }
}

/// Puts `key` in the flush list once per turn.
pub(super) fn mark_dirty(conn: &mut Conn, key: ConnKey, dirty: &mut Vec<ConnKey>) {
    if conn.flags & DIRTY == 0 {
        conn.flags |= DIRTY;
        dirty.push(key);
    }
}

impl Worker {
    /// Builds worker `id` around its driver, the TLS configuration (when TLS is on) and its end of the mesh
    /// (sending side, inbox).
    pub fn new(
        id: usize,
        io: Io,
        tls_config: Option<Arc<rustls::ServerConfig>>,
        (mesh, inbox): (MeshEnd, Inbox),
        shared: Arc<Shared>,
        cfg: Arc<Config>,
        auth: AuthPolicy,
    ) -> Self {
        let read_scratch = vec![0; cfg.limits.read_buffer.bytes()];
        let t = &cfg.timeouts;
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        let settings = ConnSettings {
            role: Role::Server,
            limits: DecodeLimits {
                max_frame_size: cfg.limits.max_frame_size.0,
                max_message_size: cfg.limits.max_message_size.0,
            },
            ping_interval: nonzero(t.ping_interval.0),
            idle_timeout: nonzero(t.idle_timeout.0),
            close_timeout: t.close_timeout.0,
        };
        let now = Instant::now();
        Worker {
            id,
            io,
            tls_config,
            read_scratch,
            conns: Slab::new(),
            index: TopicIndex::new(cfg.limits.max_topics_per_worker, cfg.limits.coalesce_limit.bytes()),
            mesh,
            inbox,
            shared,
            settings,
            metrics: Counters::default(),
            auth,
            auth_mem: WorkerAuth::new(cfg.auth.token_cache),
            deflate: WorkerDeflate::new(&cfg.compression),
            pool: ReadPool::new(cfg.limits.read_buffer.bytes(), now),
            recv_held: 0,
            dirty: Vec::new(),
            read_again: Vec::new(),
            inbox_backlog: false,
            now,
            unix: unix_now(),
            next_tick: now + TICK,
            timers: Timers::new(now, TICK),
            swept: Vec::new(),
            drain: Drain::Running,
            drain_deadline: None,
            peers_drained: 0,
            paused_reads: Vec::new(),
            req_path: String::new(),
            refusal_log: LogLimit::new(REFUSAL_LOGS_PER_SECOND, now),
            cfg,
        }
    }

    /// The start of a loop turn: the clocks are read once for the whole turn.
    pub(super) fn begin_turn(&mut self) {
        self.now = Instant::now();
        self.unix = unix_now();
    }

    /// Everything after the events of one turn, then the graceful shutdown's steps. Returns true when the
    /// worker has drained and its loop should end.
    pub(super) fn end_turn(&mut self) -> bool {
        self.after_events();
        if self.shared.draining.load(Ordering::Relaxed) && self.drain == Drain::Running {
            self.begin_drain();
        }
        if let Drain::Quiescing { quiesce_until } = self.drain {
            if self.peers_drained + 1 >= self.mesh.workers() || self.now >= quiesce_until {
                self.close_websockets();
            }
        }
        if let Some(deadline) = self.drain_deadline {
            if self.conns.is_empty() || self.now >= deadline {
                tracing::debug!(worker = self.id, left = self.conns.len(), "worker drained");
                self.metrics.set(Metric::ConnectionsOpen, 0);
                self.metrics.publish(&self.shared.slots[self.id]);
                return true;
            }
        }
        false
    }

    /// How long the driver may wait for events: not at all while work is left over from this turn, until the
    /// next timer tick otherwise.
    pub(super) fn poll_timeout(&self) -> Duration {
        if self.inbox_backlog || (!self.read_again.is_empty() && !self.mesh.is_stalled()) {
            return Duration::ZERO;
        }
        if self.mesh.is_stalled() {
            return Duration::from_millis(1);
        }
        self.next_tick.saturating_duration_since(Instant::now())
    }

    /// Everything after the events of one turn.
    fn after_events(&mut self) {
        self.drain_inbox();
        if !self.mesh.is_stalled() || !self.mesh.retry_overflow() {
            self.read_pending();
        }
        self.flush_index();
        if self.mesh.is_stalled() {
            self.mesh.retry_overflow();
        }
        self.mesh.wake_peers();
        self.flush_dirty();
        if self.now >= self.next_tick {
            self.tick();
            self.next_tick = self.now + TICK;
        }
        self.metrics.set(Metric::Subscriptions, self.index.subscriptions() as u64);
        self.metrics.set(Metric::Topics, self.index.topics() as u64);
        self.metrics.set(Metric::TopicsKnown, self.index.known_topics() as u64);
        self.metrics.publish(&self.shared.slots[self.id]);
    }

    pub(super) fn flush_index(&mut self) {
        let mut sink =
            Sink::new(&mut self.conns, &mut self.dirty, &mut self.metrics, &self.cfg.limits, &mut self.deflate);
        self.index.flush(&mut sink, &mut self.mesh);
        let full = self.mesh.full_events;
        if full > 0 {
            self.metrics.add(Metric::InboxFull, full);
            self.mesh.full_events = 0;
        }
    }

    fn drain_inbox(&mut self) {
        let mut budget = self.cfg.limits.inbox_capacity.max(64) * 2;
        while budget > 0 {
            let Some(msg) = self.inbox.try_recv() else { break };
            budget -= 1;
            let mut sink =
                Sink::new(&mut self.conns, &mut self.dirty, &mut self.metrics, &self.cfg.limits, &mut self.deflate);
            match msg {
                MeshMsg::Broadcast(batch) => self.index.deliver_remote(&batch, &mut sink),
                MeshMsg::Interest(i) => self.index.set_remote(&i.topic, i.worker, i.raw, i.json),
                MeshMsg::Publish(p) => {
                    sink.metrics.inc(Metric::Publishes);
                    let kind = if p.text { crate::cluster::Kind::Text } else { crate::cluster::Kind::Binary };
                    if crate::cluster::offer(&mut self.mesh, sink.metrics, &p.topic, kind, &p.payload).is_ok() {
                        self.index.publish(&p.topic, p.text, &p.payload, None, &mut sink, &mut self.mesh);
                    }
                }
                MeshMsg::Foreign(f) => self.on_foreign(&f),
                MeshMsg::Gap(topics) => self.on_gap(&topics),
                MeshMsg::GapClose(topics) => self.on_gap_close(&topics),
                MeshMsg::Drained(_) => self.peers_drained += 1,
                MeshMsg::Keys(keys) => {
                    tracing::info!(worker = self.id, keys = keys.len(), "auth keys rotated");
                    sink.metrics.inc(Metric::KeyReloads);
                    self.auth.set_keys(keys);
                    self.auth_mem.tokens.clear();
                }
                MeshMsg::Certificate(update) => self.take_certificate(update),
            }
        }
        // More may be waiting: come back without sleeping.
        self.inbox_backlog = budget == 0;
    }

    /// Takes a socket the driver accepted (from a TLS port when `tls`), within the connection limits, and
    /// returns the key it is stored under (`None` when it was refused or dropped).
    pub(super) fn admit(&mut self, mut stream: TcpStream, ip: IpAddr, tls: bool) -> Option<ConnKey> {
        self.metrics.inc(Metric::ConnectionsAccepted);
        let limits = &self.cfg.limits;
        let open = self.shared.open.fetch_add(1, Ordering::Relaxed);
        if open >= limits.max_connections {
            self.shared.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.inc(Metric::RejectedMaxConnections);
            refuse(&mut stream, &mut self.metrics, "connection limit reached", tls);
            return None;
        }
        // A trusted proxy carries many clients: it is counted under its own address until it names the
        // client, but not held to the per-address limit (its clients are, once named).
        let via_proxy = !self.cfg.server.trusted_proxies.is_empty() && self.cfg.server.trusted_proxies.contains(ip);
        if limits.max_connections_per_ip > 0 {
            let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= limits.max_connections_per_ip && !via_proxy {
                drop(per_ip);
                self.shared.open.fetch_sub(1, Ordering::Relaxed);
                self.metrics.inc(Metric::RejectedPerIp);
                refuse(&mut stream, &mut self.metrics, "per-address connection limit reached", tls);
                return None;
            }
            *n += 1;
        }
        let transport = match self.new_transport(tls) {
            Some(t) => t,
            None => {
                self.release_slot(ip);
                return None;
            }
        };
        // No TCP_NODELAY here: an accepted socket inherits it from the listener (`listener::bind_one`).
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if let Err(e) = self.io.admitted(key, &stream) {
            tracing::warn!(worker = self.id, "register failed: {e}");
            self.release_slot(ip);
            return None;
        }
        tracing::trace!(worker = self.id, key, %ip, via_proxy, "accepted");
        let conn = entry.insert(Conn::new(stream, ip, self.now + self.cfg.timeouts.handshake_timeout.0));
        if let Transport::Tls(_) = transport {
            self.metrics.inc(Metric::TlsOpen);
        }
        conn.transport = transport;
        if via_proxy {
            conn.flags |= VIA_PROXY;
        }
        self.metrics.inc(Metric::ConnectionsOpen);
        self.arm(key);
        Some(key)
    }

    fn release_slot(&self, ip: IpAddr) {
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        if self.cfg.limits.max_connections_per_ip > 0 {
            let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            uncount(&mut per_ip, ip);
        }
    }

    /// Makes `client` (named by the trusted proxy `key` came from) the connection's address: its per-address
    /// count moves there from the address it had, if `client` is under `max_connections_per_ip`.
    /// `Err(AtLimit)` leaves the address and the count where they were (the caller refuses the request).
    pub(super) fn adopt_client(&mut self, key: ConnKey, client: IpAddr) -> Result<(), AtLimit> {
        let limit = self.cfg.limits.max_connections_per_ip;
        let Some(conn) = self.conns.get_mut(key) else { return Ok(()) };
        if conn.ip == client {
            return Ok(());
        }
        if limit > 0 {
            let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if per_ip.get(&client).is_some_and(|&n| n >= limit) {
                return Err(AtLimit);
            }
            uncount(&mut per_ip, conn.ip);
            *per_ip.entry(client).or_insert(0) += 1;
        }
        tracing::debug!(worker = self.id, key, proxy = %conn.ip, client = %client, "client address from a proxy");
        conn.ip = client;
        Ok(())
    }

    /// With `proxy_protocol`, reads the PROXY header a trusted proxy must send first and takes the client
    /// address from it. Returns true when the header is taken and the request after it can be processed; a
    /// connection without a valid header is closed (counted, and logged within the refusal budget).
    fn take_proxy_header(&mut self, key: ConnKey) -> bool {
        let Some(conn) = self.conns.get_mut(key) else { return false };
        match proxy::parse_header(&conn.rbuf) {
            Ok(None) => false,
            Ok(Some((used, client))) => {
                let _ = conn.rbuf.split_to(used);
                conn.flags &= !VIA_PROXY;
                let Some(client) = client.map(|a| a.ip().to_canonical()) else { return true };
                if self.adopt_client(key, client).is_err() {
                    if let Some(Transport::Tls(_)) = self.conns.get(key).map(|c| &c.transport) {
                        // No handshake yet, so no way to say 503: closed, as at accept on a TLS port.
                        self.metrics.inc(Metric::RejectedPerIp);
                        if let Some(conn) = self.conns.get_mut(key) {
                            super::secure::count_handshake_end(conn, &mut self.metrics, Metric::TlsRefused);
                        }
                        self.close_now(key);
                    } else {
                        self.refuse_over_limit(key, client);
                    }
                    return false;
                }
                true
            }
            Err(e) => {
                let peer = conn.ip;
                self.metrics.inc(Metric::RejectedProxyHeader);
                if let Some(suppressed) = self.refusal_log.allow(self.now) {
                    tracing::info!(worker = self.id, %peer, reason = %e, suppressed, "connection refused: no valid PROXY header");
                }
                self.close_now(key);
                false
            }
        }
    }

    fn take_buffer(&mut self) -> BytesMut {
        self.pool.take()
    }

    fn give_back_buffer(&mut self, buf: BytesMut) {
        self.pool.give(buf);
    }

    /// Reads what the socket has (up to the budget) and processes it.
    pub(super) fn read_conn(&mut self, key: ConnKey) {
        if let Drain::Quiescing { .. } = self.drain {
            // Shutting down: nothing read now can be published safely; read it after the 1001s.
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.flags & READ_AGAIN == 0 {
                    conn.flags |= READ_AGAIN;
                    self.paused_reads.push(key);
                }
            }
            return;
        }
        if self.mesh.is_stalled() {
            // Backpressure to publishers: read nothing until the mesh has room again.
            self.schedule_read(key);
            return;
        }
        let cap = self.cfg.limits.max_backpressure.bytes();
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.flags & PEER_EOF != 0 {
            return;
        }
        let over = conn.outbox.len_bytes() > cap;
        if over && conn.flags & PEER_HUP == 0 {
            // This peer's own replies (responses, echoes, acks) are not being read: stop reading from it until
            // they are (flush_conn resumes). A peer that has hung up can add nothing past its socket buffer, so
            // that one is still read, to see its EOF.
            self.pause_reading(key);
            return;
        }
        let resumed = !over && conn.flags & READ_PAUSED != 0;
        conn.flags &= !READ_PAUSED;
        let read_size = self.cfg.limits.read_buffer.bytes();
        // A PROXY header comes before the TLS handshake: until it is taken, a TLS connection is read raw.
        let raw = conn.flags & VIA_PROXY != 0 && self.cfg.server.proxy_protocol;
        let mut buf = std::mem::take(&mut conn.rbuf);
        if buf.capacity() < read_size {
            // Idle, or holding a small partial request head: read into a pooled buffer.
            let mut pooled = self.take_buffer();
            pooled.extend_from_slice(&buf);
            buf = pooled;
        }
        let mut total = 0;
        let mut eof = false;
        let mut failed = false;
        let mut tls_failed = None;
        let before = buf.len();
        let Some(conn) = self.conns.get_mut(key) else { return };
        loop {
            if total >= READ_BUDGET {
                break;
            }
            let read = match conn.transport.tls_mut() {
                Some(tls) if !raw => match self.io.read(key, &conn.stream, &mut self.read_scratch) {
                    Ok(n) if !tls.started && TlsConn::is_plain_http(&self.read_scratch[..n]) => {
                        tls_failed = Some(super::secure::Failure::PlainHttp);
                        break;
                    }
                    Ok(n) => match tls.feed(&self.read_scratch[..n], &mut buf) {
                        Ok(_) if tls.session.peer_closed() => Ok(0),
                        Ok(_) => Ok(n),
                        Err(e) => {
                            tls_failed = Some(super::secure::Failure::Tls(e));
                            break;
                        }
                    },
                    Err(e) => Err(e),
                },
                _ => {
                    // Into the scratch buffer, then only what arrived is copied: growing the read buffer by
                    // `read_size` zeroed bytes before every read cost a 16 KiB memset per read (2.4% of the
                    // worker in the echo row, whose reads bring about 2 KB).
                    let read = self.io.read(key, &conn.stream, &mut self.read_scratch);
                    if let Ok(n) = read {
                        buf.extend_from_slice(&self.read_scratch[..n]);
                    }
                    read
                }
            };
            match read {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    total += n;
                    if n < read_size && conn.flags & PEER_HUP == 0 {
                        // Likely drained; the next edge will tell us if not. (After a hang-up no edge comes:
                        // read on to the EOF.)
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        self.metrics.add(Metric::BytesIn, total as u64);
        let fresh = buf.len() > before;
        conn.rbuf = buf;
        if total >= READ_BUDGET {
            self.schedule_read(key);
        }
        if let Some(failure) = tls_failed {
            self.end_tls(key, failure);
            return;
        }
        if !raw && self.after_tls_read(key) {
            return;
        }
        if fresh || resumed {
            self.process(key);
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        if failed {
            self.close_now(key);
            return;
        }
        if eof {
            conn.flags |= PEER_EOF;
            let pending = !conn.outbox.is_empty() || conn.core().is_some_and(|c| c.has_pending_control());
            if pending {
                // Say what is left (a response, our close frame), then go: flush_conn closes at the end.
                mark_dirty(conn, key, &mut self.dirty);
            } else {
                self.close_now(key);
            }
            return;
        }
        if conn.rbuf.is_empty() && !conn.core().is_some_and(|c| c.is_receiving()) {
            let buf = std::mem::take(&mut conn.rbuf);
            self.give_back_buffer(buf);
        } else if conn.rbuf.len() <= SMALL_PARTIAL && total < READ_BUDGET {
            // A partial request head or frame header (a slow or trickling client): keep its bytes in a buffer of
            // their size and hand the read buffer back, so that idle half-sent input does not hold a whole one
            // (not when the read budget ran out: that connection is read again at once).
            let small = BytesMut::from(&conn.rbuf[..]);
            let buf = std::mem::replace(&mut conn.rbuf, small);
            self.give_back_buffer(buf);
        }
        self.account_receive(key);
    }

    /// Re-counts what `key` holds for partly received input, and keeps the worker within
    /// `max_receive_memory` by closing the connections that hold the most.
    fn account_receive(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        let now_held = u32::try_from(conn.receive_memory()).unwrap_or(u32::MAX);
        self.recv_held = self.recv_held - conn.held as usize + now_held as usize;
        conn.held = now_held;
        let budget = self.cfg.limits.max_receive_memory.bytes();
        while self.recv_held > budget {
            let Some((victim, _)) = self.conns.iter().filter(|(_, c)| c.held > 0).max_by_key(|(_, c)| c.held) else {
                break;
            };
            self.metrics.inc(Metric::ReceiveMemoryLimit);
            tracing::debug!(worker = self.id, key = victim, held = self.recv_held, "receive budget exceeded");
            let Some(conn) = self.conns.get_mut(victim) else { break };
            match &mut conn.phase {
                Phase::WebSocket { core, .. } => {
                    // Say why, best effort, then free its memory at once.
                    core.close(CloseCode::POLICY, "receive budget exceeded");
                    self.flush_conn(victim);
                }
                Phase::Http { .. } => {
                    super::secure::write_last_words(conn, RECEIVE_BUDGET);
                    self.metrics.inc(Metric::Failed503);
                }
                Phase::Closing { .. } => {}
            }
            self.close_now(victim);
        }
    }

    /// Stops reading `key` until its queued output is back under `max_backpressure` (counted once per pause).
    fn pause_reading(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.flags & READ_PAUSED == 0 {
                conn.flags |= READ_PAUSED;
                self.metrics.inc(Metric::ReadPauses);
            }
        }
    }

    fn schedule_read(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.flags & READ_AGAIN == 0 {
                conn.flags |= READ_AGAIN;
                self.read_again.push(key);
            }
        }
    }

    fn read_pending(&mut self) {
        for key in std::mem::take(&mut self.read_again) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.flags &= !READ_AGAIN;
                self.read_conn(key);
            }
        }
    }

    /// Acts on what `key` has read, then arms its timer for whatever deadline that gave it (an upgrade, a
    /// closing answer, a close sent).
    fn process(&mut self, key: ConnKey) {
        self.process_input(key);
        self.arm(key);
    }

    /// Acts on the bytes in the connection's read buffer according to its phase.
    fn process_input(&mut self, key: ConnKey) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return };
            match conn.phase {
                Phase::Http { .. } => {
                    if conn.flags & VIA_PROXY != 0 && self.cfg.server.proxy_protocol {
                        if !self.take_proxy_header(key) || !self.feed_after_proxy(key) {
                            return;
                        }
                        continue;
                    }
                    if conn.outbox.len_bytes() > self.cfg.limits.max_backpressure.bytes() {
                        // Pipelined requests whose responses are not being read: the rest waits (in the buffer
                        // and the socket) until the responses drain.
                        self.pause_reading(key);
                        return;
                    }
                    if !self.process_http(key) {
                        return;
                    }
                    // Upgraded, or a keep-alive request answered: go on with the rest of the buffer.
                }
                Phase::WebSocket { .. } => {
                    self.process_ws(key);
                    return;
                }
                Phase::Closing { .. } => {
                    conn.rbuf.clear();
                    return;
                }
            }
        }
    }

    /// Writes out every connection queued this turn.
    fn flush_dirty(&mut self) {
        let mut i = 0;
        // Flushing can queue more (a close frame after a pong made room); loop until the list is stable.
        while i < self.dirty.len() {
            let key = self.dirty[i];
            i += 1;
            if let Some(conn) = self.conns.get_mut(key) {
                conn.flags &= !DIRTY;
                self.flush_conn(key);
            }
        }
        self.dirty.clear();
    }

    /// Pumps pending control frames into the outbox, writes what is queued, and handles the end of life.
    ///
    /// A pong waiting for room in the outbox is pumped again only after a write made progress: when the socket
    /// is full it waits for the WRITABLE edge like any other byte (re-queueing the connection instead would
    /// spin the worker on a peer that never reads).
    pub(super) fn flush_conn(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.flags & SWEEP == 0 {
                conn.flags |= SWEEP;
                self.swept.push(key);
            }
        }
        self.flush_queued(key);
        // A flush moves a deadline earlier only when it ends something: our close frame went out (the close
        // timeout starts) or a closing HTTP answer is queued. A subscriber's ordinary flush arms nothing.
        if self.conns.get(key).is_some_and(|c| !c.can_send()) {
            self.arm(key);
        }
    }

    /// [`Worker::flush_conn`]'s work: the control frames, the writes and the end of life.
    fn flush_queued(&mut self, key: ConnKey) {
        loop {
            self.move_control(key);
            let Some(conn) = self.conns.get_mut(key) else { return };
            if conn.says_nothing_more()
                && conn.flags & SHUT_WR == 0
                && !conn.core().is_some_and(|c| c.has_pending_control())
            {
                // The last frames and our close_notify go out in one write.
                if !super::secure::seal_last_words(conn) {
                    self.close_now(key);
                    return;
                }
            }
            let Some(conn) = self.conns.get_mut(key) else { return };
            let start = conn.outbox.len_bytes();
            if !self.write_queued(key) {
                return;
            }
            let Some(conn) = self.conns.get_mut(key) else { return };
            let progressed = conn.outbox.len_bytes() < start;
            if !(progressed && conn.core().is_some_and(|c| c.has_pending_control())) {
                break;
            }
        }
        if self.conns.get(key).is_some_and(|c| c.is_finished() && c.flags & SHUT_WR == 0) && !self.say_close_notify(key)
        {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else { return };
        if conn.output_empty() {
            self.io.write_drained(key, &conn.stream, &mut conn.flags);
        }
        if conn.flags & PEER_EOF != 0 && conn.output_empty() {
            // The peer is gone and we have said everything we could.
            self.close_now(key);
            return;
        }
        if conn.is_finished() && conn.flags & SHUT_WR == 0 && conn.output_empty() {
            conn.flags |= SHUT_WR;
            let _ = conn.stream.shutdown(std::net::Shutdown::Write);
        }
        if conn.flags & READ_PAUSED != 0 && conn.outbox.len_bytes() <= self.cfg.limits.max_backpressure.bytes() {
            // Reading was paused while this peer's replies piled up (read_conn clears the flag and goes on with
            // what is already buffered).
            self.schedule_read(key);
        }
    }

    /// Writes what `key` has queued until the queue is empty or the socket is full (then registers for
    /// WRITABLE). Returns false when the write failed and the connection was closed.
    ///
    /// Over TLS the pending records go first; only once they are all out is the whole outbox sealed (one call:
    /// frames share records), so a peer that does not read leaves plaintext in its outbox, where
    /// `max_backpressure` and the slow-consumer policy apply, not ciphertext in the session.
    pub(super) fn write_queued(&mut self, key: ConnKey) -> bool {
        loop {
            let Some(conn) = self.conns.get_mut(key) else { return false };
            if conn.flags & SENDING != 0 {
                // The kernel still has our last send: the rest follows its completion.
                return true;
            }
            // Everything this connection will ever send is queued (the last frames, and over TLS our
            // close_notify): once it is written, flush_conn shuts the socket down for writing right away.
            let fin_follows = conn.says_nothing_more() && conn.transport.tls().is_none_or(|t| t.notified);
            let written = match &mut conn.transport {
                Transport::Plain if conn.outbox.is_empty() => return true,
                Transport::Plain => {
                    self.io.send_outbox(key, &conn.stream, &mut conn.outbox, &mut conn.flags, fin_follows)
                }
                Transport::Tls(tls) if tls.joins_outbox(&conn.outbox) => {
                    // A few records the session made by itself (the tickets after a handshake, a key
                    // update) and the first frames (the 101 that follows them): one write, not two.
                    if conn.outbox.write_to(&mut tls.session.sealer()).is_err() {
                        self.close_now(key);
                        return false;
                    }
                    continue;
                }
                Transport::Tls(tls) if tls.session.wants_write() => {
                    self.io.send_ciphertext(key, &conn.stream, &mut tls.session, &mut conn.flags, fin_follows)
                }
                Transport::Tls(_) if conn.outbox.is_empty() => return true,
                Transport::Tls(tls) => {
                    if conn.outbox.write_to(&mut tls.session.sealer()).is_err() {
                        self.close_now(key);
                        return false;
                    }
                    continue;
                }
            };
            match written {
                Ok(0) => return true,
                Ok(n) => {
                    self.metrics.add(Metric::BytesOut, n as u64);
                    self.metrics.inc(Metric::Writes);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait_writable(key);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close_now(key);
                    return false;
                }
            }
        }
    }

    /// A send the driver handed to the kernel has completed (uring): `written` bytes of the outbox are gone
    /// (`from_outbox`), or all of the ciphertext; the connection is flushed again at the end of the turn. A
    /// failed send closes the connection.
    pub(super) fn sent(&mut self, key: ConnKey, result: io::Result<usize>, from_outbox: bool) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        conn.flags &= !SENDING;
        match result {
            Ok(n) if n > 0 => {
                if from_outbox {
                    conn.outbox.consume(n);
                }
                self.metrics.add(Metric::BytesOut, n as u64);
                self.metrics.inc(Metric::Writes);
                mark_dirty(conn, key, &mut self.dirty);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => {
                mark_dirty(conn, key, &mut self.dirty);
            }
            _ => self.close_now(key),
        }
    }

    /// Asks the driver to come back when `key` has room: its last write would have blocked.
    pub(super) fn wait_writable(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        self.io.wait_writable(key, &conn.stream, &mut conn.flags);
    }

    /// Moves the core's pending control frames (pong, ping, close) into the outbox, and queues the connection
    /// for this turn's flush if any moved.
    pub(super) fn pump_control(&mut self, key: ConnKey) {
        if self.move_control(key) {
            if let Some(conn) = self.conns.get_mut(key) {
                mark_dirty(conn, key, &mut self.dirty);
            }
        }
    }

    /// Moves the core's pending control frames into the outbox; a pong only while the outbox has room for it
    /// under `max_backpressure`. Returns whether any moved.
    fn move_control(&mut self, key: ConnKey) -> bool {
        let cap = self.cfg.limits.max_backpressure.bytes();
        let Some(conn) = self.conns.get_mut(key) else { return false };
        let Phase::WebSocket { core, .. } = &mut conn.phase else { return false };
        let mut moved = false;
        loop {
            let room = conn.outbox.len_bytes() + 131 <= cap;
            let Some(frame) = core.poll_control(self.now, &self.settings, room) else { break };
            if frame.len() >= 2 && frame[0] == 0x88 {
                let code = if frame.len() >= 4 { u16::from_be_bytes([frame[2], frame[3]]) } else { 1005 };
                if code != 1005 {
                    self.metrics.inc(Metric::close_code(code));
                }
            }
            conn.outbox.push(frame);
            moved = true;
        }
        moved
    }

    /// Drops a connection at once: unsubscribes it, frees its slot.
    pub(super) fn close_now(&mut self, key: ConnKey) {
        if !self.conns.contains(key) {
            return;
        }
        self.tls_gone(key);
        let mut conn = self.conns.remove(key);
        if let Some(core) = conn.core() {
            let (by, code) = match core.ending() {
                Some(Ending::PeerClosed(code)) => ("peer", code.map_or(1005, |c| c.0)),
                Some(Ending::WeClosed(code)) => ("server", code.0),
                Some(Ending::Failed(e)) => {
                    if matches!(e, ProtocolError::InvalidCompressed | ProtocolError::InflatedTooLarge { .. }) {
                        self.metrics.inc(Metric::InflateErrors);
                    }
                    ("server", e.close_code().0)
                }
                None => ("gone", 1006),
            };
            tracing::debug!(worker = self.id, key, peer = %conn.ip, by, code, "websocket closed");
        } else {
            tracing::trace!(worker = self.id, key, peer = %conn.ip, "connection closed");
        }
        self.io.closing(key, &conn.stream);
        if let Phase::WebSocket { endpoint, .. } = &conn.phase {
            self.metrics.sub(Metric::WebSocketsOpen, 1);
            match endpoint {
                Endpoint::Sub(sub) => self.index.unsubscribe(*sub, key),
                Endpoint::Json(json) => {
                    for &sub in &json.subs {
                        self.index.unsubscribe(sub, key);
                    }
                }
                Endpoint::Echo | Endpoint::Pub(_) | Endpoint::SubPending(_) => {}
            }
        }
        self.recv_held -= conn.held as usize;
        let buf = std::mem::take(&mut conn.rbuf);
        if buf.capacity() > 0 {
            self.give_back_buffer(buf);
        }
        self.release_slot(conn.ip);
        self.metrics.sub(Metric::ConnectionsOpen, 1);
    }

    /// Timers: handshake deadlines, pings, idle timeouts, close waits and lingers, for the connections whose
    /// entry in [`Timers`] has come up; then the outboxes used since the last tick.
    fn tick(&mut self) {
        let now = self.now;
        let mut due = Vec::new();
        while let Some((key, tick)) = self.timers.pop_due(now) {
            if let Some(conn) = self.conns.get_mut(key).filter(|c| c.timer_at == tick) {
                conn.timer_at = 0;
                due.push(key);
            }
        }
        self.metrics.add(Metric::TimerChecks, due.len() as u64);
        let mut expired = Vec::new();
        let mut touched = Vec::new();
        for &key in &due {
            if let Some(conn) = self.conns.get_mut(key) {
                if check_deadlines(conn, now, self.unix, &self.settings, &mut self.metrics) {
                    expired.push(key);
                } else if conn.core().is_some_and(Connection::has_pending_control) {
                    touched.push(key);
                }
            }
        }
        let queued = self.sweep_outboxes();
        self.metrics.set(Metric::OutboxBytes, queued);
        self.pool.trim(now);
        self.metrics.set(Metric::PooledReadBuffers, self.pool.len() as u64);
        self.metrics.set(Metric::ReceiveBytes, self.recv_held as u64);
        for key in expired {
            self.close_now(key);
        }
        for key in touched {
            if let Some(conn) = self.conns.get_mut(key) {
                mark_dirty(conn, key, &mut self.dirty);
            }
        }
        // Not before the next tick: a deadline that is still due (an auth lapse that cannot be said yet) is
        // looked at again then, as before, and this loop cannot come back to it.
        let soonest = now + TICK;
        for key in due {
            let Some(conn) = self.conns.get_mut(key) else { continue };
            if let Some(at) = conn.next_deadline(&self.settings, now, self.unix) {
                self.timers.arm(&mut conn.timer_at, key, at.max(soonest));
            }
        }
        self.flush_dirty();
        if self.timers.len() > 2 * self.conns.len() + 1024 {
            let conns = &self.conns;
            self.timers.retain(|key, tick| conns.get(key).is_some_and(|c| c.timer_at == tick));
        }
        super::trim::on_tick(self);
    }

    /// The outboxes used since the last tick: an empty one gives its memory back (a busy subscriber keeps its
    /// small queue between messages, an idle one holds none), one still holding bytes stays on the list.
    /// Returns the bytes queued.
    fn sweep_outboxes(&mut self) -> u64 {
        let mut queued = 0u64;
        let mut kept = Vec::new();
        for key in std::mem::take(&mut self.swept) {
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.flags & SWEEP != 0) else { continue };
            conn.flags &= !SWEEP;
            conn.outbox.release_if_empty();
            if !conn.outbox.is_empty() {
                queued += conn.outbox.len_bytes() as u64;
                kept.push(key);
            }
        }
        for &key in &kept {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.flags |= SWEEP;
            }
        }
        self.swept = kept;
        queued
    }

    /// Makes sure the timer looks at `key` by its next deadline.
    fn arm(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(key) else { return };
        if let Some(at) = conn.next_deadline(&self.settings, self.now, self.unix) {
            self.timers.arm(&mut conn.timer_at, key, at);
        }
    }

    /// Shutdown, first step: stop accepting and reading (so this worker publishes nothing more), send what is
    /// coalesced, then tell every peer so with a marker queued behind everything sent to it. The WebSockets are
    /// closed once every peer's marker has arrived, so that no publish acknowledged anywhere is lost.
    fn begin_drain(&mut self) {
        let shutdown = self.cfg.timeouts.shutdown_timeout.0;
        self.drain_deadline = Some(self.now + shutdown);
        self.drain = Drain::Quiescing { quiesce_until: self.now + shutdown / 4 };
        self.io.stop_accepting();
        self.flush_index();
        self.mesh.send_drained();
        self.mesh.wake_peers();
        let idle: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Http { .. }) && c.rbuf.is_empty() && c.outbox.is_empty())
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.close_now(key);
        }
        self.flush_dirty();
    }

    /// Shutdown, second step: deliver what the peers sent before their markers, then say 1001 to every
    /// WebSocket and read again (for the close replies).
    fn close_websockets(&mut self) {
        self.drain_inbox();
        self.flush_index();
        self.drain = Drain::Closing;
        for (key, conn) in self.conns.iter_mut() {
            if let Phase::WebSocket { core, .. } = &mut conn.phase {
                core.close(CloseCode::GOING_AWAY, "server shutting down");
                mark_dirty(conn, key, &mut self.dirty);
            }
        }
        self.flush_dirty();
        for key in std::mem::take(&mut self.paused_reads) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.flags &= !READ_AGAIN;
            }
            self.schedule_read(key);
        }
    }
}

/// What a tick does for one connection that has a deadline due: closes what timed out (returns true: the
/// caller closes it), says 4401/4403 for a lapsed auth, runs the WebSocket core's idle, ping and close
/// timers.
fn check_deadlines(conn: &mut Conn, now: Instant, unix: u64, settings: &ConnSettings, metrics: &mut Counters) -> bool {
    match &mut conn.phase {
        Phase::Http { deadline } => {
            if now >= *deadline {
                metrics.inc(Metric::HandshakeTimeouts);
                if conn.transport.is_handshaking() {
                    // A TLS client that has not finished its handshake cannot read an HTTP answer.
                    super::secure::count_handshake_end(conn, metrics, Metric::TlsTimeout);
                } else if !conn.rbuf.is_empty() {
                    // A request was started but not finished in time: say so (best effort), then go.
                    super::secure::write_last_words(conn, REQUEST_TIMEOUT);
                }
                return true;
            }
        }
        Phase::Closing { deadline } => return now >= *deadline,
        Phase::WebSocket { core, .. } => {
            if let Some(lapse) = conn.auth.lapsed(now, unix) {
                if core.can_send() {
                    metrics.inc(match lapse {
                        Lapse::Timeout => Metric::AuthTimeouts,
                        Lapse::Expired => Metric::AuthExpired,
                    });
                    core.close(CloseCode(CLOSE_UNAUTHORIZED), lapse.reason());
                    conn.auth = ConnAuth::Off;
                }
            }
            if core.poll_timeout(settings).is_some_and(|t| now >= t) {
                core.handle_timeout(now, settings);
                return core.is_expired(now);
            }
        }
    }
    false
}

/// A client already at `max_connections_per_ip`.
#[derive(Debug)]
pub(super) struct AtLimit;

/// Takes one connection off `ip`'s count.
fn uncount(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(&ip);
        }
    }
}

/// Seconds since the Unix epoch (for token expiry), from the system clock.
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a client whose request body does not fit in the worker's receive budget is told.
const RECEIVE_BUDGET: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 24\r\nConnection: close\r\n\r\nreceive budget exceeded\n";

/// What a client that started a request but did not finish it within `handshake_timeout` is told.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nrequest timeout\n";

/// Answers a connection refused at accept with 503 and closes it. What the client already sent is read first,
/// so that closing does not reset the connection before the answer is read. A connection to a TLS port is
/// closed without an answer: an HTTP status would need a whole handshake, which is what an overloaded server
/// must not spend (the client sees the connection end, as with any TLS server at its limit).
fn refuse(stream: &mut TcpStream, metrics: &mut Counters, why: &str, tls: bool) {
    if tls {
        metrics.inc(Metric::TlsRefused);
        let _ = stream.shutdown(std::net::Shutdown::Both);
        return;
    }
    let mut scratch = [0u8; 4096];
    let _ = stream.read(&mut scratch);
    let mut out = Vec::with_capacity(160);
    crate::protocol::handshake::write_response(&mut out, 503, "text/plain", format!("{why}\n").as_bytes(), true);
    let _ = std::io::Write::write(stream, &out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    metrics.inc(Metric::Failed503);
}
