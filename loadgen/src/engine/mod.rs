//! The client engine: `--threads` mio event loops, each pinned to a core and owning a slab of connections,
//! driven through phases by the main thread.
//!
//! A worker dials its share of the connections at its share of `--connect-rate`, runs the opening handshake
//! (herald's client core, see [`crate::client`]), then reads every open connection into one reused per-thread
//! buffer (256 KiB by default) and walks the frames in place ([`crate::scan`]): no allocation or copy per
//! message. A message's receive time is the kernel's receive timestamp of the newest segment in its read
//! ([`RxTime::Kernel`], the default), or one clock read after each `read` call ([`RxTime::Read`]); either way
//! every message of one read shares it.
//!
//! Before dialing, each worker builds its state on its own thread, minting its connections' tokens (see
//! [`crate::auth`]), so that neither shows in connect times; [`spawn`] returns once every worker is ready.
//! A connection counts as open once its upgrade is done and, on herald's JSON endpoint, the requests it
//! makes first (auth message, subscribe) are acked.
//!
//! Phases ([`Phase`]), set by the main thread in [`Shared::phase`]: prepare, connect, probe (publishers send
//! probe messages until each subscriber saw one from every publisher of its topic), run (warm-up, measured
//! window, grace), finish. Workers share nothing per message: per-thread counters are published with relaxed stores
//! once per loop turn, latency histograms once a second under a per-thread mutex, and the closed-loop window
//! through one atomic per (thread, publisher).

use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::Token;

use crate::auth::Auth;
use crate::client::{classify_io, Handshake};
use crate::echo::EchoLocal;
use crate::fanout::FanoutLocal;
use crate::plan::Target;
use crate::tls::{ClientTls, Stream};

mod worker;

use crate::scan::Scanner;
use crate::stats::{self, Failure, Failures, RecvCounters};
pub use worker::Worker;

/// The timer's token.
const TIMER: Token = Token(usize::MAX - 1);
/// Housekeeping period: timeouts, probes, confirmations, progress.
const TICK_NS: u64 = 10_000_000;
/// Most connections dialed in one loop turn.
const DIAL_BATCH: usize = 256;

/// Engine settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where to connect: the first `--url` (what reports name, and the only target of `soak`).
    pub target: Target,
    /// Every endpoint connections are dealt over: the `--url` list, then the `--pub-url` list (publishers
    /// only); see [`crate::plan::endpoint_of`]. `targets[0]` is `target`.
    pub targets: Vec<Target>,
    /// How many of `targets` came from `--url` (the rest from `--pub-url`).
    pub sub_targets: usize,
    /// Worker threads.
    pub threads: usize,
    /// Cores to pin the workers to (worker `i` on `cpus[i % len]`); `None`: no pinning.
    pub cpus: Option<Vec<usize>>,
    /// New connections per second over all threads (0: as fast as possible).
    pub connect_rate: f64,
    /// Longest time from dialing to a completed handshake.
    pub connect_timeout: Duration,
    /// Source addresses to spread connections over (empty: the kernel's choice).
    pub source_ips: Vec<IpAddr>,
    /// Bytes per `read` call (the per-thread receive buffer).
    pub read_size: usize,
    /// Where a message's receive time comes from.
    pub rx_time: RxTime,
    /// Tokens and their carrier (`None`: no authentication).
    pub auth: Option<Arc<Auth>>,
    /// The `Origin` header sent with every upgrade.
    pub origin: Option<String>,
    /// `wss://`: the TLS settings (`None`: plain `ws://`).
    pub tls: Option<Arc<ClientTls>>,
    /// `--compress`: offer permessage-deflate and inflate what arrives compressed.
    pub compress: bool,
}

/// Where a message's receive time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RxTime {
    /// The kernel's receive timestamp of the newest segment in each read (`SO_TIMESTAMPNS`): the time the
    /// data reached loadgen's socket, whatever loadgen was busy with. Conservative for older data in the read.
    Kernel,
    /// The clock read once after each `read` call: includes the time loadgen took to get to that socket.
    Read,
}

