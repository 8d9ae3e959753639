//! ssqd's start: a bad startup.yaml is refused naming the file and the line, leftovers
//! of a killed daemon (admin.sock, ssqd.addr) do not stop it, a second daemon on the
//! same data_dir is refused; and bad `allow add` input writes nothing.

mod util;

use std::time::{Duration, Instant};

use serde_json::Value;
use util::*;

/// Start ssqd on `text` (as DIR/NAME/startup.yaml), expect a quick refusal naming the
/// file and `line`; return stderr.
fn refused(env: &Env, name: &str, text: &str, line: usize) -> String {
    let nd = NodeDir::with_text(env, name, text);
    let t0 = Instant::now();
    let (status, out, err) = ssqd_until_exit(&nd.config, Duration::from_secs(10));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "ssqd took {:?} to refuse",
        t0.elapsed()
    );
    assert!(
        !status.success(),
        "ssqd started with a bad startup.yaml ({name})"
    );
    assert!(out.is_empty(), "ssqd printed a ready line: {out:?}");
    let want = format!("{}:{line}", nd.config.display());
    assert!(err.contains(&want), "stderr does not name {want}:\n{err}");
    assert!(
        !nd.data.join("ssqd.addr").exists(),
        "ssqd.addr written by a failed start"
    );
    err
}

#[test]
fn bad_startup_yaml_is_refused_naming_file_and_line() {
    let env = Env::new();
    let ip = next_ip();
    // An unknown key on line 4.
    let text = startup_yaml("bad-key", &ip, "").replacen(
        "activation_key_file",
        "colour: blue\nactivation_key_file",
        1,
    );
    assert_eq!(text.lines().nth(3), Some("colour: blue"));
    let err = refused(&env, "bad-key", &text, 4);
    assert!(
        err.contains("colour"),
        "the unknown key is not named:\n{err}"
    );

    // A port out of range on line 2.
    let text = startup_yaml("bad-port", &ip, "").replace(
        &format!("\"{ip}:0\" }}\nproxy"),
        "\"127.0.0.1:99999\" }\nproxy",
    );
    assert!(text.lines().nth(1).unwrap().contains("99999"), "{text}");
    let err = refused(&env, "bad-port", &text, 2);
    assert!(err.contains("99999"), "the bad value is not named:\n{err}");
    assert!(err.contains("portal"), "the field is not named:\n{err}");

    // A missing activation key file, named on line 4.
    let text = startup_yaml("no-key", &ip, "").replace("../activation.key", "../missing.key");
    let err = refused(&env, "no-key", &text, 4);
    assert!(
        err.contains("missing.key"),
        "the key file is not named:\n{err}"
    );
    assert!(
        err.contains("ssq key new"),
        "no hint how to create one:\n{err}"
    );

    // A bad address in proxy.listen (a host name) on line 3.
    let text = startup_yaml("bad-addr", &ip, "").replace(
        &format!("proxy: {{ listen: \"{ip}:0\" }}"),
        "proxy: { listen: \"gateway:8080\" }",
    );
    let err = refused(&env, "bad-addr", &text, 3);
    assert!(err.contains("gateway:8080"), "{err}");

    // A YAML syntax error.
    let text = startup_yaml("bad-yaml", &ip, "").replacen("data_dir: data", "data_dir: [data", 1);
    refused(&env, "bad-yaml", &text, 5);
}

