//! The report pipeline end to end: slaves' proxies record requests, spool them, ship them
//! to the master, and `ssq report` counts them — real `ssqd` processes, real `ssq`.
//!
//! What issue 5 asks to see: N requests through two slaves are counted exactly N, split by
//! node; a master stopped during traffic and restarted still counts exactly N; a slave
//! killed with SIGKILL mid-traffic loses nothing that reached its spool and duplicates
//! nothing; a torn spool tail is cut, logged and the rest shipped; a full spool shows as a
//! gap in `ssq report nodes`; `ssq status` shows the spool and the shipping.
//!
//! Every request goes to its own origin host (127.0.B.x: all of 127/8 reaches the one
//! in-process origin listening on 0.0.0.0), so `ssq report domains` names each request and
//! a count of 2 for any host is a duplicate, a missing host a loss.

mod util;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// How long shipping may take to catch up (the shipper's backoff is capped at 5 s).
const CATCH_UP: Duration = Duration::from_secs(30);

/// The policy every test applies: one domain blocked.
const POLICY: &str = "\
rules:
  - name: no-blocked
    domains: [blocked.example]
    action: deny
";

// ---------------------------------------------------------------------------------
// The origin and the client

/// An in-process HTTP/1.1 origin on 0.0.0.0 (so any 127.0.0.0/8 address reaches it):
/// answers every request with 200 `ok` and closes the connection.
struct Origin {
    port: u16,
}

impl Origin {
    fn start() -> Origin {
        let l = TcpListener::bind("0.0.0.0:0").expect("bind origin");
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                std::thread::spawn(move || serve_once(s));
            }
        });
        Origin { port }
    }

    /// The URL of request `i` of host block `block`: its own host 127.0.B.x.
    fn url(&self, block: u8, i: usize) -> String {
        format!("http://{}:{}/r{i}", host(block, i), self.port)
    }
}

/// Host `i` of block `block` (blocks of 250 hosts; a block is 100 or more so no node
/// address 127.0.0.x is ever a target).
fn host(block: u8, i: usize) -> String {
    let b = usize::from(block) + i / 250;
    assert!(b < 255, "host block overflow");
    format!("127.0.{b}.{}", 1 + i % 250)
}

fn serve_once(s: TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut w = match s.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
    }
    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n");
}

