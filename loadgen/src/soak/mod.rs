//! `loadgen soak`: mixed traffic for a long time (10 minutes by default), watching the server for leaks.
//!
//! The core is a fan-out run ([`crate::fanout`]: its engine, its exact per-publisher sequence accounting)
//! whose window lasts the whole soak; beside it, [`side`] threads churn connections, hold slow consumers and
//! send bad handshakes. Every `--interval` the main thread samples the server's RSS and open descriptors
//! (`/proc/PID`), the deliveries, the messages lost so far by the well-behaved subscribers (the fan-out's;
//! slow consumers are side traffic, reported separately) and the p99 latency of the interval. At the end the
//! fan-out's final accounting must show no loss, no well-behaved connection may have been dropped, and none
//! of RSS, descriptors, loss or p99 may trend upward ([`trend`]).

pub mod side;
pub mod trend;

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::engine::{EngineConfig, Phase};
use crate::fanout::run::{start, AssembleInput, Ticker};
use crate::plan::FanoutPlan;
use crate::report::{ns, si};
use crate::stats::{Delivery, Percentiles};
use crate::sys;
use side::{Side, SidePlan, SideSnapshot};
use trend::{Rules, Trend};

/// What a soak run does.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// The well-behaved traffic; its `duration` is the soak's.
    pub fanout: FanoutPlan,
    /// The side traffic.
    pub side: SidePlan,
    /// Sampling period.
    pub interval: Duration,
    /// Samples before this are left out of the trend test (start-up: pools filling, caches warming).
    pub trend_warmup: Duration,
    /// The server's process id (`None`: not sampled).
    pub server_pid: Option<u32>,
    /// The trend test's tolerances ([`trend::RULES`] unless widened on the command line).
    pub rules: Rules,
}

/// One interval.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the start, at the interval's end.
    pub t: f64,
    /// Server resident set size, KiB (0: not sampled).
    pub rss_kib: u64,
    /// Server open descriptors (0: not sampled).
    pub fds: u64,
    /// Messages delivered to the well-behaved subscribers per second.
    pub deliveries_per_s: f64,
    /// Messages published per second.
    pub published_per_s: f64,
    /// Messages the well-behaved subscribers found missing in this interval.
    pub loss: u64,
    /// Latency percentiles of the interval's deliveries.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest.
    pub max_ns: u64,
    /// Well-behaved connections open.
    pub open: u64,
    /// Side traffic so far.
    pub side: SideSnapshot,
}

/// The trends of the four watched series.
#[derive(Debug, Clone, Serialize)]
pub struct Trends {
    /// Server RSS.
    pub rss_kib: Trend,
    /// Server descriptors.
    pub fds: Trend,
    /// Loss per interval.
    pub loss: Trend,
    /// p99 per interval.
    pub p99_ns: Trend,
}

/// Everything a soak run found.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The server URL.
    pub url: String,
    /// Well-behaved subscribers, topics, publishers, payload bytes, and the publish rate (`max` or per second).
    pub fanout: String,
    /// Seconds of soak and of each interval.
    pub duration_s: f64,
    /// Interval length, seconds.
    pub interval_s: f64,
    /// Trend warm-up, seconds.
    pub trend_warmup_s: f64,
    /// Per interval.
    pub samples: Vec<Sample>,
    /// The fan-out's final accounting.
    pub delivery: Delivery,
    /// Latency over the whole run.
    pub latency: Percentiles,
    /// Well-behaved connections that ended during the run, by cause.
    pub disconnects: String,
    /// The side traffic in total.
    pub side: SideSnapshot,
    /// The trend test's findings, and its rules.
    pub trends: Trends,
    /// The rules applied.
    pub rules: trend::Rules,
    /// Passed, and why not.
    pub passed: bool,
    /// Reasons for failing.
    pub failures: Vec<String>,
}

