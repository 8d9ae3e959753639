//! The forward proxy end to end: a standalone `ssqd` applying its own policy, real curl
//! (plain HTTP, HTTPS through CONNECT) and raw TCP clients writing bytes by hand, and
//! in-process origins (a tiny HTTP/1.1 server that records what it received, a TLS
//! origin). What issue 4 asks to see: a correct intermediary (origin-form upstream,
//! hop-by-hop headers stripped, `Via` added), enforcement (block page 451, client access
//! 403, CONNECT ports, a policy change applied on the next request of an open keep-alive
//! connection, fail closed without a policy), refusals (smuggling, Host mismatch, loops,
//! link-local, unreachable upstreams), connection limits, the header read timeout
//! (slowloris gets 408; an idle keep-alive connection waits for the idle timeout),
//! one access.log line per request in Squid's native format, and CONNECT tunnels (large
//! streams both ways with early bytes and half closes; past the pipe budget, copying,
//! and ending when quiet for the idle limit), and connections spread over the proxy's
//! worker threads.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use util::rawhttp::{Raw, Resp};
use util::*;

/// What the plain origin answers with.
const ORIGIN_BODY: &str = "hello from the origin\n";
/// What the TLS origin answers with.
const TLS_BODY: &str = "hello over tls\n";

// ---------------------------------------------------------------------------------
// Origins

