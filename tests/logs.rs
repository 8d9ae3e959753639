//! `ssq logs` end to end (issue 6): real `ssqd` processes, the real `ssq`.
//!
//! What the issue asks to see: `--grep`, `--category` and `-n` select the right lines of
//! a node's extended.log (through the portal, and with `--local` on its files when ssqd
//! is down); `--follow` prints a line written after it started and outlives the node
//! stopping and coming back; when a slave cannot be reached, the master's copy of its
//! events is shown, with a notice on stderr, and exit 0.

mod util;

use std::io::BufRead;
use std::process::{Child, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// How long a slave's events may take to reach the master (the shipper's backoff is
/// capped at 5 s).
const CATCH_UP: Duration = Duration::from_secs(30);

/// How long `ssq logs --follow` may take to show a new line (it polls every 500 ms; a
/// node that was away is asked again as often).
const SHOWS_UP: Duration = Duration::from_secs(20);

/// The text of the `config` event `ssq master allow add` writes.
const ADDED: &str = "access list added";

/// `ssq master allow add ADDR --node PORTAL --force`: one `config` event ([`ADDED`]).
fn allow_add(env: &Env, node: &Node, addr: &str) {
    let out = node.ssq(env, &["master", "allow", "add", addr, "--force"]);
    assert_ok(&out, &format!("allow add {addr}"));
}

/// stdout lines of a finished `ssq`.
fn out_lines(o: &Output) -> Vec<String> {
    stdout(o).lines().map(str::to_string).collect()
}

/// The category of an extended.log line (`TIME LEVEL NODE CATEGORY: MESSAGE`).
fn category(line: &str) -> &str {
    line.splitn(4, ' ')
        .nth(3)
        .and_then(|rest| rest.split_once(':'))
        .map_or("", |(c, _)| c)
}

/// Append hand-written events to a node's extended.log (as a `ssq --local` edit does):
/// messages chosen to need percent-encoding in a query.
fn append_events(node: &Node, events: &[(&str, &str)]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(node.files.log.join("extended.log"))
        .expect("open extended.log");
    for (cat, msg) in events {
        let line = ssq::extlog::format_line(ssq::extlog::Level::Warn, &node.files.name, cat, msg);
        f.write_all(line.as_bytes())
            .expect("append to extended.log");
    }
}

/// The lines of `log` that `keep` selects.
fn lines_where(log: &str, keep: impl Fn(&str) -> bool) -> Vec<&str> {
    log.lines().filter(|l| keep(l)).collect()
}

/// `GET /api/v1/logs?QUERY` signed by hand: the node's own answer, without the CLI's
/// filtering.
fn raw_logs(env: &Env, node: &Node, query: &str) -> Vec<String> {
    let key = ssq::keys::SigningKey::load(&env.operator).expect("operator key");
    let mut conn = RawConn::connect(&node.portal, None);
    let path = format!("/api/v1/logs?{query}");
    let auth = operator_auth(&conn, &key, &Sig::now("GET", &path));
    let a = conn.send("GET", &path, Some(&auth), b"");
    assert_eq!(a.status, 200, "{path}: {:?}", a.json);
    serde_json::from_value(a.json["lines"].clone()).expect("lines")
}

#[test]
fn grep_category_and_n_select_lines() {
    let env = Env::new();
    let mut node = Node::start(&env, "logs-filter", &next_ip(), "");
    allow_add(&env, &node, "10.9.9.1");
    append_events(
        &node,
        &[
            ("sync", "needle a&b=c 100% + one"),
            ("portal", "needle a&b=c 100% + two"),
            ("sync", "haystack"),
            ("sync", "needle a&b=c 100% + three"),
        ],
    );
    allow_add(&env, &node, "10.9.9.2");
    let log = node.files.extended_log();

    // --grep: exactly the lines containing the text (spaces, &, =, %, + included).
    let needle = "needle a&b=c 100% +";
    let out = node.ssq(&env, &["logs", "--grep", needle]);
    assert_ok(&out, "logs --grep");
    let want = lines_where(&log, |l| l.contains(needle));
    assert_eq!(want.len(), 3, "{log}");
    assert_eq!(out_lines(&out), want, "logs --grep {needle}");

    // --category: only that category, and all of its lines.
    let out = node.ssq(&env, &["logs", "--category", "config"]);
    assert_ok(&out, "logs --category config");
    let want = lines_where(&log, |l| category(l) == "config");
    assert!(want.len() >= 3, "fewer than 3 config events:\n{log}");
    assert_eq!(out_lines(&out), want, "logs --category config");
    let out = node.ssq(&env, &["logs", "--category", "sync", "--grep", "needle"]);
    assert_ok(&out, "logs --category sync --grep needle");
    let got = out_lines(&out);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].ends_with("one") && got[1].ends_with("three"),
        "{got:?}"
    );

    // -n: the last N that match, oldest first.
    let out = node.ssq(&env, &["logs", "-n", "2", "--category", "config"]);
    assert_ok(&out, "logs -n 2");
    assert_eq!(out_lines(&out), want[want.len() - 2..], "logs -n 2");
    let out = node.ssq(&env, &["logs", "-n", "1"]);
    assert_ok(&out, "logs -n 1");
    assert_eq!(out_lines(&out), [log.lines().last().unwrap()], "logs -n 1");

    // -o json: the lines, a cursor, the node and the source.
    let j = node.ssq_json(&env, &["logs", "-n", "1", "--grep", "haystack"]);
    assert_eq!(j["source"], "node", "{j}");
    assert_eq!(j["node"], node.portal.as_str(), "{j}");
    assert_eq!(j["lines"].as_array().map(Vec::len), Some(1), "{j}");
    assert!(
        j["lines"][0]
            .as_str()
            .unwrap_or("")
            .ends_with("sync: haystack"),
        "{j}"
    );
    assert_eq!(j["cursor"].as_u64(), Some(log.len() as u64), "{j}");

    // The node itself filters (the CLI filters again only for older nodes): the query's
    // values percent-decoded, and `after` gives only what came since.
    let lines = raw_logs(
        &env,
        &node,
        "n=5&grep=needle%20a%26b%3Dc%20100%25%20%2B&category=sync",
    );
    assert_eq!(
        lines,
        [
            lines_where(&log, |l| l.ends_with("one")),
            lines_where(&log, |l| l.ends_with("three")),
        ]
        .concat(),
        "the portal's own filtering"
    );
    let since = format!("after={}", log.len());
    assert_eq!(
        raw_logs(&env, &node, &since),
        Vec::<String>::new(),
        "after the end"
    );

    // An unknown category is bad input (exit 2), found before any call.
    let out = node.ssq(&env, &["logs", "--category", "nonsense"]);
    assert_exit(&out, 2, "logs --category nonsense");
    assert!(stderr(&out).contains("config"), "{}", stderr(&out));

    // ssqd down: --local reads the file itself, with the same filters.
    node.stop();
    let log = node.files.extended_log();
    let out = node
        .files
        .local(&env, &["logs", "--grep", "needle", "-n", "2"]);
    assert_ok(&out, "--local logs with ssqd down");
    let want = lines_where(&log, |l| l.contains("needle"));
    assert_eq!(out_lines(&out), want[want.len() - 2..], "--local logs");
}

