//! A client's request body on its way to the origin, as a state machine the caller
//! polls with the upstream socket: first beside the wait for the answer's head (so an
//! origin that answers before it has read the whole upload is heard at once), then, if
//! the answer came first, beside the answer's body (so an origin that streams its
//! answer while it reads the upload gets the rest of the upload, instead of both sides
//! waiting on full socket buffers). Each part moves within the idle limit or the upload
//! fails: the client's next part (`ClientStalled`), or the origin taking a write
//! (`UploadStalled`). The body goes as it came (Content-Length) or chunked.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::io::AsyncWrite;

use crate::stall::Stall;
use crate::upstream::UpError;

/// What the upload is waiting for, when it waits.
#[derive(Clone, Copy)]
enum Wait {
    /// The client's next part.
    Client,
    /// The origin to take what is written.
    Origin,
}

/// The request body still to send.
pub struct Upload {
    /// The client's body (None once it ended).
    body: Option<UnsyncBoxBody<Bytes, String>>,
    /// Framed bytes not yet written.
    out: VecDeque<Bytes>,
    /// The body goes chunked.
    chunked: bool,
    /// Longest wait for either side.
    stall: Stall,
    /// Everything was written.
    done: bool,
}

impl Upload {
    /// An upload of `body`, chunked or as it came, each wait at most `idle`.
    pub fn new<B>(body: B, chunked: bool, idle: Duration) -> Upload
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let body = body.map_err(|e| e.to_string()).boxed_unsync();
        Upload {
            body: Some(body),
            out: VecDeque::new(),
            chunked,
            stall: Stall::new(idle),
            done: false,
        }
    }

    /// Everything was written.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Move the upload on through `w`: Ready(Ok) once all of it is written.
    pub fn poll<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UpError>> {
        loop {
            if let Some(front) = self.out.front_mut() {
                match Pin::new(&mut *w).poll_write(cx, front) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(UpError::Io(io::ErrorKind::WriteZero.into())))
                    }
                    Poll::Ready(Ok(n)) => {
                        front.advance(n);
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                        self.moved();
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(UpError::Io(e))),
                    Poll::Pending => return self.poll_stall(cx, Wait::Origin),
                }
            }
            let Some(body) = self.body.as_mut() else {
                self.done = true;
                return Poll::Ready(Ok(()));
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Ready(None) => {
                    self.body = None;
                    if self.chunked {
                        self.out.push_back(Bytes::from_static(b"0\r\n\r\n"));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(UpError::ClientBody(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    self.moved();
                    // Trailers are not forwarded.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if self.chunked {
                        self.out
                            .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                        self.out.push_back(data);
                        self.out.push_back(Bytes::from_static(b"\r\n"));
                    } else {
                        self.out.push_back(data);
                    }
                }
                Poll::Pending => return self.poll_stall(cx, Wait::Client),
            }
        }
    }

    /// A part moved: the idle limit starts again.
    fn moved(&mut self) {
        self.stall.moved();
    }

    /// Pending, or the error for waiting on `wait` longer than the idle limit.
    fn poll_stall(&mut self, cx: &mut Context<'_>, wait: Wait) -> Poll<Result<(), UpError>> {
        std::task::ready!(self.stall.poll_expired(cx));
        let idle = self.stall.limit();
        Poll::Ready(Err(match wait {
            Wait::Client => UpError::ClientStalled(idle),
            Wait::Origin => UpError::UploadStalled(idle),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Frame;

    /// A body that hands out `parts`, then waits forever (`hang`) or ends.
    struct Parts {
        parts: VecDeque<Bytes>,
        hang: bool,
    }

    impl Body for Parts {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.parts.pop_front() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None if self.hang => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn parts(items: &[&'static str], hang: bool) -> Parts {
        Parts {
            parts: items
                .iter()
                .map(|s| Bytes::from_static(s.as_bytes()))
                .collect(),
            hang,
        }
    }

    fn run(upload: &mut Upload, out: &mut Vec<u8>) -> Poll<Result<(), UpError>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        upload.poll(out, &mut cx)
    }

    #[tokio::test]
    async fn sized_bodies_go_as_they_are_unknown_ones_chunked() {
        let idle = Duration::from_secs(1);
        let mut out = Vec::new();
        let mut up = Upload::new(parts(&["hel", "lo"], false), false, idle);
        assert!(matches!(run(&mut up, &mut out), Poll::Ready(Ok(()))));
        assert!(up.done());
        assert_eq!(out, b"hello");

        let mut out = Vec::new();
        let mut up = Upload::new(
            parts(&["abc", "", "xxxxxxxxxxxxxxxxxxxx"], false),
            true,
            idle,
        );
        assert!(matches!(run(&mut up, &mut out), Poll::Ready(Ok(()))));
        let want = format!("3\r\nabc\r\n14\r\n{}\r\n0\r\n\r\n", "x".repeat(20));
        assert_eq!(String::from_utf8_lossy(&out), want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_sending_fails_after_the_idle_limit() {
        let mut up = Upload::new(parts(&["abc"], true), true, Duration::from_secs(2));
        let mut out = Vec::new();
        assert!(run(&mut up, &mut out).is_pending());
        assert_eq!(out, b"3\r\nabc\r\n", "what came is sent before the wait");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(run(&mut up, &mut out).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            run(&mut up, &mut out),
            Poll::Ready(Err(UpError::ClientStalled(_)))
        ));
        assert!(!up.done());
    }
}
