//! The proxy's upstream side end to end: a standalone `ssqd`, real curl, and scripted
//! in-process origins that answer each path in a different way. What the proxy's own
//! HTTP/1.1 client must get right: bodies in every framing (Content-Length, chunked
//! with extensions and trailers, delimited by close) pass intact; request bodies (sized
//! and chunked) reach the origin intact; upstream connections are reused, and one the
//! origin closed while it sat in the pool is replaced without the client noticing; an
//! origin that stops mid-body cuts the client off rather than passing a short body as
//! whole; a silent origin gets 504, one that stalls mid-body is given up after the idle
//! timeout, a garbled one gets 502; a slow upload that keeps moving is not cut off, a
//! stalled one is (408 or 504); a name whose first address is down uses the next; an
//! answer streams while the upload goes on, and an early 413 is heard at once.

mod util;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::*;

/// A body of `n` bytes that shows where a byte went missing or moved.
fn pattern(n: usize) -> String {
    (0..n)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).unwrap_or(0)))
        .collect()
}

/// Requests an origin received: (head, body).
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An origin that answers by path (see `answer`), counting the connections it accepts
/// and keeping each request's head and body.
struct Script {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    seen: Seen,
}

impl Script {
    fn start() -> Script {
        Script::start_on("127.0.0.1")
    }

    fn start_on(ip: &str) -> Script {
        let l = TcpListener::bind((ip, 0)).expect("bind origin");
        let addr = l.local_addr().expect("origin address");
        let conns = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (c, s) = (conns.clone(), seen.clone());
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        Script { addr, conns, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// How many requests for `path` arrived.
    fn count(&self, path: &str) -> usize {
        let line = format!(" {path} ");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _)| h.lines().next().is_some_and(|l| l.contains(&line)))
            .count()
    }

    /// The head and body of the last request for `path`.
    fn last(&self, path: &str) -> Option<(String, Vec<u8>)> {
        let line = format!(" {path} ");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(h, _)| h.lines().next().is_some_and(|l| l.contains(&line)))
            .cloned()
    }
}

fn serve(stream: TcpStream, seen: &Mutex<Vec<(String, Vec<u8>)>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    while let Some((head, body)) = read_http_request(&mut r) {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        seen.lock().unwrap().push((head, body.clone()));
        if !answer(&path, &body, &mut w) {
            return;
        }
    }
}

