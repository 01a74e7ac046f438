//! The fleet's schema: migrations embedded in the binary (`migrations/NNNN_name.sql`), applied
//! in order at start, all in one transaction that holds a transaction-level advisory lock
//! (released at commit: nodes starting together apply them once), and recorded in
//! `dropdeploy_schema`. A database whose schema is newer than this binary knows is refused.

use std::time::Duration;

use super::pg::Pool;
use crate::queue::store::StoreError;

/// The migrations, in order: (version, name, SQL). A new one is one line here.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "fleet", include_str!("migrations/0001_fleet.sql")),
    (2, "budget", include_str!("migrations/0002_budget.sql")),
];

/// The newest schema version this binary knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// The advisory lock's key while migrating (`pg_advisory_xact_lock`): "dropdeploy" in ASCII,
/// cut to 63 bits.
const LOCK_KEY: i64 = 0x6472_6f70_6465_706c;

/// How long migrating may take (the lock may be held by another node migrating).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database was made by a newer dropdeploy.
    #[error(
        "the database's schema is version {found}, this dropdeploy knows up to {known}: upgrade it"
    )]
    TooNew { found: i32, known: i32 },
    /// The database URL cannot be used.
    #[error("{0}")]
    Url(String),
    /// The database cannot be reached, or refused a migration.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies the migrations the database lacks. Returns the versions applied (none when the
/// schema was up to date).
pub async fn migrate(pool: &Pool) -> Result<Vec<i32>, MigrateError> {
    let mut conn = pool.get().await?;
    let result = tokio::time::timeout(MIGRATE_TIMEOUT, apply(&mut conn.0)).await;
    match pool.settle(conn, result) {
        Ok(Ok(applied)) => Ok(applied),
        Ok(Err(too_new)) => Err(too_new),
        Err(e) => Err(MigrateError::Store(migration_failed(e))),
    }
}

fn migration_failed(e: StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(reason) => {
            StoreError::Unavailable(format!("cannot migrate the fleet's schema: {reason}"))
        }
        other => other,
    }
}

/// The transaction: lock, read the versions, refuse a newer schema, apply the missing ones.
async fn apply(
    client: &mut tokio_postgres::Client,
) -> Result<Result<Vec<i32>, MigrateError>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS dropdeploy_schema (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let row = tx
        .query_one("SELECT max(version) FROM dropdeploy_schema", &[])
        .await?;
    let found: i32 = row.get::<_, Option<i32>>(0).unwrap_or(0);
    if found > SCHEMA_VERSION {
        tx.rollback().await?;
        return Ok(Err(MigrateError::TooNew {
            found,
            known: SCHEMA_VERSION,
        }));
    }
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if *version <= found {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO dropdeploy_schema (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        tracing::info!("applied the fleet's schema migration {version:04}_{name}");
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(Ok(applied))
}

/// The schema version the database is at (0 before any migration).
pub async fn version(pool: &Pool) -> Result<i32, StoreError> {
    let conn = pool.get().await?;
    let result = tokio::time::timeout(super::pg::OPERATION_TIMEOUT, async {
        let exists = conn
            .0
            .query_one("SELECT to_regclass('dropdeploy_schema') IS NOT NULL", &[])
            .await?
            .get::<_, bool>(0);
        if !exists {
            return Ok(0);
        }
        let row = conn
            .0
            .query_one(
                "SELECT coalesce(max(version), 0) FROM dropdeploy_schema",
                &[],
            )
            .await?;
        Ok(row.get::<_, i32>(0))
    })
    .await;
    pool.settle(conn, result)
}
