//! `ssq doctor --node NODE` end to end (issue 6): real `ssqd` processes, the real `ssq`,
//! `-o json` asserted step by step. A closed portal port fails the `tcp` step (exit 3)
//! and skips what follows; a healthy slave passes everything, `master_reachable`
//! included; a slave whose master is stopped fails `master_reachable` (exit 5); an
//! address the allow list refuses fails `allow_list` (exit 4) with the fix naming it; a
//! wrong pin fails `tls`, an unknown operator key fails `signature` (both exit 4); the
//! slave-side endpoint `POST /api/v1/diagnose/master` refuses a node that is no slave.

mod util;

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use util::*;

/// The steps every report has, in order.
const STEPS: [&str; 8] = [
    "dns",
    "tcp",
    "tls",
    "signature",
    "allow_list",
    "master_reachable",
    "last_sync",
    "shipper",
];

/// `ssq -o json [PRE...] doctor --node NODE`: the exit code and the report from stdout
/// (printed on failure too), checked to list every step in order.
fn doctor(env: &Env, pre: &[&str], node: &str) -> (Output, Value) {
    let mut args = vec!["-o", "json"];
    args.extend_from_slice(pre);
    args.extend_from_slice(&["doctor", "--node", node]);
    let out = env.ssq(&args);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ssq doctor printed no JSON report ({e}), exit {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            stdout(&out),
            stderr(&out)
        )
    });
    let names: Vec<&str> = report["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in {report}"))
        .iter()
        .map(|s| s["step"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(names, STEPS, "steps out of order: {report:#}");
    (out, report)
}

/// The step `name` of a report.
fn step<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["step"] == name))
        .unwrap_or_else(|| panic!("no step {name} in {report:#}"))
}

