//! `fanout --find-max`: the highest fixed publish rate the server sustains under a service level given on
//! the command line (loss at most `--max-loss`, default zero; p99 at most `--slo-p99`), found by short
//! open-loop runs: doubling from a start rate until a run fails, bisecting (geometrically) between the last
//! pass and the first fail until they are within `--precision`, then confirming the result with repeated
//! runs. If a confirmation fails, the rate steps down by the precision and is confirmed again.
//!
//! This is the figure for comparing servers ("the most messages per second it carries without loss at
//! p99 <= 10 ms"); `--rate max` only measures overload. Every trial is a fresh fan-out run (new
//! connections, new topics), so one trial's backlog cannot leak into the next.

use serde::Serialize;

use crate::engine::{EngineConfig, RunError};
use crate::fanout::{self, RunOptions};
use crate::plan::{FanoutPlan, Rate};
use crate::report::{ns, si, EngineSummary, FanoutReport};

/// The search settings.
#[derive(Debug, Clone, Serialize)]
pub struct FindMaxPlan {
    /// Largest acceptable p99 latency, ns.
    pub slo_p99_ns: u64,
    /// Largest acceptable loss (undelivered over expected).
    pub max_loss: f64,
    /// First rate tried, messages per second over all publishers.
    pub start_rate: f64,
    /// Stop bisecting when the failing rate is within this fraction above the passing one.
    pub precision: f64,
    /// Confirmation runs at the found rate (all must pass).
    pub confirm_runs: usize,
    /// Most trials in all.
    pub max_trials: usize,
}

/// One trial run.
#[derive(Debug, Clone, Serialize)]
pub struct Trial {
    /// "search" or "confirm".
    pub stage: &'static str,
    /// Publish rate, messages per second.
    pub rate: f64,
    /// Met the service level.
    pub passed: bool,
    /// Undelivered over expected.
    pub loss_ratio: f64,
    /// p99 latency, ns.
    pub p99_ns: u64,
    /// Largest latency, ns.
    pub max_ns: u64,
    /// Deliveries per second received during the window.
    pub delivered_msgs_per_s: f64,
    /// Loadgen CPU over its worker cores.
    pub loadgen_cpu_share: f64,
    /// A loadgen worker was above 90% of its core (the trial measured loadgen, not only the server).
    pub loadgen_saturated: bool,
    /// Server CPU share, with `--server-pid`.
    pub server_cpu_share: Option<f64>,
}

/// The search's result.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The highest confirmed rate, messages published per second.
    pub rate: f64,
    /// Deliveries per second at that rate: median, min and max over the confirmation runs.
    pub delivered_msgs_per_s_median: f64,
    /// Lowest over the confirmation runs.
    pub delivered_msgs_per_s_min: f64,
    /// Highest over the confirmation runs.
    pub delivered_msgs_per_s_max: f64,
    /// p99 latency over the confirmation runs: median, ns.
    pub p99_ns_median: u64,
    /// Loadgen CPU share, median over the confirmation runs.
    pub loadgen_cpu_share_median: f64,
    /// The lowest rate that failed (the result is within `precision` of it), if any failed.
    pub lowest_failing_rate: Option<f64>,
}

/// The `--find-max` report, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct FindMaxReport {
    /// Always "fanout-find-max".
    pub scenario: &'static str,
    /// loadgen's version.
    pub loadgen_version: &'static str,
    /// Engine settings.
    pub engine: EngineSummary,
    /// The fan-out run each trial makes (its rate is the trial's).
    pub plan: FanoutPlan,
    /// The search settings.
    pub search: FindMaxPlan,
    /// Every trial, in order.
    pub trials: Vec<Trial>,
    /// The result (`null` when even the lowest rate tried failed).
    pub found: Option<Found>,
}

