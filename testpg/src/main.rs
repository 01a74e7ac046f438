//! `testpg`: a throw-away PostgreSQL for bench scripts.
//!
//! Starts a cluster (see the library: `DATABASE_URL`'s server or a private one), prints its
//! URL on one line, and waits until its standard input closes or it gets SIGTERM or SIGINT;
//! then stops the server and removes its directory.
//!
//! ```sh
//! coproc PG { testpg; }
//! read -r DATABASE_URL <&"${PG[0]}"
//! ...
//! exec {PG[1]}>&-; wait "$PG_PID"
//! ```

use std::io::Write;

use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};

fn main() {
    let cluster = testpg::Cluster::start();
    {
        let mut stdout = std::io::stdout().lock();
        if writeln!(stdout, "{}", cluster.url())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            return;
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("testpg: cannot start a runtime: {e}");
            return;
        }
    };
    runtime.block_on(async {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("testpg: cannot install the signal handlers");
            return;
        };
        let stdin_closed = async {
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 512];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            () = stdin_closed => {}
        }
    });
    drop(runtime);
    drop(cluster);
}