/// Runs the soak; `print` gets one line per interval.
pub fn run(
    cfg: &EngineConfig,
    plan: &SoakPlan,
    quiet: bool,
    mut print: impl FnMut(&str),
) -> anyhow::Result<SoakReport> {
    let tty = !quiet && std::io::stderr().is_terminal();
    let mut started = start(cfg, plan.fanout.clone(), tty).context("opening the well-behaved connections")?;
    let side = Side::start(&plan.side).context("starting the side traffic")?;
    let shared = started.shared.clone();

    let t0 = sys::now_ns() + 2_000_000;
    let measure = t0 + plan.fanout.warmup.as_nanos() as u64;
    let end = measure + plan.fanout.duration.as_nanos() as u64;
    shared.t0_ns.store(t0, Ordering::Release);
    shared.measure_ns.store(measure, Ordering::Release);
    shared.end_ns.store(end, Ordering::Release);
    shared.set_phase(Phase::Run);
    let usage_start = sys::process_usage();
    let server_start = plan.server_pid.and_then(|pid| sys::proc_sample(pid).ok());

    print(&header());
    let mut ticker = Ticker::new(t0);
    let mut samples = Vec::new();
    let mut lost_before = 0;
    let step = plan.interval.as_nanos().max(1) as u64;
    let mut next = t0 + step;
    loop {
        let now = sys::now_ns();
        let at = next.min(end);
        if now < at {
            std::thread::sleep(Duration::from_nanos(at - now));
            continue;
        }
        let tick = ticker.take(&shared, t0);
        let lost = shared.sum(|p| p.lost.load(Ordering::Relaxed));
        let (rss_kib, fds) = match plan.server_pid {
            Some(pid) => server_usage(pid),
            None => (0, 0),
        };
        let sample = Sample {
            t: tick.t,
            rss_kib,
            fds,
            deliveries_per_s: tick.received_per_s,
            published_per_s: tick.published_per_s,
            loss: lost.saturating_sub(lost_before),
            p50_ns: tick.p50_ns,
            p99_ns: tick.p99_ns,
            max_ns: tick.max_ns,
            open: tick.open,
            side: side.stats.snapshot(),
        };
        lost_before = lost;
        print(&line(&sample));
        samples.push(sample);
        if at >= end {
            break;
        }
        next += step;
    }
    let side_total = side.stop();
    started.grace();
    let usage_end = sys::process_usage();
    let server_end = plan.server_pid.and_then(|pid| sys::proc_sample(pid).ok());
    let outcome = started.finish(AssembleInput {
        confirmed: (0, 0),
        connect_phase: Duration::ZERO,
        window: Duration::from_nanos(end - measure),
        cpu_ns: usage_end.cpu_ns.saturating_sub(usage_start.cpu_ns),
        usage_end,
        server: server_start.zip(server_end),
        ticks: Vec::new(),
        drained: false,
    })?;
    Ok(judge(cfg, plan, samples, &outcome, side_total))
}

/// Builds the report and its verdict.
fn judge(
    cfg: &EngineConfig,
    plan: &SoakPlan,
    samples: Vec<Sample>,
    outcome: &crate::fanout::FanoutOutcome,
    side: SideSnapshot,
) -> SoakReport {
    let warm = plan.trend_warmup.as_secs_f64();
    let series = |f: fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().filter(|s| s.t > warm).map(|s| (s.t, f(s))).collect()
    };
    let sampled = plan.server_pid.is_some();
    let trends = Trends {
        rss_kib: trend::judge(&if sampled { series(|s| s.rss_kib as f64) } else { Vec::new() }, plan.rules.rss_kib),
        fds: trend::judge(&if sampled { series(|s| s.fds as f64) } else { Vec::new() }, plan.rules.fds),
        loss: trend::judge(&series(|s| s.loss as f64), plan.rules.loss),
        p99_ns: trend::judge(&series(|s| s.p99_ns as f64), plan.rules.p99_ns),
    };
    let mut failures = Vec::new();
    for (name, t) in
        [("RSS", &trends.rss_kib), ("descriptors", &trends.fds), ("loss", &trends.loss), ("p99", &trends.p99_ns)]
    {
        if t.rising {
            failures.push(format!(
                "{name} trends upward: median {:.0} -> {:.0}, fitted rise {:.0} (allowed {:.0})",
                t.first_median, t.last_median, t.fitted_rise, t.allowed
            ));
        }
    }
    let live_loss: u64 = samples.iter().map(|s| s.loss).sum();
    if live_loss > 0 {
        failures.push(format!("well-behaved subscribers found {live_loss} messages missing during the run"));
    }
    let d = &outcome.delivery;
    let missing = d.lost + d.lost_disconnected + d.in_flight;
    if missing > 0 {
        failures.push(format!(
            "final accounting: {} lost, {} lost on disconnected subscribers, {} never arrived",
            d.lost, d.lost_disconnected, d.in_flight
        ));
    }
    if outcome.disconnects.total() > 0 {
        failures.push(format!("well-behaved connections dropped: {}", outcome.disconnects.summary()));
    }
    if d.expected == 0 {
        failures.push("nothing was published".to_owned());
    }
    if !sampled {
        failures.push("the server's process was not found: RSS and descriptors were not watched".to_owned());
    }
    let f = &plan.fanout;
    SoakReport {
        url: cfg.target.url.clone(),
        fanout: format!(
            "{} subs / {} topics / {} pubs, {} B at {}",
            f.subs,
            f.topics,
            f.pubs,
            f.size,
            match f.rate {
                crate::plan::Rate::Max => "max".to_owned(),
                crate::plan::Rate::Fixed(r) => format!("{r}/s"),
            }
        ),
        duration_s: f.duration.as_secs_f64(),
        interval_s: plan.interval.as_secs_f64(),
        trend_warmup_s: warm,
        samples,
        delivery: *d,
        latency: Percentiles::of(&outcome.latency),
        disconnects: outcome.disconnects.summary(),
        side,
        trends,
        rules: plan.rules,
        passed: failures.is_empty(),
        failures,
    }
}

/// The server's RSS (KiB) and open descriptors (0 when unreadable).
fn server_usage(pid: u32) -> (u64, u64) {
    let rss = sys::proc_sample(pid).map(|s| s.rss_kib).unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    (rss, fds)
}

