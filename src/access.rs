//! The access restriction (`data_dir/access.yaml`): which source addresses may call a
//! node's portal, for `sync` and for `config`. With authentication on, the first enabled
//! allow-list entry matching an address decides. Also the lock-out guard that every write
//! of the list passes through.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::yamlpos;

/// How a good address looks, for error messages.
const ADDRESS_EXAMPLES: &str =
    "use an IP (10.0.0.5), a CIDR (10.0.0.0/24) or a range (10.0.0.5-10.0.0.9)";

/// Errors parsing, loading, saving or changing the access list.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// An address is not an IP, CIDR or range.
    #[error("\"{input}\" is not an address: {reason}")]
    BadAddress {
        /// The text as given.
        input: String,
        /// What is wrong, with examples of good values.
        reason: String,
    },
    /// An access kind is not `sync` or `config`.
    #[error("\"{input}\" is not an access kind: use sync, config or sync,config")]
    BadAccess {
        /// The text as given.
        input: String,
    },
    /// The YAML text is not an access list.
    #[error("{}: {message}", at(.path.as_deref(), *.line, *.column))]
    Parse {
        /// The file, when parsed from one.
        path: Option<PathBuf>,
        /// 1-based line, if known.
        line: Option<usize>,
        /// 1-based column, if known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file could not be written.
    #[error("cannot write {}: {source}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The change would shut out the address the request comes from.
    #[error("this change would shut out {address}, the address this request comes from ({reason}); add an entry for it first, or repeat with --force")]
    LockOut {
        /// The request's source address.
        address: IpAddr,
        /// Why the new list refuses it.
        reason: String,
    },
}

/// `path:line:col` or `line:col`, leaving out what is unknown.
fn at(path: Option<&Path>, line: Option<usize>, column: Option<usize>) -> String {
    let pos = match (line, column) {
        (Some(l), Some(c)) => format!("{l}:{c}"),
        (Some(l), None) => l.to_string(),
        _ => String::new(),
    };
    match (path, pos.is_empty()) {
        (Some(p), true) => p.display().to_string(),
        (Some(p), false) => format!("{}:{pos}", p.display()),
        (None, true) => "access list".to_string(),
        (None, false) => pos,
    }
}

/// What a portal endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Watch, ack and report ingest (slave → master).
    Sync,
    /// Every other endpoint (operators).
    Config,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Sync => "sync",
            Access::Config => "config",
        })
    }
}

impl FromStr for Access {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "sync" => Ok(Access::Sync),
            "config" => Ok(Access::Config),
            _ => Err(AccessError::BadAccess {
                input: s.to_string(),
            }),
        }
    }
}

/// Parses `sync,config` (comma-separated, duplicates dropped, order kept).
pub fn parse_access_list(s: &str) -> Result<Vec<Access>, AccessError> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let a: Access = part.parse().map_err(|_| AccessError::BadAccess {
            input: s.to_string(),
        })?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

/// An allow-list address: one IP, a CIDR block or an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSpec {
    /// One address.
    Ip(IpAddr),
    /// A block, kept as written (host bits are ignored when matching).
    Cidr {
        /// The network address as written.
        net: IpAddr,
        /// Prefix length.
        prefix: u8,
    },
    /// An inclusive range of one family.
    Range {
        /// Lowest address.
        from: IpAddr,
        /// Highest address.
        to: IpAddr,
    },
}

/// IPv4-mapped IPv6 addresses as IPv4, everything else unchanged.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address as a number, with its width in bits.
fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

impl AddressSpec {
    /// True when `ip` is in this spec; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        match *self {
            AddressSpec::Ip(a) => unmap(a) == ip,
            AddressSpec::Cidr { net, prefix } => {
                let (mut net, mut prefix) = (net, prefix);
                if let IpAddr::V6(v6) = net {
                    if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                        net = IpAddr::V4(v4);
                        prefix -= 96;
                    }
                }
                let ((n, width), (a, width_a)) = (bits(net), bits(ip));
                if width != width_a || prefix > width {
                    return false;
                }
                let shift = u32::from(width - prefix);
                shift >= 128 || (n >> shift) == (a >> shift)
            }
            AddressSpec::Range { from, to } => {
                let ((f, wf), (t, wt), (a, wa)) = (bits(unmap(from)), bits(unmap(to)), bits(ip));
                wf == wa && wt == wa && f <= a && a <= t
            }
        }
    }
}

