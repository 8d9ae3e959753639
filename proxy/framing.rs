//! Request-smuggling guard. hyper resolves a request head that carries both
//! Content-Length and Transfer-Encoding (RFC 9112 §6.3: Transfer-Encoding wins) before
//! the proxy sees it, so the ambiguity is invisible to a handler. This I/O wrapper reads
//! along the request heads as they arrive and notes, by the request's index on the
//! connection, each head that has both fields (or Content-Length twice); the proxy then
//! refuses that request with 400 instead of forwarding it.
//!
//! Only heads are scanned: a body with a Content-Length is skipped by count; after a
//! chunked body or a CONNECT the scan stops for the rest of the connection (a chunked
//! body cannot hide a second head from hyper without itself being malformed).

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The bytes of a line the scan keeps.
const LINE_MAX: usize = 64;

/// What the scan has found, shared with the connection's request handler.
#[derive(Default)]
pub struct Findings {
    /// Indices (0-based, per connection) of requests with ambiguous framing.
    ambiguous: Mutex<HashSet<u64>>,
    /// Whether `ambiguous` holds anything (the common case, no, takes no lock).
    any: AtomicBool,
}

impl Findings {
    /// Whether request `index` of the connection had ambiguous framing.
    pub fn is_ambiguous(&self, index: u64) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        self.ambiguous
            .lock()
            .map(|s| s.contains(&index))
            .unwrap_or(true)
    }
}

enum State {
    /// Reading a head.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// No more scanning on this connection.
    Stopped,
}

/// The scanner of one connection.
struct Scan {
    state: State,
    /// Index of the head being read.
    index: u64,
    /// Bytes of the current line (only the first 64 are kept).
    line: Vec<u8>,
    /// Whether the current line is the head's first (the request line).
    first_line: bool,
    /// Content-Length fields in this head.
    content_lengths: u32,
    /// Its value (the last one).
    content_length: u64,
    /// Transfer-Encoding seen.
    transfer_encoding: bool,
    /// CONNECT request.
    connect: bool,
}

impl Scan {
    fn new() -> Self {
        Scan {
            state: State::Head,
            index: 0,
            line: Vec::with_capacity(LINE_MAX),
            first_line: true,
            content_lengths: 0,
            content_length: 0,
            transfer_encoding: false,
            connect: false,
        }
    }

    fn feed(&mut self, mut data: &[u8], findings: &Findings) {
        while !data.is_empty() {
            match self.state {
                State::Stopped => return,
                State::Body(n) => {
                    let k = (n as usize).min(data.len());
                    data = &data[k..];
                    let left = n - k as u64;
                    self.state = if left == 0 {
                        State::Head
                    } else {
                        State::Body(left)
                    };
                }
                State::Head => match data.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        self.keep(&data[..i]);
                        data = &data[i + 1..];
                        self.end_line(findings);
                    }
                    None => {
                        self.keep(data);
                        data = &[];
                    }
                },
            }
        }
    }

    /// Keep the start of a line (the first 64 bytes are all the scan needs).
    fn keep(&mut self, part: &[u8]) {
        let room = LINE_MAX.saturating_sub(self.line.len());
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self, findings: &Findings) {
        // A copy on the stack: the line buffer is reused, never reallocated.
        let mut copy = [0u8; LINE_MAX];
        let n = self.line.len().min(LINE_MAX);
        copy[..n].copy_from_slice(&self.line[..n]);
        self.line.clear();
        let line = &copy[..n];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if self.first_line {
            if line.is_empty() {
                // Blank lines before a request line are tolerated.
                return;
            }
            self.first_line = false;
            self.connect = line.starts_with(b"CONNECT ");
            return;
        }
        if line.is_empty() {
            // End of the head.
            if self.transfer_encoding && self.content_lengths > 0 || self.content_lengths > 1 {
                if let Ok(mut s) = findings.ambiguous.lock() {
                    s.insert(self.index);
                }
                findings.any.store(true, Ordering::Release);
            }
            self.state = if self.connect || self.transfer_encoding {
                State::Stopped
            } else if self.content_lengths == 1 && self.content_length > 0 {
                State::Body(self.content_length)
            } else {
                State::Head
            };
            self.index += 1;
            self.first_line = true;
            self.content_lengths = 0;
            self.content_length = 0;
            self.transfer_encoding = false;
            self.connect = false;
            return;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            return;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            self.content_lengths += 1;
            let v = line[colon + 1..].trim_ascii();
            self.content_length = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.transfer_encoding = true;
        }
    }
}

/// `T` with the scan on its reads.
pub struct Framing<T> {
    /// The stream.
    inner: T,
    /// The scanner.
    scan: Scan,
    /// Shared with the handler.
    findings: Arc<Findings>,
}

impl<T> Framing<T> {
    /// Wrap `inner`; the handler reads `findings`.
    pub fn new(inner: T) -> (Self, Arc<Findings>) {
        let findings = Arc::new(Findings::default());
        (
            Framing {
                inner,
                scan: Scan::new(),
                findings: findings.clone(),
            },
            findings,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Framing<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let me = &mut *self;
            if !matches!(me.scan.state, State::Stopped) {
                me.scan.feed(&buf.filled()[before..], &me.findings);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Framing<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &[u8], chunk: usize) -> Findings {
        let f = Findings::default();
        let mut s = Scan::new();
        for part in input.chunks(chunk) {
            s.feed(part, &f);
        }
        f
    }

    #[test]
    fn finds_ambiguous_heads_by_index_in_any_chunking() {
        let input = b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n\
POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        for chunk in [1, 3, 7, 1000] {
            let f = scan(input, chunk);
            assert!(!f.is_ambiguous(0), "chunk {chunk}");
            assert!(!f.is_ambiguous(1), "chunk {chunk}");
            assert!(f.is_ambiguous(2), "chunk {chunk}");
        }
    }

    #[test]
    fn two_content_lengths_and_body_lookalikes() {
        let f = scan(
            b"POST http://a/ HTTP/1.1\r\ncontent-length: 3\r\nContent-Length: 3\r\n\r\n",
            5,
        );
        assert!(f.is_ambiguous(0));
        // A body that looks like headers is skipped by its length.
        let body = b"x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input = format!(
            "POST http://a/ HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        input.extend_from_slice(body);
        input.extend_from_slice(b"GET http://a/ HTTP/1.1\r\n\r\n");
        let f = scan(&input, 4);
        assert!(!f.is_ambiguous(0));
        assert!(!f.is_ambiguous(1));
    }
}