/// Write the answer for `path`; whether to keep the connection open.
fn answer(path: &str, body: &[u8], w: &mut TcpStream) -> bool {
    let ok = |w: &mut TcpStream, bytes: &[u8]| w.write_all(bytes).is_ok();
    match path {
        // Chunked, with a chunk extension, a chunk larger than the proxy's buffer and
        // a trailer.
        "/chunked" => {
            let big = pattern(70_000);
            let text = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5;name=value\r\nhello\r\n1\r\n \r\n{:x}\r\n{big}\r\n0\r\nX-Trailer: t\r\n\r\n",
                big.len()
            );
            ok(w, text.as_bytes())
        }
        // HTTP/1.0, no length: the body ends when the connection closes.
        "/eof" => {
            let text = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{}",
                pattern(150_000)
            );
            let _ = ok(w, text.as_bytes());
            false
        }
        "/big" => {
            let b = pattern(300_000);
            ok(
                w,
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}", b.len()).as_bytes(),
            )
        }
        "/echo" => {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            ok(w, head.as_bytes()) && ok(w, body)
        }
        // Promises 100,000 bytes, sends 1,000, closes.
        "/cut" => {
            let text = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}",
                pattern(1000)
            );
            let _ = ok(w, text.as_bytes());
            false
        }
        // Answers as if keeping the connection, then closes it (an origin's keep-alive
        // timeout racing the proxy's next request).
        "/quit" => {
            let _ = ok(w, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nquit");
            false
        }
        // Half a body, then nothing for 8 s.
        "/stall" => {
            let text = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{}",
                pattern(50_000)
            );
            let _ = ok(w, text.as_bytes());
            std::thread::sleep(Duration::from_secs(8));
            false
        }
        "/silent" => {
            std::thread::sleep(Duration::from_secs(8));
            false
        }
        // A response, then bytes it did not frame, on a connection kept open.
        "/extra" => {
            let _ = ok(w, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK");
            std::thread::sleep(Duration::from_millis(300));
            let _ = ok(w, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON");
            std::thread::sleep(Duration::from_secs(5));
            false
        }
        // An interim answer, then the connection closes.
        "/early-close" => {
            let _ = ok(w, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n");
            false
        }
        // Reads the request, closes without answering.
        "/no-answer" => false,
        "/head" => ok(w, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"),
        "/204" => ok(w, b"HTTP/1.1 204 No Content\r\n\r\n"),
        "/304" => ok(w, b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"),
        // Transfer-Encoding and a Content-Length that disagrees with the body.
        "/clte" => ok(
            w,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        "/big-head" => {
            let text = format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                "b".repeat(70_000)
            );
            let _ = ok(w, text.as_bytes());
            false
        }
        "/garbage" => {
            let _ = ok(w, b"SSH-2.0-OpenSSH_9.2\r\n\r\n");
            false
        }
        _ => ok(w, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    }
}

/// A standalone node with `policy`, and its proxy URL for curl's `-x`.
fn gateway(env: &Env, name: &str, policy: &str) -> (Node, String) {
    let node = Node::start(env, name, &next_ip(), "");
    assert_ok(
        &policy_apply(env, &node.portal, policy, &[]),
        "ssq policy apply",
    );
    let proxy = format!("http://{}", node.proxy.clone().expect("a proxy listener"));
    (node, proxy)
}

#[test]
fn bodies_in_every_framing_pass_intact() {
    let env = Env::new();
    let origin = Script::start();
    let (_node, proxy) = gateway(&env, "up-framing", "rules: []\n");

    let c = curl(env.path(), &["-x", &proxy, &origin.url("/chunked")]);
    assert_eq!(c.code, 200, "{c:?}");
    assert_eq!(
        c.body,
        format!("hello {}", pattern(70_000)),
        "chunked body changed"
    );
    assert!(
        !c.headers.to_ascii_lowercase().contains("x-trailer"),
        "{c:?}"
    );

    let c = curl(env.path(), &["-x", &proxy, &origin.url("/eof")]);
    assert_eq!(c.code, 200, "{c:?}");
    assert_eq!(c.body.len(), 150_000, "close-delimited body length");
    assert_eq!(c.body, pattern(150_000), "close-delimited body changed");

    let c = curl(env.path(), &["-x", &proxy, &origin.url("/big")]);
    assert_eq!(c.code, 200, "{c:?}");
    assert!(
        c.headers
            .to_ascii_lowercase()
            .contains("content-length: 300000"),
        "the length is passed on: {c:?}"
    );
    assert_eq!(c.body, pattern(300_000), "sized body changed");
}

#[test]
fn request_bodies_reach_the_origin_intact() {
    let env = Env::new();
    let origin = Script::start();
    let (_node, proxy) = gateway(&env, "up-uploads", "rules: []\n");
    let upload = env.path().join("upload.txt");
    std::fs::write(&upload, pattern(200_000)).expect("write the upload");
    let data = format!("@{}", upload.display());

    let c = curl(
        env.path(),
        &["-x", &proxy, "--data-binary", &data, &origin.url("/echo")],
    );
    assert_eq!(c.code, 200, "{c:?}");
    assert_eq!(
        c.body,
        pattern(200_000),
        "a sized upload changed on the way"
    );
    let (head, _) = origin.last("/echo").expect("the origin saw the upload");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 200000"),
        "{head}"
    );

    let c = curl(
        env.path(),
        &[
            "-x",
            &proxy,
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            &origin.url("/echo"),
        ],
    );
    assert_eq!(c.code, 200, "{c:?}");
    assert_eq!(
        c.body,
        pattern(200_000),
        "a chunked upload changed on the way"
    );
    let (head, body) = origin.last("/echo").expect("the origin saw the upload");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert_eq!(body.len(), 200_000);
}

#[test]
fn upstream_connections_are_reused_and_a_closed_one_is_replaced() {
    let env = Env::new();
    let origin = Script::start();
    let (node, proxy) = gateway(&env, "up-reuse", "rules: []\n");
    // Five clients, one after the other, each on its own connection to the proxy.
    for i in 0..5 {
        let c = curl(env.path(), &["-x", &proxy, &origin.url(&format!("/n{i}"))]);
        assert_eq!((c.code, c.body.as_str()), (200, "ok"), "{c:?}");
    }
    assert_eq!(origin.conns(), 1, "the upstream connection was not reused");
    // The origin closes the pooled connection after this answer without saying so.
    let c = curl(env.path(), &["-x", &proxy, &origin.url("/quit")]);
    assert_eq!((c.code, c.body.as_str()), (200, "quit"), "{c:?}");
    std::thread::sleep(Duration::from_millis(100));
    let c = curl(env.path(), &["-x", &proxy, &origin.url("/after-quit")]);
    assert_eq!(
        (c.code, c.body.as_str()),
        (200, "ok"),
        "a request on a pooled connection the origin had closed failed: {c:?}"
    );
    assert_eq!(
        origin.conns(),
        2,
        "the closed connection was replaced by one new one"
    );
    // Every request has its record.
    let access = std::fs::read_to_string(node.files.log.join("access.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut lines = access.lines().count();
    while lines < 7 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        lines = std::fs::read_to_string(node.files.log.join("access.log"))
            .unwrap_or_default()
            .lines()
            .count();
    }
    assert_eq!(lines, 7, "one access.log line per request");
}

#[test]
fn an_origin_that_stops_mid_body_cuts_the_client_off() {
    let env = Env::new();
    let origin = Script::start();
    let (node, proxy) = gateway(&env, "up-cut", "rules: []\n");
    let c = curl(env.path(), &["-x", &proxy, &origin.url("/cut")]);
    // curl: 18 "transfer closed with outstanding read data remaining", or 52/56 when
    // the connection closed before the head was flushed: either way, a failure.
    assert!(
        matches!(c.out.status.code(), Some(18 | 52 | 56)),
        "a short body was passed as whole: {c:?}"
    );
    assert!(c.body.len() < 100_000, "{c:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let access = std::fs::read_to_string(node.files.log.join("access.log")).unwrap_or_default();
        if access.lines().any(|l| l.contains("/cut")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no record for the cut request:\n{access}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The broken connection is not reused: the next request works.
    let c = curl(env.path(), &["-x", &proxy, &origin.url("/next")]);
    assert_eq!((c.code, c.body.as_str()), (200, "ok"), "{c:?}");
}

#[test]
fn silent_stalled_and_garbled_origins_are_given_up() {
    let env = Env::new();
    let origin = Script::start();
    let (_node, proxy) = gateway(
        &env,
        "up-bad",
        "rules: []\nlimits: { upstream_connect_timeout: 1s, idle_timeout: 1s }\n",
    );
    let t = Instant::now();
    let c = curl(env.path(), &["-x", &proxy, &origin.url("/silent")]);
    assert_eq!(c.code, 504, "{c:?}");
    assert!(c.body.contains("did not answer"), "{c:?}");
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "the 504 took {:?}",
        t.elapsed()
    );

    // Stopping mid-body is given up after idle_timeout too: the client is cut off.
    let t = Instant::now();
    let c = curl(env.path(), &["-x", &proxy, &origin.url("/stall")]);
    assert!(
        matches!(c.out.status.code(), Some(18 | 52 | 56)),
        "a stalled body did not end in an error: {c:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "the stall was noticed after {:?}",
        t.elapsed()
    );

    let c = curl(env.path(), &["-x", &proxy, &origin.url("/garbage")]);
    assert_eq!(c.code, 502, "{c:?}");
    assert!(
        c.body.contains("invalid response"),
        "the 502 gives no reason: {c:?}"
    );
}

/// What a kept-alive upstream connection must not do: carry stray bytes into the next
/// response, be resent a request the origin may have acted on, or lose a request with a
/// body because the origin closed it while idle.
#[test]
fn pooled_connections_are_checked_and_retries_are_safe() {
    let env = Env::new();
    let origin = Script::start();
    let (_node, proxy) = gateway(&env, "up-safe", "rules: []\n");
    let get = |path: &str| curl(env.path(), &["-x", &proxy, &origin.url(path)]);

    // Bytes past the framed body: the connection is dropped, not reused, so the next
    // client gets its own answer, not the origin's leftovers.
    let c = get("/extra");
    assert_eq!((c.code, c.body.as_str()), (200, "ok"), "{c:?}");
    std::thread::sleep(Duration::from_millis(500));
    let c = get("/after-extra");
    assert_eq!(
        (c.code, c.body.as_str()),
        (200, "ok"),
        "stray bytes reached the next client: {c:?}"
    );

    // The origin closes a pooled connection: a POST with a body still goes through (the
    // closed connection is noticed before the request is written).
    let c = get("/quit");
    assert_eq!(c.code, 200, "{c:?}");
    std::thread::sleep(Duration::from_millis(200));
    let c = curl(
        env.path(),
        &[
            "-x",
            &proxy,
            "--data-binary",
            "payload",
            &origin.url("/echo"),
        ],
    );
    assert_eq!((c.code, c.body.as_str()), (200, "payload"), "{c:?}");

    // An interim answer, then a close, on a reused connection: a failure, not a resend.
    let c = get("/warm");
    assert_eq!(c.code, 200, "{c:?}");
    let c = get("/early-close");
    assert_eq!(c.code, 502, "{c:?}");
    assert_eq!(
        origin.count("/early-close"),
        1,
        "resent after part of a response came"
    );

    // A POST without a body that the origin took and never answered: not resent.
    let c = get("/warm2");
    assert_eq!(c.code, 200, "{c:?}");
    let c = curl(
        env.path(),
        &[
            "-x",
            &proxy,
            "-X",
            "POST",
            "-H",
            "Content-Length: 0",
            &origin.url("/no-answer"),
        ],
    );
    assert_eq!(c.code, 502, "{c:?}");
    assert_eq!(
        origin.count("/no-answer"),
        1,
        "a non-idempotent request was resent"
    );
}

#[test]
fn bodiless_responses_keep_the_connection_and_odd_heads_are_handled() {
    let env = Env::new();
    let origin = Script::start();
    let (_node, proxy) = gateway(&env, "up-heads", "rules: []\n");
    let c = curl(env.path(), &["-x", &proxy, "-I", &origin.url("/head")]);
    assert_eq!(c.code, 200, "{c:?}");
    assert!(
        c.headers
            .to_ascii_lowercase()
            .contains("content-length: 1000"),
        "{c:?}"
    );
    for (path, code) in [("/204", 204), ("/304", 304), ("/n", 200)] {
        let c = curl(env.path(), &["-x", &proxy, &origin.url(path)]);
        assert!(c.out.status.success(), "{path}: {c:?}");
        assert_eq!(c.code, code, "{path}: {c:?}");
    }
    assert_eq!(origin.conns(), 1, "a bodiless response cost the connection");

    // Content-Length beside Transfer-Encoding: the chunked body is what the client gets.
    let c = curl(env.path(), &["-x", &proxy, &origin.url("/clte")]);
    assert_eq!((c.code, c.body.as_str()), (200, "hello"), "{c:?}");

    // A head over 64 KiB is refused with a reason.
    let c = curl(env.path(), &["-x", &proxy, &origin.url("/big-head")]);
    assert_eq!(c.code, 502, "{c:?}");
    assert!(c.body.contains("larger than"), "{c:?}");
}

/// Whether nothing listens at `addr` (a connection is refused).
fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// A name with several addresses, resolved by the system's resolver from the node's
/// own `/etc/hosts`: when the first refuses connections, the next one is used (and is
/// what the access record names), for plain requests and CONNECT alike; when all of
/// them refuse, the 502 names each address tried.
#[test]
fn a_name_whose_first_address_is_down_uses_the_next() {
    if !can_replace_hosts() {
        eprintln!("skipped: needs root and a mount namespace (the node gets its own /etc/hosts)");
        return;
    }
    let env = Env::new();
    // The origin on 127.0.0.2; the dead addresses are this binary's own (no node or
    // origin binds them), so nothing answers there.
    let origin = Script::start_on("127.0.0.2");
    let port = origin.addr.port();
    let (dead1, dead2) = (next_ip(), next_ip());
    for ip in [&dead1, &dead2] {
        let a = SocketAddr::new(ip.parse().expect("an IP"), port);
        assert!(refused(a), "{a} should refuse connections");
    }
    let hosts = env.path().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.1 localhost\n{dead1} multi.test\n127.0.0.2 multi.test\n\
             {dead1} dead.test\n{dead2} dead.test\n"
        ),
    )
    .expect("write hosts");
    let files = NodeDir::create(&env, "up-multi", &next_ip(), "");
    let node = Node::run_with_hosts(files, &hosts);
    assert_ok(
        &policy_apply(
            &env,
            &node.portal,
            &format!("rules: []\nconnect: {{ ports: [443, {port}] }}\n"),
            &[],
        ),
        "ssq policy apply",
    );
    let proxy = format!("http://{}", node.proxy.clone().expect("a proxy listener"));

    for i in 0..2 {
        let c = curl(
            env.path(),
            &["-x", &proxy, &format!("http://multi.test:{port}/ok")],
        );
        assert_eq!(c.code, 200, "request {i}: {c:?}");
        assert_eq!(c.body, "ok", "request {i}: {c:?}");
    }
    // Through a tunnel too (plain HTTP inside CONNECT).
    let c = curl(
        env.path(),
        &["-p", "-x", &proxy, &format!("http://multi.test:{port}/ok")],
    );
    assert_eq!((c.connect, c.code), (200, 200), "CONNECT: {c:?}");
    assert_eq!(c.body, "ok", "CONNECT: {c:?}");
    assert_eq!(origin.count("/ok"), 3, "every request reached the origin");

    let c = curl(
        env.path(),
        &["-x", &proxy, &format!("http://dead.test:{port}/ok")],
    );
    assert_eq!(c.code, 502, "{c:?}");
    // Both, in the file's order: so multi.test's dead address came first too, and the
    // successes above were fallbacks.
    assert!(
        c.body.contains(&format!("{dead1}:{port}, {dead2}:{port}")),
        "the 502 does not name both addresses in order: {c:?}"
    );

    // The records name the address that answered.
    let access = eventually(Duration::from_secs(5), "four access.log lines", || {
        let text = std::fs::read_to_string(node.files.log.join("access.log")).ok()?;
        (text.lines().count() >= 4).then_some(text)
    });
    let multi: Vec<&str> = access
        .lines()
        .filter(|l| l.contains("multi.test"))
        .collect();
    assert_eq!(multi.len(), 3, "{access}");
    for l in &multi {
        assert!(
            l.contains("HIER_DIRECT/127.0.0.2"),
            "record names another peer: {l}"
        );
    }
}

/// Send `head` and then `body` in `pieces` parts `gap` apart to the proxy at `proxy`
/// (host:port), and return the status of its answer (0: none) and the time it took.
fn trickle(proxy: &str, head: &str, body: &[u8], pieces: usize, gap: Duration) -> (u16, Duration) {
    let (answer, took) = trickle_answer(proxy, head, body, pieces, gap);
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, took)
}

/// As `trickle`, returning the whole answer (head and body) as text.
fn trickle_answer(
    proxy: &str,
    head: &str,
    body: &[u8],
    pieces: usize,
    gap: Duration,
) -> (String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(proxy).expect("connect to the proxy");
    let _ = s.set_read_timeout(Some(Duration::from_secs(15)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(15)));
    s.write_all(head.as_bytes()).expect("send the head");
    for part in body.chunks(body.len().div_ceil(pieces.max(1)).max(1)) {
        std::thread::sleep(gap);
        if s.write_all(part).is_err() {
            break; // the proxy answered and closed early: read what it said
        }
    }
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    (String::from_utf8_lossy(&answer).into_owned(), t.elapsed())
}

/// A long upload that keeps moving is not cut off, however much longer than the
/// timeouts it takes; one whose client stops sending gets 408 after the idle timeout,
/// and one whose origin stops reading gets 504.
#[test]
fn a_slow_upload_is_not_cut_off_a_stalled_one_is() {
    let env = Env::new();
    let origin = Script::start();
    let (node, _) = gateway(
        &env,
        "up-slow",
        "rules: []\nlimits: { upstream_connect_timeout: 1s, idle_timeout: 2s }\n",
    );
    let proxy = node.proxy.clone().expect("a proxy listener");
    let body = pattern(60_000);
    let head = |path: &str, len: usize| {
        format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n",
            origin.url(path),
            origin.addr
        )
    };

    // 20 parts 250 ms apart: about 5 s, more than both timeouts together (3 s).
    let (status, took) = trickle(
        &proxy,
        &head("/slow-up", body.len()),
        body.as_bytes(),
        20,
        Duration::from_millis(250),
    );
    assert_eq!(status, 200, "a slow upload was cut off after {took:?}");
    assert!(took > Duration::from_secs(4), "{took:?}");
    let (_, got) = origin.last("/slow-up").expect("the origin saw the upload");
    assert_eq!(got, body.as_bytes(), "the slow upload changed on the way");

    // The same, to an origin that sends its head at once and its body only once it
    // has the whole upload: the answer waits longer than the idle timeout for its
    // body, while the upload moves.
    let head_first = one_request_origin(|mut s, head, first| {
        let len = content_length(&head);
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
        if s.write_all(answer.as_bytes()).is_err() {
            return;
        }
        let mut got = first;
        let mut buf = [0u8; 16 * 1024];
        while got.len() < len {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(&got);
        std::thread::sleep(Duration::from_secs(1));
    });
    let request = format!(
        "POST http://{head_first}/head-first HTTP/1.1\r\nHost: {head_first}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (answer, took) = trickle_answer(
        &proxy,
        &request,
        body.as_bytes(),
        20,
        Duration::from_millis(250),
    );
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "after {took:?}: {}",
        answer.get(..200).unwrap_or(&answer)
    );
    assert!(
        answer.ends_with(&format!("\r\n\r\n{body}")),
        "the answer sent after a slow upload was cut short after {took:?} ({} bytes)",
        answer.len()
    );

    // The client sends a tenth of what it announced, then nothing.
    let (status, took) = trickle(
        &proxy,
        &head("/stalled-up", 10 * body.len()),
        body.as_bytes(),
        1,
        Duration::ZERO,
    );
    assert_eq!(status, 408, "a stalled upload after {took:?}");
    assert!(
        took < Duration::from_secs(6),
        "the stall was noticed after {took:?}"
    );
    assert_eq!(
        origin.count("/stalled-up"),
        0,
        "a cut-short body reached the origin as whole"
    );

    // An origin that takes the connection but never reads: once the socket buffers are
    // full, nothing moves, and the proxy gives up (504 in the record; the client may
    // see its connection reset, having more to send).
    let deaf = TcpListener::bind("127.0.0.1:0").expect("bind the deaf origin");
    let deaf_addr = deaf.local_addr().expect("deaf origin address");
    std::thread::spawn(move || {
        let held: Vec<TcpStream> = deaf.incoming().take(1).filter_map(Result::ok).collect();
        std::thread::sleep(Duration::from_secs(20));
        drop(held);
    });
    let big = vec![b'x'; 48 << 20];
    let head = format!(
        "POST http://{deaf_addr}/deaf HTTP/1.1\r\nHost: {deaf_addr}\r\nContent-Length: {}\r\n\r\n",
        big.len()
    );
    let (_, took) = trickle(&proxy, &head, &big, 1, Duration::ZERO);
    assert!(
        took < Duration::from_secs(10),
        "the stalled upload took {took:?}"
    );
    let line = eventually(Duration::from_secs(5), "the deaf origin's record", || {
        let text = std::fs::read_to_string(node.files.log.join("access.log")).ok()?;
        text.lines()
            .find(|l| l.contains("/deaf"))
            .map(str::to_string)
    });
    assert!(line.contains("/504 "), "{line}");
}

/// An origin for one request: it reads the head, then calls `then` with the socket,
/// the head, and the body bytes that came with the head.
fn one_request_origin(
    then: impl FnOnce(TcpStream, String, Vec<u8>) + Send + 'static,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind the origin");
    let addr = l.local_addr().expect("origin address");
    std::thread::spawn(move || {
        let Some(Ok(mut s)) = l.incoming().next() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&got[..end]).into_owned();
        then(s, head, got[end..].to_vec());
    });
    addr
}

