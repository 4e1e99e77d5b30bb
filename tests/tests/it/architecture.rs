//! ARCHITECTURE.md stays true: every module of the two crates is placed in a flow, and every
//! module the page names exists.

use std::collections::BTreeSet;
use std::path::Path;

use wave_tests::workspace_root;

/// Backticked file names ending in `.rs` on the page, e.g. `mutate.rs` or `store/s3.rs`.
fn named_modules(page: &str) -> BTreeSet<String> {
    page.split('`')
        .skip(1)
        .step_by(2)
        .filter(|quoted| quoted.ends_with(".rs") && !quoted.contains(' '))
        .map(str::to_owned)
        .collect()
}

/// Every `.rs` file under a crate's `src/`: its path relative to `src/` and its text.
fn rust_files(src: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a crate's src dir is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src).expect("under src");
                let text = std::fs::read_to_string(&path).expect("a source file is readable");
                files.push((relative.to_string_lossy().into_owned(), text));
            }
        }
    }
    files
}

/// The modules of a crate's `src/`, as paths relative to it; the crate roots and modules
/// compiled only for unit tests are not steps of a flow.
fn crate_modules(src: &Path) -> BTreeSet<String> {
    rust_files(src)
        .into_iter()
        .filter(|(relative, text)| {
            !["lib.rs", "main.rs"].contains(&relative.as_str())
                && !relative.starts_with("bin/")
                && !text.contains("#![cfg(test)]")
        })
        .map(|(relative, _)| relative)
        .collect()
}

#[test]
fn architecture_names_every_module_of_both_crates_and_only_real_ones() {
    let root = workspace_root();
    let page = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let named = named_modules(&page);
    let mut real = BTreeSet::new();
    for krate in ["contract", "webhook", "agent"] {
        let modules = crate_modules(&root.join(krate).join("src"));
        let missing: Vec<_> = modules.iter().filter(|m| !named.contains(*m)).collect();
        assert!(
            missing.is_empty(),
            "ARCHITECTURE.md does not place these {krate} modules in a flow: {missing:?}"
        );
        real.extend(modules);
    }
    let tests_src = crate_modules(&root.join("tests/src"));
    let unknown: Vec<_> = named
        .iter()
        .filter(|m| {
            !real.contains(*m)
                && !tests_src.contains(*m)
                && !["lib.rs", "main.rs"].contains(&m.as_str())
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "ARCHITECTURE.md names modules that do not exist: {unknown:?}"
    );
}

/// The modules a file of `src/` belongs to: its top-level module (`report/merge.rs` is part
/// of `report`), or `None` for the crate root, binaries and modules compiled only for tests.
fn top_module(relative: &str, text: &str, test_only: &BTreeSet<String>) -> Option<String> {
    if relative.starts_with("bin/") || ["lib.rs", "main.rs"].contains(&relative) {
        return None;
    }
    let top = relative
        .split('/')
        .next()?
        .trim_end_matches(".rs")
        .to_owned();
    (!text.contains("#![cfg(test)]") && !test_only.contains(&top)).then_some(top)
}

/// The modules `lib.rs` declares under `#[cfg(test)]`.
fn test_only_modules(lib: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = lib.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "#[cfg(test)]")
        .filter_map(|w| {
            w[1].strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_owned)
        })
        .collect()
}

/// The `crate::` modules a file's non-test code names: `use crate::a::b`, `use crate::{a, b}`
/// and inline paths such as `crate::statsd::StatsdConfig`.
fn crate_edges(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let code: String = code
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut targets = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            targets.extend(group.split(',').map(|item| ident(item.trim())));
        } else {
            targets.insert(ident(rest));
        }
    }
    targets.retain(|t| !t.is_empty() && t != "self");
    targets
}

