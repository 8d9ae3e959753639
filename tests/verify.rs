//! `ssq verify` end to end: a real master and real slaves (`ssqd` processes on their own
//! 127.0.0.x), checked by the real `ssq`. What issue 6 asks to see: all green gives exit
//! 0 and every check PASS (with `--probe-policy` and `--probe-traffic` finding their own
//! revision and record); a slave pointed at another master fails `startup_params` naming
//! both addresses; a slave whose allow-list entry is gone (authentication on) fails
//! `allow_list` with exit 5; a slave with another activation key fails `activation_key`;
//! a stopped slave gives exit 3 while the others are still verified.

mod util;

use std::process::Output;

use serde_json::Value;
use util::*;

const POLICY: &str = "\
rules:
  - name: no-ads
    domains: [ads.example]
    action: deny
";

/// `ssq -o json verify --master M ARGS` with a 20 s limit: (exit code, JSON report).
fn verify(env: &Env, master: &Node, args: &[&str]) -> (i32, Value, Output) {
    let mut all = vec![
        "-o",
        "json",
        "--timeout",
        "20s",
        "verify",
        "--master",
        &master.portal,
    ];
    all.extend_from_slice(args);
    let out = env.ssq(&all);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ssq verify printed no JSON ({e}):\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        )
    });
    (out.status.code().unwrap_or(-1), v, out)
}

/// The row of slave `name`.
fn slave<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["slaves"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no row for {name} in {report:#}"))
}

/// Check `id` of a row: (status, reason).
fn check<'a>(row: &'a Value, id: &str) -> (&'a str, &'a str) {
    let c = row["checks"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == id))
        .unwrap_or_else(|| panic!("no check {id} in {row:#}"));
    (
        c["status"].as_str().unwrap_or(""),
        c["reason"].as_str().unwrap_or(""),
    )
}

/// Every check of a row passed; names the first that did not.
fn assert_all_pass(row: &Value) {
    assert_all_pass_but(row, &[]);
}

/// Every check of a row passed, but those of `skipped`, which were skipped.
fn assert_all_pass_but(row: &Value, skipped: &[&str]) {
    for c in row["checks"].as_array().expect("checks") {
        let want = if skipped.iter().any(|s| c["check"] == *s) {
            "SKIP"
        } else {
            "PASS"
        };
        assert_eq!(c["status"], want, "{} {}: {c}", row["name"], c["check"]);
        assert!(c["ms"].is_u64(), "no ms in {c}");
        assert!(
            !c["reason"].as_str().unwrap_or("").is_empty(),
            "no reason in {c}"
        );
    }
}

/// (1) All green with both probes → exit 0, every check PASS; the allow-list entry of
/// one slave removed → `allow_list` FAIL, exit 5; that slave stopped → exit 3 and the
/// other still verified.
#[test]
fn all_green_then_allow_list_then_a_stopped_slave() {
    let env = Env::new();
    let master = start_master(&env, "vm");
    let s1 = start_slave(&env, "vs1", &master);
    let mut s2 = start_slave(&env, "vs2", &master);
    apply_policy_wait(&env, &master, &["vs1", "vs2"], POLICY);
    // Authentication on: the operator (127.0.0.1) may configure, each slave may sync.
    let add = |addr: &str, access: &str| {
        master
            .files
            .local_json(&env, &["master", "allow", "add", addr, "--access", access])
    };
    add("127.0.0.1", "config");
    add(&s1.ip().to_string(), "sync");
    add(&s2.ip().to_string(), "sync");
    master.files.local_json(&env, &["master", "auth", "enable"]);

    let (code, r, out) = verify(&env, &master, &["--probe-policy", "--probe-traffic"]);
    assert_eq!(code, 0, "all green: {r:#}\n{}", stderr(&out));
    assert_eq!(r["passed"], true);
    assert_eq!(r["master"]["name"], "vm");
    assert_all_pass(&r["master"]);
    assert_eq!(r["slaves"].as_array().map(Vec::len), Some(2), "{r:#}");
    for name in ["vs1", "vs2"] {
        let row = slave(&r, name);
        assert_all_pass(row);
        let (_, why) = check(row, "allow_list");
        assert!(why.contains("grants sync"), "{why}");
        let (_, why) = check(row, "reports");
        assert!(
            why.contains("http://ssq.probe/") && why.contains("reached the master's store"),
            "{why}"
        );
        let (_, why) = check(row, "policy_sync");
        assert!(why.contains("probe revision was applied"), "{why}");
        let (_, why) = check(row, "sync_events");
        assert!(why.contains("synchronized section: probe"), "{why}");
    }
    // The probe revision is the master's current one and carries the marker.
    let probe = &r["probe_policy"];
    let rev = probe["revision"].as_u64().expect("probe revision");
    assert_eq!(master.status(&env)["policy"]["revision"], rev);
    assert!(probe["all_ms"].as_u64().expect("all_ms") < 5_000, "{probe}");
    // The probe record is in the master's store, served by the slave itself.
    let reqs = env.ssq_json(&[
        "report",
        "requests",
        "--master",
        &master.portal,
        "--host",
        "ssq.probe",
    ]);
    let rows = reqs["rows"].as_array().expect("rows");
    assert!(
        rows.iter()
            .any(|x| x["node"] == "vs1" && x["status"] == 200),
        "{reqs:#}"
    );

    // `ssq status` on the master: every slave with state, revision, last seen, report
    // lag and version.
    let out = env.ssq(&["status", "--node", &master.portal]);
    assert_ok(&out, "ssq status (master)");
    let text = stdout(&out);
    for col in ["state", "revision", "last seen", "report lag", "version"] {
        assert!(text.contains(col), "no {col} column:\n{text}");
    }
    let version = master.status(&env)["version"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(!version.is_empty());
    let line = text
        .lines()
        .find(|l| l.contains("vs1"))
        .unwrap_or_else(|| panic!("no vs1 row:\n{text}"));
    assert!(line.contains("SYNCED") && line.contains(&version), "{line}");

    // (2) vs2's entry removed, authentication on → allow_list FAIL, exit 5.
    // The master warns: a slave it knows loses sync access (DESIGN.md, lock-out).
    let change = master
        .files
        .local_json(&env, &["master", "allow", "remove", &s2.ip().to_string()]);
    let warned = change["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warned.iter().any(|w| w
            .as_str()
            .is_some_and(|w| w.contains("vs2") && w.contains("loses sync access"))),
        "{change:#}"
    );
    assert!(
        master.files.extended_log().contains("slave vs2"),
        "no warning in extended.log"
    );
    let (code, r, _) = verify(&env, &master, &[]);
    assert_eq!(code, 5, "{r:#}");
    let (st, why) = check(slave(&r, "vs2"), "allow_list");
    assert_eq!(st, "FAIL", "{why}");
    assert!(why.contains(&s2.ip().to_string()), "{why}");
    assert_eq!(check(slave(&r, "vs1"), "allow_list").0, "PASS");
    add(&s2.ip().to_string(), "sync");

    // (3) vs2 stopped → exit 3; vs1 still verified, all PASS.
    s2.stop();
    let (code, r, _) = verify(&env, &master, &[]);
    assert_eq!(code, 3, "{r:#}");
    let (st, why) = check(slave(&r, "vs2"), "reachable");
    assert_eq!(st, "FAIL");
    assert!(why.contains("nothing answers"), "{why}");
    assert_eq!(check(slave(&r, "vs2"), "policy_sync").0, "SKIP");
    assert_all_pass(slave(&r, "vs1"));
    // The table names the failure and what to do.
    let out = env.ssq(&["--timeout", "20s", "verify", "--master", &master.portal]);
    assert_exit(&out, 3, "ssq verify with a stopped slave (table)");
    let text = stdout(&out);
    assert!(text.contains("FAIL vs2 reachable"), "{text}");
    assert!(text.contains("ssq doctor --node"), "{text}");
    drop(s1);
}

