//! The policy publisher of a master (and of a standalone node, which applies its own
//! policy): the revision store, and on a master the slaves it knows — their pinned node
//! keys (data_dir/slaves.json), their sync state, the bounded list of refused attempts
//! — and the watch that pushes a new revision to every waiting slave at once.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ssq::keys::PublicKey;
use ssq::nodeconf::{write_atomic, Actor};
use ssq::policy;
use ssq::policystore::PolicyStore;
use ssq::syncapi::{
    task_message, Ack, PolicyApplied, PolicyApply, PolicyDoc, RefusedAttempt, RevisionInfo,
    SlaveInfo, Task, TaskView,
};
use tokio::sync::watch;

use crate::apierror::ApiError;

/// A slave is OFFLINE when it has not been heard from for this long.
const OFFLINE_AFTER: Duration = Duration::from_secs(45);
/// How many refused source addresses are remembered.
const REFUSED_CAP: usize = 64;

/// What the master knows of one slave.
#[derive(Debug, Clone)]
pub struct SlaveEntry {
    /// Its pinned node key.
    pub key: PublicKey,
    /// Applied revision and sha256 (the master's).
    pub revision: u64,
    /// Applied sha256.
    pub sha256: String,
    /// Its effective sha256.
    pub effective_sha256: String,
    /// The sha256 it rejected last (never sent to it again).
    pub rejected_sha: Option<String>,
    /// Why.
    pub error: Option<String>,
    /// Last contact.
    pub last_seen: Option<SystemTime>,
    /// Source address of its requests.
    pub address: String,
    /// Its portal and proxy addresses, as reported.
    pub portal: Option<String>,
    /// Its proxy address.
    pub proxy: Option<String>,
    /// Its version.
    pub version: String,
    /// Watches in flight (a waiting slave is online).
    pub watching: usize,
}

impl SlaveEntry {
    fn new(key: PublicKey) -> Self {
        SlaveEntry {
            key,
            revision: 0,
            sha256: String::new(),
            effective_sha256: String::new(),
            rejected_sha: None,
            error: None,
            last_seen: None,
            address: String::new(),
            portal: None,
            proxy: None,
            version: String::new(),
            watching: 0,
        }
    }

    /// SYNCED, PENDING, REJECTED or OFFLINE against the current sha256.
    pub fn state(&self, current: Option<&str>) -> &'static str {
        let fresh = self.watching > 0
            || self
                .last_seen
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|d| d < OFFLINE_AFTER);
        if !fresh {
            "OFFLINE"
        } else if current.is_some() && self.rejected_sha.as_deref() == current {
            "REJECTED"
        } else if current.is_none_or(|c| c == self.sha256) {
            "SYNCED"
        } else {
            "PENDING"
        }
    }
}

/// The publisher.
pub struct Master {
    /// The revision store.
    pub store: Mutex<PolicyStore>,
    /// Known slaves by name.
    slaves: Mutex<BTreeMap<String, SlaveEntry>>,
    /// Refused sync attempts, newest last.
    refused: Mutex<VecDeque<RefusedAttempt>>,
    /// The latest revision number; every change wakes the watches.
    pub revision: watch::Sender<u64>,
    /// Bumped on every ACK or slave change; wakes `policy wait`.
    pub acks: watch::Sender<u64>,
    /// data_dir/slaves.json: the pinned node keys.
    pins_path: PathBuf,
    /// Tasks for slaves, oldest first (bounded).
    tasks: Mutex<VecDeque<TaskView>>,
    /// Bumped when a task is queued; wakes the watches.
    pub task_added: watch::Sender<u64>,
}

/// How long a task may wait for its slave.
const TASK_TTL_SECS: i64 = 120;
/// How many tasks are remembered.
const TASK_CAP: usize = 256;

