//! The proxy's HTTP/1.1 client to origin servers: a pool of kept-alive upstream
//! connections, the request written in origin-form, and the response head read and
//! checked (RFC 9112). The request body is sent (`upload::Upload`) while the answer's
//! head is awaited, so an origin that answers early is heard at once. The response
//! body is read by `upbody::UpBody` in the task that serves the client, straight from
//! the upstream socket into one bounded buffer: no connection task, no channel and no
//! buffer that grows with the body, so a request costs little CPU and a connection
//! little memory.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, StatusCode, Version};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::rawhead::{Kind, RawHead};
use crate::upbody::{Framing, UpBody};
use crate::upload::Upload;

/// Idle upstream connections kept per origin address.
const MAX_IDLE_PER_ADDR: usize = 256;
/// An idle upstream connection is closed after this long.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// A response head larger than this is refused (502).
const MAX_HEAD: usize = 64 * 1024;
/// How long an origin that broke off a request body is given to send its answer.
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// The first read of a response: most heads, and small bodies with them, fit.
pub const FIRST_READ: usize = 8 * 1024;
/// Addresses of one name tried at most, in order, when connecting fails.
pub const MAX_ADDRS: usize = 3;

/// Why an upstream exchange failed, before any of the response reached the client.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The TCP connection could not be made.
    #[error("{0}")]
    Connect(io::Error),
    /// The TCP connection was not made within the connect timeout.
    #[error("connecting timed out")]
    ConnectTimeout,
    /// Writing the request or reading the response head failed.
    #[error("{0}")]
    Io(io::Error),
    /// The request body from the client failed.
    #[error("the client's request body failed: {0}")]
    ClientBody(String),
    /// The connection closed before a response head.
    #[error("the connection closed before a response")]
    Closed,
    /// The request was sent but no response head came within the idle timeout.
    #[error("no answer within {} s", .0.as_secs_f64())]
    AnswerTimeout(Duration),
    /// The client sent no part of its request body for the idle timeout.
    #[error("the client sent no part of its request body for {} s", .0.as_secs_f64())]
    ClientStalled(Duration),
    /// The upstream took no part of the request for the idle timeout.
    #[error("the upstream took no part of the request for {} s", .0.as_secs_f64())]
    UploadStalled(Duration),
    /// The response is not valid HTTP/1.x.
    #[error("invalid response: {0}")]
    Invalid(String),
}

/// The request to send: head fields already rewritten by the proxy.
pub struct Outgoing<'a> {
    /// Method.
    pub method: &'a Method,
    /// Origin-form target (`/path?query`).
    pub target: &'a str,
    /// Headers to send (hop-by-hop already removed).
    pub headers: &'a HeaderMap,
}

/// A request ready to send: its head already serialized, so the client's parsed head
/// (whose header values are slices of the client connection's read buffer) can be
/// dropped before any waiting, and that buffer is reused instead of another being
/// allocated per request.
pub struct Prepared {
    /// The serialized head, framing header included.
    head: Vec<u8>,
    /// Idempotent (RFC 9110 9.2.2): may be resent on a fresh connection.
    idempotent: bool,
    /// A HEAD request: its response has no body whatever it says.
    head_req: bool,
    /// The request has no body.
    no_body: bool,
    /// The body goes chunked (its length is not known).
    chunked: bool,
}

impl Prepared {
    /// Serialize `req`, whose body is `body`.
    pub fn new<B: Body>(req: &Outgoing<'_>, body: &B) -> Prepared {
        let no_body = body.is_end_stream();
        let chunked = !no_body && body.size_hint().exact().is_none();
        Prepared {
            head: request_head(req, chunked),
            idempotent: req.method.is_idempotent(),
            head_req: req.method == Method::HEAD,
            no_body,
            chunked,
        }
    }
}

/// An idle connection: its socket, its read buffer (kept so the next response on it
/// needs no new allocation), its answer timer, and since when it is idle.
struct Idle {
    stream: TcpStream,
    buf: BytesMut,
    timer: Option<AnswerTimer>,
    since: Instant,
}

