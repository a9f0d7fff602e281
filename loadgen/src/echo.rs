//! The `echo` scenario: C connections to an echo endpoint, each keeping K messages of B bytes in flight
//! (closed loop per connection): round trips per second and round-trip latency, for per-message overhead.
//!
//! Each message carries the connection number as its "publisher", a per-connection sequence and its send
//! time, so the accounting is the fan-out's: a [`Pair`] per connection tells lost, duplicated, reordered and
//! still-in-flight echoes apart.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use herald::protocol::frame::{write_masked_frame, OpCode};
use serde::Serialize;
use slab::Slab;

use crate::engine::{self, Conn, Dial, EngineConfig, Kind, Load, Phase, Progress, RunError, Shared};
use crate::fanout::run::{run_window, wait_until, Window};
use crate::fanout::Tick;
use crate::plan::payload;
use crate::report::{bytes_rate, ns, si, EngineSummary, LoadgenUsage, ThreadUsage, SATURATED_SHARE};
use crate::stats::{self, Delivery, Failure, Failures, Pair, Percentiles, RecvCounters};
use crate::sys;

/// The `echo` scenario, decided.
#[derive(Debug, Clone, Serialize)]
pub struct EchoPlan {
    /// Connections.
    pub conns: usize,
    /// Payload bytes per message (at least 20).
    pub size: usize,
    /// Messages in flight per connection.
    pub inflight: u64,
    /// Warm-up before measuring.
    #[serde(serialize_with = "crate::plan::ser_secs")]
    pub warmup: Duration,
    /// The measured window.
    #[serde(serialize_with = "crate::plan::ser_secs")]
    pub duration: Duration,
    /// After the window, how long to wait for echoes still in flight.
    #[serde(serialize_with = "crate::plan::ser_secs")]
    pub grace: Duration,
    /// The echo endpoint's path.
    pub path: String,
}

/// One echo connection owned by a worker.
#[derive(Debug, Clone, Default)]
struct EchoConn {
    global: u32,
    token: Option<usize>,
    sent: u64,
    first: Option<u64>,
    pair: Pair,
    done: bool,
}

/// One worker's share of the echo scenario.
#[derive(Debug)]
pub struct EchoLocal {
    plan: Arc<EchoPlan>,
    conns: Vec<EchoConn>,
    payload: Vec<u8>,
    rng: u64,
    measure_ns: u64,
    end_ns: u64,
    started: bool,
}

impl EchoLocal {
    /// Worker `thread` of `threads`' share of `plan`.
    pub fn new(plan: Arc<EchoPlan>, thread: usize, threads: usize) -> EchoLocal {
        let conns = (thread..plan.conns)
            .step_by(threads)
            .map(|c| EchoConn { global: c as u32, ..EchoConn::default() })
            .collect();
        EchoLocal {
            payload: vec![b'x'; plan.size],
            plan,
            conns,
            rng: 0x9E37_79B9_7F4A_7C15 ^ (thread as u64 + 1),
            measure_ns: u64::MAX,
            end_ns: u64::MAX,
            started: false,
        }
    }

    /// The connections to open (numbered by connection).
    pub fn dial_list(&self) -> Vec<Dial> {
        self.conns
            .iter()
            .enumerate()
            .map(|(i, c)| Dial::raw(Kind::Echo(i as u32), c.global as usize, self.plan.path.clone()))
            .collect()
    }

    /// A connection opened as `token`.
    pub fn on_open(&mut self, kind: Kind, token: usize) {
        if let Kind::Echo(i) = kind {
            if let Some(c) = self.conns.get_mut(i as usize) {
                c.token = Some(token);
            }
        }
    }

    /// A connection ended.
    pub fn on_closed(&mut self, kind: Kind) {
        if let Kind::Echo(i) = kind {
            if let Some(c) = self.conns.get_mut(i as usize) {
                c.token = None;
                c.done = true;
            }
        }
    }

    /// The run begins.
    pub fn start_run(&mut self, shared: &Shared) {
        self.measure_ns = shared.measure_ns.load(Ordering::Acquire);
        self.end_ns = shared.end_ns.load(Ordering::Acquire);
        self.started = true;
    }

