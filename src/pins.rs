//! `known_nodes`: the certificate fingerprints the CLI has pinned, one node a line:
//! `ADDRESS FINGERPRINT [NODE]` (like SSH's known_hosts). A node is pinned on first
//! contact; a changed certificate is refused until `ssq node trust NODE` accepts it.

use std::path::{Path, PathBuf};

use crate::nodeconf::{write_atomic, ConfError};

/// One pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `host:port` as dialed.
    pub address: String,
    /// `sha256:<hex>`.
    pub fingerprint: String,
    /// The node's name, when known.
    pub node: Option<String>,
}

/// The pins of one known_nodes file.
#[derive(Debug, Clone, Default)]
pub struct KnownNodes {
    /// Where they are kept.
    path: PathBuf,
    /// The pins, in file order.
    pins: Vec<Pin>,
}

impl KnownNodes {
    /// Read the file (absent: empty). Lines that do not parse are skipped.
    ///
    /// # Errors
    /// The OS error when the file exists but cannot be read.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let pins = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .filter_map(|l| {
                let mut p = l.split_whitespace();
                Some(Pin {
                    address: p.next()?.to_string(),
                    fingerprint: p.next()?.to_string(),
                    node: p.next().map(str::to_string),
                })
            })
            .collect();
        Ok(KnownNodes {
            path: path.to_path_buf(),
            pins,
        })
    }

    /// The pin for an address.
    pub fn get(&self, address: &str) -> Option<&Pin> {
        self.pins.iter().find(|p| p.address == address)
    }

    /// Set (add or replace) the pin of an address, and save.
    ///
    /// # Errors
    /// `ConfError::Io` when the file cannot be written.
    pub fn set(&mut self, pin: Pin) -> Result<(), ConfError> {
        // Another ssq may pin another node at the same moment: under the lock, start from
        // the file as it is now, so neither pin is lost.
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ConfError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        }
        let _lock = crate::nodeconf::FileLock::take(Path::new(&lock_path))?;
        if let Ok(now) = Self::load(&self.path) {
            self.pins = now.pins;
        }
        match self.pins.iter_mut().find(|p| p.address == pin.address) {
            Some(p) => *p = pin,
            None => self.pins.push(pin),
        }
        let mut text = String::from("# ssq known_nodes: ADDRESS FINGERPRINT [NODE]\n");
        for p in &self.pins {
            text.push_str(&format!(
                "{} {}{}\n",
                p.address,
                p.fingerprint,
                p.node.as_ref().map(|n| format!(" {n}")).unwrap_or_default()
            ));
        }
        write_atomic(&self.path, text.as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_find_persist() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/known_nodes");
        let mut k = KnownNodes::load(&path).unwrap();
        assert!(k.get("a:1").is_none());
        k.set(Pin {
            address: "a:1".into(),
            fingerprint: "sha256:00".into(),
            node: Some("m".into()),
        })
        .unwrap();
        k.set(Pin {
            address: "a:1".into(),
            fingerprint: "sha256:11".into(),
            node: Some("m".into()),
        })
        .unwrap();
        let again = KnownNodes::load(&path).unwrap();
        assert_eq!(again.get("a:1").unwrap().fingerprint, "sha256:11");
        assert_eq!(again.get("a:1").unwrap().node.as_deref(), Some("m"));
    }

    /// Writers that loaded the file before each other's changes lose nothing (the
    /// `ssq verify` of many slaves, or two ssq processes, pinning at the same moment).
    #[test]
    fn concurrent_pins_are_all_kept() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("known_nodes");
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let mut k = KnownNodes::load(&path).unwrap();
                        k.set(Pin {
                            address: format!("10.0.{t}.{i}:8888"),
                            fingerprint: format!("sha256:{t}{i}"),
                            node: None,
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let k = KnownNodes::load(&path).unwrap();
        for t in 0..4 {
            for i in 0..25 {
                assert!(
                    k.get(&format!("10.0.{t}.{i}:8888")).is_some(),
                    "lost 10.0.{t}.{i}"
                );
            }
        }
    }
}
