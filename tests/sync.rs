//! Policy sync end to end: a master and its slaves as real `ssqd` processes, driven by
//! the real `ssq`. Every node gets its own 127.0.0.x, so the master sees each slave at
//! its own address (slaves bind their sync connections to their portal's IP).
//!
//! What issue 3 asks to see: an apply reaches every slave with the same sha256; a slave
//! keeps its last good policy while the master is away and converges when it is back; a
//! malformed policy changes nothing anywhere; a per-node rule reaches only its node; a
//! `sync.never` section stays local; revisions only grow across master restarts; a slave
//! with another activation key, or a second process with another node key under a known
//! name, is refused and listed, never written into a known slave's row.

mod util;

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// How long a slave may take to converge after the master comes back (its reconnect
/// backoff is at most 10 s; in practice it is well under a few seconds here).
const CONVERGE: Duration = Duration::from_secs(12);

/// Rules only: deny one host.
const P1: &str = "\
rules:
  - name: no-a
    domains: [a.example.com]
    action: deny
";

/// Another revision: a category and a second rule.
const P2: &str = "\
categories:
  social: [social.example]
rules:
  - name: no-a
    domains: [a.example.com]
    action: deny
  - name: no-social
    categories: [social]
    action: deny
";

/// A third content.
const P3: &str = "\
rules:
  - name: no-c
    domains: [c.example.com]
    action: deny
";

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

/// Write a policy file in the env's folder; its path.
fn policy_file(env: &Env, name: &str, text: &str) -> String {
    let p = env.path().join(name);
    std::fs::write(&p, text).expect("write policy file");
    p.to_str().expect("utf-8 path").to_string()
}

/// `ssq policy apply FILE --master M ARGS`.
fn apply(env: &Env, master: &Node, file: &str, args: &[&str]) -> Output {
    let mut all = vec!["policy", "apply", file, "--master", &master.portal];
    all.extend_from_slice(args);
    env.ssq(&all)
}

/// `ssq -o json policy apply FILE --master M ARGS`, required to succeed.
fn apply_json(env: &Env, master: &Node, file: &str, args: &[&str]) -> Value {
    let mut all = vec!["policy", "apply", file, "--master", &master.portal];
    all.extend_from_slice(args);
    env.ssq_json(&all)
}

/// The sha256 of an apply's answer, checked to be a full hex sha256.
fn sha_of(applied: &Value) -> String {
    let sha = applied["sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no sha256 in {applied}"))
        .to_string();
    assert!(
        sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
        "not a sha256: {sha}"
    );
    sha
}