#[test]
fn leftovers_of_a_killed_daemon_do_not_stop_it() {
    let env = Env::new();
    let nd = NodeDir::create(&env, "n-stale", &next_ip(), "");
    std::fs::create_dir_all(&nd.data).unwrap();
    // A socket file nobody listens on, as a SIGKILLed ssqd leaves it.
    let sock = nd.data.join("admin.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    // And a stale ssqd.addr describing a dead process.
    std::fs::write(
        nd.data.join("ssqd.addr"),
        "{\"pid\":1,\"node\":\"n-stale\",\"portal\":\"127.0.0.1:1\",\"proxy\":null}\n",
    )
    .unwrap();
    let node = Node::run(nd); // checks that ssqd.addr now holds the new ready line
    assert_ne!(node.ready["pid"], 1);
    // The admin socket is the new one, and works.
    let s = node.files.local_json(&env, &["status"]);
    assert_eq!(s["boot_id"], node.status(&env)["boot_id"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.sock mode {mode:o}");
}

#[test]
fn leftovers_of_a_sigkilled_daemon_do_not_stop_the_next_one() {
    let env = Env::new();
    let mut node = Node::start(&env, "n-killed", &next_ip(), "");
    let files = node.files.clone();
    signal(node.pid, libc::SIGKILL);
    eventually(Duration::from_secs(5), "ssqd dies on SIGKILL", || {
        (!node.is_running()).then_some(())
    });
    assert!(
        files.data.join("admin.sock").exists(),
        "SIGKILL cannot clean up"
    );
    let node = Node::run(files);
    let s = node.files.local_json(&env, &["status"]);
    assert_eq!(s["pid"], node.pid);
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let env = Env::new();
    let node = Node::start(&env, "n-twice", &next_ip(), "");
    let (status, out, err) = ssqd_until_exit(&node.files.config, Duration::from_secs(10));
    assert!(!status.success(), "a second ssqd ran on the same data_dir");
    assert!(out.is_empty(), "{out:?}");
    assert!(
        err.contains("admin"),
        "the refusal does not say why:\n{err}"
    );
    // The first one is untouched: its admin socket and its address file.
    let s = node.files.local_json(&env, &["status"]);
    assert_eq!(s["pid"], node.pid);
    let addr = std::fs::read_to_string(node.files.data.join("ssqd.addr"))
        .expect("the running daemon's ssqd.addr was removed by the refused second start");
    assert_eq!(
        serde_json::from_str::<Value>(addr.trim()).unwrap(),
        node.ready
    );
}

#[test]
fn bad_allow_add_input_writes_nothing() {
    let env = Env::new();
    let nd = NodeDir::create(&env, "n-badinput", &next_ip(), "");
    let access = nd.access_file();
    for (args, hint) in [
        (vec!["master", "allow", "add", "10.0.0.300"], "10.0.0.5"),
        (vec!["master", "allow", "add", "10.0.0.0/33"], "/32"),
        (
            vec!["master", "allow", "add", "10.0.0.9-10.0.0.5"],
            "10.0.0.5-10.0.0.9",
        ),
        (
            vec!["master", "allow", "add", "10.0.0.5", "--access", "admin"],
            "sync",
        ),
        (vec!["master", "allow", "remove", "nonsense"], "10.0.0.5"),
    ] {
        let out = nd.local(&env, &args);
        assert_exit(&out, 2, &format!("{args:?}"));
        assert!(
            stderr(&out).contains(hint),
            "{args:?}: no example ({hint}) in:\n{}",
            stderr(&out)
        );
        assert!(!access.exists(), "{args:?} created access.yaml");
    }
    // With a list in place: a bad add leaves it byte for byte.
    assert_ok(
        &nd.local(&env, &["master", "allow", "add", "10.0.0.5"]),
        "good add",
    );
    let before = std::fs::read(&access).unwrap();
    let out = nd.local(&env, &["master", "allow", "add", "10.0.0.300"]);
    assert_exit(&out, 2, "bad add");
    assert_eq!(std::fs::read(&access).unwrap(), before);
    // And with ssqd running, through the portal: the same.
    let node = Node::run(nd);
    let out = node.ssq(&env, &["master", "allow", "add", "10.0.0.300"]);
    assert_exit(&out, 2, "bad add over the portal");
    assert!(stderr(&out).contains("10.0.0.5"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&access).unwrap(), before);
    // An entry that exists is a no-op that says so.
    let out = node.ssq(&env, &["master", "allow", "add", "10.0.0.5"]);
    assert_ok(&out, "repeat add");
    assert!(stdout(&out).contains("already"), "{}", stdout(&out));
    assert_eq!(std::fs::read(&access).unwrap(), before);
}
