//! The proxy's one end-of-request hook: a `RecordGuard` travels with each response (in
//! its body, or in a tunnel's task) and writes the access record when it is dropped —
//! after the last byte, or when the client goes away — for success and failure alike.
//! `Tracked` is the body wrapper that counts bytes on the way (`Counted` without a
//! guard: a request body).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, SizeHint};
use ssq::accessrecord::AccessRecord;

use crate::accesslog::AccessLog;

/// Writes its record when dropped.
pub struct RecordGuard {
    /// The record so far.
    pub rec: AccessRecord,
    /// When the request started.
    start: Instant,
    /// Bytes from the client.
    pub up: Arc<AtomicU64>,
    /// Bytes to the client.
    pub down: Arc<AtomicU64>,
    /// Where it goes.
    log: Arc<AccessLog>,
}

impl RecordGuard {
    /// A guard for a request that started at `start`.
    pub fn new(rec: AccessRecord, start: Instant, log: Arc<AccessLog>) -> Self {
        RecordGuard {
            rec,
            start,
            up: Arc::new(AtomicU64::new(0)),
            down: Arc::new(AtomicU64::new(0)),
            log,
        }
    }
}

impl Drop for RecordGuard {
    fn drop(&mut self) {
        let mut rec = std::mem::take(&mut self.rec);
        rec.bytes_up = self.up.load(Ordering::Relaxed);
        rec.bytes_down = self.down.load(Ordering::Relaxed);
        rec.duration_ms = self.start.elapsed().as_millis() as u64;
        self.log.record(rec);
    }
}

/// A body that counts the bytes of its data frames (a client's request body).
pub struct Counted<B> {
    /// The wrapped body.
    inner: B,
    /// Where the count goes.
    counter: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    /// Count into `counter`.
    pub fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        Counted { inner, counter }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(d) = frame.data_ref() {
                self.counter.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A counted body that carries the record's guard (a response body): the record is
/// written when the body is done or dropped. Its contents (the upstream's body state
/// and the record: most of a kilobyte) sit behind one pointer, so that the response
/// moves as a few words on its way from the upstream to the client's connection.
pub struct Tracked<B> {
    boxed: Box<TrackedParts<B>>,
}

/// What a `Tracked` holds.
struct TrackedParts<B> {
    /// The counted body.
    inner: Counted<B>,
    /// Dropped with the body: the end of the request.
    _guard: Option<RecordGuard>,
}

impl<B> Tracked<B> {
    /// Count into `counter`; write `guard`'s record when the body is done or dropped.
    pub fn new(inner: B, counter: Arc<AtomicU64>, guard: Option<RecordGuard>) -> Self {
        Tracked {
            boxed: Box::new(TrackedParts {
                inner: Counted::new(inner, counter),
                _guard: guard,
            }),
        }
    }
}

impl<B> Tracked<B> {
    /// The body inside, and the counter of the bytes that passed.
    pub fn parts_mut(&mut self) -> (&mut B, &Arc<AtomicU64>) {
        let counted = &mut self.boxed.inner;
        (&mut counted.inner, &counted.counter)
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.boxed.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.boxed.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.boxed.inner.size_hint()
    }
}

/// What the proxy answers with: a page of its own, or the upstream's body.
pub type ProxyBody = Tracked<Either<Full<Bytes>, crate::upbody::UpBody>>;

/// An I/O stream that counts the bytes read from it (a tunnel's two ends), so the
/// record has the real counts however the tunnel ends (closed, reset, timed out).
pub struct CountIo<T> {
    /// The stream.
    inner: T,
    /// Bytes read so far.
    read: Arc<AtomicU64>,
}

impl<T> CountIo<T> {
    /// Count `inner`'s reads into `read`.
    pub fn new(inner: T, read: Arc<AtomicU64>) -> Self {
        CountIo { inner, read }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response is moved several times between the upstream's side and the client's
    /// connection: its body must stay one pointer, whatever the upstream body and the
    /// record grow to.
    #[test]
    fn a_response_body_moves_as_one_pointer() {
        let word = std::mem::size_of::<usize>();
        assert_eq!(std::mem::size_of::<crate::upbody::UpBody>(), word);
        assert_eq!(std::mem::size_of::<ProxyBody>(), word);
        // The head's parts (status, version, the header map, extensions) and that word.
        assert!(std::mem::size_of::<http::Response<ProxyBody>>() <= 128);
    }
}