/// Run phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Workers build their state (and mint tokens); nothing is dialed yet.
    Prepare = 0,
    /// Dialing and handshaking.
    Connect = 1,
    /// Publishers send probes until every subscriber is confirmed.
    Probe = 2,
    /// Warm-up, measured window and grace period (times in [`Shared`]).
    Run = 3,
    /// Close everything and report.
    Finish = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Prepare,
            1 => Phase::Connect,
            2 => Phase::Probe,
            3 => Phase::Run,
            _ => Phase::Finish,
        }
    }
}

/// One worker's live counters, read by the main thread for progress and phase decisions. On its own cache
/// lines so that workers never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Progress {
    /// Connections open now.
    pub open: AtomicUsize,
    /// Connections that completed their handshake (ever).
    pub connected: AtomicUsize,
    /// Connections that failed before opening.
    pub failed: AtomicUsize,
    /// Open connections that ended.
    pub closed: AtomicUsize,
    /// Subscribers confirmed by probes (recomputed during the probe phase).
    pub confirmed: AtomicUsize,
    /// Subscribers that can be confirmed (open, with an open publisher on their topic).
    pub confirmable: AtomicUsize,
    /// Times `confirmed` and `confirmable` were recomputed.
    pub probe_rounds: AtomicU64,
    /// Data messages received.
    pub received: AtomicU64,
    /// Measured messages received.
    pub measured: AtomicU64,
    /// Messages published.
    pub published: AtomicU64,
    /// Messages known lost so far: skipped by a gap and not arrived late since (live, for `loadgen soak`).
    pub lost: AtomicU64,
    /// Measured deliveries still missing once every publisher is done (`u64::MAX`: not computed yet).
    pub outstanding: AtomicU64,
}

/// What a worker hands the main thread once a second: the latencies recorded since the last hand-over.
#[derive(Debug)]
pub struct Interval {
    /// Latencies of measured messages received in the interval.
    pub hist: Histogram<u64>,
}

/// State shared by the main thread and the workers.
#[derive(Debug)]
pub struct Shared {
    /// The current [`Phase`].
    pub phase: AtomicU8,
    /// Publishing starts (CLOCK_MONOTONIC ns); valid once the phase is Run.
    pub t0_ns: AtomicU64,
    /// The measured window starts.
    pub measure_ns: AtomicU64,
    /// The measured window ends (publishers stop).
    pub end_ns: AtomicU64,
    /// Per worker.
    pub progress: Vec<Progress>,
    /// Per worker.
    pub interval: Vec<Mutex<Interval>>,
    /// Publishers (fan-out only): `acked[thread * pubs + p]` is the lowest "next sequence" among that
    /// thread's live subscribers of p's topic (`u64::MAX`: none).
    pub acked: Vec<AtomicU64>,
    /// Per publisher: first measured sequence, set when it finishes.
    pub pub_first: Vec<AtomicU64>,
    /// Per publisher: one past the last sequence sent, set when it finishes.
    pub pub_end: Vec<AtomicU64>,
    /// Per publisher: whether its connection is open (for probe confirmation).
    pub pub_open: Vec<AtomicU8>,
    /// Publishers finished.
    pub pubs_done: AtomicUsize,
    /// Workers built and ready to dial.
    pub ready: AtomicUsize,
}

