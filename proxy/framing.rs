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
//!
//! The scan also bounds how long a head may take to arrive (`header_read_timeout`,
//! against slowloris): from its first byte, not from the end of the previous response,
//! so a kept-alive connection may sit idle for the idle timeout between requests (hyper's
//! own header timer starts as soon as it waits for a head, which would close idle
//! connections after the shorter header timeout). A head still incomplete at the
//! deadline gets a 408 and the connection is closed; the error carries [`HeadTimeout`]
//! so the proxy records it. It costs nothing while heads arrive whole in one read. Once
//! the scan has stopped (after a chunked body), later heads on that connection are
//! bounded by the idle timeout only.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What a client gets whose request head did not arrive in time.
const TIMEOUT_ANSWER: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// The error a read fails with when a request head took longer than the limit.
#[derive(Debug, thiserror::Error)]
#[error("the request head did not arrive within {} s", .0.as_secs_f64())]
pub struct HeadTimeout(pub Duration);

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

    /// Whether part of a head has arrived but not its end.
    fn head_open(&self) -> bool {
        matches!(self.state, State::Head) && (!self.first_line || !self.line.is_empty())
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
    /// The longest a head may take from its first byte.
    head_limit: Duration,
    /// When the head now arriving was first seen incomplete.
    head_since: Option<Instant>,
    /// Fires at `head_since + head_limit` (made the first time a head arrives slowly).
    head_timer: Option<Pin<Box<Sleep>>>,
    /// The head was late: every read fails from now on.
    timed_out: bool,
}

impl<T> Framing<T> {
    /// Wrap `inner`; the handler reads `findings`. A head must arrive within
    /// `head_limit` of its first byte.
    pub fn new(inner: T, head_limit: Duration) -> (Self, Arc<Findings>) {
        let findings = Arc::new(Findings::default());
        (
            Framing {
                inner,
                scan: Scan::new(),
                findings: findings.clone(),
                head_limit,
                head_since: None,
                head_timer: None,
                timed_out: false,
            },
            findings,
        )
    }

    /// The stream (after an upgrade: the scan has nothing more to say).
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// Ready once the head now arriving is late.
    fn poll_head_late(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(since) = self.head_since else {
            return Poll::Pending;
        };
        let due = since + self.head_limit;
        let timer = self
            .head_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        timer.as_mut().poll(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Framing<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if me.timed_out {
            return Poll::Ready(Err(late(me.head_limit)));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) => {
                if !matches!(me.scan.state, State::Stopped) {
                    me.scan.feed(&buf.filled()[before..], &me.findings);
                    // Heads that arrive whole in one read never touch the clock.
                    if !me.scan.head_open() {
                        me.head_since = None;
                    } else if me.head_since.is_none() {
                        me.head_since = Some(Instant::now());
                    }
                }
                r
            }
            Poll::Pending if me.poll_head_late(cx).is_ready() => {
                // Nothing of a response can be on the way (its request is not in):
                // the 408 goes out as far as the socket takes it, then the close.
                let _ = Pin::new(&mut me.inner).poll_write(cx, TIMEOUT_ANSWER);
                me.timed_out = true;
                Poll::Ready(Err(late(me.head_limit)))
            }
            r => r,
        }
    }
}

/// The read error of a late head.
fn late(limit: Duration) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, HeadTimeout(limit))
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

    #[tokio::test(start_paused = true)]
    async fn a_head_must_arrive_within_the_limit_from_its_first_byte() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut client) = tokio::io::duplex(1024);
        let (mut io, _) = Framing::new(a, Duration::from_secs(10));
        let mut buf = [0u8; 256];

        // Quiet between requests for longer than the limit: not a late head.
        let quiet = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
        assert!(
            quiet.is_err(),
            "an idle connection was cut by the head timeout"
        );

        // A whole head, in pieces, within the limit: read as it comes.
        client
            .write_all(b"GET http://a/ HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        tokio::time::advance(Duration::from_secs(9)).await;
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        // ...and the limit starts again with the next head's first byte only.
        let quiet = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
        assert!(quiet.is_err(), "the finished head's deadline still ran");

        // A head trickled past the limit: 408, then every read fails.
        client
            .write_all(b"GET http://a/ HTTP/1.1\r\n")
            .await
            .unwrap();
        assert!(io.read(&mut buf).await.unwrap() > 0);
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(4)).await;
            client.write_all(b"X-Slow: 1\r\n").await.unwrap();
            match io.read(&mut buf).await {
                Ok(n) => assert!(n > 0),
                Err(e) => {
                    assert!(e.get_ref().is_some_and(|e| e.is::<HeadTimeout>()), "{e}");
                    break;
                }
            }
        }
        let e = io.read(&mut buf).await.unwrap_err();
        assert!(e.get_ref().is_some_and(|e| e.is::<HeadTimeout>()), "{e}");
        let mut answer = [0u8; 12];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 408");
    }
}
