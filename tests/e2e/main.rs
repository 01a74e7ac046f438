//! End to end: the real `dropdeploy` binary (one-shot commands and the daemon) against the fake
//! Scalingo API over loopback, with real files, real archives and real inotify. One module per
//! area; `support` is the harness (`World`: a fake API, a temporary directory, a config file).
//!
//! Run one area with a filter, e.g. `cargo test --test e2e daemon::`.

mod support;

/// Headless Chromium driven over WebDriver, for the status page.
mod browser;

/// Bad archives refused before any upload, by `deploy` and by `check`.
mod archive_checks;
/// Seeded fault storms, with and without SIGKILL (big ones: `bench/reliability.sh`).
mod chaos;
/// The wall clock jumps, or differs from the platform's (libfaketime).
mod clock;
/// Colours, verbosity, completions, the man page, SCALINGO_APP and --region.
mod command_line;
/// `dropdeploy config check`.
mod config_command;
/// The daemon killed after each of its durable steps, and what a crash leaves.
mod crash_points;
/// `dropdeploy run`: drops, queues, signals, restarts, recovery.
mod daemon;
/// `dropdeploy deploy` and its retries, faults and token handling.
mod deploy_command;
/// The daemon claiming what the drop folder watcher reports.
mod drop_claims;
/// A new user's first hour: config check vs run, --state-dir, `jobs`, rollback names.
mod first_contact;
/// A new user's first hour: `-q`, `pack`, help and names, units and wording.
mod first_hour;
/// Fleet mode: three nodes, one PostgreSQL, faults, kills, pauses and a database restart.
mod fleet;
/// Fleet mode's intake, placement by the origin node, and the fleet's view.
mod fleet_intake;
/// Fleet mode: two daemons on one PostgreSQL, lanes as leases, takeovers (harness:
/// `fleet_support`).
mod fleet_lease;
/// The fleet harness: a throw-away PostgreSQL, the fake API, nodes.
mod fleet_support;
/// `dropdeploy run` survives anything dropped on it.
mod hostile_drops;
/// The HTTP intake and `dropdeploy push`.
mod intake;
/// The local release target, driven by the daemon.
mod local_releases;
/// The daemon's metrics endpoint and outcome hooks.
mod observability;
/// One deployment per app at a time: reloads, and a `deploy` beside the daemon.
mod one_app_at_a_time;
/// The API token and bearer tokens never leak.
mod secrets;
/// The status page (`GET /`) in a real browser.
mod status_page;
/// Following deployments over the stream, the budget of API requests, regions.
mod stream;
/// Running under systemd: notify protocol, credentials, journal, the unit file.
mod systemd_service;
/// Watched source directories deployed by the daemon; `pack` and `watch`.
mod tree_deploys;
/// Health checks after deployments, rollbacks, `rollback` and `resume`.
mod verify;