/// Runs the search; `on_trial` sees each trial as it finishes.
pub fn run(
    cfg: &EngineConfig,
    base: &FanoutPlan,
    search: &FindMaxPlan,
    opts: &RunOptions,
    mut on_trial: impl FnMut(&Trial),
) -> Result<FindMaxReport, RunError> {
    let mut trials = Vec::new();
    let mut trial = |stage: &'static str, rate: f64, trials: &mut Vec<Trial>| -> Result<Trial, RunError> {
        let mut plan = base.clone();
        plan.rate = Rate::Fixed(rate);
        plan.topic_prefix = format!("{}t{}-", base.topic_prefix, trials.len());
        let outcome = fanout::run(cfg, plan.clone(), opts)?;
        let report = FanoutReport::new(cfg, &plan, &outcome, opts.server_pid, (None, None));
        let t = Trial {
            stage,
            rate,
            passed: report.loss_ratio <= search.max_loss
                && report.latency.count > 0
                && report.latency.p99_ns <= search.slo_p99_ns,
            loss_ratio: report.loss_ratio,
            p99_ns: report.latency.p99_ns,
            max_ns: report.latency.max_ns,
            delivered_msgs_per_s: report.throughput.delivered_msgs_per_s,
            loadgen_cpu_share: report.loadgen.cpu_share,
            loadgen_saturated: report.loadgen.saturated,
            server_cpu_share: report.server.as_ref().map(|s| s.cpu_share),
        };
        on_trial(&t);
        trials.push(t.clone());
        Ok(t)
    };

    // Bracket: double up from the start until a failure, or halve down until a pass.
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut rate = search.start_rate;
    while trials.len() < search.max_trials {
        let t = trial("search", rate, &mut trials)?;
        if t.passed {
            lo = Some(rate);
            if hi.is_some() {
                break;
            }
            rate *= 2.0;
        } else {
            hi = Some(rate);
            if lo.is_some() {
                break;
            }
            rate /= 2.0;
            if rate < 1.0 {
                break;
            }
        }
    }
    // Bisect geometrically.
    while let (Some(l), Some(h)) = (lo, hi) {
        if h <= l * (1.0 + search.precision) || trials.len() >= search.max_trials {
            break;
        }
        let mid = (l * h).sqrt();
        if trial("search", mid, &mut trials)?.passed {
            lo = Some(mid);
        } else {
            hi = Some(mid);
        }
    }
    // Confirm, stepping down on a failure.
    let mut found = None;
    let mut candidate = lo;
    for _ in 0..4 {
        let Some(rate) = candidate else { break };
        let mut runs = Vec::new();
        let mut all_passed = true;
        for _ in 0..search.confirm_runs {
            let t = trial("confirm", rate, &mut trials)?;
            all_passed &= t.passed;
            runs.push(t);
            if !all_passed {
                break;
            }
        }
        if all_passed {
            found = Some(summarise(rate, &runs, hi));
            break;
        }
        hi = Some(rate);
        candidate = Some(rate * (1.0 - search.precision));
    }
    Ok(FindMaxReport {
        scenario: "fanout-find-max",
        loadgen_version: env!("CARGO_PKG_VERSION"),
        engine: EngineSummary::of(cfg),
        plan: base.clone(),
        search: search.clone(),
        trials,
        found,
    })
}

/// Median, min and max of the confirmation runs.
fn summarise(rate: f64, runs: &[Trial], hi: Option<f64>) -> Found {
    let mut delivered: Vec<f64> = runs.iter().map(|t| t.delivered_msgs_per_s).collect();
    delivered.sort_by(f64::total_cmp);
    let mut p99: Vec<u64> = runs.iter().map(|t| t.p99_ns).collect();
    p99.sort_unstable();
    let mut cpu: Vec<f64> = runs.iter().map(|t| t.loadgen_cpu_share).collect();
    cpu.sort_by(f64::total_cmp);
    Found {
        rate,
        delivered_msgs_per_s_median: delivered.get(delivered.len() / 2).copied().unwrap_or(0.0),
        delivered_msgs_per_s_min: delivered.first().copied().unwrap_or(0.0),
        delivered_msgs_per_s_max: delivered.last().copied().unwrap_or(0.0),
        p99_ns_median: p99.get(p99.len() / 2).copied().unwrap_or(0),
        loadgen_cpu_share_median: cpu.get(cpu.len() / 2).copied().unwrap_or(0.0),
        lowest_failing_rate: hi,
    }
}

/// One line per trial.
pub fn trial_line(t: &Trial) -> String {
    format!(
        "  {:<7} {:>9} msgs/s -> {}  p99 {:>9}  loss {:.6}  delivered {}/s  loadgen CPU {:.0}%{}{}",
        t.stage,
        si(t.rate),
        if t.passed { "pass" } else { "FAIL" },
        ns(t.p99_ns),
        t.loss_ratio,
        si(t.delivered_msgs_per_s),
        t.loadgen_cpu_share * 100.0,
        t.server_cpu_share.map_or(String::new(), |s| format!(", server CPU {:.0}%", s * 100.0)),
        if t.loadgen_saturated { " (loadgen saturated)" } else { "" }
    )
}

impl FindMaxReport {
    /// The human-readable summary (the trial lines are printed as they finish).
    pub fn human(&self) -> String {
        let p = &self.plan;
        let head = format!(
            "loadgen fanout --find-max {}: {} subs / {} topics / {} pubs, {} B, SLO loss <= {} and p99 <= {}",
            self.engine.url,
            p.subs,
            p.topics,
            p.pubs,
            p.size,
            self.search.max_loss,
            ns(self.search.slo_p99_ns)
        );
        match &self.found {
            Some(f) => format!(
                "{head}\n  max rate     {} msgs/s published = {} deliveries/s (confirm runs: min {} max {}), p99 {}, \
                 loadgen CPU {:.0}%{}\n",
                si(f.rate),
                si(f.delivered_msgs_per_s_median),
                si(f.delivered_msgs_per_s_min),
                si(f.delivered_msgs_per_s_max),
                ns(f.p99_ns_median),
                f.loadgen_cpu_share_median * 100.0,
                f.lowest_failing_rate.map_or(String::new(), |h| format!("; {} msgs/s failed", si(h)))
            ),
            None => format!("{head}\n  no rate met the service level (lowest tried failed)\n"),
        }
    }
}
