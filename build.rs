//! Release binaries are linked with identical code folding (`--icf=all`): functions whose
//! machine code is the same (many generic instances are) are kept once. About 0.2 MB of the
//! release binary, and no run-time cost (Rust promises no unique function addresses; LLVM
//! already merges some such functions).
//!
//! And with packed relative relocations (`-z pack-relative-relocs`, `DT_RELR`): the dynamic
//! loader's table of pointers to adjust in a position-independent binary shrinks from 24 bytes
//! a pointer to a bitmap, 0.75 MB less. The loader must understand `DT_RELR` (glibc 2.36 and
//! later; the linker records the requirement as the version `GLIBC_ABI_DT_RELR`, so an older
//! glibc refuses to start the binary instead of misrunning it). Only when this machine's own
//! glibc is 2.36 or later, so a native build always runs where it is built.
//!
//! Only where the linker is known to be LLD, which understands both flags: rustc's own
//! `rust-lld`, the default for x86_64 Linux since Rust 1.90. Elsewhere nothing changes.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if release && target == "x86_64-unknown-linux-gnu" && rustc_minor().is_some_and(|m| m >= 90) {
        println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
        if host == target && glibc_minor().is_some_and(|m| m >= 36) {
            println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        }
    }
}

/// The minor version of the compiler cargo builds with (`rustc 1.95.0 (…)` → 95).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    minor_of(text.split_whitespace().nth(1)?, "1")
}

/// The minor version of this machine's glibc (`getconf GNU_LIBC_VERSION`: `glibc 2.36` → 36).
fn glibc_minor() -> Option<u32> {
    let getconf = Command::new("getconf").arg("GNU_LIBC_VERSION").output();
    let out = getconf.ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut words = text.split_whitespace();
    match (words.next()?, words.next()?) {
        ("glibc", version) => minor_of(version, "2"),
        _ => None,
    }
}

/// The second number of a version whose first is `major` (`minor_of("2.36", "2")` → 36).
fn minor_of(version: &str, major: &str) -> Option<u32> {
    let mut parts = version.split('.');
    if parts.next()? != major {
        return None;
    }
    parts.next()?.parse().ok()
}