/// An in-process HTTP/1.1 origin on 127.0.0.1 (keep-alive, Content-Length bodies) that
/// records every request head it received.
struct Origin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Origin {
    fn start() -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let h = h.clone();
                std::thread::spawn(move || serve_origin_conn(s, h));
            }
        });
        Origin { addr, heads }
    }

    /// `127.0.0.1:PORT`.
    fn hostport(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT{path}`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The head of the (last) request whose request line names `path`.
    fn head_for(&self, path: &str) -> Option<String> {
        let prefix = format!(" {path} ");
        self.heads()
            .into_iter()
            .rev()
            .find(|h| h.lines().next().is_some_and(|l| l.contains(&prefix)))
    }
}

fn serve_origin_conn(s: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    while let Some((head, _body)) = read_http_request(&mut r) {
        let lower = head.to_ascii_lowercase();
        heads.lock().unwrap().push(head);
        // Hop-by-hop headers of our own on the way back too: they must not reach the
        // client either.
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: keep-alive, X-Origin-Hop\r\nX-Origin-Hop: 1\r\nKeep-Alive: timeout=30\r\n\
             X-Origin-Keep: 1\r\n\r\n{ORIGIN_BODY}",
            ORIGIN_BODY.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
        if lower
            .lines()
            .any(|l| l.starts_with("connection:") && l.contains("close"))
        {
            return;
        }
    }
}

/// An in-process TLS origin on 127.0.0.1 (self-signed for 127.0.0.1): answers every
/// request with `TLS_BODY` and closes. Runs on its own tokio runtime in a thread.
fn tls_origin() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind tls origin");
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("self-signed certificate");
    let id = ssq::tls::Identity {
        chain: vec![ck.cert.der().clone()],
        key: rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()).into(),
    };
    let cfg = ssq::tls::server_config(&id).expect("tls server config");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                         Connection: close\r\n\r\n{TLS_BODY}",
                        TLS_BODY.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    addr
}

/// A port on 127.0.0.1 that nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------
// Clients

/// One raw request on a fresh connection.
fn raw_once(proxy: &str, request: &str) -> Resp {
    let mut c = Raw::connect(proxy);
    c.send(request);
    c.response(false)
}

// ---------------------------------------------------------------------------------
// Nodes and policy

/// A standalone node (its own master) with `policy` applied, if any.
fn gateway(env: &Env, name: &str, policy: Option<&str>) -> Node {
    let node = Node::start(env, name, &next_ip(), "");
    assert!(
        node.proxy.is_some(),
        "a standalone node has a proxy listener"
    );
    if let Some(p) = policy {
        apply(env, &node, p);
    }
    node
}

/// `ssq policy apply FILE --master NODE` with `text`; required to succeed.
fn apply(env: &Env, node: &Node, text: &str) {
    let out = policy_apply(env, &node.portal, text, &[]);
    assert_ok(&out, &format!("ssq policy apply\n{text}"));
}

fn proxy_of(node: &Node) -> String {
    node.proxy.clone().expect("proxy address")
}

/// Wait for an access.log line with `code` (e.g. `TCP_MISS/200`) whose URL field is
/// `url`; the line.
fn wait_access_line(node: &Node, code: &str, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = access_lines(node);
        if let Some(l) = lines.iter().find(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 10 && f[3] == code && f[6] == url
        }) {
            return l.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no access.log line with {code} for {url} within 10 s; access.log:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A policy whose CONNECT ports include `tls_port` (and 443).
fn open_policy(tls_port: u16) -> String {
    format!(
        "rules:\n\
         \x20 - name: no-blocked\n\
         \x20   domains: [blocked.example, blocked.invalid]\n\
         \x20   action: deny\n\
         \x20   message: \"Blocked sites are blocked here.\"\n\
         connect: {{ ports: [443, {tls_port}] }}\n"
    )
}

// ---------------------------------------------------------------------------------
// Tests

/// (1) Plain HTTP through the proxy: origin-form upstream, hop-by-hop headers gone both
/// ways, end-to-end headers kept, `Via` both ways.
#[test]
fn plain_http_is_forwarded_as_a_correct_intermediary() {
    let env = Env::new();
    let origin = Origin::start();
    let node = gateway(&env, "gw-plain", Some(&open_policy(443)));
    let proxy = proxy_of(&node);

    let c = curl(
        env.path(),
        &[
            "-x",
            &format!("http://{proxy}"),
            "-H",
            "Connection: close, X-Hop",
            "-H",
            "X-Hop: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Authorization: Basic eA==",
            "-H",
            "TE: trailers",
            "-H",
            "Proxy-Connection: keep-alive",
            "-H",
            "X-Keep: 1",
            &origin.url("/path?q=1"),
        ],
    );
    assert_eq!(c.code, 200, "{c:?}");
    assert_eq!(c.body, ORIGIN_BODY, "{c:?}");

    let head = origin.head_for("/path?q=1").unwrap_or_else(|| {
        panic!(
            "the origin saw no request for /path?q=1: {:?}",
            origin.heads()
        )
    });
    let request_line = head.lines().next().unwrap();
    assert_eq!(
        request_line.trim_end(),
        "GET /path?q=1 HTTP/1.1",
        "the origin did not get an origin-form target:\n{head}"
    );
    let lower = head.to_ascii_lowercase();
    let names: Vec<&str> = lower
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .collect();
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
        "proxy-connection",
    ] {
        assert!(
            !names.contains(&hop),
            "hop-by-hop header {hop} reached the origin:\n{head}"
        );
    }
    assert!(
        names.contains(&"x-keep"),
        "the end-to-end header X-Keep did not reach the origin:\n{head}"
    );
    assert!(
        lower.contains(&format!("host: {}", origin.hostport())),
        "the origin got no Host header naming it:\n{head}"
    );
    let via = lower
        .lines()
        .find(|l| l.starts_with("via:"))
        .unwrap_or_else(|| panic!("no Via header reached the origin:\n{head}"));
    assert!(
        via.contains("gw-plain"),
        "the Via header does not name the node: {via}"
    );

    // The response: Via added, the origin's hop-by-hop headers gone, its others kept.
    let rh = c.headers.to_ascii_lowercase();
    assert!(
        rh.lines()
            .any(|l| l.starts_with("via:") && l.contains("gw-plain")),
        "the response carries no Via naming the node:\n{}",
        c.headers
    );
    assert!(
        rh.contains("x-origin-keep: 1"),
        "an end-to-end response header was lost:\n{}",
        c.headers
    );
    assert!(
        !rh.contains("x-origin-hop") && !rh.contains("keep-alive: timeout=30"),
        "the origin's hop-by-hop headers reached the client:\n{}",
        c.headers
    );
}

/// (2) HTTPS through CONNECT to an in-process TLS origin, with real curl.
#[test]
fn https_through_connect_reaches_a_tls_origin() {
    let env = Env::new();
    let tls = tls_origin();
    let node = gateway(&env, "gw-tls", Some(&open_policy(tls.port())));
    let proxy = proxy_of(&node);
    let c = curl(
        env.path(),
        &[
            "-k",
            "-p",
            "-x",
            &format!("http://{proxy}"),
            &format!("https://{tls}/secure"),
        ],
    );
    assert!(c.out.status.success(), "{c:?}");
    assert_eq!(c.connect, 200, "CONNECT was not answered 200: {c:?}");
    assert_eq!(c.code, 200, "{c:?}");
    assert_eq!(c.body, TLS_BODY, "{c:?}");
}

/// (3) A rule denying a domain: 451 and the block page naming the rule and its
/// message; a blocked name that does not resolve is still blocked (before DNS).
#[test]
fn blocked_domain_gets_451_and_the_block_page() {
    let env = Env::new();
    let node = gateway(&env, "gw-block", Some(&open_policy(443)));
    let proxy = format!("http://{}", proxy_of(&node));
    for url in [
        "http://blocked.example/some/page",
        "http://www.blocked.example/",
        "http://blocked.invalid/x",
    ] {
        let c = curl(env.path(), &["-x", &proxy, url]);
        assert_eq!(c.code, 451, "{url}: {c:?}");
        assert!(
            c.body.contains("no-blocked"),
            "{url}: the block page does not name the rule: {c:?}"
        );
        assert!(
            c.body.contains("Blocked sites are blocked here."),
            "{url}: the block page does not show the rule's message: {c:?}"
        );
        assert!(
            c.headers.to_ascii_lowercase().contains("text/html"),
            "{url}: the block page is not HTML: {c:?}"
        );
    }
}

/// (4) The `access` section: a client outside it gets 403, one inside is served.
#[test]
fn client_outside_access_gets_403() {
    let env = Env::new();
    let origin = Origin::start();
    let node = gateway(
        &env,
        "gw-access",
        Some("access: { default: deny, allow: [{ clients: [127.0.0.99/32] }] }\n"),
    );
    let proxy = format!("http://{}", proxy_of(&node));
    let url = origin.url("/access");
    let outside = curl(
        env.path(),
        &["--interface", "127.0.0.1", "-x", &proxy, &url],
    );
    assert_eq!(outside.code, 403, "from 127.0.0.1: {outside:?}");
    assert!(
        outside.body.contains("127.0.0.1"),
        "the 403 page does not name the refused address: {outside:?}"
    );
    assert!(
        origin.head_for("/access").is_none(),
        "a refused client's request reached the origin"
    );
    let inside = curl(
        env.path(),
        &["--interface", "127.0.0.99", "-x", &proxy, &url],
    );
    assert_eq!(inside.code, 200, "from 127.0.0.99: {inside:?}");
    assert_eq!(inside.body, ORIGIN_BODY, "{inside:?}");
}

/// (5) CONNECT to port 25 is refused (default ports: 443 only).
#[test]
fn connect_to_port_25_is_refused() {
    let env = Env::new();
    let node = gateway(&env, "gw-port", Some("rules: []\n"));
    let proxy = proxy_of(&node);
    // Something listening on a port the test owns would be reachable if the proxy let
    // it through; port 25 itself most likely has nothing, so the status tells.
    let c = curl(
        env.path(),
        &[
            "-p",
            "-x",
            &format!("http://{proxy}"),
            "http://127.0.0.1:25/",
        ],
    );
    assert!(
        !c.out.status.success(),
        "curl -p to port 25 succeeded: {c:?}"
    );
    assert_eq!(c.connect, 403, "CONNECT to port 25: {c:?}");

    let mut raw = Raw::connect(&proxy);
    raw.send("CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: 127.0.0.1:25\r\n\r\n");
    let r = raw.response(false);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("25"),
        "the 403 page does not name the port: {r:?}"
    );
}

/// (6) A policy change applies to the next request of a keep-alive connection that
/// stays open.
#[test]
fn policy_change_applies_on_an_open_keep_alive_connection() {
    let env = Env::new();
    let origin = Origin::start();
    let node = gateway(&env, "gw-live", Some("rules: []\n"));
    let proxy = proxy_of(&node);
    let host = origin.hostport();

    let mut conn = Raw::connect(&proxy);
    let local = conn.local_addr();
    let req = |path: &str| {
        format!("GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\nX-Req: {path}\r\n\r\n")
    };
    conn.send(&req("/first"));
    let r1 = conn.response(false);
    assert_eq!(r1.status, 200, "{r1:?}");
    assert_eq!(r1.body, ORIGIN_BODY);
    assert!(
        !r1.header("connection").is_some_and(|v| v.contains("close")),
        "the proxy asked to close a keep-alive connection: {r1:?}"
    );

    apply(
        &env,
        &node,
        "rules:\n  - name: no-origin\n    domains: [\"127.0.0.1\"]\n    action: deny\n    message: now blocked\n",
    );

    // The same socket: not closed by the policy change.
    assert!(
        !conn.closed_within(Duration::from_millis(200)),
        "the proxy closed the keep-alive connection on a policy change"
    );
    assert_eq!(conn.local_addr(), local);
    conn.send(&req("/second"));
    let r2 = conn.response(false);
    assert_eq!(
        r2.status, 451,
        "the new policy was not enforced on the open connection: {r2:?}"
    );
    assert!(r2.body.contains("no-origin"), "{r2:?}");
    assert!(
        origin.head_for("/second").is_none(),
        "the blocked request reached the origin"
    );
    // And still usable after the refusal.
    conn.send(&req("/third"));
    let r3 = conn.response(false);
    assert_eq!(r3.status, 451, "{r3:?}");
}

/// (7) Request smuggling: Content-Length with Transfer-Encoding, or two different
/// Content-Lengths, is refused with 400 and nothing reaches the origin.
#[test]
fn smuggling_attempts_are_refused() {
    let env = Env::new();
    let origin = Origin::start();
    let node = gateway(&env, "gw-smuggle", Some("rules: []\n"));
    let proxy = proxy_of(&node);
    let host = origin.hostport();

    let cases = [
        (
            "Content-Length then Transfer-Encoding",
            format!(
                "POST http://{host}/smuggle-cl-te HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "Transfer-Encoding then Content-Length",
            format!(
                "POST http://{host}/smuggle-te-cl HTTP/1.1\r\nHost: {host}\r\n\
                 Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST http://{host}/smuggle-cl-cl HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
            ),
        ),
    ];
    let mut failures = Vec::new();
    for (what, req) in &cases {
        let r = raw_once(&proxy, req);
        if r.status != 400 {
            failures.push(format!(
                "{what}: answered {} instead of 400: {r:?}",
                r.status
            ));
        }
    }
    // Wait a moment for anything that might still be on its way upstream.
    std::thread::sleep(Duration::from_millis(200));
    let heads = origin.heads();
    if !heads.is_empty() {
        failures.push(format!(
            "the origin received smuggling attempts: {heads:#?}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (8) A node that never got a policy refuses traffic with 503 and a page saying so.
#[test]
fn node_without_policy_fails_closed_with_503() {
    let env = Env::new();
    let origin = Origin::start();
    let node = gateway(&env, "gw-fresh", None);
    let c = curl(
        env.path(),
        &[
            "-x",
            &format!("http://{}", proxy_of(&node)),
            &origin.url("/fresh"),
        ],
    );
    assert_eq!(c.code, 503, "{c:?}");
    assert!(
        c.body.to_ascii_lowercase().contains("no policy"),
        "the 503 page does not say the node has no policy: {c:?}"
    );
    assert!(origin.heads().is_empty(), "a request reached the origin");
}

/// (9) Unreachable upstreams: a closed port, and a name that does not resolve (and is
/// not blocked), both get 502 with a reason.
#[test]
fn unreachable_upstreams_get_502_with_a_reason() {
    let env = Env::new();
    let node = gateway(&env, "gw-502", Some("rules: []\n"));
    let proxy = format!("http://{}", proxy_of(&node));
    let port = closed_port();
    let c = curl(
        env.path(),
        &["-x", &proxy, &format!("http://127.0.0.1:{port}/x")],
    );
    assert_eq!(c.code, 502, "closed port: {c:?}");
    assert!(
        c.body.contains(&port.to_string()) && c.body.to_ascii_lowercase().contains("connect"),
        "the 502 page for a closed port gives no reason: {c:?}"
    );
    let c = curl(env.path(), &["-x", &proxy, "http://no-such-host.invalid/"]);
    assert_eq!(c.code, 502, "unresolvable name: {c:?}");
    assert!(
        c.body.contains("no-such-host.invalid") && c.body.to_ascii_lowercase().contains("resolve"),
        "the 502 page for an unresolvable name gives no reason: {c:?}"
    );
}

/// (10) A Host header that disagrees with the absolute target is refused (400).
#[test]
fn host_header_disagreeing_with_the_target_is_refused() {
    let env = Env::new();
    let origin = Origin::start();
    let node = gateway(&env, "gw-host", Some("rules: []\n"));
    let proxy = proxy_of(&node);
    let host = origin.hostport();
    let r = raw_once(
        &proxy,
        &format!("GET http://{host}/host HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.contains("Host"),
        "the 400 page does not say why: {r:?}"
    );
    // Same host, another port: also a disagreement.
    let r = raw_once(
        &proxy,
        &format!(
            "GET http://{host}/host HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n",
            closed_port()
        ),
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        origin.head_for("/host").is_none(),
        "a refused request reached the origin"
    );
    // Agreeing Host: served.
    let r = raw_once(
        &proxy,
        &format!("GET http://{host}/host HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(r.status, 200, "{r:?}");
}

/// (11) Never forward to the proxy's own listeners (a loop) or to link-local addresses.
#[test]
fn loops_and_link_local_targets_are_refused() {
    let env = Env::new();
    let node = gateway(&env, "gw-loop", Some("rules: []\n"));
    let proxy = proxy_of(&node);
    let px = format!("http://{proxy}");
    for target in [
        format!("http://{proxy}/loop"),
        format!("http://{}/loop", node.portal),
    ] {
        let c = curl(env.path(), &["-x", &px, &target]);
        assert!(
            c.code == 502 || (400..500).contains(&c.code),
            "{target}: forwarded to the node itself? {c:?}"
        );
        assert!(
            c.body.to_ascii_lowercase().contains("loop"),
            "{target}: the refusal does not mention a loop: {c:?}"
        );
    }
    let started = Instant::now();
    let c = curl(
        env.path(),
        &["-x", &px, "http://169.254.169.254/latest/meta-data/"],
    );
    assert!(
        c.code == 502 || c.code == 403,
        "link-local metadata address: {c:?}"
    );
    assert!(
        c.body.to_ascii_lowercase().contains("link-local"),
        "the refusal does not say link-local: {c:?}"
    );
    // Refused without trying to connect: no connect timeout was waited for.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the link-local refusal took {:?} (did it try to connect?)",
        started.elapsed()
    );
    // And CONNECT to it, on an allowed port, likewise.
    let r = raw_once(
        &proxy,
        "CONNECT 169.254.169.254:443 HTTP/1.1\r\nHost: 169.254.169.254:443\r\n\r\n",
    );
    assert!(r.status == 502 || r.status == 403, "{r:?}");
}

/// (12) access.log: one line per request in Squid's native format, for served,
/// tunnelled, blocked and refused requests alike.
#[test]
fn access_log_has_one_squid_line_per_request() {
    let env = Env::new();
    let origin = Origin::start();
    let tls = tls_origin();
    let node = gateway(&env, "gw-log", Some(&open_policy(tls.port())));
    let proxy = proxy_of(&node);
    let px = format!("http://{proxy}");
    let host = origin.hostport();

    let served = origin.url("/logged");
    assert_eq!(curl(env.path(), &["-x", &px, &served]).code, 200);
    let c = curl(
        env.path(),
        &["-k", "-p", "-x", &px, &format!("https://{tls}/")],
    );
    assert_eq!(c.code, 200, "{c:?}");
    assert_eq!(
        curl(env.path(), &["-x", &px, "http://blocked.example/logged"]).code,
        451
    );
    let port25 = raw_once(
        &proxy,
        "CONNECT 127.0.0.1:25 HTTP/1.1\r\nHost: 127.0.0.1:25\r\n\r\n",
    );
    assert_eq!(port25.status, 403);
    let mismatch = raw_once(
        &proxy,
        &format!("GET http://{host}/mismatch HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
    );
    assert_eq!(mismatch.status, 400);

    let miss = wait_access_line(&node, "TCP_MISS/200", &served);
    let tunnel = wait_access_line(&node, "TCP_TUNNEL/200", &tls.to_string());
    let denied = wait_access_line(&node, "TCP_DENIED/451", "http://blocked.example/logged");
    wait_access_line(&node, "TCP_DENIED/403", "127.0.0.1:25");
    wait_access_line(&node, "TCP_DENIED/400", &format!("http://{host}/mismatch"));

    // Fields: time.ms elapsed client code/status bytes method URL user hier/peer type.
    let f: Vec<&str> = miss.split_whitespace().collect();
    let (secs, ms) = f[0].split_once('.').expect("time.ms");
    assert!(
        secs.parse::<u64>().is_ok() && ms.len() == 3 && ms.parse::<u32>().is_ok(),
        "time field: {miss}"
    );
    assert!(f[1].parse::<u64>().is_ok(), "elapsed field: {miss}");
    assert_eq!(f[2], "127.0.0.1", "client field: {miss}");
    assert_eq!(
        f[4],
        ORIGIN_BODY.len().to_string(),
        "bytes field of a served request: {miss}"
    );
    assert_eq!(f[5], "GET", "{miss}");
    assert_eq!(f[7], "-", "user field: {miss}");
    assert_eq!(f[8], "HIER_DIRECT/127.0.0.1", "hierarchy field: {miss}");
    assert!(f[9].starts_with("text/plain"), "type field: {miss}");
    let t: Vec<&str> = tunnel.split_whitespace().collect();
    assert_eq!(t[5], "CONNECT", "{tunnel}");
    assert!(
        t[4].parse::<u64>().unwrap_or(0) > TLS_BODY.len() as u64,
        "the tunnel's bytes field does not count what went through it: {tunnel}"
    );
    let d: Vec<&str> = denied.split_whitespace().collect();
    assert_eq!(d[8], "HIER_NONE/-", "{denied}");

    // One line per request: the five above, nothing more, every one in the format.
    std::thread::sleep(Duration::from_millis(300));
    let lines = access_lines(&node);
    for l in &lines {
        assert_eq!(
            l.split_whitespace().count(),
            10,
            "not a Squid native line (10 fields): {l:?}"
        );
    }
    assert_eq!(
        lines.len(),
        5,
        "expected one line per request (5), access.log:\n{}",
        lines.join("\n")
    );

    // Requests refused for their framing are requests too: each leaves one line, a
    // TCP_DENIED/400 (its URL may be `-` when the request could not be parsed at all).
    let mut failures = Vec::new();
    for (what, req) in [
        (
            "Content-Length with Transfer-Encoding",
            format!(
                "POST http://{host}/smuggle-log-1 HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST http://{host}/smuggle-log-2 HTTP/1.1\r\nHost: {host}\r\n\
                 Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"
            ),
        ),
    ] {
        let before = access_lines(&node).len();
        let answer = raw_once(&proxy, &req);
        let deadline = Instant::now() + Duration::from_secs(3);
        let new = loop {
            let lines = access_lines(&node);
            if lines.len() > before || Instant::now() > deadline {
                break lines[before.min(lines.len())..].to_vec();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        match new.as_slice() {
            [l] if l.contains(" TCP_DENIED/400 ") => {}
            [] => failures.push(format!(
                "{what} (answered {}): no access.log line within 3 s",
                answer.status
            )),
            _ => failures.push(format!(
                "{what} (answered {}): expected one TCP_DENIED/400 line, got {new:?}",
                answer.status
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\naccess.log:\n{}",
        failures.join("\n"),
        access_lines(&node).join("\n")
    );
}

/// (13) Per-client connection limit: past it, a connection's request is answered 429
/// and recorded.
#[test]
fn per_client_connection_limit_answers_429_and_records_it() {
    let env = Env::new();
    let origin = Origin::start();
    let node = gateway(
        &env,
        "gw-limit",
        Some("limits: { max_connections_per_client: 2 }\n"),
    );
    let proxy = proxy_of(&node);
    let host = origin.hostport();
    let _a = Raw::connect(&proxy);
    let _b = Raw::connect(&proxy);
    // Let the accept loop take both before the third arrives.
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Raw::connect(&proxy);
    c.send(&format!(
        "GET http://{host}/over-limit HTTP/1.1\r\nHost: {host}\r\n\r\n"
    ));
    let r = c.response(false);
    assert_eq!(r.status, 429, "{r:?}");
    assert!(
        r.body.contains("max_connections_per_client"),
        "the 429 page does not name the limit: {r:?}"
    );
    assert!(
        origin.head_for("/over-limit").is_none(),
        "a request over the limit reached the origin"
    );
    wait_access_line(
        &node,
        "TCP_DENIED/429",
        &format!("http://{host}/over-limit"),
    );

    // Once one of the two closes, a new connection is served again.
    drop(_a);
    drop(c);
    let served = eventually(
        Duration::from_secs(5),
        "a connection under the limit",
        || {
            let r = raw_once(
            &proxy,
            &format!("GET http://{host}/under-limit HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
            (r.status == 200).then_some(r)
        },
    );
    assert_eq!(served.body, ORIGIN_BODY);
}

/// The header read timeout counts from a head's first byte: a kept-alive connection
/// quiet for longer than it (but less than the idle timeout) still serves its next
/// request; a head trickled in slower than it (slowloris) gets 408, is recorded, and
/// never reaches the origin.
#[test]
fn slow_heads_get_408_and_idle_keep_alive_waits_for_idle_timeout() {
    let env = Env::new();
    let origin = Origin::start();
    let node = gateway(
        &env,
        "gw-heads",
        Some("rules: []\nlimits: { header_read_timeout: 1s, idle_timeout: 6s }\n"),
    );
    let proxy = proxy_of(&node);
    let host = origin.hostport();
    let req = |path: &str| format!("GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n\r\n");

    let mut conn = Raw::connect(&proxy);
    conn.send(&req("/before-quiet"));
    assert_eq!(conn.response(false).status, 200);
    // Quiet for twice the header timeout: still open, still served.
    assert!(
        !conn.closed_within(Duration::from_millis(2500)),
        "an idle keep-alive connection was closed by the header read timeout"
    );
    conn.send(&req("/after-quiet"));
    let r = conn.response(false);
    assert_eq!(r.status, 200, "{r:?}");

    // A head trickled in, a line every 400 ms, that is still not whole after 1 s.
    let mut slow = Raw::connect(&proxy);
    let t = Instant::now();
    slow.send(&format!("GET http://{host}/slowloris HTTP/1.1\r\n"));
    for i in 0..2 {
        std::thread::sleep(Duration::from_millis(400));
        slow.send(&format!("X-Slow-{i}: 1\r\n"));
    }
    let r = slow.response(false);
    assert_eq!(r.status, 408, "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the 408 came after {:?}",
        t.elapsed()
    );
    assert!(
        slow.closed_within(Duration::from_secs(2)),
        "still open after the 408"
    );
    assert!(
        origin.head_for("/slowloris").is_none(),
        "the slow head was forwarded"
    );
    eventually(Duration::from_secs(5), "the 408's access.log line", || {
        access_lines(&node)
            .into_iter()
            .find(|l| l.contains("/408 "))
    });
}

/// A CONNECT tunnel carries large streams both ways intact, bytes the client sent in
/// the same packet as its CONNECT head included (they reach the origin first), passes
/// on a half close, and its record counts the bytes sent to the client.
#[test]
fn a_tunnel_carries_large_streams_both_ways_and_counts_them() {
    const UP: usize = 6_000_000;
    const DOWN: usize = 9_000_000;
    // An origin that reads everything until the client's half close, then answers with
    // DOWN bytes and the first 16 bytes it read, and closes.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the origin");
    let origin = l.local_addr().expect("origin address");
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        let Some(Ok(mut s)) = l.incoming().next() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let pattern: Vec<u8> = (0..DOWN).map(|i| (i % 253) as u8).collect();
        let _ = s.write_all(&pattern);
        let _ = s.write_all(&all[..16.min(all.len())]);
        *seen.lock().unwrap() = all;
    });
    let env = Env::new();
    let node = gateway(&env, "gw-tunnel", Some(&open_policy(origin.port())));
    let mut c = TcpStream::connect(proxy_of(&node)).expect("connect to the proxy");
    let _ = c.set_read_timeout(Some(Duration::from_secs(20)));
    let upload: Vec<u8> = (0..UP).map(|i| (i % 241) as u8).collect();
    // The head and the first bytes of the tunnel in one write.
    let mut first = format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n").into_bytes();
    first.extend_from_slice(b"EARLY-BYTES-0123");
    c.write_all(&first).expect("send the CONNECT");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = c.read(&mut byte).expect("read the CONNECT answer");
        assert_eq!(n, 1, "the proxy closed before answering: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut w = c.try_clone().expect("clone the client socket");
    let sender = std::thread::spawn(move || {
        w.write_all(&upload).expect("send through the tunnel");
        w.shutdown(std::net::Shutdown::Write).expect("half close");
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).expect("read through the tunnel");
    sender.join().expect("the sender");
    let at_origin = got.lock().unwrap().clone();
    assert_eq!(at_origin.len(), 16 + UP, "bytes lost on the way up");
    assert_eq!(
        &at_origin[..16],
        b"EARLY-BYTES-0123",
        "the early bytes came late"
    );
    assert!(
        at_origin[16..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 241) as u8),
        "the upward stream changed"
    );
    assert_eq!(back.len(), DOWN + 16, "bytes lost on the way down");
    assert!(
        back[..DOWN]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 253) as u8),
        "the downward stream changed"
    );
    assert_eq!(&back[DOWN..], b"EARLY-BYTES-0123");
    let line = wait_access_line(&node, "TCP_TUNNEL/200", &origin.to_string());
    let bytes: usize = line
        .split_whitespace()
        .nth(4)
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    assert_eq!(bytes, DOWN + 16, "{line}");
}

/// Pipes per tunnel: 4 descriptors. With a low descriptor limit, only a sixteenth of it
/// goes to tunnel pipes: the tunnels past that budget copy instead, and all of them
/// work; a quiet copying tunnel ends after the idle limit, as a spliced one does; the
/// pipes of closed tunnels are given back.
#[test]
fn tunnels_past_the_pipe_budget_copy_and_all_work() {
    // A line echoed back on every connection.
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the origin");
    let origin = l.local_addr().expect("origin address");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            std::thread::spawn(move || {
                let Ok(mut w) = s.try_clone() else { return };
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { return };
                    if w.write_all(format!("{line}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let env = Env::new();
    // 128 descriptors: 8 tunnels with pipes.
    let node = Node::run_with_nofile(NodeDir::create(&env, "gw-pipes", &next_ip(), ""), 128);
    let policy = format!(
        "{}limits: {{ idle_timeout: 2s }}\n",
        open_policy(origin.port())
    );
    apply(&env, &node, &policy);
    let pipes = || pipe_fds(node.pid);
    let before = pipes();
    let proxy = proxy_of(&node);
    let open = |i: usize| {
        let mut c = TcpStream::connect(&proxy).expect("connect to the proxy");
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        c.write_all(format!("CONNECT {origin} HTTP/1.1\r\nHost: {origin}\r\n\r\n").as_bytes())
            .expect("send the CONNECT");
        let mut r = BufReader::new(c.try_clone().expect("clone"));
        let mut status = String::new();
        r.read_line(&mut status).expect("read the CONNECT answer");
        assert!(status.starts_with("HTTP/1.1 200"), "tunnel {i}: {status}");
        let mut line = String::new();
        while line != "\r\n" {
            line.clear();
            r.read_line(&mut line)
                .expect("read the CONNECT answer's head");
        }
        (c, r)
    };
    let mut tunnels: Vec<_> = (0..12).map(open).collect();
    for (i, (c, r)) in tunnels.iter_mut().enumerate() {
        c.write_all(format!("hello {i}\n").as_bytes())
            .expect("send through the tunnel");
        let mut back = String::new();
        r.read_line(&mut back).expect("read through the tunnel");
        assert_eq!(back, format!("hello {i}\n"), "tunnel {i}");
    }
    assert_eq!(
        pipes() - before,
        8 * 4,
        "pipes for exactly the budget of 8 tunnels"
    );
    // Quiet for the idle limit, copying tunnels end too (the last four opened).
    let quiet = Instant::now();
    for (i, (_, r)) in tunnels.iter_mut().enumerate().skip(8) {
        let mut rest = String::new();
        let n = r.read_line(&mut rest);
        assert!(matches!(n, Ok(0)), "tunnel {i} still open: {n:?} {rest:?}");
    }
    assert!(
        quiet.elapsed() < Duration::from_secs(8),
        "the quiet copying tunnels ended after {:?}",
        quiet.elapsed()
    );
    drop(tunnels);
    eventually(
        Duration::from_secs(5),
        "the pipes of closed tunnels",
        || (pipes() == before).then_some(()),
    );
    let (mut c, mut r) = open(12);
    c.write_all(b"again\n").expect("send through a new tunnel");
    let mut back = String::new();
    r.read_line(&mut back).expect("read through a new tunnel");
    assert_eq!(back, "again\n");
    assert_eq!(pipes() - before, 4, "a new tunnel gets pipes again");
}

/// The threads of `pid` named `ssqd-proxy-N` (the proxy's workers): (name, tid), by
/// name.
fn proxy_workers(pid: u32) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("/proc/PID/task")
        .filter_map(|e| {
            let tid = e.ok()?.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok()?;
            let name = name.trim().to_string();
            name.starts_with("ssqd-proxy-").then_some((name, tid))
        })
        .collect();
    out.sort();
    out
}

/// How many times thread `tid` of `pid` went to sleep (voluntary context switches):
/// an idle worker sleeps, so each request served after a pause counts at least one.
fn sleeps(pid: u32, tid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .expect("/proc/PID/task/TID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// Client connections are served on the proxy's worker threads (SSQD_WORKER_THREADS of
/// them, each its own single-threaded runtime): two connections open at once go to
/// two different workers, and both keep working for several keep-alive requests.
#[test]
fn connections_are_spread_over_the_proxy_workers() {
    let env = Env::new();
    let origin = Origin::start();
    let nd = NodeDir::create(&env, "gw-workers", &next_ip(), "");
    let node = Node::run_with_workers(nd, 2);
    apply(&env, &node, "rules: []\n");
    let proxy = proxy_of(&node);
    let host = origin.hostport();

    let workers = proxy_workers(node.pid);
    let names: Vec<&str> = workers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ssqd-proxy-1", "ssqd-proxy-2"], "{workers:?}");
    let before: Vec<u64> = workers.iter().map(|(_, t)| sleeps(node.pid, t)).collect();

    // Both open before either sends: the second goes to the worker with fewer.
    let mut a = Raw::connect(&proxy);
    let mut b = Raw::connect(&proxy);
    const ROUNDS: u64 = 4;
    for i in 0..ROUNDS {
        for (c, name) in [(&mut a, "a"), (&mut b, "b")] {
            c.send(&format!(
                "GET http://{host}/{name}{i} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            ));
            let r = c.response(false);
            assert_eq!(r.status, 200, "connection {name}, request {i}: {r:?}");
            assert_eq!(r.body, ORIGIN_BODY);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let woke: Vec<u64> = workers
        .iter()
        .zip(&before)
        .map(|((_, t), b)| sleeps(node.pid, t) - b)
        .collect();
    assert!(
        woke.iter().all(|&n| n >= ROUNDS),
        "each worker should have served one connection ({ROUNDS} requests, each after a pause); \
         times each worker slept meanwhile: {woke:?}"
    );
}

/// access.log on a full disk (here /dev/full): requests are still served, and the
/// failed write is reported in extended.log once, not once per write.
#[test]
fn a_full_disk_under_access_log_is_reported_once() {
    let env = Env::new();
    let origin = Origin::start();
    let nd = NodeDir::create(&env, "gw-full", &next_ip(), "");
    std::fs::create_dir_all(&nd.log).expect("log dir");
    std::os::unix::fs::symlink("/dev/full", nd.log.join("access.log")).expect("symlink");
    let node = Node::run(nd);
    apply(&env, &node, "rules: []\n");
    let proxy = proxy_of(&node);
    let host = origin.hostport();
    let mut c = Raw::connect(&proxy);
    for i in 0..6 {
        c.send(&format!(
            "GET http://{host}/full{i} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ));
        assert_eq!(c.response(false).status, 200, "request {i}");
        // Past the writer's 50 ms tick: each request's line is a write of its own.
        std::thread::sleep(Duration::from_millis(120));
    }
    let warned = |t: &str| t.lines().filter(|l| l.contains("cannot write")).count();
    eventually(Duration::from_secs(5), "the access.log warning", || {
        (warned(&node.files.extended_log()) > 0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let ext = node.files.extended_log();
    assert_eq!(warned(&ext), 1, "extended.log:\n{ext}");
}

/// Each worker writes its requests' access.log lines into a buffer of its own, which
/// the writer thread takes on its tick: lines of both workers all reach the file, each
/// once, and a SIGTERM right after the last answer still writes them before the exit.
#[test]
fn access_log_lines_from_every_worker_reach_the_file_by_the_exit() {
    let env = Env::new();
    let origin = Origin::start();
    let nd = NodeDir::create(&env, "gw-wlog", &next_ip(), "");
    let mut node = Node::run_with_workers(nd, 2);
    apply(&env, &node, "rules: []\n");
    let proxy = proxy_of(&node);
    let host = origin.hostport();
    // Both open before either sends: one connection per worker.
    let mut a = Raw::connect(&proxy);
    let mut b = Raw::connect(&proxy);
    const EACH: usize = 25;
    for i in 0..EACH {
        for (c, name) in [(&mut a, "a"), (&mut b, "b")] {
            c.send(&format!(
                "GET http://{host}/{name}{i} HTTP/1.1\r\nHost: {host}\r\n\r\n"
            ));
            let r = c.response(false);
            assert_eq!(r.status, 200, "connection {name}, request {i}: {r:?}");
        }
    }
    drop((a, b));
    let status = node.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exit status: {status:?}");
    let lines = access_lines(&node);
    for name in ["a", "b"] {
        for i in 0..EACH {
            let url = format!(" http://{host}/{name}{i} ");
            let n = lines.iter().filter(|l| l.contains(&url)).count();
            assert_eq!(
                n,
                1,
                "lines for{url}: {n}; access.log:\n{}",
                lines.join("\n")
            );
        }
    }
    assert_eq!(lines.len(), 2 * EACH, "access.log:\n{}", lines.join("\n"));
    assert!(
        lines.iter().all(|l| l.contains(" TCP_MISS/200 ")),
        "access.log:\n{}",
        lines.join("\n")
    );
}