impl fmt::Display for AddressSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressSpec::Ip(ip) => write!(f, "{ip}"),
            AddressSpec::Cidr { net, prefix } => write!(f, "{net}/{prefix}"),
            AddressSpec::Range { from, to } => write!(f, "{from}-{to}"),
        }
    }
}

impl FromStr for AddressSpec {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| AccessError::BadAddress {
            input: s.to_string(),
            reason,
        };
        let ip = |t: &str| {
            t.trim()
                .parse::<IpAddr>()
                .map_err(|_| bad(ADDRESS_EXAMPLES.to_string()))
        };
        let t = s.trim();
        if let Some((net, prefix)) = t.split_once('/') {
            let net = ip(net)?;
            let max = if net.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix.trim().parse().map_err(|_| {
                bad(format!(
                    "the prefix after / must be a number 0-{max} (e.g. 10.0.0.0/24)"
                ))
            })?;
            if prefix > max {
                return Err(bad(format!(
                    "prefix /{prefix} is too long for an IPv{} address (at most /{max})",
                    if max == 32 { 4 } else { 6 }
                )));
            }
            Ok(AddressSpec::Cidr { net, prefix })
        } else if let Some((from, to)) = t.split_once('-') {
            let (from, to) = (ip(from)?, ip(to)?);
            if from.is_ipv4() != to.is_ipv4() {
                return Err(bad(format!(
                    "a range cannot mix IPv4 and IPv6 ({from} and {to})"
                )));
            }
            if bits(from).0 > bits(to).0 {
                return Err(bad(format!(
                    "the range starts after it ends; write the lower address first ({to}-{from})"
                )));
            }
            Ok(AddressSpec::Range { from, to })
        } else {
            Ok(AddressSpec::Ip(ip(t)?))
        }
    }
}

impl Serialize for AddressSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddressSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `true`, for serde defaults.
fn yes() -> bool {
    true
}

/// One allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowEntry {
    /// The addresses this entry covers.
    pub address: AddressSpec,
    /// What it grants.
    #[serde(default)]
    pub access: Vec<Access>,
    /// A note for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// A disabled entry is skipped when matching.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl AllowEntry {
    /// True when the entry grants `need`.
    pub fn grants(&self, need: Access) -> bool {
        self.access.contains(&need)
    }
}

/// What [`AccessList::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddOutcome {
    /// A new entry was appended.
    Added,
    /// An identical entry was there already; nothing changed.
    AlreadyPresent,
    /// The entry for the same address was changed in place.
    Updated,
}

/// The access restriction of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessList {
    /// On: only allow-listed addresses are admitted. Written as `on`/`off`.
    #[serde(serialize_with = "ser_on_off", deserialize_with = "de_on_off")]
    pub authentication: bool,
    /// Ordered entries; the first enabled match decides.
    pub allow: Vec<AllowEntry>,
}

/// Writes a bool as `on`/`off`.
fn ser_on_off<S: Serializer>(v: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *v { "on" } else { "off" })
}

/// Reads on/off, true/false or yes/no.
fn de_on_off<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("on or off")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            match v.to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" => Ok(true),
                "off" | "false" | "no" => Ok(false),
                _ => Err(E::custom(format!(
                    "authentication: \"{v}\" is not on or off"
                ))),
            }
        }
    }
    d.deserialize_any(V)
}

