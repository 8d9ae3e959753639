//! An upstream response body, read from the upstream socket when the client side asks
//! for the next frame: Content-Length, chunked (decoded; hyper re-frames it for the
//! client) or delimited by the connection closing. The buffer is bounded, so a large
//! body streams through a few tens of KiB. When the body ends cleanly on a connection
//! that may be kept alive, the connection goes back to the pool. An upstream that stops
//! sending mid-body for longer than the stall limit fails the body (the client's
//! connection is closed) instead of holding both connections open forever. When the
//! answer came before the whole request body, the rest of the upload is driven from
//! here too, between reads, on a connection that is then not kept.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use crate::stall::Stall;
use crate::upload::Upload;
use crate::upstream::Conn;

/// The most read from the upstream socket at once.
const READ_MAX: usize = 64 * 1024;
/// A chunk-size line or trailer line longer than this is refused.
const MAX_LINE: usize = 4096;
/// Trailer section bytes, at most.
const MAX_TRAILERS: usize = 16 * 1024;

/// How a response body is delimited; the flag: whether the connection may be kept.
#[derive(Debug, Clone, Copy)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(u64, bool),
    /// Transfer-Encoding: chunked.
    Chunked(bool),
    /// Until the upstream closes.
    Eof,
}

impl Framing {
    /// The same framing on a connection that is not kept afterwards.
    pub fn closing(self) -> Framing {
        match self {
            Framing::Length(n, _) => Framing::Length(n, false),
            Framing::Chunked(_) => Framing::Chunked(false),
            Framing::Eof => Framing::Eof,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Bytes of the body not yet handed on (some may be in the buffer).
    Length(u64),
    /// Waiting for a chunk-size line.
    ChunkSize,
    /// Bytes of the current chunk not yet handed on.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer lines, until an empty one; the bytes seen so far.
    Trailers(usize),
    /// Until the upstream closes.
    Eof,
    /// Finished.
    Done,
}

/// The body of one upstream response.
pub struct UpBody {
    /// The connection, until the body is done.
    conn: Option<Conn>,
    /// Read but not yet handed on.
    buf: BytesMut,
    /// Where in the body we are.
    state: State,
    /// Whether the connection may carry another request once the body is done.
    keep: bool,
    /// No byte from the upstream for this long fails the body (None: no limit).
    stall: Option<Stall>,
    /// The rest of the request body, when the answer came before all of it: it goes on
    /// being sent while the answer is read.
    upload: Option<Upload>,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("upstream body: {msg}"))
}

impl UpBody {
    /// The body after the head; `buf` holds what was read past the head.
    pub fn new(conn: Conn, buf: BytesMut, framing: Framing) -> UpBody {
        let (state, keep) = match framing {
            Framing::Length(n, keep) => (State::Length(n), keep),
            Framing::Chunked(keep) => (State::ChunkSize, keep),
            Framing::Eof => (State::Eof, false),
        };
        let mut body = UpBody {
            conn: Some(conn),
            buf,
            state,
            keep,
            stall: None,
            upload: None,
        };
        // A body of nothing may never be polled: the connection is free at once.
        if matches!(body.state, State::Length(0)) {
            body.finish();
        }
        body
    }

    /// Fail the body when the upstream sends nothing for `limit`.
    pub fn with_stall_limit(mut self, limit: Duration) -> UpBody {
        self.stall = Some(Stall::new(limit));
        self
    }

    /// Go on sending the rest of the request body (see `upload`) while the answer is
    /// read; the connection is not kept afterwards.
    pub fn with_upload(mut self, upload: Option<Upload>) -> UpBody {
        if upload.is_some() {
            self.keep = false;
            self.upload = upload;
        }
        self
    }

    /// The upstream socket and the bytes of the body still to come from it, when the
    /// rest may be moved socket to socket by the caller (see [`UpBody::spliced`]): a
    /// Content-Length body with nothing left in the buffer and no upload going on.
    pub fn splice_source(&self) -> Option<(&tokio::net::TcpStream, u64)> {
        match (self.state, &self.conn) {
            (State::Length(n), Some(conn))
                if n > 0 && self.buf.is_empty() && self.upload.is_none() =>
            {
                Some((&conn.stream, n))
            }
            _ => None,
        }
    }

