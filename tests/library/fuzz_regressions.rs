//! Replays the fuzzers' inputs (`fuzz/`, run with `bench/fuzz.sh`): every file of
//! `tests/fuzz_inputs/inspect/` goes through `inspect_reader` and every file of
//! `tests/fuzz_inputs/config/` through `Config::from_str`, and none may panic or hang.
//!
//! The directories hold the seed corpora (small valid and broken archives made with GNU tar and
//! gzip; the shipped configs and a few broken ones) and every crash or timeout the fuzzers
//! found, minimised with `cargo fuzz tmin`. To add one: copy the minimised input into the
//! target's directory under a name that says what it is.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dropdeploy::archive::inspect::{Limits, inspect_reader};
use dropdeploy::config::{Config, Env};

/// The limit the inspect fuzzer uses.
const LIMITS: Limits = Limits {
    max_uncompressed: 10_000_000,
};

/// Far above what any input takes (milliseconds), low enough to flag a runaway loop in debug.
const BOUND: Duration = Duration::from_secs(30);

/// The files of `tests/fuzz_inputs/<target>/`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_inputs")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    files
}

/// Runs `check` on every input of `target`, then fails naming each input that panicked or took
/// longer than [`BOUND`].
fn replay(target: &str, check: impl Fn(&[u8])) {
    let mut failures = Vec::new();
    for path in inputs(target) {
        let data = fs::read(&path).unwrap();
        let start = Instant::now();
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| check(&data)));
        let took = start.elapsed();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match outcome {
            Err(_) => failures.push(format!("{name}: panicked")),
            Ok(()) if took > BOUND => failures.push(format!("{name}: took {took:?}")),
            Ok(()) => {}
        }
    }
    assert!(failures.is_empty(), "{target} inputs failed: {failures:#?}");
}

#[test]
fn inspect_inputs_never_panic() {
    replay("inspect", |data| {
        let verdict = inspect_reader(data, &LIMITS).expect("a byte slice never fails to read");
        match verdict {
            Ok(summary) => drop(format!("{summary:?}")),
            Err(rejection) => drop(format!("{rejection} {rejection:?}")),
        }
    });
}

#[test]
fn config_inputs_never_panic() {
    let env = Env::from_pairs::<_, &str, &str>([]);
    replay("config", |data| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        if let Err(error) = Config::from_str(text, Path::new("/fuzz/dropdeploy.toml"), &env) {
            drop(format!("{error} {error:?}"));
        }
    });
}

/// The seeds with an inline token: refused, and the message does not repeat the value.
#[test]
fn inline_token_seeds_are_refused_without_echo() {
    let env = Env::from_pairs::<_, &str, &str>([]);
    let seeds = [
        ("inline_token.toml", "tk-us-0123456789abcdef"),
        ("inline_token_broken.toml", "tk-us-broken-line-secret"),
        ("api_token_in_app.toml", "secret-in-app-table-xyz"),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_inputs/config");
    for (name, secret) in seeds {
        let text = fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.contains(secret), "{name} holds its token");
        let error = Config::from_str(&text, Path::new("/fuzz/dropdeploy.toml"), &env)
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        let shown = format!("{error}\n{error:?}");
        assert!(shown.contains("token"), "{name}: {shown}");
        assert!(!shown.contains(secret), "{name} echoes its token: {shown}");
    }
}
