//! The portal API's types, shared by `ssqd` (which serves them) and `ssq` (which calls
//! them), so the two cannot drift.
//!
//! Compatibility rule: fields are only ever added, never renamed or removed, and a new
//! field has a default (`#[serde(default)]`) so an older peer's payload still decodes.
//! Paths live under `/api/v1/`; a breaking change would be `/api/v2/`.

use serde::{Deserialize, Serialize};

use crate::access::{AccessList, AllowEntry};

/// Every error answer: `{"error": CODE, "message": TEXT}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub error: String,
    /// What happened and what to check next.
    pub message: String,
}

/// The response header carrying the node's current boot id.
pub const BOOT_ID_HEADER: &str = "ssq-boot-id";

/// A node's policy state as it reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyState {
    /// Applied revision (0: none).
    #[serde(default)]
    pub revision: u64,
    /// sha256 of the applied revision (empty: none).
    #[serde(default)]
    pub sha256: String,
    /// UNSYNCED, SYNCED, LOCAL, ...
    #[serde(default)]
    pub state: String,
}

/// `GET /api/v1/status`: the node itself at the top level.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Status {
    /// Node name.
    pub node: String,
    /// standalone, slave or master.
    pub role: String,
    /// ssqd version.
    pub version: String,
    /// Random id of this boot (changes on every start and restart).
    pub boot_id: String,
    /// RFC 3339 UTC time of this boot.
    pub started_at: String,
    /// The master's HOST:PORT on a slave.
    #[serde(default)]
    pub master: Option<String>,
    /// The portal's bound address.
    pub portal: String,
    /// The proxy's bound address (none on a master).
    #[serde(default)]
    pub proxy: Option<String>,
    /// The portal certificate's fingerprint.
    pub fingerprint: String,
    /// The activation key's id (no secret).
    pub key_id: String,
    /// The node key's fingerprint.
    pub node_key: String,
    /// The daemon's process id.
    #[serde(default)]
    pub pid: u32,
    /// Policy state.
    #[serde(default)]
    pub policy: PolicyState,
    /// Whether the portal's allow list is enforced.
    #[serde(default)]
    pub authentication: bool,
    /// On a master: the slaves it knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slaves: Option<Vec<crate::syncapi::SlaveInfo>>,
    /// On a master: refused sync attempts by source address (bounded list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<Vec<crate::syncapi::RefusedAttempt>>,
    /// On a slave: its sync with the master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// On a slave: its report spool and shipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<ReportStatus>,
    /// On a master: its policy store's id (a slave pins it; `ssq verify` compares it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_id: Option<String>,
    /// The node's clock when it answered (Unix ms; 0 from an older node), so a caller
    /// can measure clock skew.
    #[serde(default)]
    pub now_ms: u64,
}

/// A slave's report spool and shipping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ReportStatus {
    /// The spool's epoch.
    pub epoch: String,
    /// Records written to the spool since it was created.
    pub spooled: u64,
    /// Acknowledged by the master.
    pub acked: u64,
    /// Waiting to be acknowledged.
    pub pending: u64,
    /// Bytes the spool holds on disk.
    pub bytes_on_disk: u64,
    /// The shipper's last error.
    #[serde(default)]
    pub error: Option<String>,
}

/// A slave's view of its sync.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct SyncStatus {
    /// The master's HOST:PORT.
    pub master: String,
    /// connected, waiting, error, stopped.
    pub state: String,
    /// The last error, if the last attempt failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Last successful contact (RFC 3339 UTC), if any.
    #[serde(default)]
    pub last_contact: Option<String>,
    /// The master's store id as pinned.
    #[serde(default)]
    pub store_id: Option<String>,
}

/// `GET /api/v1/startup`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartupDoc {
    /// Where the file is on the node.
    pub path: String,
    /// The file's text, comments included.
    pub text: String,
}

/// `PUT /api/v1/startup` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartupPut {
    /// The new file's text.
    pub text: String,
    /// Skip the lock-out guard (a portal.listen change that would shut this caller out).
    #[serde(default)]
    pub force: bool,
}

