//! The contract between webhook, supervisor and docs stays one: every variable the webhook
//! injects for the supervisor is an `env =` argument of `wave-agent run`, and the reference
//! pages name every annotation and variable (`wave_contract` is the list they are read
//! against; the webhook's own unit tests check that it injects exactly that list, in order).

use std::collections::BTreeSet;

use clap::CommandFactory as _;
use wave_contract::Annotation;
use wave_contract::env::{INJECTED, ReadBy};
use wave_tests::workspace_root;

/// The `env =` names of `wave-agent run`'s arguments.
fn supervisor_env_arguments() -> BTreeSet<String> {
    let cli = wave_agent::cli::Cli::command();
    let run = cli
        .find_subcommand("run")
        .expect("wave-agent has a run subcommand");
    run.get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// Variables read by the supervisor but missing from its CLI, and variables said to be for
/// the agents only that the CLI reads after all.
fn cli_mismatches(arguments: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for var in INJECTED {
        match (var.read_by, arguments.contains(var.name)) {
            (ReadBy::Supervisor, false) => problems.push(format!(
                "the webhook injects {} for the supervisor, but wave-agent run has no argument with env = {0}",
                var.name
            )),
            (ReadBy::Agents, true) => problems.push(format!(
                "{} is marked as for the agents only, but wave-agent run reads it",
                var.name
            )),
            _ => {}
        }
    }
    problems
}

#[test]
fn every_variable_injected_for_the_supervisor_is_an_env_argument_of_wave_agent_run() {
    let arguments = supervisor_env_arguments();
    assert!(arguments.len() > 20, "read {arguments:?}");
    let problems = cli_mismatches(&arguments);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_cli_check_fails_on_a_missing_argument() {
    let mut arguments = supervisor_env_arguments();
    arguments.remove("WAVE_STOP_TIMEOUT");
    assert_eq!(
        cli_mismatches(&arguments),
        [
            "the webhook injects WAVE_STOP_TIMEOUT for the supervisor, but wave-agent run has no argument with env = WAVE_STOP_TIMEOUT"
        ]
    );
}

/// The part of a Markdown page from the heading `heading` to the next heading of the same or
/// a higher level.
fn section<'a>(page: &'a str, heading: &str) -> &'a str {
    let start = page
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let body = &page[start + heading.len() + 2..];
    let end = body
        .match_indices("\n#")
        .find(|(i, _)| {
            let hashes = body[i + 1..].chars().take_while(|c| *c == '#').count();
            hashes <= level && body[i + 1 + hashes..].starts_with(' ')
        })
        .map_or(body.len(), |(i, _)| i);
    &body[..end]
}

/// The backticked words of a section's table rows, in order of appearance.
fn table_names(section: &str) -> Vec<String> {
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|row| {
            let first_cell = row.split('|').nth(1).unwrap_or_default();
            first_cell
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Names of `wanted` missing from `have`.
fn missing<'a>(wanted: impl IntoIterator<Item = &'a str>, have: &[String]) -> Vec<&'a str> {
    wanted
        .into_iter()
        .filter(|w| !have.iter().any(|h| h == w))
        .collect()
}

fn page(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).expect(path)
}

#[test]
fn the_webhook_reference_has_a_row_for_every_annotation() {
    let rows = table_names(section(
        &page("docs/webhook-reference.md"),
        "## Annotations",
    ));
    let names = Annotation::ALL.iter().map(|a| a.name());
    assert_eq!(missing(names, &rows), Vec::<&str>::new());
}

#[test]
fn the_webhook_reference_lists_every_injected_variable_in_the_order_they_are_appended() {
    let rows = table_names(section(
        &page("docs/webhook-reference.md"),
        "## Environment variables",
    ));
    let contract: Vec<String> = INJECTED.iter().map(|v| v.name.to_owned()).collect();
    assert_eq!(rows, contract);
}

#[test]
fn the_readme_reference_names_every_annotation_and_injected_variable() {
    let readme = page("README.md");
    let annotations = table_names(section(
        &readme,
        "### Pod annotations (on the Deployment's `spec.template.metadata`)",
    ));
    let keys = Annotation::ALL.iter().map(|a| a.key());
    assert_eq!(missing(keys, &annotations), Vec::<&str>::new());
    let variables = table_names(section(&readme, "### Environment of a test container"));
    let names = INJECTED.iter().map(|v| v.name);
    assert_eq!(missing(names, &variables), Vec::<&str>::new());
}

#[test]
fn the_table_check_finds_a_row_left_out() {
    let table = "## Annotations\n\n| annotation | values |\n|---|---|\n| `inject` | x |\n| `agents` | y |\n\n## Next\n| `os` | z |\n";
    let rows = table_names(section(&format!("\n{table}"), "## Annotations"));
    assert_eq!(rows, ["inject", "agents"]);
    assert_eq!(missing(["inject", "agents", "os"], &rows), ["os"]);
}

/// Files of the project that may quote the SPEC's section numbers: none.
#[test]
fn code_and_docs_cite_the_projects_own_docs_not_spec_section_numbers() {
    let root = workspace_root();
    let mut offenders = Vec::new();
    let mut dirs: Vec<_> = [
        "contract",
        "webhook",
        "agent",
        "tests",
        "docs",
        "scripts",
        "manifests",
    ]
    .iter()
    .map(|d| root.join(d))
    .collect();
    let mut files: Vec<_> = ["README.md", "ARCHITECTURE.md", "BENCHMARKS.md"]
        .iter()
        .map(|f| root.join(f))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable dir").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !["target", "corpus", "artifacts", "node_modules"].contains(&name.as_str()) {
                    dirs.push(path);
                }
            } else if [".rs", ".md", ".sh", ".yaml", ".toml"]
                .iter()
                .any(|e| name.ends_with(e))
            {
                files.push(path);
            }
        }
    }
    let this_file = root.join("tests/tests/it/contract.rs");
    for file in files.into_iter().filter(|f| *f != this_file) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            if cites_spec_section(line) {
                offenders.push(format!(
                    "{}:{}: {}",
                    file.strip_prefix(&root).unwrap_or(&file).display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "cite docs/… instead of SPEC sections (a clone has no SPEC):\n{}",
        offenders.join("\n")
    );
}

/// `SPEC 1.3`, `SPEC section 5`, `SPEC sections 2.1`, `SPEC's 6`: a section number of a
/// document outside the repository.
fn cites_spec_section(line: &str) -> bool {
    line.match_indices("SPEC").any(|(i, _)| {
        let rest = line[i + 4..]
            .trim_start_matches("'s")
            .trim_start_matches(" sections")
            .trim_start_matches(" section")
            .trim_start();
        rest.starts_with(|c: char| c.is_ascii_digit())
    })
}

#[test]
fn the_spec_check_knows_a_citation_from_a_word() {
    assert!(cites_spec_section("// (SPEC 1.3) the grace period"));
    assert!(cites_spec_section("this page is SPEC section 1;"));
    assert!(cites_spec_section("SPEC sections 2.1 to 2.3"));
    assert!(!cites_spec_section("the SPEC's list of options"));
    assert!(!cites_spec_section("SPECIAL 12"));
}
