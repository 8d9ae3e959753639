//! The running node's shared state: who it is (startup params, keys, certificate), this
//! boot's id, the nonce window, and the channel that asks the main loop to restart.

use std::net::SocketAddr;
use std::sync::Mutex;

use ssq::api::{PolicyState, Status};
use ssq::keys::{ActivationKey, SigningKey};
use ssq::nodeconf::NodeFiles;
use ssq::sign::NonceCache;
use ssq::startup::Role;
use tokio::sync::watch;

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
            policy: PolicyState {
                revision: 0,
                sha256: String::new(),
                state: match s.role {
                    Role::Slave => "UNSYNCED".into(),
                    _ => "NONE".into(),
                },
            },
            authentication: self
                .files
                .access()
                .map(|a| a.authentication)
                .unwrap_or(false),
            slaves: match s.role {
                Role::Master => Some(Vec::new()),
                _ => None,
            },
            refused: None,
            sync: None,
        }
    }
}