/// The Content-Length of a request head (0 without one).
fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// An upload that stops after its answer has begun: the answer was the origin's to
/// give and stays as it is, and extended.log says that the upload stopped, how much of
/// it came, and why.
#[test]
fn an_upload_that_stops_after_its_answer_began_is_told() {
    let env = Env::new();
    let (node, proxy) = gateway(
        &env,
        "up-stopped",
        "rules: []\nlimits: { idle_timeout: 30s }\n",
    );
    // Answers at once, then echoes what it reads.
    let origin = one_request_origin(|mut s, _, first| {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
        if s.write_all(head).is_err() || s.write_all(&first).is_err() {
            return;
        }
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = std::io::Read::read(&mut s, &mut buf) {
            if s.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let mut c = TcpStream::connect(proxy.trim_start_matches("http://")).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let head = format!(
        "POST http://{origin}/up?token=s3cret HTTP/1.1\r\nHost: {origin}\r\nContent-Length: 1000000\r\n\r\n"
    );
    c.write_all(head.as_bytes()).expect("send the head");
    c.write_all(&[b'u'; 1000]).expect("send a part of the body");
    // The answer begins: its head, then the echo of the part sent.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = |got: &[u8]| {
        got.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|end| got.len() >= end + 4 + 1000)
    };
    while !answered(&got) {
        match std::io::Read::read(&mut c, &mut buf) {
            Ok(0) | Err(_) => panic!(
                "the answer did not begin: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let log = node.files.extended_log();
    assert!(
        !log.contains("stopped after its answer had begun"),
        "told before it stopped:\n{log}"
    );
    // The client stops: it ends its sending side, 999,000 bytes short.
    c.shutdown(std::net::Shutdown::Write).expect("half-close");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = node.files.extended_log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("stopped after its answer had begun"))
        {
            assert!(line.contains(&format!("http://{origin}/up ")), "{line}");
            assert!(
                !line.contains("s3cret"),
                "the query is not for extended.log: {line}"
            );
            assert!(line.contains("(1000 bytes of it had come"), "{line}");
            assert!(line.contains("request body failed"), "{line}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no word of the stopped upload in extended.log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The proxy sends the upload and reads the answer at the same time: an origin that
/// streams its answer while it reads a large upload gets all of it (were the two done
/// one after the other, both sides would wait on full socket buffers until the idle
/// timeout), and an origin that answers at once without reading (413) is heard at
/// once, not after the idle timeout.
#[test]
fn an_answer_flows_while_the_upload_goes_on() {
    let env = Env::new();
    let (node, proxy) = gateway(
        &env,
        "up-duplex",
        "rules: []\nlimits: { idle_timeout: 4s }\n",
    );
    // Far more than the socket buffers of both connections hold.
    let size = 32 << 20;
    let upload = env.path().join("duplex.txt");
    std::fs::write(&upload, pattern(size)).expect("write the upload");
    let data = format!("@{}", upload.display());

    // Echoes each part of the upload as it reads it, under a head sent at once.
    let echo = one_request_origin(|mut s, head, first| {
        let len = content_length(&head);
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
        if s.write_all(answer.as_bytes()).is_err() || s.write_all(&first).is_err() {
            return;
        }
        let mut echoed = first.len();
        let mut buf = vec![0u8; 64 * 1024];
        while echoed < len {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    echoed += n;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    });
    let c = curl(
        env.path(),
        &[
            "-x",
            &proxy,
            "--data-binary",
            &data,
            &format!("http://{echo}/echo"),
        ],
    );
    assert_eq!(
        c.code,
        200,
        "curl exit {:?}: {}",
        c.out.status.code(),
        stderr(&c.out)
    );
    assert_eq!(c.body.len(), size, "the streamed answer was cut short");
    assert!(
        c.body == pattern(size),
        "the streamed answer changed on the way"
    );

    // Answers 413 at once and never reads the upload.
    let refuse = one_request_origin(|mut s, _, _| {
        let _ = s.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
        );
        std::thread::sleep(Duration::from_secs(10));
    });
    let t = Instant::now();
    let c = curl(
        env.path(),
        &[
            "-x",
            &proxy,
            "--data-binary",
            &data,
            &format!("http://{refuse}/up"),
        ],
    );
    let took = t.elapsed();
    assert_eq!(c.code, 413, "{:?} {}", c.out.status.code(), stderr(&c.out));
    assert_eq!(c.body, "too large");
    assert!(
        took < Duration::from_secs(3),
        "the early answer waited {took:?} (the idle timeout is 4 s)"
    );
    // Neither an upload sent whole nor one whose answer ended first stopped: no word
    // of one in extended.log.
    let log = node.files.extended_log();
    assert!(
        !log.contains("stopped after its answer had begun"),
        "a stopped upload told where none stopped:\n{log}"
    );
}
