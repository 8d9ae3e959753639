//! Credentials and signatures at the portal: unknown operator keys, changed
//! certificates, and hand-made requests (replayed, stale, sync-signed, signed with
//! another activation key, for another boot) that the CLI never sends.

mod util;

use ssq::keys::{ActivationKey, SigningKey};
use util::*;

#[test]
fn unknown_operator_key_is_refused_naming_its_fingerprint() {
    let env = Env::new();
    let node = Node::start(&env, "n-unknown-op", &next_ip(), "");
    let other = env.path().join("other.key");
    let created = env.ssq_json(&["key", "new", "--operator", "--out", other.to_str().unwrap()]);
    let fp = created["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_string();
    assert!(fp.starts_with("SHA256:"), "{fp}");

    let out = node.ssq(&env, &["--operator-key", other.to_str().unwrap(), "status"]);
    assert_exit(&out, 4, "status signed by an unknown operator key");
    assert!(
        stderr(&out).contains(&fp),
        "the refusal does not name {fp}:\n{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).is_empty(),
        "stdout on failure: {}",
        stdout(&out)
    );
    // Also through the environment variable.
    let out = env
        .ssq_cmd(&["status", "--node", &node.portal])
        .env("SSQ_OPERATOR_KEY", &other)
        .output()
        .unwrap();
    assert_exit(&out, 4, "SSQ_OPERATOR_KEY unknown");
    assert!(stderr(&out).contains(&fp), "{}", stderr(&out));
    // Added on the node, the same key is obeyed.
    let out = node.files.local(
        &env,
        &["operator", "add", &format!("{}.pub", other.display())],
    );
    assert_ok(&out, "operator add");
    let out = node.ssq(&env, &["--operator-key", other.to_str().unwrap(), "status"]);
    assert_ok(&out, "status signed by the added key");
    // And removed, it is refused again.
    let out = node.files.local(&env, &["operator", "remove", &fp]);
    assert_ok(&out, "operator remove");
    let out = node.ssq(&env, &["--operator-key", other.to_str().unwrap(), "status"]);
    assert_exit(&out, 4, "status signed by the removed key");
    // The refusal is logged, with the fingerprint (not the key).
    let log = node.files.extended_log();
    assert!(
        log.contains(&fp),
        "refusal of {fp} not in extended.log:\n{log}"
    );
}

#[test]
fn changed_certificate_is_refused_until_trusted() {
    let env = Env::new();
    let mut node = Node::start(&env, "n-cert", &next_ip(), "");
    let first = node.status(&env);
    let old_fp = first["fingerprint"].as_str().unwrap().to_string();
    assert!(old_fp.starts_with("sha256:"), "{old_fp}");
    let pins = std::fs::read_to_string(env.known_nodes()).unwrap();
    assert!(
        pins.lines()
            .any(|l| l.starts_with(&node.portal) && l.contains(&old_fp)),
        "no pin for {} in known_nodes:\n{pins}",
        node.portal
    );

    // --fingerprint that does not match: refused, naming both.
    let out = node.ssq(&env, &["--fingerprint", "sha256:00", "status"]);
    assert_exit(&out, 4, "status with a wrong --fingerprint");
    assert!(stderr(&out).contains(&old_fp), "{}", stderr(&out));
    // --strict-pins with a pin is fine; --fingerprint that matches is fine.
    assert_ok(
        &node.ssq(&env, &["--strict-pins", "status"]),
        "strict with a pin",
    );
    assert_ok(
        &node.ssq(&env, &["--fingerprint", &old_fp, "status"]),
        "matching --fingerprint",
    );

    // Reinstall the node's certificate: stop, remove data_dir/tls, start again. It comes
    // back on a new port, so move the old pin to its new address: the same node, a new
    // certificate.
    assert_eq!(node.stop().code(), Some(0));
    std::fs::remove_dir_all(node.files.data.join("tls")).unwrap();
    let node = Node::run(node.files.clone());
    std::fs::write(
        env.known_nodes(),
        format!("{} {old_fp} n-cert\n", node.portal),
    )
    .unwrap();
    let out = node.ssq(&env, &["status"]);
    assert_exit(&out, 4, "status with a changed certificate");
    let err = stderr(&out);
    assert!(
        err.contains(&old_fp),
        "the refusal does not name the pinned fingerprint:\n{err}"
    );
    assert!(
        err.contains("ssq node trust"),
        "the refusal does not name the command:\n{err}"
    );
    assert!(stdout(&out).is_empty());

    // Strict pins and no pin at all: refused too.
    let strict_home = env.path().join("strict-home");
    std::fs::create_dir_all(&strict_home).unwrap();
    let out = env
        .ssq_cmd(&[
            "--strict-pins",
            "--operator-key",
            env.operator.to_str().unwrap(),
        ])
        .args(["status", "--node", &node.portal])
        .env("SSQ_HOME", &strict_home)
        .output()
        .unwrap();
    assert_exit(&out, 4, "--strict-pins with no pin");

    // Trust it: both fingerprints shown, the next call succeeds.
    let t = env.ssq_json(&["node", "trust", &node.portal]);
    assert_eq!(t["old"], old_fp.as_str(), "{t}");
    let new_fp = t["new"].as_str().unwrap().to_string();
    assert_ne!(new_fp, old_fp);
    assert!(
        err.contains(&new_fp),
        "the refusal did not name the new fingerprint {new_fp}:\n{err}"
    );
    let s = node.status(&env);
    assert_eq!(s["fingerprint"], new_fp.as_str());
    let pins = std::fs::read_to_string(env.known_nodes()).unwrap();
    assert!(
        pins.contains(&new_fp) && !pins.contains(&old_fp),
        "known_nodes:\n{pins}"
    );
}

#[test]
fn hand_made_requests_are_checked() {
    let env = Env::new();
    let node = Node::start(&env, "n-raw", &next_ip(), "");
    let boot = node.status(&env)["boot_id"].as_str().unwrap().to_string();
    let op = SigningKey::load(&env.operator).unwrap();
    let ak = ActivationKey::load(&env.key).unwrap();
    let node_key = SigningKey::create(&env.path().join("other-node.key"), None).unwrap();
    let mut conn = RawConn::connect(&node.portal, None);

    // Unsigned: refused.
    let a = conn.send("GET", "/api/v1/status", None, b"");
    assert_eq!(a.status, 401, "{:?}", a.json);
    assert_eq!(a.json["error"], "unsigned");
    assert_eq!(
        a.boot_id.as_deref(),
        Some(boot.as_str()),
        "no boot id header"
    );

    // A captured operator request, sent twice: the replay is refused.
    let auth = operator_auth(&conn, &op, &Sig::now("GET", "/api/v1/status"));
    let a = conn.send("GET", "/api/v1/status", Some(&auth), b"");
    assert_eq!(a.status, 200, "{:?}", a.json);
    assert_eq!(a.json["node"], "n-raw");
    let a = conn.send("GET", "/api/v1/status", Some(&auth), b"");
    assert_eq!(a.status, 401, "replay: {:?}", a.json);
    assert_eq!(a.json["error"], "replayed_nonce", "{:?}", a.json);
    // ... also on a new connection.
    let mut conn2 = RawConn::connect(&node.portal, None);
    let a = conn2.send("GET", "/api/v1/status", Some(&auth), b"");
    assert_eq!(a.status, 401, "replay on a new connection: {:?}", a.json);
    assert_eq!(a.json["error"], "replayed_nonce");

    // Signed for one path, sent to another: bad signature.
    let auth = operator_auth(&conn, &op, &Sig::now("GET", "/api/v1/status"));
    let a = conn.send("GET", "/api/v1/logs?n=5", Some(&auth), b"");
    assert_eq!(a.status, 401, "{:?}", a.json);
    assert_eq!(a.json["error"], "bad_signature", "{:?}", a.json);

    // A stale timestamp.
    let mut sig = Sig::now("GET", "/api/v1/status");
    sig.ts -= 3600;
    let auth = operator_auth(&conn, &op, &sig);
    let a = conn.send("GET", "/api/v1/status", Some(&auth), b"");
    assert_eq!(a.status, 401, "{:?}", a.json);
    assert_eq!(a.json["error"], "stale_timestamp", "{:?}", a.json);
    // ... and one from the future.
    let mut sig = Sig::now("GET", "/api/v1/status");
    sig.ts += 3600;
    let auth = operator_auth(&conn, &op, &sig);
    let a = conn.send("GET", "/api/v1/status", Some(&auth), b"");
    assert_eq!(a.json["error"], "stale_timestamp", "{:?}", a.json);

    // A non-GET signed for another boot: 409 with the current boot id; nothing done.
    let mut sig = Sig::now("POST", "/api/v1/restart");
    sig.boot_id = "0123456789abcdef";
    let auth = operator_auth(&conn, &op, &sig);
    let a = conn.send("POST", "/api/v1/restart", Some(&auth), b"");
    assert_eq!(a.status, 409, "{:?}", a.json);
    assert_eq!(a.json["error"], "stale_boot_id", "{:?}", a.json);
    assert_eq!(a.boot_id.as_deref(), Some(boot.as_str()));
    assert!(
        a.json["message"].as_str().unwrap_or("").contains(&boot),
        "{:?}",
        a.json
    );
    assert_eq!(
        node.status(&env)["boot_id"],
        boot.as_str(),
        "the node restarted anyway"
    );
    // Signed for the current boot a non-GET is accepted (a harmless one: auth disable,
    // which it already is).
    let body = br#"{"enabled":false,"force":false}"#;
    let mut sig = Sig::now("PUT", "/api/v1/access/authentication");
    sig.boot_id = &boot;
    sig.body = body;
    let auth = operator_auth(&conn, &op, &sig);
    let a = conn.send("PUT", "/api/v1/access/authentication", Some(&auth), body);
    assert_eq!(a.status, 200, "non-GET for the current boot: {:?}", a.json);
    // A body other than the one signed: bad signature.
    let mut sig = Sig::now("PUT", "/api/v1/access/authentication");
    sig.boot_id = &boot;
    sig.body = body;
    let auth = operator_auth(&conn, &op, &sig);
    let a = conn.send(
        "PUT",
        "/api/v1/access/authentication",
        Some(&auth),
        br#"{"enabled":true,"force":true}"#,
    );
    assert_eq!(a.status, 401, "{:?}", a.json);
    assert_eq!(a.json["error"], "bad_signature", "{:?}", a.json);
    assert_eq!(
        node.status(&env)["authentication"],
        false,
        "the altered body was applied"
    );

    // The sync credential (activation key + a node key): refused on a config endpoint,
    // accepted on a sync one.
    let auth = sync_auth(&conn, &ak, &node_key, &Sig::now("GET", "/api/v1/status"));
    let a = conn.send("GET", "/api/v1/status", Some(&auth), b"");
    assert_eq!(a.status, 403, "sync credential on status: {:?}", a.json);
    assert_eq!(
        a.json["error"], "sync_credential_on_config_endpoint",
        "{:?}",
        a.json
    );
    let auth = sync_auth(&conn, &ak, &node_key, &Sig::now("GET", "/api/v1/sync/ping"));
    let a = conn.send("GET", "/api/v1/sync/ping", Some(&auth), b"");
    assert_eq!(a.status, 200, "sync credential on sync/ping: {:?}", a.json);
    assert_eq!(a.json["node"], "n-raw");
    // The operator key is not a sync credential.
    let auth = operator_auth(&conn, &op, &Sig::now("GET", "/api/v1/sync/ping"));
    let a = conn.send("GET", "/api/v1/sync/ping", Some(&auth), b"");
    assert_eq!(
        a.status, 403,
        "operator credential on sync/ping: {:?}",
        a.json
    );

    // Another cluster's activation key: 401 activation key mismatch, logged.
    let other_key_file = env.path().join("other-activation.key");
    let other = ActivationKey::create(&other_key_file).unwrap();
    let auth = sync_auth(
        &conn,
        &other,
        &node_key,
        &Sig::now("GET", "/api/v1/sync/ping"),
    );
    let a = conn.send("GET", "/api/v1/sync/ping", Some(&auth), b"");
    assert_eq!(a.status, 401, "{:?}", a.json);
    assert_eq!(a.json["error"], "activation_key_mismatch", "{:?}", a.json);
    let msg = a.json["message"].as_str().unwrap_or("");
    assert!(msg.starts_with("activation key mismatch"), "{msg}");
    assert!(
        msg.contains(other.key_id()) && msg.contains(ak.key_id()),
        "{msg}"
    );

    // A MAC forged under the right key id.
    let auth = sync_auth(&conn, &ak, &node_key, &Sig::now("GET", "/api/v1/sync/ping"));
    let forged = {
        let h = ssq::sign::AuthHeader::parse(&auth).unwrap();
        let wrong_mac = other.mac(b"something else");
        ssq::sign::AuthHeader {
            mac: Some(wrong_mac),
            ..h
        }
        .to_value()
    };
    let a = conn.send("GET", "/api/v1/sync/ping", Some(&forged), b"");
    assert_eq!(a.status, 401, "{:?}", a.json);
    assert_eq!(a.json["error"], "bad_mac", "{:?}", a.json);

    // Each refusal is in extended.log, and no secret ever is.
    let log = node.files.extended_log();
    for what in [
        "activation key mismatch",
        "replayed nonce",
        "stale timestamp",
        "stale boot id",
        "bad signature",
    ] {
        assert!(
            log.lines().any(|l| l.contains(what)),
            "`{what}` refusal not in extended.log:\n{log}"
        );
    }
    let secret_of = |file: &std::path::Path| {
        std::fs::read_to_string(file)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .expect("key material")
            .to_string()
    };
    for (what, secret) in [
        ("the activation key", secret_of(&env.key)),
        ("the other activation key", secret_of(&other_key_file)),
        ("the operator private key", secret_of(&env.operator)),
        ("the node key", secret_of(&node.files.data.join("node.key"))),
    ] {
        assert!(secret.len() >= 32, "{what}: {secret}");
        assert!(!log.contains(&secret), "{what} is in extended.log");
        // Not even a good part of it.
        assert!(
            !log.contains(&secret[..24]),
            "part of {what} is in extended.log"
        );
    }
    // Nor in anything `ssq logs` shows.
    let out = node.ssq(&env, &["logs", "-n", "1000"]);
    assert_ok(&out, "ssq logs");
    assert!(!stdout(&out).contains(&secret_of(&env.key)));
    assert!(
        stdout(&out).contains("activation key mismatch"),
        "{}",
        stdout(&out)
    );
}
