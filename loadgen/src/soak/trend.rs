//! The soak test's verdict on a time series: does it trend upward, beyond what a noisy shared machine
//! explains?
//!
//! The rule, for the samples after the warm-up (at least [`MIN_SAMPLES`] of them; fewer cannot show a trend and
//! pass): with `m1` and `m3` the medians of the first and last thirds, and `b` the least-squares slope over
//! the whole series, the series **rises** when both
//!
//! 1. `m3 - m1 > allowed`, and
//! 2. `b * span > allowed`, where `span` is the time from the first to the last sample,
//!
//! with `allowed = rel * max(m1, 0) + abs` ([`Rule`]). The medians make (1) blind to single spikes (a GC-like
//! pause, a neighbour's compile), the slope makes (2) blind to a late plateau that the thirds happen to
//! straddle only slightly; a leak shows in both. The thresholds per metric are in [`RULES`].

use serde::Serialize;

/// Fewer samples than this (after the warm-up) cannot show a trend: the series passes.
pub const MIN_SAMPLES: usize = 6;

/// The tolerance of one metric: a rise up to `rel * baseline + abs` is noise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rule {
    /// Relative tolerance (0.1: 10 % of the first third's median).
    pub rel: f64,
    /// Absolute tolerance, in the metric's unit.
    pub abs: f64,
}

/// The rules for the four watched metrics.
pub const RULES: Rules = Rules {
    // Allocator and pooled-buffer noise: 10 % and 4 MiB.
    rss_kib: Rule { rel: 0.10, abs: 4096.0 },
    // The connection count is held steady; churn and reconnecting slow consumers move it by a dozen or so.
    fds: Rule { rel: 0.02, abs: 16.0 },
    // Loss per interval must be 0 anyway (checked separately); any rise is a trend.
    loss: Rule { rel: 0.0, abs: 0.0 },
    // A shared 2-core machine: p99 moves by half and by milliseconds without anything leaking.
    p99_ns: Rule { rel: 0.5, abs: 2_000_000.0 },
};

/// One rule per watched metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rules {
    /// Server resident set size, KiB.
    pub rss_kib: Rule,
    /// Server open descriptors.
    pub fds: Rule,
    /// Messages lost per interval.
    pub loss: Rule,
    /// p99 latency per interval, ns.
    pub p99_ns: Rule,
}

/// What the rule found for one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// Samples judged (after the warm-up).
    pub samples: usize,
    /// Median of the first third.
    pub first_median: f64,
    /// Median of the last third.
    pub last_median: f64,
    /// Least-squares slope, per second.
    pub slope_per_s: f64,
    /// The slope's rise over the series' span.
    pub fitted_rise: f64,
    /// The rise tolerated.
    pub allowed: f64,
    /// Both tests found a rise beyond `allowed`.
    pub rising: bool,
}

/// Judges `points` (time in seconds, value) with `rule`.
pub fn judge(points: &[(f64, f64)], rule: Rule) -> Trend {
    let n = points.len();
    if n < MIN_SAMPLES {
        return Trend {
            samples: n,
            first_median: 0.0,
            last_median: 0.0,
            slope_per_s: 0.0,
            fitted_rise: 0.0,
            allowed: 0.0,
            rising: false,
        };
    }
    let third = n / 3;
    let values: Vec<f64> = points.iter().map(|p| p.1).collect();
    let first_median = median(&values[..third]);
    let last_median = median(&values[n - third..]);
    let slope_per_s = slope(points);
    let span = points[n - 1].0 - points[0].0;
    let fitted_rise = slope_per_s * span;
    let allowed = rule.rel * first_median.max(0.0) + rule.abs;
    let rising = last_median - first_median > allowed && fitted_rise > allowed;
    Trend { samples: n, first_median, last_median, slope_per_s, fitted_rise, allowed, rising }
}

/// The median of `values` (mean of the middle two for an even count; 0 for none).
fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// The least-squares slope of `points` (0 when the times do not vary).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_t = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_v = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for &(t, v) in points {
        num += (t - mean_t) * (v - mean_v);
        den += (t - mean_t) * (t - mean_t);
    }
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-1, 1).
    fn noise(seed: &mut u64) -> f64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % 2_000_001) as f64 / 1_000_000.0 - 1.0
    }

    /// 60 samples 10 s apart: `f(i)` plus `noise` times the relative amplitude of the base.
    fn series(base: f64, amplitude: f64, f: impl Fn(usize) -> f64) -> Vec<(f64, f64)> {
        let mut seed = 0x9E37_79B9_7F4A_7C15;
        (0..60).map(|i| (i as f64 * 10.0, base + f(i) + amplitude * base * noise(&mut seed))).collect()
    }

    #[test]
    fn flat_rss_with_noise_and_spikes_passes() {
        let mut s = series(40_000.0, 0.05, |_| 0.0);
        // A few large spikes, one of them at the very end.
        for i in [7, 31, 59] {
            s[i].1 *= 1.8;
        }
        let t = judge(&s, RULES.rss_kib);
        assert!(!t.rising, "{t:?}");
    }

    #[test]
    fn rss_climbing_steadily_fails() {
        // +200 KiB every 10 s: 12 MiB over ten minutes on a 40 MiB base.
        let t = judge(&series(40_000.0, 0.05, |i| 200.0 * i as f64), RULES.rss_kib);
        assert!(t.rising, "{t:?}");
        assert!(t.slope_per_s > 15.0 && t.slope_per_s < 25.0, "{t:?}");
    }

    #[test]
    fn noisy_flat_p99_passes_and_a_doubling_p99_fails() {
        let flat = series(3_000_000.0, 0.4, |_| 0.0);
        assert!(!judge(&flat, RULES.p99_ns).rising);
        let climbing = series(3_000_000.0, 0.2, |i| 150_000.0 * i as f64);
        assert!(judge(&climbing, RULES.p99_ns).rising);
    }

    #[test]
    fn descriptors_leaking_one_per_interval_fail() {
        let t = judge(&series(600.0, 0.02, |i| i as f64), RULES.fds);
        assert!(t.rising, "{t:?}");
        assert!(!judge(&series(600.0, 0.02, |_| 0.0), RULES.fds).rising);
    }

    #[test]
    fn a_single_step_early_in_the_run_is_not_a_trend_once_flat() {
        // Warm-up residue: a step in the first two samples, flat after.
        let s = series(40_000.0, 0.02, |i| if i < 2 { -10_000.0 } else { 0.0 });
        assert!(!judge(&s, RULES.rss_kib).rising);
    }

    #[test]
    fn zero_loss_passes_and_growing_loss_fails() {
        let zero: Vec<(f64, f64)> = (0..30).map(|i| (f64::from(i), 0.0)).collect();
        assert!(!judge(&zero, RULES.loss).rising);
        let growing: Vec<(f64, f64)> = (0..30).map(|i| (f64::from(i), f64::from(i))).collect();
        assert!(judge(&growing, RULES.loss).rising);
    }

    #[test]
    fn too_few_samples_cannot_show_a_trend() {
        let s: Vec<(f64, f64)> = (0..5).map(|i| (f64::from(i), f64::from(i) * 1e9)).collect();
        let t = judge(&s, RULES.rss_kib);
        assert!(!t.rising && t.samples == 5);
    }

    #[test]
    fn median_and_slope_are_the_textbook_ones() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]), 2.0);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 3.0)]), 0.0);
    }
}
