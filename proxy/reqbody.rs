//! A client's request body as the proxy forwards it: read from the client's connection
//! only as the upload asks for it, decoded (Content-Length or chunked) by
//! `chunked::Decoder`. The connection's read side and its buffer are lent to the body
//! for the request and taken back by the connection loop afterwards, with whatever
//! followed the body (a pipelined request) still in the buffer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;

use crate::chunked::Decoder;

/// Largest read while a body comes in.
const READ_MAX: usize = 64 * 1024;

/// A client connection's read side: the socket and what was read but not yet used.
pub struct Reader {
    pub rd: OwnedReadHalf,
    pub buf: BytesMut,
}

impl Reader {
    /// Read more into the buffer (at least `want` bytes of room); Ok(0) at the end of
    /// the stream.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.buf.reserve(want);
        let read = self.rd.read_buf(&mut self.buf);
        std::pin::pin!(read).poll(cx)
    }
}

/// The reader and the decoder while a body is lent out.
pub struct Lent {
    /// The reader (taken back by the connection loop).
    pub reader: Option<Reader>,
    decoder: Decoder,
    /// Reading the body failed (the connection cannot be reused).
    pub failed: bool,
}

impl Lent {
    /// The body was read to its end.
    pub fn is_done(&self) -> bool {
        self.decoder.is_done() && !self.failed
    }
}

/// The shared place of a lent reader.
pub type Loan = Arc<Mutex<Lent>>;

/// Lend `reader` to a body framed by `decoder`.
pub fn lend(reader: Reader, decoder: Decoder) -> Loan {
    Arc::new(Mutex::new(Lent {
        reader: Some(reader),
        decoder,
        failed: false,
    }))
}

/// Lock a loan (a panic while it was held leaves a state that is still valid).
pub fn lock(loan: &Loan) -> MutexGuard<'_, Lent> {
    loan.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request's body: empty, or read from the client through a loan.
pub struct ClientBody {
    loan: Option<Loan>,
}

impl ClientBody {
    /// A request without a body.
    pub fn empty() -> ClientBody {
        ClientBody { loan: None }
    }

    /// A body read through `loan`.
    pub fn lent(loan: Loan) -> ClientBody {
        ClientBody { loan: Some(loan) }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some(loan) = &self.loan else {
            return Poll::Ready(None);
        };
        let mut lent = lock(loan);
        let lent = &mut *lent;
        if lent.failed {
            return Poll::Ready(Some(Err(io::Error::other("the request body failed"))));
        }
        let Some(reader) = lent.reader.as_mut() else {
            return Poll::Ready(Some(Err(io::Error::other("the client connection is gone"))));
        };
        loop {
            match lent.decoder.decode(&mut reader.buf) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if lent.decoder.is_done() => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    lent.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let want = lent.decoder.want(READ_MAX).max(1024);
            match std::task::ready!(reader.poll_fill(cx, want)) {
                Ok(0) => {
                    lent.failed = true;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed before the end of its body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    lent.failed = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.loan.as_ref().is_none_or(|l| lock(l).is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match &self.loan {
            None => SizeHint::with_exact(0),
            Some(l) => match lock(l).decoder.exact_left() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
        }
    }
}