/// The timer that bounds the wait for each answer on one connection: made once, and
/// for each request moved to its new deadline, which for a later deadline takes no
/// lock on the timer wheel (a timer made and dropped per request takes it twice).
type AnswerTimer = Pin<Box<tokio::time::Sleep>>;

/// Idle connections by origin address.
type IdleMap = HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>;

/// The pool of kept-alive upstream connections.
pub struct Upstream {
    /// Idle connections, the most recently used last: one map per worker thread
    /// (`workers::shard`), so that a connection is reused on the thread whose poller
    /// it is registered with, and no two threads take the same lock.
    idle: Box<[Mutex<IdleMap>]>,
}

/// One shard's map, locked. A panic while holding the lock leaves a map that is still
/// valid.
fn lock(shard: &Mutex<IdleMap>) -> std::sync::MutexGuard<'_, IdleMap> {
    shard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A checked-out upstream connection.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    /// Its read buffer, between responses.
    pub buf: BytesMut,
    /// Where it goes.
    addr: SocketAddr,
    /// Taken from the pool (so it may have been closed by the peer meanwhile).
    reused: bool,
    /// Where it goes back when its response is done.
    pool: Arc<Upstream>,
    /// Bounds the wait for an answer (made at the first).
    timer: Option<AnswerTimer>,
}

impl Conn {
    /// Back to the pool, for the next request to the same origin.
    pub fn release(self) {
        let kept = Idle {
            stream: self.stream,
            buf: self.buf,
            timer: self.timer,
            since: Instant::now(),
        };
        self.pool.put(self.addr, kept);
    }
}

/// `timer` (made if there is none) set to run out at `deadline`.
fn answer_timer(
    timer: &mut Option<AnswerTimer>,
    deadline: tokio::time::Instant,
) -> Pin<&mut tokio::time::Sleep> {
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if t.deadline() != deadline {
        t.as_mut().reset(deadline);
    }
    t.as_mut()
}

