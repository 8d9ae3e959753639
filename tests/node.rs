//! A node's startup params and life: `ssq slave set-master` (backup first, a repeat is a
//! no-op), `ssq restart` in place (same PID and ports, new boot id, no gap for new
//! connections), and the signals.

mod util;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use util::*;

/// The folders under data_dir/backups, sorted by name (= by time).
fn backups(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(data.join("backups")) {
        Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// A backup folder's name is a UTC time (RFC 3339, `Z`), close to now.
fn assert_utc_stamp(dir: &Path) {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.ends_with('Z'),
        "backup folder {name} is not a UTC time"
    );
    let t = humantime::parse_rfc3339_weak(&name)
        .unwrap_or_else(|e| panic!("backup folder {name} is not an RFC 3339 time: {e}"));
    let off = SystemTime::now()
        .duration_since(t)
        .unwrap_or_else(|e| e.duration());
    assert!(
        off < Duration::from_secs(120),
        "backup folder {name} is {off:?} off now"
    );
}

fn master_of(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).unwrap();
    let s = ssq::startup::StartupFile::parse(&text, config)
        .and_then(|f| f.validate(&text, config))
        .unwrap_or_else(|e| panic!("startup.yaml no longer valid: {e}\n{text}"));
    s.master.map(|m| m.to_string())
}

#[test]
fn set_master_round_trip_then_restart_in_place() {
    let env = Env::new();
    let mut node = Node::start(&env, "slave-1", &next_ip(), "");
    let before = node.status(&env);
    assert_eq!(before["role"], "standalone");
    assert_eq!(before["master"], Value::Null);
    let old_text = std::fs::read_to_string(&node.files.config).unwrap();
    assert!(backups(&node.files.data).is_empty());

    // Set the master, no restart.
    let out = node.ssq(
        &env,
        &["slave", "set-master", "127.0.0.9:9999", "--no-restart"],
    );
    assert_ok(&out, "set-master");
    assert!(
        stdout(&out).contains("127.0.0.9:9999"),
        "set-master does not show the new master:\n{}",
        stdout(&out)
    );
    assert_eq!(
        master_of(&node.files.config).as_deref(),
        Some("127.0.0.9:9999")
    );
    let new_text = std::fs::read_to_string(&node.files.config).unwrap();
    let b = backups(&node.files.data);
    assert_eq!(b.len(), 1, "expected exactly one backup, found {b:?}");
    assert_utc_stamp(&b[0]);
    assert_eq!(
        std::fs::read_to_string(b[0].join("startup.yaml")).unwrap(),
        old_text,
        "the backup does not hold the old startup.yaml"
    );
    // Not restarted: the running node still has no master.
    let still = node.status(&env);
    assert_eq!(still["boot_id"], before["boot_id"]);
    assert_eq!(still["role"], "standalone");

    // The same value again: says so, touches nothing, makes no backup.
    let again = node.ssq_json(
        &env,
        &["slave", "set-master", "127.0.0.9:9999", "--no-restart"],
    );
    assert_eq!(again["changed"], false, "{again}");
    let out = node.ssq(
        &env,
        &["slave", "set-master", "127.0.0.9:9999", "--no-restart"],
    );
    assert_ok(&out, "set-master again");
    assert!(
        stdout(&out).contains("already"),
        "a repeated set-master does not say nothing changed:\n{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&node.files.config).unwrap(),
        new_text
    );
    assert_eq!(backups(&node.files.data).len(), 1, "a no-op made a backup");

    // Restart in place.
    let r = node.ssq_json(&env, &["restart", "--wait"]);
    assert_eq!(r["old_boot_id"], before["boot_id"], "{r}");
    assert_ne!(r["boot_id"], before["boot_id"], "no new boot id: {r}");
    assert_eq!(r["pid"], node.pid, "the pid changed: {r}");
    assert_eq!(r["same_pid"], true, "{r}");
    assert_eq!(r["portal"], node.portal.as_str(), "{r}");
    assert_eq!(r["proxy"].as_str(), node.proxy.as_deref(), "{r}");
    assert!(node.is_running(), "the process we started is gone");

    let after = node.status(&env);
    assert_eq!(after["boot_id"], r["boot_id"]);
    assert_eq!(after["pid"], node.pid);
    assert_eq!(after["portal"], node.portal.as_str());
    assert_eq!(after["proxy"].as_str(), node.proxy.as_deref());
    assert_eq!(after["role"], "slave");
    assert_eq!(after["master"], "127.0.0.9:9999");
    assert_eq!(
        after["fingerprint"], before["fingerprint"],
        "certificate changed on restart"
    );

    // The new image printed the same ready line again, and ssqd.addr holds it.
    let line = node
        .next_line(Duration::from_secs(10))
        .expect("no ready line from the restarted image");
    let ready: Value = serde_json::from_str(&line).expect("ready line JSON");
    assert_eq!(
        ready, node.ready,
        "the restarted image's ready line differs"
    );
    let addr_file = eventually(Duration::from_secs(5), "ssqd.addr after restart", || {
        std::fs::read_to_string(node.files.data.join("ssqd.addr")).ok()
    });
    assert_eq!(
        serde_json::from_str::<Value>(addr_file.trim()).unwrap(),
        node.ready
    );

    // The restart backed up the configuration first.
    let b = backups(&node.files.data);
    assert_eq!(b.len(), 2, "{b:?}");
    let rb = PathBuf::from(r["backup"].as_str().expect("backup path"));
    assert!(
        b.contains(&rb),
        "restart's backup {rb:?} not under data_dir/backups: {b:?}"
    );
    assert_utc_stamp(&rb);
    assert_eq!(
        std::fs::read_to_string(rb.join("startup.yaml")).unwrap(),
        new_text
    );
    assert!(
        rb.join("operators").is_file(),
        "restart backup lacks operators"
    );
    assert!(
        !rb.join("node.key").exists() && !rb.join("activation.key").exists(),
        "a backup holds a secret key"
    );

    let log = node.files.extended_log();
    assert!(
        log.contains("restart"),
        "no restart event in extended.log:\n{log}"
    );
    assert!(
        log.contains(&after["boot_id"].as_str().unwrap().to_string()),
        "{log}"
    );

    let status = node.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exit status");
}

