//! The access record: one per request a proxy handled, allowed or refused, succeeded or
//! failed (fields as in DESIGN.md "Reports"), and its line in `access.log` in Squid's
//! native format, so GoAccess, SARG and other Squid tools read it:
//!
//! `time.ms elapsed_ms client action/code bytes method URL user hierarchy/peer type`
//!
//! e.g. `1764169200.123     12 10.0.0.7 TCP_MISS/200 1534 GET http://example.com/ - HIER_DIRECT/93.184.216.34 text/html`.
//! Blocked requests are `TCP_DENIED/451` (or `/403`); failures `TCP_MISS/502`, `/504`.

use serde::{Deserialize, Serialize};

/// One handled request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AccessRecord {
    /// Unix time of the request's start, in milliseconds.
    pub time_ms: u64,
    /// The node that served it.
    pub node: String,
    /// Client address.
    pub client: String,
    /// Authenticated user (none yet: `-`).
    #[serde(default)]
    pub user: Option<String>,
    /// HTTP method.
    pub method: String,
    /// The URL, or `host:port` for CONNECT.
    pub url: String,
    /// The status sent to the client.
    pub status: u16,
    /// Request body bytes from the client (tunnel: client → server).
    pub bytes_up: u64,
    /// Response bytes to the client (tunnel: server → client).
    pub bytes_down: u64,
    /// Duration in milliseconds.
    pub duration_ms: u64,
    /// `allowed` or `blocked`.
    pub action: String,
    /// The deciding rule, if any.
    #[serde(default)]
    pub rule: Option<String>,
    /// The policy revision in force.
    pub revision: u64,
    /// The upstream address connected to, if any.
    #[serde(default)]
    pub peer: Option<String>,
    /// The response's content type, if any.
    #[serde(default)]
    pub content_type: Option<String>,
}

/// Append `s` as one Squid field: never empty (`-`), and anything that would break the
/// columns (whitespace, control characters) replaced by `_`.
fn push_field(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push('-');
        return;
    }
    // Most fields are printable ASCII: one pass over the bytes says so (ASCII
    // whitespace and control characters are the bytes up to the space, and DEL). The
    // pass has no early exit, so that it runs many bytes per instruction. A field
    // with other bytes is tested by its characters.
    let printable = s
        .bytes()
        .fold(true, |ok, b| ok & (b.wrapping_sub(b'!') < b'\x7f' - b'!'));
    let clean = printable || !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if clean {
        out.push_str(s);
        return;
    }
    out.extend(s.chars().map(|c| {
        if c.is_whitespace() || c.is_control() {
            '_'
        } else {
            c
        }
    }));
}

/// Append `n` in decimal, right-aligned in `width` columns filled with `fill`.
fn push_num(out: &mut String, n: u64, width: usize, fill: char) {
    let mut buf = [0u8; 20];
    let digits = crate::decimal::digits(n, &mut buf);
    for _ in digits.len()..width {
        out.push(fill);
    }
    for &d in digits {
        out.push(char::from(d));
    }
}

impl AccessRecord {
    /// The record's line in Squid's native access.log format (newline included).
    pub fn squid_line(&self) -> String {
        let mut out = String::with_capacity(160 + self.url.len());
        self.push_squid_line(&mut out);
        out
    }

    /// Append the record's access.log line to `out` (the writer reuses one buffer).
    pub fn push_squid_line(&self, out: &mut String) {
        let result = if self.action == "blocked" {
            "TCP_DENIED"
        } else if self.method == "CONNECT" {
            "TCP_TUNNEL"
        } else {
            "TCP_MISS"
        };
        // `{secs}.{ms:03} {elapsed:>6} `, without the formatting machinery (this runs
        // for every request).
        push_num(out, self.time_ms / 1000, 0, ' ');
        out.push('.');
        push_num(out, self.time_ms % 1000, 3, '0');
        out.push(' ');
        push_num(out, self.duration_ms, 6, ' ');
        out.push(' ');
        push_field(out, &self.client);
        out.push(' ');
        out.push_str(result);
        out.push('/');
        push_num(out, u64::from(self.status), 0, ' ');
        out.push(' ');
        push_num(out, self.bytes_down, 0, ' ');
        out.push(' ');
        push_field(out, &self.method);
        out.push(' ');
        push_field(out, &self.url);
        out.push(' ');
        push_field(out, self.user.as_deref().unwrap_or("-"));
        match &self.peer {
            Some(p) => {
                out.push_str(" HIER_DIRECT/");
                push_field(out, p);
            }
            None => out.push_str(" HIER_NONE/-"),
        }
        out.push(' ');
        push_field(out, self.content_type.as_deref().unwrap_or("-"));
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_lose_whitespace_and_control_characters_only() {
        // Every ASCII character, and some that are not: the byte test for ASCII says
        // what the character test says.
        for c in (0u8..=127)
            .map(char::from)
            .chain(['\u{a0}', '\u{2028}', '\u{85}', 'é'])
        {
            let mut out = String::new();
            push_field(&mut out, &format!("a{c}b"));
            let want = if c.is_whitespace() || c.is_control() {
                "a_b".to_string()
            } else {
                format!("a{c}b")
            };
            assert_eq!(out, want, "{:?}", c);
        }
        let mut out = String::new();
        push_field(&mut out, "");
        assert_eq!(out, "-");
    }

    #[test]
    fn numbers_are_written_as_format_writes_them() {
        for n in [
            0,
            5,
            9,
            10,
            99,
            100,
            999,
            1000,
            123_456,
            1_234_567,
            u64::MAX,
        ] {
            let mut out = String::new();
            push_num(&mut out, n, 0, ' ');
            assert_eq!(out, format!("{n}"));
            out.clear();
            push_num(&mut out, n, 3, '0');
            assert_eq!(out, format!("{n:03}"));
            out.clear();
            push_num(&mut out, n, 6, ' ');
            assert_eq!(out, format!("{n:>6}"));
        }
    }

    #[test]
    fn squid_native_format() {
        let r = AccessRecord {
            time_ms: 1_764_169_200_123,
            node: "s1".into(),
            client: "10.0.0.7".into(),
            method: "GET".into(),
            url: "http://example.com/a b".into(),
            status: 200,
            bytes_down: 1534,
            duration_ms: 12,
            action: "allowed".into(),
            peer: Some("93.184.216.34".into()),
            content_type: Some("text/html; charset=utf-8".into()),
            ..Default::default()
        };
        let line = r.squid_line();
        assert_eq!(
            line,
            "1764169200.123     12 10.0.0.7 TCP_MISS/200 1534 GET http://example.com/a_b - HIER_DIRECT/93.184.216.34 text/html;_charset=utf-8\n"
        );
        assert_eq!(line.split_whitespace().count(), 10);
        let blocked = AccessRecord {
            action: "blocked".into(),
            status: 451,
            peer: None,
            ..r
        };
        assert!(blocked.squid_line().contains(" TCP_DENIED/451 "));
        assert!(blocked.squid_line().contains(" HIER_NONE/- "));
        let odd = AccessRecord {
            client: String::new(),
            url: "http://x/\t\u{7}".into(),
            content_type: None,
            ..blocked
        };
        let line = odd.squid_line();
        assert!(line.contains(" - TCP_DENIED/451 "), "{line}");
        assert!(line.contains(" http://x/__ "), "{line}");
        assert_eq!(line.split_whitespace().count(), 10);
    }
}