    /// Accounts one echoed message on local connection `local`.
    #[inline]
    pub fn receive(
        &mut self,
        local: u32,
        prefix: &[u8],
        recv_ns: u64,
        counters: &mut RecvCounters,
        hist: &mut stats::FastHist,
    ) {
        counters.messages += 1;
        let conn = match (payload::read(prefix), self.conns.get_mut(local as usize)) {
            (Some(h), Some(c)) if h.publisher == c.global && h.seq != payload::PROBE_SEQ => Some((h, c)),
            _ => None,
        };
        let Some((h, c)) = conn else {
            counters.foreign += 1;
            return;
        };
        if !counters.count_sequence(c.pair.record(h.seq)) {
            return;
        }
        if h.sent_ns >= self.measure_ns {
            c.pair.measured += 1;
            counters.measured += 1;
            hist.record(recv_ns.saturating_sub(h.sent_ns));
        }
    }

    /// Tops every open connection up to `inflight` messages; returns how many were sent.
    pub fn pump(&mut self, conns: &mut Slab<Conn>, now: u64, closed: &mut Vec<(usize, Failure)>) -> u64 {
        if !self.started {
            return 0;
        }
        let mut sent = 0;
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            if c.done {
                continue;
            }
            if now >= self.end_ns {
                c.done = true;
                continue;
            }
            let Some(token) = c.token else { continue };
            let Some(conn) = conns.get_mut(token) else { continue };
            if conn.write_blocked {
                continue;
            }
            let in_flight = c.sent.saturating_sub(c.pair.next);
            let room = self.plan.inflight.saturating_sub(in_flight);
            for _ in 0..room {
                let c = &mut self.conns[i];
                let seq = c.sent;
                if c.first.is_none() && now >= self.measure_ns {
                    c.first = Some(seq);
                }
                c.sent += 1;
                payload::write(&mut self.payload, payload::Header { publisher: c.global, seq, sent_ns: now });
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                write_masked_frame(&mut conn.out, true, OpCode::Binary, &self.payload, (self.rng as u32).to_le_bytes());
            }
            sent += room;
            if room > 0 {
                if let Err(f) = conn.flush() {
                    closed.push((token, f));
                }
            }
        }
        sent
    }

    /// Echoes still missing on open connections (`u64::MAX` until the window has ended).
    pub fn update_outstanding(&self, now: u64, progress: &Progress) {
        let missing = if now < self.end_ns {
            u64::MAX
        } else {
            self.conns.iter().filter(|c| c.token.is_some()).map(|c| c.sent.saturating_sub(c.pair.next)).sum()
        };
        progress.outstanding.store(missing, Ordering::Relaxed);
    }

    /// When the loop must run next: at the end of the window (to stop sending).
    pub fn next_wakeup(&self) -> Option<u64> {
        self.conns.iter().any(|c| !c.done).then_some(self.end_ns)
    }
}

/// What an echo run produced.
#[derive(Debug)]
pub struct EchoOutcome {
    /// Sent in the window vs echoed.
    pub delivery: Delivery,
    /// Counters.
    pub counters: RecvCounters,
    /// Round-trip latency of measured messages.
    pub latency: Histogram<u64>,
    /// Dial-to-101 times.
    pub connect_time: Histogram<u64>,
    /// Connections opened.
    pub connected: u64,
    /// Failed to open.
    pub connect_failures: Failures,
    /// Ended during the run.
    pub disconnects: Failures,
    /// Window length.
    pub window: Duration,
    /// Process CPU during the window.
    pub cpu_ns: u64,
    /// Per worker: share of its core during the window, and its core.
    pub thread_cpu: Vec<(f64, Option<usize>)>,
    /// Server CPU (start, end samples).
    pub server: Option<(sys::ProcSample, sys::ProcSample)>,
    /// Per-second series.
    pub ticks: Vec<Tick>,
}

