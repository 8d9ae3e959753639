//! Startup params (`startup.yaml`): the per-node parameters that are never synced and
//! need a restart to change — node name, role and master, listen addresses, paths.
//! Parsing keeps the file as written ([`StartupFile`]); validation fills in defaults,
//! resolves relative paths against the file's folder and yields [`Startup`], with every
//! error naming the file, the line and the field.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::yamlpos;

/// The master's default portal port.
pub const DEFAULT_MASTER_PORT: u16 = 8888;

/// Errors reading, parsing, validating or changing startup params.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The startup file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The startup file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The startup file is not valid YAML for startup params.
    #[error("{}: {message}", at(.path, *.line, *.column))]
    Parse {
        /// The startup file.
        path: PathBuf,
        /// 1-based line of the error, if known.
        line: Option<usize>,
        /// 1-based column of the error, if known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A field has a value that is not allowed.
    #[error("{}: {field}: {message}", at(.path, *.line, None))]
    Invalid {
        /// The startup file.
        path: PathBuf,
        /// 1-based line of the field, if it was found.
        line: Option<usize>,
        /// The field, dotted (`proxy.listen`).
        field: String,
        /// What is wrong, with an example of a good value.
        message: String,
    },
    /// The activation key file is missing or unreadable.
    #[error(
        "{}: activation_key_file: cannot read {}: {source}; create one with: ssq key new --out {}",
        at(.path, *.line, None), .key_file.display(), .key_file.display()
    )]
    KeyFile {
        /// The startup file.
        path: PathBuf,
        /// 1-based line of `activation_key_file`, if it is set in the file.
        line: Option<usize>,
        /// The activation key file.
        key_file: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A remote caller tried to change a field only the node's own operator may change.
    #[error("{field} cannot be changed over the portal; change it on the node itself (ssq --local --config FILE)")]
    RemoteEdit {
        /// The field that differs.
        field: String,
    },
    /// A master address is not `HOST[:PORT]`.
    #[error("\"{value}\" is not HOST[:PORT] (e.g. 10.0.0.1:8888 or [fd00::1]:8888): {reason}")]
    BadMaster {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `path:line:col`, leaving out what is unknown.
fn at(path: &Path, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{}:{l}:{c}", path.display()),
        (Some(l), None) => format!("{}:{l}", path.display()),
        _ => path.display().to_string(),
    }
}

/// A node's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// No master: enforces its own local policy.
    Standalone,
    /// Syncs policy from a master and ships reports to it.
    Slave,
    /// Serves policy and tasks to slaves and stores their reports.
    Master,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Standalone => "standalone",
            Role::Slave => "slave",
            Role::Master => "master",
        })
    }
}

/// The `portal:` section as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalSection {
    /// Listen address, IP:PORT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// TLS certificate file (PEM); with `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// TLS private key file (PEM); with `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// The `proxy:` section as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// Listen address, IP:PORT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// The `sync:` section as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSection {
    /// Policy sections this slave keeps local.
    #[serde(default)]
    pub never: Vec<String>,
}

/// The `reports:` section as written: a slave's report spool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportsSection {
    /// The most the spool may hold on disk, in bytes (default 1 GiB); past it the oldest
    /// segment is dropped and the loss is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_max_bytes: Option<u64>,
    /// Size of one spool segment file, in bytes (default 8 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_segment_bytes: Option<u64>,
    /// How often records are fsynced, in milliseconds (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync_ms: Option<u64>,
}

/// The file as written (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupFile {
    /// Unique node name; default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The master's portal, `HOST[:PORT]` (slaves only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Explicit role; default: slave when `master` is set, else standalone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The Configuration Portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal: Option<PortalSection>,
    /// The forward proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxySection>,
    /// Address outgoing connections are bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// The cluster's activation key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_key_file: Option<String>,
    /// Policy, access list, TLS, backups, spool, reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// extended.log and access.log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
    /// Policy sync settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncSection>,
    /// Report spool settings (slaves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<ReportsSection>,
}

