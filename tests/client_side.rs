//! The proxy's client side as an HTTP/1.1 server, end to end through a real `ssqd`:
//! pipelined requests answered in order, HTTP/1.0 clients (close by default, kept
//! alive when asked), `Expect: 100-continue` (a go-ahead only for an upload that is to
//! be forwarded), a refused upload answered with a lingering close (the client reads
//! the answer, not a reset), malformed and oversized heads (400 and 431, recorded),
//! large bodies moved socket to socket (intact, counted, the connections reused), and
//! a client that hangs up while its request waits (the request is dropped at once).

mod util;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::rawhttp::Raw;
use util::*;

/// The bytes of a body of `n` bytes from the origin: a pattern that shows a lost,
/// doubled or moved part.
fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz"[(i * 7 + i / 4096) % 36])
        .collect()
}

/// An origin: `GET /big/N` answers N pattern bytes with a Content-Length; `POST` answers
/// with the length of the body it read; `/hang` never answers (it waits for the
/// connection to close, and counts that); anything else a short body. It counts the
/// connections it accepted.
struct Origin {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    hung_up: Arc<AtomicUsize>,
}

impl Origin {
    fn start() -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the origin");
        let addr = l.local_addr().expect("origin address");
        let conns = Arc::new(AtomicUsize::new(0));
        let hung_up = Arc::new(AtomicUsize::new(0));
        let (c, h) = (conns.clone(), hung_up.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let h = h.clone();
                std::thread::spawn(move || serve(s, &h));
            }
        });
        Origin {
            addr,
            conns,
            hung_up,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn serve(s: TcpStream, hung_up: &AtomicUsize) {
    let Ok(mut w) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    while let Some((head, body)) = read_http_request(&mut r) {
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        if path == "/hang" {
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
            hung_up.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let payload = if let Some(n) = path.strip_prefix("/big/") {
            pattern(n.parse().unwrap_or(0))
        } else if head.starts_with("POST") {
            format!("got {} bytes", body.len()).into_bytes()
        } else {
            b"small".to_vec()
        };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            payload.len()
        )
        .into_bytes();
        out.extend_from_slice(&payload);
        if w.write_all(&out).is_err() {
            return;
        }
    }
}

/// A standalone node whose policy allows everything but `blocked.example`.
fn gateway(env: &Env, name: &str) -> (Node, String) {
    let node = Node::start(env, name, &next_ip(), "");
    let policy = "rules:\n  - name: no-blocked\n    domains: [blocked.example]\n    action: deny\n";
    assert_ok(
        &policy_apply(env, &node.portal, policy, &[]),
        "ssq policy apply",
    );
    let proxy = node.proxy.clone().expect("a proxy listener");
    (node, proxy)
}

#[test]
fn pipelined_and_http10_requests_are_answered_in_order() {
    let env = Env::new();
    let origin = Origin::start();
    let (_node, proxy) = gateway(&env, "gw-pipe");
    let get = |path: &str, version: &str, extra: &str| {
        format!(
            "GET {} {version}\r\nHost: {}\r\n{extra}\r\n",
            origin.url(path),
            origin.addr
        )
    };

    // Three requests in one write: three answers, in order, on one connection.
    let mut c = Raw::connect(&proxy);
    c.send(&format!(
        "{}{}{}",
        get("/big/10", "HTTP/1.1", ""),
        get("/x", "HTTP/1.1", ""),
        get("/big/3", "HTTP/1.1", "")
    ));
    let bodies: Vec<String> = (0..3).map(|_| c.response(false).body).collect();
    assert_eq!(
        bodies,
        [
            String::from_utf8(pattern(10)).unwrap(),
            "small".to_string(),
            String::from_utf8(pattern(3)).unwrap()
        ]
    );
    assert!(!c.closed_within(Duration::from_millis(300)), "kept alive");

    // HTTP/1.0: closed after the answer unless the client asks to keep it.
    let mut c = Raw::connect(&proxy);
    c.send(&get("/x", "HTTP/1.0", ""));
    let r = c.response(false);
    assert_eq!((r.status, r.body.as_str()), (200, "small"));
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "an HTTP/1.0 connection stayed open"
    );
    let mut c = Raw::connect(&proxy);
    c.send(&get("/x", "HTTP/1.0", "Connection: keep-alive\r\n"));
    let r = c.response(false);
    assert_eq!(r.header("connection"), Some("keep-alive"), "{r:?}");
    c.send(&get("/big/5", "HTTP/1.0", "Connection: keep-alive\r\n"));
    assert_eq!(c.response(false).body.as_bytes(), pattern(5));
}

