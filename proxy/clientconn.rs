//! One proxy client's connection, served by hand: read a request head within its
//! limits, hand the request to the proxy, write the answer, and go round again while
//! both sides keep the connection alive.
//!
//! - The wait for a head's first byte is bounded by `idle_timeout` (an idle kept-alive
//!   connection); from that byte the whole head must arrive within
//!   `header_read_timeout` (slowloris: 408) and fit in `max_header_bytes` (431).
//!   A malformed head gets 400. Each of these is recorded and closes the connection.
//! - A request body is read only as the proxy forwards it (`reqbody`); one that was not
//!   read to its end (a refused upload) closes the connection after the answer.
//! - The answer's head goes out with its first body bytes in one write when they are
//!   there; the body is framed by its own length when known, else chunked (HTTP/1.1)
//!   or by closing (HTTP/1.0). A client that takes nothing for `idle_timeout` is
//!   dropped.
//! - A CONNECT's 200 is followed by the tunnel on the same socket (`forward::TunnelJob`).
//! - A connection ends with a lingering close: our side is shut for writing, and what
//!   the client still sends is read and dropped for a while (at most
//!   [`LINGER`]), so that a client still uploading gets the answer instead of a reset.
//! - On stop, an idle connection closes at once; a request in flight is finished first.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Method, Request, Version};
use http_body_util::Either;
use hyper::body::Body;
use ssq::policy::EffectiveLimits;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chunked::Decoder;
use crate::connlimit::{Permit, Refused};
use crate::forward::{Proxy, TunnelTo};
use crate::reqbody::{self, ClientBody, Reader};
use crate::reqhead::{self, BodyFraming, ReqHead};
use crate::resphead::{self, Out};
use crate::splice::Relay;
use crate::stall::Stall;
use crate::tracked::ProxyBody;

/// Longest a closing connection reads and drops what its client still sends (nginx's
/// `lingering_time` is 30 s; a client still sending after this is reset).
const LINGER: Duration = Duration::from_secs(5);
/// The least rest of a body worth moving socket to socket rather than copying.
const RELAY_MIN: u64 = 16 * 1024;
/// First read of a head.
const HEAD_READ: usize = 4096;

/// What the client gets when its head is refused (the record says more).
fn bare(status: u16) -> &'static [u8] {
    match status {
        408 => b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        431 => b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        _ => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    }
}