/// A running `ssq logs --follow`, its stdout and stderr lines read by threads.
struct Follower {
    child: Child,
    out: Receiver<String>,
    err: Receiver<String>,
}

impl Follower {
    fn start(env: &Env, args: &[&str]) -> Follower {
        let mut child = env
            .ssq_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssq logs --follow");
        let out = lines_of(child.stdout.take().expect("stdout"));
        let err = lines_of(child.stderr.take().expect("stderr"));
        Follower { child, out, err }
    }

    /// Wait for a stdout line containing `text`; panic with what came instead.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + SHOWS_UP;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!("ssq logs --follow exited ({s}) before printing {text}; it printed {seen:?}; stderr: {:?}", self.stderr());
            }
            if let Ok(l) = self.out.recv_timeout(Duration::from_millis(100)) {
                if l.contains(text) {
                    return l;
                }
                seen.push(l);
            }
        }
        panic!(
            "ssq logs --follow printed no line with {text} within {SHOWS_UP:?}; it printed {seen:?}; stderr: {:?}",
            self.stderr()
        );
    }

    /// What it printed on stderr so far.
    fn stderr(&self) -> Vec<String> {
        self.err.try_iter().collect()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn follow_prints_new_lines_and_outlives_a_stopped_node() {
    let env = Env::new();
    let mut node = Node::start(&env, "logs-follow", &next_ip(), "");
    allow_add(&env, &node, "10.9.8.1");
    let before = node.files.extended_log();
    let mut f = Follower::start(
        &env,
        &["logs", "--follow", "--grep", ADDED, "--node", &node.portal],
    );
    // The line written before it started is its first output: from here on, it follows.
    let first = f.wait_for(ADDED);
    assert!(before.lines().any(|l| l == first), "{first}");

    allow_add(&env, &node, "10.9.8.2");
    let second = f.wait_for(ADDED);
    assert!(!before.contains(&second), "{second} was there before");
    assert!(
        node.files.extended_log().lines().any(|l| l == second),
        "{second} is not a line of extended.log"
    );

    // The node stops: one notice, the follow goes on; back on the same address, its new
    // lines show up.
    node.stop();
    let old = node.portal.clone();
    let text = std::fs::read_to_string(&node.files.config).unwrap();
    let ip = node.ip().to_string();
    let fixed = text.replace(
        &format!("portal: {{ listen: \"{ip}:0\" }}"),
        &format!("portal: {{ listen: \"{old}\" }}"),
    );
    assert_ne!(fixed, text, "no `{ip}:0` in:\n{text}");
    std::fs::write(&node.files.config, fixed).unwrap();
    let notice = eventually(SHOWS_UP, "a notice that the node stopped answering", || {
        f.err
            .recv_timeout(Duration::from_millis(100))
            .ok()
            .filter(|l| l.contains("stopped answering"))
    });
    assert!(notice.contains(&old), "{notice}");
    let before = node.files.extended_log();
    let node = Node::run(node.files.clone());
    assert_eq!(node.portal, old, "the node came back elsewhere");
    allow_add(&env, &node, "10.9.8.3");
    let third = f.wait_for(ADDED);
    assert!(
        !before.contains(&third),
        "{third} was there before the restart"
    );
    assert!(
        f.child.try_wait().ok().flatten().is_none(),
        "ssq logs --follow ended"
    );
    // A few polls later, nothing was printed twice.
    std::thread::sleep(Duration::from_millis(1500));
    let again: Vec<String> = f.out.try_iter().filter(|l| l.contains(ADDED)).collect();
    assert!(again.is_empty(), "repeated lines: {again:?}");
    let notices = f.stderr();
    assert!(
        !notices.iter().any(|l| l.contains("stopped answering")),
        "more than one notice: {notices:?}"
    );
}

#[test]
fn follow_with_json_prints_one_object_per_line() {
    let env = Env::new();
    let node = Node::start(&env, "logs-follow-json", &next_ip(), "");
    allow_add(&env, &node, "10.9.7.1");
    let mut f = Follower::start(
        &env,
        &[
            "-o",
            "json",
            "logs",
            "--follow",
            "--category",
            "config",
            "--node",
            &node.portal,
        ],
    );
    let first = f.wait_for(ADDED);
    allow_add(&env, &node, "10.9.7.2");
    let next = f.wait_for(ADDED);
    assert_ne!(first, next);
    for l in [first, next] {
        let v: Value = serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"));
        let line = v["line"].as_str().unwrap_or_else(|| panic!("no line: {v}"));
        assert_eq!(category(line), "config", "{v}");
        assert!(node.files.extended_log().lines().any(|x| x == line), "{v}");
    }
}

fn slave_events(env: &Env, master: &Node, slave: &str) -> Vec<String> {
    let ev = env.ssq_json(&[
        "report",
        "events",
        "--master",
        &master.portal,
        "--slave",
        slave,
        "--limit",
        "1000",
    ]);
    ev["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .filter_map(|r| r["line"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_unreachable_slave_falls_back_to_the_masters_copy() {
    let env = Env::new();
    let master = start_master(&env, "logs-m");
    let mut slave = start_slave(&env, "logs-s", &master);
    apply_policy_wait(
        &env,
        &master,
        &["logs-s"],
        "rules:\n  - name: no-a\n    domains: [a.example.com]\n    action: deny\n",
    );
    allow_add(&env, &slave, "10.9.6.1");
    // Its config event and a sync event (the policy applied) reached the master.
    let added = eventually(CATCH_UP, "the slave's events on the master", || {
        let ev = slave_events(&env, &master, "logs-s");
        let added = ev.iter().find(|l| l.contains(ADDED))?;
        ev.iter()
            .any(|l| category(l) == "sync")
            .then(|| added.clone())
    });
    let portal = slave.portal.clone();
    slave.stop();
    let log = slave.files.extended_log();
    assert!(log.lines().any(|l| l == added), "{added} is not in:\n{log}");

    let out = env.ssq(&["logs", "--node", &portal, "--master", &master.portal]);
    assert_ok(&out, "logs of a stopped slave with --master");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{portal} cannot be reached"))
            && err.contains("showing the master's copy of its events"),
        "{err}"
    );
    let got = out_lines(&out);
    assert!(got.contains(&added), "{got:?}");
    assert!(
        got.iter().all(|l| log.lines().any(|x| x == l)),
        "lines that are not the slave's: {got:?}"
    );

    // The same filters apply to the master's copy.
    let out = env.ssq(&[
        "logs",
        "--node",
        &portal,
        "--master",
        &master.portal,
        "--category",
        "sync",
        "-n",
        "1",
    ]);
    assert_ok(&out, "fallback --category sync -n 1");
    let got = out_lines(&out);
    assert_eq!(got.len(), 1, "{got:?}\n{log}");
    assert_eq!(category(&got[0]), "sync", "{got:?}");
    let j = env.ssq_json(&[
        "logs",
        "--node",
        &portal,
        "--master",
        &master.portal,
        "--grep",
        ADDED,
    ]);
    assert_eq!(j["source"], "master", "{j}");
    assert_eq!(j["lines"], serde_json::json!([added]), "{j}");

    // --follow in fallback mode: the master's copy, then it keeps polling the master.
    let mut f = Follower::start(
        &env,
        &[
            "logs",
            "--follow",
            "--grep",
            ADDED,
            "--node",
            &portal,
            "--master",
            &master.portal,
        ],
    );
    assert_eq!(f.wait_for(ADDED), added);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        f.child.try_wait().ok().flatten().is_none(),
        "--follow on the master's copy ended; stderr: {:?}",
        f.stderr()
    );
    let notes = f.stderr();
    assert!(
        notes
            .iter()
            .any(|l| l.contains("showing the master's copy")),
        "{notes:?}"
    );
    assert!(f.out.try_iter().next().is_none(), "lines printed twice");
    drop(f);

    // No master to ask: the unreachable error (exit 3), saying what to give.
    let out = env.ssq(&["logs", "--node", &portal]);
    assert_exit(&out, 3, "logs of a stopped slave without a master");
    assert!(stderr(&out).contains("--master"), "{}", stderr(&out));
}
