//! A slave's side of policy sync: enforce the last good policy from disk at start, then
//! long-poll the master's watch (bound to this node's own address), verify, apply and
//! ACK each revision, and back off with jitter (250 ms → 10 s) while the master is away.
//!
//! Pins, in data_dir: `master_known_nodes` (the master's certificate, pinned on first
//! contact by the portal client) and `master.json` (its node key and store id). A changed
//! one stops sync with an error in extended.log and in status until an operator runs
//! `ssq slave set-master` (which clears them through `/api/v1/sync/reset`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use ssq::api::SyncStatus;
use ssq::client::{ClientError, ClientOptions, Conn, NodeSigner, Portal};
use ssq::keys::{PublicKey, SigningKey};
use ssq::nodeconf::{write_atomic, Actor};
use ssq::policy;
use ssq::policystore;
use ssq::syncapi::{Ack, AckAnswer, PolicyApplied, PolicyApply, PolicyDoc, WatchAnswer};

use crate::active::{self, ActivePolicy};
use crate::apierror::ApiError;
use crate::node::Node;
use crate::sync_api::short;

/// How long the master may hold a watch.
const WATCH_SECS: u64 = 30;
/// Backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What a slave pins of its master besides the certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct MasterPin {
    /// The master's node key (base64).
    key: String,
    /// The master's store id.
    store_id: String,
}

fn pin_path(node: &Node) -> PathBuf {
    node.files.startup.data_dir.join("master.json")
}

fn known_nodes_path(node: &Node) -> PathBuf {
    node.files.startup.data_dir.join("master_known_nodes")
}

fn policy_dir(node: &Node) -> PathBuf {
    node.files.startup.data_dir.join("policy")
}

fn local_path(node: &Node) -> PathBuf {
    policy_dir(node).join("local.yaml")
}

fn local_text(node: &Node) -> Option<String> {
    std::fs::read_to_string(local_path(node)).ok()
}

/// Clear the master pins (certificate, node key, store id).
///
/// # Errors
/// When a pin file exists but cannot be removed.
pub fn reset_pins(node: &Node) -> Result<bool, ApiError> {
    let mut existed = false;
    for p in [pin_path(node), known_nodes_path(node)] {
        match std::fs::remove_file(&p) {
            Ok(()) => existed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ApiError::new(
                    500,
                    "io_error",
                    format!("{}: {e}", p.display()),
                ))
            }
        }
    }
    Ok(existed)
}

/// At start: enforce the last good policy from disk (a slave), or the store's latest
/// revision (a standalone node).
pub fn load_at_start(node: &Node) {
    let name = &node.files.startup.node;
    if let Some(m) = &node.master {
        if node.files.startup.role == ssq::startup::Role::Standalone {
            if let Some(doc) = m.latest_doc() {
                match active::build(&doc, None, &[], name) {
                    Ok(a) => node.active.set(a),
                    Err(e) => node.files.log.warn(
                        "config",
                        &format!("policy revision {} not enforced: {e}", doc.info.revision),
                    ),
                }
            }
        }
        return;
    }
    match policystore::load_last_good(&policy_dir(node)) {
        Ok(Some(lg)) => {
            match active::build(
                &lg.doc,
                lg.local_text.as_deref(),
                &node.files.startup.sync_never,
                name,
            ) {
                Ok(a) => {
                    node.files.log.info(
                        "sync",
                        &format!(
                            "enforcing the last good policy from disk: revision {} (sha256 {})",
                            a.doc.info.revision,
                            short(&a.doc.info.sha256)
                        ),
                    );
                    node.active.set(a);
                }
                Err(e) => node.files.log.warn(
                    "sync",
                    &format!("the last good policy on disk cannot be enforced: {e}"),
                ),
            }
        }
        Ok(None) => node.files.log.info(
            "sync",
            "no policy synced yet: refusing proxy traffic until the master sends one",
        ),
        Err(e) => node.files.log.warn(
            "sync",
            &format!("the last good policy on disk is unusable ({e}): refusing proxy traffic until the master sends one"),
        ),
    }
}