/// A master's portal address, `HOST:PORT` (serialized as that string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterAddr {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Portal port.
    pub port: u16,
}

impl Serialize for MasterAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl fmt::Display for MasterAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for MasterAddr {
    type Err = StartupError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| StartupError::BadMaster {
            value: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(bad("contains whitespace"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(bad("missing ] after the IPv6 address"));
            };
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address inside [ ]"));
            }
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return Err(bad("expected :PORT after ]")),
                },
            }
        } else if s.parse::<Ipv6Addr>().is_ok() {
            (s, None)
        } else if s.matches(':').count() > 1 {
            return Err(bad("put an IPv6 address in brackets"));
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if !host.contains(':')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(bad(
                "host may contain only letters, digits, '.', '-' and '_'",
            ));
        }
        let port = match port {
            None => DEFAULT_MASTER_PORT,
            Some(p) => parse_port(p).map_err(&bad)?,
        };
        if port == 0 {
            return Err(bad("port 0 is not a port to connect to"));
        }
        Ok(MasterAddr {
            host: host.to_string(),
            port,
        })
    }
}

/// A port number, or what is wrong with it.
fn parse_port(p: &str) -> Result<u16, &'static str> {
    if p.is_empty() {
        return Err("missing port after ':'");
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err("port is not a number");
    }
    p.parse::<u16>().map_err(|_| "invalid port (at most 65535)")
}

/// Why `s` is not `IP:PORT`.
fn socket_addr_reason(s: &str) -> &'static str {
    let Some((ip, port)) = s.rsplit_once(':') else {
        return "missing :PORT";
    };
    let ip = ip
        .strip_prefix('[')
        .and_then(|i| i.strip_suffix(']'))
        .unwrap_or(ip);
    if parse_port(port).is_err() {
        return "invalid port";
    }
    if ip.parse::<IpAddr>().is_err() {
        return "not an IP address (host names are not allowed; IPv6 goes in [ ])";
    }
    "not IP:PORT"
}

/// Validated startup params.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Startup {
    /// The startup file these came from.
    pub path: PathBuf,
    /// This node's name.
    pub node: String,
    /// This node's role.
    pub role: Role,
    /// The master's portal (slaves only).
    pub master: Option<MasterAddr>,
    /// Portal listen address (port 0: any free port).
    pub portal_listen: SocketAddr,
    /// Portal TLS certificate file, if given.
    pub portal_cert: Option<PathBuf>,
    /// Portal TLS key file, if given.
    pub portal_key: Option<PathBuf>,
    /// Proxy listen address (port 0: any free port).
    pub proxy_listen: SocketAddr,
    /// Address outgoing connections are bound to, if given.
    pub source_address: Option<IpAddr>,
    /// The activation key file.
    pub activation_key_file: PathBuf,
    /// The data folder.
    pub data_dir: PathBuf,
    /// The log folder.
    pub log_dir: PathBuf,
    /// Policy sections kept local.
    pub sync_never: Vec<String>,
    /// Spool bound in bytes.
    pub spool_max_bytes: u64,
    /// Spool segment size in bytes.
    pub spool_segment_bytes: u64,
    /// Spool fsync interval in milliseconds.
    pub fsync_ms: u64,
}

/// This machine's host name, or `ssq-node` when it has none usable as a node name.
fn host_name() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string());
    let name = from_proc.filter(|s| !s.is_empty()).or_else(|| {
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for buf.len() bytes; gethostname writes at most that many.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return None;
        }
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        Some(String::from_utf8_lossy(&buf[..end]).trim().to_string())
    });
    name.filter(|n| valid_node_name(n))
        .unwrap_or_else(|| "ssq-node".to_string())
}