/// Runs the echo scenario.
pub fn run(
    cfg: &EngineConfig,
    plan: &EchoPlan,
    progress: bool,
    server_pid: Option<u32>,
) -> Result<EchoOutcome, RunError> {
    let plan = Arc::new(plan.clone());
    let threads = cfg.threads.max(1);
    let shared = Arc::new(Shared::new(threads, 0));
    let loads = (0..threads).map(|t| Load::Echo(Box::new(EchoLocal::new(plan.clone(), t, threads)))).collect();
    let handles = engine::spawn(cfg, &shared, loads)?;
    let tty = progress && std::io::stderr().is_terminal();
    let total = plan.conns as u64;
    let budget = Duration::from_secs_f64(if cfg.connect_rate > 0.0 { total as f64 / cfg.connect_rate } else { 0.0 })
        + cfg.connect_timeout
        + Duration::from_secs(5);
    wait_until(budget, || {
        shared.sum(|p| (p.connected.load(Ordering::Relaxed) + p.failed.load(Ordering::Relaxed)) as u64) >= total
    });
    let connected = shared.sum(|p| p.connected.load(Ordering::Relaxed) as u64);
    if connected == 0 {
        shared.set_phase(Phase::Finish);
        let results = engine::join(handles)?;
        let mut failures = Failures::default();
        for r in &results {
            failures.add(&r.connect_failures);
        }
        return Err(RunError::NothingConnected(failures.summary()));
    }
    let Window { measure, end, ticks, usage_start, usage_end, server_start, server_end, .. } =
        run_window(&shared, plan.warmup, plan.duration, server_pid, tty);
    wait_until(plan.grace, || shared.sum(|p| p.outstanding.load(Ordering::Relaxed).min(u64::MAX / 1024)) == 0);
    if tty {
        eprintln!();
    }
    shared.set_phase(Phase::Finish);
    let results = engine::join(handles)?;
    let mut out = EchoOutcome {
        delivery: Delivery::default(),
        counters: RecvCounters::default(),
        latency: stats::new_histogram(),
        connect_time: stats::new_histogram(),
        connected,
        connect_failures: Failures::default(),
        disconnects: Failures::default(),
        window: Duration::from_nanos(end - measure),
        cpu_ns: usage_end.cpu_ns.saturating_sub(usage_start.cpu_ns),
        thread_cpu: Vec::new(),
        server: server_start.zip(server_end),
        ticks,
    };
    for r in &results {
        out.counters.add(&r.counters);
        stats::merge(&mut out.latency, &r.latency);
        stats::merge(&mut out.connect_time, &r.connect_time);
        out.connect_failures.add(&r.connect_failures);
        out.disconnects.add(&r.disconnects);
        out.thread_cpu.push((r.cpu_share(), r.core));
        if let Some(e) = &r.echo {
            for c in e.conns.iter().filter(|c| c.first.is_some() || c.sent > 0) {
                let first = c.first.unwrap_or(c.sent);
                let (d, l, f) = c.pair.account(first, c.sent);
                out.delivery.published += c.sent - first;
                out.delivery.expected += c.sent - first;
                out.delivery.delivered += d;
                out.delivery.lost += l;
                if c.token.is_some() {
                    out.delivery.in_flight += f;
                } else {
                    out.delivery.lost_disconnected += f;
                }
            }
        }
    }
    Ok(out)
}

/// The echo report, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct EchoReport {
    /// Always "echo".
    pub scenario: &'static str,
    /// loadgen's version.
    pub loadgen_version: &'static str,
    /// Engine settings.
    pub engine: EngineSummary,
    /// Scenario settings.
    pub plan: EchoPlan,
    /// Connections opened.
    pub opened: u64,
    /// Failed to open, by class.
    pub connect_failures: Failures,
    /// Ended during the run, by class.
    pub disconnects: Failures,
    /// Window length, seconds.
    pub window_s: f64,
    /// Sent in the window (`published`) vs echoed.
    pub delivery: Delivery,
    /// Round trips completed per second (measured messages echoed, over the window).
    pub round_trips_per_s: f64,
    /// Payload bytes echoed per second.
    pub echoed_bytes_per_s: f64,
    /// Round-trip latency.
    pub latency: Percentiles,
    /// Connect times.
    pub connect_time: Percentiles,
    /// Counters.
    pub counters: RecvCounters,
    /// Loadgen's own resource use.
    pub loadgen: LoadgenUsage,
    /// Server CPU share during the window, with `--server-pid`.
    pub server_cpu_share: Option<f64>,
    /// One entry per second.
    pub timeline: Vec<Tick>,
}

