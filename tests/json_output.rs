//! `-o json`: stdout is one JSON document with the expected fields, whatever stderr says;
//! on failure stdout is empty and stderr is one `{"error", "message"}` object.

mod util;

use serde_json::Value;
use util::*;

/// Parse stdout as one JSON document.
fn json_stdout(o: &std::process::Output, what: &str) -> Value {
    assert_ok(o, what);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not one JSON document ({e}):\n{}",
            stdout(o)
        )
    })
}

/// A failure under `-o json`: stdout empty, stderr exactly one JSON object.
fn json_failure(o: &std::process::Output, exit: i32, what: &str) -> Value {
    assert_exit(o, exit, what);
    assert!(
        o.stdout.is_empty(),
        "{what}: stdout on failure:\n{}",
        stdout(o)
    );
    let err = stderr(o);
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{what}: stderr is not one line:\n{err}"
    );
    let v: Value = serde_json::from_str(err.trim())
        .unwrap_or_else(|e| panic!("{what}: stderr is not JSON ({e}):\n{err}"));
    assert!(v["error"].is_string(), "{what}: no error code in {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no message in {v}"
    );
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2, "{what}: extra fields in {v}");
    v
}

#[test]
fn status_allow_list_and_slave_show_as_json() {
    let env = Env::new();
    let ip = next_ip();
    let node = Node::start(&env, "slave-json", &ip, "master: 127.0.0.9:9999\n");

    // First contact: the pin notice goes to stderr, stdout stays pure JSON.
    let out = node.ssq(&env, &["-o", "json", "status"]);
    let s = json_stdout(&out, "status");
    assert!(
        stderr(&out).contains("pinned"),
        "first contact should tell about the pin on stderr:\n{}",
        stderr(&out)
    );
    assert_eq!(s["node"], "slave-json");
    assert_eq!(s["role"], "slave");
    assert_eq!(s["master"], "127.0.0.9:9999");
    assert_eq!(s["portal"], node.portal.as_str());
    assert_eq!(s["proxy"].as_str(), node.proxy.as_deref());
    assert_eq!(s["pid"], node.pid);
    for field in [
        "version",
        "boot_id",
        "started_at",
        "fingerprint",
        "key_id",
        "node_key",
    ] {
        assert!(
            s[field].as_str().is_some_and(|v| !v.is_empty()),
            "status.{field} missing or empty: {s}"
        );
    }
    assert!(
        s["fingerprint"].as_str().unwrap().starts_with("sha256:"),
        "{s}"
    );
    assert!(s["key_id"].as_str().unwrap().starts_with("ak:"), "{s}");
    assert!(
        s["node_key"].as_str().unwrap().starts_with("SHA256:"),
        "{s}"
    );
    assert!(s["policy"].is_object(), "status.policy: {s}");
    assert!(s["policy"]["revision"].is_u64(), "{s}");
    assert!(
        humantime::parse_rfc3339(s["started_at"].as_str().unwrap()).is_ok(),
        "started_at is not RFC 3339: {s}"
    );
    // The key id matches the activation key's, without the secret.
    let created = ssq::keys::ActivationKey::load(&env.key).unwrap();
    assert_eq!(s["key_id"], created.key_id());
    // Pinned now: a second call keeps stderr quiet.
    let out = node.ssq(&env, &["-o", "json", "status"]);
    json_stdout(&out, "status again");
    assert!(
        out.stderr.is_empty(),
        "stderr on success:\n{}",
        stderr(&out)
    );
    // The same through the admin socket.
    let local = node.files.local_json(&env, &["status"]);
    assert_eq!(local["boot_id"], s["boot_id"]);

    // allow list.
    let out = env.ssq(&[
        "-o",
        "json",
        "master",
        "allow",
        "list",
        "--node",
        &node.portal,
    ]);
    let l = json_stdout(&out, "allow list");
    assert_eq!(l["authentication"], "off", "{l}");
    assert_eq!(l["allow"], Value::Array(vec![]), "{l}");
    node.files.local_json(
        &env,
        &[
            "master",
            "allow",
            "add",
            "10.1.0.0/16",
            "--access",
            "sync,config",
            "--comment",
            "ops net",
        ],
    );
    let l = env.ssq_json(&["master", "allow", "list", "--node", &node.portal]);
    let e = &l["allow"][0];
    assert_eq!(e["address"], "10.1.0.0/16", "{l}");
    assert_eq!(e["access"], serde_json::json!(["sync", "config"]), "{l}");
    assert_eq!(e["comment"], "ops net", "{l}");
    assert_eq!(e["enabled"], true, "{l}");
    // An allow add answers in JSON too.
    let out = env.ssq(&[
        "-o",
        "json",
        "master",
        "allow",
        "add",
        "10.2.0.1",
        "--node",
        &node.portal,
    ]);
    let ch = json_stdout(&out, "allow add");
    assert_eq!(ch["outcome"], "added", "{ch}");
    assert_eq!(
        ch["access"]["allow"].as_array().map(Vec::len),
        Some(2),
        "{ch}"
    );

    // slave show.
    let out = node.ssq(&env, &["-o", "json", "slave", "show"]);
    let sh = json_stdout(&out, "slave show");
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(sh["startup"]["node"], "slave-json", "{sh}");
    assert_eq!(sh["startup"]["role"], "slave", "{sh}");
    // The same `HOST:PORT` string as `status` gives.
    assert_eq!(sh["startup"]["master"], "127.0.0.9:9999", "{sh}");
    assert_eq!(sh["startup"]["portal_listen"], format!("{ip}:0"), "{sh}");
    let path = sh["path"].as_str().expect("path");
    assert!(path.ends_with("slave-json/startup.yaml"), "{sh}");
    assert_eq!(
        sh["text"].as_str(),
        Some(
            std::fs::read_to_string(&node.files.config)
                .unwrap()
                .as_str()
        ),
        "slave show's text is not the file"
    );

    // YAML too is parseable in the same shape (a spot check).
    let out = node.ssq(&env, &["-o", "yaml", "status"]);
    assert_ok(&out, "status -o yaml");
    assert!(
        stdout(&out).contains("node: slave-json"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn failures_under_json_keep_stdout_empty() {
    let env = Env::new();
    let node = Node::start(&env, "n-jsonerr", &next_ip(), "");
    // Pinned first, so that stderr carries the failure alone.
    let status = node.status(&env);

    // Refused (unknown operator key): exit 4.
    let other = env.path().join("stranger.key");
    assert_ok(
        &env.ssq(&["key", "new", "--operator", "--out", other.to_str().unwrap()]),
        "key new",
    );
    let out = node.ssq(
        &env,
        &[
            "-o",
            "json",
            "--operator-key",
            other.to_str().unwrap(),
            "status",
        ],
    );
    let v = json_failure(&out, 4, "unknown operator");
    assert_eq!(v["error"], "unknown_operator_key", "{v}");
    assert!(v["message"].as_str().unwrap().contains("SHA256:"), "{v}");

    // Nothing listening: exit 3, naming the address and what to check.
    let dead = {
        let l = std::net::TcpListener::bind(format!("{}:0", next_ip())).unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = env.ssq(&["-o", "json", "status", "--node", &dead]);
    let v = json_failure(&out, 3, "unreachable");
    assert_eq!(v["error"], "unreachable", "{v}");
    assert!(v["message"].as_str().unwrap().contains(&dead), "{v}");

    // Bad input: exit 2.
    let out = env.ssq(&[
        "-o",
        "json",
        "master",
        "allow",
        "add",
        "10.0.0.300",
        "--node",
        &node.portal,
    ]);
    let v = json_failure(&out, 2, "bad address");
    assert!(v["message"].as_str().unwrap().contains("10.0.0.300"), "{v}");

    // Refused by the lock-out guard: exit 2.
    let out = node.ssq(&env, &["-o", "json", "master", "auth", "enable"]);
    let v = json_failure(&out, 2, "lock-out");
    assert_eq!(v["error"], "lockout", "{v}");

    // A changed certificate: exit 4.
    std::fs::write(
        env.known_nodes(),
        format!("{} sha256:{}\n", node.portal, "0".repeat(64)),
    )
    .unwrap();
    let out = node.ssq(&env, &["-o", "json", "status"]);
    let v = json_failure(&out, 4, "certificate changed");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains(status["fingerprint"].as_str().unwrap()), "{v}");
    assert!(msg.contains(&"0".repeat(64)), "{v}");
    assert!(msg.contains("ssq node trust"), "{v}");
}

#[test]
fn first_contact_failure_under_json_keeps_stderr_json() {
    // A script that parses stderr under `-o json` must not meet a plain-text line: the
    // first-contact pin notice comes before the refusal here.
    let env = Env::new();
    let node = Node::start(&env, "n-jsonfirst", &next_ip(), "");
    let other = env.path().join("stranger.key");
    assert_ok(
        &env.ssq(&["key", "new", "--operator", "--out", other.to_str().unwrap()]),
        "key new",
    );
    assert!(!env.known_nodes().exists(), "pinned already");
    let out = node.ssq(
        &env,
        &[
            "-o",
            "json",
            "--operator-key",
            other.to_str().unwrap(),
            "status",
        ],
    );
    assert_exit(&out, 4, "unknown operator, first contact");
    assert!(out.stdout.is_empty(), "{}", stdout(&out));
    for line in stderr(&out).lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "-o json: a stderr line is not JSON: {line}\nstderr:\n{}",
            stderr(&out)
        );
    }
}

/// An absurd --timeout is taken as "very long", never a crash (exit 101).
#[test]
fn huge_timeout_does_not_crash() {
    let env = Env::new();
    let out = env.ssq(&[
        "--timeout",
        "18446744073709551615s",
        "status",
        "--node",
        "127.0.0.1:1",
    ]);
    assert_exit(&out, 3, "status against a closed port with a huge timeout");
    assert!(
        stderr(&out).contains("nothing answers on 127.0.0.1:1"),
        "{}",
        stderr(&out)
    );
}