/// Serve a client's connection to its end. `permit`: its place in the connection
/// limits, or which limit it is over (it then gets 429 or 503 and is closed).
pub async fn serve(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    limits: EffectiveLimits,
    permit: Result<Permit, Refused>,
    stopping: watch::Receiver<bool>,
) {
    let (rd, mut wr) = tcp.into_split();
    let mut reader = Reader {
        rd,
        buf: BytesMut::new(),
    };
    let hold = permit.map(Arc::new);
    // A pipe for large bodies, made for the first one.
    let mut relay: Option<Relay> = None;
    let max = usize::try_from(limits.max_header_bytes).unwrap_or(usize::MAX);
    // One timer and one stop watch for the connection's life, not one per request: a
    // later deadline moves the timer without taking the timer wheel's lock.
    let mut timer = std::pin::pin!(tokio::time::sleep(limits.idle_timeout));
    let mut watch = stopping.clone();
    let mut stop = std::pin::pin!(async move {
        let _ = watch.wait_for(|s| *s).await;
    });
    loop {
        let waits = Waits {
            timer: timer.as_mut(),
            stop: stop.as_mut(),
        };
        let head = match read_head(&mut reader, &limits, max, waits).await {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err((status, rule)) => {
                proxy.head_refused(peer, status, rule);
                let _ = send(&mut wr, &[bare(status)], limits.idle_timeout).await;
                Box::pin(linger(reader, wr)).await;
                return;
            }
        };
        let keep = head.keep_alive && hold.is_ok() && !*stopping.borrow();
        let http10 = head.version == Version::HTTP_10;
        let head_req = head.method == Method::HEAD;
        let connect = head.method == Method::CONNECT;
        let expect = head.expect_continue;
        let ambiguous = head.ambiguous;
        let (req, mut loan) = request(head, reader);
        let resp = match &hold {
            Ok(h) => {
                // Pinned where it is made: a future moved into a pinned place takes
                // room in the connection's state twice.
                let mut handling =
                    std::pin::pin!(proxy.clone().handle(peer, ambiguous, h.clone(), req));
                // The go-ahead only for an upload that is to be forwarded: a refused one
                // gets its answer without the client sending its body first.
                if expect && loan.is_err() && handling.is_go() {
                    let go = b"HTTP/1.1 100 Continue\r\n\r\n";
                    if send(&mut wr, &[go], limits.idle_timeout).await.is_err() {
                        return;
                    }
                }
                match &mut loan {
                    // A client that closes while its request waits for the origin has
                    // gone: the request is dropped (its record is written), as hyper
                    // did, instead of running on to the upstream's timeouts.
                    Ok(r) => tokio::select! {
                        biased;
                        resp = handling.as_mut() => resp,
                        // Not with a pipelined request read already: a client may
                        // send its requests and then close its sending side.
                        () = client_gone(r), if r.buf.is_empty() => return,
                    },
                    Err(_) => handling.await,
                }
            }
            Err(which) => proxy.over_limit(peer, *which, req),
        };
        let connect_ok = connect && resp.status().is_success();
        let (mut parts, mut body) = resp.into_parts();
        let out = resphead::framing(
            parts.status,
            head_req,
            connect_ok,
            body.size_hint().exact(),
            http10,
        );
        // Not kept: an answer framed by closing; a CONNECT (a tunnel follows, or the
        // bytes the client sent after a refused one would be read as a request); a
        // page of ours (a refusal, 502, 504) answering a body not all read, whose rest
        // would be taken for the next request. An origin's answer may come while its
        // upload still goes on: whether that ends in time to keep the connection is
        // known only afterwards.
        let ours = matches!(body.parts_mut().0, Either::Left(_));
        let unread = loan
            .as_ref()
            .err()
            .is_some_and(|l| !reqbody::lock(l).is_done());
        let keep = keep && out != Out::Close && !connect && !(ours && unread);
        let mut head = Vec::with_capacity(512);
        // A CONNECT's 200 says nothing of the connection: the tunnel follows.
        let (say_keep, say_10) = (keep || connect_ok, http10 && !connect_ok);
        // An upstream's answer carries its head as it came; a page of ours, a map.
        let raw = match body.parts_mut().0 {
            Either::Right(up) => up.take_head(),
            Either::Left(_) => None,
        };
        resphead::write(
            &mut head,
            parts.status,
            &parts.headers,
            raw.as_ref(),
            out,
            say_keep,
            say_10,
        );
        // Its fields are written: the head's bytes (a slice of the upstream
        // connection's buffer) are let go before that buffer is read into again.
        drop(raw);
        if connect_ok {
            let job = parts.extensions.remove::<TunnelTo>().and_then(|t| t.take());
            if send(&mut wr, &[&head], limits.idle_timeout).await.is_err() {
                return;
            }
            // The tunnel makes its own pipes.
            drop(relay);
            if let (Some(job), Ok(r)) = (job, loan) {
                if let Ok(client) = r.rd.reunite(wr) {
                    Box::pin(job.run(client, &r.buf)).await;
                }
            }
            return;
        }
        let written = write_body(&mut wr, head, body, out, limits.idle_timeout, &mut relay).await;
        // The read side back from the body, if it was lent.
        let (back, body_done) = match loan {
            Ok(r) => (Some(r), true),
            Err(loan) => {
                let mut lent = reqbody::lock(&loan);
                (lent.reader.take(), lent.is_done())
            }
        };
        let Some(r) = back else {
            return;
        };
        reader = r;
        if written.is_err() {
            // A broken answer ends with a reset, not a clean close: a client reading
            // to the end of the connection must not take a cut body for a whole one.
            reset(&wr);
            // Dropped as it is, the write half would send a FIN first.
            wr.forget();
            return;
        }
        if !keep || !body_done {
            Box::pin(linger(reader, wr)).await;
            return;
        }
    }
}

/// The request for `head`, and either the reader (no body: it stays here) or the loan
/// the body reads through until the answer is written.
fn request(head: ReqHead, reader: Reader) -> (Request<ClientBody>, Result<Reader, reqbody::Loan>) {
    let ReqHead {
        method,
        uri,
        version,
        headers,
        body,
        ..
    } = head;
    let (body, loan) = match body {
        BodyFraming::None => (ClientBody::empty(), Ok(reader)),
        BodyFraming::Length(n) => {
            let loan = reqbody::lend(reader, Decoder::length(n));
            (ClientBody::lent(loan.clone()), Err(loan))
        }
        BodyFraming::Chunked => {
            let loan = reqbody::lend(reader, Decoder::chunked_strict());
            (ClientBody::lent(loan.clone()), Err(loan))
        }
    };
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    (req, loan)
}