/// 1–63 characters of `[A-Za-z0-9._-]`.
pub fn valid_node_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl StartupFile {
    /// Parses startup.yaml text; errors name `path`, the line and the column.
    pub fn parse(text: &str, path: &Path) -> Result<StartupFile, StartupError> {
        serde_saphyr::from_str::<Option<StartupFile>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                let (line, column, message) = yamlpos::saphyr_error(&e);
                StartupError::Parse {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message,
                }
            })
    }

    /// Checks every field, fills in defaults and resolves relative paths against the
    /// folder of `path`. `text` is the file's text, used to name lines in errors.
    pub fn validate(&self, text: &str, path: &Path) -> Result<Startup, StartupError> {
        let invalid = |field: &str, message: String| StartupError::Invalid {
            path: path.to_path_buf(),
            line: yamlpos::line_of_key(text, field),
            field: field.to_string(),
            message,
        };
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |field: &str, value: &str| -> Result<PathBuf, StartupError> {
            if value.trim().is_empty() {
                return Err(invalid(
                    field,
                    "must not be empty (e.g. /var/lib/ssq)".into(),
                ));
            }
            Ok(base.join(value))
        };
        // The default is also the example of a good value.
        let listen = |field: &str, value: Option<&String>, example: &str| {
            let value = value.map(String::as_str).unwrap_or(example);
            value.parse::<SocketAddr>().map_err(|_| {
                let reason = socket_addr_reason(value);
                invalid(
                    field,
                    format!("\"{value}\" is not IP:PORT (e.g. {example}): {reason}"),
                )
            })
        };

        let node = match &self.node {
            Some(n) if valid_node_name(n) => n.clone(),
            Some(n) => {
                return Err(invalid(
                    "node",
                    format!("\"{n}\" is not a node name: use 1-63 letters, digits, '.', '_' or '-' (e.g. slave-1)"),
                ))
            }
            None => host_name(),
        };
        let master = match &self.master {
            Some(m) => Some(
                m.parse::<MasterAddr>()
                    .map_err(|e| invalid("master", e.to_string()))?,
            ),
            None => None,
        };
        let role = match (self.role, master.is_some()) {
            (Some(Role::Master), true) => Err("master conflicts with the master: line (a master has no master); remove one of the two"),
            (Some(Role::Standalone), true) => Err("standalone conflicts with the master: line (a standalone node has no master); remove one of the two"),
            (Some(Role::Slave), false) => Err("slave needs a master: line (e.g. master: 10.0.0.1:8888)"),
            (Some(r), _) => Ok(r),
            (None, true) => Ok(Role::Slave),
            (None, false) => Ok(Role::Standalone),
        }
        .map_err(|m| invalid("role", m.into()))?;
        let portal = self.portal.clone().unwrap_or_default();
        let portal_listen = listen("portal.listen", portal.listen.as_ref(), "0.0.0.0:8888")?;
        let example = "(e.g. portal: { cert: portal.crt, key: portal.key })";
        let (portal_cert, portal_key) = match (&portal.cert, &portal.key) {
            (Some(c), Some(k)) => (
                Some(resolve("portal.cert", c)?),
                Some(resolve("portal.key", k)?),
            ),
            (Some(_), None) => {
                return Err(invalid(
                    "portal.cert",
                    format!("cert needs key too {example}"),
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "portal.key",
                    format!("key needs cert too {example}"),
                ))
            }
            (None, None) => (None, None),
        };
        let proxy_listen = listen(
            "proxy.listen",
            self.proxy.as_ref().and_then(|p| p.listen.as_ref()),
            "0.0.0.0:8080",
        )?;
        let source_address = match &self.source_address {
            Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                invalid(
                    "source_address",
                    format!("\"{s}\" is not an IP address (e.g. 10.0.0.5)"),
                )
            })?),
            None => None,
        };
        let activation_key_file = resolve(
            "activation_key_file",
            self.activation_key_file
                .as_deref()
                .unwrap_or("/etc/ssq/activation.key"),
        )?;
        let data_dir = resolve(
            "data_dir",
            self.data_dir.as_deref().unwrap_or("/var/lib/ssq"),
        )?;
        let log_dir = resolve("log_dir", self.log_dir.as_deref().unwrap_or("/var/log/ssq"))?;
        let sync_never = self
            .sync
            .as_ref()
            .map(|s| s.never.clone())
            .unwrap_or_default();
        if let Some(bad) = sync_never
            .iter()
            .find(|n| n.trim().is_empty() || n.chars().any(char::is_whitespace))
        {
            return Err(invalid(
                "sync.never",
                format!("\"{bad}\" is not a policy section name (e.g. never: [rules, categories])"),
            ));
        }
        let reports = self.reports.clone().unwrap_or_default();
        let spool_segment_bytes = reports.spool_segment_bytes.unwrap_or(8 << 20);
        let spool_max_bytes = reports.spool_max_bytes.unwrap_or(1 << 30);
        let fsync_ms = reports.fsync_ms.unwrap_or(200);
        if !(256..=(256 << 20)).contains(&spool_segment_bytes) {
            return Err(invalid(
                "reports.spool_segment_bytes",
                format!(
                    "{spool_segment_bytes} is out of range (256 bytes to 256 MiB; e.g. 8388608)"
                ),
            ));
        }
        if spool_max_bytes < 2 * spool_segment_bytes {
            return Err(invalid(
                "reports.spool_max_bytes",
                format!("{spool_max_bytes} must be at least twice reports.spool_segment_bytes ({spool_segment_bytes})"),
            ));
        }
        if !(10..=60_000).contains(&fsync_ms) {
            return Err(invalid(
                "reports.fsync_ms",
                format!("{fsync_ms} is out of range (10 to 60000 ms; e.g. 200)"),
            ));
        }
        Ok(Startup {
            path: path.to_path_buf(),
            node,
            role,
            master,
            portal_listen,
            portal_cert,
            portal_key,
            proxy_listen,
            source_address,
            activation_key_file,
            data_dir,
            log_dir,
            sync_never,
            spool_max_bytes,
            spool_segment_bytes,
            fsync_ms,
        })
    }
}