impl EchoReport {
    /// Builds the report.
    pub fn new(cfg: &EngineConfig, plan: &EchoPlan, o: &EchoOutcome) -> EchoReport {
        let window = o.window.as_secs_f64().max(1e-9);
        let threads: Vec<ThreadUsage> = o
            .thread_cpu
            .iter()
            .enumerate()
            .map(|(id, (share, core))| ThreadUsage { id, core: *core, cpu_share: *share })
            .collect();
        let saturated = threads.iter().any(|t| t.cpu_share > SATURATED_SHARE);
        EchoReport {
            scenario: "echo",
            loadgen_version: env!("CARGO_PKG_VERSION"),
            engine: EngineSummary::of(cfg),
            plan: plan.clone(),
            opened: o.connected,
            connect_failures: o.connect_failures.clone(),
            disconnects: o.disconnects.clone(),
            window_s: window,
            delivery: o.delivery,
            round_trips_per_s: o.delivery.delivered as f64 / window,
            echoed_bytes_per_s: o.delivery.delivered as f64 * plan.size as f64 / window,
            latency: Percentiles::of(&o.latency),
            connect_time: Percentiles::of(&o.connect_time),
            counters: o.counters.clone(),
            loadgen: LoadgenUsage {
                cpu_s: o.cpu_ns as f64 / 1e9,
                cpu_share: o.cpu_ns as f64 / 1e9 / window / cfg.threads.max(1) as f64,
                cpu_ns_per_delivery: o.cpu_ns as f64 / o.delivery.delivered.max(1) as f64,
                threads,
                max_rss_kib: sys::process_usage().max_rss_kib,
                saturated,
            },
            server_cpu_share: o.server.map(|(a, b)| {
                b.cpu_ns.saturating_sub(a.cpu_ns) as f64 / (b.at_ns.saturating_sub(a.at_ns).max(1) as f64)
            }),
            timeline: o.ticks.clone(),
        }
    }

    /// The human-readable table.
    pub fn human(&self) -> String {
        let d = &self.delivery;
        let l = &self.latency;
        let mut s = format!(
            "loadgen echo {}{}: {} conns x {} in flight, {} B, {:.1} s\n",
            self.engine.url, self.plan.path, self.plan.conns, self.plan.inflight, self.plan.size, self.window_s
        );
        s += &format!(
            "  round trips  {} /s  ({}), sent {} echoed {}: lost {}, in flight {}, disconnected {}\n",
            si(self.round_trips_per_s),
            bytes_rate(self.echoed_bytes_per_s),
            d.expected,
            d.delivered,
            d.lost,
            d.in_flight,
            d.lost_disconnected
        );
        s += &format!(
            "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (round trip)\n",
            ns(l.p50_ns),
            ns(l.p90_ns),
            ns(l.p99_ns),
            ns(l.p999_ns),
            ns(l.max_ns)
        );
        s += &format!(
            "  errors       connect: {}; during run: {}\n",
            self.connect_failures.summary(),
            self.disconnects.summary()
        );
        if let Some(tls) = &self.engine.tls {
            s += &tls.human();
        }
        s += &format!(
            "  loadgen CPU  {:.1}% of {} worker core(s), {:.1} ns per round trip{}\n",
            self.loadgen.cpu_share * 100.0,
            self.engine.threads,
            self.loadgen.cpu_ns_per_delivery,
            self.server_cpu_share.map_or(String::new(), |c| format!("; server CPU {:.1}%", c * 100.0))
        );
        if self.loadgen.saturated {
            s += "WARNING: a loadgen worker was above 90% of its core: these figures are a lower bound for the server.\n";
        }
        s
    }
}
