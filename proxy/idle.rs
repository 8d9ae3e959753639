//! The idle timeout of a client connection: an I/O wrapper that fails a read with
//! `TimedOut` once neither a read nor a write has happened for the limit (between
//! requests on a keep-alive connection, or in a quiet tunnel). Activity costs one clock
//! read; the timer is only re-armed when it fires early. Time spent waiting for an
//! upstream's answer is not idle: the handler holds a `Waiting` guard meanwhile, so a
//! slow origin gets its 504 rather than a dropped client connection.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `T` with an idle timeout.
pub struct IdleIo<T> {
    /// The stream.
    inner: T,
    /// The limit.
    idle: Duration,
    /// Last read or write.
    last: Instant,
    /// Fires at `last + idle` (or earlier; then re-armed).
    timer: Pin<Box<Sleep>>,
    /// Requests on this connection waiting for their answer.
    waiting: Arc<AtomicUsize>,
}

/// Held while a request waits for its answer: the connection is not idle meanwhile.
pub struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    /// Count one request as waiting on the connection of `counter`.
    pub fn enter(counter: &Arc<AtomicUsize>) -> Waiting {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> IdleIo<T> {
    /// Wrap `inner` with an idle limit.
    pub fn new(inner: T, idle: Duration) -> Self {
        let now = Instant::now();
        IdleIo {
            inner,
            idle,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The stream (after an upgrade, for a tunnel that keeps its own idle limit).
    pub fn into_inner(self) -> T {
        self.inner
    }

    /// The counter a `Waiting` guard takes.
    pub fn waiting(&self) -> Arc<AtomicUsize> {
        self.waiting.clone()
    }

    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Ready(Err) once idle for the limit.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if self.waiting.load(Ordering::Relaxed) > 0 {
                self.touch();
            }
            let due = self.last + self.idle;
            if Instant::now() >= due {
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
            }
            self.timer.as_mut().reset(due);
        }
    }
}

use std::future::Future;

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
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
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test(start_paused = true)]
    async fn quiet_reads_time_out_and_activity_extends() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a, Duration::from_secs(5));
        tokio::io::AsyncWriteExt::write_all(&mut b, b"x")
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        io.read_exact(&mut buf).await.unwrap();
        tokio::time::advance(Duration::from_secs(4)).await;
        tokio::io::AsyncWriteExt::write_all(&mut b, b"y")
            .await
            .unwrap();
        io.read_exact(&mut buf).await.unwrap();
        let e = io.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_its_answer_is_not_idle() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = IdleIo::new(a, Duration::from_secs(5));
        let waiting = Waiting::enter(&io.waiting());
        let mut buf = [0u8; 1];
        let quiet = tokio::time::timeout(Duration::from_secs(12), io.read_exact(&mut buf)).await;
        assert!(quiet.is_err(), "timed out while a request was waiting");
        drop(waiting);
        tokio::io::AsyncWriteExt::write_all(&mut b, b"x")
            .await
            .unwrap();
        io.read_exact(&mut buf).await.unwrap();
        let e = io.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
