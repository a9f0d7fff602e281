//! Turning a run's outcome into what people read: the final human table, the `--json` document (every
//! figure plus the full configuration, with stable field names documented in the README), and the
//! `--max-loss` / `--max-p99` verdict.
//!
//! `--json -` writes the JSON document to standard output; the human table then goes to standard error, so
//! that stdout holds nothing but the one JSON document ([`print_human`], [`write_json`]).
//!
//! Units in JSON: nanoseconds for latencies (`*_ns`), seconds for durations (`*_s`), messages and bytes per
//! second for rates, fractions (0..1) for shares and ratios.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::engine::EngineConfig;
use crate::fanout::{FanoutOutcome, Tick};
use crate::plan::{FanoutPlan, Rate};
use crate::stats::{Delivery, Failures, Percentiles, RecvCounters};
use crate::sys::ProcSample;

/// Above this share of its cores, loadgen warns that it may be the bottleneck.
pub const SATURATED_SHARE: f64 = 0.9;

/// A number with an SI suffix: `12.3k`, `4.56M`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Bytes per second in binary units.
pub fn bytes_rate(v: f64) -> String {
    if v >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB/s", v / (1024.0 * 1024.0 * 1024.0))
    } else if v >= 1024.0 * 1024.0 {
        format!("{:.1} MiB/s", v / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB/s", v / 1024.0)
    }
}

/// A duration in nanoseconds, in the unit that reads best.
pub fn ns(v: u64) -> String {
    let f = v as f64;
    if v >= 1_000_000_000 {
        format!("{:.2}s", f / 1e9)
    } else if v >= 1_000_000 {
        format!("{:.2}ms", f / 1e6)
    } else if v >= 1_000 {
        format!("{:.1}us", f / 1e3)
    } else {
        format!("{v}ns")
    }
}

/// A latency of one progress interval: `-` when the interval had no samples, which the timeline records as 0
/// (every recorded latency is at least 1 ns).
pub fn ns_or_dash(v: u64) -> String {
    if v == 0 {
        "-".to_owned()
    } else {
        ns(v)
    }
}

/// Whether `--json` names standard output (`-`).
pub fn json_to_stdout(json: Option<&Path>) -> bool {
    json.is_some_and(|p| p == Path::new("-"))
}

