//! Regions: `GET /v1/regions` lists each region with its `api` URL, as the platform's auth
//! service does. By default every region's API is this server; `FakeConfig::extra_regions`
//! gives a region its own port (the same platform state behind it), so that a client deploying
//! to several regions can be seen talking to each one.

use serde_json::{Value, json};

use super::{Cx, Resp, json_resp};

/// The regions every fake knows.
const KNOWN: [(&str, &str); 2] = [
    ("osc-fr1", "Paris - Outscale"),
    ("osc-secnum-fr1", "Paris - SecNumCloud - Outscale"),
];

/// The API URL of a region: its own listener when it has one, else the main one.
fn api_of(cx: &Cx, name: &str) -> String {
    cx.shared
        .region_urls
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, url)| url.clone())
        .unwrap_or_else(|| cx.shared.base_url.clone())
}

fn region(cx: &Cx, name: &str, display: &str, default: bool) -> Value {
    json!({
        "name": name,
        "display_name": display,
        "api": api_of(cx, name),
        "dashboard": "https://dashboard.scalingo.com",
        "database_api": format!("https://db-api.{name}.scalingo.com"),
        "ssh": format!("ssh.{name}.scalingo.com:22"),
        "default": default
    })
}

pub(crate) fn regions(cx: &Cx) -> Resp {
    let mut list: Vec<Value> = KNOWN
        .iter()
        .enumerate()
        .map(|(i, (name, display))| region(cx, name, display, i == 0))
        .collect();
    for (name, _) in &cx.shared.region_urls {
        if !KNOWN.iter().any(|(known, _)| known == name) {
            list.push(region(cx, name, name, false));
        }
    }
    json_resp(200, json!({ "regions": list }))
}

/// Binds one listener per extra region on the loopback, returning `(name, url, listener)`.
pub(crate) fn bind(
    names: &[String],
) -> std::io::Result<Vec<(String, String, std::net::TcpListener)>> {
    names
        .iter()
        .map(|name| {
            let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
            listener.set_nonblocking(true)?;
            let url = format!("http://{}", listener.local_addr()?);
            Ok((name.clone(), url, listener))
        })
        .collect()
}
