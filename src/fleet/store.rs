//! [`PgStore`]: the job store of a fleet, in PostgreSQL (see [`crate::queue::store`]).
//!
//! Every fenced write is one statement that checks the lane's row (`node`, `token`,
//! `expires_at > now()`: the database's clock) in the same statement as the write, after the
//! node's own check that its lease is still fresh on its monotonic clock
//! ([`Lease::fresh`]). Leases are rows of `lanes` whose token only grows.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::chunks;
use super::migrate::{self, MigrateError};
use super::pg::{OPERATION_TIMEOUT, Pg, Pool};
use crate::config::Secret;
use crate::queue::spool::{Job, Payload};
use crate::queue::store::{Finished, Holder, Lease, Store, StoreError};

/// The NOTIFY channel: its payload is an app's name, after a job of the app was added or
/// finished. A hint only: the nodes' poll reaches the same answer.
pub const CHANNEL: &str = "dropdeploy";

/// A lease is not acted on in the last tenth of its duration (a node that resumes right at
/// the end of its lease does not post).
const MARGIN_DIVISOR: u32 = 10;

/// The fleet's job store. See the [module docs](self).
#[derive(Debug)]
pub struct PgStore {
    pg: Pg,
    node: String,
    /// The leases this node holds, with the duration each was granted for.
    leases: Mutex<HashMap<String, (Lease, Duration)>>,
}

/// A finished job whose dropped file its origin node has not placed yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Unplaced {
    pub job: Job,
    /// The history entry the driver recorded.
    pub entry: serde_json::Value,
    /// The dropped file's path when it was claimed, as text (lossy for a name that is not
    /// UTF-8: the job's `Payload::Archive::original` has it exactly).
    pub origin_path: String,
}

/// A node of the fleet, as it last said.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub node: String,
    pub info: serde_json::Value,
    pub started_at: SystemTime,
    pub seen_at: SystemTime,
    /// How long ago it was seen, by the database's clock.
    pub seen_ago: Duration,
}

impl PgStore {
    /// A store on the database at `url` for the node `node`; connects on first use.
    pub fn new(url: &Secret, node: &str) -> Result<PgStore, MigrateError> {
        let pg = Pg::new(url).map_err(MigrateError::Url)?;
        Ok(PgStore {
            pg,
            node: node.to_owned(),
            leases: Mutex::new(HashMap::new()),
        })
    }

    /// [`PgStore::new`], then [`PgStore::migrate`].
    pub fn connect(url: &Secret, node: &str) -> Result<PgStore, MigrateError> {
        let store = PgStore::new(url, node)?;
        store.migrate()?;
        Ok(store)
    }

    /// Brings the schema up to date ([`migrate::MIGRATIONS`]); refuses a newer one. Returns
    /// the versions applied.
    pub fn migrate(&self) -> Result<Vec<i32>, MigrateError> {
        let pool = self.pg.pool();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.pg.handle().spawn(async move {
            let _ = tx.send(migrate::migrate(&pool).await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(MigrateError::Store(StoreError::Unavailable(
                "the migration task ended without an answer".into(),
            )))
        })
    }

    /// The schema version of the database (0 when none was applied).
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        self.pg
            .run(move |pool: Arc<Pool>| async move { migrate::version(&pool).await })
    }

    /// Since when the database has been unreachable; `None` when the last call reached it.
    pub fn down_since(&self) -> Option<SystemTime> {
        self.pg.down_since()
    }

    /// Whether the database answers now.
    pub fn health(&self) -> Result<(), StoreError> {
        self.exec("SELECT 1", vec![]).map(|_| ())
    }

    /// Wake-up hints: the names of apps whose jobs were added or finished, from NOTIFY on
    /// a connection of its own, re-established after an outage (notifications sent meanwhile
    /// are lost: the poll finds their jobs). Ends when the receiver or the store is dropped.
    pub fn listen(&self) -> tokio::sync::mpsc::Receiver<String> {
        super::listen::spawn(&self.pg)
    }

