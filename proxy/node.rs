//! The running node's shared state: who it is (startup params, keys, certificate), this
//! boot's id, the nonce window, and the channel that asks the main loop to restart.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ssq::api::{PolicyState, ReportStatus, Status, SyncStatus};
use ssq::keys::{ActivationKey, SigningKey};
use ssq::nodeconf::NodeFiles;
use ssq::sign::NonceCache;
use ssq::startup::Role;
use ssq::syncapi::{SlaveInfo, SlaveReport};
use tokio::sync::watch;

use crate::active::Slot;
use crate::master::Master;

/// What the main loop is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Keep serving.
    Run,
    /// Drain, then re-execute in place.
    Restart,
}

/// One node, shared by every connection.
pub struct Node {
    /// Startup params and the event log.
    pub files: NodeFiles,
    /// This boot's random id.
    pub boot_id: String,
    /// When this boot started (RFC 3339 UTC).
    pub started_at: String,
    /// The portal certificate's fingerprint.
    pub fingerprint: String,
    /// sha256 hex of the portal certificate (part of every signed string).
    pub cert_sha256: String,
    /// The node's own key pair.
    pub node_key: SigningKey,
    /// The cluster's activation key.
    pub activation: ActivationKey,
    /// Nonces seen within the freshness window.
    pub nonces: Mutex<NonceCache>,
    /// The bound portal address.
    pub portal_addr: SocketAddr,
    /// The bound proxy address (None on a master).
    pub proxy_addr: Option<SocketAddr>,
    /// Asks the main loop to restart.
    pub command: watch::Sender<Command>,
    /// True once the node is stopping or restarting: long-polls answer at once.
    pub stopping: watch::Sender<bool>,
    /// The policy store and slaves (a master), or the own store (a standalone node).
    pub master: Option<Arc<Master>>,
    /// The policy enforced now (None: never synced).
    pub active: Slot,
    /// A slave's sync with its master.
    pub sync: Mutex<SyncStatus>,
    /// A master's report store.
    pub reports: Option<crate::reports::Reports>,
    /// A slave's report spool.
    pub spool: Option<Arc<Mutex<ssq::spool::Spool>>>,
    /// A slave's shipper.
    pub shipper: Arc<Mutex<crate::shipper::ShipperState>>,
    /// A master's report page logins.
    pub sessions: crate::reports_page::Sessions,
}

impl Node {
    /// The role as the API spells it.
    pub fn role(&self) -> &'static str {
        match self.files.startup.role {
            Role::Standalone => "standalone",
            Role::Slave => "slave",
            Role::Master => "master",
        }
    }

    /// The node's status document.
    pub fn status(&self) -> Status {
        let s = &self.files.startup;
        Status {
            node: s.node.clone(),
            role: self.role().into(),
            version: env!("CARGO_PKG_VERSION").into(),
            boot_id: self.boot_id.clone(),
            started_at: self.started_at.clone(),
            master: s.master.as_ref().map(|m| m.to_string()),
            portal: self.portal_addr.to_string(),
            proxy: self.proxy_addr.map(|a| a.to_string()),
            fingerprint: self.fingerprint.clone(),
            key_id: self.activation.key_id().to_string(),
            node_key: self.node_key.public().fingerprint(),
            pid: std::process::id(),
            policy: self.policy_state(),
            authentication: self
                .files
                .access()
                .map(|a| a.authentication)
                .unwrap_or(false),
            slaves: match (&self.master, s.role) {
                (Some(m), Role::Master) => Some(self.with_reports(m.slave_infos())),
                _ => None,
            },
            refused: match (&self.master, s.role) {
                (Some(m), Role::Master) => Some(m.refused()),
                _ => None,
            },
            sync: match s.role {
                Role::Slave => self.sync.lock().ok().map(|g| g.clone()),
                _ => None,
            },
            report: self.report_status(),
            store_id: match (&self.master, s.role) {
                (Some(m), Role::Master) => m.store.lock().ok().map(|st| st.store_id().to_string()),
                _ => None,
            },
            now_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

impl Node {
    /// A slave's spool and shipper, for status.
    fn report_status(&self) -> Option<ReportStatus> {
        let spool = self.spool.as_ref()?;
        let st = spool.lock().ok()?.stats();
        let epoch = spool.lock().ok()?.epoch().to_string();
        Some(ReportStatus {
            epoch,
            spooled: st.spooled,
            acked: st.acked,
            pending: st.pending_records,
            bytes_on_disk: st.bytes_on_disk,
            error: self.shipper.lock().ok().and_then(|s| s.error.clone()),
        })
    }

    /// Slaves with what the report store knows of them.
    fn with_reports(&self, mut slaves: Vec<SlaveInfo>) -> Vec<SlaveInfo> {
        let Some(reports) = &self.reports else {
            return slaves;
        };
        let progress = reports.cached_progress();
        let stats = reports.cached_stats();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let duplicates = ssq::reportstore::duplicate_names(&progress, now);
        for s in &mut slaves {
            let mine: Vec<_> = progress.iter().filter(|p| p.node == s.name).collect();
            if let Some(p) = mine.iter().max_by_key(|p| p.last_ingest_ms) {
                s.report = Some(SlaveReport {
                    epoch: p.epoch.clone(),
                    acked: p.acked,
                    last_time_ms: p.last_time_ms,
                    lag_ms: now.saturating_sub(p.last_time_ms),
                    gaps: mine.iter().map(|p| p.gaps).sum(),
                    duplicate_name: duplicates.contains(&s.name),
                    stats: stats
                        .iter()
                        .find(|(n, _)| *n == s.name)
                        .map(|(_, st)| st.clone()),
                });
            }
        }
        slaves
    }

    /// The policy state: on a slave what it enforces (UNSYNCED until the first policy;
    /// LAST_GOOD while the master is away); on a master its latest revision (PUBLISHED);
    /// on a standalone node what it enforces (ENFORCED).
    fn policy_state(&self) -> PolicyState {
        if self.files.startup.role == Role::Master {
            return match self.master.as_ref().and_then(|m| m.latest()) {
                Some(i) => PolicyState {
                    revision: i.revision,
                    sha256: i.sha256,
                    state: "PUBLISHED".into(),
                },
                None => PolicyState {
                    revision: 0,
                    sha256: String::new(),
                    state: "NONE".into(),
                },
            };
        }
        match self.active.get() {
            None => PolicyState {
                revision: 0,
                sha256: String::new(),
                state: if self.files.startup.role == Role::Slave {
                    "UNSYNCED".into()
                } else {
                    "NONE".into()
                },
            },
            Some(a) => {
                let state = if self.files.startup.role == Role::Standalone {
                    "ENFORCED"
                } else if self
                    .sync
                    .lock()
                    .map(|s| s.state == "connected")
                    .unwrap_or(false)
                {
                    "SYNCED"
                } else {
                    "LAST_GOOD"
                };
                PolicyState {
                    revision: a.doc.info.revision,
                    sha256: a.doc.info.sha256.clone(),
                    state: state.into(),
                }
            }
        }
    }
}