impl Shared {
    /// Shared state for `threads` workers and `pubs` publishers.
    pub fn new(threads: usize, pubs: usize) -> Shared {
        Shared {
            phase: AtomicU8::new(Phase::Prepare as u8),
            t0_ns: AtomicU64::new(u64::MAX),
            measure_ns: AtomicU64::new(u64::MAX),
            end_ns: AtomicU64::new(u64::MAX),
            progress: (0..threads).map(|_| Progress::default()).collect(),
            interval: (0..threads).map(|_| Mutex::new(Interval { hist: stats::new_histogram() })).collect(),
            acked: (0..threads * pubs).map(|_| AtomicU64::new(0)).collect(),
            pub_first: (0..pubs).map(|_| AtomicU64::new(0)).collect(),
            pub_end: (0..pubs).map(|_| AtomicU64::new(0)).collect(),
            pub_open: (0..pubs).map(|_| AtomicU8::new(0)).collect(),
            pubs_done: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
        }
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase` (the times must be stored before moving to Run).
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Release);
    }

    /// Sum of one progress field over workers.
    pub fn sum(&self, f: impl Fn(&Progress) -> u64) -> u64 {
        self.progress.iter().map(f).sum()
    }
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A subscriber, by index among this worker's subscribers.
    Sub(u32),
    /// A publisher, by index among this worker's publishers.
    Pub(u32),
    /// An idle connection (the `conns` scenario), by index.
    Idle(u32),
    /// An echo connection, by index among this worker's echo connections.
    Echo(u32),
}

/// One connection to open: what it is for, where, and what it asks for once upgraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// Its role.
    pub kind: Kind,
    /// Its number in the scenario (the `{conn}` of a minted token's subject).
    pub index: usize,
    /// The request path (before an auth query parameter).
    pub path: String,
    /// On herald's JSON endpoint: requests made after the upgrade are answered, and the answers awaited.
    pub json: bool,
    /// JSON: the topic to subscribe to before the connection counts as open.
    pub subscribe: Option<String>,
    /// Its token (filled in by the worker when the run authenticates).
    pub token: Option<Arc<str>>,
}

impl Dial {
    /// A raw connection of `kind`, number `index`, to `path`.
    pub fn raw(kind: Kind, index: usize, path: String) -> Dial {
        Dial { kind, index, path, json: false, subscribe: None, token: None }
    }

    /// A connection of `kind`, number `index`, to herald's JSON endpoint at `path`, subscribing to `topic`.
    pub fn json(kind: Kind, index: usize, path: String, subscribe: Option<String>) -> Dial {
        Dial { kind, index, path, json: true, subscribe, token: None }
    }
}

/// Where a connection is in its life.
#[derive(Debug)]
enum State {
    /// Connecting (until the socket turns writable), then writing the request and reading the response.
    Handshaking(Box<(Handshake, Dial)>),
    /// Upgraded, waiting for the acks of this many requests (JSON auth message, subscribe).
    Setup {
        /// Replies still to come.
        awaiting: u32,
        /// The token to put in requests (`--auth-per-message`).
        message_token: Option<Arc<str>>,
    },
    Open,
}

/// One client connection.
#[derive(Debug)]
pub struct Conn {
    /// The socket, and the TLS session on it for `wss://`: the only part where the two differ.
    pub(crate) stream: Stream,
    pub(crate) kind: Kind,
    /// Speaks herald's JSON protocol: text replies are classified, not counted as messages.
    pub(crate) json: bool,
    state: State,
    dialed_ns: u64,
    scanner: Scanner,
    /// permessage-deflate with a server that keeps its context: this connection's own inflater (`None`: the
    /// worker's, reset per message, or nothing was negotiated).
    inflater: Option<Box<crate::inflate::MessageInflater>>,
    /// Bytes to write (publisher frames, pongs, close replies), from `out_pos`.
    pub(crate) out: Vec<u8>,
    pub(crate) out_pos: usize,
    /// The last write hit `WouldBlock`: wait for WRITABLE.
    pub(crate) write_blocked: bool,
}

impl Conn {
    /// Whether the handshake is done.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Bytes still to write (for TLS, sealed bytes waiting for the socket count as one).
    pub fn pending(&self) -> usize {
        self.out.len() - self.out_pos + usize::from(self.stream.tls_pending())
    }

    /// Writes pending bytes until done or `WouldBlock`. `Ok(true)`: nothing left.
    pub fn flush(&mut self) -> Result<bool, Failure> {
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(Failure::Eof),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(classify_io(&e)),
            }
        }
        self.out.clear();
        self.out_pos = 0;
        match self.stream.flush_tls() {
            Ok(true) => {}
            Ok(false) => {
                self.write_blocked = true;
                return Ok(false);
            }
            Err(e) => return Err(classify_io(&e)),
        }
        self.write_blocked = false;
        Ok(true)
    }
}

