//! The terminal table of `wave report` (docs/report.md): the test's machines and agents,
//! counters and histograms in one table, gauges in their own with the last and the peak
//! value labelled, thresholds, warnings, and the verdict saying what passed or failed.

use std::fmt::Write as _;

use super::{Metric, Report};

/// What the gauge table's values are, for the reader who compares a gauge's peak with the
/// players the agents line counts (docs/report.md).
const GAUGE_NOTE: &str = "  gauges are read at the end of each window (10 s by default) and summed over containers:\n  last is the final reading, peak the largest; a value reached and left between two readings\n  (e.g. players of agents that start and end within one window) is not seen";

/// The table of `report`, as `wave report` prints it.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    header(&mut out, report);
    let (gauges, others): (Vec<&Metric>, Vec<&Metric>) = report
        .metrics
        .iter()
        .partition(|m| m.kind == "gauge" || m.kind == "set");
    let width = report
        .metrics
        .iter()
        .map(|m| m.series.len())
        .max()
        .unwrap_or(0)
        .max(6);
    if !others.is_empty() {
        let _ = writeln!(
            out,
            "\n  {:<width$} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "metric", "total/count", "rate/s", "p50", "p90", "p95", "p99", "max"
        );
        for m in others {
            let row = format!(
                "  {:<width$} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                m.series,
                cell(m.total.or(m.count)),
                cell(m.rate),
                cell(m.p50),
                cell(m.p90),
                cell(m.p95),
                cell(m.p99),
                cell(m.max),
            );
            // A counter has no percentiles: no padding after its last number.
            let _ = writeln!(out, "{}", row.trim_end());
        }
    }
    if !gauges.is_empty() {
        let _ = writeln!(out, "\n  {:<width$} {:>12} {:>10}", "gauge", "last", "peak");
        for m in gauges {
            let _ = writeln!(
                out,
                "  {:<width$} {:>12} {:>10}",
                m.series,
                cell(m.last),
                cell(m.max)
            );
        }
        out.push_str(GAUGE_NOTE);
        out.push('\n');
    }
    if !report.thresholds.is_empty() {
        out.push_str("\n  thresholds\n");
        for t in &report.thresholds {
            let verdict = if t.passed { "PASS" } else { "FAIL" };
            let _ = writeln!(out, "    {verdict}  {}  ({})", t.threshold, t.detail);
        }
    }
    if report.statsd.dropped > 0 {
        let _ = writeln!(
            out,
            "\n  statsd    {} of {} lines dropped by the supervisors (see wave_statsd_dropped_lines_total)",
            report.statsd.dropped, report.statsd.lines
        );
    }
    if report.statsd.unsupported > 0 {
        let _ = writeln!(
            out,
            "{}  statsd    {} DogStatsD events and service checks ignored (not metrics)",
            if report.statsd.dropped > 0 { "" } else { "\n" },
            report.statsd.unsupported
        );
    }
    if !report.warnings.is_empty() {
        out.push_str("\n  warnings\n");
        for w in &report.warnings {
            let _ = writeln!(out, "    {w}");
        }
    }
    let _ = writeln!(
        out,
        "\n  result    {}: {}",
        report.verdict(),
        report.verdict_reason()
    );
    out
}

/// The test, its time span, machines and agents.
fn header(out: &mut String, report: &Report) {
    let test = report.test_id.as_deref().unwrap_or("?");
    let _ = writeln!(
        out,
        "wave report: test {test} ({})  {}",
        report.status, report.url
    );
    if let (Some(start), Some(end), Some(d)) = (&report.start, &report.end, report.duration_seconds)
    {
        let _ = writeln!(out, "  time      {start} to {end} ({d:.1} s)");
    }
    for part in &report.machines.parts {
        let name = if part.part.is_empty() {
            String::new()
        } else {
            format!("part {}: ", part.part)
        };
        let expected = part.expected.map_or(
            "; expected count unknown (summaries do not say)".to_owned(),
            |m| format!(" of {m}"),
        );
        let _ = write!(out, "  machines  {name}{} seen{expected}", part.seen);
        if !part.missing.is_empty() {
            let missing: Vec<String> = part.missing.iter().map(u64::to_string).collect();
            let _ = write!(out, "; never reported: machine {}", missing.join(", "));
        }
        out.push('\n');
    }
    if !report.machines.unfinished.is_empty() {
        let _ = writeln!(
            out,
            "  running   {} container(s) have not written their summary yet: {}",
            report.machines.unfinished.len(),
            report.machines.unfinished.join(", ")
        );
    }
    let a = &report.agents;
    let _ = writeln!(
        out,
        "  agents    {} ({} succeeded, {} failed, {} restarted, {} stopped{}); players assigned {}",
        a.total,
        a.succeeded,
        a.failed,
        a.restarted,
        a.stopped,
        if a.unfinished > 0 {
            format!(", {} not ended", a.unfinished)
        } else {
            String::new()
        },
        report.players
    );
}

fn cell(v: Option<f64>) -> String {
    v.map_or(String::new(), format_number)
}