/// A keep-alive HTTP/1.1 proxy client over one TcpStream (reconnecting when the proxy
/// closes), from a chosen source address.
struct Client {
    proxy: SocketAddr,
    bind: Option<IpAddr>,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn new(proxy: &str, bind: Option<&str>) -> Client {
        Client {
            proxy: proxy.parse().expect("proxy address"),
            bind: bind.map(|b| b.parse().expect("bind address")),
            conn: None,
        }
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let Some(ip) = self.bind else {
            return TcpStream::connect_timeout(&self.proxy, Duration::from_secs(5));
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let s = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(ip, 0))?;
            tokio::time::timeout(Duration::from_secs(5), sock.connect(self.proxy))
                .await
                .map_err(|_| std::io::Error::other("connect timeout"))?
        })?;
        let s = s.into_std()?;
        s.set_nonblocking(false)?;
        Ok(s)
    }

    /// GET `url` through the proxy; the status once the whole response was read.
    fn get(&mut self, url: &str) -> std::io::Result<u16> {
        // A connection the proxy closed while idle is retried once on a fresh one.
        for attempt in 0..2 {
            let fresh = self.conn.is_none();
            if fresh {
                let s = self.connect()?;
                s.set_read_timeout(Some(Duration::from_secs(15)))?;
                self.conn = Some(BufReader::new(s));
            }
            match self.exchange(url) {
                Ok(code) => return Ok(code),
                Err(e) => {
                    self.conn = None;
                    if fresh || attempt == 1 {
                        return Err(e);
                    }
                }
            }
        }
        unreachable!()
    }

    fn exchange(&mut self, url: &str) -> std::io::Result<u16> {
        let r = self.conn.as_mut().expect("connected");
        let authority = url
            .strip_prefix("http://")
            .and_then(|u| u.split('/').next())
            .unwrap_or("");
        let req =
            format!("GET {url} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: reports-e2e\r\n\r\n");
        r.get_mut().write_all(req.as_bytes())?;
        let mut status_line = String::new();
        if r.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the answer",
            ));
        }
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut len: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed in the head",
                ));
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            } else if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        if chunked {
            loop {
                let mut size = String::new();
                r.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .map_err(|_| std::io::Error::other(format!("bad chunk size {size:?}")))?;
                let mut chunk = vec![0u8; n + 2];
                r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = len {
            let mut body = vec![0u8; n];
            r.read_exact(&mut body)?;
        } else {
            let mut rest = Vec::new();
            r.read_to_end(&mut rest)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok(code)
    }
}

/// GET each URL through `proxy` from `bind`, requiring every answer to be `want`.
fn send_all(proxy: &str, bind: Option<&str>, urls: &[String], want: u16) {
    let mut c = Client::new(proxy, bind);
    for u in urls {
        let code = c
            .get(u)
            .unwrap_or_else(|e| panic!("GET {u} through {proxy}: {e}"));
        assert_eq!(code, want, "GET {u} through {proxy}");
    }
}

/// Requests `0..n` of `block`.
fn urls(origin: &Origin, block: u8, n: usize) -> Vec<String> {
    (0..n).map(|i| origin.url(block, i)).collect()
}

// ---------------------------------------------------------------------------------
// Nodes

fn start_master(env: &Env, name: &str) -> Node {
    Node::start(env, name, &next_ip(), "role: master\n")
}

fn start_slave(env: &Env, name: &str, master: &Node, extra: &str) -> Node {
    Node::start(
        env,
        name,
        &next_ip(),
        &format!("master: {}\n{extra}", master.portal),
    )
}

static POLICY_N: AtomicUsize = AtomicUsize::new(0);

/// Wait until the master knows every named slave, then apply `POLICY` with `--wait`.
fn apply_policy(env: &Env, master: &Node, names: &[&str]) {
    eventually(
        Duration::from_secs(15),
        &format!("the master to know {names:?}"),
        || {
            let st = master.status(env);
            names
                .iter()
                .all(|n| slave_row(&st, n).is_some())
                .then_some(())
        },
    );
    let n = POLICY_N.fetch_add(1, Ordering::SeqCst);
    let file = env.path().join(format!("policy-{n}.yaml"));
    std::fs::write(&file, POLICY).unwrap();
    let out = env.ssq(&[
        "policy",
        "apply",
        file.to_str().unwrap(),
        "--master",
        &master.portal,
        "--wait",
    ]);
    assert_ok(&out, "ssq policy apply --wait");
}

/// The master's row for slave `name` in its status.
fn slave_row<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["slaves"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// Restart a stopped master on the address it had (its port written into its
/// startup.yaml), as tests/sync.rs does.
fn restart_on_same_address(master: &Node) -> Node {
    let old = master.portal.clone();
    let text = std::fs::read_to_string(&master.files.config).unwrap();
    let ip = master.ip().to_string();
    let fixed = text.replace(&format!("\"{ip}:0\""), &format!("\"{old}\""));
    if fixed != text {
        std::fs::write(&master.files.config, fixed).unwrap();
    }
    let m = Node::run(master.files.clone());
    assert_eq!(m.portal, old, "the master came back elsewhere");
    m
}

fn proxy_of(node: &Node) -> String {
    node.proxy.clone().expect("a slave has a proxy")
}

// ---------------------------------------------------------------------------------
// Reports

/// `ssq -o json report KIND --master M ARGS`.
fn report(env: &Env, master: &Node, kind: &str, args: &[&str]) -> Value {
    let mut all = vec!["report", kind, "--master", &master.portal];
    all.extend_from_slice(args);
    env.ssq_json(&all)
}

/// `ssq -o csv report KIND --master M ARGS`, required to succeed.
fn report_csv(env: &Env, master: &Node, kind: &str, args: &[&str]) -> String {
    let mut all = vec!["-o", "csv", "report", kind, "--master", &master.portal];
    all.extend_from_slice(args);
    let out: Output = env.ssq(&all);
    assert_ok(&out, &format!("ssq {}", all.join(" ")));
    stdout(&out)
}

/// The summary's total requests (for one slave with `slave`).
fn total(env: &Env, master: &Node, slave: Option<&str>) -> u64 {
    let mut args = vec![];
    if let Some(s) = slave {
        args.extend_from_slice(&["--slave", s]);
    }
    let r = report(env, master, "summary", &args);
    r["requests"]
        .as_u64()
        .unwrap_or_else(|| panic!("summary without integer requests: {r}"))
}

/// Wait until the summary (of `slave`, or all) counts `want` requests; then wait a
/// little longer and require it to stay there (a late resend must insert nothing).
fn wait_total(env: &Env, master: &Node, slave: Option<&str>, want: u64) {
    let deadline = Instant::now() + CATCH_UP;
    let last = loop {
        let last = total(env, master, slave);
        if last == want {
            break last;
        }
        assert!(
            last < want,
            "the master counts {last} requests{} but only {want} were sent (duplicates?)",
            slave.map(|s| format!(" of {s}")).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "the master counts {last} requests{} after {CATCH_UP:?}; {want} were sent",
            slave.map(|s| format!(" of {s}")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_millis(1500));
    let again = total(env, master, slave);
    assert_eq!(
        again, want,
        "the count moved after it reached {want} (was {last})"
    );
}

/// `report domains` (all rows) as host → (requests, blocked).
fn domains(env: &Env, master: &Node, slave: Option<&str>) -> BTreeMap<String, (u64, u64)> {
    let mut args = vec!["--limit", "10000"];
    if let Some(s) = slave {
        args.extend_from_slice(&["--slave", s]);
    }
    let r = report(env, master, "domains", &args);
    r["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("domains without rows: {r}"))
        .iter()
        .map(|row| {
            (
                row["domain"].as_str().expect("domain").to_string(),
                (
                    row["requests"].as_u64().expect("integer requests"),
                    row["blocked"].as_u64().expect("integer blocked"),
                ),
            )
        })
        .collect()
}

/// Require every host of `got` to be counted once: a host is one request.
fn assert_each_once(got: &BTreeMap<String, (u64, u64)>, what: &str) {
    let dup: Vec<_> = got.iter().filter(|(_, (n, _))| *n != 1).collect();
    assert!(
        dup.is_empty(),
        "{what}: hosts counted other than once (each was requested once): {dup:?}"
    );
}

/// The `report nodes` row of `name`.
fn nodes_row(env: &Env, master: &Node, name: &str) -> Option<Value> {
    let r = report(env, master, "nodes", &[]);
    r["rows"]
        .as_array()?
        .iter()
        .find(|row| row["node"] == name)
        .cloned()
}

/// The lines of `node`'s extended.log in category `report`.
fn report_log_lines(files: &NodeDir) -> Vec<String> {
    files
        .extended_log()
        .lines()
        .filter(|l| l.contains(" report: "))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------
// The spool, read as documented in src/spool/mod.rs

/// The spool's segment files, in seq order (their names).
fn segments(data: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(data.join("spool"))
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".log"))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The good records of the spool (each frame `len u32 LE | crc32c u32 LE | payload`),
/// stopping in each segment at the first torn or corrupt frame — what a restart keeps.
fn spool_records(data: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for seg in segments(data) {
        out.extend(parse_segment(&std::fs::read(&seg).unwrap_or_default()).0);
    }
    out
}

/// The good frames of one segment, and how many bytes follow the last of them.
fn parse_segment(bytes: &[u8]) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        if len > bytes.len() - at - 8 {
            break;
        }
        let payload = &bytes[at + 8..at + 8 + len];
        if ssq::spool::crc32c(payload) != crc {
            break;
        }
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            break;
        };
        out.push(v);
        at += 8 + len;
    }
    (out, bytes.len() - at)
}

/// The hosts of the request records among spool records.
fn spooled_request_hosts(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["payload"]["kind"] == "request")
        .map(|r| {
            let url = r["payload"]["url"]
                .as_str()
                .expect("a request record's url");
            ssq::reportapi::url_host(url)
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Tests

/// (1) 120 requests through slave A (10 of them blocked) and 80 through slave B: the
/// master's summary counts exactly 200, 120/80 by node; domains, clients, blocked, nodes
/// and timeline agree; CSV has its header and one line per row.
#[test]
fn requests_through_two_slaves_are_counted_exactly_once_by_node() {
    let env = Env::new();
    let origin = Origin::start();
    let master = start_master(&env, "m1");
    let a = start_slave(&env, "r1a", &master, "");
    let b = start_slave(&env, "r1b", &master, "");
    apply_policy(&env, &master, &["r1a", "r1b"]);

    let a_urls = urls(&origin, 101, 110);
    let blocked: Vec<String> = (0..10)
        .map(|i| format!("http://blocked.example/b{i}"))
        .collect();
    let b_urls = urls(&origin, 111, 80);
    let (pa, pb) = (proxy_of(&a), proxy_of(&b));
    let ta = {
        let (pa, a_urls, blocked) = (pa.clone(), a_urls.clone(), blocked.clone());
        std::thread::spawn(move || {
            send_all(&pa, Some("127.0.0.3"), &a_urls[..55], 200);
            send_all(&pa, Some("127.0.0.3"), &blocked, 451);
            send_all(&pa, Some("127.0.0.3"), &a_urls[55..], 200);
        })
    };
    send_all(&pb, Some("127.0.0.4"), &b_urls, 200);
    ta.join().expect("traffic through r1a");

    wait_total(&env, &master, None, 200);
    let s = report(&env, &master, "summary", &[]);
    assert_eq!(s["requests"], 200, "{s}");
    assert_eq!(s["blocked"], 10, "{s}");
    assert_eq!(s["clients"], 2, "{s}");
    assert!(s["from"].is_u64() && s["to"].is_u64(), "{s}");
    let rows = s["rows"].as_array().expect("summary rows");
    let by_node: BTreeMap<&str, (&Value, &Value)> = rows
        .iter()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or(""),
                (&r["requests"], &r["blocked"]),
            )
        })
        .collect();
    assert_eq!(by_node.len(), 2, "{s}");
    assert_eq!(by_node["r1a"], (&Value::from(120), &Value::from(10)), "{s}");
    assert_eq!(by_node["r1b"], (&Value::from(80), &Value::from(0)), "{s}");
    assert_eq!(total(&env, &master, Some("r1a")), 120);
    assert_eq!(total(&env, &master, Some("r1b")), 80);

    // Domains: each origin host once, blocked.example ten times, all blocked.
    let d = domains(&env, &master, None);
    assert_eq!(d.len(), 191, "domains: {d:?}");
    assert_eq!(d.get("blocked.example"), Some(&(10, 10)), "{d:?}");
    let origin_hosts: BTreeMap<_, _> = d
        .iter()
        .filter(|(h, _)| *h != "blocked.example")
        .map(|(h, v)| (h.clone(), *v))
        .collect();
    assert_each_once(&origin_hosts, "domains");
    let want: BTreeSet<String> = (0..110)
        .map(|i| host(101, i))
        .chain((0..80).map(|i| host(111, i)))
        .collect();
    assert_eq!(
        origin_hosts.keys().cloned().collect::<BTreeSet<_>>(),
        want,
        "the hosts the master reports are not the hosts requested"
    );
    let db = domains(&env, &master, Some("r1b"));
    assert_eq!(db.len(), 80, "domains --slave r1b: {db:?}");

    // Clients: one address per slave's client.
    let c = report(&env, &master, "clients", &[]);
    let clients: BTreeMap<String, u64> = c["rows"]
        .as_array()
        .expect("clients rows")
        .iter()
        .map(|r| {
            (
                r["client"].as_str().expect("client").to_string(),
                r["requests"].as_u64().expect("integer requests"),
            )
        })
        .collect();
    assert_eq!(
        clients,
        BTreeMap::from([
            ("127.0.0.3".to_string(), 120),
            ("127.0.0.4".to_string(), 80)
        ]),
        "{c}"
    );

    // Blocked: the one rule.
    let bl = report(&env, &master, "blocked", &[]);
    let rows = bl["rows"].as_array().expect("blocked rows");
    assert_eq!(rows.len(), 1, "{bl}");
    assert_eq!(rows[0]["domain"], "blocked.example", "{bl}");
    assert_eq!(rows[0]["rule"], "no-blocked", "{bl}");
    assert_eq!(rows[0]["requests"], 10, "{bl}");

    // Nodes: both, with their counts and no gaps.
    for (name, n) in [("r1a", 120), ("r1b", 80)] {
        let row = nodes_row(&env, &master, name).unwrap_or_else(|| panic!("no nodes row {name}"));
        assert_eq!(row["requests"], n, "{row}");
        assert_eq!(row["gaps"], 0, "{row}");
        assert_eq!(row["duplicate_name"], false, "{row}");
        assert!(row["acked"].as_u64().unwrap_or(0) >= n, "{row}");
        assert!(row["last_record_ms"].is_u64(), "{row}");
    }

    // Timeline: the buckets add up.
    let t = report(&env, &master, "timeline", &[]);
    let sum: u64 = t["rows"]
        .as_array()
        .expect("timeline rows")
        .iter()
        .map(|r| r["requests"].as_u64().expect("integer requests"))
        .sum();
    assert_eq!(sum, 200, "{t}");

    // CSV: the header, one line per row.
    let csv = report_csv(&env, &master, "summary", &[]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"node,requests,blocked,bytes,clients"),
        "{csv}"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].starts_with("r1a,120,10,"), "{csv}");
    assert!(lines[2].starts_with("r1b,80,0,"), "{csv}");
    let csv = report_csv(&env, &master, "domains", &["--limit", "10000"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"domain,requests,blocked,bytes"),
        "{csv}"
    );
    assert_eq!(lines.len(), 1 + 191, "{csv}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("blocked.example,10,10,")),
        "{csv}"
    );
}