/// Per-worker settings for the `conns` scenario.
#[derive(Debug, Clone)]
pub struct IdleSetup {
    /// How many idle connections this worker opens.
    pub count: usize,
    /// Their path.
    pub path: String,
    /// On herald's JSON endpoint: the topic each subscribes to before it counts as open (`None`: raw).
    pub subscribe: Option<String>,
    /// Send a ping on every connection this often (`None`: stay silent).
    pub ping_every: Option<Duration>,
}

/// What a worker does besides connecting.
#[derive(Debug)]
pub enum Load {
    /// The fan-out scenario's subscribers and publishers.
    Fanout(Box<FanoutLocal>),
    /// Idle (or pinging) connections.
    Idle(IdleSetup),
    /// The echo scenario's connections.
    Echo(Box<EchoLocal>),
}

/// What a worker hands back when it ends.
#[derive(Debug)]
pub struct WorkerResult {
    /// The core it ran on, if pinned.
    pub core: Option<usize>,
    /// Receive counters.
    pub counters: RecvCounters,
    /// Latencies of measured messages.
    pub latency: Histogram<u64>,
    /// Dial-to-101 times of the connections that opened.
    pub connect_time: Histogram<u64>,
    /// Connections that failed to open.
    pub connect_failures: Failures,
    /// Open connections that ended before the run did.
    pub disconnects: Failures,
    /// (thread CPU time, wall time) in ns when the worker saw the measured window start and end (zero if it
    /// did not).
    pub cpu_window: [(u64, u64); 2],
    /// The fan-out state (sequence tables, publisher counts) for the final accounting.
    pub fanout: Option<Box<FanoutLocal>>,
    /// The echo state, likewise.
    pub echo: Option<Box<EchoLocal>>,
}

/// Errors that stop a run (not the failures it counts).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A worker thread could not be started or set up.
    #[error("worker {0}: {1}")]
    Worker(usize, io::Error),
    /// A worker thread panicked (a bug).
    #[error("worker {0} panicked")]
    Panicked(usize),
    /// No connection at all could be opened.
    #[error("no connection could be opened ({0})")]
    NothingConnected(String),
}

impl WorkerResult {
    /// The worker's CPU time over wall time between the samples at the window's start and end.
    pub fn cpu_share(&self) -> f64 {
        let [(cpu_a, wall_a), (cpu_b, wall_b)] = self.cpu_window;
        if wall_a == 0 || wall_b <= wall_a {
            return 0.0;
        }
        cpu_b.saturating_sub(cpu_a) as f64 / (wall_b - wall_a) as f64
    }
}

/// A running worker thread.
pub type WorkerHandle = std::thread::JoinHandle<io::Result<WorkerResult>>;

/// Starts one worker thread per load; each builds its state (poll, buffers, tokens) on its own thread. Returns
/// once every worker is ready to dial (or has failed: [`join`] reports it), in the connect phase.
pub fn spawn(cfg: &EngineConfig, shared: &Arc<Shared>, loads: Vec<Load>) -> Result<Vec<WorkerHandle>, RunError> {
    let mut handles = Vec::new();
    for (id, load) in loads.into_iter().enumerate() {
        let cfg = cfg.clone();
        let shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name(format!("loadgen-{id}"))
            .spawn(move || Worker::new(id, &cfg, shared, load)?.run())
            .map_err(|e| RunError::Worker(id, e))?;
        handles.push(handle);
    }
    while shared.ready.load(Ordering::Acquire) < handles.len() && !handles.iter().any(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(1));
    }
    shared.set_phase(Phase::Connect);
    Ok(handles)
}

/// Joins the workers, in order.
pub fn join(handles: Vec<WorkerHandle>) -> Result<Vec<WorkerResult>, RunError> {
    let mut out = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(e)) => return Err(RunError::Worker(i, e)),
            Err(_) => return Err(RunError::Panicked(i)),
        }
    }
    Ok(out)
}
