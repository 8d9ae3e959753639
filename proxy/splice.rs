//! A CONNECT tunnel's bytes moved between the two sockets without passing through user
//! space: each direction is `splice(2)`d from its source socket into a pipe of its own
//! and from the pipe into the other socket. The kernel hands the data's pages on
//! instead of copying them twice through a buffer. A tunnel with nothing in flight
//! holds no buffer (an empty pipe keeps no pages), where a copying tunnel keeps two of
//! 8 KiB; a stalled one (a reader that stopped) holds up to 64 KiB per direction in its
//! pipe, kernel memory that RSS does not show, where a copying one holds 8 KiB.
//! An end of stream on one side is passed on as a half close, like
//! `tokio::io::copy_bidirectional`; the tunnel ends when both directions have ended,
//! when either socket fails, or when nothing has moved either way for the idle limit.
//! Pipes cost descriptors, four per tunnel: at most a budget of tunnels (a sixteenth
//! of the descriptor limit, so a quarter of the descriptors) holds them; past it,
//! tunnels copy as before. The rest of a large response body goes the same way, from
//! the origin's socket to the client's ([`Relay`], one pipe kept by a client connection
//! from its first such body on), within a budget of its own of the same count (an
//! eighth of the descriptors); past it, bodies are copied. A relay's pipe is enlarged
//! to 128 KiB when a budget of such pipes has room (half of the kernel's per-user soft
//! limit on pipe pages, `fs.pipe-user-pages-soft`, or of its default where it is 0:
//! 256 pipes with 4 KiB pages), so that one splice moves up to 128 KiB, not 64 (a body
//! that has all come in large pieces, as on loopback, goes through in one splice each
//! way). Where the kernel refuses (past its limits), the pipe stays as it was made.
//!
//! Known limits: TCP urgent data (`MSG_OOB`, which neither TLS nor HTTP uses) stops a
//! splice at its mark, so such a tunnel stalls there until the idle limit. Past the
//! kernel's `fs.pipe-user-pages-soft` (for a user without CAP_SYS_RESOURCE), new pipes
//! are small: those tunnels still work, with more system calls per byte.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::stall::Stall;

/// The most moved by one splice call of a tunnel, or of a relay whose pipe was not
/// enlarged (a pipe's default capacity).
const STEP: usize = 64 * 1024;
/// A relay's pipe, when the budget of large pipes has room.
const RELAY_PIPE: usize = 128 * 1024;
/// Splice calls a relay makes in one poll (up to 1 MiB moved, 2 MiB through an
/// enlarged pipe) before it yields.
const YIELD_STEPS: usize = 33;

/// Tunnels that may hold pipes at once (four descriptors each, on top of their two
/// sockets). Past it, tunnels copy instead, so pipes take at most a bounded share of
/// the descriptors. Set from the descriptor limit at start ([`set_budget`]).
static BUDGET: AtomicUsize = AtomicUsize::new(256);
/// Tunnels holding pipes now.
static IN_USE: AtomicUsize = AtomicUsize::new(0);
/// Client connections holding a relay's pipe now (a budget of their own, of the same
/// size: a relay's two descriptors are half a tunnel's four, and idle kept-alive
/// connections holding relays must not leave tunnels without pipes).
static RELAYS_IN_USE: AtomicUsize = AtomicUsize::new(0);
/// Relays whose pipe may be enlarged to [`RELAY_PIPE`] at once ([`large_relays`]).
static LARGE_BUDGET: AtomicUsize = AtomicUsize::new(256);
/// Relays holding an enlarged pipe now.
static LARGE_IN_USE: AtomicUsize = AtomicUsize::new(0);

/// Let at most `tunnels` tunnels hold pipes at once (and as many relays).
/// Also reads the kernel's soft limit on pipe pages to size the budget of enlarged
/// relay pipes.
pub fn set_budget(tunnels: usize) {
    BUDGET.store(tunnels, Ordering::Relaxed);
    let soft = std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok());
    // SAFETY: sysconf only reads a system value.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    LARGE_BUDGET.store(large_relays(soft, page), Ordering::Relaxed);
}

