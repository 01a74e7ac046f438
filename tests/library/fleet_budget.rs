//! The fleet's API budget: two nodes (two clients in this process, each with its own database
//! connection) share one window in a real PostgreSQL, against the fake platform.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dropdeploy::config::{ScalingoConfig, Secret};
use dropdeploy::deploy::scalingo::api::ScalingoClient;
use dropdeploy::deploy::scalingo::budget::{BudgetWaits, SharedFuture};
use dropdeploy::fleet::budget::{Connect, MIGRATION, PgWindow};
use dropdeploy::live::{Board, WaitKind};
use fake_scalingo::{Endpoint, FakeConfig, FakeScalingo, Fault, RateLimit};

/// A throw-away database (`testpg`), its URL.
struct Database {
    /// Stopped and removed when dropped.
    cluster: testpg::Cluster,
    url: String,
}

impl Database {
    /// Stops the server (`stop`) or starts it again, off the runtime's threads.
    async fn set_running(self, running: bool) -> Database {
        let Database { mut cluster, url } = self;
        let cluster = tokio::task::spawn_blocking(move || {
            if running {
                cluster.start_again();
            } else {
                cluster.stop();
            }
            cluster
        })
        .await
        .expect("stop or start the server");
        Database { cluster, url }
    }
}

/// A connection made again once it is lost, as a node's is.
struct Reconnect {
    url: String,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Connect for Reconnect {
    fn client(&self) -> SharedFuture<'_, Result<Arc<tokio_postgres::Client>, String>> {
        Box::pin(async move {
            let mut client = self.client.lock().await;
            if let Some(c) = client.as_ref().filter(|c| !c.is_closed()) {
                return Ok(c.clone());
            }
            let (c, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(connection);
            let c = Arc::new(c);
            *client = Some(c.clone());
            Ok(c)
        })
    }
}

async fn database(local: bool) -> Database {
    let cluster = tokio::task::spawn_blocking(move || {
        if local {
            testpg::Cluster::start_local()
        } else {
            testpg::Cluster::start()
        }
    })
    .await
    .expect("the test database");
    let url = cluster.url().to_string();
    Database { cluster, url }
}

/// One node's connection (its own, as another machine's would be).
async fn connect(db: &Database) -> Arc<dyn Connect> {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    Arc::new(Arc::new(client))
}

/// A node: a client of the fake whose budget is shared through the database.
async fn node(fake: &FakeScalingo, db: &Database, limit: u32) -> Arc<ScalingoClient> {
    node_over(fake, connect(db).await, limit)
}

fn node_over(fake: &FakeScalingo, connect: Arc<dyn Connect>, limit: u32) -> Arc<ScalingoClient> {
    let config = ScalingoConfig {
        api_url: fake.url(),
        auth_url: fake.url(),
        region: None,
        api_url_explicit: true,
        api_rate_limit: limit,
        timeout: Duration::from_secs(30),
        ..ScalingoConfig::default()
    };
    let client = ScalingoClient::new(&config, Secret::new(fake.api_token())).expect("client");
    client.share_budget(PgWindow::windows(connect));
    Arc::new(client)
}

async fn migrated(db: &Database) {
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(connection);
    client.batch_execute(MIGRATION).await.expect("migrate");
    drop(client);
    let _ = driver.await;
}

/// Polls `pred` every 20 ms until it holds, or panics naming `what` after `limit`.
async fn until(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !pred() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rate_waits(board: &Board, app: &str) -> Vec<String> {
    board
        .snapshot()
        .into_iter()
        .filter(|w| w.app == app && w.kind == WaitKind::RateLimit)
        .map(|w| w.cause)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_together_stay_within_the_limit() {
    const LIMIT: u32 = 5;
    let db = database(false).await;
    migrated(&db).await;
    let fake = FakeScalingo::start(FakeConfig {
        rate_limit: Some(RateLimit::per_minute(LIMIT)),
        ..FakeConfig::default()
    });
    let board = Arc::new(Board::in_memory());
    let mut nodes = Vec::new();
    for app in ["app-a", "app-b"] {
        let client = node(&fake, &db, LIMIT).await;
        client.budget().publish_to(board.clone());
        client.budget().track(app);
        nodes.push(client);
    }
    // Each node wants its token exchange and six calls: more than the limit each, so that
    // both nodes have calls left to wait however the places fall.
    let mut calls = Vec::new();
    for client in &nodes {
        for _ in 0..6 {
            let client = client.clone();
            calls.push(tokio::spawn(async move { client.create_source().await }));
        }
    }
    let limit = u64::from(LIMIT);
    until(
        "the limit's requests reach the platform",
        Duration::from_secs(60),
        || fake.stats().api_requests() >= limit,
    )
    .await;
    // The rest wait, each node saying so on the board.
    until("both nodes wait", Duration::from_secs(30), || {
        ["app-a", "app-b"]
            .iter()
            .all(|app| !rate_waits(&board, app).is_empty())
    })
    .await;
    // A few seconds more of the window: nothing else is sent.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert_eq!(fake.stats().api_requests(), limit, "{:?}", fake.stats());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = fake.stats();
    assert_eq!(stats.rate_limited, 0, "{stats:?}");
    let sent = fake
        .requests()
        .iter()
        .filter(|r| {
            r.endpoint
                .is_some_and(|e| e != Endpoint::Upload && e != Endpoint::Download)
        })
        .count();
    assert_eq!(sent, LIMIT as usize, "the fake's request log");
    // A node that sent fewer than the limit by itself waits for the fleet's window.
    let causes: Vec<String> = ["app-a", "app-b"]
        .iter()
        .flat_map(|app| rate_waits(&board, app))
        .collect();
    assert!(
        causes
            .iter()
            .any(|c| c.contains("by the fleet's nodes together")),
        "{causes:?}"
    );
    assert!(calls.iter().any(|c| !c.is_finished()));
    for call in calls {
        call.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_met_by_one_node_pauses_the_other() {
    let db = database(false).await;
    migrated(&db).await;
    let fake = FakeScalingo::start(FakeConfig::default());
    let (a, b) = (node(&fake, &db, 1000).await, node(&fake, &db, 1000).await);
    let board = Arc::new(Board::in_memory());
    b.budget().publish_to(board.clone());
    b.budget().track("app-b");
    // Both have their bearer: the next call of each is one request.
    a.create_source().await.expect("a first source from a");
    b.create_source().await.expect("a first source from b");

    fake.fail_next(
        Endpoint::CreateSource,
        Fault::RateLimited {
            retry_after: Some("3".into()),
        },
    );
    let first = tokio::spawn({
        let a = a.clone();
        async move { a.create_source().await }
    });
    until("a meets the 429", Duration::from_secs(30), || {
        fake.stats().rate_limited == 1
    })
    .await;
    // The 429's pause reaches the database right after the answer; b's next call waits it out.
    let waits = BudgetWaits::default();
    let started = Instant::now();
    let second = tokio::spawn({
        let (b, waits) = (b.clone(), waits.clone());
        async move { waits.scope(b.create_source()).await }
    });
    until("b shows the fleet's pause", Duration::from_secs(30), || {
        rate_waits(&board, "app-b")
            .iter()
            .any(|c| c.contains("429"))
    })
    .await;
    second.await.unwrap().expect("b's source after the pause");
    first.await.unwrap().expect("a's source after the pause");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(waits.total() >= Duration::from_secs(2), "{waits:?}");
    let log = fake.requests();
    let refused = log.iter().find(|r| r.status == 429).expect("the 429");
    for r in log.iter().filter(|r| r.received > refused.answered) {
        let after = r.received - refused.answered;
        assert!(
            after >= Duration::from_millis(2500),
            "{} {} sent {after:?} after the 429 (Retry-After: 3)",
            r.method,
            r.path
        );
    }
    assert!(
        rate_waits(&board, "app-b").is_empty(),
        "cleared once through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_down_a_request_waits_and_says_why() {
    let db = database(true).await;
    migrated(&db).await;
    let fake = FakeScalingo::start(FakeConfig::default());
    let connect = Arc::new(Reconnect {
        url: db.url.clone(),
        client: Default::default(),
    });
    let client = node_over(&fake, connect, 1000);
    let board = Arc::new(Board::in_memory());
    client.budget().publish_to(board.clone());
    client.budget().track("app-a");
    client.create_source().await.expect("a first source");
    let before = fake.stats().requests_to(Endpoint::CreateSource);

    let db = db.set_running(false).await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.create_source().await }
    });
    until(
        "the board says the budget cannot be reached",
        Duration::from_secs(30),
        || {
            rate_waits(&board, "app-a")
                .iter()
                .any(|c| c.contains("cannot be reached"))
        },
    )
    .await;
    // Not sent while the fleet's window cannot be asked.
    assert_eq!(fake.stats().requests_to(Endpoint::CreateSource), before);
    assert!(!call.is_finished());

    let _db = db.set_running(true).await;
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("sent once the database is back")
        .unwrap()
        .expect("the source");
    assert_eq!(fake.stats().requests_to(Endpoint::CreateSource), before + 1);
    assert!(rate_waits(&board, "app-a").is_empty());
}
