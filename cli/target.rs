//! Settings (flag > environment > inventory > default) and the node a command talks to:
//! its portal over HTTPS, its admin socket (`--local`), or its files when ssqd is not
//! running (`--local`, daemon down). Every node-level operation goes through `Target`,
//! so each command works the same three ways.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ssq::access::{AccessList, AllowEntry};
use ssq::api::{
    AccessChange, AllowAdd, AllowRemove, AuthSet, LogLines, OperatorAdd, OperatorChange,
    OperatorEntry, RestartResult, StartupDoc, StartupPut, StartupPutResult, Status,
};
use ssq::client::{Admin, ClientOptions, Conn, PinEvent, Portal};
use ssq::inventory::Inventory;
use ssq::keys::SigningKey;
use ssq::nodeconf::{Actor, NodeFiles};
use ssq::syncapi::{
    Forgotten, PolicyApplied, PolicyApply, PolicyDoc, PolicyRollback, PolicyTest, PolicyTestResult,
    RevisionInfo, TaskRequest, TaskView, WaitResult,
};

use crate::args::{Format, Global};
use crate::output::Failure;

/// Resolved settings of one invocation.
pub struct Ctx {
    /// The global flags.
    pub g: Global,
    /// The inventory, when one is given.
    pub inventory: Option<Inventory>,
    /// SSQ_HOME (default ~/.config/ssq).
    pub home: PathBuf,
}

/// SSQ_HOME, or ~/.config/ssq.
pub fn ssq_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SSQ_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config").join("ssq")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ssq-cli".into())
}

impl Ctx {
    /// Load the inventory, if any.
    ///
    /// # Errors
    /// Exit 2 when the inventory is invalid.
    pub fn new(g: Global) -> Result<Self, Failure> {
        let inventory = match &g.inventory {
            Some(p) => Some(Inventory::load(p).map_err(|e| Failure::usage(e.to_string()))?),
            None => None,
        };
        Ok(Ctx {
            g,
            inventory,
            home: ssq_home(),
        })
    }

    /// The operator key file: flag/env > inventory > SSQ_HOME/operator.key.
    pub fn operator_key_path(&self) -> PathBuf {
        self.g
            .operator_key
            .clone()
            .or_else(|| self.inventory.as_ref().and_then(|i| i.operator_key.clone()))
            .unwrap_or_else(|| self.home.join("operator.key"))
    }

    /// The cluster's activation key file: flag/env > inventory; none by default.
    pub fn key_file(&self) -> Option<PathBuf> {
        self.g
            .key_file
            .clone()
            .or_else(|| self.inventory.as_ref().and_then(|i| i.key_file.clone()))
    }

    fn known_nodes(&self) -> PathBuf {
        self.inventory
            .as_ref()
            .and_then(|i| i.known_nodes.clone())
            .unwrap_or_else(|| self.home.join("known_nodes"))
    }

    /// Client options for talking to `address` (fingerprint from the flag or inventory).
    ///
    /// # Errors
    /// Exit 2 when the operator key is missing or unreadable.
    pub fn client_options(&self, inventory_fp: Option<String>) -> Result<ClientOptions, Failure> {
        let key_path = self.operator_key_path();
        let key = SigningKey::load(&key_path).map_err(|e| {
            Failure::usage(format!(
                "{e}\nan operator key signs every request: create one with `ssq key new --operator --out {}` and add its .pub line to each node (ssq --local --config FILE operator add FILE.pub)",
                key_path.display()
            ))
        })?;
        Ok(ClientOptions {
            bind: self.g.bind,
            ca: self.g.ca.clone(),
            fingerprint: self.g.fingerprint.clone().or(inventory_fp),
            strict_pins: self.g.strict_pins,
            known_nodes: self.known_nodes(),
            operator_key: Some(Arc::new(key)),
            timeout: self.g.timeout,
            sender: hostname(),
            trust_on_connect: false,
            node_signer: None,
        })
    }

    /// The master's name or address: `--master` > inventory.
    ///
    /// # Errors
    /// Exit 2 when neither gives one.
    pub fn master_ref(&self, flag: Option<&str>) -> Result<String, Failure> {
        flag.map(str::to_string)
            .or_else(|| self.inventory.as_ref().and_then(|i| i.master.as_ref().map(|m| m.name.clone())))
            .ok_or_else(|| {
                Failure::usage("which master? give --master HOST:PORT (or NAME from an inventory), or --inventory FILE")
            })
    }

