//! Job records are written with two fsyncs each: async code writes them through
//! `Spool::save_async` (a blocking thread), never with `Spool::save` on the runtime's threads.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `text` that call `.save(` on a spool inside an `async fn` (the last function
/// header above them is async), other than inside a closure handed to a blocking thread on the
/// same line. Test modules are left out.
fn saves_on_the_runtime(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_async = false;
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        if code.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        if let Some(at) = code.find("fn ")
            && code[at + 3..].contains('(')
            && (at == 0 || !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
            && !code.contains("|")
        {
            in_async = code[..at].contains("async");
        }
        let saves = code.contains("spool.save(") || code.contains("spool().save(");
        let off = code.contains("blocking::run") || code.contains("spawn_blocking");
        if in_async && saves && !off {
            found.push((n + 1, line.trim().to_string()));
        }
    }
    found
}

#[test]
fn no_job_record_is_saved_on_the_async_runtime() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut found = Vec::new();
    for file in &files {
        if file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for (line, code) in saves_on_the_runtime(&text) {
            found.push(format!("{}:{line}: {code}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "job records saved on the async runtime (use `save_async`):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_a_save_in_an_async_fn_and_not_one_in_a_sync_fn() {
    let text = "async fn a(&self) {\n    self.spool.save(job)?;\n}\nfn b(&self) {\n    self.spool.save(job)?;\n}\nasync fn c(&self) {\n    blocking::run(move || spool.save(&job)).await;\n    self.spool.save_async(job).await?;\n}\n";
    assert_eq!(
        saves_on_the_runtime(text),
        vec![(2, "self.spool.save(job)?;".to_string())]
    );
}