#[test]
fn expect_continue_gets_a_go_ahead_only_for_a_forwarded_upload() {
    let env = Env::new();
    let origin = Origin::start();
    let (_node, proxy) = gateway(&env, "gw-expect");
    let head = |url: &str, host: &str| {
        format!(
            "POST {url} HTTP/1.1\r\nHost: {host}\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n"
        )
    };

    let mut c = Raw::connect(&proxy);
    c.send(&head(&origin.url("/up"), &origin.addr.to_string()));
    let go = c.response(true);
    assert_eq!(go.status, 100, "{go:?}");
    c.send("hello world");
    let r = c.response(false);
    assert_eq!((r.status, r.body.as_str()), (200, "got 11 bytes"), "{r:?}");

    // A refused upload: the refusal at once, no go-ahead first, and the connection is
    // not kept (the body it never read would be taken for the next request).
    let mut c = Raw::connect(&proxy);
    c.send(&head("http://blocked.example/up", "blocked.example"));
    let r = c.response(false);
    assert_eq!(r.status, 451, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(
        c.closed_within(Duration::from_secs(5)),
        "kept open with a body unread"
    );

    // A forwarded upload whose origin cannot be reached: the go-ahead, then the 502,
    // which says the connection closes (its body was never read).
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("address");
    drop(closed);
    let mut c = Raw::connect(&proxy);
    c.send(&head(&format!("http://{dead}/up"), &dead.to_string()));
    assert_eq!(c.response(true).status, 100);
    let r = c.response(false);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
}

/// A client that sends its whole upload before it reads (as Python's http.client
/// does) still gets the refusal of it: the proxy shuts its side and drains what the
/// client sends before it closes. Closing on unread data would reset the connection:
/// the client's write fails and it never reads the answer.
#[test]
fn a_refused_upload_gets_its_answer_not_a_reset() {
    let env = Env::new();
    let (node, proxy) = gateway(&env, "gw-linger");
    let size = 8 << 20;
    let body = vec![b'u'; size];
    for round in 0..3 {
        let mut s = TcpStream::connect(&proxy).expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(15))).unwrap();
        let head = format!(
            "POST http://blocked.example/up HTTP/1.1\r\nHost: blocked.example\r\nContent-Length: {size}\r\n\r\n"
        );
        let sent = s
            .write_all(head.as_bytes())
            .and_then(|()| s.write_all(&body));
        assert!(
            sent.is_ok(),
            "round {round}: the upload was cut off: {sent:?}"
        );
        let mut got = Vec::new();
        let read = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        assert!(read.is_ok(), "round {round}: {read:?} after {text:?}");
        assert!(text.starts_with("HTTP/1.1 451 "), "round {round}: {text}");
        assert!(
            text.contains("no-blocked"),
            "round {round}: the block page: {text}"
        );
    }
    eventually(
        Duration::from_secs(5),
        "three 451 lines in access.log",
        || {
            let n = access_lines(&node)
                .iter()
                .filter(|l| l.contains("/451 "))
                .count();
            (n == 3).then_some(())
        },
    );
}