/// How many relays may hold an enlarged pipe, given the kernel's soft limit on pipe
/// pages per user (0: none; None: unknown, taken as the default 16384 pages) and its
/// page size: half of those pages, so that tunnels and the node's other pipes keep the
/// rest. Without a limit, the default's share still bounds the kernel memory held in
/// relay pipes.
fn large_relays(soft_pages: Option<usize>, page: usize) -> usize {
    const DEFAULT_SOFT_PAGES: usize = 16384;
    let pages = match soft_pages {
        Some(0) | None => DEFAULT_SOFT_PAGES,
        Some(p) => p,
    };
    pages / 2 / RELAY_PIPE.div_ceil(page.max(1))
}

/// One place in a budget, given back when dropped.
struct Slot(&'static AtomicUsize);

impl Slot {
    /// A place in `in_use`, if that stays within `budget`.
    fn take(in_use: &'static AtomicUsize, budget: &AtomicUsize) -> Option<Slot> {
        // Not `then_some(Slot)`: that would make (and drop, giving a place back) a Slot
        // even when the claim failed.
        if claim(in_use, budget.load(Ordering::Relaxed)) {
            Some(Slot(in_use))
        } else {
            None
        }
    }
}

/// Count one more in `in_use` if that stays within `budget`; whether it did.
fn claim(in_use: &AtomicUsize, budget: usize) -> bool {
    let before = in_use.fetch_add(1, Ordering::Relaxed);
    if before >= budget {
        in_use.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A pipe, both ends non-blocking.
struct Pipe {
    /// The read end.
    r: OwnedFd,
    /// The write end.
    w: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok(Pipe { r, w })
    }

    /// The pipe's capacity in bytes.
    fn capacity(&self) -> io::Result<usize> {
        // SAFETY: F_GETPIPE_SZ on a pipe descriptor we own; it returns an int.
        let rc = unsafe { libc::fcntl(self.w.as_raw_fd(), libc::F_GETPIPE_SZ) };
        usize::try_from(rc).map_err(|_| io::Error::last_os_error())
    }

    /// Enlarge the pipe to at least `size` bytes (one that holds that much already is
    /// left as it is: with large pages, the default is larger); its capacity now. Fails
    /// past the kernel's limits (`fs.pipe-max-size`, or the user's pipe pages).
    fn grow(&self, size: usize) -> io::Result<usize> {
        let now = self.capacity()?;
        if now >= size {
            return Ok(now);
        }
        let size = libc::c_int::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; it takes and returns an int.
        let rc = unsafe { libc::fcntl(self.w.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        usize::try_from(rc).map_err(|_| io::Error::last_os_error())
    }
}

/// `splice(2)` up to `len` bytes from `from` to `to`, without blocking.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: plain descriptors and null offsets (both are sockets or pipes).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// One direction of a tunnel.
struct Half {
    /// Its pipe.
    pipe: Pipe,
    /// Bytes in the pipe, not yet passed on.
    held: usize,
    /// The source ended (its end of stream is passed on once the pipe is empty).
    eof: bool,
    /// The end of stream was passed on: this direction is over.
    done: bool,
    /// Bytes passed on, for the record.
    count: Arc<AtomicU64>,
}

impl Half {
    fn new(count: Arc<AtomicU64>) -> io::Result<Half> {
        Ok(Half {
            pipe: Pipe::new()?,
            held: 0,
            eof: false,
            done: false,
            count,
        })
    }

    /// Move what `src` has to `dst` until one of them has to wait (Pending) or this
    /// direction is over (Ready). `moved` is set when any byte moved.
    fn poll(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        moved: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.held > 0 {
                std::task::ready!(dst.poll_write_ready(cx))?;
                let (pipe, held) = (self.pipe.r.as_raw_fd(), self.held);
                match dst.try_io(Interest::WRITABLE, || splice(pipe, dst.as_raw_fd(), held)) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => {
                        self.held -= n;
                        self.count.fetch_add(n as u64, Ordering::Relaxed);
                        *moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                continue;
            }
            if self.eof {
                // Everything is passed on: so is the end of stream (a half close).
                // SAFETY: shutdown on an open socket descriptor.
                unsafe { libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR) };
                self.done = true;
                continue;
            }
            std::task::ready!(src.poll_read_ready(cx))?;
            let pipe = self.pipe.w.as_raw_fd();
            match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), pipe, STEP)) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.held = n;
                    *moved = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// One pipe for moving response bodies from an origin's socket to a client's: a
/// client connection makes it for its first large body and keeps it, empty between
/// bodies. It takes a place in the same budget as a tunnel, and one in the budget of
/// enlarged pipes while it holds one.
pub struct Relay {
    pipe: Pipe,
    /// The most one splice is asked to move: the enlarged pipe's capacity, or
    /// [`STEP`].
    step: usize,
    _slot: Slot,
    _large: Option<Slot>,
}

impl Relay {
    /// A relay, if the budget has room and a pipe can be made. Its pipe is enlarged to
    /// [`RELAY_PIPE`] if the budget of enlarged pipes has room and the kernel allows.
    pub fn new() -> Option<Relay> {
        let slot = Slot::take(&RELAYS_IN_USE, &BUDGET)?;
        let pipe = Pipe::new().ok()?;
        let (step, large) = match Slot::take(&LARGE_IN_USE, &LARGE_BUDGET) {
            Some(large) => match pipe.grow(RELAY_PIPE) {
                Ok(cap) => (cap.max(STEP), Some(large)),
                Err(_) => (STEP, None),
            },
            None => (STEP, None),
        };
        Some(Relay {
            pipe,
            step,
            _slot: slot,
            _large: large,
        })
    }

    /// Move exactly `n` bytes from `src` to `dst`, counting them into `count`; each
    /// wait (for the origin to send, or the client to take) is bounded by `idle`.
    /// Returns the bytes moved to `dst`; on an error the pipe may hold bytes and the
    /// relay must not be used again.
    pub async fn run(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        n: u64,
        count: &AtomicU64,
        idle: Duration,
    ) -> io::Result<u64> {
        let mut stall = Stall::new(idle);
        let mut left = n;
        let mut held = 0usize;
        std::future::poll_fn(|cx| {
            // Steps of this poll before the task lets others run: a fast origin and a
            // fast client would otherwise hold the worker thread for the whole body.
            let mut steps = YIELD_STEPS;
            loop {
                steps -= 1;
                if steps == 0 {
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                if held > 0 {
                    let pipe = self.pipe.r.as_raw_fd();
                    match dst.try_io(Interest::WRITABLE, || splice(pipe, dst.as_raw_fd(), held)) {
                        Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Ok(m) => {
                            held -= m;
                            count.fetch_add(m as u64, Ordering::Relaxed);
                            stall.moved();
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    if dst.poll_write_ready(cx)?.is_ready() {
                        continue;
                    }
                } else if left == 0 {
                    return Poll::Ready(Ok(n));
                } else {
                    let pipe = self.pipe.w.as_raw_fd();
                    let want = usize::try_from(left).unwrap_or(self.step).min(self.step);
                    match src.try_io(Interest::READABLE, || splice(src.as_raw_fd(), pipe, want)) {
                        Ok(0) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the upstream closed before the end of the body",
                            )))
                        }
                        Ok(m) => {
                            held = m;
                            left -= m as u64;
                            stall.moved();
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                    if src.poll_read_ready(cx)?.is_ready() {
                        continue;
                    }
                }
                std::task::ready!(stall.poll_expired(cx));
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing moved for {} s", idle.as_secs_f32()),
                )));
            }
        })
        .await
    }
}

/// A tunnel's two pipes, made before the sockets are handed over (so that a node out
/// of descriptors can still run the tunnel the copying way).
pub struct Tunnel {
    /// Client to server.
    to_server: Half,
    /// Server to client.
    to_client: Half,
    /// Its place in the budget of tunnels with pipes.
    slot: Slot,
}

impl Tunnel {
    /// The pipes of a tunnel that counts the bytes from the client into `up` and those
    /// to it into `down`.
    ///
    /// # Errors
    /// When the budget of tunnels with pipes is spent, or a pipe cannot be made.
    pub fn new(up: Arc<AtomicU64>, down: Arc<AtomicU64>) -> io::Result<Tunnel> {
        let slot = Slot::take(&IN_USE, &BUDGET)
            .ok_or_else(|| io::Error::other("every tunnel with pipes allowed is open"))?;
        Ok(Tunnel {
            to_server: Half::new(up)?,
            to_client: Half::new(down)?,
            slot,
        })
    }

    /// Run the tunnel between `client` and `server` until both directions end,
    /// either socket fails, or nothing moves either way for `idle`. `early` (bytes the
    /// client sent right after its CONNECT, already read) goes to the server first.
    ///
    /// # Errors
    /// A socket's failure, or the idle limit.
    pub async fn run(
        self,
        client: TcpStream,
        server: TcpStream,
        early: &[u8],
        idle: Duration,
    ) -> io::Result<()> {
        let Tunnel {
            mut to_server,
            mut to_client,
            slot,
        } = self;

        let mut server = server;
        // Before either direction starts: a client speaks first in every protocol a
        // CONNECT carries in practice (TLS), so this write does not wait on the server.
        if !early.is_empty() {
            match tokio::time::timeout(idle, server.write_all(early)).await {
                Ok(r) => r?,
                Err(_) => return Err(io::ErrorKind::TimedOut.into()),
            }
            to_server
                .count
                .fetch_add(early.len() as u64, Ordering::Relaxed);
        }
        let server = server;
        let mut stall = Stall::new(idle);
        let ended = std::future::poll_fn(|cx| {
            let mut moved = false;
            let a = to_server.poll(&client, &server, &mut moved, cx)?;
            let b = to_client.poll(&server, &client, &mut moved, cx)?;
            if a.is_ready() && b.is_ready() {
                return Poll::Ready(Ok(()));
            }
            if moved {
                stall.moved();
            }
            std::task::ready!(stall.poll_expired(cx));
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "tunnel idle timeout",
            )))
        })
        .await;
        // The pipes close before the tunnel's place in the budget is given back.
        drop(to_server);
        drop(to_client);
        drop(slot);
        ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Two connected sockets: (ours, theirs).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("address");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn both_directions_pass_intact_and_half_closes_pass_on() {
        let (client_far, client) = pair().await;
        let (server, server_far) = pair().await;
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let t = Tunnel::new(up.clone(), down.clone()).expect("pipes");
        let run = tokio::spawn(async move {
            t.run(client, server, b"early:", Duration::from_secs(5))
                .await
        });
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut cr, mut cw) = client_far.into_split();
        let (mut sr, mut sw) = server_far.into_split();
        let send_up = {
            let big = big.clone();
            tokio::spawn(async move {
                cw.write_all(&big).await.expect("client sends");
                cw.shutdown().await.expect("client half-closes");
            })
        };
        let send_down = {
            let big = big.clone();
            tokio::spawn(async move {
                sw.write_all(&big[..1_000_000]).await.expect("server sends");
                sw.shutdown().await.expect("server half-closes");
            })
        };
        let mut at_server = Vec::new();
        sr.read_to_end(&mut at_server).await.expect("server reads");
        let mut at_client = Vec::new();
        cr.read_to_end(&mut at_client).await.expect("client reads");
        send_up.await.expect("client task");
        send_down.await.expect("server task");
        assert!(at_server.starts_with(b"early:"));
        assert!(at_server[6..] == big[..], "the upward stream changed");
        assert!(at_client == big[..1_000_000], "the downward stream changed");
        let ended = tokio::time::timeout(Duration::from_secs(5), run).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
        assert_eq!(up.load(Ordering::Relaxed), 3_000_006);
        assert_eq!(down.load(Ordering::Relaxed), 1_000_000);
    }

    #[test]
    fn claims_stop_at_the_budget_and_a_release_makes_room() {
        let in_use = AtomicUsize::new(0);
        assert!(claim(&in_use, 2));
        assert!(claim(&in_use, 2));
        assert!(!claim(&in_use, 2), "past the budget");
        assert_eq!(
            in_use.load(Ordering::Relaxed),
            2,
            "a refused claim counts nothing"
        );
        in_use.fetch_sub(1, Ordering::Relaxed);
        assert!(claim(&in_use, 2), "a closed tunnel's place is free");
    }

    #[test]
    fn enlarged_relay_pipes_take_half_the_kernels_soft_limit() {
        assert_eq!(large_relays(Some(16384), 4096), 256, "the kernel's default");
        assert_eq!(large_relays(None, 4096), 256, "unknown: as the default");
        assert_eq!(large_relays(Some(0), 4096), 256, "no limit: as the default");
        assert_eq!(large_relays(Some(1000), 4096), 15);
        assert_eq!(large_relays(Some(40), 4096), 0, "too few pages for one");
        assert_eq!(
            large_relays(Some(16384), 65536),
            4096,
            "64 KiB pages: two a pipe"
        );
    }

    #[tokio::test]
    async fn a_relay_moves_its_bytes_through_an_enlarged_pipe_and_no_more() {
        let (mut origin_far, origin) = pair().await;
        let (client, mut client_far) = pair().await;
        let mut relay = Relay::new().expect("a relay");
        // Enlarged unless the kernel refused (past its limits on this machine): then
        // the relay asks for the default step and keeps no place among large pipes.
        if relay._large.is_some() {
            assert!(relay.step >= RELAY_PIPE, "the step is the enlarged pipe's");
            let cap = relay.pipe.capacity().expect("the pipe's size");
            assert!(cap >= relay.step, "the pipe holds a whole step: {cap}");
        } else {
            assert_eq!(relay.step, STEP);
        }
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let sent = body.clone();
        let send = tokio::spawn(async move {
            origin_far.write_all(&sent).await.expect("origin sends");
            origin_far
                .write_all(b"next")
                .await
                .expect("origin sends more");
            origin_far
        });
        // The client reads as the relay writes: socket buffers need not hold it all.
        let read = tokio::spawn(async move {
            let mut got = vec![0u8; 300_000];
            client_far.read_exact(&mut got).await.expect("client reads");
            got
        });
        let count = AtomicU64::new(0);
        let moved = relay
            .run(&origin, &client, 300_000, &count, Duration::from_secs(5))
            .await
            .expect("relayed");
        assert_eq!(moved, 300_000);
        assert_eq!(count.load(Ordering::Relaxed), 300_000);
        let got = read.await.expect("client task");
        assert!(got == body, "the body changed on the way");
        let _origin_far = send.await.expect("origin task");
        let mut next = [0u8; 4];
        let mut origin = origin;
        origin.read_exact(&mut next).await.expect("the rest stays");
        assert_eq!(&next, b"next", "the relay took bytes past its body");
    }

    #[tokio::test]
    async fn a_quiet_tunnel_ends_after_the_idle_limit() {
        let (_client_far, client) = pair().await;
        let (server, _server_far) = pair().await;
        let zero = Arc::new(AtomicU64::new(0));
        let tunnel = Tunnel::new(zero.clone(), zero).expect("pipes");
        let t = std::time::Instant::now();
        let r = tunnel
            .run(client, server, b"", Duration::from_millis(300))
            .await;
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::TimedOut),
            "{r:?}"
        );
        assert!(t.elapsed() >= Duration::from_millis(300));
    }
}