/// (2) The master stopped (SIGTERM) while traffic runs and restarted on its address: every
/// request is still served (the slave enforces its last good policy) and, once shipping
/// catches up, counted exactly once.
#[test]
fn master_restart_during_traffic_loses_and_duplicates_nothing() {
    let env = Env::new();
    let origin = Origin::start();
    let mut master = start_master(&env, "m2");
    let slave = start_slave(&env, "r2", &master, "reports: { fsync_ms: 50 }\n");
    apply_policy(&env, &master, &["r2"]);

    const N: usize = 150;
    let all = urls(&origin, 121, N);
    let (tx, rx) = mpsc::channel::<usize>();
    let traffic = {
        let (proxy, all) = (proxy_of(&slave), all.clone());
        std::thread::spawn(move || {
            let mut c = Client::new(&proxy, None);
            let mut failed = Vec::new();
            for (i, u) in all.iter().enumerate() {
                match c.get(u) {
                    Ok(200) => {}
                    other => failed.push(format!("{u}: {other:?}")),
                }
                let _ = tx.send(i + 1);
                std::thread::sleep(Duration::from_millis(10));
            }
            failed
        })
    };
    let wait_done = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while rx
            .recv_timeout(Duration::from_secs(30))
            .is_ok_and(|d| d < n)
        {
            assert!(Instant::now() < deadline, "traffic too slow");
        }
    };
    wait_done(40);
    assert_eq!(
        master.stop().code(),
        Some(0),
        "the master's exit on SIGTERM"
    );
    wait_done(90);
    let master = restart_on_same_address(&master);
    let failed = traffic.join().expect("traffic thread");
    assert!(
        failed.is_empty(),
        "requests not served with 200 while the master was away: {failed:?}"
    );

    wait_total(&env, &master, Some("r2"), N as u64);
    let d = domains(&env, &master, Some("r2"));
    assert_each_once(&d, "after the master's restart");
    let want: BTreeSet<String> = (0..N).map(|i| host(121, i)).collect();
    assert_eq!(d.keys().cloned().collect::<BTreeSet<_>>(), want);
    let row = nodes_row(&env, &master, "r2").expect("nodes row r2");
    assert_eq!(row["gaps"], 0, "{row}");
    assert_eq!(row["epochs"], 1, "{row}");
}

