//! Fleet mode: several nodes sharing one PostgreSQL (`[cluster] database_url`).
//!
//! [`PgStore`] is the job store of the fleet behind the [`Store`](crate::queue::store::Store)
//! boundary: jobs and their records, archives in content-addressed chunks, history, lanes as
//! leases with fencing tokens, and the nodes. [`pg`] is the connection (its own small runtime,
//! a few connections, backoff while the database is down), [`tls`] the TLS to a managed
//! database, [`migrate`] the embedded schema migrations.

pub mod budget;
mod chunks;
mod listen;
pub mod migrate;
pub mod pg;
pub mod store;
pub mod tls;

pub use migrate::{MIGRATIONS, MigrateError, SCHEMA_VERSION};
pub use store::{NodeInfo, PgStore, Unplaced};