    /// The finished jobs that `node` claimed from a drop folder and has not yet placed in
    /// `done/` or `failed/`, in arrival order.
    pub fn unplaced(&self, node: &str) -> Result<Vec<Unplaced>, StoreError> {
        let node = node.to_owned();
        let rows = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0.query(
                    "SELECT j.id, j.record, h.entry, j.origin_path FROM jobs j
                     JOIN history h ON h.job = j.id
                     WHERE j.origin_node = $1 AND j.finished_at IS NOT NULL
                       AND j.placed_at IS NULL AND j.origin_path IS NOT NULL
                     ORDER BY j.seq",
                    &[&node],
                ),
            )
            .await;
            pool.settle(conn, result)
        })?;
        rows.iter()
            .map(|row| {
                Ok(Unplaced {
                    job: record(row.get(0), row.get(1))?,
                    entry: row.get(2),
                    origin_path: row.get(3),
                })
            })
            .collect()
    }

    /// Notes that a job's file was placed by its origin node.
    pub fn mark_placed(&self, id: &str) -> Result<(), StoreError> {
        let n = self.exec(
            "UPDATE jobs SET placed_at = coalesce(placed_at, now()) WHERE id = $1",
            vec![Param::Text(id.to_owned())],
        )?;
        if n == 0 {
            return Err(StoreError::Missing(id.to_owned()));
        }
        Ok(())
    }

    /// Says that `node` is alive, with what it wants others to see (`status`).
    pub fn heartbeat(&self, node: &str, info: &serde_json::Value) -> Result<(), StoreError> {
        self.exec(
            "INSERT INTO nodes (node, info) VALUES ($1, $2)
             ON CONFLICT (node) DO UPDATE SET info = excluded.info, seen_at = now()",
            vec![Param::Text(node.to_owned()), Param::Json(info.clone())],
        )
        .map(|_| ())
    }

    /// The nodes that ever said they were alive, by name.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let rows = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0.query(
                    "SELECT node, info, started_at, seen_at,
                            greatest(extract(epoch FROM now() - seen_at), 0)::float8
                     FROM nodes ORDER BY node",
                    &[],
                ),
            )
            .await;
            pool.settle(conn, result)
        })?;
        Ok(rows
            .iter()
            .map(|row| NodeInfo {
                node: row.get(0),
                info: row.get(1),
                started_at: row.get(2),
                seen_at: row.get(3),
                seen_ago: Duration::from_secs_f64(row.get::<_, f64>(4)),
            })
            .collect())
    }

    /// Runs one statement; returns the rows it changed.
    fn exec(&self, sql: &'static str, params: Vec<Param>) -> Result<u64, StoreError> {
        self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let refs = Param::refs(&params);
            let result = tokio::time::timeout(OPERATION_TIMEOUT, conn.0.execute(sql, &refs)).await;
            pool.settle(conn, result)
        })
    }

    /// The lease of `app` if it is fresh enough to act on; `Fenced` otherwise.
    fn fresh_lease(&self, app: &str) -> Result<Lease, StoreError> {
        let leases = self.leases();
        match leases.get(app) {
            Some((lease, duration)) if lease.fresh(*duration, *duration / MARGIN_DIVISOR) => {
                Ok(lease.clone())
            }
            _ => Err(self.fenced(app)),
        }
    }

    fn fenced(&self, app: &str) -> StoreError {
        StoreError::Fenced {
            app: app.to_owned(),
            node: self.node.clone(),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Lease, Duration)>> {
        self.leases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fenced statement's verdict: (the lane is held, the job was written, the job exists).
    fn fenced_write(
        &self,
        job: &Job,
        sql: &'static str,
        extra: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        let lease = self.fresh_lease(&job.app)?;
        let record = to_json(job)?;
        let mut params = vec![
            Param::Text(job.id.clone()),
            Param::Text(job.app.clone()),
            Param::Text(self.node.clone()),
            Param::Int(lease.token),
            Param::Json(record),
        ];
        if let Some(extra) = extra {
            params.push(Param::Json(extra));
        }
        let (held, written, exists) = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let refs = Param::refs(&params);
            let result =
                tokio::time::timeout(OPERATION_TIMEOUT, conn.0.query_one(sql, &refs)).await;
            let row = pool.settle(conn, result)?;
            Ok((
                row.get::<_, bool>(0),
                row.get::<_, bool>(1),
                row.get::<_, bool>(2),
            ))
        })?;
        if !held {
            self.leases().remove(&job.app);
            return Err(self.fenced(&job.app));
        }
        if !written && !exists {
            return Err(StoreError::Missing(job.id.clone()));
        }
        Ok(())
    }
}