    /// Connect to a node by name (inventory) or HOST:PORT; with `--local`, to the node
    /// of `--config` instead.
    ///
    /// # Errors
    /// The connection's failure, with what to check.
    pub async fn target(&self, node: Option<&str>) -> Result<Target, Failure> {
        if self.g.local {
            return self.local_target().await;
        }
        let node = match node {
            Some(n) => n.to_string(),
            None => self.master_ref(None).map_err(|_| {
                Failure::usage("which node? give --node NAME|HOST:PORT (or --local --config FILE on the node itself)")
            })?,
        };
        let (address, fp) = match self.inventory.as_ref().and_then(|i| i.find(&node)) {
            Some(e) => (e.address.clone(), e.fingerprint.clone()),
            None => (node.clone(), None),
        };
        let opts = self.client_options(fp)?;
        let portal = Portal::connect(&address, &opts).await?;
        pin_notice(&portal, &opts, self.g.output);
        Ok(Target::Remote(Conn::Portal(Box::new(portal))))
    }

    async fn local_target(&self) -> Result<Target, Failure> {
        let config = self.g.config.as_deref().ok_or_else(|| {
            Failure::usage("--local needs --config FILE (the node's startup.yaml)")
        })?;
        let files = NodeFiles::open(config)?;
        let sock = files.startup.data_dir.join("admin.sock");
        match Admin::connect(&sock, self.g.timeout).await {
            Ok(a) => Ok(Target::Remote(Conn::Admin(a))),
            Err(_) => Ok(Target::Files(Box::new(files), config.to_path_buf())),
        }
    }
}

/// On first contact, say on stderr (as JSON with `-o json`) which certificate was pinned.
pub fn pin_notice(portal: &Portal, opts: &ClientOptions, format: Format) {
    let PinEvent::Pinned(fp) = &portal.pin_event else {
        return;
    };
    if format == Format::Json {
        let notice = serde_json::json!({
            "notice": "first_contact_pinned",
            "address": portal.addr(),
            "fingerprint": fp,
            "known_nodes": opts.known_nodes,
        });
        eprintln!("{notice}");
    } else {
        eprintln!(
            "ssq: first contact with {}: pinned its certificate {fp} in {}",
            portal.addr(),
            opts.known_nodes.display()
        );
    }
}

/// A node to operate on.
pub enum Target {
    /// Through its portal or admin socket.
    Remote(Conn),
    /// Directly on its files (ssqd not running), with the startup.yaml path.
    Files(Box<NodeFiles>, PathBuf),
}

fn not_running(config: &Path, what: &str) -> Failure {
    Failure::new(
        3,
        "not_running",
        format!(
            "ssqd is not running for {} (no admin socket answers), so it cannot {what}; start it with: ssqd --config {}",
            config.display(),
            config.display()
        ),
    )
}