/// (3) A slave killed with SIGKILL in the middle of traffic and restarted: every record
/// that reached its spool is in the master's store exactly once, and nothing else is.
///
/// Why the spool and not access.log or the client's count: a request's record is queued
/// when its response body is dropped, appended to access.log (flushed when the writer's
/// queue runs empty) and to the spool (written out and fsynced every `fsync_ms`). SIGKILL
/// loses whatever is still queued or in either buffer, and the two buffers are flushed at
/// different moments, so neither the completed requests nor the access.log lines are an
/// exact measure of what reached the spool. The spool itself is: with the default 8 MiB
/// segments all of this test's records stay in the one segment being written (which is
/// never deleted), so reading its good frames right after the kill (before the restart
/// cuts a torn tail) gives exactly the records that reached the spool. The master must
/// then hold exactly those, plus what is sent after the restart — each host once.
#[test]
fn slave_killed_mid_traffic_ships_what_reached_its_spool_exactly_once() {
    let env = Env::new();
    let origin = Origin::start();
    let master = start_master(&env, "m3");
    let mut slave = start_slave(&env, "r3", &master, "reports: { fsync_ms: 100 }\n");
    apply_policy(&env, &master, &["r3"]);

    // Some records shipped and acknowledged before the kill.
    let first = urls(&origin, 131, 60);
    send_all(&proxy_of(&slave), None, &first, 200);
    wait_total(&env, &master, Some("r3"), 60);

    // Then traffic, killed in the middle.
    let mid: Vec<String> = (60..400).map(|i| origin.url(131, i)).collect();
    let (tx, rx) = mpsc::channel::<usize>();
    let traffic = {
        let proxy = proxy_of(&slave);
        std::thread::spawn(move || {
            let mut c = Client::new(&proxy, None);
            let mut done = 0;
            for u in &mid {
                if c.get(u).is_err() {
                    break;
                }
                done += 1;
                let _ = tx.send(done);
                std::thread::sleep(Duration::from_millis(10));
            }
            done
        })
    };
    while rx
        .recv_timeout(Duration::from_secs(30))
        .is_ok_and(|d| d < 80)
    {}
    slave.kill();
    let completed_mid = traffic.join().expect("traffic thread");
    assert!(
        completed_mid >= 40,
        "only {completed_mid} requests before the kill"
    );
    assert!(
        completed_mid < 340,
        "the traffic outlived the kill ({completed_mid} requests)"
    );

    let records = spool_records(&slave.files.data);
    assert_eq!(
        segments(&slave.files.data).len(),
        1,
        "the test expects one segment (default 8 MiB)"
    );
    let reached = spooled_request_hosts(&records);
    let reached_set: BTreeSet<String> = reached.iter().cloned().collect();
    assert_eq!(
        reached.len(),
        reached_set.len(),
        "a host twice in the spool"
    );
    for i in 0..60 {
        assert!(
            reached_set.contains(&host(131, i)),
            "acknowledged record {} is not in the spool's segment",
            host(131, i)
        );
    }
    // 80 requests, 10 ms apart, span at least eight fsync periods: some of them must be
    // in the spool (else the kill was not "in the middle", or the spool is not fsynced).
    assert!(
        reached.len() > 60,
        "none of the {completed_mid} requests of the last {:?} reached r3's spool",
        Duration::from_millis(800)
    );
    let epoch = std::fs::read_to_string(slave.files.data.join("spool/epoch"))
        .expect("spool/epoch")
        .trim()
        .to_string();

    // Restart; more traffic.
    let slave = Node::run(slave.files.clone());
    let after: Vec<String> = urls(&origin, 141, 40);
    send_all(&proxy_of(&slave), None, &after, 200);
    let st = slave.ssq_json(&env, &["status"]);
    assert_eq!(
        st["report"]["epoch"],
        epoch.as_str(),
        "the epoch changed: {st}"
    );

    let mut want = reached_set.clone();
    want.extend((0..40).map(|i| host(141, i)));
    wait_total(&env, &master, Some("r3"), want.len() as u64);
    let d = domains(&env, &master, Some("r3"));
    assert_each_once(&d, "after the kill and restart");
    let got: BTreeSet<String> = d.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the master's records of r3 differ from what reached its spool (+ after the restart):\n\
         missing (reached the spool, not in the store): {missing:?}\n\
         extra (in the store, never in the spool): {extra:?}"
    );
    let row = nodes_row(&env, &master, "r3").expect("nodes row r3");
    assert_eq!(row["epochs"], 1, "{row}");
    assert_eq!(row["duplicate_name"], false, "{row}");
}

