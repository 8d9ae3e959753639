//! The operator's inventory (`ssq.yaml`): the cluster's nodes (master and slaves) with
//! their portal addresses, SSH logins and pinned fingerprints, and where the operator's
//! keys live. Paths in it are relative to the inventory's folder; `~/` means $HOME.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::yamlpos;

/// Errors loading the inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("cannot read inventory {}: {source}", .path.display())]
    Read {
        /// The inventory file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid inventory.
    #[error("{}: {message}", at(.path, *.line, *.column))]
    Parse {
        /// The inventory file.
        path: PathBuf,
        /// 1-based line, if known.
        line: Option<usize>,
        /// 1-based column, if known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A path starts with `~/` but $HOME is not set.
    #[error("{}: {field}: \"{value}\" starts with ~ but HOME is not set; give an absolute path", at(.path, *.line, None))]
    NoHome {
        /// The inventory file.
        path: PathBuf,
        /// 1-based line of the field, if found.
        line: Option<usize>,
        /// The field (`ssh.key`).
        field: String,
        /// The path as written.
        value: String,
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

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's name (its `node:` in startup.yaml).
    pub name: String,
    /// Its portal, `HOST:PORT`.
    pub address: String,
    /// SSH destination (`root@10.0.0.11`), for `--via ssh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    /// Where its startup.yaml lives on the node (default /etc/ssq/startup.yaml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Its portal certificate's expected fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl NodeEntry {
    /// The host part of `address` (without port or IPv6 brackets).
    fn host(&self) -> &str {
        let a = self.address.as_str();
        if let Some(rest) = a.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        match a.rsplit_once(':') {
            Some((h, _)) if !h.contains(':') => h,
            _ => a,
        }
    }
}

/// The `ssh:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    /// Private key for SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// known_hosts file for SSH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
}

/// The inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    /// The cluster's activation key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The operator's signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_key: Option<PathBuf>,
    /// Pinned node fingerprints (default SSQ_HOME/known_nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_nodes: Option<PathBuf>,
    /// The master.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<NodeEntry>,
    /// The slaves.
    #[serde(default)]
    pub slaves: Vec<NodeEntry>,
    /// SSH settings for `--via ssh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshSection>,
    /// The ssq binary on the nodes, for `--via ssh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssq_path: Option<String>,
}