fn now_rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Master {
    /// Open the store and the pins.
    ///
    /// # Errors
    /// When the store or the pins file cannot be read.
    pub fn open(data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let store = PolicyStore::open(&data_dir.join("policy"))?;
        let latest = store.latest().map(|i| i.revision).unwrap_or(0);
        let pins_path = data_dir.join("slaves.json");
        let mut slaves = BTreeMap::new();
        match std::fs::read_to_string(&pins_path) {
            Ok(text) => {
                let pins: BTreeMap<String, String> = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", pins_path.display()))?;
                for (name, key) in pins {
                    let key = PublicKey::from_base64(&key)
                        .map_err(|e| anyhow::anyhow!("{}: {name}: {e}", pins_path.display()))?;
                    slaves.insert(name, SlaveEntry::new(key));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", pins_path.display())),
        }
        Ok(Master {
            store: Mutex::new(store),
            slaves: Mutex::new(slaves),
            refused: Mutex::new(VecDeque::new()),
            revision: watch::channel(latest).0,
            acks: watch::channel(0).0,
            pins_path,
            tasks: Mutex::new(VecDeque::new()),
            task_added: watch::channel(0).0,
        })
    }

    fn save_pins(&self, slaves: &BTreeMap<String, SlaveEntry>) -> Result<(), ApiError> {
        let pins: BTreeMap<&String, String> =
            slaves.iter().map(|(n, e)| (n, e.key.to_base64())).collect();
        let text = serde_json::to_vec_pretty(&pins)
            .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
        write_atomic(&self.pins_path, &text, 0o600).map_err(ApiError::from)
    }

    /// The latest revision's info.
    pub fn latest(&self) -> Option<RevisionInfo> {
        self.store.lock().ok().and_then(|s| s.latest().cloned())
    }

    /// The latest revision with its text.
    pub fn latest_doc(&self) -> Option<PolicyDoc> {
        let store = self.store.lock().ok()?;
        let rev = store.latest()?.revision;
        store.get(rev).ok()
    }

    /// Names of the slaves known.
    pub fn slave_names(&self) -> Vec<String> {
        self.slaves
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Validate and store a new revision (or say the content is unchanged).
    ///
    /// # Errors
    /// 400 with line/column or section/rule/field; 409 `revision_moved` for a lost
    /// `if_revision` race.
    pub fn apply(
        &self,
        req: &PolicyApply,
        own_node: &str,
        key: &ssq::keys::SigningKey,
        actor: &Actor,
        rollback_of: Option<u64>,
    ) -> Result<PolicyApplied, ApiError> {
        let parsed = policy::parse(&req.text)
            .map_err(|e| ApiError::bad("invalid_policy", format!("policy: {e}")))?;
        let mut known = self.slave_names();
        known.push(own_node.to_string());
        let validated = policy::validate(&parsed, &known)
            .map_err(|e| ApiError::bad("invalid_policy", format!("policy refused:\n{e}")))?;
        let warnings = validated.warnings().to_vec();
        let mut store = self
            .store
            .lock()
            .map_err(|_| ApiError::new(500, "internal", "store lock poisoned"))?;
        let current = store.latest().map(|i| i.revision).unwrap_or(0);
        if let Some(want) = req.if_revision {
            if want != current {
                return Err(ApiError::new(
                    409,
                    "revision_moved",
                    format!("the master is at revision {current}, not {want} (--if-revision): someone applied a change in between; review it with ssq policy history"),
                ));
            }
        }
        let sha = policy::canonical_sha256(&parsed);
        if req.dry_run {
            let latest_sections = store
                .latest()
                .map(|i| i.sections.clone())
                .unwrap_or_default();
            let sections = policy::section_hashes(&parsed);
            return Ok(PolicyApplied {
                revision: current,
                changed: store.latest().is_none_or(|i| i.sha256 != sha),
                changed_sections: changed_sections(&latest_sections, &sections),
                sha256: sha,
                dry_run: true,
                warnings,
            });
        }
        let source = actor
            .from
            .map(|a| a.to_string())
            .unwrap_or_else(|| "local".into());
        let committed = store
            .commit(&req.text, &parsed, &actor.who, &source, key, rollback_of)
            .map_err(|e| ApiError::new(500, "store_error", e.to_string()))?;
        let info = committed.info;
        if committed.changed {
            self.revision.send_replace(info.revision);
        }
        Ok(PolicyApplied {
            revision: info.revision,
            sha256: info.sha256,
            changed_sections: committed.changed_sections,
            changed: committed.changed,
            dry_run: false,
            warnings,
        })
    }

    /// Check a slave's node key against its pin (pinning it on first contact).
    ///
    /// # Errors
    /// 401 when the name is pinned to another key.
    pub fn pin(&self, name: &str, key: PublicKey, from: IpAddr) -> Result<(), ApiError> {
        let mut slaves = self
            .slaves
            .lock()
            .map_err(|_| ApiError::new(500, "internal", "registry lock poisoned"))?;
        match slaves.get(name) {
            Some(e) if e.key == key => Ok(()),
            Some(_) => {
                drop(slaves);
                let msg = format!("node key changed for {name}; if it was reinstalled, run ssq master forget {name}");
                self.refuse(from, name, &msg);
                Err(ApiError::new(401, "node_key_changed", msg))
            }
            None => {
                slaves.insert(name.to_string(), SlaveEntry::new(key));
                self.save_pins(&slaves)?;
                self.acks.send_modify(|n| *n += 1);
                Ok(())
            }
        }
    }

    /// Record a refused attempt (bounded, by source address).
    pub fn refuse(&self, from: IpAddr, node: &str, reason: &str) {
        let Ok(mut list) = self.refused.lock() else {
            return;
        };
        let address = from.to_string();
        let now = now_rfc3339(SystemTime::now());
        if let Some(pos) = list.iter().position(|r| r.address == address) {
            if let Some(mut r) = list.remove(pos) {
                r.count += 1;
                r.last = now;
                r.reason = reason.to_string();
                r.node = node.to_string();
                list.push_back(r);
            }
        } else {
            list.push_back(RefusedAttempt {
                address,
                node: node.to_string(),
                reason: reason.to_string(),
                last: now,
                count: 1,
            });
            while list.len() > REFUSED_CAP {
                list.pop_front();
            }
        }
    }

    /// Mark a slave seen (and, with `delta`, a watch starting or ending).
    pub fn seen(&self, name: &str, from: IpAddr, delta: isize) {
        if let Ok(mut slaves) = self.slaves.lock() {
            if let Some(e) = slaves.get_mut(name) {
                e.last_seen = Some(SystemTime::now());
                e.address = from.to_string();
                e.watching = e.watching.saturating_add_signed(delta);
            }
        }
    }

    /// What a slave says it enforces, on every watch (so a lost ACK heals itself).
    pub fn reported(&self, name: &str, revision: u64, sha256: &str) {
        if sha256.is_empty() {
            return;
        }
        if let Ok(mut slaves) = self.slaves.lock() {
            if let Some(e) = slaves.get_mut(name) {
                if e.sha256 != sha256 {
                    e.revision = revision;
                    e.sha256 = sha256.to_string();
                    drop(slaves);
                    self.acks.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// The sha256 a slave rejected last, and what it has applied.
    pub fn slave_view(&self, name: &str) -> (Option<String>, String) {
        self.slaves
            .lock()
            .ok()
            .and_then(|s| {
                s.get(name)
                    .map(|e| (e.rejected_sha.clone(), e.sha256.clone()))
            })
            .unwrap_or((None, String::new()))
    }

    /// Record an ACK or NACK.
    pub fn ack(&self, name: &str, from: IpAddr, ack: &Ack) {
        if let Ok(mut slaves) = self.slaves.lock() {
            if let Some(e) = slaves.get_mut(name) {
                e.last_seen = Some(SystemTime::now());
                e.address = from.to_string();
                e.portal = ack.portal.clone().or(e.portal.take());
                e.proxy = ack.proxy.clone().or(e.proxy.take());
                if !ack.version.is_empty() {
                    e.version = ack.version.clone();
                }
                if ack.result == "applied" {
                    e.revision = ack.revision;
                    e.sha256 = ack.sha256.clone();
                    e.effective_sha256 = ack.effective_sha256.clone().unwrap_or_default();
                    e.error = None;
                } else if ack.result == "rejected" {
                    e.rejected_sha = Some(ack.sha256.clone());
                    e.error = ack.error.clone();
                }
            }
        }
        self.acks.send_modify(|n| *n += 1);
    }

    /// Forget a slave (decommissioned, or reinstalled with a new key).
    ///
    /// # Errors
    /// When the pins file cannot be written.
    pub fn forget(&self, name: &str) -> Result<bool, ApiError> {
        let mut slaves = self
            .slaves
            .lock()
            .map_err(|_| ApiError::new(500, "internal", "registry lock poisoned"))?;
        let existed = slaves.remove(name).is_some();
        if existed {
            self.save_pins(&slaves)?;
        }
        drop(slaves);
        self.acks.send_modify(|n| *n += 1);
        Ok(existed)
    }

    /// Every slave as `ssq status` shows it.
    pub fn slave_infos(&self) -> Vec<SlaveInfo> {
        let current = self.latest().map(|i| i.sha256);
        let Ok(slaves) = self.slaves.lock() else {
            return Vec::new();
        };
        slaves
            .iter()
            .map(|(name, e)| SlaveInfo {
                name: name.clone(),
                state: e.state(current.as_deref()).into(),
                revision: e.revision,
                sha256: e.sha256.clone(),
                effective_sha256: e.effective_sha256.clone(),
                error: e.error.clone(),
                last_seen: e.last_seen.map(now_rfc3339).unwrap_or_default(),
                last_seen_secs: e
                    .last_seen
                    .and_then(|t| t.elapsed().ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                address: e.address.clone(),
                portal: e.portal.clone(),
                proxy: e.proxy.clone(),
                node_key: e.key.fingerprint(),
                version: e.version.clone(),
                report: None,
            })
            .collect()
    }

    /// Refused attempts, newest last.
    pub fn refused(&self) -> Vec<RefusedAttempt> {
        self.refused
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl Master {
    /// Queue a signed task for a known slave.
    ///
    /// # Errors
    /// 404 for a slave the master does not know; 400 for an unknown kind.
    pub fn queue_task(
        &self,
        node: &str,
        kind: &str,
        key: &ssq::keys::SigningKey,
    ) -> Result<TaskView, ApiError> {
        if kind != "restart" {
            return Err(ApiError::bad(
                "unknown_task",
                format!("unknown task {kind:?}: the tasks are: restart"),
            ));
        }
        if !self.slave_names().iter().any(|n| n == node) {
            return Err(ApiError::new(
                404,
                "unknown_slave",
                format!("this master knows no slave {node} (ssq status lists the slaves it knows)"),
            ));
        }
        let id = ssq::keys::random_bytes::<8>()
            .map(|b| ssq::keys::hex(&b))
            .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
        let expires = ssq::sign::unix_now() + TASK_TTL_SECS;
        let signature = key.sign(task_message(node, &id, expires).as_bytes());
        let view = TaskView {
            task: Task {
                id,
                node: node.to_string(),
                kind: kind.to_string(),
                expires,
                signature,
            },
            state: "queued".into(),
            error: None,
        };
        let mut tasks = self
            .tasks
            .lock()
            .map_err(|_| ApiError::new(500, "internal", "task lock poisoned"))?;
        tasks.push_back(view.clone());
        while tasks.len() > TASK_CAP {
            tasks.pop_front();
        }
        drop(tasks);
        self.task_added.send_modify(|n| *n += 1);
        Ok(view)
    }

    /// Unexpired tasks for a slave that it has not reported on yet (a task is sent again
    /// until the slave answers, so one lost on a dead connection is not lost for good;
    /// the slave runs each id once).
    pub fn take_tasks(&self, node: &str) -> Vec<Task> {
        let now = ssq::sign::unix_now();
        let Ok(mut tasks) = self.tasks.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for t in tasks
            .iter_mut()
            .filter(|t| t.task.node == node && matches!(t.state.as_str(), "queued" | "delivered"))
        {
            if t.task.expires < now {
                t.state = "expired".into();
            } else {
                t.state = "delivered".into();
                out.push(t.task.clone());
            }
        }
        out
    }

    /// A slave's report on a task.
    pub fn task_result(&self, node: &str, id: &str, ok: bool, error: Option<String>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            if let Some(t) = tasks
                .iter_mut()
                .find(|t| t.task.id == id && t.task.node == node)
            {
                t.state = if ok { "done" } else { "failed" }.into();
                t.error = error;
            }
        }
        self.acks.send_modify(|n| *n += 1);
    }

    /// A task by id.
    pub fn task(&self, id: &str) -> Option<TaskView> {
        let now = ssq::sign::unix_now();
        self.tasks
            .lock()
            .ok()?
            .iter()
            .find(|t| t.task.id == id)
            .map(|t| {
                let mut t = t.clone();
                if t.state == "queued" && t.task.expires < now {
                    t.state = "expired".into();
                }
                t
            })
    }
}

/// Sections whose hash differs between two revisions (added and removed ones too).
pub fn changed_sections(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut names: Vec<String> = old.keys().chain(new.keys()).cloned().collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| old.get(n) != new.get(n))
        .collect()
}