/// The master's row for slave `name` in a status answer.
fn row<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["slaves"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// Wait until the master knows every named slave (each pins itself on its first watch).
fn wait_known(env: &Env, master: &Node, names: &[&str]) {
    eventually(
        Duration::from_secs(10),
        &format!("the master to know {names:?}"),
        || {
            let st = master.status(env);
            names.iter().all(|n| row(&st, n).is_some()).then_some(())
        },
    );
}

/// Wait until `node` reports `{revision, sha256, state}`; its status then.
fn wait_policy(env: &Env, node: &Node, revision: u64, sha: &str, state: &str) -> Value {
    eventually(
        CONVERGE,
        &format!(
            "{} to report revision {revision} ({sha}) {state}",
            node.files.name
        ),
        || {
            let st = node.status(env);
            let p = &st["policy"];
            (p["revision"] == revision && p["sha256"] == sha && p["state"] == state).then_some(st)
        },
    )
}

/// Assert a node's `policy` in its status.
fn assert_policy(env: &Env, node: &Node, revision: u64, sha: &str, state: &str) {
    let st = node.status(env);
    let p = &st["policy"];
    assert_eq!(
        (
            p["revision"].as_u64(),
            p["sha256"].as_str(),
            p["state"].as_str()
        ),
        (Some(revision), Some(sha), Some(state)),
        "{}'s policy: {st}",
        node.files.name
    );
}

/// `ssq -o json policy history --master M`.
fn history(env: &Env, master: &Node) -> Vec<Value> {
    env.ssq_json(&["policy", "history", "--master", &master.portal])
        .as_array()
        .expect("history is a list")
        .clone()
}

/// What `target` (a master, or a slave from its own matcher) decides for `url`.
fn decide(env: &Env, target: &Node, url: &str, slave: Option<&str>) -> Value {
    let mut args = vec!["policy", "test", url, "--master", &target.portal];
    if let Some(s) = slave {
        args.extend_from_slice(&["--slave", s]);
    }
    env.ssq_json(&args)
}

/// The action of `decide`.
fn action(env: &Env, target: &Node, url: &str, slave: Option<&str>) -> String {
    let d = decide(env, target, url, slave);
    d["action"]
        .as_str()
        .unwrap_or_else(|| panic!("no action in {d}"))
        .to_string()
}

/// The prefix after `needle` up to `)` in the first log line holding `needle`.
fn logged_sha_prefix(log: &str, needle: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let rest = &line[line.find(needle)? + needle.len()..];
    Some(rest.split(')').next().unwrap_or("").to_string())
}

/// The line `sync: synchronized section: SECTION (revision REV, sha256 PREFIX)` is in
/// `node`'s extended.log, PREFIX a prefix of `sha`.
fn assert_synchronized(node: &Node, section: &str, revision: u64, sha: &str) {
    let log = node.files.extended_log();
    let needle = format!("sync: synchronized section: {section} (revision {revision}, sha256 ");
    let prefix = logged_sha_prefix(&log, &needle).unwrap_or_else(|| {
        panic!(
            "{}'s extended.log lacks `{needle}`:\n{log}",
            node.files.name
        )
    });
    assert!(
        prefix.len() >= 7 && sha.starts_with(&prefix),
        "{}: logged sha256 prefix {prefix:?} is not a prefix of {sha}:\n{log}",
        node.files.name
    );
}

/// (1) An apply with `--wait` returns once every slave runs the same sha256.
#[test]
fn apply_reaches_every_slave_with_the_same_sha256() {
    let env = Env::new();
    let master = start_master(&env, "m1");
    let a = start_slave(&env, "s1-a", &master, "");
    let b = start_slave(&env, "s1-b", &master, "");
    wait_known(&env, &master, &["s1-a", "s1-b"]);

    let f = policy_file(&env, "p1.yaml", P2);
    let out = apply_json(&env, &master, &f, &["--wait"]);
    assert_eq!(out["revision"], 1, "{out}");
    assert_eq!(out["changed"], true, "{out}");
    let sha = sha_of(&out);
    let mut changed: Vec<&str> = out["changed_sections"]
        .as_array()
        .unwrap_or_else(|| panic!("no changed_sections: {out}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    changed.sort();
    assert_eq!(changed, ["categories", "rules"], "{out}");
    assert_eq!(
        out["wait"]["done"], true,
        "--wait returned before done: {out}"
    );

    // Each slave, asked itself, enforces that very revision (the wait said so: no polling).
    for s in [&a, &b] {
        assert_policy(&env, s, 1, &sha, "SYNCED");
        assert_synchronized(s, "rules", 1, &sha);
        assert_synchronized(s, "categories", 1, &sha);
        let log = s.files.extended_log();
        assert!(
            log.contains(&format!("sync: synchronizing with {}", master.portal)),
            "{}'s extended.log lacks `sync: synchronizing with {}`:\n{log}",
            s.files.name,
            master.portal
        );
    }

    // The master's view of its cluster.
    let st = master.status(&env);
    assert_eq!(st["role"], "master", "{st}");
    assert_eq!(st["policy"]["revision"], 1, "{st}");
    assert_eq!(st["policy"]["sha256"], sha.as_str(), "{st}");
    assert_eq!(
        st["slaves"].as_array().map(Vec::len),
        Some(2),
        "master's slaves: {st}"
    );
    for s in [&a, &b] {
        let r =
            row(&st, &s.files.name).unwrap_or_else(|| panic!("{} not listed: {st}", s.files.name));
        assert_eq!(r["state"], "SYNCED", "{r}");
        assert_eq!(r["revision"], 1, "{r}");
        assert_eq!(r["sha256"], sha.as_str(), "{r}");
        assert_eq!(
            r["address"],
            s.ip().to_string(),
            "the slave's source address: {r}"
        );
        assert_eq!(r["portal"], s.portal.as_str(), "{r}");
        assert_eq!(
            r["node_key"],
            s.status(&env)["node_key"],
            "pinned node key: {r}"
        );
    }

    // The apply is in the history and the master's log with the operator's key id.
    let op = ssq::keys::SigningKey::load(&env.operator)
        .expect("operator key")
        .public()
        .fingerprint();
    let h = history(&env, &master);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["revision"], 1);
    assert_eq!(h[0]["sha256"], sha.as_str());
    assert!(
        h[0]["operator"].as_str().unwrap_or("").contains(&op),
        "history does not name operator {op}: {}",
        h[0]
    );
    let mlog = master.files.extended_log();
    assert!(
        mlog.lines()
            .any(|l| l.contains("config: policy revision 1") && l.contains(&op)),
        "the master's extended.log lacks the apply under config with {op}:\n{mlog}"
    );
}

/// (2) A slave restarted while the master is down enforces its last good revision at
/// once; when the master is back (same address), a new revision reaches it.
#[test]
fn last_good_survives_an_outage_and_the_slave_converges_when_the_master_returns() {
    let env = Env::new();
    let mut master = start_master(&env, "m2");
    let mut slave = start_slave(&env, "s2", &master, "");
    wait_known(&env, &master, &["s2"]);
    let f1 = policy_file(&env, "p1.yaml", P1);
    let sha1 = sha_of(&apply_json(&env, &master, &f1, &["--wait"]));
    assert_policy(&env, &slave, 1, &sha1, "SYNCED");

    // The slave dies hard, the master stops, the slave comes back alone.
    slave.kill();
    assert_eq!(master.stop().code(), Some(0), "master's exit on SIGTERM");
    let slave = Node::run(slave.files.clone());
    assert_policy(&env, &slave, 1, &sha1, "LAST_GOOD");
    let log = slave.files.extended_log();
    assert!(
        log.contains("revision 1"),
        "the restarted slave does not log the last good revision it enforces:\n{log}"
    );

    // The master comes back on the same address (its port written into its startup.yaml).
    let old_portal = master.portal.clone();
    let text = std::fs::read_to_string(&master.files.config).unwrap();
    let ip = master.ip().to_string();
    let fixed = text.replace(&format!("\"{ip}:0\""), &format!("\"{old_portal}\""));
    assert_ne!(fixed, text, "no `{ip}:0` to replace in:\n{text}");
    std::fs::write(&master.files.config, fixed).unwrap();
    let master = Node::run(master.files.clone());
    assert_eq!(master.portal, old_portal, "the master came back elsewhere");

    let f2 = policy_file(&env, "p2.yaml", P2);
    let out = apply_json(&env, &master, &f2, &[]);
    assert_eq!(out["revision"], 2, "{out}");
    let sha2 = sha_of(&out);
    let t0 = Instant::now();
    wait_policy(&env, &slave, 2, &sha2, "SYNCED");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the slave took {took:?} to converge after the master came back"
    );
    assert_synchronized(&slave, "categories", 2, &sha2);
    let st = eventually(
        Duration::from_secs(5),
        "the master to see s2 SYNCED",
        || {
            let st = master.status(&env);
            (row(&st, "s2")?["state"] == "SYNCED").then_some(st)
        },
    );
    let r = row(&st, "s2").unwrap();
    assert_eq!(r["revision"], 2, "{r}");
    assert_eq!(r["sha256"], sha2.as_str(), "{r}");
}

/// (3) A malformed document (bad YAML; an unknown category) is refused with its position,
/// by the CLI and by the master itself; no revision, every slave on the old sha256.
#[test]
fn malformed_policy_is_refused_and_changes_nothing() {
    let env = Env::new();
    let master = start_master(&env, "m3");
    let a = start_slave(&env, "s3-a", &master, "");
    let b = start_slave(&env, "s3-b", &master, "");
    wait_known(&env, &master, &["s3-a", "s3-b"]);
    let f1 = policy_file(&env, "p1.yaml", P1);
    let sha1 = sha_of(&apply_json(&env, &master, &f1, &["--wait"]));

    // Bad YAML: line and column.
    let bad_yaml = "rules:\n  - name: x\n    domains: [a.example.com\n    action: deny\n";
    let f = policy_file(&env, "bad-yaml.yaml", bad_yaml);
    let out = apply(&env, &master, &f, &[]);
    assert_exit(&out, 2, "apply of bad YAML");
    let err = stderr(&out);
    assert!(
        err.contains("line ") && err.contains("column "),
        "no line/column in:\n{err}"
    );
    assert!(
        err.contains("bad-yaml.yaml"),
        "the file is not named:\n{err}"
    );
    assert!(
        stdout(&out).is_empty(),
        "stdout on failure: {}",
        stdout(&out)
    );

    // Unknown category: section, rule and field.
    let bad_cat = "rules:\n  - name: uses-nope\n    categories: [nope]\n    action: deny\n";
    let f = policy_file(&env, "bad-cat.yaml", bad_cat);
    let out = apply(&env, &master, &f, &["-o", "json"]);
    assert_exit(&out, 2, "apply with an unknown category");
    let err: Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|e| panic!("-o json stderr is not JSON ({e}): {}", stderr(&out)));
    assert_eq!(err["error"], "invalid_policy", "{err}");
    let msg = err["message"].as_str().unwrap_or("");
    for want in ["rules", "uses-nope", "categories", "nope"] {
        assert!(msg.contains(want), "`{want}` not named in: {msg}");
    }

    // The master validates too, whatever a client checked: the same documents, sent raw.
    let op = ssq::keys::SigningKey::load(&env.operator).unwrap();
    let boot = master.status(&env)["boot_id"].as_str().unwrap().to_string();
    let mut conn = RawConn::connect(&master.portal, None);
    for (text, wants) in [
        (bad_yaml, &["line ", "column "][..]),
        (bad_cat, &["rules", "uses-nope", "nope"][..]),
    ] {
        let body = serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap();
        let mut sig = Sig::now("POST", "/api/v1/policy");
        sig.boot_id = &boot;
        sig.body = &body;
        let auth = operator_auth(&conn, &op, &sig);
        let ans = conn.send("POST", "/api/v1/policy", Some(&auth), &body);
        assert_eq!(
            ans.status, 400,
            "the master took a bad document: {:?}",
            ans.json
        );
        assert_eq!(ans.json["error"], "invalid_policy", "{:?}", ans.json);
        let m = ans.json["message"].as_str().unwrap_or("");
        for w in wants {
            assert!(m.contains(w), "the master's refusal lacks `{w}`: {m}");
        }
    }

    // Nothing changed anywhere.
    let h = history(&env, &master);
    assert_eq!(h.len(), 1, "a refused document made a revision: {h:?}");
    let st = master.status(&env);
    assert_eq!(st["policy"]["revision"], 1, "{st}");
    assert_eq!(st["policy"]["sha256"], sha1.as_str(), "{st}");
    for s in [&a, &b] {
        assert_policy(&env, s, 1, &sha1, "SYNCED");
        let r = row(&st, &s.files.name).unwrap();
        assert_eq!(r["sha256"], sha1.as_str(), "{r}");
        assert_eq!(r["state"], "SYNCED", "{r}");
    }
}