/// `ssq policy apply FILE --node SLAVE`: set this slave's `sync.never` sections.
///
/// # Errors
/// 400 for a document with other sections, or one that does not validate.
pub fn apply_local(
    node: &Node,
    req: &PolicyApply,
    actor: &Actor,
) -> Result<PolicyApplied, ApiError> {
    let never = &node.files.startup.sync_never;
    if node.master.is_some() {
        return Err(ApiError::bad(
            "not_a_slave",
            "--node applies a slave's sync.never sections; this node is not a slave",
        ));
    }
    let parsed = policy::parse(&req.text)
        .map_err(|e| ApiError::bad("invalid_policy", format!("policy: {e}")))?;
    let outside = active::sections_outside(&parsed, never);
    if !outside.is_empty() {
        return Err(ApiError::bad(
            "not_local",
            format!(
                "section(s) {} of this document are not in {}'s sync.never ({}): they come from the master",
                outside.join(", "),
                node.files.startup.node,
                if never.is_empty() { "empty".to_string() } else { never.join(", ") }
            ),
        ));
    }
    let v = policy::validate(&parsed, &[])
        .map_err(|e| ApiError::bad("invalid_policy", format!("policy refused:\n{e}")))?;
    let sections: Vec<String> = policy::section_hashes(&parsed).into_keys().collect();
    if req.dry_run {
        return Ok(PolicyApplied {
            revision: 0,
            sha256: policy::canonical_sha256(&parsed),
            changed_sections: sections,
            changed: true,
            dry_run: true,
            warnings: v.warnings().to_vec(),
        });
    }
    write_atomic(&local_path(node), req.text.as_bytes(), 0o644)?;
    let mut out = PolicyApplied {
        revision: 0,
        sha256: policy::canonical_sha256(&parsed),
        changed_sections: sections.clone(),
        changed: true,
        dry_run: false,
        warnings: v.warnings().to_vec(),
    };
    if let Some(cur) = node.active.get() {
        let a = active::build(&cur.doc, Some(&req.text), never, &node.files.startup.node)
            .map_err(|e| ApiError::bad("invalid_policy", e))?;
        policystore::save_last_good(&policy_dir(node), &a.doc, Some(&req.text))
            .map_err(|e| ApiError::new(500, "io_error", e.to_string()))?;
        out.revision = a.doc.info.revision;
        out.sha256 = a.effective_sha256.clone();
        node.active.set(a);
    }
    node.files.log.info(
        "config",
        &format!(
            "local policy sections {} set by {}{}",
            sections.join(", "),
            actor.who,
            actor.from.map(|a| format!(" from {a}")).unwrap_or_default()
        ),
    );
    Ok(out)
}

fn set_status(node: &Node, f: impl FnOnce(&mut SyncStatus)) {
    if let Ok(mut s) = node.sync.lock() {
        f(&mut s);
    }
}

fn jittered(d: Duration) -> Duration {
    let r = ssq::keys::random_bytes::<2>()
        .map(|b| u64::from(u16::from_le_bytes(b)))
        .unwrap_or(0);
    let ms = d.as_millis() as u64;
    // Between half and the whole of d.
    Duration::from_millis(ms / 2 + r % (ms / 2 + 1))
}

/// How this slave talks to its master (sync and report shipping alike): bound to its
/// own address, the master's certificate pinned in data_dir, signed with the activation
/// key and this node's key. None (logged under `category`) when the node key is unusable.
pub fn master_client(node: &Node, category: &str, timeout: Duration) -> Option<ClientOptions> {
    let key = match SigningKey::load(&node.files.startup.data_dir.join("node.key")) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            node.files
                .log
                .warn(category, &format!("cannot load this node's key: {e}"));
            return None;
        }
    };
    Some(ClientOptions {
        bind: node.files.startup.outgoing_bind(),
        ca: None,
        fingerprint: None,
        strict_pins: false,
        known_nodes: known_nodes_path(node),
        operator_key: None,
        timeout,
        sender: node.files.startup.node.clone(),
        trust_on_connect: false,
        node_signer: Some(NodeSigner {
            activation: node.activation.clone(),
            key,
        }),
    })
}

/// The sync loop; returns when the node stops.
pub async fn run(node: Arc<Node>) {
    let Some(master) = node.files.startup.master.clone() else {
        return;
    };
    let master = master.to_string();
    let mut stopping = node.stopping.subscribe();
    let Some(opts) = master_client(&node, "sync", Duration::from_secs(WATCH_SECS + 15)) else {
        return;
    };
    node.files
        .log
        .info("sync", &format!("synchronizing with {master}"));
    set_status(&node, |s| {
        s.master = master.clone();
        s.state = "connecting".into();
    });
    let mut backoff = BACKOFF_MIN;
    let mut conn: Option<Conn> = None;
    let mut last_error = String::new();
    loop {
        if *stopping.borrow() {
            return;
        }
        let result = tokio::select! {
            r = once(&node, &master, &opts, &mut conn) => r,
            _ = stopping.changed() => return,
        };
        match result {
            Ok(()) => {
                backoff = BACKOFF_MIN;
                last_error.clear();
                continue;
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    node.files.log.warn("sync", &msg);
                    last_error = msg.clone();
                }
                set_status(&node, |s| {
                    s.state = "error".into();
                    s.error = Some(msg);
                });
                if !matches!(e, SyncError::Api(_)) {
                    conn = None;
                }
                let pause = jittered(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopping.changed() => return,
                }
            }
        }
    }
}

