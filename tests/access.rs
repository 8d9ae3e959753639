//! Access restriction: the allow list seen from bound source addresses (`ssq --bind`),
//! the lock-out guard, and `ssq --local` (admin socket, then the files with ssqd
//! stopped) as the way back in.

mod util;

use serde_json::Value;
use util::*;

/// The entries of an allow list as (address, access) pairs.
fn entries(list: &Value) -> Vec<(String, Vec<String>)> {
    list["allow"]
        .as_array()
        .unwrap_or_else(|| panic!("no allow array in {list}"))
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["access"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

#[test]
fn allow_list_admits_refuses_and_local_always_works() {
    let env = Env::new();
    let mut node = Node::start(&env, "master-1", &next_ip(), "role: master\n");
    assert_eq!(node.proxy, None, "a master has no proxy listener");
    let portal = node.portal.clone();
    let from3 = |args: &[&str]| {
        let mut all = vec!["--bind", "127.0.0.3"];
        all.extend_from_slice(args);
        env.ssq(&all)
    };

    // Off by default: any address may call (signatures still required).
    assert_ok(
        &from3(&["status", "--node", &portal]),
        "status from 127.0.0.3, auth off",
    );
    let list = env.ssq_json(&["master", "allow", "list", "--master", &portal]);
    assert_eq!(list["authentication"], "off", "{list}");

    // Enabling it with an empty list would shut this caller (127.0.0.1) out: refused
    // without --force, accepted with it.
    let out = env.ssq(&["master", "auth", "enable", "--master", &portal]);
    assert_exit(&out, 2, "auth enable that shuts the caller out");
    assert!(
        !node.files.access_file().exists(),
        "a refused change wrote access.yaml"
    );
    let out = env.ssq(&["master", "auth", "enable", "--master", &portal, "--force"]);
    assert_ok(&out, "auth enable --force");

    // Now 127.0.0.3 is refused, by name.
    let out = from3(&["status", "--node", &portal]);
    assert_exit(&out, 4, "status from 127.0.0.3, not in the list");
    assert!(
        stderr(&out).contains("127.0.0.3"),
        "the refusal does not name the address:\n{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("master-1"),
        "the refusal does not name the node:\n{}",
        stderr(&out)
    );
    // So is the operator's own default address, after the forced enable.
    assert_exit(
        &env.ssq(&["status", "--node", &portal]),
        4,
        "status from 127.0.0.1",
    );
    // The denial is logged.
    let log = node.files.extended_log();
    assert!(
        log.lines()
            .any(|l| l.contains("access") && l.contains("127.0.0.3")),
        "denial of 127.0.0.3 not in extended.log:\n{log}"
    );

    // The admin socket is never restricted.
    let s = node.files.local_json(&env, &["status"]);
    assert_eq!(s["node"], "master-1");
    assert_eq!(s["authentication"], true);

    // Allow 127.0.0.3 for config: it passes.
    let ch = node.files.local_json(
        &env,
        &["master", "allow", "add", "127.0.0.3", "--access", "config"],
    );
    assert_eq!(ch["outcome"], "added", "{ch}");
    assert_ok(
        &from3(&["status", "--node", &portal]),
        "status from 127.0.0.3, allowed",
    );
    // The same entry again is a no-op that says so.
    let ch = node.files.local_json(
        &env,
        &["master", "allow", "add", "127.0.0.3", "--access", "config"],
    );
    assert_eq!(ch["outcome"], "already_present", "{ch}");
    // Another address is still refused.
    let out = env.ssq(&["--bind", "127.0.0.4", "status", "--node", &portal]);
    assert_exit(&out, 4, "status from 127.0.0.4");
    assert!(stderr(&out).contains("127.0.0.4"), "{}", stderr(&out));

    // An entry that grants only sync does not admit a config call.
    node.files.local_json(
        &env,
        &["master", "allow", "add", "127.0.0.4", "--access", "sync"],
    );
    assert_exit(
        &env.ssq(&["--bind", "127.0.0.4", "status", "--node", &portal]),
        4,
        "status from 127.0.0.4 with sync only",
    );

    // Remove 127.0.0.3: refused again.
    let ch = node
        .files
        .local_json(&env, &["master", "allow", "remove", "127.0.0.3"]);
    assert_eq!(ch["outcome"], "removed", "{ch}");
    let out = from3(&["status", "--node", &portal]);
    assert_exit(&out, 4, "status from 127.0.0.3 after remove");
    assert!(stderr(&out).contains("127.0.0.3"), "{}", stderr(&out));

    // auth enable from an address the list would shut out: exit 2 without --force, and
    // access.yaml stays as it is.
    node.files.local_json(&env, &["master", "auth", "disable"]);
    assert_ok(
        &from3(&["status", "--node", &portal]),
        "status from 127.0.0.3, auth off again",
    );
    let before = std::fs::read(node.files.access_file()).unwrap();
    let out = from3(&["master", "auth", "enable", "--master", &portal]);
    assert_exit(&out, 2, "auth enable from 127.0.0.3 that would shut it out");
    assert!(
        stderr(&out).contains("127.0.0.3") && stderr(&out).contains("--force"),
        "the lock-out refusal should name the address and --force:\n{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(node.files.access_file()).unwrap(),
        before,
        "access.yaml changed"
    );
    assert_ok(
        &from3(&["status", "--node", &portal]),
        "127.0.0.3 still gets in",
    );
    // Removing the caller's own entry over the portal is guarded too.
    node.files.local_json(
        &env,
        &["master", "allow", "add", "127.0.0.3", "--access", "config"],
    );
    node.files.local_json(&env, &["master", "auth", "enable"]);
    let before = std::fs::read(node.files.access_file()).unwrap();
    let out = from3(&[
        "master",
        "allow",
        "remove",
        "127.0.0.3",
        "--master",
        &portal,
    ]);
    assert_exit(&out, 2, "removing one's own entry");
    assert_eq!(std::fs::read(node.files.access_file()).unwrap(), before);
    assert_ok(
        &from3(&["status", "--node", &portal]),
        "127.0.0.3 still gets in",
    );

    // Stop ssqd: clean exit, its files gone.
    let status = node.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exit status: {status:?}");
    assert!(
        !node.files.data.join("ssqd.addr").exists(),
        "ssqd.addr left behind"
    );
    assert!(
        !node.files.data.join("admin.sock").exists(),
        "admin.sock left behind"
    );

    // With ssqd stopped, --local still edits the access list on the files.
    let ch = node.files.local_json(
        &env,
        &["master", "allow", "add", "127.0.0.4", "--access", "config"],
    );
    assert!(
        ch["outcome"] == "updated" || ch["outcome"] == "added",
        "{ch}"
    );
    let list = node.files.local_json(&env, &["master", "allow", "list"]);
    assert_eq!(list["authentication"], "on", "{list}");
    let e = entries(&list);
    assert!(
        e.contains(&("127.0.0.4".to_string(), vec!["config".to_string()])),
        "127.0.0.4 config not in {e:?}"
    );
    assert!(e.iter().any(|(a, _)| a == "127.0.0.3"), "{e:?}");
    let text = std::fs::read_to_string(node.files.access_file()).unwrap();
    assert!(text.contains("127.0.0.4"), "access.yaml:\n{text}");
    // What needs the daemon says it is not running (exit 3), naming the fix.
    let out = node.files.local(&env, &["status"]);
    assert_exit(&out, 3, "--local status with ssqd stopped");
    assert!(stderr(&out).contains("ssqd --config"), "{}", stderr(&out));
    // The change is logged under config.
    let log = node.files.extended_log();
    assert!(
        log.lines()
            .any(|l| l.contains("config") && l.contains("access list")),
        "no config event for the access list:\n{log}"
    );

    // Started again, the edit made offline is in force.
    let node2 = Node::run(node.files.clone());
    let out = env.ssq(&["--bind", "127.0.0.4", "status", "--node", &node2.portal]);
    assert_ok(&out, "127.0.0.4 after the offline edit");
}

/// Parallel edits lose nothing: through the daemon (admin socket), and on the files
/// directly with ssqd stopped (one lock covers both).
#[test]
fn concurrent_allow_adds_all_land() {
    let env = Env::new();
    let mut node = Node::start(&env, "n-concurrent", &next_ip(), "");
    let add_all = |files: &NodeDir, base: &str| {
        std::thread::scope(|s| {
            let handles: Vec<_> = (1..=12)
                .map(|i| {
                    let env = &env;
                    let addr = format!("{base}.{i}");
                    s.spawn(move || {
                        let out = files.local(env, &["master", "allow", "add", &addr]);
                        assert_ok(&out, &format!("allow add {addr}"));
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("thread");
            }
        })
    };
    add_all(&node.files, "10.1.0");
    node.stop();
    add_all(&node.files, "10.2.0");
    let list = node.files.local_json(&env, &["master", "allow", "list"]);
    let got = entries(&list);
    assert_eq!(got.len(), 24, "lost updates: {got:?}");
    for base in ["10.1.0", "10.2.0"] {
        for i in 1..=12 {
            let a = format!("{base}.{i}");
            assert!(got.iter().any(|(x, _)| *x == a), "{a} missing: {got:?}");
        }
    }
}
