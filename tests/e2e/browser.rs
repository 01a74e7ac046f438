//! A real browser for the tests: Debian's headless Chromium, driven through chromedriver's
//! WebDriver HTTP API with reqwest. `scripts/test` installs both where missing. Chromedriver
//! runs in a process group of its own (Chromium is its child), killed whole when the
//! [`Browser`] is dropped, even when the test fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::wait_for;

pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// One Chromium under one chromedriver, with one WebDriver session.
pub struct Browser {
    driver: Child,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    session: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium with a fresh profile under
    /// `dir` (its logs go there too).
    pub fn start(dir: &Path) -> Browser {
        for program in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: run scripts/test (it installs chromium and chromium-driver)"
            );
        }
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = {
            use std::os::unix::process::CommandExt as _;
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = dropdeploy::http::client_builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut browser = Browser {
            driver,
            rt,
            http,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
        };
        let up = wait_for(Duration::from_secs(30), || {
            browser
                .call(reqwest::Method::GET, "/status", None)
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        assert!(up, "chromedriver did not start on port {port}");
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1200,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let made = browser
            .call(reqwest::Method::POST, "/session", Some(caps))
            .expect("chromedriver answers");
        browser.session = made["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {made}"))
            .to_string();
        browser
    }

    /// One WebDriver call; `None` when chromedriver cannot be reached.
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Option<Value> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let mut request = self.http.request(method, url);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let answer = request.send().await.ok()?;
            answer.json::<Value>().await.ok()
        })
    }

    fn session_call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body)
            .unwrap_or_else(|| panic!("chromedriver did not answer {path}"))
    }

    pub fn goto(&self, url: &str) {
        let v = self.session_call(reqwest::Method::POST, "/url", Some(json!({ "url": url })));
        assert!(v["value"].is_null(), "navigation failed: {v}");
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns its
    /// value.
    pub fn run(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        let v = self.session_call(reqwest::Method::POST, "/execute/sync", Some(body));
        if v["value"].get("error").is_some() {
            panic!("script failed: {v}");
        }
        v["value"].clone()
    }

    /// Runs `script` whose last argument is the callback to call with the result.
    pub fn run_async(&self, script: &str, args: Value) -> Value {
        let body = json!({ "script": script, "args": args });
        let v = self.session_call(reqwest::Method::POST, "/execute/async", Some(body));
        if v["value"].get("error").is_some() {
            panic!("script failed: {v}");
        }
        v["value"].clone()
    }

    /// The text of the alert open now, if one is.
    pub fn alert_text(&self) -> Option<String> {
        let v = self.session_call(reqwest::Method::GET, "/alert/text", None);
        v["value"].as_str().map(str::to_string)
    }

    /// Resizes the window (CSS pixels).
    pub fn resize(&self, width: u32, height: u32) {
        let rect = json!({ "width": width, "height": height });
        self.session_call(reqwest::Method::POST, "/window/rect", Some(rect));
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.session_call(reqwest::Method::GET, "/screenshot", None);
        let data = v["value"].as_str().expect("a base64 PNG");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.call(reqwest::Method::DELETE, &path, None);
        }
        // Chromedriver and whatever it started (Chromium and its helpers): the whole group.
        let group = self.driver.id() as i32;
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}