impl Target {
    async fn call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        what: &str,
    ) -> Result<T, Failure> {
        match self {
            Target::Remote(c) => Ok(c.call(method, path, body).await?),
            Target::Files(_, config) => Err(not_running(config, what)),
        }
    }

    fn actor() -> Actor {
        let user = std::env::var("USER").unwrap_or_else(|_| format!("uid {}", unsafe_getuid()));
        Actor::local(&format!("ssq --local on the node's files ({user})"))
    }

    /// POST without a body, JSON answer.
    ///
    /// # Errors
    /// As the call.
    pub async fn post_json<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, Failure> {
        self.call("POST", path, None::<&()>, "answer").await
    }

    /// The portal address this target talks to (none for the admin socket or files).
    pub fn address(&self) -> Option<String> {
        match self {
            Target::Remote(Conn::Portal(p)) => Some(p.addr().to_string()),
            _ => None,
        }
    }

    /// GET a JSON document.
    ///
    /// # Errors
    /// As the call.
    pub async fn get_json<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, Failure> {
        self.call("GET", path, None::<&()>, "answer").await
    }

    /// Whether this talks to files directly.
    pub fn is_offline(&self) -> bool {
        matches!(self, Target::Files(..))
    }

    /// The node's status.
    ///
    /// # Errors
    /// As the call.
    pub async fn status(&mut self) -> Result<Status, Failure> {
        self.call("GET", "/api/v1/status", None::<&()>, "report its status")
            .await
    }

    /// The startup file.
    ///
    /// # Errors
    /// As the call.
    pub async fn startup(&mut self) -> Result<StartupDoc, Failure> {
        match self {
            Target::Files(f, _) => Ok(StartupDoc {
                path: f.startup.path.display().to_string(),
                text: f.startup_text()?,
            }),
            _ => self.call("GET", "/api/v1/startup", None::<&()>, "").await,
        }
    }

    /// Replace the startup file.
    ///
    /// # Errors
    /// As the call.
    pub async fn put_startup(
        &mut self,
        text: String,
        force: bool,
    ) -> Result<StartupPutResult, Failure> {
        match self {
            Target::Files(f, _) => Ok(f.put_startup(&text, &Self::actor(), force)?),
            _ => {
                let body = StartupPut { text, force };
                self.call("PUT", "/api/v1/startup", Some(&body), "").await
            }
        }
    }

    /// The access list.
    ///
    /// # Errors
    /// As the call.
    pub async fn access(&mut self) -> Result<AccessList, Failure> {
        match self {
            Target::Files(f, _) => Ok(f.access()?),
            _ => self.call("GET", "/api/v1/access", None::<&()>, "").await,
        }
    }

    /// Add an allow-list entry.
    ///
    /// # Errors
    /// As the call.
    pub async fn allow_add(
        &mut self,
        entry: AllowEntry,
        force: bool,
    ) -> Result<AccessChange, Failure> {
        match self {
            Target::Files(f, _) => Ok(f.allow_add(entry, &Self::actor(), force)?),
            _ => {
                let body = AllowAdd { entry, force };
                self.call("POST", "/api/v1/access/entries", Some(&body), "")
                    .await
            }
        }
    }

    /// Remove an allow-list entry.
    ///
    /// # Errors
    /// As the call.
    pub async fn allow_remove(
        &mut self,
        address: String,
        force: bool,
    ) -> Result<AccessChange, Failure> {
        match self {
            Target::Files(f, _) => Ok(f.allow_remove(&address, &Self::actor(), force)?),
            _ => {
                let body = AllowRemove { address, force };
                self.call("DELETE", "/api/v1/access/entries", Some(&body), "")
                    .await
            }
        }
    }

    /// Turn authentication on or off.
    ///
    /// # Errors
    /// As the call.
    pub async fn set_auth(&mut self, enabled: bool, force: bool) -> Result<AccessChange, Failure> {
        match self {
            Target::Files(f, _) => Ok(f.set_authentication(enabled, &Self::actor(), force)?),
            _ => {
                let body = AuthSet { enabled, force };
                self.call("PUT", "/api/v1/access/authentication", Some(&body), "")
                    .await
            }
        }
    }

    /// Ask for a restart.
    ///
    /// # Errors
    /// As the call; exit 3 when ssqd is not running.
    pub async fn restart(&mut self) -> Result<RestartResult, Failure> {
        self.call("POST", "/api/v1/restart", None::<&()>, "restart")
            .await
    }

    /// The lines of extended.log that `filter` selects (read directly when ssqd is not
    /// running). An older node ignores the filter: callers filter again.
    ///
    /// # Errors
    /// As the call; exit 1 when the file cannot be read.
    pub async fn logs(&mut self, filter: &ssq::extlog::LogFilter) -> Result<LogLines, Failure> {
        match self {
            Target::Files(f, _) => {
                let (lines, cursor) = ssq::extlog::read(f.log.path(), filter)?;
                Ok(LogLines { lines, cursor })
            }
            _ => {
                let path = format!("/api/v1/logs?{}", filter.to_query());
                self.call("GET", &path, None::<&()>, "").await
            }
        }
    }

    /// Operator keys.
    ///
    /// # Errors
    /// As the call.
    pub async fn operators(&mut self) -> Result<Vec<OperatorEntry>, Failure> {
        match self {
            Target::Files(f, _) => Ok(f.operator_entries()?),
            _ => self.call("GET", "/api/v1/operators", None::<&()>, "").await,
        }
    }

    /// Add or remove an operator key.
    ///
    /// # Errors
    /// As the call.
    pub async fn operator_change(
        &mut self,
        line: String,
        add: bool,
    ) -> Result<OperatorChange, Failure> {
        match self {
            Target::Files(f, _) => Ok(if add {
                f.operator_add(&line, &Self::actor())?
            } else {
                f.operator_remove(&line, &Self::actor())?
            }),
            _ => {
                let method = if add { "POST" } else { "DELETE" };
                let body = OperatorAdd { line };
                self.call(method, "/api/v1/operators", Some(&body), "")
                    .await
            }
        }
    }
}

/// `/api/v1/policy`, or `/api/v1/policy?revision=N`.
pub fn policy_path(revision: Option<u64>) -> String {
    match revision {
        Some(n) => format!("/api/v1/policy?revision={n}"),
        None => "/api/v1/policy".into(),
    }
}

