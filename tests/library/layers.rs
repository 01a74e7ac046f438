//! The module graph follows the data: a module imports only from its own layer or the layers
//! below it. The order is written once, here; a `crate::` path going up a layer fails the test
//! with the file, the line and both layers.

use std::path::Path;

/// Lowest first. A module is matched by the longest prefix listed.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "foundations",
        &[
            "redact", "human", "durable", "blocking", "shutdown", "lock", "process", "http",
        ],
    ),
    ("config", &["config"]),
    ("archive", &["archive"]),
    (
        "jobs",
        &[
            "queue::spool",
            "queue::check",
            "queue::clock",
            "queue::retry",
            "queue::observe",
            "queue::intake",
            "queue::store",
            "live",
        ],
    ),
    ("sources", &["source"]),
    ("lanes", &["queue::lane", "queue"]),
    ("targets", &["deploy", "verify"]),
    ("outcomes", &["outcome"]),
    ("fleet", &["fleet"]),
    ("observers", &["metrics", "hooks", "service", "page"]),
    ("composition", &["daemon"]),
    ("command line", &["cli", "main"]),
];

fn layer_of(module: &str) -> Option<(usize, &'static str)> {
    let mut best: Option<(usize, &str, usize)> = None;
    for (index, (name, prefixes)) in LAYERS.iter().enumerate() {
        for prefix in *prefixes {
            let matches = module == *prefix || module.starts_with(&format!("{prefix}::"));
            if matches && best.is_none_or(|(_, _, len)| prefix.len() > len) {
                best = Some((index, name, prefix.len()));
            }
        }
    }
    best.map(|(index, name, _)| (index, name))
}

/// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`.
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::…` paths a line of code uses (not its comments).
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let path: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        found.push(path.trim_end_matches(':').to_string());
        rest = &after[path.len()..];
    }
    found
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut unlisted = Vec::new();
    for file in &files {
        let module = module_of(file, &src);
        if module.is_empty() || module.ends_with("tests") {
            continue;
        }
        let Some((own, own_name)) = layer_of(&module) else {
            unlisted.push(module);
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests may reach anything.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            for path in crate_paths(line) {
                let Some((used, used_name)) = layer_of(&path) else {
                    continue;
                };
                if used > own {
                    upward.push(format!(
                        "{}:{}: {module} ({own_name}) uses crate::{path} ({used_name})",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(unlisted.is_empty(), "modules in no layer: {unlisted:?}");
    assert!(
        upward.is_empty(),
        "imports going up a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        crate_paths("use crate::daemon::run; // crate::cli"),
        ["daemon::run"]
    );
    let (config, _) = layer_of("config::raw").unwrap();
    let (hooks, _) = layer_of("hooks").unwrap();
    assert!(hooks > config, "config sits below the hooks");
    assert!(layer_of("queue::lane").unwrap().0 > layer_of("queue::spool").unwrap().0);
}
