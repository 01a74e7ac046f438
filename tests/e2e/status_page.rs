//! The status page (`GET /` on `metrics_listen`) in a real browser: Debian's headless
//! Chromium through chromedriver, against the daemon and the fake API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::support::{World, good_archive, tar_gz, wait_for};

const LONG: Duration = Duration::from_secs(60);
/// The intake token of these tests.
const TOKEN: &str = "page-test-intake-token-7f3a";
/// A name that is markup if the page ever writes it unescaped (a file name cannot hold `/`,
/// so no `</script>`; an `onerror` needs no closing tag).
const HOSTILE: &str = "<img src=x onerror=alert(1)><b>bold.tar.gz";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw HTTP/1.1 exchange: the status line, headers and body as text.
fn http(port: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

fn post(port: u16, path: &str, body: &str) -> String {
    http(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// An archive whose fake app answers as `behaviour` says (see `tests/e2e/verify.rs`).
fn app_archive(dir: &Path, name: &str, behaviour: &str) -> PathBuf {
    let path = dir.join(name);
    tar_gz(
        &path,
        &[
            ("app/package.json", br#"{"name":"demo"}"#, 0o644),
            ("app/fake-app.txt", behaviour.as_bytes(), 0o644),
        ],
    );
    path
}

fn drop_file(made: PathBuf, drop: &Path, name: &str) {
    std::fs::create_dir_all(drop).unwrap();
    std::fs::rename(made, drop.join(name)).unwrap();
}

/// A daemon with the page, an intake token, and two apps: `blog` (a plain drop folder, one
/// deployment of a hostile file name done) and `shop` (checked; its rollback was unhealthy
/// too, so it needs attention).
fn world_with_history(port: u16) -> (World, PathBuf, PathBuf) {
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    // The platform's own limit would do; this one leaves room for a loaded machine's retries.
    let text = text.replace("api_rate_limit = 1000000", "api_rate_limit = 600");
    std::fs::write(
        &world.config,
        format!("metrics_listen = \"127.0.0.1:{port}\"\n{text}"),
    )
    .unwrap();
    let tokens = world.path("intake-tokens");
    std::fs::write(&tokens, format!("# who may act from the page\n{TOKEN}\n")).unwrap();
    world.append_config(&format!(
        "\n[intake]\ntoken_file = \"{}\"\n",
        tokens.display()
    ));
    let blog = world.add_drop_app("blog", "");
    let url = format!("{}/up", world.fake.app_url("shop"));
    let shop = world.add_drop_app(
        "shop",
        &format!(
            "verify = {{ url = \"{url}\", timeout = \"2s\", interval = \"100ms\", attempts = 2, \
             warmup = \"0s\", soak = \"0s\" }}"
        ),
    );
    (world, blog, shop)
}

#[test]
fn the_status_page_in_a_real_browser() {
    let port = free_port();
    let (world, blog, shop) = world_with_history(port);
    let _daemon = world.start_daemon("d");
    drop_file(
        good_archive(world.dir.path(), "hostile-made.tar.gz", "app"),
        &blog,
        HOSTILE,
    );
    world.wait_history(1, LONG);
    drop_file(
        app_archive(world.dir.path(), "v1.tar.gz", "version=v1"),
        &shop,
        "v1.tar.gz",
    );
    world.wait_history(2, LONG);
    // Something outside the archives breaks: the rollback cannot help either.
    world.fake.break_app("shop", Some(500));
    drop_file(
        app_archive(world.dir.path(), "v2.tar.gz", "version=v2"),
        &shop,
        "v2.tar.gz",
    );
    let history = world.wait_history(4, LONG);
    let outcomes: Vec<&str> = history
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["succeeded", "verified", "unhealthy", "unhealthy"]
    );
    let attention = world.state.join("attention").join("shop.json");
    assert!(attention.exists());

    let browser = Browser::start(world.dir.path());
    let page = format!("http://127.0.0.1:{port}/");
    browser.goto(&page);
    let live = || browser.run("return document.body.dataset.live", json!([])) == "on";
    assert!(wait_for(LONG, live), "the page never connected to /events");

    // Each app, and the one that needs attention stands out.
    for app in ["blog", "shop"] {
        let found = browser.run(
            "return [...document.querySelectorAll('article.app')].some(a => a.dataset.app === arguments[0])",
            json!([app]),
        );
        assert_eq!(found, true, "{app} is not on the page");
    }
    let badge = browser.run(
        "const a = [...document.querySelectorAll('article.state-attention')]
           .find(a => a.dataset.app === 'shop');
         return a ? a.querySelector('.badge').textContent : null",
        json!([]),
    );
    assert!(
        badge
            .as_str()
            .is_some_and(|b| b.starts_with("needs attention")),
        "shop does not stand out: {badge}"
    );
    // The hostile file name is text: shown as written, no element made of it, no alert.
    let text = browser.run("return document.body.innerText", json!([]));
    assert!(text.as_str().unwrap().contains(HOSTILE), "{text}");
    assert_eq!(browser.run("return document.images.length", json!([])), 0);
    assert_eq!(
        browser.run(
            "return document.querySelectorAll('main b').length",
            json!([])
        ),
        0
    );
    assert_eq!(browser.alert_text(), None);

    build_line_latency(&world, &browser, &blog);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&shot, browser.screenshot()).unwrap();
    println!("status page screenshot: {}", shot.display());
    // On a phone: one column.
    browser.resize(390, 844);
    let columns = browser.run(
        "return getComputedStyle(document.querySelector('.apps')).gridTemplateColumns.split(' ').length",
        json!([]),
    );
    assert_eq!(columns, 1, "the apps are not in one column on a phone");
    let wider = browser.run(
        "const w = document.documentElement.clientWidth;
         if (document.documentElement.scrollWidth <= w) return [];
         return [...document.querySelectorAll('body *')]
           .filter(e => e.getBoundingClientRect().right > w + 1)
           .map(e => e.tagName + '.' + (typeof e.className === 'string' ? e.className : ''))
           .slice(0, 12)",
        json!([]),
    );
    assert_eq!(wider, json!([]), "wider than a phone's screen");
    let phone = shot.with_file_name("status-page-phone.png");
    std::fs::write(&phone, browser.screenshot()).unwrap();
    println!("status page on a phone: {}", phone.display());
    browser.resize(1200, 1000);
    discard_a_waiting_job(&world, port, &blog);
    goes_idle(&world, &browser);
    weight_and_timing(&browser, &page);
    actions_need_the_token(&world, &browser, port, &attention);
    rolls_back_with_the_token(&world, port);
}

/// With the token, a rollback to the last verified archive is made and deployed by the lane.
fn rolls_back_with_the_token(world: &World, port: u16) {
    world.fake.break_app("shop", None);
    let refused = post(port, "/actions/rollback", "app=shop");
    assert_eq!(status_of(&refused), 401, "{refused}");
    let done = post(
        port,
        "/actions/rollback",
        &format!("app=shop&token={TOKEN}"),
    );
    assert_eq!(status_of(&done), 200, "{done}");
    assert!(done.contains("rolling back to shop-"), "{done}");
    let history = world.wait_history(7, LONG);
    let last = &history[6];
    assert_eq!(last["app"], "shop", "{history:#?}");
    assert!(
        last["git_ref"]
            .as_str()
            .unwrap()
            .starts_with("shop-rollback-"),
        "{last}"
    );
    assert!(
        ["verified", "rolled_back"].contains(&last["outcome"].as_str().unwrap()),
        "{last}"
    );
}

/// A build line produced by the fake reaches the page over the live stream within a second.
fn build_line_latency(world: &World, browser: &Browser, blog: &Path) {
    // Slow builds: the job is on the page (its log open) before the build says anything.
    world.fake.set_step(Duration::from_millis(1500));
    let before = world.fake.deployments("blog").len();
    world.drop_archive(blog, "release-2.tar.gz");
    let marker = "Build succeeded";
    let produced = std::thread::scope(|scope| {
        let fake = &world.fake;
        let seen = scope.spawn(move || {
            let deadline = std::time::Instant::now() + LONG;
            while std::time::Instant::now() < deadline {
                let made = fake
                    .deployments("blog")
                    .iter()
                    .skip(before)
                    .any(|d| d.output.contains(marker));
                if made {
                    return Some(epoch_ms());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            None
        });
        let mut shown = Value::Null;
        let found = wait_for(LONG, || {
            shown = browser.run(
                "for (const s of document.querySelectorAll('pre.log span')) {
                   if (s.textContent.includes(arguments[0])) return s.dataset.at || 'reloaded';
                 }
                 return null",
                json!([marker]),
            );
            !shown.is_null()
        });
        assert!(found, "the build line never reached the page");
        (seen.join().unwrap(), shown)
    });
    let (Some(made_at), shown) = produced else {
        panic!("the fake never produced the line");
    };
    let shown_at: u64 = shown
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the line came by a reload of the page, not live: {shown}"));
    // The rest of the build slows down: a screenshot of it, and a drop that waits behind it.
    world.fake.set_step(Duration::from_secs(5));
    let latency = shown_at as i64 - made_at as i64;
    println!("build line: produced by the fake → shown in the page: {latency} ms");
    assert!(
        latency <= 1000,
        "the build line took {latency} ms to reach the page"
    );
}

/// Once the deployment's outcome is recorded, the page shows the app idle again.
fn goes_idle(world: &World, browser: &Browser) {
    world.wait_history(6, LONG);
    let idle = wait_for(LONG, || {
        browser.run(
            "const a = [...document.querySelectorAll('article.app')]
               .find(a => a.dataset.app === 'blog');
             return !!a && a.classList.contains('state-idle')",
            json!([]),
        ) == true
    });
    assert!(idle, "blog still shows a job in flight after its outcome");
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A job that waits (behind the slowed build) is discarded with the token (and not without):
/// it ends `failed`, its file in `failed/` with a reason, nothing deployed.
fn discard_a_waiting_job(world: &World, port: u16, blog: &Path) {
    world.drop_archive(blog, "release-3.tar.gz");
    let get = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut job = String::new();
    let shown = wait_for(LONG, || {
        let page = http(port, get);
        let form = page
            .split("action=\"/actions/discard\"")
            .nth(1)
            .filter(|_| page.contains("release-3.tar.gz"));
        job = form
            .and_then(|f| f.split("name=\"job\" value=\"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_string();
        !job.is_empty()
    });
    assert!(shown, "release-3.tar.gz never waited on the page");
    let refused = post(port, "/actions/discard", &format!("app=blog&job={job}"));
    assert_eq!(status_of(&refused), 401, "{refused}");
    let record = world.state.join("spool").join(&job).join("job.json");
    let queued = std::fs::read_to_string(&record).unwrap();
    assert!(queued.contains("\"queued\""), "{queued}");
    let done = post(
        port,
        "/actions/discard",
        &format!("app=blog&job={job}&token={TOKEN}"),
    );
    assert_eq!(status_of(&done), 200, "{done}");
    world.fake.set_step(Duration::from_millis(50));
    let history = world.wait_history(6, LONG);
    let line = history
        .iter()
        .find(|e| e["file"] == "release-3.tar.gz")
        .unwrap_or_else(|| panic!("no line for the discarded job: {history:#?}"));
    assert_eq!(line["outcome"], "failed", "{line}");
    assert!(
        line["reason"].as_str().unwrap().contains("discarded"),
        "{line}"
    );
    assert!(line["deployment_id"].is_null(), "{line}");
    let reason = blog.join("failed").join("release-3.tar.gz.reason.txt");
    assert!(reason.exists(), "no {}", reason.display());
    assert!(blog.join("failed").join("release-3.tar.gz").exists());
    // Nothing was deployed for it: the hostile name's deployment and release-2's only.
    assert_eq!(world.fake.deployments("blog").len(), 2);
}

/// Prints the page's weight and render time as the browser measured them, after a fresh load.
fn weight_and_timing(browser: &Browser, page: &str) {
    browser.goto(page);
    let measured = browser.run(
        "const nav = performance.getEntriesByType('navigation')[0];
         const assets = performance.getEntriesByType('resource')
           .filter(r => r.name.endsWith('/page.css') || r.name.endsWith('/page.js'));
         return {
           html: nav.decodedBodySize,
           assets: assets.map(r => [r.name, r.decodedBodySize]),
           response_ms: nav.responseEnd - nav.startTime,
           dom_ms: nav.domContentLoadedEventEnd - nav.startTime,
           load_ms: nav.loadEventEnd - nav.startTime,
         }",
        json!([]),
    );
    let assets: u64 = measured["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a[1].as_u64().unwrap_or(0))
        .sum();
    let html = measured["html"].as_u64().unwrap_or(0);
    assert!(html > 0 && assets > 0, "{measured}");
    println!(
        "status page weight: {} bytes (HTML {html} + CSS and JS {assets}); render: response \
         {:.1} ms, DOMContentLoaded {:.1} ms, load {:.1} ms",
        html + assets,
        measured["response_ms"].as_f64().unwrap_or(0.0),
        measured["dom_ms"].as_f64().unwrap_or(0.0),
        measured["load_ms"].as_f64().unwrap_or(0.0),
    );
}

/// Actions are refused without the token (and a plain GET never acts); with it, they act.
fn actions_need_the_token(world: &World, browser: &Browser, port: u16, attention: &Path) {
    let post_from_page = |body: &str| {
        browser.run_async(
            "const done = arguments[arguments.length - 1];
             fetch('/actions/resume', {method: 'POST', body: arguments[0],
               headers: {'Content-Type': 'application/x-www-form-urlencoded'}})
               .then(r => done(r.status), e => done(String(e)))",
            json!([body]),
        )
    };
    assert_eq!(post_from_page("app=shop"), 401);
    assert_eq!(post_from_page("app=shop&token=not-the-token"), 401);
    let get = http(
        port,
        "GET /actions/resume?app=shop HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&get), 405, "{get}");
    assert!(
        attention.exists(),
        "an action without the token changed something"
    );
    let page = http(
        port,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(page.contains("state-attention"), "{page}");
    let csp = page
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("content-security-policy:")
        })
        .unwrap_or_default();
    assert!(
        csp.contains("default-src 'self'") && !csp.contains("unsafe"),
        "{csp}"
    );
    crate::support::assert_no_secret(&page, &world.fake.api_token());
    // With the token, the same request resumes the app.
    let resumed = post(port, "/actions/resume", &format!("app=shop&token={TOKEN}"));
    assert_eq!(status_of(&resumed), 200, "{resumed}");
    assert!(resumed.contains("no longer needs attention"), "{resumed}");
    assert!(!attention.exists());
}

#[test]
fn without_an_intake_token_the_page_is_read_only() {
    let port = free_port();
    let world = World::new();
    let text = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        format!("metrics_listen = \"127.0.0.1:{port}\"\n{text}"),
    )
    .unwrap();
    world.add_drop_app("blog", "");
    let _daemon = world.start_daemon("d");
    let page = http(
        port,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&page), 200, "{page}");
    assert!(page.contains("data-app=\"blog\""), "{page}");
    assert!(page.contains("Read-only"), "{page}");
    assert!(!page.contains("action=\"/actions/"), "{page}");
    for path in ["/actions/resume", "/actions/rollback"] {
        let refused = post(port, path, "app=blog&token=anything");
        assert_eq!(status_of(&refused), 403, "{refused}");
    }
    for asset in ["/page.css", "/page.js"] {
        let answer = http(
            port,
            &format!("GET {asset} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(status_of(&answer), 200, "{asset}");
    }
}
