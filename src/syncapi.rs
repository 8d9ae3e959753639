//! The portal API of policy and its sync: what `ssq policy ...` sends to a master (or a
//! standalone node), and what a master and its slaves say to each other on the watch.
//! Same compatibility rule as `api`: fields are only ever added, each with a default.
//!
//! Endpoints (config: operator signature; sync: activation-key HMAC + node signature):
//! - `POST /api/v1/policy` (config) `PolicyApply` → `PolicyApplied`
//! - `GET /api/v1/policy[?revision=N]` (config) → `PolicyDoc`
//! - `GET /api/v1/policy/history` (config) → `Vec<RevisionInfo>`
//! - `POST /api/v1/policy/rollback` (config) `PolicyRollback` → `PolicyApplied`
//! - `POST /api/v1/policy/test` (config) `PolicyTest` → `PolicyTestResult`
//! - `GET /api/v1/policy/wait?revision=N&timeout=SECS` (config) → `WaitResult`
//! - `DELETE /api/v1/slaves/NAME` (config) → `Forgotten`
//! - `POST /api/v1/sync/reset` (config, on a slave) → `Forgotten` (clears master pins)
//! - `GET /api/v1/sync/watch?node=&revision=&sha256=&wait=SECS` (sync) → `WatchAnswer`
//! - `POST /api/v1/sync/ack` (sync) `Ack` → `AckAnswer`
//! - `POST /api/v1/tasks` (config, master) `TaskRequest` → `TaskView`
//! - `GET /api/v1/tasks/ID` (config, master) → `TaskView`

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /api/v1/policy` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyApply {
    /// The policy document (YAML).
    pub text: String,
    /// Validate only; store nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Refuse unless the current revision is this one (compare-and-swap).
    #[serde(default)]
    pub if_revision: Option<u64>,
    /// On a slave: the sections of its `sync.never` to set locally.
    #[serde(default)]
    pub local: bool,
}

/// What an apply or rollback did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyApplied {
    /// The revision now current (the new one, or the unchanged current one).
    pub revision: u64,
    /// Its canonical sha256.
    pub sha256: String,
    /// Sections whose content changed against the previous revision.
    pub changed_sections: Vec<String>,
    /// False when the content equals the current revision (no new revision made).
    pub changed: bool,
    /// True for `--dry-run`: nothing stored.
    #[serde(default)]
    pub dry_run: bool,
    /// Warnings from validation (e.g. a rule naming a node not met yet).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// One stored revision, as history shows it and as slaves receive it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RevisionInfo {
    /// The master's policy store id.
    pub store_id: String,
    /// Revision number (only ever grows).
    pub revision: u64,
    /// Canonical sha256 of the whole document.
    pub sha256: String,
    /// Canonical sha256 per section.
    pub sections: BTreeMap<String, String>,
    /// Master node-key signature over `(store_id, revision, sha256)`, base64url.
    pub signature: String,
    /// When it was stored (RFC 3339 UTC).
    pub time: String,
    /// Operator key id that stored it.
    #[serde(default)]
    pub operator: String,
    /// Source address of that request.
    #[serde(default)]
    pub source: String,
    /// Sections changed against the previous revision.
    #[serde(default)]
    pub changed_sections: Vec<String>,
    /// For a rollback: the revision whose content it republished.
    #[serde(default)]
    pub rollback_of: Option<u64>,
}

/// `GET /api/v1/policy`: a revision with its text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyDoc {
    /// The revision.
    pub info: RevisionInfo,
    /// The document as the operator wrote it.
    pub text: String,
}

/// `POST /api/v1/policy/rollback` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyRollback {
    /// The revision whose content to republish.
    pub revision: u64,
}

/// `POST /api/v1/policy/test` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyTest {
    /// The URL (or `host:port` for CONNECT).
    pub url: String,
    /// Client address (default 10.0.0.1).
    #[serde(default)]
    pub client: Option<String>,
    /// Method (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// Decide as this slave would (per-node rules).
    #[serde(default)]
    pub slave: Option<String>,
}

/// What the policy decides for a request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyTestResult {
    /// allow, deny, client_denied, port_denied.
    pub action: String,
    /// The rule that decided (none: no rule matched).
    #[serde(default)]
    pub rule: Option<String>,
    /// The rule's message.
    #[serde(default)]
    pub message: Option<String>,
    /// The revision decided with.
    pub revision: u64,
    /// The node decided for.
    pub node: String,
}

/// A slave as the master sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SlaveInfo {
    /// The slave's node name.
    pub name: String,
    /// SYNCED, PENDING, REJECTED, OFFLINE.
    pub state: String,
    /// Applied revision.
    pub revision: u64,
    /// Applied sha256 (the master's).
    pub sha256: String,
    /// The slave's effective sha256 (differs with `sync.never` sections).
    #[serde(default)]
    pub effective_sha256: String,
    /// Why the last revision was rejected.
    #[serde(default)]
    pub error: Option<String>,
    /// Last contact (RFC 3339 UTC).
    pub last_seen: String,
    /// Seconds since last contact.
    #[serde(default)]
    pub last_seen_secs: u64,
    /// Source address of its requests.
    pub address: String,
    /// Its portal address, as it reports it.
    #[serde(default)]
    pub portal: Option<String>,
    /// Its proxy address, as it reports it.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Its node key fingerprint (pinned).
    pub node_key: String,
    /// Its ssqd version.
    #[serde(default)]
    pub version: String,
    /// Its report shipping, as the master's store sees it.
    #[serde(default)]
    pub report: Option<SlaveReport>,
}

/// A slave's report shipping, as the master's store sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SlaveReport {
    /// Its current spool epoch.
    pub epoch: String,
    /// Highest sequence number held without a hole.
    pub acked: u64,
    /// Time of its newest record (Unix ms).
    pub last_time_ms: u64,
    /// Now minus that (ms).
    pub lag_ms: u64,
    /// Records lost (written down as gaps).
    pub gaps: u64,
    /// Two live spools under this name (two slaves with one name?).
    #[serde(default)]
    pub duplicate_name: bool,
    /// Its latest statistics record.
    #[serde(default)]
    pub stats: Option<crate::reportapi::Stats>,
}

/// A refused sync attempt (wrong activation key, changed node key, ...).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RefusedAttempt {
    /// Source address.
    pub address: String,
    /// The node name it claimed.
    pub node: String,
    /// Why it was refused.
    pub reason: String,
    /// Last time (RFC 3339 UTC).
    pub last: String,
    /// How many times.
    pub count: u64,
}

/// `GET /api/v1/policy/wait` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WaitResult {
    /// The revision waited for.
    pub revision: u64,
    /// Every known slave has applied it.
    pub done: bool,
    /// The slaves, with their state.
    pub slaves: Vec<SlaveInfo>,
}

/// A signed task for one slave.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Task {
    /// Random id.
    pub id: String,
    /// The target node.
    pub node: String,
    /// `restart`.
    pub kind: String,
    /// Unix seconds after which it must not run.
    pub expires: i64,
    /// Master node-key signature over `(node, id, expires)`.
    pub signature: String,
}

/// `POST /api/v1/tasks` body: queue a task for a slave.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TaskRequest {
    /// The slave's node name.
    pub node: String,
    /// `restart`.
    pub kind: String,
}

/// A task and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TaskView {
    /// The task.
    pub task: Task,
    /// queued, delivered, done, failed, expired.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// `GET /api/v1/sync/watch` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct WatchAnswer {
    /// The master's store id.
    pub store_id: String,
    /// The master's node key (base64), for the slave to pin.
    pub master_key: String,
    /// The current revision when the slave is behind (with its text).
    #[serde(default)]
    pub policy: Option<PolicyDoc>,
    /// Tasks for this slave.
    #[serde(default)]
    pub tasks: Vec<Task>,
}

/// `POST /api/v1/sync/ack` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Ack {
    /// The revision.
    pub revision: u64,
    /// Its sha256 (the master's).
    pub sha256: String,
    /// `applied` or `rejected`.
    pub result: String,
    /// Why it was rejected.
    #[serde(default)]
    pub error: Option<String>,
    /// The slave's effective sha256 (with its local sections).
    #[serde(default)]
    pub effective_sha256: Option<String>,
    /// The slave's portal address.
    #[serde(default)]
    pub portal: Option<String>,
    /// The slave's proxy address.
    #[serde(default)]
    pub proxy: Option<String>,
    /// The slave's version.
    #[serde(default)]
    pub version: String,
    /// A task's result: its id.
    #[serde(default)]
    pub task: Option<String>,
}

/// `POST /api/v1/sync/ack` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct AckAnswer {
    /// Recorded.
    pub ok: bool,
}

/// Answer to a forget or reset.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Forgotten {
    /// What was removed.
    pub name: String,
    /// Whether there was anything.
    pub existed: bool,
}

/// The string a master signs for a revision.
pub fn revision_message(store_id: &str, revision: u64, sha256: &str) -> String {
    format!("ssq policy v1\n{store_id}\n{revision}\n{sha256}")
}

/// The string a master signs for a task.
pub fn task_message(node: &str, id: &str, expires: i64) -> String {
    format!("ssq task v1\n{node}\n{id}\n{expires}")
}
