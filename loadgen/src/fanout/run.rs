//! The fan-out scenario's main-thread side: spawn the workers, step them through connect, probe and run,
//! sample CPU (loadgen's and, with `--server-pid`, the server's) at the window's edges, print the live
//! progress line, wait out the grace period, and do the final delivery accounting.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::FanoutLocal;
use crate::engine::{self, EngineConfig, Load, Phase, RunError, Shared, WorkerResult};
use crate::plan::FanoutPlan;
use crate::stats::{self, Delivery, Failures, RecvCounters};
use crate::sys;

/// Main-thread options of a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Print a progress line each second on stderr (only if it is a terminal).
    pub progress: bool,
    /// Sample this process's CPU and memory from /proc at the window's start and end.
    pub server_pid: Option<u32>,
}

/// One second of the run, for the time series.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Tick {
    /// Seconds since the measured window started (negative during warm-up), at the end of the interval.
    pub t: f64,
    /// The interval's length, seconds (about 1; the last one may be shorter).
    pub interval_s: f64,
    /// Messages published per second over the interval.
    pub published_per_s: f64,
    /// Messages received per second over the interval.
    pub received_per_s: f64,
    /// Latency percentiles of measured messages received in the interval.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest.
    pub max_ns: u64,
    /// Connections open.
    pub open: u64,
}

/// Everything a fan-out run produced, before formatting.
#[derive(Debug)]
pub struct FanoutOutcome {
    /// Delivery accounting.
    pub delivery: Delivery,
    /// Counters summed over workers.
    pub counters: RecvCounters,
    /// Latency of measured messages.
    pub latency: Histogram<u64>,
    /// Dial-to-101 times.
    pub connect_time: Histogram<u64>,
    /// How late open-loop messages left relative to their schedule.
    pub send_lag: Histogram<u64>,
    /// Connections that opened / failed to open.
    pub connected: u64,
    /// Failed to open, by class.
    pub connect_failures: Failures,
    /// Ended during the run, by class.
    pub disconnects: Failures,
    /// Subscribers confirmed by probes before the run / confirmable.
    pub confirmed: (u64, u64),
    /// Time from the first dial to the last connection opened or failed.
    pub connect_phase: Duration,
    /// The measured window's actual length.
    pub window: Duration,
    /// Loadgen process CPU during the window (ns), and per worker thread.
    pub cpu_ns: u64,
    /// Per worker: share of its core during the window, and the core it was pinned to.
    pub thread_cpu: Vec<(f64, Option<usize>)>,
    /// Loadgen's peak RSS (KiB) and context switches during the window.
    pub usage_end: sys::Usage,
    /// The server's /proc samples at the window's start and end, if asked.
    pub server: Option<(sys::ProcSample, sys::ProcSample)>,
    /// Per-second series.
    pub ticks: Vec<Tick>,
    /// The grace period was cut short because everything had arrived.
    pub drained: bool,
}

/// Runs the fan-out scenario to completion.
pub fn run(cfg: &EngineConfig, plan: FanoutPlan, opts: &RunOptions) -> Result<FanoutOutcome, RunError> {
    let tty = opts.progress && std::io::stderr().is_terminal();
    let mut started = start(cfg, plan, tty)?;

    // Run: warm-up, window, grace.
    let Window { measure, end, mut ticks, mut ticker, usage_start, usage_end, server_start, server_end } =
        run_window(&started.shared, started.plan.warmup, started.plan.duration, opts.server_pid, tty);
    started.grace();
    let tick = ticker.take(&started.shared, measure);
    ticks.push(tick);
    if tty {
        eprintln!();
    }
    started.finish(AssembleInput {
        confirmed: (0, 0),
        connect_phase: Duration::ZERO,
        window: Duration::from_nanos(end - measure),
        cpu_ns: usage_end.cpu_ns.saturating_sub(usage_start.cpu_ns),
        usage_end,
        server: server_start.zip(server_end),
        ticks,
        drained: false,
    })
}

/// A fan-out run whose connections are open and confirmed, ready for its run phase ([`run_window`], or the
/// soak test's own loop), then [`Started::finish`].
pub(crate) struct Started {
    pub(crate) plan: Arc<FanoutPlan>,
    pub(crate) shared: Arc<Shared>,
    handles: Vec<engine::WorkerHandle>,
    confirmed: (u64, u64),
    connect_phase: Duration,
    drained: bool,
}