/// (4) A rule with `nodes: [s4-a]` is in s4-a's compiled matcher only.
#[test]
fn per_node_rule_reaches_only_its_node() {
    let env = Env::new();
    let master = start_master(&env, "m4");
    let a = start_slave(&env, "s4-a", &master, "");
    let b = start_slave(&env, "s4-b", &master, "");
    wait_known(&env, &master, &["s4-a", "s4-b"]);
    let f = policy_file(
        &env,
        "p.yaml",
        "rules:\n  - name: only-on-a\n    nodes: [s4-a]\n    domains: [example.org]\n    action: deny\n",
    );
    let out = apply_json(&env, &master, &f, &["--wait"]);
    let sha = sha_of(&out);
    assert_eq!(out["wait"]["done"], true, "{out}");
    let url = "http://example.org/";

    // As the master predicts it.
    let d = decide(&env, &master, url, Some("s4-a"));
    assert_eq!(d["action"], "deny", "master, --slave s4-a: {d}");
    assert_eq!(d["rule"], "only-on-a", "{d}");
    assert_eq!(d["node"], "s4-a", "{d}");
    let d = decide(&env, &master, url, Some("s4-b"));
    assert_eq!(d["action"], "allow", "master, --slave s4-b: {d}");
    assert_eq!(d["node"], "s4-b", "{d}");

    // As each slave decides, from the matcher it compiled for itself.
    for s in [&a, &b] {
        assert_policy(&env, s, 1, &sha, "SYNCED");
    }
    let d = decide(&env, &a, url, None);
    assert_eq!(d["action"], "deny", "on s4-a itself: {d}");
    assert_eq!(d["rule"], "only-on-a", "{d}");
    assert_eq!(d["node"], "s4-a", "{d}");
    assert_eq!(d["revision"], 1, "{d}");
    let d = decide(&env, &b, url, None);
    assert_eq!(d["action"], "allow", "on s4-b itself: {d}");
    assert_eq!(d["node"], "s4-b", "{d}");
    // Subdomains too (a bare name covers them), and only that domain.
    assert_eq!(action(&env, &a, "http://www.example.org/x", None), "deny");
    assert_eq!(action(&env, &a, "http://example.net/", None), "allow");
}