/// Module → the modules it uses, for one crate's non-test code.
fn module_graph(src: &Path) -> std::collections::BTreeMap<String, BTreeSet<String>> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let test_only = test_only_modules(&lib);
    let mut graph = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
    for (relative, text) in rust_files(src) {
        let Some(top) = top_module(&relative, &text, &test_only) else {
            continue;
        };
        let uses = graph.entry(top.clone()).or_default();
        uses.extend(
            crate_edges(&text)
                .into_iter()
                .filter(|t| *t != top && !test_only.contains(t)),
        );
    }
    graph
}

/// A cycle of the graph, as the modules along it, if there is one.
fn find_cycle(graph: &std::collections::BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

/// The documented layers of `<krate>/src`, top first: the rows of the fenced block on
/// ARCHITECTURE.md whose first line is `layers of <krate>/src …`.
fn documented_layers(page: &str, krate: &str) -> Vec<BTreeSet<String>> {
    let heading = format!("layers of {krate}/src");
    let mut blocks = page.split("```").skip(1).step_by(2);
    let block = blocks
        .find(|b| b.lines().nth(1).is_some_and(|l| l.starts_with(&heading)))
        .unwrap_or_else(|| panic!("ARCHITECTURE.md has no block starting with {heading:?}"));
    block
        .lines()
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .map(|row| {
            row.split(',')
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect()
        })
        .collect()
}

/// What is wrong with a crate's imports against its documented layers: modules in no layer,
/// layers naming no module, and every edge that does not point down.
fn layering_problems(
    graph: &std::collections::BTreeMap<String, BTreeSet<String>>,
    layers: &[BTreeSet<String>],
) -> Vec<String> {
    let row = |m: &str| layers.iter().position(|l| l.contains(m));
    let mut problems = Vec::new();
    for module in graph.keys() {
        if row(module).is_none() {
            problems.push(format!("{module} is in no layer"));
        }
    }
    for module in layers.iter().flatten() {
        if !graph.contains_key(module) {
            problems.push(format!("the layers name {module}, which is not a module"));
        }
    }
    for (from, uses) in graph {
        for to in uses {
            if let (Some(a), Some(b)) = (row(from), row(to))
                && b <= a
            {
                problems.push(format!(
                    "{from} (layer {}) uses {to} (layer {}): dependencies point down only",
                    a + 1,
                    b + 1
                ));
            }
        }
    }
    problems
}

#[test]
fn no_crate_has_an_import_cycle_and_every_import_points_down_the_documented_layers() {
    let root = workspace_root();
    let page = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    for krate in ["contract", "webhook", "agent"] {
        let graph = module_graph(&root.join(krate).join("src"));
        assert!(graph.len() > 3, "{krate}: found only {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate} has an import cycle: {}", cycle.join(" → "));
        }
        let problems = layering_problems(&graph, &documented_layers(&page, krate));
        assert!(problems.is_empty(), "{krate}/src:\n{}", problems.join("\n"));
    }
}

#[test]
fn the_import_checks_find_a_cycle_and_an_upward_edge() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut graph = std::collections::BTreeMap::<String, BTreeSet<String>>::new();
        for (a, b) in pairs {
            graph.entry((*a).into()).or_default().insert((*b).into());
            graph.entry((*b).into()).or_default();
        }
        graph
    };
    let cyclic = edges(&[("a", "b"), ("b", "c"), ("c", "a")]);
    assert_eq!(
        find_cycle(&cyclic).expect("a cycle"),
        ["a", "b", "c", "a"].map(String::from)
    );
    let layered = edges(&[("top", "low"), ("low", "top2")]);
    assert_eq!(find_cycle(&layered), None);
    let layers: Vec<BTreeSet<String>> = vec![
        ["top", "top2"].map(String::from).into(),
        ["low"].map(String::from).into(),
    ];
    assert_eq!(
        layering_problems(&layered, &layers),
        ["low (layer 2) uses top2 (layer 1): dependencies point down only"]
    );
    assert_eq!(
        crate_edges(
            "use crate::a::B;\nuse crate::{b, c::D};\nfn f() { crate::d::e(); } // crate::x\n#[cfg(test)]\nuse crate::t;"
        ),
        ["a", "b", "c", "d"].map(String::from).into()
    );
}
