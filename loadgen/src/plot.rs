//! `--plot FILE.svg`: throughput and latency percentiles over time as one self-contained SVG picture, from
//! the per-second timeline. Three panels share the time axis (seconds from the start of the measured window;
//! negative during warm-up): messages published per second, messages received per second (each linear from
//! zero on its own axis, since a fan-out receives hundreds of times what it publishes), and p50, p99 and max
//! latency of the messages received in each second (logarithmic, since a stall spans several decades).
//!
//! Axis ticks are round steps (1, 2 or 5 times a power of ten) labelled with as many decimals as the step
//! needs, so no two labels read the same. The timeline's last interval usually covers only the few
//! milliseconds of the grace period, when nothing is published: a last interval shorter than half the one
//! before is left out of the rate panels (its latencies are still drawn), so the run does not seem to end in a
//! drop to zero.
//!
//! Written by hand (a few lines of SVG) rather than with a plotting crate, to keep the build small.

use std::fmt::Write as _;

use crate::fanout::Tick;
use crate::report::{ns, si};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 780.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 150.0;
/// Top and bottom of the three panels: published, received, latency.
const PANELS: [(f64, f64); 3] = [(50.0, 230.0), (270.0, 450.0), (490.0, 720.0)];

/// A rate panel: its axis title, its line's colour, and the rate it draws.
type RateSeries = (&'static str, &'static str, fn(&Tick) -> f64);

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

    // Panels 1 and 2: rates, linear from zero, each on its own scale.
    let rated = full_intervals(ticks);
    let rates: [RateSeries; 2] =
        [("published / s", "#ff7f0e", |t| t.published_per_s), ("received / s", "#1f77b4", |t| t.received_per_s)];
    for ((label, color, value), (top, bottom)) in rates.into_iter().zip(PANELS) {
        let ticks_y = rate_ticks(rated.iter().map(value).fold(0.0, f64::max));
        let top_value = ticks_y.last().copied().unwrap_or(1.0).max(1.0);
        let y = |v: f64| bottom - v / top_value * (bottom - top);
        frame(&mut s, top, bottom, label);
        for v in &ticks_y {
            grid(&mut s, y(*v), &si(*v));
        }
        let name = label.trim_end_matches(" / s");
        line(&mut s, rated.iter().map(|t| (x(t.t), y(value(t)))), color, name, top, 0);
    }

    // Panel 3: latency, log scale over whole decades.
    let (top, bottom) = PANELS[2];
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
    let last = PANELS[PANELS.len() - 1].1;
    for (t, label) in time_ticks(t_min, t_max) {
        for (top, bottom) in PANELS {
            let _ = writeln!(s, r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom}" stroke="#eee"/>"##, x(t));
        }
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#, x(t), last + 16.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{}" text-anchor="middle">seconds from the start of the measured window</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        last + 34.0
    );
    s.push_str("</svg>\n");
    s
}

/// The ticks whose rates are drawn: all but a last interval shorter than half the one before it (the grace
/// period's few milliseconds, in which nothing is published).
fn full_intervals(ticks: &[Tick]) -> &[Tick] {
    match ticks {
        [.., before, last] if last.interval_s < before.interval_s / 2.0 => &ticks[..ticks.len() - 1],
        _ => ticks,
    }
}

/// Gridline values for a rate axis from zero to at least `max`: a round step (never below 1 message per
/// second, so [`si`] labels stay distinct), about four intervals.
fn rate_ticks(max: f64) -> Vec<f64> {
    let step = nice_step(max.max(1.0) / 4.0).max(1.0);
    let intervals = (max / step).ceil().max(1.0) as u32;
    (0..=intervals).map(|i| f64::from(i) * step).collect()
}