/// The status of step `name`.
fn status_of(report: &Value, name: &str) -> String {
    step(report, name)["status"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// Text of a step's field ("" when absent).
fn text(report: &Value, name: &str, field: &str) -> String {
    step(report, name)[field].as_str().unwrap_or("").to_string()
}

/// Wait until the slave reports a successful contact with its master.
fn wait_connected(env: &Env, slave: &Node) {
    eventually(
        Duration::from_secs(15),
        &format!("{} to reach its master", slave.files.name),
        || {
            let st = slave.status(env);
            (st["sync"]["state"] == "connected" && st["sync"]["last_contact"].is_string())
                .then_some(())
        },
    );
}

#[test]
fn closed_portal_port_fails_the_tcp_step() {
    let env = Env::new();
    let mut node = Node::start(&env, "gone", &next_ip(), "");
    let portal = node.portal.clone();
    let port = portal.rsplit_once(':').expect("host:port").1.to_string();
    node.stop();

    let (out, r) = doctor(&env, &[], &portal);
    assert_exit(&out, 3, "doctor on a closed port");
    assert_eq!(r["address"], portal.as_str(), "{r:#}");
    assert_eq!(status_of(&r, "dns"), "PASS", "{r:#}");
    assert!(text(&r, "dns", "reason").contains("an IP address"), "{r:#}");
    assert_eq!(status_of(&r, "tcp"), "FAIL", "{r:#}");
    let reason = text(&r, "tcp", "reason");
    assert!(
        reason.contains(&port),
        "the tcp reason does not name port {port}: {reason}"
    );
    let fix = text(&r, "tcp", "fix");
    assert!(
        fix.contains(&port) && fix.contains("firewall") && fix.contains("ssq --local --config"),
        "the tcp fix should name the port, the firewall and the check on the node: {fix}"
    );
    for later in &STEPS[2..] {
        assert_eq!(status_of(&r, later), "SKIP", "{later}: {r:#}");
        assert!(
            text(&r, later, "reason").contains("TCP connect failed"),
            "{later} does not say why it was skipped: {r:#}"
        );
    }
    // Exactly one step failed: the TCP one.
    let failed: Vec<&Value> = r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"] == "FAIL")
        .collect();
    assert_eq!(failed.len(), 1, "{r:#}");

    // The table names the failure and its fix, too.
    let out = env.ssq(&["doctor", "--node", &portal]);
    assert_exit(&out, 3, "doctor (table) on a closed port");
    let table = stdout(&out);
    assert!(
        table.contains("tcp") && table.contains("FAIL") && table.contains("→ fix (tcp)"),
        "{table}"
    );
}

#[test]
fn healthy_slave_passes_every_step_and_a_stopped_master_fails_master_reachable() {
    let env = Env::new();
    let mut master = start_master(&env, "m-doc");
    let slave = start_slave(&env, "s-doc", &master);
    wait_connected(&env, &slave);

    let (out, r) = doctor(&env, &[], &slave.portal);
    assert_exit(&out, 0, "doctor on a healthy slave");
    for s in STEPS {
        assert_eq!(status_of(&r, s), "PASS", "{s}: {r:#}");
        assert!(
            step(&r, s)["fix"].is_null(),
            "{s} has a fix but passed: {r:#}"
        );
    }
    let inner: Vec<(String, String)> = step(&r, "master_reachable")["master_steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no master_steps: {r:#}"))
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap_or("?").to_string(),
                s["status"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    assert_eq!(
        inner,
        ["dns", "tcp", "tls", "sync"].map(|s| (s.to_string(), "PASS".to_string())),
        "{r:#}"
    );
    assert!(
        text(&r, "master_reachable", "reason").contains(&master.portal),
        "{r:#}"
    );
    // The second run finds the pin the first one made.
    let (out, r) = doctor(&env, &[], &slave.portal);
    assert_exit(&out, 0, "doctor again");
    assert!(
        text(&r, "tls", "reason").contains("matches the pin"),
        "{r:#}"
    );

    // On the master, the slave steps do not apply: SKIP, exit 0.
    let (out, r) = doctor(&env, &[], &master.portal);
    assert_exit(&out, 0, "doctor on the master");
    for s in ["master_reachable", "last_sync", "shipper"] {
        assert_eq!(status_of(&r, s), "SKIP", "{s}: {r:#}");
        assert!(text(&r, s, "reason").contains("not a slave"), "{r:#}");
    }

    // A wrong expected fingerprint fails the tls step (exit 4) and skips the signature.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (out, r) = doctor(&env, &["--fingerprint", &wrong], &slave.portal);
    assert_exit(&out, 4, "doctor with a wrong fingerprint");
    assert_eq!(status_of(&r, "tls"), "FAIL", "{r:#}");
    assert!(text(&r, "tls", "reason").contains(&wrong), "{r:#}");
    assert_eq!(status_of(&r, "signature"), "SKIP", "{r:#}");

    // The master goes away: the slave cannot reach it.
    master.stop();
    let (out, r) = doctor(&env, &[], &slave.portal);
    assert_exit(&out, 5, "doctor on a slave whose master is stopped");
    for s in ["dns", "tcp", "tls", "signature", "allow_list"] {
        assert_eq!(status_of(&r, s), "PASS", "{s}: {r:#}");
    }
    assert_eq!(status_of(&r, "master_reachable"), "FAIL", "{r:#}");
    let inner = step(&r, "master_reachable")["master_steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let tcp = inner
        .iter()
        .find(|s| s["step"] == "tcp")
        .unwrap_or_else(|| panic!("no inner tcp step: {r:#}"));
    assert_eq!(tcp["status"], "FAIL", "{r:#}");
    let slave_ip = slave.ip().to_string();
    let fix = text(&r, "master_reachable", "fix");
    assert!(
        fix.contains(&master.portal) && fix.contains(&format!("ssq master allow add {slave_ip}")),
        "the fix should name the master and the allow-list entry for {slave_ip}: {fix}"
    );
    assert!(
        text(&r, "master_reachable", "reason").contains(&master.portal),
        "{r:#}"
    );
}

#[test]
fn an_address_the_allow_list_refuses_fails_allow_list() {
    let env = Env::new();
    let node = Node::start(&env, "n-allow", &next_ip(), "");
    node.files.local_json(
        &env,
        &["master", "allow", "add", "127.0.0.3", "--access", "config"],
    );
    node.files.local_json(&env, &["master", "auth", "enable"]);

    // 127.0.0.4 is not in the list.
    let (out, r) = doctor(&env, &["--bind", "127.0.0.4"], &node.portal);
    assert_exit(&out, 4, "doctor from a refused address");
    for s in ["dns", "tcp", "tls"] {
        assert_eq!(status_of(&r, s), "PASS", "{s}: {r:#}");
    }
    assert_eq!(status_of(&r, "signature"), "SKIP", "{r:#}");
    assert_eq!(status_of(&r, "allow_list"), "FAIL", "{r:#}");
    assert!(
        text(&r, "allow_list", "reason").contains("127.0.0.4"),
        "{r:#}"
    );
    let fix = text(&r, "allow_list", "fix");
    assert!(
        fix.contains("ssq --local --config FILE master allow add 127.0.0.4 --access config"),
        "the fix should name the address and the command: {fix}"
    );
    for s in ["master_reachable", "last_sync", "shipper"] {
        assert_eq!(status_of(&r, s), "SKIP", "{s}: {r:#}");
    }

    // 127.0.0.3 is admitted: everything passes, and the allow list says so.
    let (out, r) = doctor(&env, &["--bind", "127.0.0.3"], &node.portal);
    assert_exit(&out, 0, "doctor from an admitted address");
    assert_eq!(status_of(&r, "allow_list"), "PASS", "{r:#}");
    assert!(
        text(&r, "allow_list", "reason").contains("authentication on")
            && text(&r, "allow_list", "reason").contains("127.0.0.3"),
        "{r:#}"
    );
}

#[test]
fn an_unknown_operator_key_fails_the_signature_step() {
    let env = Env::new();
    let node = Node::start(&env, "n-sig", &next_ip(), "");
    let other = env.path().join("other.key");
    let out = env.ssq(&[
        "key",
        "new",
        "--operator",
        "--out",
        other.to_str().expect("utf-8 path"),
    ]);
    assert_ok(&out, "ssq key new --operator (another key)");

    let (out, r) = doctor(
        &env,
        &["--operator-key", other.to_str().expect("utf-8 path")],
        &node.portal,
    );
    assert_exit(
        &out,
        4,
        "doctor with an operator key the node does not list",
    );
    assert_eq!(status_of(&r, "signature"), "FAIL", "{r:#}");
    assert!(
        text(&r, "signature", "reason").contains("unknown operator key"),
        "{r:#}"
    );
    let fix = text(&r, "signature", "fix");
    assert!(
        fix.contains("operator add") && fix.contains("other.key.pub"),
        "the fix should say how to add this key's .pub on the node: {fix}"
    );
    // The node checks the address before the signature: the address got in.
    assert_eq!(status_of(&r, "allow_list"), "PASS", "{r:#}");
    assert_eq!(status_of(&r, "master_reachable"), "SKIP", "{r:#}");
}

#[test]
fn diagnose_master_is_for_slaves_only() {
    let env = Env::new();
    let node = Node::start(&env, "n-diag", &next_ip(), "");
    let key = ssq::keys::SigningKey::load(&env.operator).expect("operator key");
    let mut conn = RawConn::connect(&node.portal, None);
    let auth = operator_auth(&conn, &key, &Sig::now("GET", "/api/v1/status"));
    let boot = conn
        .send("GET", "/api/v1/status", Some(&auth), b"")
        .boot_id
        .expect("boot id header");
    let sig = Sig {
        boot_id: &boot,
        ..Sig::now("POST", "/api/v1/diagnose/master")
    };
    let auth = operator_auth(&conn, &key, &sig);
    let a = conn.send("POST", "/api/v1/diagnose/master", Some(&auth), b"");
    assert_eq!(a.status, 409, "{:?}", a.json);
    assert_eq!(a.json["error"], "not_a_slave", "{:?}", a.json);
    assert!(
        a.json["message"].as_str().unwrap_or("").contains("n-diag"),
        "{:?}",
        a.json
    );
    // Unsigned, it is refused like every config endpoint.
    let a = conn.send("POST", "/api/v1/diagnose/master", None, b"");
    assert_eq!(a.status, 401, "{:?}", a.json);
}