impl Upstream {
    /// A pool for `workers` worker threads (and the threads off them), with a task that
    /// closes connections idle for longer than 30 s (and so frees their sockets) even
    /// when no request comes. Needs a Tokio runtime.
    pub fn new(workers: usize) -> Arc<Upstream> {
        let pool = Arc::new(Upstream {
            idle: (0..=workers).map(|_| Mutex::default()).collect(),
        });
        let weak: Weak<Upstream> = Arc::downgrade(&pool);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.sweep();
            }
        });
        pool
    }

    /// This thread's map of idle connections.
    fn lock(&self) -> std::sync::MutexGuard<'_, IdleMap> {
        lock(&self.idle[crate::workers::shard() % self.idle.len()])
    }

    /// Close the connections idle for too long.
    fn sweep(&self) {
        for shard in &self.idle {
            let stale: Vec<Idle> = {
                let mut idle = lock(shard);
                let mut out = Vec::new();
                idle.retain(|_, v| {
                    let (keep, drop): (Vec<_>, Vec<_>) =
                        v.drain(..).partition(|i| i.since.elapsed() < IDLE_FOR);
                    *v = keep;
                    out.extend(drop);
                    !v.is_empty()
                });
                if idle.is_empty() {
                    idle.shrink_to_fit();
                }
                out
            };
            drop(stale);
        }
    }

    fn put(&self, addr: SocketAddr, mut kept: Idle) {
        // A buffer grown for a large body is not kept while idle.
        if kept.buf.capacity() > 2 * FIRST_READ {
            kept.buf = BytesMut::new();
        }
        kept.buf.clear();
        let mut idle = self.lock();
        let v = idle.entry(addr).or_default();
        if v.len() < MAX_IDLE_PER_ADDR {
            v.push(kept);
        }
    }

    /// The most recently used idle connection to `addr` that is still usable.
    fn take(&self, addr: SocketAddr) -> Option<Idle> {
        loop {
            let kept = self.lock().get_mut(&addr)?.pop()?;
            if kept.since.elapsed() < IDLE_FOR && still_usable(&kept.stream) {
                return Some(kept);
            }
        }
    }

    /// A kept-alive connection to the first of `addrs` (unless `fresh`), or a new one
    /// to the first of them that takes it. (Only the first: a connection to another
    /// address is made only when the ones before it failed.)
    async fn connect(
        self: &Arc<Self>,
        addrs: &[SocketAddr],
        fresh: bool,
        timeout: Duration,
    ) -> Result<Conn, UpError> {
        if let Some(&addr) = addrs.first().filter(|_| !fresh) {
            if let Some(kept) = self.take(addr) {
                return Ok(Conn {
                    stream: kept.stream,
                    buf: kept.buf,
                    addr,
                    reused: true,
                    pool: self.clone(),
                    timer: kept.timer,
                });
            }
        }
        let (stream, addr) = Box::pin(connect_first(addrs, timeout)).await?;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            addr,
            reused: false,
            pool: self.clone(),
            timer: None,
        })
    }

    /// Send `req` (with `body`) to the first of `addrs` that takes a connection (see
    /// [`connect_first`]) and read the response head. A kept-alive connection that
    /// turns out to be closed is replaced once by a new one when the request had no
    /// body (nothing of it can have been used).
    ///
    /// `idle` bounds each wait, not the whole: sending (a long upload takes as long as
    /// it takes while it moves; one that stops moving for `idle` fails), then the
    /// answer's head (it must come within `idle` of the request being sent). `used` is
    /// set to the address a connection was made to, whatever happens after.
    ///
    /// # Errors
    /// See [`UpError`].
    pub async fn send<B>(
        self: &Arc<Self>,
        addrs: &[SocketAddr],
        req: Prepared,
        body: B,
        connect_timeout: Duration,
        idle: Duration,
        used: &mut Option<SocketAddr>,
    ) -> Result<(RawHead, UpBody), UpError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let Prepared {
            head,
            idempotent,
            head_req,
            no_body,
            chunked,
        } = req;
        let mut body = Some(body);
        let mut fresh = false;
        loop {
            let mut conn = self.connect(addrs, fresh, connect_timeout).await?;
            *used = Some(conn.addr);
            // Only a request the origin cannot have acted on is sent again: no body, an
            // idempotent method (RFC 9110 9.2.2), on a connection that was idle.
            let retry_ok = conn.reused && no_body && idempotent;
            let buf = std::mem::take(&mut conn.buf);
            let sent = write_within(&mut conn.stream, &head, idle).await;
            let upload = body
                .take()
                .filter(|_| !no_body)
                .map(|b| Upload::new(b, chunked, idle));
            let r = match (sent, upload) {
                // The origin may have answered and closed before taking even the head
                // (it refuses every upload): its answer, if one came, is what the
                // client gets.
                (Err(e @ (UpError::Io(_) | UpError::UploadStalled(_))), Some(_)) => {
                    Box::pin(early_answer(&mut conn.stream, buf, head_req, e)).await
                }
                (Err(e), _) => Err(e),
                (Ok(()), None) => {
                    let deadline = tokio::time::Instant::now() + idle;
                    let timer = answer_timer(&mut conn.timer, deadline);
                    tokio::select! {
                        biased;
                        r = read_head(&mut conn.stream, buf, head_req) => {
                            r.map(|(h, b, f)| (h, b, f, None))
                        }
                        () = timer => Err(UpError::AnswerTimeout(idle)),
                    }
                }
                (Ok(()), Some(upload)) => {
                    Box::pin(upload_and_answer(
                        &mut conn.stream,
                        upload,
                        buf,
                        head_req,
                        idle,
                    ))
                    .await
                }
            };
            match r {
                Ok((head, buf, framing, upload)) => {
                    let body = UpBody::new(conn, buf, framing);
                    return Ok((head, body.with_upload(upload)));
                }
                Err(e) if retry_ok && stale(&e) => {
                    fresh = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The answer of an origin that broke off the request (`e`: how), if one comes within
/// [`EARLY_ANSWER_WAIT`], on a connection that is not kept; otherwise `e`.
async fn early_answer(
    stream: &mut TcpStream,
    buf: BytesMut,
    head_req: bool,
    e: UpError,
) -> Result<Answered, UpError> {
    match tokio::time::timeout(EARLY_ANSWER_WAIT, read_head(stream, buf, head_req)).await {
        Ok(Ok((head, buf, framing))) => Ok((head, buf, framing.closing(), None)),
        _ => Err(e),
    }
}

/// What [`upload_and_answer`] gives: the answer's head, the bytes read past it, its
/// framing, and the rest of the upload when the answer came before all of it.
type Answered = (RawHead, BytesMut, Framing, Option<Upload>);

/// Send the request body while waiting for the answer's head: whichever comes first,
/// the other goes on. An answer that comes first (an origin that answers early, or
/// streams its answer while it reads) is returned with the rest of the upload, on a
/// connection that is not kept. When the upload fails (the origin closed, or stopped
/// reading), the origin's answer, if one comes within [`EARLY_ANSWER_WAIT`], is what
/// the client gets; otherwise the upload's error. Once the upload is done, the answer
/// must come within `idle`.
async fn upload_and_answer(
    stream: &mut TcpStream,
    upload: Upload,
    buf: BytesMut,
    head_req: bool,
    idle: Duration,
) -> Result<Answered, UpError> {
    let (mut rd, mut wr) = stream.split();
    let mut reading = std::pin::pin!(read_head(&mut rd, buf, head_req));
    let mut upload = Some(upload);
    let mut failed: Option<UpError> = None;
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Some(up) = upload.as_mut().filter(|u| !u.done()) {
            match up.poll(&mut wr, cx) {
                Poll::Ready(Ok(())) => deadline = Some(Box::pin(tokio::time::sleep(idle))),
                // The client's own failures are answered to the client, unless the
                // origin's answer is there already.
                Poll::Ready(Err(e @ (UpError::ClientStalled(_) | UpError::ClientBody(_)))) => {
                    return match reading.as_mut().poll(cx) {
                        Poll::Ready(Ok((head, buf, framing))) => {
                            Poll::Ready(Ok((head, buf, framing.closing(), None)))
                        }
                        _ => Poll::Ready(Err(e)),
                    };
                }
                Poll::Ready(Err(e)) => {
                    upload = None;
                    failed = Some(e);
                    deadline = Some(Box::pin(tokio::time::sleep(EARLY_ANSWER_WAIT)));
                }
                Poll::Pending => {}
            }
        }
        if let Poll::Ready(r) = reading.as_mut().poll(cx) {
            let (head, buf, framing) = match r {
                Ok(answer) => answer,
                Err(e) => return Poll::Ready(Err(failed.take().unwrap_or(e))),
            };
            // The answer came before the whole upload (or the upload failed): the
            // connection is not kept.
            let rest = upload.take().filter(|u| !u.done());
            let whole = rest.is_none() && failed.is_none();
            let framing = if whole { framing } else { framing.closing() };
            return Poll::Ready(Ok((head, buf, framing, rest)));
        }
        match deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Err(failed.take().unwrap_or(UpError::AnswerTimeout(idle))))
            }
            _ => Poll::Pending,
        }
    })
    .await
}