/// The time axis' gridlines and labels between `t_min` and `t_max`: a round step for about eight intervals,
/// labelled with the decimals that step needs (`0.5s`, `1.0s`; `2s`, `4s`).
fn time_ticks(t_min: f64, t_max: f64) -> Vec<(f64, String)> {
    let step = nice_step((t_max - t_min) / 8.0);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let first = (t_min / step).ceil() as i64;
    let last = (t_max / step + 1e-9).floor() as i64;
    (first..=last)
        .map(|i| {
            let t = i as f64 * step;
            // `+ 0.0` turns -0 into 0.
            (t, format!("{:.*}s", decimals, t + 0.0))
        })
        .collect()
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
    for (tv, label) in time_ticks(t_min, t_max) {
        for &(top, bottom) in &bounds {
            let _ = writeln!(s, r##"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom}" stroke="#eee"/>"##, x(tv));
        }
        let _ = writeln!(s, r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#, x(tv), area_bottom + 16.0);
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

    /// The text of every `<text>` element with this anchor, in document order.
    fn labels(svg: &str, anchor: &str) -> Vec<String> {
        let marker = format!(r#"text-anchor="{anchor}">"#);
        svg.split(marker.as_str()).skip(1).filter_map(|rest| rest.split('<').next()).map(str::to_owned).collect()
    }

    /// The (x, y) points of the polyline drawn in `color`.
    fn series(svg: &str, color: &str) -> Vec<(f64, f64)> {
        let line = svg
            .lines()
            .find(|l| l.starts_with("<polyline") && l.contains(&format!(r#"stroke="{color}""#)))
            .unwrap_or_else(|| panic!("no polyline in {color}"));
        let points = line.split(r#"points=""#).nth(1).and_then(|r| r.split('"').next()).unwrap_or_default();
        points
            .split(' ')
            .filter_map(|p| p.split_once(','))
            .map(|(x, y)| (x.parse().unwrap_or(f64::NAN), y.parse().unwrap_or(f64::NAN)))
            .collect()
    }

    /// The (top, bottom) of each panel's frame, in document order.
    fn frames(svg: &str) -> Vec<(f64, f64)> {
        svg.lines()
            .filter(|l| l.starts_with("<rect x=") && l.contains(r##"stroke="#999""##))
            .map(|l| {
                let attr = |name: &str| -> f64 {
                    let key = format!(r#" {name}=""#);
                    l.split(key.as_str())
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0.0)
                };
                (attr("y"), attr("y") + attr("height"))
            })
            .collect()
    }

    /// Where in its panel a series sits: 0.0 at the bottom, 1.0 at the top (the lowest point counts).
    fn height_in_panel(svg: &str, color: &str) -> f64 {
        let points = series(svg, color);
        let lowest = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let (top, bottom) =
            frames(svg).into_iter().find(|(top, bottom)| (*top..=*bottom).contains(&lowest)).expect("inside a panel");
        (bottom - lowest) / (bottom - top)
    }

    #[test]
    fn draws_every_panel_and_every_series() {
        let ticks: Vec<Tick> =
            (0..10u32).map(|i| tick(f64::from(i) - 1.0, 1000, 1_000_000 * u64::from(i + 1))).collect();
        let svg = svg("a <test> & run", &ticks);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 5, "received, published, p50, p99, max");
        assert!(svg.contains("a &lt;test&gt; &amp; run"));
        assert!(svg.contains(">10.0k<"), "rate labels in SI units");
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

    #[test]
    fn time_labels_never_repeat() {
        // The run that printed `0s 0s 1s 2s 2s`: 1 s of warm-up, 3 s measured, ticks a little late.
        let ticks = [0.0, 1.004, 2.016, 3.032].map(|t| tick(t, 1000, 1_000_000));
        let got = labels(&svg("short", &ticks), "middle");
        let times: Vec<&String> = got.iter().filter(|l| l.ends_with('s') && !l.contains(' ')).collect();
        assert_eq!(times, ["0.0s", "0.5s", "1.0s", "1.5s", "2.0s", "2.5s", "3.0s"]);
        for start in [-2.0, -1.0, 0.0] {
            for span in [0.3, 1.0, 1.7, 2.01, 3.03, 5.0, 9.7, 12.0, 61.0, 3600.0] {
                let ticks = [tick(start, 1000, 1_000_000), tick(start + span, 1000, 1_000_000)];
                let got = labels(&svg("span", &ticks), "middle");
                let mut unique = got.clone();
                unique.dedup();
                assert_eq!(got, unique, "from {start} over {span} s");
                assert!(got.len() >= 3, "from {start} over {span} s: {got:?}");
            }
        }
    }

    #[test]
    fn rate_labels_never_repeat() {
        for max in [0.0, 0.3, 1.0, 1.1, 3.0, 7.0, 99.0, 999.0, 1001.0, 2000.0, 12_345.0, 400_000.0, 2.5e6, 3e9] {
            let ticks = [tick(0.0, 0, 1_000_000), Tick { published_per_s: max, ..tick(1.0, 0, 1_000_000) }];
            let got = labels(&svg("rates", &ticks), "end");
            let mut unique = got.clone();
            unique.dedup();
            assert_eq!(got, unique, "published at most {max}/s");
        }
    }

    #[test]
    fn published_and_received_each_fill_their_own_axis() {
        // 2 k/s published to 200 subscribers: 400 k/s received.
        let ticks: Vec<Tick> = (0..5u32)
            .map(|i| Tick { published_per_s: 2000.0, received_per_s: 400_000.0, ..tick(f64::from(i), 0, 1_000_000) })
            .collect();
        let svg = svg("fan-out", &ticks);
        let published = height_in_panel(&svg, "#ff7f0e");
        let received = height_in_panel(&svg, "#1f77b4");
        assert!(published > 0.5, "published drawn at {published:.3} of its panel's height");
        assert!(received > 0.5, "received drawn at {received:.3} of its panel's height");
    }

    #[test]
    fn a_short_last_interval_is_not_drawn_as_a_drop_to_zero() {
        // Four full seconds at a steady rate, then 10 ms of grace period in which nothing is published.
        let mut ticks: Vec<Tick> = (1..=4u32).map(|i| tick(f64::from(i), 2000, 1_000_000)).collect();
        ticks.push(Tick { interval_s: 0.01, published_per_s: 0.0, received_per_s: 0.0, ..tick(4.01, 0, 2_000_000) });
        let svg = svg("steady", &ticks);
        for color in ["#ff7f0e", "#1f77b4"] {
            let ys: Vec<f64> = series(&svg, color).iter().map(|p| p.1).collect();
            assert_eq!(ys.len(), 4, "{color}: the partial interval is left out");
            assert!(ys.iter().all(|y| *y == ys[0]), "{color}: a steady rate is a flat line: {ys:?}");
        }
        assert_eq!(series(&svg, "#d62728").len(), 5, "its latency is still drawn");
        // A lone interval is drawn whatever its length, and a long last one too.
        assert_eq!(full_intervals(&ticks[4..]).len(), 1);
        assert_eq!(full_intervals(&ticks[..4]).len(), 4);
    }
}