/// What a wait for a head may end with besides bytes: the connection's timer, and the
/// node stopping.
struct Waits<'a, S> {
    timer: Pin<&'a mut tokio::time::Sleep>,
    stop: Pin<&'a mut S>,
}

/// The next request head; None when the connection ends quietly (closed by the
/// client, idle for `idle_timeout` between requests, or the node stopping while it was
/// idle); Err((status, why)) for a head refused.
async fn read_head<S: std::future::Future<Output = ()>>(
    reader: &mut Reader,
    limits: &EffectiveLimits,
    max: usize,
    mut waits: Waits<'_, S>,
) -> Result<Option<ReqHead>, (u16, String)> {
    // The clock is read only when a wait comes (most heads are whole in their first
    // read): the idle wait counts from then, the head's from its first byte (or the
    // first wait after it, which is the same but for the time to parse). Empty lines
    // before a head (RFC 9112 2.2) do not start it.
    let mut idle_until: Option<Instant> = None;
    // Empty lines before a head are dropped as they come: they neither start the head
    // nor pile up to be scanned again.
    let drop_empty_lines = |buf: &mut BytesMut| {
        let n = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        buf.advance(n);
    };
    drop_empty_lines(&mut reader.buf);
    let mut has_begun = !reader.buf.is_empty();
    let mut started: Option<Instant> = None;
    // How far the buffer was searched for a line's end.
    let mut searched = 0usize;
    loop {
        // Parsed again only when a line ended in the new bytes: a bad request line is
        // refused as soon as it is whole; a head in many small pieces is parsed once
        // per line, not once per piece.
        let new_line = reader.buf[searched.min(reader.buf.len())..].contains(&b'\n');
        searched = reader.buf.len();
        if new_line || reader.buf.len() > max {
            match reqhead::parse(&mut reader.buf, max) {
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(e) => return Err((e.status(), e.to_string())),
            }
        }
        // Most heads are there already: try before making a timer.
        let tried = poll_fn(|cx| Poll::Ready(reader.poll_fill(cx, HEAD_READ))).await;
        let read = match tried {
            Poll::Ready(r) => r,
            Poll::Pending => {
                let deadline = if has_begun {
                    *started.get_or_insert_with(Instant::now) + limits.header_read_timeout
                } else {
                    *idle_until.get_or_insert_with(|| Instant::now() + limits.idle_timeout)
                };
                if waits.timer.deadline() != deadline {
                    waits.timer.as_mut().reset(deadline);
                }
                tokio::select! {
                    biased;
                    r = poll_fn(|cx| reader.poll_fill(cx, HEAD_READ)) => r,
                    () = waits.timer.as_mut() => {
                        return match has_begun {
                            true => Err((408, format!(
                                "header_read_timeout: the request head took longer than {} s",
                                limits.header_read_timeout.as_secs_f64()
                            ))),
                            false => Ok(None),
                        };
                    }
                    () = waits.stop.as_mut(), if !has_begun => return Ok(None),
                }
            }
        };
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {
                if !has_begun {
                    drop_empty_lines(&mut reader.buf);
                    has_begun = !reader.buf.is_empty();
                }
            }
        }
    }
}

/// Move the rest of an origin's body from its socket to the client's without copying
/// it (`splice::Relay`), when that rest is large and comes as it is (a Content-Length
/// body going out with its length). The head goes first if it has not. None when the
/// body is not one to move so; Some(Err) when moving failed (the connection ends).
async fn relay_rest(
    wr: &mut OwnedWriteHalf,
    head: &mut Option<Vec<u8>>,
    body: &mut ProxyBody,
    relay: &mut Option<Relay>,
    idle: Duration,
) -> Option<io::Result<()>> {
    let (inner, count) = body.parts_mut();
    let Either::Right(up) = inner else {
        return None;
    };
    let (src, n) = up.splice_source()?;
    if n < RELAY_MIN {
        return None;
    }
    if relay.is_none() {
        *relay = Relay::new();
    }
    let r = relay.as_mut()?;
    if let Some(h) = head.take() {
        if let Err(e) = send(wr, &[&h], idle).await {
            return Some(Err(e));
        }
    }
    // Boxed: a relay's wait is rare and large; the connection's state stays small.
    match Box::pin(r.run(src, wr.as_ref(), n, count, idle)).await {
        Ok(m) => {
            up.spliced(m);
            Some(Ok(()))
        }
        Err(e) => {
            up.abandon();
            *relay = None;
            Some(Err(e))
        }
    }
}