/// `/api/v1/policy/wait?revision=N&timeout=SECS`.
pub fn wait_path(revision: u64, secs: u64) -> String {
    format!("/api/v1/policy/wait?revision={revision}&timeout={secs}")
}

/// `/api/v1/slaves/NAME`, the name percent-encoded.
pub fn slave_path(name: &str) -> String {
    format!("/api/v1/slaves/{}", ssq::query::percent_encode(name))
}

impl Target {
    /// Store a policy document (or, with `local`, a slave's own sections).
    ///
    /// # Errors
    /// As the call; exit 3 when ssqd is not running.
    pub async fn policy_apply(&mut self, body: &PolicyApply) -> Result<PolicyApplied, Failure> {
        self.call("POST", "/api/v1/policy", Some(body), "apply a policy")
            .await
    }

    /// The current policy, or revision `revision`.
    ///
    /// # Errors
    /// As the call; exit 3 when ssqd is not running.
    pub async fn policy(&mut self, revision: Option<u64>) -> Result<PolicyDoc, Failure> {
        self.call(
            "GET",
            &policy_path(revision),
            None::<&()>,
            "show its policy",
        )
        .await
    }

    /// The stored revisions.
    ///
    /// # Errors
    /// As the call; exit 3 when ssqd is not running.
    pub async fn policy_history(&mut self) -> Result<Vec<RevisionInfo>, Failure> {
        self.call(
            "GET",
            "/api/v1/policy/history",
            None::<&()>,
            "show its policy history",
        )
        .await
    }

    /// Republish revision `revision`.
    ///
    /// # Errors
    /// As the call; exit 3 when ssqd is not running.
    pub async fn policy_rollback(&mut self, revision: u64) -> Result<PolicyApplied, Failure> {
        let body = PolicyRollback { revision };
        self.call(
            "POST",
            "/api/v1/policy/rollback",
            Some(&body),
            "roll its policy back",
        )
        .await
    }

    /// What the policy decides for one request.
    ///
    /// # Errors
    /// As the call; exit 3 when ssqd is not running.
    pub async fn policy_test(&mut self, body: &PolicyTest) -> Result<PolicyTestResult, Failure> {
        self.call("POST", "/api/v1/policy/test", Some(body), "test its policy")
            .await
    }

    /// Wait (up to `secs` on the master) for the slaves to apply `revision`.
    ///
    /// # Errors
    /// As the call; exit 3 when ssqd is not running.
    pub async fn policy_wait(&mut self, revision: u64, secs: u64) -> Result<WaitResult, Failure> {
        self.call(
            "GET",
            &wait_path(revision, secs),
            None::<&()>,
            "wait for its slaves",
        )
        .await
    }

    /// Remove a slave from the master's list.
    ///
    /// # Errors
    /// As the call; exit 3 when ssqd is not running.
    pub async fn forget_slave(&mut self, name: &str) -> Result<Forgotten, Failure> {
        self.call("DELETE", &slave_path(name), None::<&()>, "forget a slave")
            .await
    }

    /// Clear a slave's master pins (certificate, node key, store id).
    ///
    /// # Errors
    /// As the call.
    pub async fn reset_master_pins(&mut self) -> Result<Forgotten, Failure> {
        match self {
            Target::Files(f, _) => {
                let mut existed = false;
                for name in ["master.json", "master_known_nodes"] {
                    let p = f.startup.data_dir.join(name);
                    match std::fs::remove_file(&p) {
                        Ok(()) => existed = true,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(Forgotten {
                    name: "master pins".into(),
                    existed,
                })
            }
            _ => {
                self.call("POST", "/api/v1/sync/reset", None::<&()>, "")
                    .await
            }
        }
    }

    /// Queue a task for a slave on the master.
    ///
    /// # Errors
    /// As the call.
    pub async fn queue_task(&mut self, node: &str, kind: &str) -> Result<TaskView, Failure> {
        let body = TaskRequest {
            node: node.to_string(),
            kind: kind.to_string(),
        };
        self.call("POST", "/api/v1/tasks", Some(&body), "queue a task")
            .await
    }

    /// A task's state on the master.
    ///
    /// # Errors
    /// As the call.
    pub async fn task(&mut self, id: &str) -> Result<TaskView, Failure> {
        self.call("GET", &format!("/api/v1/tasks/{id}"), None::<&()>, "")
            .await
    }
}

fn unsafe_getuid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}
