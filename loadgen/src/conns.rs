//! The `conns` scenario: open N connections at `--connect-rate`, hold them (idle, or pinging), and report
//! the connect rate and failures and, with `--server-pid`, the server's RSS and CPU from /proc before the
//! first connection, at the end of the hold, and one second after closing (RSS per connection). A server
//! that served connections before reuses the memory it freed, so its RSS may not grow: the report then says
//! that bytes per connection could not be measured (`rss_bytes_per_conn: null`) instead of printing 0.
//!
//! With `--protocol json`, each connection subscribes to `loadgen-idle` on herald's JSON endpoint and counts
//! as open once that is acked. Tokens (`--jwt-*`) are minted before the clock starts.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::engine::{self, EngineConfig, IdleSetup, Load, Phase, RunError, Shared};
use crate::report::{ns, EngineSummary};
use crate::stats::{self, Failures, Percentiles};
use crate::sys::{self, ProcSample};

/// The topic idle connections use (its `{topic}` in `--path`, and what they subscribe to with JSON).
pub const IDLE_TOPIC: &str = "loadgen-idle";

/// The `conns` scenario, decided.
#[derive(Debug, Clone, Serialize)]
pub struct ConnsPlan {
    /// Connections to open.
    pub conns: usize,
    /// How long to hold them after the last one settled.
    #[serde(serialize_with = "crate::plan::ser_secs")]
    pub hold: Duration,
    /// The path each connects to.
    pub path: String,
    /// The protocol spoken.
    pub protocol: crate::plan::Protocol,
    /// Ping period (`None`: idle).
    #[serde(skip)]
    pub ping_every: Option<Duration>,
    /// The server process to sample.
    pub server_pid: Option<u32>,
}

/// What a `conns` run produced.
#[derive(Debug)]
pub struct ConnsOutcome {
    /// Connections that completed the handshake.
    pub connected: u64,
    /// Open at the end of the hold.
    pub open_at_end: u64,
    /// Failed to open.
    pub connect_failures: Failures,
    /// Ended during the hold.
    pub disconnects: Failures,
    /// Dial-to-101 times.
    pub connect_time: Histogram<u64>,
    /// From the first dial to the last connection settled.
    pub connect_phase: Duration,
    /// Server samples: before connecting, at the end of the hold, after closing.
    pub server: [Option<ProcSample>; 3],
}