/// (5) A section in a slave's `sync.never` stays local: set with `policy apply --node`,
/// kept across master revisions; other sections are refused there.
#[test]
fn sync_never_section_stays_local() {
    let env = Env::new();
    let master = start_master(&env, "m5");
    let s = start_slave(&env, "s5", &master, "sync: { never: [rules] }\n");
    let plain = start_slave(&env, "s5-plain", &master, "");
    wait_known(&env, &master, &["s5", "s5-plain"]);
    let f1 = policy_file(&env, "p1.yaml", P1);
    let sha1 = sha_of(&apply_json(&env, &master, &f1, &["--wait"]));
    assert_policy(&env, &s, 1, &sha1, "SYNCED");

    // The slave's own rules.
    let local = policy_file(
        &env,
        "local.yaml",
        "rules:\n  - name: local-no-b\n    domains: [b.example.com]\n    action: deny\n",
    );
    let out = env.ssq(&["-o", "json", "policy", "apply", &local, "--node", &s.portal]);
    assert_ok(&out, "policy apply --node SLAVE (its sync.never section)");

    let check = |when: &str| {
        let d = decide(&env, &s, "http://a.example.com/", None);
        assert_eq!(
            d["action"], "allow",
            "{when}: s5 took the master's rules: {d}"
        );
        let d = decide(&env, &s, "http://b.example.com/", None);
        assert_eq!(d["action"], "deny", "{when}: s5 lost its local rules: {d}");
        assert_eq!(d["rule"], "local-no-b", "{when}: {d}");
        // A slave without sync.never runs the master's rules.
        assert_eq!(
            action(&env, &plain, "http://a.example.com/", None),
            "deny",
            "{when}: s5-plain"
        );
        assert_eq!(
            action(&env, &plain, "http://b.example.com/", None),
            "allow",
            "{when}: s5-plain"
        );
    };
    check("after the local apply");

    // A section that is not in its sync.never: refused, named.
    let bad = policy_file(&env, "local-cat.yaml", "categories:\n  x: [x.example]\n");
    let out = env.ssq(&["policy", "apply", &bad, "--node", &s.portal]);
    assert_exit(&out, 2, "policy apply --node with a categories section");
    assert!(
        stderr(&out).contains("categories"),
        "the refusal does not name the section:\n{}",
        stderr(&out)
    );
    check("after the refused local apply");

    // A new master revision: its rules change, the slave's stay its own.
    let f2 = policy_file(&env, "p2.yaml", P2);
    let out = apply_json(&env, &master, &f2, &["--wait"]);
    let sha2 = sha_of(&out);
    assert_eq!(out["revision"], 2, "{out}");
    assert_policy(&env, &s, 2, &sha2, "SYNCED");
    check("after master revision 2");
    assert_eq!(
        action(&env, &s, "http://social.example/", None),
        "allow",
        "s5 enforces the master's rule no-social"
    );
    assert_eq!(action(&env, &plain, "http://social.example/", None), "deny");
    let log = s.files.extended_log();
    assert!(
        log.lines()
            .any(|l| l.contains("synchronized section: rules (revision 2")
                && l.contains("sync.never")),
        "s5's log does not say its rules stay local:\n{log}"
    );
    // The master knows it runs something else than the master's sha256.
    let st = master.status(&env);
    let r = row(&st, "s5").unwrap();
    assert_eq!(r["sha256"], sha2.as_str(), "{r}");
    let eff = r["effective_sha256"].as_str().unwrap_or("");
    assert!(
        !eff.is_empty() && eff != sha2,
        "s5's effective sha256 should differ from the master's: {r}"
    );
}