/// (4) A torn tail (half a frame appended to the last segment while the slave is down):
/// the slave starts, logs the cut under `report`, and what it records afterwards reaches
/// the master — exactly.
#[test]
fn torn_spool_tail_is_cut_logged_and_the_rest_shipped() {
    let env = Env::new();
    let origin = Origin::start();
    let master = start_master(&env, "m4");
    let mut slave = start_slave(&env, "r4", &master, "reports: { fsync_ms: 50 }\n");
    apply_policy(&env, &master, &["r4"]);
    send_all(&proxy_of(&slave), None, &urls(&origin, 151, 30), 200);
    wait_total(&env, &master, Some("r4"), 30);

    assert_eq!(slave.stop().code(), Some(0), "the slave's exit on SIGTERM");
    let segs = segments(&slave.files.data);
    let last = segs
        .last()
        .expect("a spool segment after a clean stop")
        .clone();
    // Half a frame: a header promising 500 bytes, then 20 of them.
    let mut torn = Vec::new();
    torn.extend_from_slice(&500u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&[0xab; 20]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&last)
        .unwrap()
        .write_all(&torn)
        .unwrap();
    let log_before = report_log_lines(&slave.files).len();

    let slave = Node::run(slave.files.clone());
    let name = last.file_name().unwrap().to_string_lossy().to_string();
    let lines = report_log_lines(&slave.files);
    let cut: Vec<_> = lines[log_before.min(lines.len())..]
        .iter()
        .filter(|l| l.contains(&name) && l.contains("cut"))
        .collect();
    assert!(
        cut.iter().any(|l| l.contains("cut 28 bytes")),
        "no `report` line in extended.log saying 28 bytes were cut from {name}; report lines:\n{}",
        lines.join("\n")
    );
    send_all(&proxy_of(&slave), None, &urls(&origin, 161, 25), 200);
    wait_total(&env, &master, Some("r4"), 55);
    let d = domains(&env, &master, Some("r4"));
    assert_each_once(&d, "after the cut");
    assert_eq!(d.len(), 55, "{d:?}");
    // The segment (if still there: the one being written is kept) holds whole frames
    // only: the torn bytes were cut, not built upon.
    if last.exists() {
        let (_, left) = parse_segment(&std::fs::read(&last).unwrap());
        assert_eq!(left, 0, "{name} ends in {left} bytes that are no frame");
    }
}

