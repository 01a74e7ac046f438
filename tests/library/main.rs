//! The library's parts through their public API, on real files, real inotify and real sockets,
//! without the `dropdeploy` binary. One module per part.
//!
//! Run one part with a filter, e.g. `cargo test --test library pack::`.

/// Job records are saved off the async runtime.
mod blocking_saves;
/// The Scalingo client against fixtures of the platform's documented answers.
mod conformance;
/// The drop folder watcher: what it takes, when, and what it leaves alone.
mod drop_folders;
/// The fleet's API budget: nodes sharing one window in PostgreSQL.
mod fleet_budget;
/// Replays of the fuzzers' inputs (`tests/fuzz_inputs/`).
mod fuzz_regressions;
/// `inspect` against archives made by GNU tar and gzip.
mod inspect_gnu;
/// The module graph follows the layers of the data flow.
mod layers;
/// `inspect` and the local extractor judge paths and links by one policy.
mod link_policy;
/// `LocalTarget`: releases, the `current` switch, activation, rollback, recovery, pruning.
mod local_target;
/// Metrics over HTTP and outcome hooks (webhooks, commands).
mod metrics_and_hooks;
/// Finished jobs: `done/`, `failed/`, the history, `history` and `status`.
mod outcomes;
/// Packing source trees: deterministic archives and ignore rules.
mod pack;
/// The parallel gzip writer.
mod pgzip;
/// The store boundary: the same cases over the local store and PostgreSQL (`testpg`).
mod store_conformance;
/// The source tree watcher: bursts, watches, a root that goes and comes back.
mod watched_trees;