/// Runs the scenario.
pub fn run(cfg: &EngineConfig, plan: &ConnsPlan, progress: bool) -> Result<ConnsOutcome, RunError> {
    let threads = cfg.threads.max(1);
    let shared = Arc::new(Shared::new(threads, 0));
    let sample = || plan.server_pid.and_then(|pid| sys::proc_sample(pid).ok());
    let before = sample();
    let loads = (0..threads)
        .map(|t| {
            Load::Idle(IdleSetup {
                count: plan.conns / threads + usize::from(t < plan.conns % threads),
                path: plan.path.clone(),
                subscribe: (plan.protocol == crate::plan::Protocol::Json).then(|| IDLE_TOPIC.to_owned()),
                ping_every: plan.ping_every,
            })
        })
        .collect();
    let tty = progress && std::io::stderr().is_terminal();
    // The workers are built (tokens minted) when spawn returns: the clock starts with the first dial.
    let handles = engine::spawn(cfg, &shared, loads)?;
    let start = sys::now_ns();
    let total = plan.conns as u64;
    let budget = Duration::from_secs_f64(if cfg.connect_rate > 0.0 { total as f64 / cfg.connect_rate } else { 0.0 })
        + cfg.connect_timeout
        + Duration::from_secs(5);
    let deadline = start + budget.as_nanos() as u64;
    loop {
        let settled = shared.sum(|p| (p.connected.load(Ordering::Relaxed) + p.failed.load(Ordering::Relaxed)) as u64);
        if tty {
            eprint!("\rconnecting: {settled}/{total}   ");
        }
        if settled >= total || sys::now_ns() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let connect_phase = Duration::from_nanos(sys::now_ns() - start);
    let hold_end = sys::now_ns() + plan.hold.as_nanos() as u64;
    while sys::now_ns() < hold_end {
        std::thread::sleep(Duration::from_nanos((hold_end - sys::now_ns()).min(1_000_000_000)));
        if tty {
            let open = shared.sum(|p| p.open.load(Ordering::Relaxed) as u64);
            eprint!("\rholding: {open} open   ");
        }
    }
    if tty {
        eprintln!();
    }
    let during = sample();
    let open_at_end = shared.sum(|p| p.open.load(Ordering::Relaxed) as u64);
    shared.set_phase(Phase::Finish);
    let results = engine::join(handles)?;
    let after = plan.server_pid.map(|_| {
        std::thread::sleep(Duration::from_secs(1));
        sample()
    });
    let mut connect_failures = Failures::default();
    let mut disconnects = Failures::default();
    let mut connect_time = stats::new_histogram();
    for r in &results {
        connect_failures.add(&r.connect_failures);
        disconnects.add(&r.disconnects);
        stats::merge(&mut connect_time, &r.connect_time);
    }
    Ok(ConnsOutcome {
        connected: shared.sum(|p| p.connected.load(Ordering::Relaxed) as u64),
        open_at_end,
        connect_failures,
        disconnects,
        connect_time,
        connect_phase,
        server: [before, during, after.flatten()],
    })
}

/// The server's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ServerMemory {
    /// Before the first connection.
    pub before: Option<ProcSample>,
    /// At the end of the hold.
    pub during: Option<ProcSample>,
    /// One second after loadgen closed everything.
    pub after: Option<ProcSample>,
    /// (during - before) RSS over connections open at the end of the hold, bytes; `null` when the RSS did not
    /// grow (a server that served connections before reuses freed memory: restart it before measuring).
    pub rss_bytes_per_conn: Option<f64>,
}

/// The `conns` report, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnsReport {
    /// Always "conns".
    pub scenario: &'static str,
    /// loadgen's version.
    pub loadgen_version: &'static str,
    /// Engine settings.
    pub engine: EngineSummary,
    /// Scenario settings.
    pub plan: ConnsPlan,
    /// Connections that opened.
    pub opened: u64,
    /// Still open at the end of the hold.
    pub open_at_end: u64,
    /// From the first dial to the last connection settled, seconds.
    pub connect_phase_s: f64,
    /// Opened connections per second over the connect phase.
    pub connect_rate_per_s: f64,
    /// Dial-to-101 times.
    pub connect_time: Percentiles,
    /// Failed to open, by class.
    pub connect_failures: Failures,
    /// Ended during the hold, by class.
    pub disconnects: Failures,
    /// The server's memory, with `--server-pid`.
    pub server: ServerMemory,
}

impl ConnsReport {
    /// Builds the report.
    pub fn new(cfg: &EngineConfig, plan: &ConnsPlan, o: &ConnsOutcome) -> ConnsReport {
        let [before, during, after] = o.server;
        let phase = o.connect_phase.as_secs_f64().max(1e-9);
        ConnsReport {
            scenario: "conns",
            loadgen_version: env!("CARGO_PKG_VERSION"),
            engine: EngineSummary::of(cfg),
            plan: plan.clone(),
            opened: o.connected,
            open_at_end: o.open_at_end,
            connect_phase_s: phase,
            connect_rate_per_s: o.connected as f64 / phase,
            connect_time: Percentiles::of(&o.connect_time),
            connect_failures: o.connect_failures.clone(),
            disconnects: o.disconnects.clone(),
            server: ServerMemory::new([before, during, after], o.open_at_end),
        }
    }