/// Prints human-readable output: on stdout, or on stderr when stdout carries the JSON report (`--json -`).
pub fn print_human(json: Option<&Path>, text: &str) {
    if json_to_stdout(json) {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

/// Writes `report` as pretty-printed JSON and a newline to the file `path`, or to stdout when it is `-`.
pub fn write_json<T: Serialize>(path: &Path, report: &T) -> anyhow::Result<()> {
    if json_to_stdout(Some(path)) {
        let mut out = std::io::stdout().lock();
        encode_json(&mut out, report).and_then(|()| out.flush().map_err(Into::into)).context("writing JSON to stdout")
    } else {
        let mut text = Vec::new();
        encode_json(&mut text, report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }
}

/// The JSON document: pretty-printed, then a newline.
fn encode_json<T: Serialize>(out: &mut impl std::io::Write, report: &T) -> anyhow::Result<()> {
    serde_json::to_writer_pretty(&mut *out, report).context("encoding the JSON report")?;
    out.write_all(b"\n").context("writing the JSON report")
}

/// The engine settings as recorded in the report.
#[derive(Debug, Clone, Serialize)]
pub struct EngineSummary {
    /// The target URL (the first `--url`).
    pub url: String,
    /// The address connected to.
    pub addr: String,
    /// Every `--url`, in the order connections are dealt over them.
    pub urls: Vec<String>,
    /// Every `--pub-url` (publishers only; empty: publishers use `urls` like everyone else).
    pub pub_urls: Vec<String>,
    /// Worker threads.
    pub threads: usize,
    /// Cores the workers were pinned to (`null`: not pinned).
    pub cpus: Option<Vec<usize>>,
    /// Connections per second (0: unlimited).
    pub connect_rate: f64,
    /// Connect plus handshake timeout, seconds.
    pub connect_timeout_s: f64,
    /// Source addresses used.
    pub source_ips: Vec<String>,
    /// Bytes per read call.
    pub read_size: usize,
    /// Receive times from the kernel (`kernel`) or from a clock read after each read (`read`).
    pub rx_time: crate::engine::RxTime,
    /// How connections authenticated (`null`: they did not).
    pub auth: Option<crate::auth::AuthSummary>,
    /// `wss://`: how TLS was set up and the handshakes it made (`null`: plain `ws://`).
    pub tls: Option<crate::tls::TlsSummary>,
    /// `--compress`: permessage-deflate was offered (`counters.deflate_negotiated`: how many accepted).
    pub compress: bool,
}

impl EngineSummary {
    /// From the engine configuration.
    pub fn of(cfg: &EngineConfig) -> EngineSummary {
        EngineSummary {
            url: cfg.target.url.clone(),
            addr: cfg.target.addr.to_string(),
            urls: cfg.targets[..cfg.sub_targets].iter().map(|t| t.url.clone()).collect(),
            pub_urls: cfg.targets[cfg.sub_targets..].iter().map(|t| t.url.clone()).collect(),
            threads: cfg.threads,
            cpus: cfg.cpus.clone(),
            connect_rate: cfg.connect_rate,
            connect_timeout_s: cfg.connect_timeout.as_secs_f64(),
            source_ips: cfg.source_ips.iter().map(|ip| ip.to_string()).collect(),
            read_size: cfg.read_size,
            rx_time: cfg.rx_time,
            auth: cfg.auth.as_ref().map(|a| a.summary()),
            tls: cfg.tls.as_ref().map(|t| t.summary()),
            compress: cfg.compress,
        }
    }
}

/// Connection figures.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    /// Connections the run wanted.
    pub planned: u64,
    /// Connections that completed the handshake.
    pub opened: u64,
    /// Failed to open, by class.
    pub connect_failures: Failures,
    /// Ended by the server or the network during the run, by class.
    pub disconnects: Failures,
    /// Connect failures plus disconnects.
    pub failures_total: u64,
    /// From the first dial to the last connection settled, seconds.
    pub connect_phase_s: f64,
    /// Dial-to-101 time of each opened connection.
    pub connect_time: Percentiles,
}

/// Throughput over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Messages published per second (sent during the window).
    pub published_msgs_per_s: f64,
    /// Payload bytes published per second.
    pub published_bytes_per_s: f64,
    /// Messages received per second during the window (all subscribers, by receive time).
    pub delivered_msgs_per_s: f64,
    /// Payload bytes received per second during the window (after inflating, with `--compress`).
    pub delivered_bytes_per_s: f64,
    /// The same messages' payload bytes as they came on the wire (compressed or not) per second.
    pub delivered_wire_bytes_per_s: f64,
    /// Deliveries per second the published messages called for.
    pub expected_msgs_per_s: f64,
}

/// Loadgen's own resource use during the window.
#[derive(Debug, Clone, Serialize)]
pub struct LoadgenUsage {
    /// Process CPU time (all threads) during the window, seconds.
    pub cpu_s: f64,
    /// Process CPU time over (window x worker threads): 1.0 = every worker core busy.
    pub cpu_share: f64,
    /// Process CPU nanoseconds per message received in the window.
    pub cpu_ns_per_delivery: f64,
    /// Per worker: core and share of that core during the window.
    pub threads: Vec<ThreadUsage>,
    /// Peak resident set size, KiB.
    pub max_rss_kib: u64,
    /// Some worker was above 90% of its core: the figures are a lower bound for the server.
    pub saturated: bool,
}

/// One worker thread's CPU use.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadUsage {
    /// Worker number.
    pub id: usize,
    /// Core it was pinned to.
    pub core: Option<usize>,
    /// Thread CPU time over window length.
    pub cpu_share: f64,
}

/// The server's use, sampled from /proc (`--server-pid`).
#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    /// The process sampled.
    pub pid: u32,
    /// Its CPU time during the window over the window (1.0 = one core busy).
    pub cpu_share: f64,
    /// Its CPU nanoseconds per message delivered in the window.
    pub cpu_ns_per_delivery: f64,
    /// RSS at the window's start and end, KiB.
    pub rss_kib_start: u64,
    /// RSS at the window's end, KiB.
    pub rss_kib_end: u64,
    /// Threads at the end.
    pub threads: u64,
}

/// The thresholds given on the command line and whether the run met them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// `--max-loss` as a fraction of expected deliveries.
    pub max_loss: Option<f64>,
    /// `--max-p99` in nanoseconds.
    pub max_p99_ns: Option<u64>,
    /// Every threshold held.
    pub passed: bool,
    /// What broke, in words.
    pub violations: Vec<String>,
}