/// `PUT /api/v1/startup` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartupPutResult {
    /// False when the new text equals the old (nothing written).
    pub changed: bool,
    /// Whether the running daemon must restart for the change to take effect.
    pub restart_needed: bool,
    /// Where the old file was saved.
    #[serde(default)]
    pub backup: Option<String>,
}

/// What a write to the access list did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessChange {
    /// added, updated, removed, unchanged, already_present, not_found, changed.
    pub outcome: String,
    /// Warnings for the operator (e.g. a slave losing sync access).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The list as it now is.
    pub access: AccessList,
}

/// `POST /api/v1/access/entries` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllowAdd {
    /// The entry.
    pub entry: AllowEntry,
    /// Skip the lock-out guard.
    #[serde(default)]
    pub force: bool,
}

/// `DELETE /api/v1/access/entries` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllowRemove {
    /// The entry's address as written.
    pub address: String,
    /// Skip the lock-out guard.
    #[serde(default)]
    pub force: bool,
}

/// `PUT /api/v1/access` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessPut {
    /// The whole new list.
    pub access: AccessList,
    /// Skip the lock-out guard.
    #[serde(default)]
    pub force: bool,
}

/// `PUT /api/v1/access/authentication` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthSet {
    /// Turn the allow list on or off.
    pub enabled: bool,
    /// Skip the lock-out guard.
    #[serde(default)]
    pub force: bool,
}

/// `POST /api/v1/restart` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RestartResult {
    /// The backup directory of the configuration.
    pub backup: String,
    /// The boot id that is ending.
    pub old_boot_id: String,
    /// The daemon's pid (the same after the restart).
    pub pid: u32,
}

/// `GET /api/v1/logs?n=N&grep=TEXT&category=CAT&after=CURSOR` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLines {
    /// The matching lines of extended.log, oldest first: the last `n`, or with `after`
    /// the first `n` written since that cursor (so a follower never skips any).
    pub lines: Vec<String>,
    /// Where the file ended when it was read: pass it back as `after` to get only the
    /// lines written since (`ssq logs --follow`). 0 from an older node.
    #[serde(default)]
    pub cursor: u64,
}

/// `POST /api/v1/diagnose/master` answer: a slave's own check of its master.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MasterCheck {
    /// The master as the slave's startup params name it (HOST:PORT).
    pub master: String,
    /// One step each, in order: dns, tcp, tls, sync (credential accepted).
    pub steps: Vec<CheckStep>,
}

/// One step of a check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CheckStep {
    /// The step's id.
    pub step: String,
    /// PASS, FAIL or SKIP.
    pub status: String,
    /// One line: what was found, or what failed.
    pub reason: String,
    /// How long it took.
    #[serde(default)]
    pub ms: u64,
}

/// One operator key line of data_dir/operators.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorEntry {
    /// `SHA256:...`.
    pub fingerprint: String,
    /// The comment after the key.
    pub comment: String,
}

/// `POST /api/v1/operators` body (admin socket only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorAdd {
    /// A `.pub` line.
    pub line: String,
}

/// Answer to operator add/remove.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OperatorChange {
    /// added, already_present, removed, not_found.
    pub outcome: String,
    /// The list as it now is.
    pub operators: Vec<OperatorEntry>,
}

/// `GET /api/v1/sync/ping` answer: proves a sync credential is accepted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncPong {
    /// The answering node.
    pub node: String,
    /// The caller, as authenticated.
    pub caller: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An older peer's status (without the fields added later) still decodes.
    #[test]
    fn old_status_payload_decodes() {
        let old = r#"{"node":"m","role":"master","version":"0.1.0","boot_id":"b",
            "started_at":"t","portal":"127.0.0.1:1","fingerprint":"f","key_id":"k",
            "node_key":"n"}"#;
        let s: Status = serde_json::from_str(old).unwrap();
        assert_eq!(s.node, "m");
        assert_eq!(s.policy, PolicyState::default());
        assert!(s.slaves.is_none());
    }
}