/// The process listening on TCP `port` on this machine, from `/proc/net/tcp{,6}` and `/proc/*/fd`.
pub fn find_listener(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        inodes.extend(listening_inodes(&text, port));
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Inodes of the sockets listening on `port` in the text of `/proc/net/tcp` (state 0A).
fn listening_inodes(text: &str, port: u16) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

/// The table's header.
fn header() -> String {
    format!(
        "{:>7} {:>10} {:>6} {:>12} {:>6} {:>9} {:>7} {:>7} {:>9} {:>5}",
        "t", "rss", "fds", "deliveries/s", "loss", "p99", "churned", "slow-x", "bad-sent", "open"
    )
}

/// One interval's line.
fn line(s: &Sample) -> String {
    format!(
        "{:>6.0}s {:>7.1}MiB {:>6} {:>12} {:>6} {:>9} {:>7} {:>7} {:>9} {:>5}",
        s.t,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        si(s.deliveries_per_s),
        s.loss,
        ns(s.p99_ns),
        s.side.churned(),
        s.side.slow_closed_by_server,
        s.side.bad_sent,
        s.open
    )
}

impl SoakReport {
    /// The summary after the per-interval lines.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let d = &self.delivery;
        let _ = writeln!(s, "\nsoak {} for {:.0}s: {}", self.url, self.duration_s, self.fanout);
        let _ = writeln!(
            s,
            "delivery: {} expected, {} delivered, {} lost, {} lost on disconnect, {} in flight; p99 {} max {}",
            d.expected,
            d.delivered,
            d.lost,
            d.lost_disconnected,
            d.in_flight,
            ns(self.latency.p99_ns),
            ns(self.latency.max_ns)
        );
        let x = &self.side;
        let _ = writeln!(
            s,
            "churn: {} clean close, {} FIN, {} FIN mid-request, {} RST, {} failed",
            x.churn_clean, x.churn_fin, x.churn_fin_mid_request, x.churn_rst, x.churn_failed
        );
        let _ = writeln!(
            s,
            "slow consumers: {} sessions, {} closed by the server, {} failed to connect, {} read",
            x.slow_sessions,
            x.slow_closed_by_server,
            x.slow_failed,
            crate::report::bytes_rate(x.slow_bytes as f64).trim_end_matches("/s")
        );
        let answers: Vec<String> = x.bad_answers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(s, "bad handshakes: {} sent; answers {}", x.bad_sent, answers.join(", "));
        for (name, t) in [
            ("rss_kib", &self.trends.rss_kib),
            ("fds", &self.trends.fds),
            ("loss", &self.trends.loss),
            ("p99_ns", &self.trends.p99_ns),
        ] {
            if t.samples < trend::MIN_SAMPLES {
                let _ = writeln!(s, "trend {name}: {} samples, too few to judge", t.samples);
                continue;
            }
            let _ = writeln!(
                s,
                "trend {name}: {} samples, median {:.0} -> {:.0}, fitted rise {:.0}, allowed {:.0}: {}",
                t.samples,
                t.first_median,
                t.last_median,
                t.fitted_rise,
                t.allowed,
                if t.rising { "RISING" } else { "flat" }
            );
        }
        if self.passed {
            let _ = writeln!(s, "PASS");
        } else {
            for f in &self.failures {
                let _ = writeln!(s, "FAIL: {f}");
            }
        }
        s
    }

    /// The SVG picture: RSS, descriptors, deliveries and p99 over time.
    pub fn svg(&self) -> String {
        let t: Vec<f64> = self.samples.iter().map(|s| s.t).collect();
        let col = |f: fn(&Sample) -> f64| self.samples.iter().map(f).collect::<Vec<f64>>();
        let panels = [
            crate::plot::Panel { label: "server RSS (MiB)", series: vec![("RSS", col(|s| s.rss_kib as f64 / 1024.0))] },
            crate::plot::Panel { label: "server fds", series: vec![("fds", col(|s| s.fds as f64))] },
            crate::plot::Panel {
                label: "messages / s",
                series: vec![("delivered", col(|s| s.deliveries_per_s)), ("published", col(|s| s.published_per_s))],
            },
            crate::plot::Panel {
                label: "latency (ms)",
                series: vec![("p99", col(|s| s.p99_ns as f64 / 1e6)), ("p50", col(|s| s.p50_ns as f64 / 1e6))],
            },
        ];
        let title = format!("loadgen soak {}: {}, {:.0} s", self.url, self.fanout, self.duration_s);
        crate::plot::panels_svg(&title, &t, &panels, "seconds from the start")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_listening_sockets_by_port_in_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0\n\
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0\n\
   2: 0100007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0\n";
        assert_eq!(listening_inodes(text, 8080), vec![4242], "the listener, not the established connection");
        assert_eq!(listening_inodes(text, 8081), vec![4444]);
        assert!(listening_inodes(text, 9).is_empty());
    }

    #[test]
    fn finds_its_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert_eq!(find_listener(port), Some(std::process::id()));
    }
}