/// Spawns the workers, connects every subscriber and publisher, and probes until every subscriber that can
/// be confirmed is (or the probe timeout passes).
pub(crate) fn start(cfg: &EngineConfig, plan: FanoutPlan, tty: bool) -> Result<Started, RunError> {
    let plan = Arc::new(plan);
    let threads = cfg.threads.max(1);
    let shared = Arc::new(Shared::new(threads, plan.pubs));
    let loads = (0..threads).map(|t| Load::Fanout(Box::new(FanoutLocal::new(plan.clone(), t, threads)))).collect();
    let handles = engine::spawn(cfg, &shared, loads)?;
    let total = (plan.subs + plan.pubs) as u64;

    // Connect.
    let dial_start = sys::now_ns();
    let connect_budget =
        Duration::from_secs_f64(if cfg.connect_rate > 0.0 { total as f64 / cfg.connect_rate } else { 0.0 })
            + cfg.connect_timeout
            + Duration::from_secs(5);
    wait_until(connect_budget, || {
        let done = shared.sum(|p| (p.connected.load(Ordering::Relaxed) + p.failed.load(Ordering::Relaxed)) as u64);
        if tty {
            eprint!("\rconnecting: {done}/{total}   ");
        }
        done >= total
    });
    let connect_phase = Duration::from_nanos(sys::now_ns() - dial_start);
    if shared.sum(|p| p.connected.load(Ordering::Relaxed) as u64) == 0 {
        shared.set_phase(Phase::Finish);
        let results = engine::join(handles)?;
        let mut failures = Failures::default();
        for r in &results {
            failures.add(&r.connect_failures);
        }
        return Err(RunError::NothingConnected(failures.summary()));
    }

    // Probe until every subscriber that can be confirmed is.
    shared.set_phase(Phase::Probe);
    wait_until(plan.probe_timeout, || {
        // Each worker must have counted at least once since probing began.
        if shared.progress.iter().any(|p| p.probe_rounds.load(Ordering::Acquire) == 0) {
            return false;
        }
        let confirmed = shared.sum(|p| p.confirmed.load(Ordering::Relaxed) as u64);
        let confirmable = shared.sum(|p| p.confirmable.load(Ordering::Relaxed) as u64);
        if tty {
            eprint!("\rconfirming subscriptions: {confirmed}/{confirmable}   ");
        }
        confirmed >= confirmable
    });
    let confirmed = (
        shared.sum(|p| p.confirmed.load(Ordering::Relaxed) as u64),
        shared.sum(|p| p.confirmable.load(Ordering::Relaxed) as u64),
    );
    // Let the last probes drain before the sequences start.
    std::thread::sleep(Duration::from_millis(20));
    Ok(Started { plan, shared, handles, confirmed, connect_phase, drained: false })
}

impl Started {
    /// After the window: waits for every publisher to finish and every missing delivery to arrive, or the
    /// grace period; returns whether everything arrived.
    pub(crate) fn grace(&mut self) -> bool {
        let (shared, pubs) = (&self.shared, self.plan.pubs);
        self.drained = wait_until(self.plan.grace, || {
            let done = shared.pubs_done.load(Ordering::Acquire) >= pubs;
            let outstanding = shared.sum(|p| p.outstanding.load(Ordering::Relaxed).min(u64::MAX / 1024));
            done && outstanding == 0
        });
        self.drained
    }

    /// Stops the workers and does the delivery accounting (`input`'s confirmation, connect-phase and drained
    /// figures are this run's own).
    pub(crate) fn finish(self, input: AssembleInput) -> Result<FanoutOutcome, RunError> {
        self.shared.set_phase(Phase::Finish);
        let results = engine::join(self.handles)?;
        let input = AssembleInput {
            confirmed: self.confirmed,
            connect_phase: self.connect_phase,
            drained: self.drained,
            ..input
        };
        Ok(assemble(&self.plan, &self.shared, results, input))
    }
}