/// Why one round failed.
#[derive(Debug)]
enum SyncError {
    /// Transport: reconnect.
    Net(ClientError),
    /// The master refused (activation key, node key, access list).
    Api(ClientError),
    /// A pin no longer matches: stays until `ssq slave set-master`.
    Pin(String),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Net(e) | SyncError::Api(e) => write!(f, "{e}"),
            SyncError::Pin(m) => write!(f, "{m}"),
        }
    }
}

fn classify(e: ClientError) -> SyncError {
    match e {
        ClientError::Api { .. } => SyncError::Api(e),
        ClientError::PinMismatch { .. } => SyncError::Pin(format!(
            "{e} — sync stopped; if the master was rebuilt on purpose, run ssq slave set-master for this slave"
        )),
        other => SyncError::Net(other),
    }
}

/// One watch round: connect if needed, wait for the master, apply what it sends.
async fn once(
    node: &Node,
    master: &str,
    opts: &ClientOptions,
    conn: &mut Option<Conn>,
) -> Result<(), SyncError> {
    // The first watch on a new connection is answered at once (wait=0): it confirms
    // the master, its pins and this slave's registration without a long wait.
    let mut wait = WATCH_SECS;
    if conn.is_none() {
        let p = Portal::connect(master, opts).await.map_err(classify)?;
        *conn = Some(Conn::Portal(Box::new(p)));
        wait = 0;
    }
    let Some(c) = conn.as_mut() else {
        return Ok(());
    };
    let (revision, sha) = node
        .active
        .get()
        .map(|a| (a.doc.info.revision, a.doc.info.sha256.clone()))
        .unwrap_or((0, String::new()));
    let path = format!(
        "/api/v1/sync/watch?node={}&revision={revision}&sha256={sha}&wait={wait}",
        node.files.startup.node
    );
    let answer: WatchAnswer = c.call("GET", &path, None::<&()>).await.map_err(classify)?;
    check_master_pin(node, &answer)?;
    set_status(node, |s| {
        s.state = "connected".into();
        s.error = None;
        s.last_contact = Some(humantime::format_rfc3339_seconds(SystemTime::now()).to_string());
        s.store_id = Some(answer.store_id.clone());
    });
    if let Some(doc) = answer.policy {
        let ack = match apply_revision(node, &doc, &answer.master_key) {
            Ok(a) => Ack {
                revision: doc.info.revision,
                sha256: doc.info.sha256.clone(),
                result: "applied".into(),
                error: None,
                effective_sha256: Some(a),
                ..ack_base(node)
            },
            Err(reason) => {
                node.files.log.warn(
                    "sync",
                    &format!("rejected revision {}: {reason}", doc.info.revision),
                );
                Ack {
                    revision: doc.info.revision,
                    sha256: doc.info.sha256.clone(),
                    result: "rejected".into(),
                    error: Some(reason),
                    ..ack_base(node)
                }
            }
        };
        let _: AckAnswer = c
            .call("POST", "/api/v1/sync/ack", Some(&ack))
            .await
            .map_err(classify)?;
    }
    for task in &answer.tasks {
        let verdict = check_task(node, task, &answer.master_key);
        let ack = Ack {
            task: Some(task.id.clone()),
            result: if verdict.is_ok() {
                "applied"
            } else {
                "rejected"
            }
            .into(),
            error: verdict.as_ref().err().cloned(),
            ..ack_base(node)
        };
        let _: AckAnswer = c
            .call("POST", "/api/v1/sync/ack", Some(&ack))
            .await
            .map_err(classify)?;
        match verdict {
            Ok(false) => {}
            Ok(true) => {
                node.files.log.info(
                    "restart",
                    &format!("restart task {} from the master: restarting", task.id),
                );
                let _ = node.command.send(crate::node::Command::Restart);
            }
            Err(e) => node
                .files
                .log
                .warn("sync", &format!("refused task {}: {e}", task.id)),
        }
    }
    Ok(())
}