/// The fence of a write: the lane's row as this node knows it, alive by the database's clock.
/// $2 app, $3 node, $4 token.
macro_rules! fence {
    () => {
        "fence AS (SELECT 1 FROM lanes WHERE app = $2 AND node = $3 AND token = $4
                   AND expires_at > now())"
    };
}

impl Store for PgStore {
    fn node(&self) -> &str {
        &self.node
    }

    fn shared(&self) -> bool {
        true
    }

    fn add(&self, job: &mut Job, archive: Option<&Path>) -> Result<(), StoreError> {
        if let Some(seq) = self.stored_seq(&job.id)? {
            job.seq = Some(seq);
            return Ok(());
        }
        let stored = match archive {
            Some(path) => Some(chunks::upload(&self.pg, path)?),
            None => None,
        };
        self.insert_job(job, stored)
    }

    fn save(&self, job: &Job) -> Result<(), StoreError> {
        self.fenced_write(
            job,
            concat!(
                "WITH ",
                fence!(),
                ", upd AS (UPDATE jobs SET record = $5 WHERE id = $1 AND app = $2
                           AND EXISTS (SELECT 1 FROM fence) RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM fence), EXISTS (SELECT 1 FROM upd),
                        EXISTS (SELECT 1 FROM jobs WHERE id = $1)"
            ),
            None,
        )
    }

    fn finish(&self, job: &Job, entry: &serde_json::Value) -> Result<(), StoreError> {
        self.fenced_write(
            job,
            concat!(
                "WITH ",
                fence!(),
                ", upd AS (UPDATE jobs SET record = $5, finished_at = now()
                           WHERE id = $1 AND app = $2 AND finished_at IS NULL
                           AND EXISTS (SELECT 1 FROM fence) RETURNING id),
                   ins AS (INSERT INTO history (job, app, entry) SELECT id, $2, $6 FROM upd
                           ON CONFLICT (job) DO NOTHING RETURNING 1)
                 SELECT EXISTS (SELECT 1 FROM fence), EXISTS (SELECT 1 FROM upd),
                        EXISTS (SELECT 1 FROM jobs WHERE id = $1),
                        (SELECT count(pg_notify('dropdeploy', $2)) FROM upd)"
            ),
            Some(entry.clone()),
        )
    }

    fn load(&self, id: &str) -> Result<Job, StoreError> {
        let key = id.to_owned();
        let row = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0
                    .query_opt("SELECT id, record FROM jobs WHERE id = $1", &[&key]),
            )
            .await;
            pool.settle(conn, result)
        })?;
        match row {
            Some(row) => record(row.get(0), row.get(1)),
            None => Err(StoreError::Missing(id.to_owned())),
        }
    }

    fn jobs(&self, app: Option<&str>) -> Result<Vec<Job>, StoreError> {
        let app = app.map(str::to_owned);
        let rows = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0.query(
                    "SELECT id, record FROM jobs WHERE finished_at IS NULL
                     AND ($1::text IS NULL OR app = $1) ORDER BY seq",
                    &[&app],
                ),
            )
            .await;
            pool.settle(conn, result)
        })?;
        // One unreadable record (a newer dropdeploy's?) never hides the others.
        Ok(rows
            .iter()
            .filter_map(|row| match record(row.get(0), row.get(1)) {
                Ok(job) => Some(job),
                Err(e) => {
                    tracing::warn!("skipping a job record of the fleet's database: {e}");
                    None
                }
            })
            .collect())
    }

    fn fetch_archive(&self, id: &str, to: &Path) -> Result<(), StoreError> {
        chunks::download(&self.pg, id, to)
    }

    fn history(&self, app: Option<&str>, limit: usize) -> Result<Vec<Finished>, StoreError> {
        let app = app.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0.query(
                    "SELECT job, app, entry FROM history WHERE ($1::text IS NULL OR app = $1)
                     ORDER BY n DESC LIMIT $2",
                    &[&app, &limit],
                ),
            )
            .await;
            pool.settle(conn, result)
        })?;
        let mut finished: Vec<Finished> = rows
            .iter()
            .map(|row| Finished {
                job: row.get(0),
                app: row.get(1),
                entry: row.get(2),
            })
            .collect();
        finished.reverse();
        Ok(finished)
    }

    fn acquire(&self, app: &str, lease: Duration) -> Result<Option<Lease>, StoreError> {
        let asked = Instant::now();
        let (key, node, secs) = (app.to_owned(), self.node.clone(), lease.as_secs_f64());
        let row = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0.query_opt(
                    "INSERT INTO lanes (app, node, token, expires_at)
                     VALUES ($1, $2, 1, now() + make_interval(secs => $3))
                     ON CONFLICT (app) DO UPDATE SET node = excluded.node,
                         token = lanes.token + 1, expires_at = excluded.expires_at
                     WHERE lanes.expires_at < now()
                     RETURNING token, expires_at",
                    &[&key, &node, &secs],
                ),
            )
            .await;
            pool.settle(conn, result)
        })?;
        let Some(row) = row else { return Ok(None) };
        let granted = Lease {
            app: app.to_owned(),
            node: self.node.clone(),
            token: row.get(0),
            until: row.get(1),
            renewed: asked,
        };
        self.leases()
            .insert(app.to_owned(), (granted.clone(), lease));
        Ok(Some(granted))
    }

    fn renew(&self, lease: &Lease, duration: Duration) -> Result<Option<Lease>, StoreError> {
        let asked = Instant::now();
        let (app, node, token, secs) = (
            lease.app.clone(),
            self.node.clone(),
            lease.token,
            duration.as_secs_f64(),
        );
        let until = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0.query_opt(
                    "UPDATE lanes SET expires_at = now() + make_interval(secs => $4)
                     WHERE app = $1 AND node = $2 AND token = $3 AND expires_at > now()
                     RETURNING expires_at",
                    &[&app, &node, &token, &secs],
                ),
            )
            .await;
            pool.settle(conn, result)
        })?;
        let mut leases = self.leases();
        match until {
            Some(row) => {
                let renewed = Lease {
                    until: row.get(0),
                    renewed: asked,
                    ..lease.clone()
                };
                leases.insert(lease.app.clone(), (renewed.clone(), duration));
                Ok(Some(renewed))
            }
            None => {
                if leases
                    .get(&lease.app)
                    .is_some_and(|(l, _)| l.token == lease.token)
                {
                    leases.remove(&lease.app);
                }
                Ok(None)
            }
        }
    }

    fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        {
            let mut leases = self.leases();
            if leases
                .get(&lease.app)
                .is_some_and(|(l, _)| l.token == lease.token)
            {
                leases.remove(&lease.app);
            }
        }
        self.exec(
            "UPDATE lanes SET expires_at = '-infinity'
             WHERE app = $1 AND node = $2 AND token = $3",
            vec![
                Param::Text(lease.app.clone()),
                Param::Text(self.node.clone()),
                Param::Int(lease.token),
            ],
        )
        .map(|_| ())
    }

    fn holders(&self) -> Result<Vec<Holder>, StoreError> {
        let rows = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0.query(
                    "SELECT app, node, token, expires_at FROM lanes
                     WHERE expires_at > now() ORDER BY app",
                    &[],
                ),
            )
            .await;
            pool.settle(conn, result)
        })?;
        Ok(rows
            .iter()
            .map(|row| Holder {
                app: row.get(0),
                node: row.get(1),
                token: row.get(2),
                until: row.get(3),
            })
            .collect())
    }

    fn lease_of(&self, app: &str) -> Option<Lease> {
        self.leases().get(app).map(|(lease, _)| lease.clone())
    }
}