/// What the run phase of any scenario measured: the window's bounds, the per-second samples, and loadgen's and
/// the server's CPU use at the window's two ends.
pub(crate) struct Window {
    /// Start of the measured window (after warm-up), CLOCK_MONOTONIC ns.
    pub(crate) measure: u64,
    /// End of the measured window.
    pub(crate) end: u64,
    /// One sample per second so far.
    pub(crate) ticks: Vec<Tick>,
    /// The sampler, for a last sample after the grace period.
    pub(crate) ticker: Ticker,
    /// loadgen's CPU use at the window's start (or its end, if the window was empty).
    pub(crate) usage_start: sys::Usage,
    /// loadgen's CPU use at the window's end.
    pub(crate) usage_end: sys::Usage,
    /// The server's /proc sample at the window's start, if asked.
    pub(crate) server_start: Option<sys::ProcSample>,
    /// The server's /proc sample at the window's end, if asked.
    pub(crate) server_end: Option<sys::ProcSample>,
}

/// Starts the run phase (warm-up, then the measured window) and waits it out on the calling thread: a sample
/// of the workers' progress each second (printed when `tty`), and CPU samples of loadgen and of the server
/// (`server_pid`) when the window opens and closes.
pub(crate) fn run_window(
    shared: &Shared,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
    tty: bool,
) -> Window {
    let t0 = sys::now_ns() + 2_000_000;
    let measure = t0 + warmup.as_nanos() as u64;
    let end = measure + duration.as_nanos() as u64;
    shared.t0_ns.store(t0, Ordering::Release);
    shared.measure_ns.store(measure, Ordering::Release);
    shared.end_ns.store(end, Ordering::Release);
    shared.set_phase(Phase::Run);

    let sample_server = || server_pid.and_then(|pid| sys::proc_sample(pid).ok());
    let mut ticks = Vec::new();
    let mut ticker = Ticker::new(t0);
    let mut next_tick = t0 + 1_000_000_000;
    let mut usage_start = None;
    let mut server_start = None;
    loop {
        let now = sys::now_ns();
        if usage_start.is_none() && now >= measure {
            usage_start = Some(sys::process_usage());
            server_start = sample_server();
        }
        if now >= end {
            break;
        }
        let wake = next_tick.min(end).min(if usage_start.is_none() { measure } else { u64::MAX });
        std::thread::sleep(Duration::from_nanos(wake.saturating_sub(now)));
        if sys::now_ns() >= next_tick {
            next_tick += 1_000_000_000;
            let tick = ticker.take(shared, measure);
            if tty {
                eprint!("\r{}", progress_line(&tick, shared));
            }
            ticks.push(tick);
        }
    }
    let usage_end = sys::process_usage();
    let server_end = sample_server();
    Window {
        measure,
        end,
        ticks,
        ticker,
        usage_start: usage_start.unwrap_or(usage_end),
        usage_end,
        server_start,
        server_end,
    }
}

/// Main-thread figures handed to [`assemble`].
pub(crate) struct AssembleInput {
    pub(crate) confirmed: (u64, u64),
    pub(crate) connect_phase: Duration,
    pub(crate) window: Duration,
    pub(crate) cpu_ns: u64,
    pub(crate) usage_end: sys::Usage,
    pub(crate) server: Option<(sys::ProcSample, sys::ProcSample)>,
    pub(crate) ticks: Vec<Tick>,
    pub(crate) drained: bool,
}

