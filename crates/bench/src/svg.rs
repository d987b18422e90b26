//! A run's report drawn as a small, self-contained SVG: the latency
//! distribution on top, throughput over time below.
//!
//! Written by hand (a few lines, rectangles and polylines) rather than with a
//! plotting crate: the two charts need no more, and the file opens in any
//! browser. The latency axis is in "nines" (90 %, 99 %, 99.9 %, ...), so the
//! tail that matters takes as much room as the median.

use std::fmt::Write;

use crate::report::Report;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 640.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
/// Top and bottom of the two panels.
const PANELS: [(f64, f64); 2] = [(50.0, 290.0), (370.0, 600.0)];

/// Escapes text for use inside an SVG element or attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// A round step (1, 2 or 5 times a power of ten) that cuts `0..max` into about five parts.
fn tick_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let rough = max / 5.0;
    let power = 10f64.powf(rough.log10().floor());
    let fraction = rough / power;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// A number for an axis label: no trailing zeros.
fn label(value: f64) -> String {
    if value == value.trunc() && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.3}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// One panel's frame, title, y grid and a polyline of `points` (x in `0..=x_max`, y in
/// `0..=y_max` data units).
struct Panel<'a> {
    top: f64,
    bottom: f64,
    title: &'a str,
    y_unit: &'a str,
    x_max: f64,
    y_max: f64,
}

impl Panel<'_> {
    fn x(&self, value: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (value / self.x_max.max(f64::MIN_POSITIVE))
    }

    fn y(&self, value: f64) -> f64 {
        self.bottom - (self.bottom - self.top) * (value / self.y_max.max(f64::MIN_POSITIVE))
    }

    fn frame(&self, out: &mut String) {
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
            self.top - 14.0,
            escape(self.title)
        );
        let step = tick_step(self.y_max);
        let mut tick = 0.0;
        while tick <= self.y_max * 1.000_001 {
            let y = self.y(tick);
            let _ = writeln!(
                out,
                "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>",
                WIDTH - RIGHT
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
                LEFT - 6.0,
                y + 4.0,
                label(tick)
            );
            tick += step;
        }
        let _ = writeln!(
            out,
            r#"<text x="14" y="{:.1}" font-size="12" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
            (self.top + self.bottom) / 2.0,
            (self.top + self.bottom) / 2.0,
            escape(self.y_unit)
        );
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            self.top,
            WIDTH - LEFT - RIGHT,
            self.bottom - self.top
        );
    }

    fn x_tick(&self, out: &mut String, value: f64, text: &str) {
        let x = self.x(value);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#444\"/>",
            self.bottom,
            self.bottom + 5.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            self.bottom + 18.0,
            escape(text)
        );
    }

    fn line(&self, out: &mut String, points: &[(f64, f64)], colour: &str) {
        if points.is_empty() {
            return;
        }
        let coordinates: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", self.x(*x), self.y(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            coordinates.join(" ")
        );
    }
}

/// The report's two charts as an SVG document.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r##"<rect width="100%" height="100%" fill="#fff"/>"##);

    // Latency by percentile, x in nines: 1 nine = 90 %, 2 = 99 %, ...
    let nines = |percentile: f64| -(1.0 - percentile / 100.0).max(1e-9).log10();
    let curve: Vec<(f64, f64)> = report
        .latency_curve
        .iter()
        .map(|point| (nines(point.percentile), point.latency_us as f64 / 1_000.0))
        .collect();
    let x_max = curve.iter().map(|(x, _)| *x).fold(1.0, f64::max);
    let y_max = curve.iter().map(|(_, y)| *y).fold(0.0, f64::max);
    let title = format!(
        "{}: latency by percentile ({} ops, {} errors)",
        report.workload, report.ops, report.errors_total
    );
    let latency = Panel {
        top: PANELS[0].0,
        bottom: PANELS[0].1,
        title: &title,
        y_unit: "latency (ms)",
        x_max,
        y_max: if y_max > 0.0 { y_max * 1.05 } else { 1.0 },
    };
    latency.frame(&mut out);
    for (nine, text) in [(0.0, "0%"), (1.0, "90%"), (2.0, "99%"), (3.0, "99.9%"), (4.0, "99.99%")] {
        if nine <= x_max + 1e-9 {
            latency.x_tick(&mut out, nine, text);
        }
    }
    latency.line(&mut out, &curve, "#1f77b4");

    // Throughput per second of the run.
    let seconds = report.ops_per_second.len();
    let points: Vec<(f64, f64)> = report
        .ops_per_second
        .iter()
        .enumerate()
        .flat_map(|(second, ops)| {
            // A step per second: flat across the second the count belongs to.
            let ops = *ops as f64;
            [(second as f64, ops), (second as f64 + 1.0, ops)]
        })
        .collect();
    let y_max = report.ops_per_second.iter().copied().max().unwrap_or(0) as f64;
    let title = format!("throughput over time (mean {:.1} ops/s)", report.throughput_ops_per_s);
    let throughput = Panel {
        top: PANELS[1].0,
        bottom: PANELS[1].1,
        title: &title,
        y_unit: "ops/s",
        x_max: (seconds as f64).max(1.0),
        y_max: if y_max > 0.0 { y_max * 1.05 } else { 1.0 },
    };
    throughput.frame(&mut out);
    let step = tick_step(seconds as f64).max(1.0);
    let mut tick = 0.0;
    while tick <= seconds as f64 {
        throughput.x_tick(&mut out, tick, &format!("{}s", label(tick)));
        tick += step;
    }
    throughput.line(&mut out, &points, "#d62728");
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::Recorder;

    /// Checks that every tag is closed in order and attributes are quoted: enough XML to
    /// catch a broken writer, without an XML crate.
    fn assert_well_formed(svg: &str) {
        let mut open: Vec<String> = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = rest[start..].find('>').expect("unclosed tag") + start;
            let tag = &rest[start + 1..end];
            assert!(!tag.contains('<'), "'<' inside a tag: {tag}");
            assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop().as_deref(), Some(name), "mismatched close tag");
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().expect("tag name");
                open.push(name.to_string());
            }
            let text = &rest[..start];
            assert!(!text.contains('>'), "stray '>' in text");
            rest = &rest[end + 1..];
        }
        assert!(open.is_empty(), "unclosed elements: {open:?}");
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn a_report_draws_as_well_formed_svg() {
        let mut recorder = Recorder::new();
        for index in 0..5_000u64 {
            recorder.success(Duration::from_micros(100 + index % 997), Duration::from_millis(index));
        }
        let report = recorder.report("mixed <90% & reads>", Duration::from_secs(5));
        let svg = render(&report);
        assert_well_formed(&svg);
        assert!(svg.contains("mixed &lt;90% &amp; reads&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 2);
    }

    #[test]
    fn an_empty_report_still_draws() {
        let svg = render(&Recorder::new().report("put", Duration::ZERO));
        assert_well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(10.0), 2.0);
        assert_eq!(tick_step(0.9), 0.2);
        assert_eq!(tick_step(4_000.0), 1_000.0);
        assert_eq!(tick_step(0.0), 1.0);
        assert_eq!(label(0.2), "0.2");
        assert_eq!(label(1_000.0), "1000");
    }
}