    /// `n` more bytes of the body were moved from the socket by the caller; at the end
    /// the connection goes back to the pool.
    pub fn spliced(&mut self, n: u64) {
        if let State::Length(rem) = self.state {
            self.state = State::Length(rem.saturating_sub(n));
            if matches!(self.state, State::Length(0)) {
                self.finish();
            }
        }
    }

    /// The caller's move failed: the body is over and the connection not reused.
    pub fn abandon(&mut self) {
        self.state = State::Done;
        self.conn = None;
    }

    /// Move the rest of the upload on, if there is one. Once it fails (the client or
    /// the origin stopped), it is dropped: the answer still goes to the client.
    fn poll_upload(&mut self, cx: &mut Context<'_>) {
        let Some(up) = self.upload.as_mut() else {
            return;
        };
        let moving = match self.conn.as_mut() {
            Some(conn) => up.poll(&mut conn.stream, cx).is_pending(),
            None => false,
        };
        if !moving {
            // The answer's stall limit counts from its next wait (see `poll_fill`).
            self.upload = None;
        }
    }

    /// The body ended cleanly: the connection goes back to the pool if it can.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(mut conn) = self.conn.take() {
            // Bytes past the end mean the upstream said more than it framed.
            if self.keep && self.buf.is_empty() {
                conn.buf = std::mem::take(&mut self.buf);
                conn.release();
            }
        }
        self.buf = BytesMut::new();
    }

    /// Read more into the buffer; Ok(0) at the upstream's end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let UpBody {
            conn,
            buf,
            stall,
            upload,
            ..
        } = self;
        let Some(conn) = conn else {
            return Poll::Ready(Ok(0));
        };
        // No buffer is reserved until the socket has something: a response waiting for
        // its origin holds no read buffer (at 256 slow responses, 16 MiB less).
        let ready = match conn.stream.poll_read_ready(cx) {
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                buf.reserve(want.clamp(1024, READ_MAX));
                // Through `poll_read`, which knows a short read drained the socket:
                // the next read waits for the socket instead of trying it first.
                let read = tokio::io::AsyncReadExt::read_buf(&mut conn.stream, buf);
                std::pin::pin!(read).poll(cx)
            }
            Poll::Pending => Poll::Pending,
        };
        if let Poll::Ready(r) = ready {
            if let Some(s) = stall {
                s.moved();
            }
            return Poll::Ready(r);
        }
        // While the rest of the upload goes on, an origin that sends nothing is not
        // stalled: it may answer once it has the whole body (the upload bounds its own
        // waits by the same limit).
        let Some(stall) = stall.as_mut().filter(|_| upload.is_none()) else {
            return Poll::Pending;
        };
        std::task::ready!(stall.poll_expired(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "upstream body: nothing received for {} s",
                stall.limit().as_secs_f32()
            ),
        )))
    }

    /// A line (without its CRLF) at the start of the buffer, consumed; None if incomplete.
    fn take_line(&mut self) -> io::Result<Option<BytesMut>> {
        match self.buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let mut line = self.buf.split_to(i + 1);
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_LINE => Err(bad("line too long")),
            None => Ok(None),
        }
    }

    /// Up to `rem` bytes of the buffer as a data frame.
    fn data(&mut self, rem: u64) -> Bytes {
        let n = usize::try_from(rem)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        self.buf.split_to(n).freeze()
    }

    /// Read more into the buffer; 0 at the upstream's end of stream.
    fn fill(&mut self, cx: &mut Context<'_>, want: usize) -> Result<usize, Pend> {
        match self.poll_fill(cx, want) {
            Poll::Pending => Err(Pend::Pending),
            Poll::Ready(r) => Ok(r?),
        }
    }

    /// Read more, failing with `why` at the end of stream.
    fn fill_or_fail(&mut self, cx: &mut Context<'_>, why: &str) -> Result<(), Pend> {
        match self.fill(cx, 1024)? {
            0 => Err(Pend::Err(bad(why))),
            _ => Ok(()),
        }
    }

    /// The next piece of data; None at the end.
    fn step(&mut self, cx: &mut Context<'_>) -> Result<Option<Bytes>, Pend> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length(0) => {
                    self.finish();
                    return Ok(None);
                }
                State::Length(rem) | State::ChunkData(rem) if !self.buf.is_empty() => {
                    let d = self.data(rem);
                    let left = rem - d.len() as u64;
                    self.state = match self.state {
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    // hyper stops asking once the length is reached: the connection
                    // goes back to the pool now, not when the body is dropped.
                    if matches!(self.state, State::Length(0)) {
                        self.finish();
                    }
                    return Ok(Some(d));
                }
                State::Length(rem) | State::ChunkData(rem) => {
                    let want = usize::try_from(rem).unwrap_or(READ_MAX);
                    if self.fill(cx, want)? == 0 {
                        return Err(Pend::Err(bad("the upstream closed before the end")));
                    }
                }
                State::Eof => {
                    if !self.buf.is_empty() {
                        return Ok(Some(self.buf.split().freeze()));
                    }
                    if self.fill(cx, READ_MAX)? == 0 {
                        self.state = State::Done;
                        self.conn = None;
                        return Ok(None);
                    }
                }
                State::ChunkSize => match self.take_line()? {
                    Some(line) => {
                        // Hex digits only (whitespace allowed before an extension),
                        // as strict as hyper is with the client.
                        let size = line[..]
                            .split(|&b| b == b';')
                            .next()
                            .map(|s| s.trim_ascii_end())
                            .filter(|s| {
                                !s.is_empty()
                                    && s.len() <= 16
                                    && s.iter().all(u8::is_ascii_hexdigit)
                            })
                            .and_then(|s| std::str::from_utf8(s).ok())
                            .and_then(|s| u64::from_str_radix(s, 16).ok())
                            .ok_or_else(|| bad("bad chunk size"))?;
                        self.state = if size == 0 {
                            State::Trailers(0)
                        } else {
                            State::ChunkData(size)
                        };
                    }
                    None => self.fill_or_fail(cx, "the upstream closed inside a chunk")?,
                },
                State::ChunkEnd => {
                    if self.buf.len() >= 2 {
                        if &self.buf[..2] != b"\r\n" {
                            return Err(Pend::Err(bad("no CRLF after a chunk")));
                        }
                        let _ = self.buf.split_to(2);
                        self.state = State::ChunkSize;
                    } else {
                        self.fill_or_fail(cx, "the upstream closed inside a chunk")?;
                    }
                }
                State::Trailers(seen) => match self.take_line()? {
                    Some(line) if line.is_empty() => {
                        self.finish();
                        return Ok(None);
                    }
                    Some(line) => {
                        let seen = seen + line.len() + 2;
                        if seen > MAX_TRAILERS {
                            return Err(Pend::Err(bad("trailers too large")));
                        }
                        self.state = State::Trailers(seen);
                    }
                    None => self.fill_or_fail(cx, "the upstream closed inside the trailers")?,
                },
            }
        }
    }
}

/// A step that did not produce data: waiting for the socket, or failed.
enum Pend {
    Pending,
    Err(io::Error),
}

impl From<io::Error> for Pend {
    fn from(e: io::Error) -> Self {
        Pend::Err(e)
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        this.poll_upload(cx);
        match this.step(cx) {
            Ok(Some(d)) => Poll::Ready(Some(Ok(Frame::data(d)))),
            Ok(None) => Poll::Ready(None),
            Err(Pend::Pending) => Poll::Pending,
            Err(Pend::Err(e)) => {
                // A broken body: the connection cannot be used again.
                this.state = State::Done;
                this.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