impl Startup {
    /// The address this node's outgoing connections (sync, reports) bind to, so that a
    /// master's allow list sees this node and not 127.0.0.1: `source_address`, else the
    /// portal's listen IP when it is a specific one, else none (the kernel chooses).
    pub fn outgoing_bind(&self) -> Option<IpAddr> {
        self.source_address.or_else(|| {
            let ip = self.portal_listen.ip();
            (!ip.is_unspecified()).then_some(ip)
        })
    }
}

/// Reads, parses and validates the startup file at `path`, then checks that the
/// activation key file can be opened. Returns the params and the file's text.
pub fn load(path: &Path) -> Result<(Startup, String), StartupError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let startup = StartupFile::parse(&text, path)?.validate(&text, path)?;
    let key_error = |source| StartupError::KeyFile {
        path: path.to_path_buf(),
        line: yamlpos::line_of_key(&text, "activation_key_file"),
        key_file: startup.activation_key_file.clone(),
        source,
    };
    let file = std::fs::File::open(&startup.activation_key_file).map_err(key_error)?;
    let meta = file.metadata().map_err(key_error)?;
    if meta.is_dir() {
        return Err(key_error(std::io::Error::other("is a directory")));
    }
    Ok((startup, text))
}

/// Refuses a remote change of the fields only the node's own operator may change:
/// `activation_key_file`, `data_dir` and `log_dir`.
pub fn check_remote_edit(old: &Startup, new: &Startup) -> Result<(), StartupError> {
    let fixed = [
        (
            "activation_key_file",
            &old.activation_key_file,
            &new.activation_key_file,
        ),
        ("data_dir", &old.data_dir, &new.data_dir),
        ("log_dir", &old.log_dir, &new.log_dir),
    ];
    match fixed.iter().find(|(_, a, b)| a != b) {
        Some((field, _, _)) => Err(StartupError::RemoteEdit {
            field: (*field).to_string(),
        }),
        None => Ok(()),
    }
}