impl AccessList {
    /// Parses access.yaml text; an empty text is the default list. Errors give line:col.
    pub fn parse(text: &str) -> Result<Self, AccessError> {
        serde_saphyr::from_str::<Option<AccessList>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                let (line, column, message) = yamlpos::saphyr_error(&e);
                AccessError::Parse {
                    path: None,
                    line,
                    column,
                    message,
                }
            })
    }

    /// The list as YAML, one flow-style line per entry.
    pub fn to_yaml(&self) -> String {
        let mut out = format!(
            "authentication: {}\n",
            if self.authentication { "on" } else { "off" }
        );
        if self.allow.is_empty() {
            out.push_str("allow: []\n");
            return out;
        }
        out.push_str("allow:\n");
        for e in &self.allow {
            let addr = e.address.to_string();
            let addr = if addr.contains(':') {
                yamlpos::double_quoted(&addr)
            } else {
                addr
            };
            let access: Vec<String> = e.access.iter().map(ToString::to_string).collect();
            out.push_str(&format!(
                "  - {{ address: {addr}, access: [{}]",
                access.join(", ")
            ));
            if let Some(c) = &e.comment {
                out.push_str(&format!(", comment: {}", yamlpos::double_quoted(c)));
            }
            out.push_str(&format!(", enabled: {} }}\n", e.enabled));
        }
        out
    }

    /// Reads the list from `path`; a missing file is the default (off, empty).
    pub fn load(path: &Path) -> Result<Self, AccessError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(AccessError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(&text).map_err(|e| match e {
            AccessError::Parse {
                line,
                column,
                message,
                ..
            } => AccessError::Parse {
                path: Some(path.to_path_buf()),
                line,
                column,
                message,
            },
            other => other,
        })
    }

    /// Writes the list to `path` atomically (temp file, fsync, rename, fsync dir), mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), AccessError> {
        use std::os::unix::fs::OpenOptionsExt;
        let werr = |p: &Path| {
            let p = p.to_path_buf();
            move |source| AccessError::Write { path: p, source }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "access.yaml".to_string());
        let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.to_yaml().as_bytes())?;
            f.sync_all()
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(werr(&tmp)(e));
        }
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(werr(path)(e));
        }
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(werr(&dir))
    }

    /// The first enabled entry containing `ip`, with its index.
    pub fn first_match(&self, ip: IpAddr) -> Option<(usize, &AllowEntry)> {
        self.allow
            .iter()
            .enumerate()
            .find(|(_, e)| e.enabled && e.address.contains(ip))
    }

    /// True when a request from `ip` needing `need` is admitted: always with
    /// authentication off, else when the first enabled match grants `need`.
    pub fn admits(&self, ip: IpAddr, need: Access) -> bool {
        !self.authentication || self.first_match(ip).is_some_and(|(_, e)| e.grants(need))
    }

    /// Adds `entry`, or updates the entry for the same address in place. A missing
    /// comment keeps the existing entry's comment.
    pub fn add(&mut self, entry: AllowEntry) -> AddOutcome {
        let Some(old) = self.allow.iter_mut().find(|e| e.address == entry.address) else {
            self.allow.push(entry);
            return AddOutcome::Added;
        };
        let mut new = entry;
        if new.comment.is_none() {
            new.comment.clone_from(&old.comment);
        }
        let same_access = new.access.len() == old.access.len()
            && new.access.iter().all(|a| old.access.contains(a));
        if same_access && new.comment == old.comment && new.enabled == old.enabled {
            return AddOutcome::AlreadyPresent;
        }
        *old = new;
        AddOutcome::Updated
    }

    /// Removes every entry for `address`; true when one was there.
    pub fn remove(&mut self, address: &AddressSpec) -> bool {
        let before = self.allow.len();
        self.allow.retain(|e| e.address != *address);
        self.allow.len() != before
    }
}

/// The lock-out guard: refuses a new list that would not admit `from` (the request's
/// source address) for config. `None` (the admin socket) is never refused.
pub fn lockout(new: &AccessList, from: Option<IpAddr>) -> Result<(), AccessError> {
    let Some(ip) = from else { return Ok(()) };
    if new.admits(ip, Access::Config) {
        return Ok(());
    }
    let reason = match new.first_match(ip) {
        Some((i, e)) => format!(
            "its first enabled match, entry {} ({}), does not grant config",
            i + 1,
            e.address
        ),
        None => "no enabled allow-list entry grants it config".to_string(),
    };
    Err(AccessError::LockOut {
        address: ip,
        reason,
    })
}

