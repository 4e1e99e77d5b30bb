//! `--junit FILE`: the report as JUnit XML for CI (one testcase per threshold, and one
//! saying whether every agent succeeded), so a pipeline shows which condition failed.

use std::fmt::Write as _;

use super::Report;

/// XML text with `&`, `<`, `>`, `"` and `'` escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The JUnit document of `report`.
pub fn render(report: &Report) -> String {
    let mut cases = Vec::new();
    let agents = &report.agents;
    let agents_ok = agents.failed == 0;
    cases.push((
        "agents: none failed".to_owned(),
        (!agents_ok).then(|| format!("{} of {} agents failed", agents.failed, agents.total)),
    ));
    for outcome in &report.thresholds {
        cases.push((
            outcome.threshold.clone(),
            (!outcome.passed).then(|| outcome.detail.clone()),
        ));
    }
    let failures = cases.iter().filter(|(_, f)| f.is_some()).count();
    let suite = format!("wave report {}", report.test_id.as_deref().unwrap_or("?"));
    let time = report.duration_seconds.unwrap_or(0.0);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failures}\">",
        escape(&suite),
        cases.len()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{time:.3}\">",
        escape(&suite),
        cases.len()
    );
    for (name, failure) in cases {
        let _ = write!(
            out,
            "    <testcase classname=\"wave.thresholds\" name=\"{}\"",
            escape(&name)
        );
        match failure {
            None => out.push_str("/>\n"),
            Some(message) => {
                let _ = writeln!(
                    out,
                    ">\n      <failure message=\"{}\">{}</failure>\n    </testcase>",
                    escape(&message),
                    escape(&message)
                );
            }
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_drops_control_characters() {
        assert_eq!(escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}