/// A number for the table: integers as such, others with 3 significant decimals at most.
fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::load_metrics::{Dropped, Point, SCHEMA_VERSION, Tags, Window};
    use crate::report::merge::{ContainerInput, merge};
    use crate::report::parse_summary;
    use crate::report::thresholds::Threshold;

    pub(in crate::report) fn point(name: &str, tags: &[(&str, &str)], value: f64) -> Point {
        Point {
            name: name.into(),
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<Tags>(),
            value,
        }
    }

    /// A 10 s window starting `start_ms` with these counters and gauges.
    pub(in crate::report) fn window(
        start_ms: i64,
        counters: Vec<Point>,
        gauges: Vec<Point>,
    ) -> Window {
        Window {
            v: SCHEMA_VERSION,
            pod: "p".into(),
            container: 0,
            start_ms,
            end_ms: start_ms + 10_000,
            agents_running: 1,
            relative_error: crate::sketch::RELATIVE_ERROR,
            lines: 1,
            dropped: Dropped::default(),
            counters,
            gauges,
            histograms: Vec::new(),
            sets: Vec::new(),
        }
    }

    /// A summary of `agents` agents with 100 players each, the first `failed` of them failed.
    fn summary(agents: u32, failed: u32) -> crate::report::merge::SummaryInfo {
        let agents: Vec<_> = (0..agents)
            .map(|k| {
                serde_json::json!({
                    "index": k, "id": format!("p-c0-a{k}"),
                    "state": if k < failed { "failed" } else { "succeeded" },
                    "players": 100, "restarts": 0, "exit_codes": [0],
                    "started_at": "2026-01-01T00:00:00.000Z",
                    "ended_at": "2026-01-01T00:00:20.000Z", "runs": [],
                })
            })
            .collect();
        let summary = serde_json::json!({
            "test_id": "t", "pod": "p", "container": 0, "completed": true,
            "succeeded": failed == 0, "total_players": null, "players_per_agent": 100,
            "started_at": "2026-01-01T00:00:00.000Z", "ended_at": "2026-01-01T00:00:20.000Z",
            "agents": agents,
        });
        parse_summary(&serde_json::to_vec(&summary).expect("serializes")).expect("a summary")
    }

    /// The table of one container with `windows` and `summary`, checked against `thresholds`.
    fn table_of(
        windows: Vec<Window>,
        summary: Option<crate::report::merge::SummaryInfo>,
        thresholds: &[&str],
    ) -> String {
        let merged = merge(&[ContainerInput {
            pod: "p".into(),
            container: 0,
            summary,
            windows,
        }]);
        let thresholds: Vec<Threshold> = thresholds
            .iter()
            .map(|t| t.parse().expect("a threshold"))
            .collect();
        let url = "file:///results/t/".parse().expect("a URL");
        render(&Report::new(&url, &merged, &thresholds))
    }

    /// The cells of the table's line whose first cell is `first`.
    fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
        table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&first))
            .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
    }

    #[test]
    fn a_gauge_shows_its_last_and_peak_readings_in_its_own_labelled_table() {
        let table = table_of(
            vec![
                window(0, vec![], vec![point("players", &[], 1000.0)]),
                window(10_000, vec![], vec![point("players", &[], 0.0)]),
            ],
            None,
            &[],
        );
        assert_eq!(row(&table, "gauge"), ["gauge", "last", "peak"], "{table}");
        assert_eq!(row(&table, "players"), ["players", "0", "1000"], "{table}");
        assert!(
            table.contains("a value reached and left between two readings"),
            "{table}"
        );
        assert!(
            !table.contains("\n  metric"),
            "no counter or histogram:\n{table}"
        );
    }

    #[test]
    fn a_name_with_one_tag_set_still_has_its_own_row() {
        let errors = point("errors", &[("endpoint", "login")], 3.0);
        let table = table_of(vec![window(0, vec![errors], vec![])], None, &[]);
        assert_eq!(row(&table, "errors_total")[1], "3", "{table}");
        assert!(!table.contains(" \n"), "no trailing blanks:\n{table}");
        assert_eq!(
            row(&table, "errors_total{endpoint=\"login\"}")[1],
            "3",
            "{table}"
        );
    }

    #[test]
    fn an_untagged_name_has_one_row() {
        let table = table_of(
            vec![window(0, vec![point("requests", &[], 5.0)], vec![])],
            None,
            &[],
        );
        assert_eq!(table.matches("requests_total").count(), 1, "{table}");
    }

    #[test]
    fn the_result_says_what_passed_when_no_threshold_is_given() {
        let table = table_of(vec![], Some(summary(3, 0)), &[]);
        assert!(
            table.contains("result    PASSED: no agent failed; no thresholds given\n"),
            "{table}"
        );
    }

    #[test]
    fn the_result_counts_failed_agents_and_failed_thresholds() {
        let table = table_of(
            vec![window(0, vec![point("errors", &[], 3.0)], vec![])],
            Some(summary(30, 1)),
            &["errors_total total < 10", "errors_total total < 1"],
        );
        assert!(
            table.contains("result    FAILED: 1 of 30 agents failed; 1 of 2 thresholds failed\n"),
            "{table}"
        );
        let passing = table_of(
            vec![window(0, vec![point("errors", &[], 3.0)], vec![])],
            Some(summary(1, 0)),
            &["errors_total total < 10"],
        );
        assert!(
            passing.contains("result    PASSED: no agent failed; 1 threshold passed\n"),
            "{passing}"
        );
    }

    #[test]
    fn a_running_test_passes_only_so_far() {
        let table = table_of(vec![window(0, vec![], vec![])], None, &[]);
        assert!(table.contains("(running)"), "{table}");
        assert!(
            table.contains(
                "PASSED: no agent failed; no thresholds given (so far: the test is still running)"
            ),
            "{table}"
        );
    }

    #[test]
    fn the_agents_line_says_the_players_are_the_assigned_ones() {
        let table = table_of(vec![], Some(summary(3, 0)), &[]);
        assert!(
            table.contains(
                "agents    3 (3 succeeded, 0 failed, 0 restarted, 0 stopped); players assigned 300\n"
            ),
            "{table}"
        );
    }

    #[test]
    fn numbers_are_whole_or_rounded_to_three_decimals_below_100_and_one_above() {
        assert_eq!(format_number(3000.0), "3000");
        assert_eq!(format_number(0.3125), "0.312");
        assert_eq!(format_number(185.33), "185.3");
    }
}