/// A slave pointed at another master fails `startup_params` naming both addresses; a
/// slave with another activation key fails `activation_key`; both exit 5.
#[test]
fn another_master_and_another_key_fail_their_checks() {
    let env = Env::new();
    let master = start_master(&env, "va");
    let mut other_master = start_master(&env, "vb");
    let _good = start_slave(&env, "vg", &master);
    let elsewhere = start_slave(&env, "ve", &other_master);
    let other_key = env.path().join("other.key");
    assert_ok(
        &env.ssq(&["key", "new", "--out", other_key.to_str().unwrap()]),
        "ssq key new (another activation key)",
    );
    let nd = NodeDir::create(
        &env,
        "vk",
        &next_ip(),
        &format!("master: {}\n", master.portal),
    );
    let text = std::fs::read_to_string(&nd.config).unwrap();
    std::fs::write(
        &nd.config,
        text.replace("../activation.key", "../other.key"),
    )
    .unwrap();
    let wrong_key = Node::run(nd);
    apply_policy_wait(&env, &master, &["vg"], POLICY);

    let (code, r, _) = verify(
        &env,
        &master,
        &[
            "--slave",
            "vg",
            "--slave",
            &elsewhere.portal,
            "--slave",
            &wrong_key.portal,
        ],
    );
    assert_eq!(code, 5, "{r:#}");
    // Authentication is off at this master: allow_list does not apply (and does not fail).
    assert_all_pass_but(slave(&r, "vg"), &["allow_list"]);
    let (st, why) = check(slave(&r, "ve"), "startup_params");
    assert_eq!(st, "FAIL", "{why}");
    assert!(
        why.contains(&other_master.portal) && why.contains(&master.portal),
        "both addresses named: {why}"
    );
    let (st, why) = check(slave(&r, "vk"), "activation_key");
    assert_eq!(st, "FAIL", "{why}");
    assert!(why.contains("activation key id"), "{why}");
    // Its startup params are right: it names this master.
    assert_eq!(check(slave(&r, "vk"), "startup_params").0, "PASS");
    // A master that does not answer: exit 3, its row says so, the named slave is listed
    // unchecked.
    other_master.stop();
    let (code, r, _) = verify(&env, &other_master, &["--slave", "ve"]);
    assert_eq!(code, 3, "{r:#}");
    assert_eq!(check(&r["master"], "reachable").0, "FAIL", "{r:#}");
    assert_eq!(check(slave(&r, "ve"), "startup_params").0, "SKIP", "{r:#}");
    // An unknown name is bad input (exit 2), and says so.
    let (code, r, _) = verify(&env, &master, &["--slave", "nosuch"]);
    assert_eq!(code, 2, "{r:#}");
    assert!(check(slave(&r, "nosuch"), "reachable")
        .1
        .contains("neither in the inventory"));
}
