//! Runs the fake Scalingo platform of the test suite (this crate's library) as a standalone
//! server, to try `dropdeploy` by hand against it:
//!
//! ```text
//! cargo run -p fake-scalingo -- --listen 127.0.0.1:4567 --step 1s --app my-app
//! ```
//!
//! `--step` sets how long each of the four deployment steps takes: `--step 3s` makes a
//! deployment last about 12 s, e.g. to stop the daemon in the middle of one.
//!
//! `--rate-limit 60` enforces the platform's limit (429 beyond it); `--no-stream` refuses the
//! deployments stream. `GET /_fake/stats` answers the counters (requests by endpoint, 429s).
//!
//! It prints the environment to export, then one line per request on stderr (unless
//! `--quiet`), until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fake_scalingo::{FakeConfig, FakeScalingo};

/// A fake Scalingo API (auth, API and storage on one port) for local experiments.
#[derive(Debug, Parser)]
#[command(name = "fake-scalingo")]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:4567")]
    listen: SocketAddr,
    /// The API token the exchange accepts.
    #[arg(long, conflicts_with = "token_file")]
    token: Option<String>,
    /// Read the API token the exchange accepts from this file (trimmed), so that it shows in
    /// no command line.
    #[arg(long, value_name = "PATH")]
    token_file: Option<std::path::PathBuf>,
    /// Time spent in each of queued, building, pushing and starting.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    step: Duration,
    /// An app that exists (repeat for several).
    #[arg(long = "app", value_name = "NAME", default_value = "my-app")]
    apps: Vec<String>,
    /// Lifetime of the issued JWTs.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    jwt_lifetime: Duration,
    /// Lifetime of sources (upload and download URLs).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    source_lifetime: Duration,
    /// Upload URLs first answer 307 to the real storage URL.
    #[arg(long)]
    redirect_uploads: bool,
    /// Largest archive the platform accepts, uncompressed, in bytes (Scalingo: 300 MB).
    #[arg(long, value_name = "BYTES", default_value_t = FakeConfig::default().max_archive_bytes)]
    max_archive_bytes: u64,
    /// At most this many API requests a minute, beyond which it answers 429 with
    /// `Retry-After` (Scalingo: 60). Unlimited when not given.
    #[arg(long, value_name = "REQUESTS")]
    rate_limit: Option<u32>,
    /// Refuse the deployments stream (404), so that clients fall back to polling.
    #[arg(long)]
    no_stream: bool,
    /// End every stream connection at its auth frame with no close frame (auth refused by a
    /// plain close, as the documentation allows).
    #[arg(long)]
    stream_refuse_auth: bool,
    /// Send the log so far at the start of each stream connection.
    #[arg(long)]
    stream_replay: bool,
    /// Cut each stream connection (no close frame) this long after its auth.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    stream_cut_every: Option<Duration>,
    /// Plain transient faults (500, 503, dropped connections) on this share of the API
    /// requests, 0.0 to 1.0 (seeded by --fault-seed).
    #[arg(long, value_name = "SHARE")]
    transient_faults: Option<f64>,
    /// The seed of --transient-faults.
    #[arg(long, default_value_t = 1)]
    fault_seed: u64,
    /// No line per request on stderr (benchmarks).
    #[arg(long)]
    quiet: bool,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut cfg = FakeConfig {
        step: args.step,
        apps: args.apps,
        jwt_lifetime: args.jwt_lifetime,
        source_lifetime: args.source_lifetime,
        redirect_uploads: args.redirect_uploads,
        max_archive_bytes: args.max_archive_bytes,
        log_requests: !args.quiet,
        rate_limit: args.rate_limit.map(fake_scalingo::RateLimit::per_minute),
        stream: !args.no_stream,
        stream_refuse_auth: args.stream_refuse_auth,
        stream_replay: args.stream_replay,
        stream_cut_every: args.stream_cut_every,
        chaos: args
            .transient_faults
            .map(|probability| fake_scalingo::Chaos {
                seed: args.fault_seed,
                probability,
                delay_past_timeout: Duration::ZERO,
                transient_only: true,
            }),
        ..FakeConfig::default()
    };
    if let Some(token) = args.token {
        cfg.api_token = token;
    }
    if let Some(path) = &args.token_file {
        cfg.api_token = std::fs::read_to_string(path)?.trim().to_string();
    }
    let apps = cfg.apps.join(", ");
    let server = FakeScalingo::start_on(args.listen, cfg)?;
    let url = server.url();
    println!("fake Scalingo API listening on {url} (apps: {apps})");
    println!(
        "export SCALINGO_API_URL={url} SCALINGO_AUTH_URL={url} SCALINGO_API_TOKEN={}",
        server.api_token()
    );
    std::io::Write::flush(&mut std::io::stdout())?;

    // SIGTERM too, so that the stored uploads (a temporary directory) are removed.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        })?;
    drop(server);
    eprintln!("fake-scalingo: stopped");
    Ok(())
}
