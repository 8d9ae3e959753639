//! The report page on a master's portal (`/reports`): the same reports as `ssq report`,
//! with charts drawn as inline SVG — no script at all, and a Content-Security-Policy that
//! allows none. A browser cannot sign requests, so `ssq report open` (an operator-signed
//! call) gets a short-lived, single-use token; `/reports/login?token=` trades it for a
//! `__Host-` session cookie (Secure, HttpOnly, SameSite=Strict) that is good only for
//! `GET /reports*`. Everything that came from a request (URLs, host names, rules) is
//! escaped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use ssq::reportapi::Report;

use crate::pages::esc;

/// How long a login token is good for.
const TOKEN_TTL: Duration = Duration::from_secs(60);
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// The session cookie's name (the `__Host-` prefix: Secure, Path=/, no Domain).
pub const COOKIE: &str = "__Host-ssq_reports";
/// The page's Content-Security-Policy: nothing may run or load.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Login tokens and sessions.
#[derive(Default)]
pub struct Sessions {
    /// Token → expiry (single use).
    tokens: Mutex<HashMap<String, Instant>>,
    /// Session id → expiry.
    sessions: Mutex<HashMap<String, Instant>>,
}

fn random_id() -> Option<String> {
    ssq::keys::random_bytes::<24>()
        .ok()
        .map(|b| ssq::keys::hex(&b))
}

impl Sessions {
    /// A new login token.
    pub fn new_token(&self) -> Option<String> {
        let t = random_id()?;
        let mut tokens = self.tokens.lock().ok()?;
        let now = Instant::now();
        tokens.retain(|_, exp| *exp > now);
        tokens.insert(t.clone(), now + TOKEN_TTL);
        Some(t)
    }

    /// Trade a token (once) for a session id.
    pub fn login(&self, token: &str) -> Option<String> {
        let exp = self.tokens.lock().ok()?.remove(token)?;
        if exp < Instant::now() {
            return None;
        }
        let id = random_id()?;
        let mut sessions = self.sessions.lock().ok()?;
        let now = Instant::now();
        sessions.retain(|_, exp| *exp > now);
        sessions.insert(id.clone(), now + SESSION_TTL);
        Some(id)
    }

    /// Whether a request's Cookie header carries a live session.
    pub fn valid(&self, cookie_header: Option<&str>) -> bool {
        let Some(h) = cookie_header else {
            return false;
        };
        let Ok(sessions) = self.sessions.lock() else {
            return false;
        };
        h.split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .filter(|(k, _)| *k == COOKIE)
            .any(|(_, v)| sessions.get(v).is_some_and(|exp| *exp > Instant::now()))
    }
}

/// The Set-Cookie value for a session.
pub fn set_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

