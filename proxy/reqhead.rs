//! A client's request head, parsed (httparse) into what the proxy needs: method,
//! target, version, headers, how the body is framed, and whether the connection may
//! stay open after it. Framing that two parsers could read differently (Content-Length
//! with Transfer-Encoding, or two Content-Lengths) is not resolved here but flagged
//! (`ambiguous`): the proxy refuses such a request and closes the connection, where
//! a parser that picked one reading would let a request hide inside another's body.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

/// Most header fields in one request head (hyper's limit too).
const MAX_HEADERS: usize = 100;

/// How a request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Content-Length bytes (more than zero).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct ReqHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    /// How its body is framed (`None` when `ambiguous`).
    pub body: BodyFraming,
    /// The client lets the connection stay open after this request.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before its body.
    pub expect_continue: bool,
    /// Content-Length with Transfer-Encoding, or two Content-Lengths.
    pub ambiguous: bool,
}

/// Why a head was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("request head larger than {0} bytes (limits.max_header_bytes)")]
    TooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl HeadError {
    /// The status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge(_) => 431,
            HeadError::Malformed(_) => 400,
        }
    }
}

/// The head at the start of `buf`, taken off it; None while incomplete (nothing is
/// taken). `max`: the largest head accepted.
pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<ReqHead>, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n <= max => n,
        Ok(httparse::Status::Complete(_)) => return Err(HeadError::TooLarge(max)),
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(HeadError::TooLarge(max)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge(max)),
        Err(httparse::Error::Version) => {
            return Err(HeadError::Malformed("unsupported HTTP version"))
        }
        Err(httparse::Error::HeaderName) => {
            return Err(HeadError::Malformed("invalid header name"))
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HeadError::Malformed("invalid header value"))
        }
        Err(_) => return Err(HeadError::Malformed("invalid request line")),
    };
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut fields = Fields::default();
    // Where each field's name and value are in `buf`: they become slices of the head's
    // bytes once it is taken off the buffer, not copies.
    let base = buf.as_ptr() as usize;
    let at = |part: &[u8]| {
        let from = part.as_ptr() as usize - base;
        (from, from + part.len())
    };
    // (A whole head always has a target; none would be refused as empty.)
    let target = req.path.map_or((0, 0), |p| at(p.as_bytes()));
    // On the stack for the usual head (a few hundred bytes to clear, not the room for
    // the most fields a head may have).
    let count = req.headers.len();
    let mut few = [((0usize, 0usize), (0usize, 0usize)); 16];
    let mut many = Vec::new();
    let spans = match few.get_mut(..count) {
        Some(s) => s,
        None => {
            many.resize(count, ((0, 0), (0, 0)));
            &mut many[..]
        }
    };
    for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
        fields.note(h.name.as_bytes(), h.value)?;
        *span = (at(h.name.as_bytes()), at(h.value));
    }
    let bytes = buf.split_to(len).freeze();
    // A slice of the head too: parsed where it is, not copied.
    let uri = Uri::from_maybe_shared(bytes.slice(target.0..target.1))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let mut headers = crate::headerpool::take(count);
    for &((nf, nt), (vf, vt)) in spans.iter() {
        let name = HeaderName::from_bytes(&bytes[nf..nt])
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = match fields.length {
            // Forwarded as the one number it stands for (`5, 5` is 5).
            Some(n) if name == CONTENT_LENGTH => HeaderValue::from(n),
            _ => HeaderValue::from_maybe_shared(bytes.slice(vf..vt))
                .map_err(|_| HeadError::Malformed("invalid header value"))?,
        };
        headers.append(name, value);
    }
    fields.head(method, uri, version, headers).map(Some)
}

/// What the framing and connection fields of a head say.
#[derive(Default)]
struct Fields {
    /// Content-Length fields seen, and the last one's value.
    lengths: usize,
    length: Option<u64>,
    /// A Transfer-Encoding field was seen (even an empty one); its codings, and
    /// whether the last is chunked.
    te: bool,
    codings: usize,
    chunked_last: bool,
    /// Connection: close / keep-alive.
    close: bool,
    keep: bool,
    /// Expect: 100-continue.
    expect_continue: bool,
}