/// Names of the slaves `old` admitted for sync and `new` does not.
pub fn sync_lost(old: &AccessList, new: &AccessList, slaves: &[(String, IpAddr)]) -> Vec<String> {
    slaves
        .iter()
        .filter(|(_, ip)| old.admits(*ip, Access::Sync) && !new.admits(*ip, Access::Sync))
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn spec(s: &str) -> AddressSpec {
        s.parse().unwrap()
    }
    fn entry(addr: &str, access: &str) -> AllowEntry {
        AllowEntry {
            address: spec(addr),
            access: parse_access_list(access).unwrap(),
            comment: None,
            enabled: true,
        }
    }

    const SAMPLE: &str = "authentication: on   # on | off\nallow:\n  - { address: 127.0.0.3, access: [config], comment: \"ops laptop\", enabled: true }\n  - { address: 10.0.0.0/8, access: [sync, config] }\n  - { address: 10.1.0.1-10.1.0.9, access: [sync] }\n";

    #[test]
    fn matching_v4_and_v6() {
        assert!(spec("10.0.0.5").contains(ip("10.0.0.5")));
        assert!(!spec("10.0.0.5").contains(ip("10.0.0.6")));
        assert!(spec("10.0.0.0/8").contains(ip("10.255.1.2")));
        assert!(!spec("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(spec("10.0.0.7/24").contains(ip("10.0.0.200")));
        assert!(spec("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!spec("0.0.0.0/0").contains(ip("::1")));
        assert!(spec("10.1.0.1-10.1.0.9").contains(ip("10.1.0.9")));
        assert!(!spec("10.1.0.1-10.1.0.9").contains(ip("10.1.0.10")));
        assert!(spec("fd00::/8").contains(ip("fd12::1")));
        assert!(!spec("fd00::/8").contains(ip("fe80::1")));
        assert!(spec("::1-::5").contains(ip("::3")));
        assert!(spec("::/0").contains(ip("2001:db8::1")));
        assert!(spec("10.0.0.0/8").contains(ip("::ffff:10.2.3.4")));
        assert!(spec("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")));
        assert_eq!(
            spec(" 10.0.0.1 - 10.0.0.2 ").to_string(),
            "10.0.0.1-10.0.0.2"
        );
    }

    #[test]
    fn bad_addresses_are_explained() {
        let msg = "10.0.0.300".parse::<AddressSpec>().unwrap_err().to_string();
        assert_eq!(msg, "\"10.0.0.300\" is not an address: use an IP (10.0.0.5), a CIDR (10.0.0.0/24) or a range (10.0.0.5-10.0.0.9)");
        let msg = "10.0.0.0/33"
            .parse::<AddressSpec>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("too long"), "{msg}");
        let msg = "10.0.0.9-10.0.0.5"
            .parse::<AddressSpec>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("10.0.0.5-10.0.0.9"), "{msg}");
        let msg = "10.0.0.1-::1"
            .parse::<AddressSpec>()
            .unwrap_err()
            .to_string();
        assert!(msg.contains("mix"), "{msg}");
        assert!("".parse::<AddressSpec>().is_err());
        assert!(parse_access_list("sync,admin").is_err());
        assert_eq!(
            parse_access_list("sync, config,sync").unwrap(),
            vec![Access::Sync, Access::Config]
        );
        let msg = AccessList::parse("allow:\n  - { address: 1.2.3.999, access: [sync] }\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("2:") && msg.contains("1.2.3.999"), "{msg}");
    }

    #[test]
    fn first_enabled_match_decides() {
        let mut list = AccessList::parse(SAMPLE).unwrap();
        assert!(list.authentication);
        assert!(list.admits(ip("127.0.0.3"), Access::Config));
        assert!(!list.admits(ip("127.0.0.3"), Access::Sync));
        assert!(!list.admits(ip("127.0.0.4"), Access::Config));
        // 10.1.0.5 first matches 10.0.0.0/8.
        assert!(list.admits(ip("10.1.0.5"), Access::Config));
        list.allow.swap(1, 2);
        assert!(list.admits(ip("10.1.0.5"), Access::Sync));
        assert!(!list.admits(ip("10.1.0.5"), Access::Config));
        list.allow[1].enabled = false;
        assert!(list.admits(ip("10.1.0.5"), Access::Config));
        assert_eq!(list.first_match(ip("10.1.0.5")).unwrap().0, 2);
        list.authentication = false;
        assert!(list.admits(ip("8.8.8.8"), Access::Config));
        assert!(AccessList::default().admits(ip("8.8.8.8"), Access::Sync));
    }

    #[test]
    fn round_trip() {
        let list = AccessList::parse(SAMPLE).unwrap();
        assert_eq!(list.allow[0].comment.as_deref(), Some("ops laptop"));
        assert!(list.allow[1].enabled);
        let mut list2 = list.clone();
        list2.add(AllowEntry {
            comment: Some("say \"hi\": #1".into()),
            ..entry("fd00::1-fd00::9", "sync")
        });
        list2.allow[0].enabled = false;
        let text = list2.to_yaml();
        assert!(text.starts_with("authentication: on\n"), "{text}");
        assert_eq!(AccessList::parse(&text).unwrap(), list2);
        let off = AccessList::default();
        assert_eq!(off.to_yaml(), "authentication: off\nallow: []\n");
        assert_eq!(AccessList::parse(&off.to_yaml()).unwrap(), off);
        for (t, v) in [
            ("true", true),
            ("false", false),
            ("yes", true),
            ("off", false),
            ("ON", true),
        ] {
            let l = AccessList::parse(&format!("authentication: {t}\n")).unwrap();
            assert_eq!(l.authentication, v, "{t}");
        }
        assert!(AccessList::parse("authentication: maybe\n").is_err());
        assert!(AccessList::parse("").unwrap() == AccessList::default());
        let msg = AccessList::parse("authentication: off\nallowed: []\n")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("2:1: ") && msg.contains("allowed"), "{msg}");
    }

    #[test]
    fn add_update_remove() {
        let mut list = AccessList::default();
        assert_eq!(list.add(entry("10.0.0.1", "sync")), AddOutcome::Added);
        assert_eq!(
            list.add(entry("10.0.0.1", "sync")),
            AddOutcome::AlreadyPresent
        );
        assert_eq!(
            list.add(entry("10.0.0.1", "config,sync")),
            AddOutcome::Updated
        );
        assert_eq!(list.allow.len(), 1);
        assert_eq!(list.allow[0].access, vec![Access::Config, Access::Sync]);
        assert_eq!(
            list.add(entry("10.0.0.1", "sync,config")),
            AddOutcome::AlreadyPresent
        );
        let commented = AllowEntry {
            comment: Some("x".into()),
            ..entry("10.0.0.1", "sync,config")
        };
        assert_eq!(list.add(commented), AddOutcome::Updated);
        assert_eq!(
            list.add(entry("10.0.0.1", "sync,config")),
            AddOutcome::AlreadyPresent
        );
        assert_eq!(list.allow[0].comment.as_deref(), Some("x"));
        assert!(list.remove(&spec("10.0.0.1")));
        assert!(!list.remove(&spec("10.0.0.1")));
        assert!(list.allow.is_empty());
    }

    #[test]
    fn lockout_guard() {
        let mut list = AccessList::parse(SAMPLE).unwrap();
        assert!(lockout(&list, Some(ip("127.0.0.3"))).is_ok());
        assert!(lockout(&list, None).is_ok());
        let msg = lockout(&list, Some(ip("127.0.0.4")))
            .unwrap_err()
            .to_string();
        assert_eq!(msg, "this change would shut out 127.0.0.4, the address this request comes from (no enabled allow-list entry grants it config); add an entry for it first, or repeat with --force");
        list.allow.swap(1, 2);
        let err = lockout(&list, Some(ip("10.1.0.2"))).unwrap_err();
        assert!(matches!(err, AccessError::LockOut { address, .. } if address == ip("10.1.0.2")));
        list.authentication = false;
        assert!(lockout(&list, Some(ip("10.1.0.2"))).is_ok());
    }

    #[test]
    fn sync_loss_is_reported() {
        let old = AccessList::parse(SAMPLE).unwrap();
        let mut new = old.clone();
        new.remove(&spec("10.0.0.0/8"));
        let slaves = vec![
            ("s1".to_string(), ip("10.2.0.1")),
            ("s2".to_string(), ip("10.1.0.2")),
            ("s3".to_string(), ip("192.168.0.1")),
        ];
        assert_eq!(sync_lost(&old, &new, &slaves), vec!["s1".to_string()]);
    }

    #[test]
    fn save_and_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.yaml");
        assert_eq!(AccessList::load(&path).unwrap(), AccessList::default());
        let list = AccessList::parse(SAMPLE).unwrap();
        list.save(&path).unwrap();
        assert_eq!(AccessList::load(&path).unwrap(), list);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, "allow: 3\n").unwrap();
        let msg = AccessList::load(&path).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("{}:1:", path.display())), "{msg}");
    }
}
