//! LISTEN `dropdeploy` on a connection of its own, re-established after an outage (with the
//! pool's backoff); each notification's payload (an app's name) is passed on as a hint.

use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};

use super::pg::{BACKOFF_MAX, BACKOFF_MIN, Pg, Pool, describe};
use super::store::CHANNEL;

/// Hints waiting to be read: more are dropped (the poll finds their jobs anyway).
const QUEUE: usize = 256;

/// Starts listening on the database runtime; ends when the receiver is dropped.
pub fn spawn(pg: &Pg) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let pool = pg.pool();
    pg.handle().spawn(async move {
        let mut backoff = BACKOFF_MIN;
        while !tx.is_closed() {
            match listen_once(&pool, &tx).await {
                Ok(()) => backoff = BACKOFF_MIN,
                Err(reason) => {
                    tracing::debug!("LISTEN {CHANNEL}: {reason}");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = tx.closed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
    rx
}

/// One connection's life: connect, LISTEN, pass notifications on until it breaks.
/// `Ok` when it had listened (so the next attempt starts at the smallest backoff).
async fn listen_once(pool: &Pool, tx: &mpsc::Sender<String>) -> Result<(), String> {
    let (config, tls) = pool.config();
    let connect = async {
        match tls {
            Some(tls) => match config.connect(tls.clone()).await {
                Ok((client, connection)) => Ok(drive(client, connection, tx).await),
                Err(e) => Err(describe(&e)),
            },
            None => match config.connect(NoTls).await {
                Ok((client, connection)) => Ok(drive(client, connection, tx).await),
                Err(e) => Err(describe(&e)),
            },
        }
    };
    connect.await?
}

async fn drive<S, T>(
    client: Client,
    mut connection: Connection<S, T>,
    tx: &mpsc::Sender<String>,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let forward = tx.clone();
    let mut messages = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    let _ = forward.try_send(note.payload().to_owned());
                }
                Ok(_) => {}
                Err(e) => return describe(&e),
            }
        }
        "the connection closed".to_owned()
    });
    let sql = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&sql);
    tokio::select! {
        result = listen => result.map_err(|e| describe(&e))?,
        ended = &mut messages => {
            return Err(ended.unwrap_or_else(|e| e.to_string()));
        }
    }
    let reason = tokio::select! {
        ended = &mut messages => ended.unwrap_or_else(|e| e.to_string()),
        () = tx.closed() => {
            messages.abort();
            return Ok(());
        }
    };
    drop(client);
    tracing::debug!("LISTEN {CHANNEL} ended: {reason}");
    Ok(())
}