/// A new connection to the first of `addrs` (at most [`MAX_ADDRS`] are tried, in
/// order) that takes one within `timeout`: a name whose first address is down still
/// works. The error is the last address's.
///
/// # Errors
/// [`UpError::Connect`] or [`UpError::ConnectTimeout`].
pub async fn connect_first(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), UpError> {
    let mut last = UpError::Connect(io::Error::new(
        io::ErrorKind::NotFound,
        "no address to connect to",
    ));
    for &addr in addrs.iter().take(MAX_ADDRS) {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(e)) => last = UpError::Connect(e),
            Err(_) => last = UpError::ConnectTimeout,
        }
    }
    Err(last)
}

/// Whether an idle connection can carry a request: nothing arrived on it since its last
/// response (no FIN from an origin that timed it out, no stray bytes such as a 408 or
/// more than the response framed). Free when the runtime has seen no event on the
/// socket; otherwise one non-blocking read tells.
fn still_usable(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        std::task::Poll::Pending => true,
        std::task::Poll::Ready(Err(_)) => false,
        std::task::Poll::Ready(Ok(())) => {
            let mut byte = [0u8; 1];
            matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

/// Whether `e` is what a kept-alive connection closed by the peer looks like (before
/// any byte of a response arrived).
fn stale(e: &UpError) -> bool {
    match e {
        UpError::Closed => true,
        UpError::Io(e) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
        ),
        _ => false,
    }
}

/// `METHOD target HTTP/1.1`, the headers, and the framing of the body.
fn request_head(req: &Outgoing<'_>, chunked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + req.headers.len() * 32);
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Write all of `data`; failing with [`UpError::UploadStalled`] when the upstream takes
/// none of it for `idle`.
async fn write_within(stream: &mut TcpStream, data: &[u8], idle: Duration) -> Result<(), UpError> {
    let mut rest = data;
    // Tried first without a timer (no clock read): the socket mostly takes a head whole.
    match stream.try_write(rest) {
        Ok(0) if !rest.is_empty() => return Err(UpError::Io(io::ErrorKind::WriteZero.into())),
        Ok(n) => rest = &rest[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(UpError::Io(e)),
    }
    while !rest.is_empty() {
        match tokio::time::timeout(idle, stream.write(rest)).await {
            Err(_) => return Err(UpError::UploadStalled(idle)),
            Ok(Err(e)) => return Err(UpError::Io(e)),
            Ok(Ok(0)) => return Err(UpError::Io(io::ErrorKind::WriteZero.into())),
            Ok(Ok(n)) => rest = &rest[n..],
        }
    }
    Ok(())
}

/// Read from `stream` into `buf` (at least `room` bytes of space); 0 at the end.
async fn read_some<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    room: usize,
) -> io::Result<usize> {
    buf.reserve(room);
    // `poll_read` underneath: a short read marks the socket drained, so the next read
    // waits for it rather than trying it first.
    stream.read_buf(buf).await
}

/// Read and parse the response head (skipping 1xx interim responses) into `buf`;
/// returns the head, the bytes read past it, and how the body is framed.
async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    mut buf: BytesMut,
    head_req: bool,
) -> Result<(RawHead, BytesMut, Framing), UpError> {
    buf.clear();
    // Once any byte of a response came, a failure is not a stale connection: the
    // request reached the origin.
    let mut got_any = false;
    loop {
        if let Some(head) = parse_head(&mut buf)? {
            if head.status.is_informational() {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(UpError::Invalid(
                        "101 Switching Protocols to a request without Upgrade".into(),
                    ));
                }
                continue;
            }
            // (A Content-Length beside Transfer-Encoding is read past, RFC 9112 6.3:
            // the body is read as chunked, and the length never reaches the client.)
            let framing = framing(&head, head_req)?;
            return Ok((head, buf, framing));
        }
        if buf.len() >= MAX_HEAD {
            return Err(UpError::Invalid(format!(
                "response head larger than {} KiB",
                MAX_HEAD / 1024
            )));
        }
        let room = FIRST_READ.max(buf.len());
        let n = match read_some(stream, &mut buf, room).await {
            Ok(n) => n,
            Err(e) if got_any => {
                return Err(UpError::Invalid(format!("reading the response head: {e}")))
            }
            Err(e) => return Err(UpError::Io(e)),
        };
        if n == 0 {
            return Err(if got_any {
                UpError::Invalid("the connection closed inside the response head".into())
            } else {
                UpError::Closed
            });
        }
        got_any = true;
    }
}