/// (6) A master restarted in place continues its revision numbers.
#[test]
fn revisions_grow_across_a_master_restart() {
    let env = Env::new();
    let master = start_master(&env, "m6");
    let s = start_slave(&env, "s6", &master, "");
    wait_known(&env, &master, &["s6"]);
    for (i, text) in [P1, P2].iter().enumerate() {
        let f = policy_file(&env, &format!("p{i}.yaml"), text);
        let out = apply_json(&env, &master, &f, &["--wait"]);
        assert_eq!(out["revision"], i as u64 + 1, "{out}");
    }
    let before = master.status(&env);
    let r = master.ssq_json(&env, &["restart", "--wait"]);
    assert_ne!(r["boot_id"], before["boot_id"], "no restart: {r}");
    let st = master.status(&env);
    assert_eq!(st["policy"]["revision"], 2, "after the restart: {st}");

    let f3 = policy_file(&env, "p3.yaml", P3);
    let out = apply_json(&env, &master, &f3, &["--wait"]);
    assert_eq!(
        out["revision"], 3,
        "the next revision after a restart: {out}"
    );
    let sha3 = sha_of(&out);
    let revs: Vec<u64> = history(&env, &master)
        .iter()
        .filter_map(|h| h["revision"].as_u64())
        .collect();
    assert_eq!(revs, [1, 2, 3], "history");
    assert_policy(&env, &s, 3, &sha3, "SYNCED");
}

