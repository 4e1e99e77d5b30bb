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

/// The modules of a crate's `src/`, as paths relative to it; the crate roots and modules
/// compiled only for unit tests are not steps of a flow.
fn crate_modules(src: &Path) -> BTreeSet<String> {
    let mut modules = BTreeSet::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a crate's src dir is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("a source file is readable");
            let test_only = text.contains("#![cfg(test)]");
            if relative.ends_with(".rs")
                && !["lib.rs", "main.rs"].contains(&relative.as_str())
                && !relative.starts_with("bin/")
                && !test_only
            {
                modules.insert(relative);
            }
        }
    }
    modules
}

#[test]
fn architecture_names_every_module_of_both_crates_and_only_real_ones() {
    let root = workspace_root();
    let page = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let named = named_modules(&page);
    let mut real = BTreeSet::new();
    for krate in ["webhook", "agent"] {
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
