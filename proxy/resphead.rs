//! The bytes of a response head as the proxy writes it to its client: status line,
//! the response's fields, and the framing and connection fields the proxy decides
//! (the body's own length, chunked, or the end of the connection), plus a Date when the
//! response has none. Also the chunk framing of a body sent chunked.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode};

use crate::rawhead::RawHead;

/// How the body after a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// No body follows, whatever the fields say (HEAD, 1xx, 204, 304, a CONNECT's 2xx):
    /// a Content-Length of the response is passed on as it is (except for 1xx and 204).
    Empty,
    /// This many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, a length not known).
    Close,
}

/// The framing a response needs: `head_req` (a HEAD request), `connect_ok` (a 2xx to
/// CONNECT), `exact` (the body's length if known), `http10` (the client speaks 1.0).
pub fn framing(
    status: StatusCode,
    head_req: bool,
    connect_ok: bool,
    exact: Option<u64>,
    http10: bool,
) -> Out {
    if head_req
        || connect_ok
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Out::Empty;
    }
    match exact {
        Some(n) => Out::Length(n),
        None if http10 => Out::Close,
        None => Out::Chunked,
    }
}

/// Append the head of a response to `out`: `headers` (a page of the proxy's own), or
/// the fields of an upstream's head `raw`. `keep_alive`: the connection stays open
/// after it; `http10`: the client speaks HTTP/1.0 (it is told `keep-alive` then).
pub fn write(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    raw: Option<&RawHead>,
    framing: Out,
    keep_alive: bool,
    http10: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let keep_length =
        framing == Out::Empty && !status.is_informational() && status != StatusCode::NO_CONTENT;
    for (name, value) in headers {
        let skip = (name == CONTENT_LENGTH && !keep_length)
            || name == TRANSFER_ENCODING
            || name == CONNECTION;
        if skip {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // A Date the origin sent and that went on to the client (one its Connection field
    // names does not go).
    let mut has_date = headers.contains_key(DATE);
    if let Some(raw) = raw {
        has_date |= raw.write_fields(out, keep_length);
    }
    match framing {
        Out::Length(n) => {
            let mut buf = [0u8; 20];
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(ssq::decimal::digits(n, &mut buf));
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::Empty | Out::Close => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        with_date(|d| out.extend_from_slice(d));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The current second and its IMF-fixdate, made once a second per thread.
    static DATE_NOW: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
}

/// Call `f` with the current time as an HTTP date.
fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let sec = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_NOW.with_borrow_mut(|(at, text)| {
        if *at != sec {
            *at = sec;
            *text = httpdate::fmt_http_date(now).into_bytes();
        }
        f(text);
    });
}

/// The line before a chunk of `len` bytes (hex size, CRLF), in `buf`.
pub fn chunk_prefix(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, slot) in buf.iter_mut().take(digits).enumerate() {
        let d = (len >> (4 * (digits - 1 - i))) & 0xf;
        *slot = b"0123456789abcdef"[d];
    }
    buf[digits] = b'\r';
    buf[digits + 1] = b'\n';
    &buf[..digits + 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn text(status: u16, h: &HeaderMap, f: Out, keep: bool, http10: bool) -> String {
        let mut out = Vec::new();
        let status = StatusCode::from_u16(status).expect("status");
        write(&mut out, status, h, None, f, keep, http10);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn framing_fields_are_the_proxys() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert(
            "date",
            HeaderValue::from_static("Thu, 26 Nov 2026 10:00:00 GMT"),
        );
        let t = text(200, &h, Out::Length(5), true, false);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(
            t.contains("content-length: 5\r\n") && !t.contains("999"),
            "{t}"
        );
        assert!(
            !t.contains("transfer-encoding") && !t.contains("connection"),
            "{t}"
        );
        assert!(
            t.contains("content-type: text/plain\r\n") && t.ends_with("\r\n\r\n"),
            "{t}"
        );
        assert_eq!(t.matches("date: ").count(), 1, "{t}");
        let t = text(200, &h, Out::Chunked, false, false);
        assert!(
            t.contains("transfer-encoding: chunked\r\n") && t.contains("connection: close\r\n"),
            "{t}"
        );
        // A HEAD's answer keeps the length it would have had.
        let t = text(200, &h, Out::Empty, true, true);
        assert!(
            t.contains("content-length: 999\r\n") && t.contains("connection: keep-alive\r\n"),
            "{t}"
        );
        let t = text(204, &h, Out::Empty, true, false);
        assert!(!t.contains("content-length"), "{t}");
    }

    #[test]
    fn an_upstream_date_is_kept_once_and_one_that_goes_is_replaced() {
        let raw = |text: &str| {
            let mut buf = bytes::BytesMut::from(text);
            match RawHead::parse(&mut buf) {
                Ok(Some(h)) => h,
                other => panic!("{other:?}"),
            }
        };
        let write_raw = |h: &RawHead| {
            let mut out = Vec::new();
            write(
                &mut out,
                h.status,
                &HeaderMap::new(),
                Some(h),
                Out::Length(0),
                true,
                false,
            );
            String::from_utf8(out).expect("utf-8")
        };
        let t = write_raw(&raw(
            "HTTP/1.1 200 OK\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\n\r\n",
        ));
        assert_eq!(t.to_ascii_lowercase().matches("date: ").count(), 1, "{t}");
        assert!(t.contains("Date: Thu, 26 Nov 2026 10:00:00 GMT\r\n"), "{t}");
        let t = write_raw(&raw(
            "HTTP/1.1 200 OK\r\nConnection: date\r\nDate: x\r\n\r\n",
        ));
        assert!(!t.contains("Date: x"), "{t}");
        assert_eq!(t.matches("date: ").count(), 1, "ours instead: {t}");
    }

    #[test]
    fn a_date_is_added_when_missing() {
        let t = text(451, &HeaderMap::new(), Out::Length(0), true, false);
        assert!(
            t.starts_with("HTTP/1.1 451 Unavailable For Legal Reasons\r\n"),
            "{t}"
        );
        let date = t
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .expect("a date");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    }

    #[test]
    fn framing_by_request_and_status() {
        let ok = StatusCode::OK;
        assert_eq!(framing(ok, true, false, Some(5), false), Out::Empty);
        assert_eq!(framing(ok, false, true, None, false), Out::Empty);
        assert_eq!(
            framing(StatusCode::NOT_MODIFIED, false, false, None, false),
            Out::Empty
        );
        assert_eq!(framing(ok, false, false, Some(5), true), Out::Length(5));
        assert_eq!(framing(ok, false, false, None, false), Out::Chunked);
        assert_eq!(framing(ok, false, false, None, true), Out::Close);
    }

    #[test]
    fn chunk_prefixes_are_hex() {
        let mut b = [0u8; 18];
        assert_eq!(chunk_prefix(0, &mut b), b"0\r\n");
        assert_eq!(chunk_prefix(255, &mut b), b"ff\r\n");
        assert_eq!(chunk_prefix(4096, &mut b), b"1000\r\n");
        assert_eq!(chunk_prefix(usize::MAX, &mut b).len(), 18);
    }
}