impl Inventory {
    /// Reads `path`, parses it and resolves its paths (`~/` with $HOME, relative ones
    /// against the inventory's folder).
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        Self::parse(&text, path, home.as_deref())
    }

    /// Parses inventory text read from `path` and resolves its paths, with `home` for `~/`.
    pub fn parse(text: &str, path: &Path, home: Option<&Path>) -> Result<Self, InventoryError> {
        let mut inv = serde_saphyr::from_str::<Option<Inventory>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                let (line, column, message) = yamlpos::saphyr_error(&e);
                InventoryError::Parse {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message,
                }
            })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let resolve = |field: &str, p: &mut Option<PathBuf>| -> Result<(), InventoryError> {
            let Some(value) = p.take() else { return Ok(()) };
            let resolved = match value.strip_prefix("~") {
                Ok(rest) => match home {
                    Some(h) => h.join(rest),
                    None => {
                        return Err(InventoryError::NoHome {
                            path: path.to_path_buf(),
                            line: yamlpos::line_of_key(text, field),
                            field: field.to_string(),
                            value: value.display().to_string(),
                        })
                    }
                },
                Err(_) => base.join(&value),
            };
            *p = Some(resolved);
            Ok(())
        };
        resolve("key_file", &mut inv.key_file)?;
        resolve("operator_key", &mut inv.operator_key)?;
        resolve("known_nodes", &mut inv.known_nodes)?;
        if let Some(ssh) = inv.ssh.as_mut() {
            resolve("ssh.key", &mut ssh.key)?;
            resolve("ssh.known_hosts", &mut ssh.known_hosts)?;
        }
        Ok(inv)
    }

    /// Every node: the master first, then the slaves in order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeEntry> {
        self.master.iter().chain(self.slaves.iter())
    }

    /// The master or a slave whose name or address is `name_or_addr`; an address
    /// without its port matches too when nothing matches exactly.
    pub fn find(&self, name_or_addr: &str) -> Option<&NodeEntry> {
        self.nodes()
            .find(|n| n.name == name_or_addr || n.address == name_or_addr)
            .or_else(|| self.nodes().find(|n| n.host() == name_or_addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "key_file: ./activation.key          # the cluster's activation key
operator_key: ~/.config/ssq/operator.key
known_nodes: known_nodes
master: { name: master, address: 10.0.0.1:8888, ssh: root@10.0.0.1, config: /etc/ssq/startup.yaml }
slaves:
  - { name: slave-1, address: 10.0.0.11:8888, ssh: root@10.0.0.11 }
  - name: slave-2
    address: \"[fd00::12]:8888\"
    fingerprint: SHA256:abc
ssh: { key: ~/.ssh/id_ed25519, known_hosts: /etc/ssh/known_hosts }
ssq_path: ssq
";

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        Inventory::parse(
            text,
            Path::new("/ops/cluster/ssq.yaml"),
            Some(Path::new("/home/op")),
        )
    }

    #[test]
    fn full_sample_parses_and_resolves() {
        let inv = parse(SAMPLE).unwrap();
        assert_eq!(
            inv.key_file,
            Some(PathBuf::from("/ops/cluster/./activation.key"))
        );
        assert_eq!(
            inv.operator_key,
            Some(PathBuf::from("/home/op/.config/ssq/operator.key"))
        );
        assert_eq!(
            inv.known_nodes,
            Some(PathBuf::from("/ops/cluster/known_nodes"))
        );
        let ssh = inv.ssh.as_ref().unwrap();
        assert_eq!(ssh.key, Some(PathBuf::from("/home/op/.ssh/id_ed25519")));
        assert_eq!(ssh.known_hosts, Some(PathBuf::from("/etc/ssh/known_hosts")));
        let master = inv.master.as_ref().unwrap();
        assert_eq!(master.config.as_deref(), Some("/etc/ssq/startup.yaml"));
        assert_eq!(inv.slaves.len(), 2);
        assert_eq!(inv.slaves[1].fingerprint.as_deref(), Some("SHA256:abc"));
        assert_eq!(inv.ssq_path.as_deref(), Some("ssq"));
        assert_eq!(parse("").unwrap(), Inventory::default());
    }

    #[test]
    fn tilde_without_home_is_an_error() {
        let err = Inventory::parse(SAMPLE, Path::new("ssq.yaml"), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("ssq.yaml:2: operator_key:"), "{msg}");
    }

    #[test]
    fn find_by_name_or_address() {
        let inv = parse(SAMPLE).unwrap();
        assert_eq!(inv.find("master").unwrap().address, "10.0.0.1:8888");
        assert_eq!(inv.find("10.0.0.11:8888").unwrap().name, "slave-1");
        assert_eq!(inv.find("10.0.0.11").unwrap().name, "slave-1");
        assert_eq!(inv.find("fd00::12").unwrap().name, "slave-2");
        assert_eq!(inv.find("slave-2").unwrap().name, "slave-2");
        assert!(inv.find("slave-3").is_none());
        assert_eq!(inv.nodes().count(), 3);
    }

    #[test]
    fn unknown_field_names_file_and_line() {
        let text = "master: { name: m, address: a:1 }\nslaves:\n  - name: s\n    address: b:1\n    adress: c\n";
        let msg = parse(text).unwrap_err().to_string();
        assert!(msg.starts_with("/ops/cluster/ssq.yaml:5:"), "{msg}");
        assert!(msg.contains("adress"), "{msg}");
    }

    #[test]
    fn load_reads_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ssq.yaml");
        std::fs::write(&path, "key_file: k\n").unwrap();
        let inv = Inventory::load(&path).unwrap();
        assert_eq!(inv.key_file, Some(dir.path().join("k")));
        let msg = Inventory::load(&dir.path().join("none.yaml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("none.yaml"), "{msg}");
    }
}