impl Verdict {
    /// Checks the thresholds against a delivery account and a latency summary.
    pub fn check(max_loss: Option<f64>, max_p99_ns: Option<u64>, d: &Delivery, lat: &Percentiles) -> Verdict {
        let mut violations = Vec::new();
        if let Some(limit) = max_loss {
            if d.loss_ratio() > limit {
                violations.push(format!(
                    "loss {:.6} ({} of {} expected deliveries missing) above --max-loss {limit}",
                    d.loss_ratio(),
                    d.undelivered(),
                    d.expected
                ));
            }
        }
        if let Some(limit) = max_p99_ns {
            if lat.count == 0 {
                violations.push("no latency measured, --max-p99 cannot hold".to_owned());
            } else if lat.p99_ns > limit {
                violations.push(format!("p99 {} above --max-p99 {}", ns(lat.p99_ns), ns(limit)));
            }
        }
        Verdict { max_loss, max_p99_ns, passed: violations.is_empty(), violations }
    }
}

/// The whole fan-out report, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Always "fanout".
    pub scenario: &'static str,
    /// loadgen's version.
    pub loadgen_version: &'static str,
    /// Engine settings.
    pub engine: EngineSummary,
    /// Scenario settings.
    pub plan: FanoutPlan,
    /// Connections.
    pub connections: Connections,
    /// Subscribers confirmed by probes before measuring.
    pub subscribers_confirmed: u64,
    /// Subscribers that could be confirmed (open, with an open publisher on their topic).
    pub subscribers_confirmable: u64,
    /// Length of the measured window, seconds.
    pub window_s: f64,
    /// Delivery accounting.
    pub delivery: Delivery,
    /// Undelivered over expected.
    pub loss_ratio: f64,
    /// Every straggler arrived before the grace period ended.
    pub drained: bool,
    /// Rates.
    pub throughput: Throughput,
    /// End-to-end latency of measured messages.
    pub latency: Percentiles,
    /// Open loop: how late loadgen sent messages against their schedule.
    pub send_lag: Percentiles,
    /// Raw receive counters.
    pub counters: RecvCounters,
    /// Loadgen's own resource use.
    pub loadgen: LoadgenUsage,
    /// The server's, with `--server-pid`.
    pub server: Option<ServerUsage>,
    /// One entry per second.
    pub timeline: Vec<Tick>,
    /// Thresholds.
    pub verdict: Verdict,
}

impl FanoutReport {
    /// Builds the report.
    pub fn new(
        cfg: &EngineConfig,
        plan: &FanoutPlan,
        o: &FanoutOutcome,
        server_pid: Option<u32>,
        thresholds: (Option<f64>, Option<u64>),
    ) -> FanoutReport {
        let window = o.window.as_secs_f64().max(1e-9);
        let size = plan.size as f64;
        let latency = Percentiles::of(&o.latency);
        let threads: Vec<ThreadUsage> = o
            .thread_cpu
            .iter()
            .enumerate()
            .map(|(id, (share, core))| ThreadUsage { id, core: *core, cpu_share: *share })
            .collect();
        let saturated = threads.iter().any(|t| t.cpu_share > SATURATED_SHARE);
        let in_window = o.counters.messages_in_window.max(1) as f64;
        let server = server_pid.zip(o.server).map(|(pid, (a, b)): (u32, (ProcSample, ProcSample))| {
            let cpu = b.cpu_ns.saturating_sub(a.cpu_ns) as f64;
            let span = (b.at_ns.saturating_sub(a.at_ns) as f64).max(1.0);
            ServerUsage {
                pid,
                cpu_share: cpu / span,
                cpu_ns_per_delivery: cpu / in_window,
                rss_kib_start: a.rss_kib,
                rss_kib_end: b.rss_kib,
                threads: b.threads,
            }
        });
        FanoutReport {
            scenario: "fanout",
            loadgen_version: env!("CARGO_PKG_VERSION"),
            engine: EngineSummary::of(cfg),
            plan: plan.clone(),
            connections: Connections {
                planned: (plan.subs + plan.pubs) as u64,
                opened: o.connected,
                connect_failures: o.connect_failures.clone(),
                disconnects: o.disconnects.clone(),
                failures_total: o.connect_failures.total() + o.disconnects.total(),
                connect_phase_s: o.connect_phase.as_secs_f64(),
                connect_time: Percentiles::of(&o.connect_time),
            },
            subscribers_confirmed: o.confirmed.0,
            subscribers_confirmable: o.confirmed.1,
            window_s: window,
            delivery: o.delivery,
            loss_ratio: o.delivery.loss_ratio(),
            drained: o.drained,
            throughput: Throughput {
                published_msgs_per_s: o.delivery.published as f64 / window,
                published_bytes_per_s: o.delivery.published as f64 * size / window,
                delivered_msgs_per_s: o.counters.messages_in_window as f64 / window,
                delivered_bytes_per_s: o.counters.bytes_in_window as f64 / window,
                delivered_wire_bytes_per_s: o.counters.wire_bytes_in_window as f64 / window,
                expected_msgs_per_s: o.delivery.expected as f64 / window,
            },
            latency,
            send_lag: Percentiles::of(&o.send_lag),
            counters: o.counters.clone(),
            loadgen: LoadgenUsage {
                cpu_s: o.cpu_ns as f64 / 1e9,
                cpu_share: o.cpu_ns as f64 / 1e9 / window / cfg.threads.max(1) as f64,
                cpu_ns_per_delivery: o.cpu_ns as f64 / in_window,
                threads,
                max_rss_kib: o.usage_end.max_rss_kib,
                saturated,
            },
            server,
            timeline: o.ticks.clone(),
            verdict: Verdict::check(thresholds.0, thresholds.1, &o.delivery, &latency),
        }
    }

