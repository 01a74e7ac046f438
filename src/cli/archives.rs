//! The commands on archives themselves: `pack` and `check`.

use super::*;

pub(super) fn pack(
    dir: &std::path::Path,
    output: &std::path::Path,
    prefix: Option<&str>,
    ignore: &[String],
    include: &[String],
) -> u8 {
    use crate::archive::ignore::IgnoreRules;
    use crate::archive::pack::{PackOptions, pack_with_progress};
    let prefix = prefix.map(str::to_string).unwrap_or_else(|| {
        std::path::absolute(dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "app".to_string())
    });
    // The output file never packs itself when written inside the tree.
    let always = std::path::absolute(output)
        .map(|o| vec![o])
        .unwrap_or_default();
    let rules = match IgnoreRules::new(dir, ignore, include, &always) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dropdeploy: pack {}: {e}", dir.display());
            return EXIT_USAGE;
        }
    };
    let started = Instant::now();
    let opts = PackOptions {
        prefix,
        ..PackOptions::default()
    };
    let bar = std::io::stderr().is_terminal().then(pack_bar);
    let packed = pack_with_progress(&rules, output, &opts, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.total_entries);
            bar.set_position(p.entries);
            bar.set_message(format!(
                "{} files, {}",
                p.files,
                crate::human::bytes(p.bytes_in)
            ));
        }
    });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match packed {
        Ok(summary) => {
            for (path, why) in &summary.skipped {
                eprintln!("dropdeploy: skipped {}: {why}", path.display());
            }
            println!(
                "packed {} into {}: {} entries ({} files), {} → {} in {:.2} s, digest {}",
                dir.display(),
                output.display(),
                summary.entries,
                summary.files,
                crate::human::bytes(summary.bytes_in),
                crate::human::bytes(summary.bytes_out),
                started.elapsed().as_secs_f64(),
                summary.digest
            );
            let limit = crate::config::DEFAULT_MAX_ARCHIVE_BYTES;
            if summary.uncompressed_bytes > limit {
                eprintln!(
                    "dropdeploy: note: {} uncompressed is over the platform's limit of {}: \
                     Scalingo would refuse this archive",
                    crate::human::bytes(summary.uncompressed_bytes),
                    crate::human::bytes(limit)
                );
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("dropdeploy: pack {}: {e}", dir.display());
            EXIT_FAILED
        }
    }
}

/// The progress bar of `pack` on a terminal: entries packed of the tree's, files and bytes.
fn pack_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("packing {bar:40} {pos}/{len} entries, {msg}")
    {
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
            Ok(summary) => println!("ok: {}: {summary}", file.display()),
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
