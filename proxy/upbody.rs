//! An upstream response body, read from the upstream socket when the client side asks
//! for the next frame: Content-Length or chunked (decoded by `chunked::Decoder`; the
//! client side re-frames it), or delimited by the connection closing. The buffer is
//! bounded, so a large body streams through a few tens of KiB. When the body ends
//! cleanly on a connection that may be kept alive, the connection goes back to the pool
//! (as the body is dropped, with the response's head: its buffer is then free to be
//! read into again, not replaced). An upstream that stops
//! sending mid-body for longer than the stall limit fails the body (the client's
//! connection is closed) instead of holding both connections open forever. When the
//! answer came before the whole request body, the rest of the upload is driven from
//! here too, between reads, on a connection that is then not kept; if it fails there
//! (the client stopped sending, the origin stopped reading), the answer goes on and the
//! failure is told to the caller's hook (the proxy writes it to extended.log).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};

use crate::chunked::Decoder;
use crate::rawhead::RawHead;
use crate::stall::Stall;
use crate::upload::Upload;
use crate::upstream::{Conn, UpError};

/// Told why the rest of an upload failed after the answer had begun.
pub type UploadStopped = Box<dyn FnOnce(&UpError) + Send>;

/// The most read from the upstream socket at once.
const READ_MAX: usize = 64 * 1024;

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

/// Where the body is.
#[derive(Debug)]
enum State {
    /// Framed (Content-Length or chunked).
    Framed(Decoder),
    /// Until the upstream closes.
    Eof,
    /// Finished.
    Done,
}

/// The body of one upstream response, with its head until the client side takes it.
/// Its parts (most of a kilobyte with the head) are behind one pointer: the body
/// moves as one word from the upstream's side, through the response, to the client's
/// connection.
pub struct UpBody {
    b: Box<Parts>,
}

/// What an [`UpBody`] holds.
struct Parts {
    /// The response's head, to be written to the client.
    head: Option<RawHead>,
    /// The connection, until the body is done.
    conn: Option<Conn>,
    /// The connection once the body is done, if it can be kept: it goes back to the
    /// pool when the body is dropped, once the client side has let go of the bytes
    /// read into its buffer, so that the next request on it reads into the same buffer
    /// instead of a new one.
    done: Option<Conn>,
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
    /// Called if that rest fails.
    upload_stopped: Option<UploadStopped>,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("upstream body: {msg}"))
}

impl UpBody {
    /// The body after the head; `buf` holds what was read past the head.
    pub fn new(conn: Conn, buf: BytesMut, framing: Framing) -> UpBody {
        let (state, keep) = match framing {
            Framing::Length(n, keep) => (State::Framed(Decoder::length(n)), keep),
            Framing::Chunked(keep) => (State::Framed(Decoder::chunked()), keep),
            Framing::Eof => (State::Eof, false),
        };
        let mut body = UpBody {
            b: Box::new(Parts {
                head: None,
                conn: Some(conn),
                done: None,
                buf,
                state,
                keep,
                stall: None,
                upload: None,
                upload_stopped: None,
            }),
        };
        // A body of nothing may never be polled: the connection is free at once.
        if body.exact_left() == Some(0) {
            body.finish();
        }
        body
    }

    /// Carry `head`, the response's head, to the client side.
    pub fn with_head(mut self, head: RawHead) -> UpBody {
        self.b.head = Some(head);
        self
    }

    /// The response's head, once (the client side writes it before the body).
    pub fn take_head(&mut self) -> Option<RawHead> {
        self.b.head.take()
    }

    /// Fail the body when the upstream sends nothing for `limit`.
    pub fn with_stall_limit(mut self, limit: Duration) -> UpBody {
        self.b.stall = Some(Stall::new(limit));
        self
    }

    /// Go on sending the rest of the request body (see `upload`) while the answer is
    /// read; the connection is not kept afterwards.
    pub fn with_upload(mut self, upload: Option<Upload>) -> UpBody {
        if upload.is_some() {
            self.b.keep = false;
            self.b.upload = upload;
        }
        self
    }

    /// Whether the rest of the request body is still being sent.
    pub fn uploading(&self) -> bool {
        self.b.upload.is_some()
    }

    /// Call `hook` with the reason if the rest of the request body fails.
    pub fn on_upload_stopped(&mut self, hook: UploadStopped) {
        self.b.upload_stopped = Some(hook);
    }