/// Write the head and the body after it, framed as `out` says.
async fn write_body(
    wr: &mut OwnedWriteHalf,
    head: Vec<u8>,
    mut body: ProxyBody,
    out: Out,
    idle: Duration,
    relay: &mut Option<Relay>,
) -> io::Result<()> {
    let chunked = out == Out::Chunked;
    let mut prefix = [0u8; 18];
    let mut head = Some(head);
    if out == Out::Empty {
        return send(wr, &[&head.unwrap_or_default()], idle).await;
    }
    loop {
        if matches!(out, Out::Length(_)) {
            if let Some(r) = relay_rest(wr, &mut head, &mut body, relay, idle).await {
                r?;
                continue;
            }
        }
        // Whatever the body has now goes with the head, if it is still to go.
        let frame = if head.is_some() {
            match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    let h = head.take().unwrap_or_default();
                    send(wr, &[&h], idle).await?;
                    continue;
                }
            }
        } else {
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        };
        let h = head.take().unwrap_or_default();
        match frame {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    // Trailers are not passed on.
                    send(wr, &[&h], idle).await?;
                    continue;
                };
                if data.is_empty() {
                    send(wr, &[&h], idle).await?;
                } else if chunked {
                    let p = resphead::chunk_prefix(data.len(), &mut prefix);
                    send(wr, &[&h, p, &data, b"\r\n"], idle).await?;
                } else {
                    send(wr, &[&h, &data], idle).await?;
                }
            }
            None => {
                let end: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
                return send(wr, &[&h, end], idle).await;
            }
            Some(Err(e)) => {
                // The answer cannot be finished: the client sees the connection close.
                let _ = send(wr, &[&h], idle).await;
                return Err(io::Error::other(e));
            }
        }
    }
}

/// Write all of `parts`, in order; a client that takes nothing for `idle` fails it.
async fn send(wr: &mut OwnedWriteHalf, parts: &[&[u8]], idle: Duration) -> io::Result<()> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0usize;
    let mut stall = Stall::new(idle);
    poll_fn(|cx| loop {
        if done == total {
            return Poll::Ready(Ok(()));
        }
        let mut slices = [IoSlice::new(&[]); 4];
        let mut n = 0;
        let mut skip = done;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            if n < slices.len() {
                slices[n] = IoSlice::new(&p[skip..]);
                n += 1;
            }
            skip = 0;
        }
        match Pin::new(&mut *wr).poll_write_vectored(cx, &slices[..n]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(w)) => {
                done += w;
                stall.moved();
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                std::task::ready!(stall.poll_expired(cx));
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took nothing for the idle timeout",
                )));
            }
        }
    })
    .await
}

/// Ready when the client has closed its connection (or it failed); pending while
/// it is open, and for good once it has sent more (a pipelined request, left unread).
async fn client_gone(reader: &mut Reader) {
    let mut sent_more = false;
    poll_fn(|cx| {
        if sent_more {
            return Poll::Pending;
        }
        let mut b = [0u8; 1];
        let mut rb = tokio::io::ReadBuf::new(&mut b);
        match reader.rd.poll_peek(cx, &mut rb) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Poll::Ready(()),
            Poll::Ready(Ok(_)) => {
                sent_more = true;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
}

/// Make the close of `wr`'s socket a reset (SO_LINGER of zero); the write half must
/// then be forgotten, not dropped (dropping it shuts it, a clean end).
fn reset(wr: &OwnedWriteHalf) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a `linger` of the size given.
    unsafe {
        libc::setsockopt(
            wr.as_ref().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(l).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Close gently: shut our side for writing (the client sees the end of the answer),
/// then read and drop what the client still sends, until it closes or for at most
/// [`LINGER`], so the close does not reset a connection with unread data (a client
/// that sends its whole body before it reads would fail to send, and never read the
/// answer).
async fn linger(mut reader: Reader, wr: OwnedWriteHalf) {
    drop(wr);
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            reader.buf.clear();
            match poll_fn(|cx| reader.poll_fill(cx, 64 * 1024)).await {
                Ok(n) if n > 0 => {}
                _ => return,
            }
        }
    })
    .await;
}