/// A task runs only when the master signed it for this node, it has not expired, and
/// it has not run before (its id is recorded first, in data_dir/tasks_done).
/// Ok(true): run it now; Ok(false): it ran before (a resend: report it done again).
fn check_task(node: &Node, task: &ssq::syncapi::Task, master_key: &str) -> Result<bool, String> {
    let key = PublicKey::from_base64(master_key).map_err(|e| e.to_string())?;
    let msg = ssq::syncapi::task_message(&task.node, &task.id, task.expires);
    if !key.verify(msg.as_bytes(), &task.signature) {
        return Err("the task's signature does not verify with the master's node key".into());
    }
    if task.node != node.files.startup.node {
        return Err(format!("the task is for {}, not for this node", task.node));
    }
    if task.expires < ssq::sign::unix_now() {
        return Err("the task has expired".into());
    }
    if task.kind != "restart" {
        return Err(format!("unknown task kind {:?}", task.kind));
    }
    let done_path = node.files.startup.data_dir.join("tasks_done");
    let done = std::fs::read_to_string(&done_path).unwrap_or_default();
    if done.lines().any(|l| l.trim() == task.id) {
        return Ok(false);
    }
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&done_path)
        .and_then(|mut f| {
            f.write_all(format!("{}\n", task.id).as_bytes())?;
            f.sync_all()
        })
        .map(|()| true)
        .map_err(|e| format!("cannot record the task: {e}"))
}

fn ack_base(node: &Node) -> Ack {
    Ack {
        portal: Some(node.portal_addr.to_string()),
        proxy: node.proxy_addr.map(|a| a.to_string()),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Ack::default()
    }
}

/// Pin the master's node key and store id on first contact; refuse a change.
fn check_master_pin(node: &Node, answer: &WatchAnswer) -> Result<(), SyncError> {
    let path = pin_path(node);
    let seen = MasterPin {
        key: answer.master_key.clone(),
        store_id: answer.store_id.clone(),
    };
    match std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<MasterPin>(&t).ok())
    {
        Some(p) if p == seen => Ok(()),
        Some(p) if p.key != seen.key => Err(SyncError::Pin(
            "the master's node key changed — sync stopped; if the master was rebuilt on purpose, run ssq slave set-master for this slave".into(),
        )),
        Some(p) => Err(SyncError::Pin(format!(
            "the master's policy store changed (store_id {} → {}): a rebuilt master? sync stopped until an operator runs ssq slave set-master for this slave",
            short(&p.store_id),
            short(&seen.store_id)
        ))),
        None => {
            let text = serde_json::to_vec_pretty(&seen)
                .map_err(|e| SyncError::Pin(e.to_string()))?;
            write_atomic(&path, &text, 0o600).map_err(|e| SyncError::Pin(e.to_string()))?;
            Ok(())
        }
    }
}

/// Verify, compile, swap in, persist and log one revision; returns the effective sha256.
fn apply_revision(node: &Node, doc: &PolicyDoc, master_key: &str) -> Result<String, String> {
    let key = PublicKey::from_base64(master_key).map_err(|e| e.to_string())?;
    if !policystore::verify(&doc.info, &key) {
        return Err("the revision's signature does not verify with the master's node key".into());
    }
    let current = node.active.get();
    if let Some(cur) = &current {
        if doc.info.revision < cur.doc.info.revision && doc.info.store_id == cur.doc.info.store_id {
            return Err(format!(
                "revision {} is older than the applied revision {}: refusing to go back in time (a rollback is a new revision)",
                doc.info.revision, cur.doc.info.revision
            ));
        }
    }
    let local = local_text(node);
    let a: ActivePolicy = active::build(
        doc,
        local.as_deref(),
        &node.files.startup.sync_never,
        &node.files.startup.node,
    )?;
    policystore::save_last_good(&policy_dir(node), doc, local.as_deref())
        .map_err(|e| format!("cannot persist the policy: {e}"))?;
    let old = current
        .map(|c| c.doc.info.sections.clone())
        .unwrap_or_default();
    let changed = crate::master::changed_sections(&old, &doc.info.sections);
    let effective = a.effective_sha256.clone();
    node.active.set(a);
    for section in changed {
        let mark = if node.files.startup.sync_never.contains(&section) {
            " [kept local: sync.never]"
        } else {
            ""
        };
        node.files.log.info(
            "sync",
            &format!(
                "synchronized section: {section} (revision {}, sha256 {}){mark}",
                doc.info.revision,
                short(&doc.info.sha256)
            ),
        );
    }
    Ok(effective)
}
