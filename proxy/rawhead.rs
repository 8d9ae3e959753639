//! A response head from upstream, kept as the bytes it came in: its status, its
//! version, and where each field's name and value lie in those bytes, each field known
//! by its name once, as it is parsed (the framing fields, the hop-by-hop ones, Date,
//! Content-Type). Nothing is copied and no header map is built: the proxy reads the
//! few fields it needs from it, and the others go on to the client as they came, in
//! their order and their case, followed by the proxy's `Via`.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode, Version};

use crate::forward::hop_index;

/// Fields in a response head, at most.
const MAX_FIELDS: usize = 128;

/// Why a response head is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RawError {
    /// Not HTTP/1.x (httparse's reason).
    #[error("{0}")]
    Parse(httparse::Error),
    /// A status outside 100–999.
    #[error("bad status code")]
    Status,
}

/// What a field is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `Connection`.
    Connection,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// Another hop-by-hop field (`Keep-Alive`, `TE`, `Upgrade`, ...): never forwarded.
    Hop,
    /// `Date`.
    Date,
    /// `Content-Type`.
    ContentType,
    /// Any other field.
    Other,
}

/// What the field `name` (any case) is.
pub fn kind(name: &[u8]) -> Kind {
    // The longest name known is 19 bytes: a longer one is none of them.
    let mut low = [0u8; 19];
    let Some(low) = low.get_mut(..name.len()) else {
        return Kind::Other;
    };
    for (l, b) in low.iter_mut().zip(name) {
        *l = b.to_ascii_lowercase();
    }
    match &*low {
        b"content-length" => return Kind::ContentLength,
        b"content-type" => return Kind::ContentType,
        b"date" => return Kind::Date,
        _ => {}
    }
    match hop_index(low) {
        Some(0) => Kind::Connection,
        Some(5) => Kind::TransferEncoding,
        Some(_) => Kind::Hop,
        None => Kind::Other,
    }
}

/// One field: where its name and value are in the head's bytes (u32: a head is at most
/// a read buffer), and what it is.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
    kind: Kind,
}

/// A response head, as its bytes.
#[derive(Debug)]
pub struct RawHead {
    /// Its status.
    pub status: StatusCode,
    /// Its version (HTTP/1.0 or 1.1).
    pub version: Version,
    /// The proxy's `Via`, written after the fields.
    pub via: Option<HeaderValue>,
    /// The head's bytes.
    bytes: Bytes,
    /// Its fields, in order.
    fields: Vec<Field>,
}

/// `v` as text, when it is UTF-8 (httparse let through no control characters).
fn text(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v).ok()
}

