//! Release binaries are linked with identical code folding (`--icf=all`): functions whose
//! machine code is the same (many generic instances are) are kept once. About 0.2 MB of the
//! release binary, and no run-time cost (Rust promises no unique function addresses; LLVM
//! already merges some such functions).
//!
//! Only where the linker is known to be LLD, which understands the flag: rustc's own
//! `rust-lld`, the default for x86_64 Linux since Rust 1.90. Elsewhere nothing changes.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    if release && target == "x86_64-unknown-linux-gnu" && rustc_minor().is_some_and(|m| m >= 90) {
        println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
    }
}

/// The minor version of the compiler cargo builds with (`rustc 1.95.0 (…)` → 95).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    match (parts.next()?, parts.next()?) {
        ("1", minor) => minor.parse().ok(),
        _ => None,
    }
}
