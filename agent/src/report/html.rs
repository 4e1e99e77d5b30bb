//! `--html FILE`: one self-contained page (no script, no stylesheet or font from elsewhere)
//! with the report's tables and inline SVG charts drawn here: throughput, latency
//! percentiles, errors and running agents over time. It opens from a file, offline.

use std::fmt::Write as _;

use super::junit::escape;
use super::{Metric, Report};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart: a name and (seconds since the test start, value) points.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A "nice" step for about `ticks` ticks over `span`.
fn nice_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let scaled = raw / magnitude;
    let nice = if scaled <= 1.0 {
        1.0
    } else if scaled <= 2.0 {
        2.0
    } else if scaled <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn tick_label(v: f64) -> String {
    if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// An SVG line chart; `id` names it for the reader (and for tests of the page).
fn chart(id: &str, title: &str, unit: &str, lines: &[Line]) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{}\">",
        escape(title)
    );
    let _ = write!(
        svg,
        "<text x=\"{LEFT}\" y=\"18\" class=\"title\">{}</text>",
        escape(title)
    );
    let points: Vec<(f64, f64)> = lines
        .iter()
        .flat_map(|l| l.points.iter().copied())
        .collect();
    if points.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" class=\"empty\">nothing reported</text></svg>",
            WIDTH / 2.0 - 60.0,
            HEIGHT / 2.0
        );
        return svg;
    }
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let y_step = nice_step(if y_max > 0.0 { y_max } else { 1.0 }, 4.0);
    let y_top = (y_max / y_step).ceil().max(1.0) * y_step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |v: f64| LEFT + v / x_max * plot_w;
    let y = |v: f64| TOP + plot_h - v / y_top * plot_h;
    let _ = write!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" class=\"plot\"/>"
    );
    let mut tick = 0.0;
    while tick <= y_top + y_step / 2.0 {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" class=\"grid\"/><text x=\"{}\" y=\"{:.1}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(tick) + 4.0,
            tick_label(tick),
            py = y(tick)
        );
        tick += y_step;
    }
    let x_step = nice_step(x_max, 6.0);
    let mut tick = 0.0;
    while tick <= x_max + x_step / 2.0 {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}s</text>",
            x(tick),
            HEIGHT - BOTTOM + 16.0,
            tick_label(tick)
        );
        tick += x_step;
    }
    let _ = write!(
        svg,
        "<text x=\"12\" y=\"{}\" class=\"tick\" transform=\"rotate(-90 12 {})\">{}</text>",
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0,
        escape(unit)
    );
    for (n, line) in lines.iter().enumerate() {
        let color = COLORS[n % COLORS.len()];
        let coords: Vec<String> = line
            .points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = write!(
            svg,
            "<polyline class=\"series\" data-series=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            escape(&line.name),
            coords.join(" ")
        );
        if line.points.len() == 1 {
            let (px, py) = line.points[0];
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                x(px),
                y(py)
            );
        }
        let legend_x = LEFT + 10.0 + (n as f64 % 4.0) * 200.0;
        let legend_y = TOP + 14.0 + (n / 4) as f64 * 14.0;
        let _ = write!(
            svg,
            "<text x=\"{legend_x:.1}\" y=\"{legend_y:.1}\" class=\"legend\" fill=\"{color}\">{}</text>",
            escape(&line.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// (seconds since start, value) of metric `name` in every window, read by `value`.
fn over_time(
    report: &Report,
    name: &str,
    value: impl Fn(&Metric) -> Option<f64>,
) -> Vec<(f64, f64)> {
    let start = report.windows.first().map_or(0, |w| w.start_ms);
    report
        .windows
        .iter()
        .filter_map(|w| {
            let metric = w.metrics.iter().find(|m| m.name == name)?;
            Some(((w.end_ms - start) as f64 / 1000.0, value(metric)?))
        })
        .collect()
}

fn names(report: &Report, kind: &str) -> Vec<String> {
    let mut names: Vec<String> = report
        .windows
        .iter()
        .flat_map(|w| w.metrics.iter())
        .filter(|m| m.kind == kind)
        .map(|m| m.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn is_error(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.contains("error") || name.contains("fail")
}

/// The charts of the page: throughput, one latency chart per histogram, errors, agents.
fn charts(report: &Report) -> Vec<String> {
    let counters = names(report, "counter");
    let throughput: Vec<Line> = counters
        .iter()
        .filter(|n| !is_error(n))
        .map(|n| Line {
            name: n.clone(),
            points: over_time(report, n, |m| m.rate),
        })
        .collect();
    let mut out = vec![chart(
        "throughput",
        "Throughput (per second)",
        "per second",
        &throughput,
    )];
    for name in names(report, "histogram") {
        let lines: Vec<Line> = [("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)]
            .iter()
            .map(|&(label, q)| Line {
                name: format!("{name} {label}"),
                points: over_time(report, &name, |m| match q {
                    0.5 => m.p50,
                    0.9 => m.p90,
                    0.95 => m.p95,
                    _ => m.p99,
                }),
            })
            .collect();
        out.push(chart(
            &format!("latency-{name}"),
            &format!("{name}: percentiles per window"),
            "as sent (ms for timers)",
            &lines,
        ));
    }
    let errors: Vec<Line> = counters
        .iter()
        .filter(|n| is_error(n))
        .map(|n| Line {
            name: n.clone(),
            points: over_time(report, n, |m| m.rate),
        })
        .collect();
    out.push(chart(
        "errors",
        "Errors (per second)",
        "per second",
        &errors,
    ));
    let start = report.windows.first().map_or(0, |w| w.start_ms);
    let agents = Line {
        name: "agents running".into(),
        points: report
            .windows
            .iter()
            .map(|w| ((w.end_ms - start) as f64 / 1000.0, w.agents_running as f64))
            .collect(),
    };
    out.push(chart("agents", "Agents running", "agents", &[agents]));
    out
}

fn cell(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.3}")
        }
    })
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut html = String::new();
    let test = escape(report.test_id.as_deref().unwrap_or("?"));
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>wave report: {test}</title>\
         <style>body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;margin:8px 0 20px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}\
         .pass{{color:#2ca02c}}.fail{{color:#d62728;font-weight:bold}}svg.chart{{display:block;margin:12px 0}}\
         .plot{{fill:#fafafa;stroke:#999}}.grid{{stroke:#e3e3e3}}.tick{{font-size:11px;fill:#555}}.title{{font-size:14px;font-weight:bold}}\
         .legend{{font-size:12px}}.empty{{fill:#888}}</style></head><body>\n"
    );
    let verdict = format!(
        "<span class=\"{}\">{}</span></h1><p>{}</p>",
        if report.passed { "pass" } else { "fail" },
        report.verdict(),
        escape(&report.verdict_reason())
    );
    let _ = writeln!(
        html,
        "<h1>wave report: {test} {verdict}<p>{} · {} · {}</p>",
        escape(report.status),
        escape(&report.url),
        report
            .duration_seconds
            .map_or("no windows yet".to_owned(), |d| format!(
                "{d:.1} s from {} to {}",
                report.start.as_deref().unwrap_or(""),
                report.end.as_deref().unwrap_or("")
            ))
    );
    html.push_str("<h2>Machines and agents</h2><table><tr><th>part</th><th>expected</th><th>seen</th><th>never reported</th></tr>");
    for part in &report.machines.parts {
        let missing: Vec<String> = part
            .missing
            .iter()
            .map(|m| format!("machine {m}"))
            .collect();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            escape(if part.part.is_empty() {
                "(none)"
            } else {
                &part.part
            }),
            part.expected
                .map_or("unknown".to_owned(), |m| m.to_string()),
            part.seen,
            if missing.is_empty() { "pass" } else { "fail" },
            escape(&missing.join(", "))
        );
    }
    let a = &report.agents;
    let _ = write!(
        html,
        "</table><table><tr><th>agents</th><th>succeeded</th><th>failed</th><th>restarted</th><th>stopped</th><th>players assigned</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        a.total, a.succeeded, a.failed, a.restarted, a.stopped, report.players
    );
    if !report.thresholds.is_empty() {
        html.push_str(
            "<h2>Thresholds</h2><table><tr><th>threshold</th><th>result</th><th>value</th></tr>",
        );
        for t in &report.thresholds {
            let (class, word) = if t.passed {
                ("pass", "PASS")
            } else {
                ("fail", "FAIL")
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td class=\"{class}\">{word}</td><td>{}</td></tr>",
                escape(&t.threshold),
                escape(&t.detail)
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<h2>Over time</h2>\n");
    for svg in charts(report) {
        html.push_str(&svg);
        html.push('\n');
    }
    html.push_str("<h2>Whole test</h2><table><tr><th>metric</th><th>total/count</th><th>rate/s</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th></tr>");
    let (gauges, others): (Vec<&Metric>, Vec<&Metric>) =
        report.metrics.iter().partition(|m| m.kind == "gauge");
    for m in others {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&m.series),
            cell(m.total.or(m.count)),
            cell(m.rate),
            cell(m.p50),
            cell(m.p90),
            cell(m.p95),
            cell(m.p99),
            cell(m.max)
        );
    }
    html.push_str("</table>");
    if !gauges.is_empty() {
        html.push_str("<h2>Gauges</h2><table><tr><th>gauge</th><th>last</th><th>peak</th></tr>");
        for m in gauges {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&m.series),
                cell(m.last),
                cell(m.max)
            );
        }
        html.push_str("</table><p>Gauges are read at the end of each window (10 s by default) and summed over containers: last is the final reading, peak the largest; a value reached and left between two readings (e.g. players of agents that start and end within one window) is not seen.</p>");
    }
    if !report.warnings.is_empty() {
        html.push_str("<h2>Warnings</h2><ul>");
        for w in &report.warnings {
            let _ = write!(html, "<li>{}</li>", escape(w));
        }
        html.push_str("</ul>");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round_numbers() {
        assert_eq!(nice_step(100.0, 4.0), 50.0);
        assert_eq!(nice_step(7.0, 4.0), 2.0);
        assert_eq!(nice_step(0.3, 4.0), 0.1);
    }

    #[test]
    fn a_chart_draws_one_polyline_per_series_or_says_it_is_empty() {
        let lines = [
            Line {
                name: "a".into(),
                points: vec![(0.0, 1.0), (10.0, 3.0)],
            },
            Line {
                name: "b<".into(),
                points: vec![(5.0, 2.0)],
            },
        ];
        let svg = chart("t", "T", "u", &lines);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("data-series=\"b&lt;\""));
        assert!(chart("e", "E", "u", &[]).contains("nothing reported"));
    }

    #[test]
    fn gauges_get_their_own_table_with_last_and_peak_and_the_verdict_says_why() {
        use crate::report::merge::{ContainerInput, merge};
        use crate::report::table::tests::{point, window as table_window};
        let window = |start_ms: i64, players: f64| {
            table_window(start_ms, Vec::new(), vec![point("players", &[], players)])
        };
        let merged = merge(&[ContainerInput {
            pod: "p".into(),
            container: 0,
            summary: None,
            windows: vec![window(0, 1000.0), window(10_000, 0.0)],
        }]);
        let url = "file:///results/t/".parse().expect("a URL");
        let page = render(&Report::new(&url, &merged, &[]));
        assert!(
            page.contains("<tr><th>gauge</th><th>last</th><th>peak</th></tr><tr><td>players</td><td>0</td><td>1000</td></tr>"),
            "{page}"
        );
        assert!(
            page.contains("PASSED</span></h1><p>no agent failed; no thresholds given"),
            "{page}"
        );
    }
}