/// True when the running node must restart to take `new` (any field but `path` differs).
pub fn restart_needed(old: &Startup, new: &Startup) -> bool {
    let mut old = old.clone();
    old.path.clone_from(&new.path);
    old != *new
}

#[cfg(test)]
mod outgoing_tests {
    use super::*;

    fn parsed(text: &str) -> Startup {
        let p = Path::new("/etc/ssq/startup.yaml");
        StartupFile::parse(text, p)
            .unwrap()
            .validate(text, p)
            .unwrap()
    }

    #[test]
    fn outgoing_bind_prefers_source_address_then_portal_ip() {
        let a = parsed("portal: { listen: \"127.0.0.7:0\" }\nsource_address: 127.0.0.9\n");
        assert_eq!(a.outgoing_bind(), Some("127.0.0.9".parse().unwrap()));
        let b = parsed("portal: { listen: \"127.0.0.7:0\" }\n");
        assert_eq!(b.outgoing_bind(), Some("127.0.0.7".parse().unwrap()));
        let c = parsed("node: x\n");
        assert_eq!(c.outgoing_bind(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "# startup\nnode: slave-1\nmaster: 10.0.0.1:9999\nportal: { listen: \"127.0.0.2:8888\", cert: tls/c.pem, key: tls/k.pem }\nproxy:\n  listen: \"127.0.0.2:0\"\nsource_address: 127.0.0.2\nsync: { never: [rules] }\nactivation_key_file: /etc/ssq/activation.key\ndata_dir: data\nlog_dir: /var/log/ssq\n";

    fn check(text: &str) -> Result<Startup, StartupError> {
        let path = Path::new("/etc/ssq/startup.yaml");
        StartupFile::parse(text, path)?.validate(text, path)
    }

    #[test]
    fn full_sample_parses() {
        let s = check(FULL).unwrap();
        assert_eq!(s.node, "slave-1");
        assert_eq!(s.role, Role::Slave);
        assert_eq!(s.master.as_ref().unwrap().to_string(), "10.0.0.1:9999");
        assert_eq!(s.portal_listen, "127.0.0.2:8888".parse().unwrap());
        assert_eq!(s.proxy_listen.port(), 0);
        assert_eq!(s.source_address, Some("127.0.0.2".parse().unwrap()));
        assert_eq!(s.sync_never, vec!["rules".to_string()]);
        assert_eq!(s.portal_cert, Some(PathBuf::from("/etc/ssq/tls/c.pem")));
    }

    #[test]
    fn defaults() {
        let s = check("").unwrap();
        assert_eq!(s.role, Role::Standalone);
        assert!(s.master.is_none());
        assert!(valid_node_name(&s.node));
        assert_eq!(s.portal_listen, "0.0.0.0:8888".parse().unwrap());
        assert_eq!(s.proxy_listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(
            s.activation_key_file,
            PathBuf::from("/etc/ssq/activation.key")
        );
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/ssq"));
        assert_eq!(s.log_dir, PathBuf::from("/var/log/ssq"));
        let m = check("role: master\n").unwrap();
        assert_eq!(m.role, Role::Master);
    }

    #[test]
    fn relative_paths_resolve_against_file_dir() {
        let text = "activation_key_file: key\ndata_dir: ./data\nlog_dir: ../logs\n";
        let path = Path::new("/srv/node1/startup.yaml");
        let s = StartupFile::parse(text, path)
            .unwrap()
            .validate(text, path)
            .unwrap();
        assert_eq!(s.activation_key_file, PathBuf::from("/srv/node1/key"));
        assert_eq!(s.data_dir, PathBuf::from("/srv/node1/./data"));
        assert_eq!(s.log_dir, PathBuf::from("/srv/node1/../logs"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let msg = check("node: a\nproxy:\n  listen: \"0.0.0.0:1\"\nprxy: {}\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("/etc/ssq/startup.yaml:4:1: "), "{msg}");
        assert!(msg.contains("prxy"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let msg = check("portal:\n  listen: \"0.0.0.0:1\"\n  lisen: x\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("/etc/ssq/startup.yaml:3:"), "{msg}");
    }

    #[test]
    fn bad_port_names_line_and_field() {
        let msg = check("node: a\n\n\nproxy: { listen: \"0.0.0.0:99999\" }\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "/etc/ssq/startup.yaml:4: proxy.listen: \"0.0.0.0:99999\" is not IP:PORT (e.g. 0.0.0.0:8080): invalid port"
        );
        let msg = check("portal:\n  listen: localhost:80\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("/etc/ssq/startup.yaml:2: portal.listen:"),
            "{msg}"
        );
        assert!(msg.contains("not an IP"), "{msg}");
    }

    #[test]
    fn master_addresses() {
        let m: MasterAddr = "10.0.0.1".parse().unwrap();
        assert_eq!((m.host.as_str(), m.port), ("10.0.0.1", 8888));
        let m: MasterAddr = "[::1]:9000".parse().unwrap();
        assert_eq!((m.host.as_str(), m.port), ("::1", 9000));
        assert_eq!(m.to_string(), "[::1]:9000");
        let m: MasterAddr = "[fd00::1]".parse().unwrap();
        assert_eq!(m.to_string(), "[fd00::1]:8888");
        assert_eq!("master.lan:1".parse::<MasterAddr>().unwrap().port, 1);
        for bad in [
            "",
            ":8888",
            "h:0",
            "h:65536",
            "h:x",
            "h :1",
            "fd00::1:8888x",
            "[::1]x",
        ] {
            assert!(bad.parse::<MasterAddr>().is_err(), "{bad}");
        }
        let s = check("master: \"[fd00::1]\"\n").unwrap();
        assert_eq!(s.master.unwrap().to_string(), "[fd00::1]:8888");
    }

    #[test]
    fn role_conflicts() {
        let msg = check("master: 10.0.0.1\nrole: master\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.starts_with("/etc/ssq/startup.yaml:2: role: master conflicts"),
            "{msg}"
        );
        let msg = check("role: slave\n").unwrap_err().to_string();
        assert!(msg.contains("role: slave needs a master: line"), "{msg}");
        let msg = check("node: \"bad name\"\n").unwrap_err().to_string();
        assert!(msg.starts_with("/etc/ssq/startup.yaml:1: node:"), "{msg}");
        let msg = check("portal: { cert: c.pem }\n").unwrap_err().to_string();
        assert!(msg.contains("portal.cert") && msg.contains("key"), "{msg}");
        assert!(check("sync: { never: [\"\"] }\n").is_err());
        assert!(check("source_address: nope\n").is_err());
    }

    #[test]
    fn missing_key_file_gives_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("startup.yaml");
        std::fs::write(&path, "node: n1\nactivation_key_file: act.key\n").unwrap();
        let msg = load(&path).unwrap_err().to_string();
        let key = dir.path().join("act.key");
        assert!(msg.contains(&format!("{}:2:", path.display())), "{msg}");
        assert!(msg.contains(&key.display().to_string()), "{msg}");
        assert!(msg.contains("ssq key new --out"), "{msg}");
        std::fs::write(&key, [7u8; 32]).unwrap();
        let (s, text) = load(&path).unwrap();
        assert_eq!(s.node, "n1");
        assert!(text.contains("act.key"));
        let msg = load(&dir.path().join("nope.yaml")).unwrap_err().to_string();
        assert!(msg.contains("nope.yaml"), "{msg}");
    }

    #[test]
    fn remote_edit_and_restart() {
        let a = check(FULL).unwrap();
        let mut b = a.clone();
        b.path = PathBuf::from("/elsewhere");
        assert!(!restart_needed(&a, &b));
        b.node = "slave-2".into();
        assert!(restart_needed(&a, &b));
        assert!(check_remote_edit(&a, &b).is_ok());
        b.log_dir = PathBuf::from("/tmp");
        let msg = check_remote_edit(&a, &b).unwrap_err().to_string();
        assert!(msg.starts_with("log_dir "), "{msg}");
    }
}