    /// The human-readable table.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let p = &self.plan;
        let rate = match p.rate {
            Rate::Fixed(r) => format!("{}/s", si(r)),
            Rate::Max => "max".to_owned(),
        };
        let window = p.window.map_or(String::new(), |k| format!(", window {k}"));
        let e = &self.engine;
        let urls = match e.pub_urls.is_empty() {
            true => e.urls.join(","),
            false => format!("{} (publishers on {})", e.urls.join(","), e.pub_urls.join(",")),
        };
        let _ = writeln!(
            s,
            "loadgen fanout {urls}: {} subs / {} topics / {} pubs, {} B, rate {rate}{window}, {:.1} s (+{:.1} s warm-up)",
            p.subs,
            p.topics,
            p.pubs,
            p.size,
            self.window_s,
            p.warmup.as_secs_f64()
        );
        let c = &self.connections;
        let _ = writeln!(
            s,
            "  connections  {} of {} opened in {:.2} s; connect time p50 {} p99 {} max {}; {}/{} subscribers confirmed",
            c.opened,
            c.planned,
            c.connect_phase_s,
            ns(c.connect_time.p50_ns),
            ns(c.connect_time.p99_ns),
            ns(c.connect_time.max_ns),
            self.subscribers_confirmed,
            self.subscribers_confirmable
        );
        let t = &self.throughput;
        let _ = writeln!(
            s,
            "  published    {:>14} msgs  {:>9} msgs/s  {}",
            self.delivery.published,
            si(t.published_msgs_per_s),
            bytes_rate(t.published_bytes_per_s)
        );
        let _ = writeln!(
            s,
            "  delivered    {:>14} msgs  {:>9} msgs/s  {}   (received during the window)",
            self.counters.messages_in_window,
            si(t.delivered_msgs_per_s),
            bytes_rate(t.delivered_bytes_per_s)
        );
        if self.engine.compress {
            let k = &self.counters;
            let per = |b: u64| if k.messages_in_window > 0 { b as f64 / k.messages_in_window as f64 } else { 0.0 };
            let _ = writeln!(
                s,
                "  compression  negotiated on {} of {} connections; {} messages inflated; per delivery {:.0} B wire, \
                 {:.0} B payload ({} on the wire)",
                k.deflate_negotiated,
                c.opened,
                k.compressed_messages,
                per(k.wire_bytes_in_window),
                per(k.bytes_in_window),
                bytes_rate(t.delivered_wire_bytes_per_s)
            );
        }
        let d = &self.delivery;
        let pct = if d.expected > 0 { 100.0 * d.delivered as f64 / d.expected as f64 } else { 100.0 };
        let _ = writeln!(
            s,
            "  accounting   expected {} delivered {} ({pct:.3}%): lost {}, in flight {}, disconnected {}; \
             duplicates {}, reordered {}{}",
            d.expected,
            d.delivered,
            d.lost,
            d.in_flight,
            d.lost_disconnected,
            self.counters.duplicates,
            self.counters.reordered,
            if self.drained { "" } else { " (grace period ran out)" }
        );
        if self.counters.gap_notices > 0 || !e.pub_urls.is_empty() {
            let _ = writeln!(
                s,
                "  gap notices  {} (from a herald cluster: messages of a topic lost between nodes)",
                self.counters.gap_notices
            );
        }
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples{})",
            ns(l.p50_ns),
            ns(l.p90_ns),
            ns(l.p99_ns),
            ns(l.p999_ns),
            ns(l.max_ns),
            l.count,
            if matches!(p.rate, Rate::Fixed(_)) { ", from scheduled send times" } else { ", from send times" }
        );
        if matches!(p.rate, Rate::Fixed(_)) {
            let g = &self.send_lag;
            let _ =
                writeln!(s, "  send lag     p99 {}  max {}  (loadgen behind its schedule)", ns(g.p99_ns), ns(g.max_ns));
        }
        let _ = writeln!(
            s,
            "  errors       connect: {}; during run: {}{}",
            c.connect_failures.summary(),
            c.disconnects.summary(),
            match self.counters.error_replies {
                0 => String::new(),
                n => format!("; error replies {n}"),
            }
        );
        if let Some(tls) = &self.engine.tls {
            s += &tls.human();
        }
        let u = &self.loadgen;
        let per_thread: Vec<String> = u
            .threads
            .iter()
            .map(|t| match t.core {
                Some(core) => format!("#{} cpu{core} {:.0}%", t.id, t.cpu_share * 100.0),
                None => format!("#{} {:.0}%", t.id, t.cpu_share * 100.0),
            })
            .collect();
        let _ = writeln!(
            s,
            "  loadgen CPU  {:.1}% of {} worker core(s) [{}], {:.1} ns per delivered message",
            u.cpu_share * 100.0,
            self.engine.threads,
            per_thread.join(", "),
            u.cpu_ns_per_delivery
        );
        if let Some(srv) = &self.server {
            let _ = writeln!(
                s,
                "  server       pid {}: {:.1}% CPU ({:.1} ns per delivery), RSS {} -> {} KiB, {} threads",
                srv.pid,
                srv.cpu_share * 100.0,
                srv.cpu_ns_per_delivery,
                srv.rss_kib_start,
                srv.rss_kib_end,
                srv.threads
            );
        }
        if u.saturated {
            let _ = writeln!(
                s,
                "WARNING: a loadgen worker was above {:.0}% of its core: these figures are a lower bound for the server.",
                SATURATED_SHARE * 100.0
            );
        }
        for v in &self.verdict.violations {
            let _ = writeln!(s, "FAIL: {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_units() {
        assert_eq!(si(5_300_000.0), "5.30M");
        assert_eq!(si(12_345.0), "12.3k");
        assert_eq!(si(12.0), "12");
        assert_eq!(ns(1_500), "1.5us");
        assert_eq!(ns(2_500_000), "2.50ms");
        assert_eq!(ns(1_000_000_000), "1.00s");
        assert_eq!(ns(999), "999ns");
        assert_eq!(ns_or_dash(0), "-", "no samples");
        assert_eq!(ns_or_dash(999), "999ns");
    }

    #[test]
    fn json_dash_means_stdout_and_moves_the_table_to_stderr() {
        assert!(json_to_stdout(Some(Path::new("-"))));
        assert!(!json_to_stdout(Some(Path::new("run.json"))));
        assert!(!json_to_stdout(Some(Path::new("./-"))), "a file named - can still be written as ./-");
        assert!(!json_to_stdout(None));
        let mut out = Vec::new();
        let report = Verdict { max_loss: Some(0.0), passed: true, ..Verdict::default() };
        encode_json(&mut out, &report).expect("encodes");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(text.ends_with("}\n"), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).expect("one JSON document");
        assert_eq!(back["passed"], true);
    }

    #[test]
    fn verdict_checks_loss_and_p99() {
        let d = Delivery { published: 10, expected: 1000, delivered: 990, lost: 10, ..Delivery::default() };
        let lat = Percentiles { count: 5, p99_ns: 2_000_000, ..Percentiles::default() };
        assert!(Verdict::check(None, None, &d, &lat).passed);
        assert!(Verdict::check(Some(0.02), Some(3_000_000), &d, &lat).passed);
        let v = Verdict::check(Some(0.0), Some(1_000_000), &d, &lat);
        assert!(!v.passed);
        assert_eq!(v.violations.len(), 2);
        let none = Verdict::check(None, Some(1), &d, &Percentiles::default());
        assert!(!none.passed, "no samples cannot satisfy a p99 bound");
    }
}