/// (7) A slave with another activation key never syncs, and the refusal is visible on
/// both sides.
#[test]
fn slave_with_another_activation_key_never_syncs() {
    let env = Env::new();
    let master = start_master(&env, "m7");
    let other = env.path().join("other.key");
    assert_ok(
        &env.ssq(&["key", "new", "--out", other.to_str().unwrap()]),
        "ssq key new (another activation key)",
    );
    let nd = NodeDir::create(
        &env,
        "s7",
        &next_ip(),
        &format!("master: {}\n", master.portal),
    );
    let text = std::fs::read_to_string(&nd.config).unwrap();
    let changed = text.replace("../activation.key", "../other.key");
    assert_ne!(changed, text);
    std::fs::write(&nd.config, changed).unwrap();
    let s = Node::run(nd);

    let f = policy_file(&env, "p1.yaml", P1);
    apply_json(&env, &master, &f, &[]);

    let ip = s.ip().to_string();
    let st = eventually(
        Duration::from_secs(10),
        "the master to list s7's refused attempt",
        || {
            let st = master.status(&env);
            st["refused"]
                .as_array()?
                .iter()
                .any(|r| r["address"] == ip.as_str())
                .then_some(st)
        },
    );
    let refused = st["refused"].as_array().unwrap();
    let r = refused
        .iter()
        .find(|r| r["address"] == ip.as_str())
        .unwrap();
    assert!(
        r["reason"]
            .as_str()
            .unwrap_or("")
            .contains("activation key mismatch"),
        "refused entry: {r}"
    );
    assert_eq!(r["node"], "s7", "{r}");
    assert!(
        row(&st, "s7").is_none(),
        "a refused slave got a row among the slaves: {st}"
    );

    // Still not synced, a while after the master has a policy (it retries meanwhile).
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let p = &s.status(&env)["policy"];
        assert_eq!(p["state"], "UNSYNCED", "s7 synced with a wrong key: {p}");
        assert_eq!(p["revision"], 0, "{p}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ss = s.status(&env);
    assert!(
        ss["sync"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("activation key mismatch"),
        "s7's status does not say why it is not syncing: {ss}"
    );
    for (who, log) in [
        ("s7", s.files.extended_log()),
        ("the master", master.files.extended_log()),
    ] {
        assert!(
            log.contains("activation key mismatch"),
            "`activation key mismatch` not in {who}'s extended.log:\n{log}"
        );
    }
    let st = master.status(&env);
    assert!(row(&st, "s7").is_none(), "{st}");
}

/// (8) A second process under a known slave's name, with another node key, is refused
/// and listed by its address; the real slave's row stays as it was. `master forget`
/// lets the new key in (the reinstall path).
#[test]
fn another_node_key_under_a_known_name_is_refused_until_forgotten() {
    let env = Env::new();
    let master = start_master(&env, "m8");
    let mut real = start_slave(&env, "s8", &master, "");
    wait_known(&env, &master, &["s8"]);
    let f = policy_file(&env, "p1.yaml", P1);
    let sha = sha_of(&apply_json(&env, &master, &f, &["--wait"]));
    let real_status = real.status(&env);
    let before = master.status(&env);
    let real_row = row(&before, "s8").unwrap().clone();
    assert_eq!(real_row["node_key"], real_status["node_key"], "{real_row}");
    assert_eq!(real_row["address"], real.ip().to_string(), "{real_row}");

    // The impostor: same node name, its own folder (so its own node key).
    let ip = next_ip();
    let dir = env.path().join("s8-impostor");
    std::fs::create_dir_all(&dir).unwrap();
    let files = NodeDir {
        name: "s8".into(),
        config: dir.join("startup.yaml"),
        data: dir.join("data"),
        log: dir.join("log"),
        dir,
    };
    std::fs::write(
        &files.config,
        startup_yaml("s8", &ip, &format!("master: {}\n", master.portal)),
    )
    .unwrap();
    assert_ok(
        &files.local(
            &env,
            &["operator", "add", env.operator_pub.to_str().unwrap()],
        ),
        "operator add (impostor)",
    );
    let impostor = Node::run(files);
    let imp_key = impostor.status(&env)["node_key"].clone();
    assert_ne!(
        imp_key, real_status["node_key"],
        "the impostor has the same node key"
    );

    let st = eventually(
        Duration::from_secs(10),
        "the master to list the impostor's refused attempt",
        || {
            let st = master.status(&env);
            st["refused"]
                .as_array()?
                .iter()
                .any(|r| r["address"] == ip.as_str())
                .then_some(st)
        },
    );
    let r = st["refused"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == ip.as_str())
        .unwrap();
    let reason = r["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("node key changed for s8") && reason.contains("ssq master forget s8"),
        "refused entry: {r}"
    );
    let mlog = master.files.extended_log();
    assert!(
        mlog.contains("node key changed for s8"),
        "not in the master's extended.log:\n{mlog}"
    );
    // The real slave's row is untouched.
    let now = row(&st, "s8").unwrap();
    for field in [
        "state", "revision", "sha256", "address", "portal", "node_key",
    ] {
        assert_eq!(now[field], real_row[field], "s8's {field} changed: {now}");
    }
    assert_eq!(now["sha256"], sha.as_str());
    assert_eq!(
        st["slaves"].as_array().map(Vec::len),
        Some(1),
        "the impostor got a row: {st}"
    );
    assert_eq!(impostor.status(&env)["policy"]["state"], "UNSYNCED");
    assert_policy(&env, &real, 1, &sha, "SYNCED");

    // The real slave is decommissioned (its machine reinstalled): forget its pin.
    assert_eq!(real.stop().code(), Some(0));
    let out = env.ssq_json(&["master", "forget", "s8", "--master", &master.portal]);
    assert_eq!(out["existed"], true, "{out}");
    wait_policy(&env, &impostor, 1, &sha, "SYNCED");
    let st = eventually(
        Duration::from_secs(5),
        "the master to list the new s8",
        || {
            let st = master.status(&env);
            let r = row(&st, "s8")?;
            (r["node_key"] == imp_key && r["state"] == "SYNCED").then(|| st.clone())
        },
    );
    let r = row(&st, "s8").unwrap();
    assert_eq!(r["address"], ip.as_str(), "{r}");
    assert_eq!(r["portal"], impostor.portal.as_str(), "{r}");
}

/// (9) Compare-and-swap, unchanged content, rollback and diff.
#[test]
fn if_revision_unchanged_rollback_and_diff() {
    let env = Env::new();
    let master = start_master(&env, "m9");
    let s = start_slave(&env, "s9", &master, "");
    wait_known(&env, &master, &["s9"]);
    let f1 = policy_file(&env, "p1.yaml", P1);
    let f2 = policy_file(&env, "p2.yaml", P2);
    let f3 = policy_file(&env, "p3.yaml", P3);
    let sha1 = sha_of(&apply_json(&env, &master, &f1, &[]));
    let out = apply_json(&env, &master, &f2, &["--wait"]);
    assert_eq!(out["revision"], 2, "{out}");
    let sha2 = sha_of(&out);
    assert_ne!(sha1, sha2);

    // The master moved on: refused, exit 5, nothing stored.
    let out = apply(&env, &master, &f3, &["--if-revision", "1"]);
    assert_exit(&out, 5, "apply --if-revision 1 at revision 2");
    assert!(
        stderr(&out).contains("revision 2"),
        "the refusal does not say where the master is:\n{}",
        stderr(&out)
    );
    assert_eq!(
        history(&env, &master).len(),
        2,
        "a refused apply stored something"
    );

    // The same content again: no new revision, and it says so.
    let out = apply(&env, &master, &f2, &[]);
    assert_ok(&out, "apply of unchanged content");
    assert!(
        stdout(&out).contains("unchanged"),
        "does not say unchanged:\n{}",
        stdout(&out)
    );
    let out = apply_json(&env, &master, &f2, &[]);
    assert_eq!(out["changed"], false, "{out}");
    assert_eq!(out["revision"], 2, "{out}");
    assert_eq!(
        history(&env, &master).len(),
        2,
        "unchanged content made a revision"
    );

    // Rollback: rev 1's content as revision 3.
    let out = env.ssq_json(&["policy", "rollback", "1", "--master", &master.portal]);
    assert_eq!(out["revision"], 3, "{out}");
    assert_eq!(out["sha256"], sha1.as_str(), "rollback content: {out}");
    let h = history(&env, &master);
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h[2]["revision"], 3);
    assert_eq!(h[2]["sha256"], sha1.as_str());
    assert_eq!(h[2]["rollback_of"], 1, "{}", h[2]);
    wait_policy(&env, &s, 3, &sha1, "SYNCED");
    let shown = env.ssq_json(&[
        "policy",
        "show",
        "--revision",
        "2",
        "--master",
        &master.portal,
    ]);
    assert_eq!(shown["text"], P2, "policy show --revision 2");

    // diff: 0 same, 1 differs, >1 error.
    let out = env.ssq(&["policy", "diff", &f1, "--master", &master.portal]);
    assert_exit(&out, 0, "diff of the current content");
    let out = env.ssq(&["policy", "diff", &f3, "--master", &master.portal]);
    assert_exit(&out, 1, "diff of other content");
    assert!(
        stdout(&out).contains("+    domains: [c.example.com]"),
        "diff does not show the change:\n{}",
        stdout(&out)
    );
    let bad = policy_file(&env, "bad.yaml", "rules: [\n");
    let out = env.ssq(&["policy", "diff", &bad, "--master", &master.portal]);
    let code = out.status.code().unwrap_or(-1);
    assert!(code > 1, "diff of a bad file exited {code}");

    // And --if-revision with the current revision is accepted.
    let out = apply_json(&env, &master, &f3, &["--if-revision", "3", "--wait"]);
    assert_eq!(out["revision"], 4, "{out}");
    assert_policy(&env, &s, 4, &sha_of(&out), "SYNCED");
}

/// (10) A slave that rejects a revision: `--wait` fails fast naming it (exit 5), the slave
/// keeps its old policy, and the master does not send it the same revision again.
#[test]
fn wait_fails_fast_when_a_slave_rejects() {
    let env = Env::new();
    let master = start_master(&env, "m10");
    // Keeps categories local and has none: a master rule using a category cannot
    // compile there.
    let picky = start_slave(
        &env,
        "s10-picky",
        &master,
        "sync: { never: [categories] }\n",
    );
    let good = start_slave(&env, "s10-good", &master, "");
    wait_known(&env, &master, &["s10-picky", "s10-good"]);
    let f1 = policy_file(&env, "p1.yaml", P1);
    let sha1 = sha_of(&apply_json(&env, &master, &f1, &["--wait"]));
    assert_policy(&env, &picky, 1, &sha1, "SYNCED");

    let f2 = policy_file(&env, "p2.yaml", P2);
    let t0 = Instant::now();
    let out = apply(&env, &master, &f2, &["--wait"]);
    let took = t0.elapsed();
    assert_exit(&out, 5, "apply --wait with a rejecting slave");
    assert!(
        took < Duration::from_secs(5),
        "--wait did not fail fast: {took:?}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("s10-picky") && err.contains("social"),
        "the failure does not name the slave and its reason:\n{err}"
    );
    assert!(!err.contains("s10-good"), "names the good slave:\n{err}");

    // The revision was stored; the good slave has it, the picky one keeps revision 1.
    let h = history(&env, &master);
    assert_eq!(h.len(), 2, "{h:?}");
    let sha2 = h[1]["sha256"].as_str().unwrap().to_string();
    wait_policy(&env, &good, 2, &sha2, "SYNCED");
    let p = &picky.status(&env)["policy"];
    assert_eq!(p["revision"], 1, "the picky slave: {p}");
    assert_eq!(p["sha256"], sha1.as_str(), "{p}");
    let st = master.status(&env);
    let r = row(&st, "s10-picky").unwrap();
    assert_eq!(r["state"], "REJECTED", "{r}");
    assert!(
        r["error"].as_str().unwrap_or("").contains("social"),
        "no reason in the master's row: {r}"
    );
    assert_eq!(r["revision"], 1, "{r}");
    assert_eq!(row(&st, "s10-good").unwrap()["state"], "SYNCED");

    // Not re-sent in a loop: one rejection in the slave's log, and still one a second later.
    let rejections = || {
        picky
            .files
            .extended_log()
            .lines()
            .filter(|l| l.contains("rejected revision 2"))
            .count()
    };
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert_eq!(
            rejections(),
            1,
            "revision 2 was sent again:\n{}",
            picky.files.extended_log()
        );
        assert_eq!(picky.status(&env)["policy"]["revision"], 1);
        std::thread::sleep(Duration::from_millis(100));
    }
}