impl RawHead {
    /// The complete head at the start of `buf`, taken off it (None while more is
    /// needed: nothing is taken).
    ///
    /// # Errors
    /// A head that is not HTTP/1.x, or a status outside 100–999.
    pub fn parse(buf: &mut BytesMut) -> Result<Option<RawHead>, RawError> {
        if buf.is_empty() {
            return Ok(None);
        }
        // Slots left uninitialised: filling 128 of them would cost more than the parse.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut resp = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(RawError::Parse(e)),
        };
        let status = resp
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(RawError::Status)?;
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let base = buf.as_ptr() as usize;
        let at = |part: &[u8]| {
            let from = part.as_ptr() as usize - base;
            (from as u32, (from + part.len()) as u32)
        };
        let fields = resp
            .headers
            .iter()
            .map(|h| Field {
                name: at(h.name.as_bytes()),
                value: at(h.value),
                kind: kind(h.name.as_bytes()),
            })
            .collect();
        let bytes = buf.split_to(len).freeze();
        Ok(Some(RawHead {
            status,
            version,
            via: None,
            bytes,
            fields,
        }))
    }

    fn span(&self, (from, to): (u32, u32)) -> &[u8] {
        self.bytes
            .get(from as usize..to as usize)
            .unwrap_or_default()
    }

    /// The values of the fields of `kind`, in order.
    pub fn values(&self, kind: Kind) -> impl Iterator<Item = &[u8]> {
        self.fields
            .iter()
            .filter(move |f| f.kind == kind)
            .map(|f| self.span(f.value))
    }

    /// Whether a field of `kind` is there.
    pub fn has(&self, kind: Kind) -> bool {
        self.fields.iter().any(|f| f.kind == kind)
    }

    /// The comma-separated tokens of every field of `kind`, trimmed, empty ones
    /// skipped (values that are not text are skipped whole).
    pub fn tokens(&self, kind: Kind) -> impl Iterator<Item = &str> {
        self.values(kind)
            .filter_map(text)
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
    }

    /// The first Content-Type, when it is text.
    pub fn content_type(&self) -> Option<&str> {
        self.values(Kind::ContentType).next().and_then(text)
    }

    /// Where `f`'s line ends (past its CRLF), when it ends in CRLF.
    fn line_end(&self, f: &Field) -> Option<usize> {
        let from = f.value.1 as usize;
        let lf = from + self.bytes.get(from..)?.iter().position(|&b| b == b'\n')?;
        (lf > from && self.bytes.get(lf - 1) == Some(&b'\r')).then_some(lf + 1)
    }

    /// Append the bytes `run` of the head, if any.
    fn copy(&self, run: Option<(usize, usize)>, out: &mut Vec<u8>) {
        if let Some(part) = run.and_then(|(from, to)| self.bytes.get(from..to)) {
            out.extend_from_slice(part);
        }
    }

    /// Append the fields that go on to the client, `name: value` lines as they came:
    /// not the hop-by-hop ones (nor the fields `Connection` names), not the framing
    /// ones (the proxy writes its own), except Content-Length when `keep_length` (a
    /// body that is not sent keeps the length it would have had) and no
    /// Transfer-Encoding came with it; then the proxy's `Via`.
    /// Returns whether a Date field was among them.
    pub fn write_fields(&self, out: &mut Vec<u8>, keep_length: bool) -> bool {
        let mut date = false;
        let keep_length = keep_length && !self.has(Kind::TransferEncoding);
        // Only a Connection token that is not itself a hop-by-hop name (`close`,
        // `keep-alive`) makes other fields worth checking against it.
        let named = self.tokens(Kind::Connection).any(|t| {
            !matches!(
                kind(t.as_bytes()),
                Kind::Connection | Kind::TransferEncoding | Kind::Hop
            )
        });
        // Lines that pass one after another are copied in one piece, as they came
        // (a line that ends in a bare LF is written anew, with CRLF).
        let mut run: Option<(usize, usize)> = None;
        for f in &self.fields {
            let pass = match f.kind {
                Kind::Connection | Kind::TransferEncoding | Kind::Hop => false,
                Kind::ContentLength => keep_length,
                Kind::Date | Kind::ContentType | Kind::Other => true,
            };
            let name = self.span(f.name);
            let listed = || {
                self.tokens(Kind::Connection)
                    .any(|t| t.as_bytes().eq_ignore_ascii_case(name))
            };
            if !pass || (named && listed()) {
                continue;
            }
            date |= f.kind == Kind::Date;
            let start = f.name.0 as usize;
            match (self.line_end(f), &mut run) {
                (Some(end), Some((_, to))) if *to == start => *to = end,
                (Some(end), _) => {
                    self.copy(run.replace((start, end)), out);
                }
                (None, _) => {
                    self.copy(run.take(), out);
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(self.span(f.value));
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        self.copy(run, out);
        if let Some(via) = &self.via {
            out.extend_from_slice(b"via: ");
            out.extend_from_slice(via.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        date
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RawHead {
        let mut buf = BytesMut::from(text);
        match RawHead::parse(&mut buf) {
            Ok(Some(h)) => {
                assert!(buf.is_empty(), "the whole head is taken off the buffer");
                h
            }
            Ok(None) => panic!("a partial head: {text:?}"),
            Err(e) => panic!("not a head: {e}"),
        }
    }

    fn fields(h: &RawHead, keep_length: bool) -> String {
        let mut out = Vec::new();
        let _ = h.write_fields(&mut out, keep_length);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn names_are_known_whatever_their_case() {
        assert_eq!(kind(b"Content-Length"), Kind::ContentLength);
        assert_eq!(kind(b"CONTENT-TYPE"), Kind::ContentType);
        assert_eq!(kind(b"date"), Kind::Date);
        assert_eq!(kind(b"Connection"), Kind::Connection);
        assert_eq!(kind(b"Transfer-Encoding"), Kind::TransferEncoding);
        for hop in [
            "Keep-Alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Connection",
            "Proxy-Authenticate",
            "proxy-authorization",
        ] {
            assert_eq!(kind(hop.as_bytes()), Kind::Hop, "{hop}");
        }
        for other in [
            "Server",
            "Via",
            "Content-Lengths",
            "dat",
            "",
            "x-proxy-authorization-",
        ] {
            assert_eq!(kind(other.as_bytes()), Kind::Other, "{other}");
        }
    }

    #[test]
    fn fields_pass_in_order_and_case_without_the_hop_by_hop_ones() {
        let h = head(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nConnection: keep-alive, X-Secret\r\nX-B: two\r\n\
             Keep-Alive: timeout=5\r\nx-secret: 1\r\nSet-Cookie: c=3\r\nContent-Length: 4\r\n\
             Via: 1.0 other\r\nUpgrade: h2c\r\n\r\n",
        );
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(
            fields(&h, false),
            "Set-Cookie: a=1\r\nX-B: two\r\nSet-Cookie: c=3\r\nVia: 1.0 other\r\n"
        );
        let mut h = h;
        h.via = Some(HeaderValue::from_static("1.1 ours"));
        let t = fields(&h, true);
        assert!(t.contains("Content-Length: 4\r\n"), "{t}");
        assert!(t.ends_with("Via: 1.0 other\r\nvia: 1.1 ours\r\n"), "{t}");
    }

    #[test]
    fn lines_are_copied_as_they_came_and_bare_lf_ends_are_mended() {
        let h = head("HTTP/1.1 200 OK\r\nA: 1 \r\nB:2\nConnection: close\r\nC:  3\r\nD: 4\r\n\r\n");
        assert_eq!(fields(&h, false), "A: 1 \r\nB: 2\r\nC:  3\r\nD: 4\r\n");
        let h = head("HTTP/1.1 200 OK\nA: 1\nB: 2\n\n");
        assert_eq!(fields(&h, false), "A: 1\r\nB: 2\r\n");
    }

    #[test]
    fn a_standard_field_named_in_connection_goes_too() {
        let h = head("HTTP/1.1 200 OK\r\nConnection: close, date\r\nDate: x\r\nServer: s\r\n\r\n");
        assert_eq!(fields(&h, false), "Server: s\r\n");
        // Told so: the Date that went is not taken for one written.
        assert!(!h.write_fields(&mut Vec::new(), false));
        let h = head("HTTP/1.1 200 OK\r\nDate: x\r\n\r\n");
        assert!(h.write_fields(&mut Vec::new(), false));
    }

    #[test]
    fn a_length_beside_transfer_encoding_is_never_passed() {
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(fields(&h, true), "");
        assert!(h.has(Kind::ContentLength) && h.has(Kind::TransferEncoding));
    }

    #[test]
    fn values_and_tokens_by_kind() {
        let h = head(
            "HTTP/1.0 404 Not Found\r\nContent-Type: text/html\r\nContent-Type: text/plain\r\n\
             Connection: , Keep-Alive ,\r\nConnection: x\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\n\r\n",
        );
        assert_eq!(h.status, StatusCode::NOT_FOUND);
        assert_eq!(h.version, Version::HTTP_10);
        assert_eq!(h.content_type(), Some("text/html"));
        let t: Vec<&str> = h.tokens(Kind::Connection).collect();
        assert_eq!(t, ["Keep-Alive", "x"]);
        assert!(h.has(Kind::Date) && !h.has(Kind::ContentLength));
        assert_eq!(h.values(Kind::Date).count(), 1);
    }

    #[test]
    fn partial_and_bad_heads() {
        let text = "HTTP/1.1 200 OK\r\nA: b\r\n";
        let mut partial = BytesMut::from(text);
        assert!(matches!(RawHead::parse(&mut partial), Ok(None)));
        assert_eq!(&partial[..], text.as_bytes(), "a partial head stays");
        assert!(RawHead::parse(&mut BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n")).is_err());
        assert_eq!(
            RawHead::parse(&mut BytesMut::from("HTTP/1.1 2000 OK\r\n\r\n")).err(),
            Some(RawError::Parse(httparse::Error::Status))
        );
        assert_eq!(
            RawHead::parse(&mut BytesMut::from("HTTP/1.1 099 OK\r\n\r\n")).err(),
            Some(RawError::Status)
        );
    }
}
