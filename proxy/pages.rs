//! The proxy's own pages: block page (451), refusals (403, 429, 503), upstream
//! failures (502, 504). Small HTML, every value escaped.

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page: title, then paragraphs (already escaped by the caller where needed).
pub fn page(status: u16, title: &str, body: &str, node: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status} {t}</title></head>\
         <body><h1>{t}</h1>{body}<hr><p><small>ssq gateway {n}</small></p></body></html>\n",
        t = esc(title),
        n = esc(node)
    )
}

/// The host a proxy answers itself (`ssq verify --probe-traffic`, or an operator's
/// browser asking "which gateway am I on?").
pub const PROBE_HOST: &str = "ssq.probe";

/// The probe page: which node served it, under which policy revision.
pub fn probe(node: &str, revision: u64, url: &str, client: std::net::IpAddr) -> String {
    page(
        200,
        &format!("ssq gateway {node}"),
        &format!(
            "<p>This page was served by the ssq gateway <b id=\"node\">{}</b> itself \
             (policy revision {revision}), for {} at {}.</p>\
             <p>URL: <code>{}</code></p><p>The request is recorded like any other and \
             reaches the master's reports.</p>",
            esc(node),
            esc(&client.to_string()),
            esc(&humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()),
            esc(url)
        ),
        node,
    )
}

/// The block page of a rule.
pub fn blocked(rule: Option<&str>, message: Option<&str>, url: &str, node: &str) -> String {
    let rule = rule.unwrap_or("-");
    let msg = message.unwrap_or("This request is blocked by the gateway's policy.");
    page(
        451,
        "Blocked by policy",
        &format!(
            "<p>{}</p><p>URL: <code>{}</code><br>Rule: <b>{}</b></p>",
            esc(msg),
            esc(url),
            esc(rule)
        ),
        node,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_page_escapes_everything() {
        let p = blocked(Some("r<1>"), Some("no & no"), "http://x/<script>", "n1");
        assert!(p.contains("r&lt;1&gt;"));
        assert!(p.contains("no &amp; no"));
        assert!(!p.contains("<script>"));
    }
}
