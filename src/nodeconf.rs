//! A node's configuration files and the one write path for each: startup params,
//! access list, operators, backups. The daemon serves these over its portal and admin
//! socket; `ssq --local` calls them directly when the daemon is not running. Either way
//! the same checks run (validation, the lock-out guard, remote-edit limits) and every
//! change is logged under `config` with who made it and from where.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::access::{self, AccessError, AccessList, AddOutcome, AddressSpec, AllowEntry};
use crate::api::{AccessChange, OperatorChange, OperatorEntry, StartupPutResult};
use crate::extlog::ExtLog;
use crate::keys::PublicKey;
use crate::startup::{self, Startup, StartupError, StartupFile};

/// Errors of configuration reads and writes.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// Startup params are invalid.
    #[error("{0}")]
    Startup(#[from] StartupError),
    /// The access list is invalid, or a change would lock the caller out.
    #[error("{0}")]
    Access(#[from] AccessError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bad input, e.g. an operator line that does not parse.
    #[error("{0}")]
    BadInput(String),
    /// portal.listen would move away from where this request arrived.
    #[error("this change would shut you out: the portal would listen on {new} and no longer on {arrived}, where this request arrived; repeat with --force if you mean it")]
    ListenLockOut {
        /// The new listen address.
        new: String,
        /// Where the request arrived.
        arrived: SocketAddr,
    },
}

impl ConfError {
    /// HTTP status and stable code for the portal's JSON error.
    pub fn status_code(&self) -> (u16, &'static str) {
        match self {
            ConfError::Startup(StartupError::RemoteEdit { .. }) => (403, "remote_edit_refused"),
            ConfError::Startup(_) => (400, "invalid_startup"),
            ConfError::Access(AccessError::LockOut { .. }) => (400, "lockout"),
            ConfError::Access(AccessError::Read { .. } | AccessError::Write { .. }) => {
                (500, "io_error")
            }
            ConfError::Access(_) => (400, "invalid_access"),
            ConfError::ListenLockOut { .. } => (400, "lockout"),
            ConfError::BadInput(_) => (400, "bad_input"),
            ConfError::Io { .. } => (500, "io_error"),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfError + '_ {
    move |source| ConfError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who asks for a change, for the guard and the log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// Operator key fingerprint, or how a local caller came in.
    pub who: String,
    /// The source address (None: admin socket or local files, never restricted).
    pub from: Option<IpAddr>,
    /// The local address the request arrived at (portal only).
    pub arrived: Option<SocketAddr>,
}

impl Actor {
    /// A caller on the node itself (admin socket or files).
    pub fn local(who: &str) -> Self {
        Actor {
            who: who.to_string(),
            from: None,
            arrived: None,
        }
    }

    fn describe(&self) -> String {
        match self.from {
            Some(a) => format!("by {} from {a}", self.who),
            None => format!("by {} (local)", self.who),
        }
    }
}

/// An exclusive lock on a node's configuration (flock on data_dir/.config.lock), held
/// across each read-modify-write so concurrent portal requests, admin-socket calls and
/// `ssq --local` edits never lose an update or slip past the lock-out guard. Released on
/// drop. Every holder opens its own descriptor, so threads of one process exclude each
/// other too; never take it twice in one call chain.
struct ConfigLock(#[allow(dead_code)] FileLock);

impl ConfigLock {
    fn take(data_dir: &Path) -> Result<Self, ConfError> {
        std::fs::create_dir_all(data_dir).map_err(io(data_dir))?;
        Ok(ConfigLock(FileLock::take(&data_dir.join(".config.lock"))?))
    }
}

/// An exclusive `flock` on a lock file, held until dropped: one writer at a time across
/// processes.
pub struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    /// Wait for the lock on `path` (created if absent).
    ///
    /// # Errors
    /// `ConfError::Io` when the file cannot be opened or locked.
    pub fn take(path: &Path) -> Result<Self, ConfError> {
        use std::os::fd::AsRawFd;
        let path = path.to_path_buf();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(ConfError::Io {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(FileLock(f))
    }
}

/// A node's configuration, found through its startup.yaml.
pub struct NodeFiles {
    /// The validated startup params (as loaded).
    pub startup: Startup,
    /// The event log, for `config` events.
    pub log: ExtLog,
    /// On a running master: its known slaves, by name and source address.
    known_slaves: Mutex<Option<SlaveLister>>,
}

/// Lists a master's known slaves: (name, source address).
pub type SlaveLister = Box<dyn Fn() -> Vec<(String, IpAddr)> + Send + Sync>;

impl std::fmt::Debug for NodeFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeFiles")
            .field("startup", &self.startup)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

/// Write a file through a temp file, fsync, rename, fsync of the directory.
///
/// # Errors
/// `ConfError::Io`.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), ConfError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let suffix = crate::keys::random_bytes::<6>()
        .map(|b| crate::keys::hex(&b))
        .map_err(|e| ConfError::BadInput(e.to_string()))?;
    let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

impl NodeFiles {
    /// Read and validate startup.yaml (the activation key file need not exist here, so
    /// a broken node can still be repaired) and open its event log.
    ///
    /// # Errors
    /// `ConfError` when the file is missing or invalid.
    pub fn open(config: &Path) -> Result<Self, ConfError> {
        let config = &std::fs::canonicalize(config).map_err(io(config))?;
        let text = std::fs::read_to_string(config).map_err(io(config))?;
        let file = StartupFile::parse(&text, config)?;
        let startup = file.validate(&text, config)?;
        let log = ExtLog::open(&startup.log_dir, &startup.node).map_err(io(&startup.log_dir))?;
        Ok(NodeFiles {
            startup,
            log,
            known_slaves: Mutex::new(None),
        })
    }

    /// For a daemon that has loaded its startup params already.
    pub fn from_parts(startup: Startup, log: ExtLog) -> Self {
        NodeFiles {
            startup,
            log,
            known_slaves: Mutex::new(None),
        }
    }

    /// On a master: where to find its known slaves, so that an allow-list change that
    /// takes `sync` away from one of them warns (in the answer and in extended.log).
    pub fn set_known_slaves(&self, lister: SlaveLister) {
        if let Ok(mut k) = self.known_slaves.lock() {
            *k = Some(lister);
        }
    }

    /// Warnings for the slaves `old` admitted for sync and `new` does not.
    fn sync_warnings(&self, old: &AccessList, new: &AccessList) -> Vec<String> {
        let slaves = match self.known_slaves.lock() {
            Ok(k) => k.as_ref().map(|f| f()).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let lost = access::sync_lost(old, new, &slaves);
        slaves
            .iter()
            .filter(|(name, _)| lost.contains(name))
            .map(|(name, ip)| {
                format!(
                    "slave {name} ({ip}) loses sync access: the master will refuse its sync and it keeps enforcing its last policy; give it back with: ssq master allow add {ip} --access sync"
                )
            })
            .collect()
    }

    /// data_dir/access.yaml.
    pub fn access_path(&self) -> PathBuf {
        self.startup.data_dir.join("access.yaml")
    }

    /// data_dir/operators.
    pub fn operators_path(&self) -> PathBuf {
        self.startup.data_dir.join("operators")
    }

    /// The startup file's current text.
    ///
    /// # Errors
    /// `ConfError::Io`.
    pub fn startup_text(&self) -> Result<String, ConfError> {
        std::fs::read_to_string(&self.startup.path).map_err(io(&self.startup.path))
    }

    /// Copy the named files of the node's configuration into a new
    /// `data_dir/backups/<UTC time>/` and return that directory.
    ///
    /// # Errors
    /// `ConfError::Io`.
    pub fn backup(&self, everything: bool) -> Result<PathBuf, ConfError> {
        let stamp = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let root = self.startup.data_dir.join("backups");
        let mut dir = root.join(&stamp);
        let mut n = 1;
        while dir.exists() {
            dir = root.join(format!("{stamp}.{n}"));
            n += 1;
        }
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let copy = |from: &Path, name: &str| -> Result<(), ConfError> {
            if from.exists() {
                let to = dir.join(name);
                std::fs::copy(from, &to).map_err(io(&to))?;
            }
            Ok(())
        };
        copy(&self.startup.path, "startup.yaml")?;
        if everything {
            copy(&self.access_path(), "access.yaml")?;
            copy(&self.operators_path(), "operators")?;
            let policy = self.startup.data_dir.join("policy");
            if policy.is_dir() {
                let to = dir.join("policy");
                std::fs::create_dir_all(&to).map_err(io(&to))?;
                for entry in std::fs::read_dir(&policy).map_err(io(&policy))?.flatten() {
                    if entry.path().is_file() {
                        copy(
                            &entry.path(),
                            &format!("policy/{}", entry.file_name().to_string_lossy()),
                        )?;
                    }
                }
            }
        }
        Ok(dir)
    }

    /// Replace startup.yaml with `text` after validating it; the old file is backed up
    /// first. A remote caller may not change activation_key_file, data_dir or log_dir.
    ///
    /// # Errors
    /// `ConfError` naming what is wrong; nothing is written then.
    pub fn put_startup(
        &self,
        text: &str,
        actor: &Actor,
        force: bool,
    ) -> Result<StartupPutResult, ConfError> {
        let _lock = ConfigLock::take(&self.startup.data_dir)?;
        let path = &self.startup.path;
        let old_text = self.startup_text()?;
        let old = StartupFile::parse(&old_text, path)?.validate(&old_text, path)?;
        let new = StartupFile::parse(text, path)?.validate(text, path)?;
        if actor.from.is_some() {
            startup::check_remote_edit(&old, &new)?;
        }
        if let (Some(arrived), false) = (actor.arrived, force) {
            let ip = new.portal_listen.ip();
            if !ip.is_unspecified() && ip != arrived.ip() {
                return Err(ConfError::ListenLockOut {
                    new: new.portal_listen.to_string(),
                    arrived,
                });
            }
        }
        // A certificate the node could not load would keep it from starting again.
        if let (Some(cert), Some(key)) = (&new.portal_cert, &new.portal_key) {
            let changed = new.portal_cert != old.portal_cert || new.portal_key != old.portal_key;
            if changed {
                if let Err(e) = crate::tls::load_identity(cert, key) {
                    return Err(ConfError::BadInput(format!(
                        "portal.cert/portal.key cannot be loaded on this node ({e}); the node would not start with them"
                    )));
                }
            }
        }
        if old_text == text {
            return Ok(StartupPutResult {
                changed: false,
                restart_needed: false,
                backup: None,
            });
        }
        let backup = self.backup(false)?;
        write_atomic(path, text.as_bytes(), 0o644)?;
        let restart_needed = startup::restart_needed(&old, &new);
        let master = |s: &Startup| {
            s.master
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| "none".into())
        };
        self.log.info(
            "config",
            &format!(
                "startup params changed {} (master {} -> {}; backup {}){}",
                actor.describe(),
                master(&old),
                master(&new),
                backup.display(),
                if restart_needed {
                    "; restart needed"
                } else {
                    ""
                }
            ),
        );
        Ok(StartupPutResult {
            changed: true,
            restart_needed,
            backup: Some(backup.display().to_string()),
        })
    }

    /// The access list (default when there is no file).
    ///
    /// # Errors
    /// `ConfError::Access` when the file does not parse.
    pub fn access(&self) -> Result<AccessList, ConfError> {
        Ok(AccessList::load(&self.access_path())?)
    }

    /// The one write path of the access list: lock-out guard, save, log.
    ///
    /// # Errors
    /// `ConfError::Access(LockOut)` when the change would shut the caller out.
    pub fn write_access(
        &self,
        new: AccessList,
        outcome: &str,
        actor: &Actor,
        force: bool,
    ) -> Result<AccessChange, ConfError> {
        let _lock = ConfigLock::take(&self.startup.data_dir)?;
        self.write_access_locked(new, outcome, actor, force)
    }

    fn write_access_locked(
        &self,
        new: AccessList,
        outcome: &str,
        actor: &Actor,
        force: bool,
    ) -> Result<AccessChange, ConfError> {
        let old = self.access()?;
        if !force {
            access::lockout(&new, actor.from)?;
        }
        if old == new {
            return Ok(AccessChange {
                outcome: "unchanged".into(),
                warnings: Vec::new(),
                access: new,
            });
        }
        let warnings = self.sync_warnings(&old, &new);
        new.save(&self.access_path())?;
        for w in &warnings {
            self.log.warn("config", w);
        }
        self.log.info(
            "config",
            &format!(
                "access list {outcome} {} (authentication {}, {} entries){}",
                actor.describe(),
                if new.authentication { "on" } else { "off" },
                new.allow.len(),
                if force { " [forced]" } else { "" }
            ),
        );
        Ok(AccessChange {
            outcome: outcome.into(),
            warnings,
            access: new,
        })
    }

    /// Add an allow-list entry (an identical entry is a no-op that says so).
    ///
    /// # Errors
    /// As `write_access`.
    pub fn allow_add(
        &self,
        entry: AllowEntry,
        actor: &Actor,
        force: bool,
    ) -> Result<AccessChange, ConfError> {
        let _lock = ConfigLock::take(&self.startup.data_dir)?;
        let mut list = self.access()?;
        let outcome = match list.add(entry) {
            AddOutcome::AlreadyPresent => {
                return Ok(AccessChange {
                    outcome: "already_present".into(),
                    warnings: Vec::new(),
                    access: list,
                })
            }
            AddOutcome::Added => "added",
            AddOutcome::Updated => "updated",
        };
        self.write_access_locked(list, outcome, actor, force)
    }

    /// Remove the entry for `address`.
    ///
    /// # Errors
    /// As `write_access`; a bad address is `ConfError::Access`.
    pub fn allow_remove(
        &self,
        address: &str,
        actor: &Actor,
        force: bool,
    ) -> Result<AccessChange, ConfError> {
        let spec: AddressSpec = address.parse()?;
        let _lock = ConfigLock::take(&self.startup.data_dir)?;
        let mut list = self.access()?;
        if !list.remove(&spec) {
            return Ok(AccessChange {
                outcome: "not_found".into(),
                warnings: Vec::new(),
                access: list,
            });
        }
        self.write_access_locked(list, "removed", actor, force)
    }

    /// Turn authentication on or off.
    ///
    /// # Errors
    /// As `write_access`.
    pub fn set_authentication(
        &self,
        enabled: bool,
        actor: &Actor,
        force: bool,
    ) -> Result<AccessChange, ConfError> {
        let _lock = ConfigLock::take(&self.startup.data_dir)?;
        let mut list = self.access()?;
        list.authentication = enabled;
        let outcome = if enabled { "enabled" } else { "disabled" };
        self.write_access_locked(list, outcome, actor, force)
    }

    /// The operator keys this node obeys.
    ///
    /// # Errors
    /// `ConfError` when the file cannot be read or holds a bad line.
    pub fn operators(&self) -> Result<Vec<(PublicKey, String)>, ConfError> {
        read_operators(&self.operators_path())
    }

    /// Operators as API entries.
    ///
    /// # Errors
    /// As `operators`.
    pub fn operator_entries(&self) -> Result<Vec<OperatorEntry>, ConfError> {
        Ok(self
            .operators()?
            .into_iter()
            .map(|(k, comment)| OperatorEntry {
                fingerprint: k.fingerprint(),
                comment,
            })
            .collect())
    }

    /// Add an operator's `.pub` line.
    ///
    /// # Errors
    /// `ConfError::BadInput` for a bad line; `ConfError::Io`.
    pub fn operator_add(&self, line: &str, actor: &Actor) -> Result<OperatorChange, ConfError> {
        let (key, comment) =
            PublicKey::parse_line(line).map_err(|e| ConfError::BadInput(e.to_string()))?;
        let _lock = ConfigLock::take(&self.startup.data_dir)?;
        let mut ops = self.operators()?;
        let outcome = if ops.iter().any(|(k, _)| *k == key) {
            "already_present"
        } else {
            ops.push((key, comment));
            self.save_operators(&ops)?;
            self.log.info(
                "config",
                &format!("operator {} added {}", key.fingerprint(), actor.describe()),
            );
            "added"
        };
        Ok(OperatorChange {
            outcome: outcome.into(),
            operators: self.operator_entries()?,
        })
    }

    /// Remove an operator by fingerprint (or by its `.pub` line).
    ///
    /// # Errors
    /// `ConfError::Io`.
    pub fn operator_remove(&self, which: &str, actor: &Actor) -> Result<OperatorChange, ConfError> {
        let target = match PublicKey::parse_line(which) {
            Ok((k, _)) => k.fingerprint(),
            Err(_) => which.trim().to_string(),
        };
        let _lock = ConfigLock::take(&self.startup.data_dir)?;
        let mut ops = self.operators()?;
        let before = ops.len();
        ops.retain(|(k, _)| k.fingerprint() != target);
        let outcome = if ops.len() == before {
            "not_found"
        } else {
            self.save_operators(&ops)?;
            self.log.info(
                "config",
                &format!("operator {target} removed {}", actor.describe()),
            );
            "removed"
        };
        Ok(OperatorChange {
            outcome: outcome.into(),
            operators: self.operator_entries()?,
        })
    }

    fn save_operators(&self, ops: &[(PublicKey, String)]) -> Result<(), ConfError> {
        let mut text = String::from("# operator keys this node obeys, one per line\n");
        for (k, c) in ops {
            text.push_str(&k.to_line(c));
            text.push('\n');
        }
        write_atomic(&self.operators_path(), text.as_bytes(), 0o644)
    }
}

/// Read data_dir/operators (absent: none). Blank lines and `#` comments are skipped.
///
/// # Errors
/// `ConfError::BadInput` naming the line that does not parse.
pub fn read_operators(path: &Path) -> Result<Vec<(PublicKey, String)>, ConfError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let parsed = PublicKey::parse_line(l)
            .map_err(|e| ConfError::BadInput(format!("{}:{}: {e}", path.display(), i + 1)))?;
        out.push(parsed);
    }
    Ok(out)
}