#[test]
fn new_connections_are_answered_right_after_restart() {
    let env = Env::new();
    let node = Node::start(&env, "n-restart", &next_ip(), "");
    let before = node.status(&env);
    let r = node.ssq_json(&env, &["restart"]);
    assert_eq!(r["old_boot_id"], before["boot_id"]);
    assert_eq!(r["pid"], node.pid);
    // At once, and then until the new boot answers: every call must be answered, never
    // refused (the listening socket is handed over, not closed).
    let key = ssq::keys::SigningKey::load(&env.operator).unwrap();
    let mut answered_new = false;
    for i in 0..200 {
        let out = node.ssq(&env, &["-o", "json", "status"]);
        assert_ok(&out, &format!("status #{i} during the restart"));
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(s["pid"], node.pid);
        assert_eq!(s["portal"], node.portal.as_str());
        // A raw new connection too.
        let mut conn = RawConn::connect(&node.portal, None);
        let auth = operator_auth(&conn, &key, &Sig::now("GET", "/api/v1/status"));
        let a = conn.send("GET", "/api/v1/status", Some(&auth), b"");
        assert_eq!(a.status, 200, "raw status #{i}: {:?}", a.json);
        if s["boot_id"] != before["boot_id"] {
            answered_new = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(answered_new, "the node never came back with a new boot id");
}

#[test]
fn bad_master_address_is_refused_and_nothing_written() {
    let env = Env::new();
    let node = Node::start(&env, "n-badmaster", &next_ip(), "");
    let text = std::fs::read_to_string(&node.files.config).unwrap();
    let out = node.ssq(
        &env,
        &["slave", "set-master", "10.0.0.1:99999", "--no-restart"],
    );
    assert_exit(&out, 2, "set-master with a bad port");
    assert!(
        stderr(&out).contains("10.0.0.1:8888"),
        "no example of a good address:\n{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&node.files.config).unwrap(), text);
    assert!(backups(&node.files.data).is_empty());
}

#[test]
fn sigint_exits_at_once_and_cleans_up() {
    let env = Env::new();
    let mut node = Node::start(&env, "n-sigint", &next_ip(), "");
    let data = node.files.data.clone();
    assert!(data.join("admin.sock").exists());
    signal(node.pid, libc::SIGINT);
    eventually(Duration::from_secs(3), "ssqd exits on SIGINT", || {
        (!node.is_running()).then_some(())
    });
    assert!(
        !data.join("ssqd.addr").exists(),
        "ssqd.addr left behind after SIGINT"
    );
    assert!(
        !data.join("admin.sock").exists(),
        "admin.sock left behind after SIGINT"
    );
}

/// The ready line promises a running node: a SIGTERM right after it must still drain
/// and exit 0, removing ssqd.addr and admin.sock (repeated, as it is a race).
#[test]
fn sigterm_right_after_the_ready_line_exits_cleanly() {
    let env = Env::new();
    let files = NodeDir::create(&env, "n-sigterm", &next_ip(), "");
    for i in 0..10 {
        let mut node = Node::run(files.clone());
        let status = node.stop();
        assert_eq!(
            status.code(),
            Some(0),
            "round {i}: SIGTERM right after the ready line: {status:?}"
        );
        assert!(
            !files.data.join("ssqd.addr").exists(),
            "round {i}: ssqd.addr left behind"
        );
        assert!(
            !files.data.join("admin.sock").exists(),
            "round {i}: admin.sock left behind"
        );
    }
}

/// An upgrade replaces the binary under a running daemon; the restart then runs the new
/// file in place (same PID and ports) instead of failing on the deleted old one.
#[test]
fn restart_after_the_binary_was_replaced() {
    let env = Env::new();
    let files = NodeDir::create(&env, "n-upgrade", &next_ip(), "");
    let bin = env.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("ssqd");
    std::fs::copy(env!("CARGO_BIN_EXE_ssqd"), &exe).unwrap();
    // A process another test forks while the copy is open for writing holds that
    // descriptor until it execs: exec then fails with ETXTBSY for a moment. Retry.
    let mut tries = 0;
    let mut child = loop {
        match std::process::Command::new(&exe)
            .arg("--config")
            .arg(&files.config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => break c,
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("spawn {}: {e}", exe.display()),
        }
    };
    let addr = files.data.join("ssqd.addr");
    let ready: Value = eventually(Duration::from_secs(10), "ssqd.addr", || {
        std::fs::read_to_string(&addr)
            .ok()
            .and_then(|t| serde_json::from_str(t.trim()).ok())
    });
    let portal = ready["portal"].as_str().unwrap().to_string();
    // The upgrade: a new file moved over the old path.
    let staged = bin.join("ssqd.new");
    std::fs::copy(env!("CARGO_BIN_EXE_ssqd"), &staged).unwrap();
    std::fs::rename(&staged, &exe).unwrap();
    let out = env.ssq(&["-o", "json", "restart", "--wait", "--node", &portal]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    signal(child.id(), libc::SIGTERM);
    let status = wait_deadline(&mut child, Duration::from_secs(15));
    assert_ok(&out, "restart --wait after the binary was replaced");
    assert_eq!(r["pid"], child.id(), "{r}");
    assert_eq!(r["same_pid"], true, "{r}");
    assert_ne!(r["boot_id"], r["old_boot_id"], "{r}");
    assert_eq!(
        status.map(|s| s.code()),
        Some(Some(0)),
        "SIGTERM after the restart"
    );
}