/// The complete head at the start of `buf`, taken off it (None when more is
/// needed), as its bytes: see `rawhead`.
fn parse_head(buf: &mut BytesMut) -> Result<Option<RawHead>, UpError> {
    RawHead::parse(buf).map_err(|e| UpError::Invalid(e.to_string()))
}

/// How the response body is delimited (RFC 9112 6.3), and whether the connection can
/// carry another request afterwards.
fn framing(head: &RawHead, head_req: bool) -> Result<Framing, UpError> {
    let mut keep = if head.version == Version::HTTP_10 {
        head.tokens(Kind::Connection)
            .any(|t| t.eq_ignore_ascii_case("keep-alive"))
    } else {
        !head
            .tokens(Kind::Connection)
            .any(|t| t.eq_ignore_ascii_case("close"))
    };
    let status = head.status.as_u16();
    if head_req || status == 204 || status == 304 {
        return Ok(Framing::Length(0, keep));
    }
    if let Some(last) = head.tokens(Kind::TransferEncoding).last() {
        // With Content-Length as well, the response is suspect: read it as chunked and
        // do not reuse the connection.
        if head.has(Kind::ContentLength) {
            keep = false;
        }
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked(keep)
        } else {
            Framing::Eof
        });
    }
    let mut length: Option<u64> = None;
    for v in head.values(Kind::ContentLength) {
        for part in std::str::from_utf8(v).unwrap_or("x").split(',') {
            let part = part.trim();
            let n = if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse::<u64>().ok()
            } else {
                None
            };
            let n = n.ok_or_else(|| UpError::Invalid(format!("bad Content-Length {part:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(UpError::Invalid("two different Content-Lengths".into()));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => Framing::Length(n, keep),
        None => Framing::Eof,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(text: &str) -> RawHead {
        let mut buf = BytesMut::from(text);
        match parse_head(&mut buf) {
            Ok(Some(h)) => {
                assert!(buf.is_empty(), "the whole head is taken off the buffer");
                h
            }
            Ok(None) => panic!("a partial head: {text:?}"),
            Err(e) => panic!("not a head: {e}"),
        }
    }

    #[test]
    fn values_stay_with_their_names_in_order() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-B: two\r\nSet-Cookie: c=3\r\nServer: s\r\n\r\nBODY",
        );
        let h = match parse_head(&mut buf) {
            Ok(Some(h)) => h,
            _ => panic!("a whole head"),
        };
        assert_eq!(&buf[..], b"BODY");
        let mut out = Vec::new();
        h.write_fields(&mut out, false);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Set-Cookie: a=1\r\nX-B: two\r\nSet-Cookie: c=3\r\nServer: s\r\n"
        );
    }

    #[test]
    fn heads_parse_and_frame() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n");
        assert_eq!(h.status, StatusCode::OK);
        assert!(matches!(framing(&h, false), Ok(Framing::Length(5, true))));
        assert!(matches!(framing(&h, true), Ok(Framing::Length(0, true))));
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
        );
        assert!(matches!(framing(&h, false), Ok(Framing::Chunked(false))));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
        assert!(matches!(framing(&h, false), Ok(Framing::Chunked(false))));
        let h = head("HTTP/1.0 200 OK\r\n\r\n");
        assert!(matches!(framing(&h, false), Ok(Framing::Eof)));
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n");
        assert!(matches!(framing(&h, false), Ok(Framing::Length(0, true))));
        let h = head("HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n");
        assert!(matches!(framing(&h, false), Ok(Framing::Length(0, true))));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert!(framing(&h, false).is_err());
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n");
        assert!(matches!(framing(&h, false), Ok(Framing::Length(5, true))));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n");
        assert!(framing(&h, false).is_err());
    }

    #[test]
    fn partial_and_bad_heads() {
        let text = "HTTP/1.1 200 OK\r\nA: b\r\n";
        let mut partial = BytesMut::from(text);
        assert!(matches!(parse_head(&mut partial), Ok(None)));
        assert_eq!(
            &partial[..],
            text.as_bytes(),
            "a partial head stays in the buffer"
        );
        assert!(parse_head(&mut BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n")).is_err());
        assert!(parse_head(&mut BytesMut::from("HTTP/1.1 2000 OK\r\n\r\n")).is_err());
    }

    #[test]
    fn request_heads_are_origin_form() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example.com"));
        let out = request_head(
            &Outgoing {
                method: &Method::POST,
                target: "/a?b=c",
                headers: &h,
            },
            true,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /a?b=c HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }
}