impl PgStore {
    /// The arrival number of a job already in the store.
    fn stored_seq(&self, id: &str) -> Result<Option<u64>, StoreError> {
        let key = id.to_owned();
        let row = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0
                    .query_opt("SELECT seq FROM jobs WHERE id = $1", &[&key]),
            )
            .await;
            pool.settle(conn, result)
        })?;
        Ok(row.map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)))
    }

    /// Inserts the record (with its fleet-wide `seq`) and links its archive, in one
    /// transaction; a NOTIFY at commit.
    fn insert_job(&self, job: &mut Job, archive: Option<chunks::Stored>) -> Result<(), StoreError> {
        let origin_path = match &job.payload {
            Payload::Archive {
                original,
                copied: false,
                tree_digest: None,
                ..
            } => Some(original.to_string_lossy().into_owned()),
            _ => None,
        };
        let seq = self.next_seq()?;
        job.seq = Some(seq);
        let record = to_json(job)?;
        let (id, app, node) = (job.id.clone(), job.app.clone(), self.node.clone());
        let seq_i = i64::try_from(seq).unwrap_or(i64::MAX);
        let stored = self.pg.run(move |pool: Arc<Pool>| async move {
            let mut conn = pool.get().await?;
            let result = tokio::time::timeout(OPERATION_TIMEOUT, async {
                let tx = conn.0.transaction().await?;
                let sha = archive.as_ref().map(|a| a.sha256.clone());
                if let Some(archive) = &archive {
                    chunks::link(&tx, archive).await?;
                }
                let row = tx
                    .query_one(
                        "WITH ins AS (
                             INSERT INTO jobs (id, app, seq, record, archive, origin_node,
                                               origin_path)
                             VALUES ($1, $2, $3, $4, $5, $6, $7)
                             ON CONFLICT (id) DO NOTHING RETURNING seq)
                         SELECT coalesce((SELECT seq FROM ins),
                                         (SELECT seq FROM jobs WHERE id = $1))",
                        &[&id, &app, &seq_i, &record, &sha, &node, &origin_path],
                    )
                    .await?;
                tx.execute("SELECT pg_notify('dropdeploy', $1)", &[&app])
                    .await?;
                tx.commit().await?;
                Ok(row.get::<_, Option<i64>>(0))
            })
            .await;
            pool.settle(conn, result)
        })?;
        if let Some(stored) = stored.and_then(|s| u64::try_from(s).ok()) {
            job.seq = Some(stored);
        }
        Ok(())
    }

    fn next_seq(&self) -> Result<u64, StoreError> {
        let row = self.pg.run(move |pool: Arc<Pool>| async move {
            let conn = pool.get().await?;
            let result = tokio::time::timeout(
                OPERATION_TIMEOUT,
                conn.0
                    .query_one("SELECT nextval('dropdeploy_job_seq')", &[]),
            )
            .await;
            pool.settle(conn, result)
        })?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }
}

/// A statement's parameter, owned (so it can move to the database runtime).
#[derive(Debug)]
enum Param {
    Text(String),
    Int(i64),
    Json(serde_json::Value),
}

impl Param {
    fn refs(params: &[Param]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
        params
            .iter()
            .map(|p| match p {
                Param::Text(v) => v as &(dyn tokio_postgres::types::ToSql + Sync),
                Param::Int(v) => v,
                Param::Json(v) => v,
            })
            .collect()
    }
}

fn to_json(job: &Job) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(job).map_err(|e| StoreError::Record {
        id: job.id.clone(),
        reason: e.to_string(),
    })
}

fn record(id: String, value: serde_json::Value) -> Result<Job, StoreError> {
    serde_json::from_value(value).map_err(|e| StoreError::Record {
        id,
        reason: e.to_string(),
    })
}
