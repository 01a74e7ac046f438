//! The real daemon, in-process: its control channel instead of signals.

use std::time::{Duration, Instant};

use super::*;

fn archive(path: &std::path::Path) {
    let file = std::fs::File::create(path).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let body = b"<h1>hello</h1>\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "site/index.html", &body[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn app(name: &str, root: &std::path::Path) -> String {
    format!(
        "\n[[app]]\nname = \"{name}\"\ndrop_dir = \"{}\"\ntarget = \"local\"\nreleases_dir = \"{}\"\n",
        root.join("drop").join(name).display(),
        root.join("releases").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_in_process_deploys_a_drop_reloads_and_stops_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let config = root.join("dropdeploy.toml");
    let state = root.join("state");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\nshutdown_grace = \"5s\"\n{}",
            state.display(),
            app("site", root)
        ),
    )
    .unwrap();
    let (handle, control) = control();
    let daemon = tokio::spawn(run(
        config.clone(),
        Env::from_pairs(Vec::<(String, String)>::new()),
        control,
    ));

    let drop = root.join("drop/site");
    eventually("the drop folder", || drop.join("failed").is_dir()).await;
    eventually("the daemon's lock", || {
        crate::lock::StateLock::holder(&state).is_some()
    })
    .await;
    archive(&root.join("release.partial"));
    std::fs::rename(root.join("release.partial"), drop.join("release.tar.gz")).unwrap();
    eventually("the release", || {
        root.join("releases/site/current").exists()
    })
    .await;
    eventually("the history line", || {
        std::fs::read_to_string(state.join("history.jsonl")).is_ok_and(|h| h.lines().count() == 1)
    })
    .await;

    // A reload takes a new app: its drop folder appears.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&app("blog", root));
    std::fs::write(&config, text).unwrap();
    handle.reload();
    eventually("the new app's drop folder", || {
        root.join("drop/blog/done").is_dir()
    })
    .await;

    handle.stop("test");
    let ended = tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .expect("the daemon stops within its grace period");
    ended.unwrap().unwrap();
    assert_eq!(crate::lock::StateLock::holder(&state), None);
}