    /// The human-readable table.
    pub fn human(&self) -> String {
        let mut s = format!(
            "loadgen conns {}{}: {} of {} opened in {:.2} s ({:.0}/s), {} open after {:.1} s hold\n",
            self.engine.url,
            self.plan.path,
            self.opened,
            self.plan.conns,
            self.connect_phase_s,
            self.connect_rate_per_s,
            self.open_at_end,
            self.plan.hold.as_secs_f64()
        );
        let c = &self.connect_time;
        s += &format!(
            "  connect time p50 {} p99 {} max {}\n  errors       connect: {}; during hold: {}\n",
            ns(c.p50_ns),
            ns(c.p99_ns),
            ns(c.max_ns),
            self.connect_failures.summary(),
            self.disconnects.summary()
        );
        if let Some(tls) = &self.engine.tls {
            s += &tls.human();
        }
        s += &self.server.human();
        s
    }
}

impl ServerMemory {
    /// From the samples before connecting, at the end of the hold and after closing, with `open` connections
    /// held.
    pub fn new([before, during, after]: [Option<ProcSample>; 3], open: u64) -> ServerMemory {
        // A server that held connections before reuses the memory it freed, so its RSS may not grow at all:
        // that says nothing about the cost of a connection, and 0 would be read as "free".
        let per_conn = match (before, during) {
            (Some(b), Some(d)) if open > 0 && d.rss_kib > b.rss_kib => {
                Some((d.rss_kib - b.rss_kib) as f64 * 1024.0 / open as f64)
            }
            _ => None,
        };
        ServerMemory { before, during, after, rss_bytes_per_conn: per_conn }
    }

    /// The server's lines of the human table (none without `--server-pid`).
    pub fn human(&self) -> String {
        let mut s = String::new();
        if let (Some(b), Some(d)) = (self.before, self.during) {
            let after = self.after.map_or("?".to_owned(), |a| a.rss_kib.to_string());
            s += &format!("  server RSS   before {} KiB, held {} KiB, after {after} KiB", b.rss_kib, d.rss_kib);
            s += &match self.rss_bytes_per_conn {
                Some(bytes) => format!("; {bytes:.0} bytes per connection\n"),
                None if d.rss_kib <= b.rss_kib => "\n  server RSS did not grow: bytes per connection not measurable; \
                                                  restart the server before measuring\n"
                    .to_owned(),
                None => "; no connection held\n".to_owned(),
            };
            let span = d.at_ns.saturating_sub(b.at_ns).max(1) as f64;
            s += &format!(
                "  server CPU   {:.1}% from before connecting to the end of the hold\n",
                100.0 * d.cpu_ns.saturating_sub(b.cpu_ns) as f64 / span
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, rss_kib: u64) -> Option<ProcSample> {
        Some(ProcSample { at_ns: at_s * 1_000_000_000, cpu_ns: at_s * 100_000_000, rss_kib, threads: 3 })
    }

    #[test]
    fn rss_growth_is_shared_over_the_connections_held() {
        let m = ServerMemory::new([sample(0, 10_000), sample(10, 10_300), sample(11, 10_100)], 300);
        assert_eq!(m.rss_bytes_per_conn, Some(1024.0));
        let text = m.human();
        assert!(
            text.contains("before 10000 KiB, held 10300 KiB, after 10100 KiB; 1024 bytes per connection"),
            "{text}"
        );
        assert!(text.contains("server CPU   10.0%"), "{text}");
    }

    #[test]
    fn rss_that_did_not_grow_is_not_measurable_rather_than_zero() {
        // A server that held connections before reuses the memory it freed: its RSS stays flat (or shrinks).
        for held in [10_000, 9_990] {
            let m = ServerMemory::new([sample(0, 10_000), sample(10, held), sample(11, held)], 300);
            assert_eq!(m.rss_bytes_per_conn, None, "held {held} KiB");
            let text = m.human();
            assert!(!text.contains("bytes per connection\n"), "{text}");
            assert!(
                text.contains("server RSS did not grow: bytes per connection not measurable; restart the server"),
                "{text}"
            );
        }
    }

    #[test]
    fn without_server_samples_there_are_no_server_lines() {
        let m = ServerMemory::new([None, None, None], 300);
        assert_eq!(m.rss_bytes_per_conn, None);
        assert_eq!(m.human(), "");
        assert_eq!(ServerMemory::new([sample(0, 1), sample(1, 2), None], 0).rss_bytes_per_conn, None, "nothing held");
    }
}