impl Fields {
    fn note(&mut self, name: &[u8], value: &[u8]) -> Result<(), HeadError> {
        if name.eq_ignore_ascii_case(CONTENT_LENGTH.as_str().as_bytes()) {
            self.lengths += 1;
            self.length = Some(content_length(value)?);
        } else if name.eq_ignore_ascii_case(TRANSFER_ENCODING.as_str().as_bytes()) {
            self.te = true;
            for t in tokens(value) {
                self.codings += 1;
                self.chunked_last = t.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(CONNECTION.as_str().as_bytes()) {
            for t in tokens(value) {
                self.close |= t.eq_ignore_ascii_case(b"close");
                self.keep |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(EXPECT.as_str().as_bytes()) {
            self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }

    fn head(
        self,
        method: Method,
        uri: Uri,
        version: Version,
        headers: HeaderMap,
    ) -> Result<ReqHead, HeadError> {
        let te = self.te;
        let ambiguous = self.lengths > 1 || (te && self.lengths > 0);
        let body = if ambiguous || method == Method::CONNECT {
            BodyFraming::None
        } else if te {
            if version == Version::HTTP_10 {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            // Only `chunked` alone: a body in another coding would reach the origin
            // re-framed with its coding lost.
            if self.codings > 1 || !self.chunked_last {
                return Err(HeadError::Malformed("Transfer-Encoding other than chunked"));
            }
            BodyFraming::Chunked
        } else {
            match self.length {
                Some(n) if n > 0 => BodyFraming::Length(n),
                _ => BodyFraming::None,
            }
        };
        let keep_alive = !ambiguous && !self.close && (version == Version::HTTP_11 || self.keep);
        Ok(ReqHead {
            expect_continue: self.expect_continue && version == Version::HTTP_11,
            method,
            uri,
            version,
            headers,
            body,
            keep_alive,
            ambiguous,
        })
    }
}

/// A Content-Length value: digits, or a list of one value repeated (RFC 9110 8.6).
fn content_length(v: &[u8]) -> Result<u64, HeadError> {
    let mut out = None;
    for t in v.split(|&b| b == b',') {
        let t = t.trim_ascii();
        if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
            return Err(HeadError::Malformed("invalid Content-Length"));
        }
        let n = t.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        match out {
            Some(m) if m != n => {
                return Err(HeadError::Malformed("conflicting Content-Length values"))
            }
            _ => out = Some(n),
        }
    }
    out.ok_or(HeadError::Malformed("invalid Content-Length"))
}

/// The comma-separated tokens of a field value, trimmed, empty ones skipped.
fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_max(s: &str, max: usize) -> Result<Option<ReqHead>, HeadError> {
        parse(&mut BytesMut::from(s.as_bytes()), max)
    }

    fn head(s: &str) -> Result<Option<ReqHead>, HeadError> {
        head_max(s, 64 * 1024)
    }

    fn ok(s: &str) -> ReqHead {
        let mut buf = BytesMut::from(format!("{s}NEXT").as_bytes());
        match parse(&mut buf, 64 * 1024) {
            Ok(Some(h)) => {
                assert_eq!(&buf[..], b"NEXT", "the head is taken, the rest left");
                h
            }
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn absolute_form_with_length_keeps_alive() {
        let h = ok(
            "POST http://a.example/x?q HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(h.method, Method::POST);
        assert_eq!(h.uri.host(), Some("a.example"));
        assert_eq!(h.body, BodyFraming::Length(5));
        assert!(h.keep_alive && !h.ambiguous && !h.expect_continue);
        assert_eq!(
            h.headers.get("host").map(|v| v.as_bytes()),
            Some(&b"a.example"[..])
        );
    }

    #[test]
    fn every_field_is_kept_however_many_there_are() {
        for n in [0, 1, 15, 16, 17, 40, MAX_HEADERS] {
            let mut text = String::from("GET http://a/ HTTP/1.1\r\n");
            for i in 0..n {
                text.push_str(&format!("X-F{i}: v{i}\r\n"));
            }
            text.push_str("\r\n");
            let h = ok(&text);
            assert_eq!(h.headers.len(), n, "{n} fields");
            for i in 0..n {
                let v = h
                    .headers
                    .get(format!("x-f{i}"))
                    .map(|v| v.as_bytes().to_vec());
                assert_eq!(v, Some(format!("v{i}").into_bytes()), "field {i} of {n}");
            }
        }
    }

    #[test]
    fn the_target_is_read_from_the_head_whatever_its_form() {
        let h = ok("GET http://a.example:8080/p/q?x=1&y HTTP/1.1\r\n\r\n");
        assert_eq!(h.uri, "http://a.example:8080/p/q?x=1&y");
        assert_eq!(h.uri.port_u16(), Some(8080));
        assert_eq!(h.uri.query(), Some("x=1&y"));
        let h = ok("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n");
        assert_eq!(h.uri.authority().map(|a| a.as_str()), Some("a.example:443"));
        assert_eq!(
            ok("GET /origin/form HTTP/1.1\r\n\r\n").uri.path(),
            "/origin/form"
        );
        // A target httparse takes but no URI is: 400, and nothing taken for a request.
        for bad in [
            "GET http://[::1/ HTTP/1.1\r\n\r\n",
            "GET http://a:b:c/ HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                head(bad).err(),
                Some(HeadError::Malformed("invalid request target")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn incomplete_heads_wait_and_big_ones_are_refused() {
        assert!(matches!(
            head("GET http://a/ HTTP/1.1\r\nHost: a\r\n"),
            Ok(None)
        ));
        let big = format!("GET http://a/ HTTP/1.1\r\nX: {}\r\n", "y".repeat(200));
        assert_eq!(head_max(&big, 100).err(), Some(HeadError::TooLarge(100)));
        let done = format!("{big}\r\n");
        assert_eq!(head_max(&done, 100).err(), Some(HeadError::TooLarge(100)));
        // Over 100 fields is too large too (431), whatever their size.
        let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
        let req = format!("GET http://a/ HTTP/1.1\r\n{many}\r\n");
        assert_eq!(head(&req).err(), Some(HeadError::TooLarge(64 * 1024)));
        let fine: String = (0..100).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(head(&format!("GET http://a/ HTTP/1.1\r\n{fine}\r\n")).is_ok_and(|h| h.is_some()));
    }

    #[test]
    fn ambiguous_framing_is_flagged_not_resolved() {
        let h = ok(
            "POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        );
        assert!(h.ambiguous && !h.keep_alive);
        assert_eq!(h.body, BodyFraming::None);
        let h = ok("POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n");
        assert!(h.ambiguous);
        let h = ok("POST http://a/ HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n");
        assert!(!h.ambiguous);
        assert_eq!(h.body, BodyFraming::Length(3));
        assert_eq!(
            h.headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"3"[..])
        );
        // An empty Transfer-Encoding is one all the same.
        let h = ok("POST http://a/ HTTP/1.1\r\nTransfer-Encoding: ,\r\nContent-Length: 3\r\n\r\n");
        assert!(h.ambiguous);
    }

    #[test]
    fn bad_framing_values_are_malformed() {
        for bad in [
            "POST http://a/ HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: ,\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nX: a\x01b\r\n\r\n",
            "GET http://a/ HTTP/2.0\r\n\r\n",
            "G@T http://a/ HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad), Err(HeadError::Malformed(_))),
                "{bad:?}: {:?}",
                head(bad)
            );
        }
        let h = ok("POST http://a/ HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(h.body, BodyFraming::Chunked);
    }

    #[test]
    fn keep_alive_by_version_and_connection() {
        assert!(!ok("GET http://a/ HTTP/1.0\r\n\r\n").keep_alive);
        assert!(ok("GET http://a/ HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(!ok("GET http://a/ HTTP/1.1\r\nConnection: x, close\r\n\r\n").keep_alive);
        assert!(
            ok("PUT http://a/ HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        let c = ok("CONNECT a.example:443 HTTP/1.1\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(c.body, BodyFraming::None);
        assert_eq!(c.uri.authority().map(|a| a.as_str()), Some("a.example:443"));
    }
}