/// (5) A full spool while the master is down: the oldest segments are dropped, the slave
/// says so in extended.log, and once the master is back `ssq report nodes` shows the gap.
#[test]
fn full_spool_shows_a_gap_in_report_nodes() {
    let env = Env::new();
    let origin = Origin::start();
    let mut master = start_master(&env, "m5");
    let slave = start_slave(
        &env,
        "r5",
        &master,
        "reports: { spool_max_bytes: 4096, spool_segment_bytes: 1024, fsync_ms: 50 }\n",
    );
    apply_policy(&env, &master, &["r5"]);
    assert_eq!(
        master.stop().code(),
        Some(0),
        "the master's exit on SIGTERM"
    );

    send_all(&proxy_of(&slave), None, &urls(&origin, 171, 100), 200);
    let dropped = eventually(
        Duration::from_secs(10),
        "the slave to log the dropped segment",
        || {
            report_log_lines(&slave.files)
                .into_iter()
                .find(|l| l.contains("spool full") && l.contains("gap"))
        },
    );
    let st = slave.ssq_json(&env, &["status"]);
    let bytes = st["report"]["bytes_on_disk"]
        .as_u64()
        .expect("bytes_on_disk");
    assert!(
        bytes <= 4096,
        "the spool holds {bytes} bytes, over its 4096: {st}"
    );

    let master = restart_on_same_address(&master);
    // Shipping catches up; the loss the slave wrote down is the union of the seq ranges
    // its extended.log declares as gaps (a dropped segment's gap is declared again, with
    // an overlapping range, when the segment holding the gap record is dropped in turn).
    let sst = eventually(CATCH_UP, "r5's spool to be acknowledged", || {
        let st = slave.ssq_json(&env, &["status"]);
        (st["report"]["pending"] == 0).then_some(st)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let (row, lost) = loop {
        let lost = logged_loss(&slave.files);
        let row = nodes_row(&env, &master, "r5").expect("nodes row r5");
        if row["gaps"] == lost || Instant::now() > deadline {
            break (row, lost);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(lost > 0, "no gap declared in r5's extended.log ({dropped})");
    let stored = row["requests"].as_u64().expect("integer requests");
    assert!(
        stored < 100,
        "all 100 requests stored though the spool overflowed ({dropped}): {row}"
    );
    let d = domains(&env, &master, Some("r5"));
    assert_each_once(&d, "after the overflow");
    let spooled = sst["report"]["spooled"].as_u64().expect("report.spooled");
    assert_eq!(
        row["gaps"], lost,
        "`report nodes` shows {} records lost for r5, but the slave declared {lost} \
         (the union of its gap ranges; it handed out {spooled} seqs in all, {stored} \
         requests are stored): overlapping gap records are summed, not united: {row}",
        row["gaps"]
    );
    let st = eventually(CATCH_UP, "the master's status to show r5's gap", || {
        let st = master.status(&env);
        (slave_row(&st, "r5")?["report"]["gaps"].as_u64()? > 0).then_some(st)
    });
    let r = &slave_row(&st, "r5").unwrap()["report"];
    assert_eq!(r["gaps"], lost, "status's gaps for r5: {r}");
}

/// The number of seqs in the union of the ranges `node`'s extended.log declares as
/// gaps (`... A..=B ...: recorded as a gap`).
fn logged_loss(files: &NodeDir) -> u64 {
    let mut ranges: Vec<(u64, u64)> = report_log_lines(files)
        .iter()
        .filter(|l| l.contains("recorded as a gap"))
        .filter_map(|l| {
            let at = l.rfind("..=")?;
            let from = l[..at].rsplit(|c: char| !c.is_ascii_digit()).next()?;
            let to = l[at + 3..].split(|c: char| !c.is_ascii_digit()).next()?;
            Some((from.parse().ok()?, to.parse().ok()?))
        })
        .collect();
    ranges.sort_unstable();
    let mut total = 0;
    let mut covered_to = 0u64;
    for (from, to) in ranges {
        let from = from.max(covered_to + 1);
        if to >= from {
            total += to - from + 1;
            covered_to = to;
        }
    }
    total
}

/// (6) `ssq status` of a slave shows its spool (spooled, acked, pending) and the master's
/// status shows what it holds of the slave (acked, lag).
#[test]
fn status_shows_spool_and_shipping() {
    let env = Env::new();
    let origin = Origin::start();
    let master = start_master(&env, "m6");
    let slave = start_slave(&env, "r6", &master, "reports: { fsync_ms: 50 }\n");
    apply_policy(&env, &master, &["r6"]);
    send_all(&proxy_of(&slave), None, &urls(&origin, 181, 29), 200);
    // One host a spreadsheet would read as a formula (a leading `-`): whatever the proxy
    // answers (it cannot resolve), the record names it, and CSV must escape it.
    let mut c = Client::new(&proxy_of(&slave), None);
    let code = c
        .get("http://-1+cmd.example/x")
        .expect("GET -1+cmd.example");
    assert!(code >= 400, "-1+cmd.example answered {code}");
    wait_total(&env, &master, Some("r6"), 30);
    let csv = report_csv(&env, &master, "domains", &["--limit", "100"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"domain,requests,blocked,bytes"),
        "{csv}"
    );
    assert_eq!(lines.len(), 31, "{csv}");
    assert!(
        lines.iter().any(|l| l.starts_with("'-1+cmd.example,1,")),
        "the formula-looking host is not escaped in CSV:\n{csv}"
    );

    let st = eventually(CATCH_UP, "r6's spool to be acknowledged", || {
        let st = slave.ssq_json(&env, &["status"]);
        let r = &st["report"];
        (r["pending"] == 0 && r["acked"] == r["spooled"]).then_some(st)
    });
    let r = &st["report"];
    let spooled = r["spooled"].as_u64().expect("report.spooled");
    assert!(spooled >= 30, "30 requests, {spooled} spooled: {st}");
    let epoch = r["epoch"].as_str().expect("report.epoch");
    assert!(
        epoch.len() == 16 && epoch.chars().all(|c| c.is_ascii_hexdigit()),
        "epoch: {st}"
    );
    assert!(r["error"].is_null(), "{st}");

    let ms = eventually(CATCH_UP, "the master's status to show r6's acked", || {
        let ms = master.status(&env);
        let rr = &slave_row(&ms, "r6")?["report"];
        (rr["acked"].as_u64()? >= spooled).then_some(ms)
    });
    let rr = &slave_row(&ms, "r6").unwrap()["report"];
    assert_eq!(rr["epoch"], epoch, "{ms}");
    assert!(rr["lag_ms"].is_u64(), "no lag_ms: {ms}");
    assert!(rr["last_time_ms"].as_u64().unwrap_or(0) > 0, "{ms}");
    assert_eq!(rr["gaps"], 0, "{ms}");
    assert_eq!(rr["duplicate_name"], false, "{ms}");
    // The slave's statistics and events reached the master too: its latest statistics
    // record shows in status (refreshed within 5 s) and `ssq report stats`, and its
    // extended.log events in `ssq report events`.
    let stats = eventually(
        Duration::from_secs(15),
        "the slave's statistics on the master",
        || {
            let ms = master.status(&env);
            let st = slave_row(&ms, "r6")?["report"]["stats"].clone();
            st.is_object().then_some(st)
        },
    );
    assert!(stats["time_ms"].as_u64().unwrap_or(0) > 0, "{stats}");
    assert!(stats.get("spool_depth").is_some(), "{stats}");
    let rs = env.ssq_json(&["report", "stats", "--master", &master.portal]);
    let row = rs["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["node"] == "r6"))
        .cloned()
        .unwrap_or_default();
    assert!(row["requests"].is_u64(), "{rs}");
    let ev = env.ssq_json(&[
        "report",
        "events",
        "--master",
        &master.portal,
        "--limit",
        "1000",
    ]);
    let lines: Vec<&str> = ev["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter(|r| r["node"] == "r6")
                .filter_map(|r| r["line"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("sync: synchronized section: rules")),
        "the slave's sync events did not reach the master: {lines:?}"
    );
}
