//! `--plot FILE.svg`: throughput and latency percentiles over time as one self-contained SVG picture, from
//! the per-second timeline. Two panels share the time axis (seconds from the start of the measured window;
//! negative during warm-up): messages per second published and received (linear), and p50, p99 and max latency
//! of the messages received in each second (logarithmic, since a stall spans several decades).
//!
//! Written by hand (a few lines of SVG) rather than with a plotting crate, to keep the build small.

use std::fmt::Write as _;

use crate::fanout::Tick;
use crate::report::{ns, si};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 640.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 150.0;
/// Top and bottom of the two panels.
const PANELS: [(f64, f64); 2] = [(50.0, 300.0), (350.0, 600.0)];

/// Renders the timeline as SVG text.
pub fn svg(title: &str, ticks: &[Tick]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#, escape(title));
    if ticks.is_empty() {
        let _ = writeln!(s, r#"<text x="{LEFT}" y="80">no samples</text></svg>"#);
        return s;
    }
    let t_min = ticks.iter().map(|t| t.t).fold(f64::INFINITY, f64::min).min(0.0);
    let t_max = ticks.iter().map(|t| t.t).fold(f64::NEG_INFINITY, f64::max).max(t_min + 1.0);
    let x = |t: f64| LEFT + (t - t_min) / (t_max - t_min) * (WIDTH - LEFT - RIGHT);

    // Panel 1: rates, linear from zero.
    let (top, bottom) = PANELS[0];
    let rate_max = ticks.iter().map(|t| t.published_per_s.max(t.received_per_s)).fold(1.0, f64::max) * 1.1;
    let y_rate = |v: f64| bottom - v / rate_max * (bottom - top);
    frame(&mut s, top, bottom, "messages / s");
    for i in 0..=4 {
        let v = rate_max * f64::from(i) / 4.0;
        grid(&mut s, y_rate(v), &si(v));
    }
    line(&mut s, ticks.iter().map(|t| (x(t.t), y_rate(t.received_per_s))), "#1f77b4", "received", top, 0);
    line(&mut s, ticks.iter().map(|t| (x(t.t), y_rate(t.published_per_s))), "#ff7f0e", "published", top, 1);

    // Panel 2: latency, log scale over whole decades.
    let (top, bottom) = PANELS[1];
    let values = ticks.iter().flat_map(|t| [t.p50_ns, t.p99_ns, t.max_ns]).filter(|v| *v > 0);
    let (lo, hi) = values.fold((u64::MAX, 1u64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo_exp = (lo.min(hi) as f64).log10().floor();
    let hi_exp = (hi as f64).log10().ceil().max(lo_exp + 1.0);
    let y_lat = |v: u64| {
        let l = (v.max(1) as f64).log10().clamp(lo_exp, hi_exp);
        bottom - (l - lo_exp) / (hi_exp - lo_exp) * (bottom - top)
    };
    frame(&mut s, top, bottom, "latency (log)");
    let mut e = lo_exp;
    while e <= hi_exp {
        let v = 10f64.powf(e) as u64;
        grid(&mut s, y_lat(v), &ns(v));
        e += 1.0;
    }
    let with = |f: fn(&Tick) -> u64| ticks.iter().filter(move |t| f(t) > 0).map(move |t| (x(t.t), y_lat(f(t))));
    line(&mut s, with(|t| t.p50_ns), "#2ca02c", "p50", top, 0);
    line(&mut s, with(|t| t.p99_ns), "#d62728", "p99", top, 1);
    line(&mut s, with(|t| t.max_ns), "#9467bd", "max", top, 2);

    // Shared time axis.
    let step = nice_step((t_max - t_min) / 8.0);
    let mut t = (t_min / step).ceil() * step;
    while t <= t_max + 1e-9 {
        for (top, bottom) in PANELS {
            let _ = writeln!(s, r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom}" stroke="#eee"/>"##, x(t));
        }
        // `+ 0.0` turns -0 into 0.
        let label = t + 0.0;
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{label:.0}s</text>"#, x(t), PANELS[1].1 + 16.0);
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">seconds from the start of the measured window</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        PANELS[1].1 + 34.0
    );
    s.push_str("</svg>\n");
    s
}

/// One panel of [`panels_svg`]: its y-axis title and its series (name, one value per time), linear from zero.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    /// The y-axis title.
    pub label: &'a str,
    /// Named series, each with one value per time.
    pub series: Vec<(&'a str, Vec<f64>)>,
}

/// Stacked panels over one time axis (`t`, seconds), each linear from zero: the soak test's picture.
pub fn panels_svg(title: &str, t: &[f64], panels: &[Panel<'_>], x_label: &str) -> String {
    const COLORS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#d62728", "#2ca02c"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#, escape(title));
    if t.is_empty() || panels.is_empty() {
        let _ = writeln!(s, r#"<text x="{LEFT}" y="80">no samples</text></svg>"#);
        return s;
    }
    let t_min = t.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let t_max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max).max(t_min + 1.0);
    let x = |v: f64| LEFT + (v - t_min) / (t_max - t_min) * (WIDTH - LEFT - RIGHT);
    let (area_top, area_bottom, gap) = (40.0, HEIGHT - 50.0, 16.0);
    let height = (area_bottom - area_top - gap * (panels.len() - 1) as f64) / panels.len() as f64;
    let mut bounds = Vec::new();
    for (i, panel) in panels.iter().enumerate() {
        let top = area_top + i as f64 * (height + gap);
        let bottom = top + height;
        bounds.push((top, bottom));
        let max =
            panel.series.iter().flat_map(|(_, v)| v.iter().copied()).filter(|v| v.is_finite()).fold(0.0, f64::max);
        let max = if max > 0.0 { max * 1.1 } else { 1.0 };
        let y = |v: f64| bottom - v.clamp(0.0, max) / max * (bottom - top);
        frame(&mut s, top, bottom, panel.label);
        for k in 0..=2 {
            let v = max * f64::from(k) / 2.0;
            grid(&mut s, y(v), &si(v));
        }
        for (slot, (name, values)) in panel.series.iter().enumerate() {
            let points = t.iter().zip(values).map(|(&tv, &v)| (x(tv), y(v)));
            line(&mut s, points, COLORS[slot % COLORS.len()], name, top, slot as u32);
        }
    }
    let step = nice_step((t_max - t_min) / 8.0);
    let mut tv = (t_min / step).ceil() * step;
    while tv <= t_max + 1e-9 {
        for &(top, bottom) in &bounds {
            let _ = writeln!(s, r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom}" stroke="#eee"/>"##, x(tv));
        }
        let label = tv + 0.0;
        let _ =
            writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{label:.0}s</text>"#, x(tv), area_bottom + 16.0);
        tv += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        area_bottom + 34.0,
        escape(x_label)
    );
    s.push_str("</svg>\n");
    s
}

/// The panel's box and its y-axis title.
fn frame(s: &mut String, top: f64, bottom: f64, label: &str) {
    let w = WIDTH - LEFT - RIGHT;
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{top}" width="{w}" height="{}" fill="none" stroke="#999"/>"##,
        bottom - top
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{0}" transform="rotate(-90 20 {0})" text-anchor="middle">{label}</text>"#,
        (top + bottom) / 2.0
    );
}

/// A horizontal grid line with its label.
fn grid(s: &mut String, y: f64, label: &str) {
    let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/>"##, WIDTH - RIGHT);
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#, LEFT - 6.0, y + 4.0, escape(label));
}

/// A data series and its legend entry (`slot` orders the legend).
fn line(s: &mut String, points: impl Iterator<Item = (f64, f64)>, color: &str, name: &str, top: f64, slot: u32) {
    let pts: Vec<String> = points.map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    if !pts.is_empty() {
        let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#, pts.join(" "));
    }
    let (lx, ly) = (WIDTH - RIGHT + 14.0, top + 14.0 + f64::from(slot) * 18.0);
    let _ = writeln!(
        s,
        r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
        lx + 20.0,
        lx + 26.0,
        ly + 4.0
    );
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = raw.max(1e-9);
    let base = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * base).find(|s| *s >= raw).unwrap_or(10.0 * base)
}

/// Escapes text for XML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(t: f64, rate: u64, p99: u64) -> Tick {
        Tick {
            t,
            interval_s: 1.0,
            published_per_s: rate as f64,
            received_per_s: rate as f64 * 10.0,
            p50_ns: p99 / 10,
            p99_ns: p99,
            max_ns: p99 * 2,
            open: 11,
        }
    }

    #[test]
    fn draws_both_panels_and_every_series() {
        let ticks: Vec<Tick> =
            (0..10u32).map(|i| tick(f64::from(i) - 1.0, 1000, 1_000_000 * u64::from(i + 1))).collect();
        let svg = svg("a <test> & run", &ticks);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 5, "received, published, p50, p99, max");
        assert!(svg.contains("a &lt;test&gt; &amp; run"));
        assert!(svg.contains(">10.0k<") || svg.contains(">11.0k<"), "rate labels in SI units");
    }

    #[test]
    fn empty_and_flat_timelines_do_not_break() {
        assert!(svg("empty", &[]).contains("no samples"));
        let flat = svg("flat", &[tick(0.0, 0, 0)]);
        assert!(flat.contains("</svg>") && !flat.contains("NaN"));
    }

    #[test]
    fn stacked_panels_draw_every_series_without_nan() {
        let t = [0.0, 10.0, 20.0];
        let panels = [
            Panel { label: "rss", series: vec![("rss", vec![1.0, 2.0, 3.0])] },
            Panel { label: "zero", series: vec![("a", vec![0.0; 3]), ("b", vec![0.0; 3])] },
        ];
        let svg = panels_svg("soak", &t, &panels, "seconds");
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(!svg.contains("NaN") && svg.trim_end().ends_with("</svg>"));
        assert!(panels_svg("none", &[], &panels, "s").contains("no samples"));
    }

    #[test]
    fn steps_are_round_numbers() {
        assert_eq!(nice_step(0.7), 1.0);
        assert_eq!(nice_step(1.3), 2.0);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(12.0), 20.0);
    }
}