    /// The upstream socket and the bytes of the body still to come from it, when the
    /// rest may be moved socket to socket by the caller (see [`UpBody::spliced`]): a
    /// Content-Length body with nothing left in the buffer and no upload going on.
    pub fn splice_source(&self) -> Option<(&tokio::net::TcpStream, u64)> {
        let conn = self.b.conn.as_ref()?;
        let n = self.exact_left().filter(|&n| n > 0)?;
        (self.b.buf.is_empty() && self.b.upload.is_none()).then_some((&conn.stream, n))
    }

    /// The bytes still to come, when known (a Content-Length body).
    fn exact_left(&self) -> Option<u64> {
        match &self.b.state {
            State::Framed(d) => d.exact_left(),
            State::Done => Some(0),
            State::Eof => None,
        }
    }

    /// `n` more bytes of the body were moved from the socket by the caller; at the end
    /// the connection goes back to the pool.
    pub fn spliced(&mut self, n: u64) {
        if let State::Framed(d) = &mut self.b.state {
            d.consumed(n);
            if d.is_done() {
                self.finish();
            }
        }
    }

    /// The caller's move failed: the body is over and the connection not reused.
    pub fn abandon(&mut self) {
        self.b.state = State::Done;
        self.b.conn = None;
    }

    /// Move the rest of the upload on, if there is one. Once it fails (the client or
    /// the origin stopped), it is dropped, and the hook told why: the answer still
    /// goes to the client.
    fn poll_upload(&mut self, cx: &mut Context<'_>) {
        let Some(up) = self.b.upload.as_mut() else {
            return;
        };
        // (With the connection gone, the answer is over: what the origin did not take
        // it did not want.)
        let done = match self.b.conn.as_mut() {
            Some(conn) => match up.poll(&mut conn.stream, cx) {
                Poll::Pending => return,
                Poll::Ready(r) => r,
            },
            None => Ok(()),
        };
        // The answer's stall limit counts from its next wait (see `poll_fill`).
        self.b.upload = None;
        if let (Err(e), Some(hook)) = (done, self.b.upload_stopped.take()) {
            hook(&e);
        }
    }

    /// The body ended cleanly: the connection goes back to the pool, if it can, when
    /// the body is dropped.
    fn finish(&mut self) {
        self.b.state = State::Done;
        if let Some(mut conn) = self.b.conn.take() {
            // Bytes past the end mean the upstream said more than it framed.
            if self.b.keep && self.b.buf.is_empty() {
                conn.buf = std::mem::take(&mut self.b.buf);
                self.b.done = Some(conn);
            }
        }
        self.b.buf = BytesMut::new();
    }

    /// Read more into the buffer; Ok(0) at the upstream's end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let Parts {
            conn,
            buf,
            stall,
            upload,
            ..
        } = &mut *self.b;
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

    /// Read more into the buffer; 0 at the upstream's end of stream.
    fn fill(&mut self, cx: &mut Context<'_>, want: usize) -> Result<usize, Pend> {
        match self.poll_fill(cx, want) {
            Poll::Pending => Err(Pend::Pending),
            Poll::Ready(r) => Ok(r?),
        }
    }

    /// The next piece of data; None at the end.
    fn step(&mut self, cx: &mut Context<'_>) -> Result<Option<Bytes>, Pend> {
        loop {
            let want = match &mut self.b.state {
                State::Done => return Ok(None),
                State::Framed(d) => {
                    let data = d.decode(&mut self.b.buf).map_err(|e| bad(&e.to_string()))?;
                    // The client side stops asking once the length is reached: the body
                    // is done now (its connection kept for the pool).
                    if d.is_done() {
                        self.finish();
                        return Ok(data);
                    }
                    if data.is_some() {
                        return Ok(data);
                    }
                    d.want(READ_MAX)
                }
                State::Eof => {
                    if !self.b.buf.is_empty() {
                        return Ok(Some(self.b.buf.split().freeze()));
                    }
                    READ_MAX
                }
            };
            if self.fill(cx, want)? == 0 {
                if matches!(self.b.state, State::Eof) {
                    self.b.state = State::Done;
                    self.b.conn = None;
                    return Ok(None);
                }
                return Err(Pend::Err(bad("the upstream closed before the end")));
            }
        }
    }
}

impl Drop for UpBody {
    fn drop(&mut self) {
        if let Some(conn) = self.b.done.take() {
            conn.release();
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
                this.b.state = State::Done;
                this.b.conn = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.exact_left() == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_left() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