/// Merges the workers' results and does the delivery accounting.
fn assemble(plan: &FanoutPlan, shared: &Shared, results: Vec<WorkerResult>, input: AssembleInput) -> FanoutOutcome {
    let mut counters = RecvCounters::default();
    let mut latency = stats::new_histogram();
    let mut connect_time = stats::new_histogram();
    let mut send_lag = stats::new_histogram();
    let mut connect_failures = Failures::default();
    let mut disconnects = Failures::default();
    let mut delivery = Delivery::default();
    let mut thread_cpu = Vec::new();
    let first: Vec<u64> = shared.pub_first.iter().map(|a| a.load(Ordering::Acquire)).collect();
    let end: Vec<u64> = shared.pub_end.iter().map(|a| a.load(Ordering::Acquire)).collect();
    delivery.published = first.iter().zip(&end).map(|(f, e)| e.saturating_sub(*f)).sum();
    for r in &results {
        counters.add(&r.counters);
        stats::merge(&mut latency, &r.latency);
        stats::merge(&mut connect_time, &r.connect_time);
        connect_failures.add(&r.connect_failures);
        disconnects.add(&r.disconnects);
        thread_cpu.push((r.cpu_share(), r.core));
        if let Some(f) = &r.fanout {
            stats::merge(&mut send_lag, &f.send_lag);
            for (i, s) in f.subs.iter().enumerate() {
                if !s.counted {
                    continue;
                }
                for slot in 0..f.slots {
                    let p = slot * plan.topics + s.topic as usize;
                    if p >= plan.pubs {
                        continue;
                    }
                    let (d, l, in_flight) = f.pairs[i * f.slots + slot].account(first[p], end[p]);
                    delivery.expected += end[p].saturating_sub(first[p]);
                    delivery.delivered += d;
                    delivery.lost += l;
                    if s.open {
                        delivery.in_flight += in_flight;
                    } else {
                        delivery.lost_disconnected += in_flight;
                    }
                }
            }
        }
    }
    FanoutOutcome {
        delivery,
        counters,
        latency,
        connect_time,
        send_lag,
        connected: shared.sum(|p| p.connected.load(Ordering::Relaxed) as u64),
        connect_failures,
        disconnects,
        confirmed: input.confirmed,
        connect_phase: input.connect_phase,
        window: input.window,
        cpu_ns: input.cpu_ns,
        thread_cpu,
        usage_end: input.usage_end,
        server: input.server,
        ticks: input.ticks,
        drained: input.drained,
    }
}

/// Collects one second of progress from the workers.
/// What the per-second sampling remembers between samples.
#[derive(Debug)]
pub(crate) struct Ticker {
    hist: Histogram<u64>,
    published: u64,
    received: u64,
    at_ns: u64,
}

impl Ticker {
    /// Sampling from `start_ns` on.
    pub(crate) fn new(start_ns: u64) -> Ticker {
        Ticker { hist: stats::new_histogram(), published: 0, received: 0, at_ns: start_ns }
    }

    /// Collects the interval since the last call from the workers.
    pub(crate) fn take(&mut self, shared: &Shared, measure: u64) -> Tick {
        take_tick(shared, self, measure)
    }
}

/// Collects one interval of progress from the workers.
fn take_tick(shared: &Shared, state: &mut Ticker, measure: u64) -> Tick {
    let hist = &mut state.hist;
    hist.reset();
    for slot in &shared.interval {
        if let Ok(mut slot) = slot.lock() {
            stats::merge(hist, &slot.hist);
            slot.hist.reset();
        }
    }
    let published = shared.sum(|p| p.published.load(Ordering::Relaxed));
    let received = shared.sum(|p| p.received.load(Ordering::Relaxed));
    let now = sys::now_ns();
    let interval = now.saturating_sub(state.at_ns).max(1) as f64 / 1e9;
    let tick = Tick {
        t: (now as f64 - measure as f64) / 1e9,
        interval_s: interval,
        published_per_s: published.saturating_sub(state.published) as f64 / interval,
        received_per_s: received.saturating_sub(state.received) as f64 / interval,
        p50_ns: if hist.is_empty() { 0 } else { hist.value_at_quantile(0.5) },
        p99_ns: if hist.is_empty() { 0 } else { hist.value_at_quantile(0.99) },
        max_ns: if hist.is_empty() { 0 } else { hist.max() },
        open: shared.sum(|p| p.open.load(Ordering::Relaxed) as u64),
    };
    (state.published, state.received, state.at_ns) = (published, received, now);
    tick
}

/// The live line: time, connections, rates, p99, errors.
pub(crate) fn progress_line(t: &Tick, shared: &Shared) -> String {
    let errors = shared.sum(|p| (p.failed.load(Ordering::Relaxed) + p.closed.load(Ordering::Relaxed)) as u64);
    format!(
        "t={:+6.1}s conns {} | out {}/s in {}/s | p99 {} max {} | errors {}   ",
        t.t,
        t.open,
        crate::report::si(t.published_per_s),
        crate::report::si(t.received_per_s),
        crate::report::ns_or_dash(t.p99_ns),
        crate::report::ns_or_dash(t.max_ns),
        errors
    )
}

/// Polls `done` every few milliseconds for up to `limit`; returns whether it became true.
pub(crate) fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = sys::now_ns() + limit.as_nanos() as u64;
    loop {
        if done() {
            return true;
        }
        if sys::now_ns() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