#[test]
fn malformed_and_oversized_heads_get_400_and_431_and_are_recorded() {
    let env = Env::new();
    let origin = Origin::start();
    let (node, proxy) = gateway(&env, "gw-heads");
    let cases = [
        ("garbage\r\n\r\n".to_string(), 400),
        (
            format!("GET {} HTTP/1.1\r\nBad Name: x\r\n\r\n", origin.url("/")),
            400,
        ),
        (
            format!(
                "POST {} HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                origin.url("/")
            ),
            400,
        ),
        (
            format!(
                "GET {} HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                origin.url("/"),
                "b".repeat(70_000)
            ),
            431,
        ),
    ];
    // A bad request line is refused once it is whole, not when the head's time is up.
    let mut c = Raw::connect(&proxy);
    let t = Instant::now();
    c.send("\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03 not http\r\n");
    assert_eq!(c.response(false).status, 400);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    for (req, status) in &cases {
        let mut c = Raw::connect(&proxy);
        c.send(req);
        let r = c.response(false);
        assert_eq!(r.status, *status, "{:?}: {r:?}", &req[..req.len().min(60)]);
        assert!(
            c.closed_within(Duration::from_secs(5)),
            "open after a {status}"
        );
    }
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        0,
        "a refused head reached the origin"
    );
    // A chunked body with a bad chunk: 400, the client's fault, not the origin's (502).
    let mut c = Raw::connect(&proxy);
    c.send(&format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        origin.url("/up"),
        origin.addr
    ));
    let r = c.response(false);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("bad chunk size"), "{}", r.body);
    let lines = eventually(Duration::from_secs(5), "six access.log lines", || {
        let l = access_lines(&node);
        (l.len() >= 6).then_some(l)
    });
    assert_eq!(
        lines.iter().filter(|l| l.contains("/400 ")).count(),
        5,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("/431 ")).count(),
        1,
        "{lines:?}"
    );
}

/// Bodies large enough to be moved socket to socket arrive intact and whole, one after
/// another on one client connection (which makes one pipe for them, closed with it),
/// over one reused origin connection, and each access.log line counts the bytes sent.
#[test]
fn large_bodies_are_moved_intact_and_the_connections_reused() {
    let env = Env::new();
    let origin = Origin::start();
    let (node, proxy) = gateway(&env, "gw-relay");
    let before = pipe_fds(node.pid);
    let mut c = Raw::connect(&proxy);
    let sizes = [300_000usize, 20_000, 1_000_000, 5];
    let t = Instant::now();
    for n in sizes {
        c.send(&format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
            origin.url(&format!("/big/{n}")),
            origin.addr
        ));
        let r = c.response(false);
        assert_eq!(r.status, 200);
        assert!(
            r.body.as_bytes() == pattern(n).as_slice(),
            "the {n}-byte body differs"
        );
        // The connection made its pipe for the first large body, and keeps it.
        assert_eq!(pipe_fds(node.pid), before + 2, "after the {n}-byte body");
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    drop(c);
    eventually(
        Duration::from_secs(5),
        "the pipe closed with its connection",
        || (pipe_fds(node.pid) == before).then_some(()),
    );
    assert_eq!(
        origin.conns.load(Ordering::SeqCst),
        1,
        "the origin connection was not reused"
    );
    let lines = eventually(Duration::from_secs(5), "four access.log lines", || {
        let l = access_lines(&node);
        (l.len() >= 4).then_some(l)
    });
    for n in sizes {
        let url = origin.url(&format!("/big/{n}"));
        let line = lines
            .iter()
            .find(|l| l.contains(&format!(" {url} ")))
            .unwrap_or_else(|| panic!("no line for {url}: {lines:?}"));
        // Squid's native format: time elapsed client code/status bytes method URL ...
        let bytes: usize = line
            .split_whitespace()
            .nth(4)
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        assert!(
            bytes >= n,
            "{line}: {bytes} bytes counted for a {n}-byte body"
        );
    }
}

/// A client that closes its connection while its request waits for the origin has
/// gone: the proxy drops the request at once (closing the origin's connection and
/// writing the record) instead of holding both until the origin's timeout.
#[test]
fn a_client_that_hangs_up_drops_its_request() {
    let env = Env::new();
    let origin = Origin::start();
    let (node, proxy) = gateway(&env, "gw-hangup");
    let mut c = Raw::connect(&proxy);
    c.send(&format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        origin.url("/hang"),
        origin.addr
    ));
    eventually(Duration::from_secs(5), "the request at the origin", || {
        (origin.conns.load(Ordering::SeqCst) == 1).then_some(())
    });
    drop(c);
    let t = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the origin's connection closed",
        || (origin.hung_up.load(Ordering::SeqCst) == 1).then_some(()),
    );
    // The idle limit (60 s by default) is far off: it was the client's close.
    assert!(t.elapsed() < Duration::from_secs(5));
    let url = origin.url("/hang");
    eventually(
        Duration::from_secs(5),
        "the record of the dropped request",
        || access_lines(&node).into_iter().find(|l| l.contains(&url)),
    );
}
