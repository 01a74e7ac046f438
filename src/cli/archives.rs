//! The commands on archives themselves: `pack` and `check`.

use super::*;

/// `-o -`: the archive on stdout.
const STDOUT: &str = "-";

pub(super) fn pack(
    dir: &std::path::Path,
    output: Option<&std::path::Path>,
    prefix: Option<&str>,
    ignore: &[String],
    include: &[String],
) -> u8 {
    use crate::archive::ignore::IgnoreRules;
    let name = std::path::absolute(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    let prefix = prefix
        .map(str::to_string)
        .or_else(|| name.clone())
        .unwrap_or_else(|| "app".to_string());
    // Default: <the directory's name>.tar.gz in the current directory.
    let output = output
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("{}.tar.gz", name.as_deref().unwrap_or("app"))));
    let to_stdout = output.as_os_str() == STDOUT;
    if to_stdout && std::io::stdout().is_terminal() {
        eprintln!(
            "dropdeploy: pack {}: not writing a compressed archive to a terminal; \
             redirect stdout, or name a file with -o",
            dir.display()
        );
        return EXIT_USAGE;
    }
    // The output file never packs itself when written inside the tree.
    let always = match to_stdout {
        true => Vec::new(),
        false => std::path::absolute(&output)
            .map(|o| vec![o])
            .unwrap_or_default(),
    };
    let rules = match IgnoreRules::new(dir, ignore, include, &always) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dropdeploy: pack {}: {e}", dir.display());
            return EXIT_USAGE;
        }
    };
    let started = Instant::now();
    let opts = crate::archive::pack::PackOptions {
        prefix,
        ..Default::default()
    };
    let packed = if to_stdout {
        crate::archive::pack::pack_to_writer(&rules, std::io::stdout().lock(), &opts)
    } else {
        pack_to_file(&rules, &output, &opts)
    };
    let summary = match packed {
        Ok(summary) => summary,
        Err(e) => {
            eprintln!("dropdeploy: pack {}: {e}", dir.display());
            return EXIT_FAILED;
        }
    };
    say_packed(dir, &output, to_stdout, &summary, started.elapsed());
    EXIT_OK
}

/// What `pack` made: the skipped entries, the summary (on stderr when stdout is the archive),
/// and a note when the platform would refuse the archive.
fn say_packed(
    dir: &std::path::Path,
    output: &std::path::Path,
    to_stdout: bool,
    summary: &crate::archive::pack::PackSummary,
    took: std::time::Duration,
) {
    for (path, why) in &summary.skipped {
        eprintln!("dropdeploy: skipped {}: {why}", path.display());
    }
    let into = if to_stdout {
        "stdout".to_string()
    } else {
        output.display().to_string()
    };
    // On stderr when stdout is the archive.
    let lines = format!(
        "packed {} into {into}: {} entries ({} files), {} → {} in {}\n  \
         archive sha256: {}\n  \
         tree digest:    {} (names, modes and contents; what `watch` compares)",
        dir.display(),
        summary.entries,
        summary.files,
        crate::human::bytes(summary.bytes_in),
        crate::human::bytes(summary.bytes_out),
        crate::human::duration(took),
        summary.sha256,
        summary.digest
    );
    if to_stdout {
        esay!("{lines}");
    } else {
        say!("{lines}");
    }
    let limit = crate::config::DEFAULT_MAX_ARCHIVE_BYTES;
    if summary.uncompressed_bytes > limit {
        eprintln!(
            "dropdeploy: note: {} uncompressed is over the platform's limit of {}: \
             Scalingo would refuse this archive",
            crate::human::bytes(summary.uncompressed_bytes),
            crate::human::bytes(limit)
        );
    }
}

/// Packs into a file, with a progress bar in bytes on a terminal (unless `-q`).
fn pack_to_file(
    rules: &crate::archive::ignore::IgnoreRules,
    output: &std::path::Path,
    opts: &crate::archive::pack::PackOptions,
) -> Result<crate::archive::pack::PackSummary, crate::archive::pack::PackError> {
    let bar = (!super::quiet() && std::io::stderr().is_terminal()).then(|| pack_bar(rules));
    let packed = crate::archive::pack::pack_with_progress(rules, output, opts, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_position(p.bytes_in);
            bar.set_message(format!("{} files", p.files));
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    packed
}

/// The progress bar of `pack` on a terminal: bytes of file content packed of the tree's.
fn pack_bar(rules: &crate::archive::ignore::IgnoreRules) -> indicatif::ProgressBar {
    use crate::archive::ignore::EntryKind;
    let total: u64 = rules
        .walk()
        .map(|entries| {
            entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .filter_map(|e| std::fs::symlink_metadata(&e.absolute).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "packing {bar:40} {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}, {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

pub(super) fn check(cli: &Cli, max_size: Option<u64>, files: &[PathBuf]) -> u8 {
    let max_uncompressed = match max_size {
        Some(bytes) => bytes,
        None => match load_config(cli) {
            Ok(config) => config.max_archive_bytes,
            Err(e) => {
                eprintln!("dropdeploy: {e}");
                return EXIT_USAGE;
            }
        },
    };
    let limits = Limits { max_uncompressed };
    let mut code = EXIT_OK;
    for file in files {
        match inspect(file, &limits) {
            Ok(summary) => say!("ok: {}: {summary}", file.display()),
            Err(InspectError::Rejected(rejection)) => {
                println!("refused: {}: {rejection}", file.display());
                code = code.max(EXIT_FAILED);
            }
            Err(e @ InspectError::Io { .. }) => {
                eprintln!("dropdeploy: check: {e}");
                code = EXIT_USAGE;
            }
        }
    }
    code
}