fn num(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn table(out: &mut String, title: &str, cols: &[(&str, &str)], rows: &[Value]) {
    let _ = write!(out, "<h2>{}</h2><table><tr>", esc(title));
    for (_, label) in cols {
        let _ = write!(out, "<th>{}</th>", esc(label));
    }
    out.push_str("</tr>");
    if rows.is_empty() {
        let _ = write!(out, "<tr><td colspan=\"{}\">no data</td></tr>", cols.len());
    }
    for r in rows {
        out.push_str("<tr>");
        for (key, _) in cols {
            let _ = write!(out, "<td>{}</td>", esc(&text(r.get(*key))));
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

/// A bar chart of `values` (label, value), as inline SVG.
fn bars(out: &mut String, title: &str, values: &[(String, u64)]) {
    let max = values.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let w = 640u64;
    let row = 22u64;
    let h = row * values.len().max(1) as u64 + 10;
    let _ = write!(
        out,
        "<h2>{}</h2><svg class=\"chart\" role=\"img\" aria-label=\"{}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title),
        esc(title)
    );
    for (i, (label, v)) in values.iter().enumerate() {
        let y = 5 + row * i as u64;
        let bw = (v * 400 / max).max(1);
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"220\" y=\"{}\" width=\"{bw}\" height=\"16\" fill=\"#3b6ea5\"><title>{}</title></rect><text x=\"{}\" y=\"{}\" font-size=\"12\">{v}</text>",
            y + 13,
            esc(&label.chars().take(32).collect::<String>()),
            y,
            esc(label),
            225 + bw,
            y + 13
        );
    }
    out.push_str("</svg>");
}

/// The reports a page shows.
pub struct PageData<'a> {
    /// Totals and per node.
    pub summary: &'a Report,
    /// Top domains.
    pub domains: &'a Report,
    /// Top clients.
    pub clients: &'a Report,
    /// Top blocked.
    pub blocked: &'a Report,
    /// Per node: lag, gaps, duplicate names.
    pub nodes: &'a Report,
    /// Per hour.
    pub timeline: &'a Report,
}

/// The page for one node's reports over the last `hours`.
pub fn render(node: &str, hours: u64, data: &PageData<'_>) -> String {
    let PageData {
        summary,
        domains,
        clients,
        blocked,
        nodes,
        timeline,
    } = data;
    let mut out = String::with_capacity(16 << 10);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ssq reports — {n}</title>\
         <style>body{{font-family:sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin-bottom:1em}}\
         td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}.totals span{{margin-right:2em;font-size:1.3em}}</style>\
         </head><body><h1>ssq reports — {n}</h1><p>The last {hours} hours.</p>",
        n = esc(node)
    );
    let _ = write!(
        out,
        "<p class=\"totals\"><span id=\"requests\">requests: {}</span><span id=\"blocked\">blocked: {}</span><span id=\"bytes\">bytes: {}</span><span id=\"clients\">clients: {}</span></p>",
        num(summary.totals.get("requests")),
        num(summary.totals.get("blocked")),
        num(summary.totals.get("bytes")),
        num(summary.totals.get("clients"))
    );
    let per_node: Vec<(String, u64)> = summary
        .rows
        .iter()
        .map(|r| (text(r.get("node")), num(r.get("requests"))))
        .collect();
    bars(&mut out, "Requests per node", &per_node);
    let top: Vec<(String, u64)> = domains
        .rows
        .iter()
        .map(|r| (text(r.get("domain")), num(r.get("requests"))))
        .collect();
    bars(&mut out, "Top domains", &top);
    table(
        &mut out,
        "Per node",
        &[
            ("node", "node"),
            ("requests", "requests"),
            ("blocked", "blocked"),
            ("bytes", "bytes"),
            ("clients", "clients"),
        ],
        &summary.rows,
    );
    table(
        &mut out,
        "Top domains",
        &[
            ("domain", "domain"),
            ("requests", "requests"),
            ("blocked", "blocked"),
            ("bytes", "bytes"),
        ],
        &domains.rows,
    );
    table(
        &mut out,
        "Top clients",
        &[
            ("client", "client"),
            ("requests", "requests"),
            ("blocked", "blocked"),
            ("bytes", "bytes"),
        ],
        &clients.rows,
    );
    table(
        &mut out,
        "Blocked",
        &[
            ("domain", "domain"),
            ("rule", "rule"),
            ("requests", "requests"),
        ],
        &blocked.rows,
    );
    table(
        &mut out,
        "Nodes (lag, lost records, two slaves under one name)",
        &[
            ("node", "node"),
            ("requests", "requests"),
            ("acked", "acked"),
            ("lag_ms", "lag (ms)"),
            ("gaps", "lost records"),
            ("duplicate_name", "two live spools"),
        ],
        &nodes.rows,
    );
    let series: Vec<(String, u64)> = timeline
        .rows
        .iter()
        .map(|r| {
            let ms = num(r.get("bucket_start_ms"));
            let t = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(ms),
            )
            .to_string();
            (t, num(r.get("requests")))
        })
        .collect();
    bars(&mut out, "Requests per hour", &series);
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_single_use_and_cookies_checked() {
        let s = Sessions::default();
        let t = s.new_token().unwrap();
        let id = s.login(&t).unwrap();
        assert!(s.login(&t).is_none(), "a token works once");
        assert!(s.valid(Some(&format!("a=b; {COOKIE}={id}"))));
        assert!(!s.valid(Some(&format!("{COOKIE}=nope"))));
        assert!(!s.valid(None));
        assert!(set_cookie(&id).contains("HttpOnly; SameSite=Strict"));
    }

    #[test]
    fn page_escapes_what_requests_carry() {
        let mut summary = Report::default();
        summary.totals.insert("requests".into(), Value::from(3));
        summary
            .rows
            .push(serde_json::json!({"node": "n<1>", "requests": 3}));
        let domains = Report {
            rows: vec![serde_json::json!({"domain": "<script>alert(1)</script>", "requests": 3})],
            ..Report::default()
        };
        let empty = Report::default();
        let page = render(
            "m",
            24,
            &PageData {
                summary: &summary,
                domains: &domains,
                clients: &empty,
                blocked: &empty,
                nodes: &empty,
                timeline: &empty,
            },
        );
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("requests: 3"));
        assert!(page.contains("<svg"));
    }
}
