//! The master's policy revision store, and the slave's last good policy.
//!
//! # On-disk layout (the master's `data_dir/policy/`)
//!
//! ```text
//! store.json                      {"store_id": "<32 hex>"}, written once with the store
//! revisions/000000000001.yaml     the text of revision 1, as the operator wrote it
//! revisions/000000000001.json     its RevisionInfo (signed)
//! revisions/.NAME.XXXX.tmp        a leftover of an interrupted atomic write (ignored)
//! ```
//!
//! On a slave, `last_good.json` (in the directory the caller chooses) holds the last
//! applied `PolicyDoc` plus the text of its local (`sync.never`) sections.
//!
//! # Invariants
//!
//! - The store_id never changes once created; every revision carries it.
//! - Revisions only ever grow, also across restarts: a new one is the latest + 1, and a
//!   rollback is a new revision with old content.
//! - Every file is written with [`write_atomic`] (temp file, fsync, rename, fsync dir);
//!   a revision's `.yaml` is written before its `.json`, so a revision exists once its
//!   `.json` does. A `.yaml` without `.json` right after the latest revision is the trace
//!   of an interrupted commit and is ignored (the next commit overwrites it).
//! - On load, every revision's text is parsed again and must hash (canonical sha256, and
//!   per section) to what its info says; anything else fails `open` naming the file, as
//!   does any unexpected file in `revisions/`. The same check guards `last_good.json`.
//! - Unchanged content (same canonical sha256 as the latest) makes no new revision.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{hex, random_bytes, PublicKey, SigningKey};
use crate::nodeconf::{write_atomic, ConfError};
use crate::policy::{canonical_sha256, parse, section_hashes, Policy};
use crate::syncapi::{revision_message, PolicyDoc, RevisionInfo};

/// The slave's last good policy file name.
pub const LAST_GOOD_FILE: &str = "last_good.json";

/// Errors of the policy store and of the last good policy.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored file is damaged or does not belong here.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No such revision.
    #[error("policy revision {revision} does not exist ({})", range_text(*.range))]
    NotFound {
        /// The revision asked for.
        revision: u64,
        /// The first and last revision stored, if any.
        range: Option<(u64, u64)>,
    },
    /// The text given to `commit` does not hash like the policy given with it.
    #[error("the policy text does not match the parsed policy given with it: {0}")]
    Mismatch(String),
    /// Anything else (the random source, a write refused for another reason).
    #[error("{0}")]
    Other(String),
}

/// `revisions 1 to 7 exist` or `no revision exists yet`.
fn range_text(range: Option<(u64, u64)>) -> String {
    match range {
        Some((a, b)) if a == b => format!("only revision {a} exists"),
        Some((a, b)) => format!("revisions {a} to {b} exist"),
        None => "no revision exists yet".to_string(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `write_atomic`, with its error as a `StoreError`.
fn write_file(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    write_atomic(path, data, 0o644).map_err(|e| match e {
        ConfError::Io { path, source } => StoreError::Io { path, source },
        other => StoreError::Other(other.to_string()),
    })
}

/// The content of `store.json`.
#[derive(Debug, Serialize, Deserialize)]
struct StoreFile {
    store_id: String,
}

/// What [`PolicyStore::commit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The new revision, or the unchanged latest one.
    pub info: RevisionInfo,
    /// False when the content equals the latest revision's (nothing written).
    pub changed: bool,
    /// Sections added, removed or changed against the previous revision.
    pub changed_sections: Vec<String>,
}

/// The master's revisions, persisted in one directory. Not shared between processes;
/// within one, wrap it in a lock (`commit` takes `&mut self`).
#[derive(Debug)]
pub struct PolicyStore {
    /// The store directory (`data_dir/policy`).
    dir: PathBuf,
    /// Created once with the store.
    store_id: String,
    /// Every revision, oldest first.
    index: Vec<RevisionInfo>,
    /// The latest revision's text (the watch serves it often).
    latest_text: String,
}

impl PolicyStore {
    /// Open the store in `dir`, creating it (and its store_id) if there is none, and load
    /// the revision index, checking every revision's text against its info.
    ///
    /// # Errors
    /// `Io` when a directory cannot be created or read; `Corrupt` naming the file when
    /// `store.json` or a revision is damaged, mis-hashed, from another store, or missing
    /// half of its pair.
    pub fn open(dir: &Path) -> Result<PolicyStore, StoreError> {
        let revdir = dir.join("revisions");
        std::fs::create_dir_all(&revdir).map_err(io(&revdir))?;
        let store_id = load_or_create_id(&dir.join("store.json"))?;
        let mut numbers = BTreeMap::<u64, (bool, bool)>::new();
        for entry in std::fs::read_dir(&revdir).map_err(io(&revdir))? {
            let entry = entry.map_err(io(&revdir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') && name.ends_with(".tmp") {
                continue;
            }
            let (stem, ext) = name.split_once('.').unwrap_or((&name, ""));
            let n = Some(stem)
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .filter(|n| *n > 0 && matches!(ext, "json" | "yaml"))
                .ok_or_else(|| corrupt(&entry.path(), "unexpected file in the revision store"))?;
            let slot = numbers.entry(n).or_default();
            *(if ext == "json" {
                &mut slot.0
            } else {
                &mut slot.1
            }) = true;
        }
        let last_info = numbers.iter().rev().find(|(_, (j, _))| *j).map(|(n, _)| *n);
        let mut index = Vec::new();
        let mut latest_text = String::new();
        for (&n, &(json, yaml)) in &numbers {
            let (jpath, ypath) = (rev_path(&revdir, n, "json"), rev_path(&revdir, n, "yaml"));
            if !json {
                if n == last_info.unwrap_or(0) + 1 {
                    continue; // an interrupted commit: the next one overwrites it
                }
                return Err(corrupt(&ypath, "revision text without its info (.json)"));
            }
            if !yaml {
                return Err(corrupt(&jpath, "revision info without its text (.yaml)"));
            }
            let (info, text) = load_revision(&jpath, &ypath, n, &store_id)?;
            if Some(n) == last_info {
                latest_text = text;
            }
            index.push(info);
        }
        Ok(PolicyStore {
            dir: dir.to_path_buf(),
            store_id,
            index,
            latest_text,
        })
    }

    /// The store's id (32 hex digits), fixed when the store was created.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The latest revision, if any.
    pub fn latest(&self) -> Option<&RevisionInfo> {
        self.index.last()
    }

    /// Every revision, oldest first.
    pub fn history(&self) -> &[RevisionInfo] {
        &self.index
    }

    /// A revision with its text.
    ///
    /// # Errors
    /// `NotFound` naming the revisions that exist; `Io`/`Corrupt` when its text cannot be
    /// read or no longer hashes to its info.
    pub fn get(&self, revision: u64) -> Result<PolicyDoc, StoreError> {
        let not_found = || StoreError::NotFound {
            revision,
            range: self
                .index
                .first()
                .zip(self.index.last())
                .map(|(a, b)| (a.revision, b.revision)),
        };
        let pos = self
            .index
            .binary_search_by_key(&revision, |i| i.revision)
            .map_err(|_| not_found())?;
        let info = self.index.get(pos).ok_or_else(not_found)?.clone();
        if pos + 1 == self.index.len() {
            let text = self.latest_text.clone();
            return Ok(PolicyDoc { info, text });
        }
        let ypath = rev_path(&self.dir.join("revisions"), revision, "yaml");
        let text = read_text(&ypath)?;
        check_text(&ypath, &text, &info.sha256, &info.sections)?;
        Ok(PolicyDoc { info, text })
    }

    /// Store `text` (whose parsed form is `policy`) as a new signed revision, unless its
    /// canonical sha256 equals the latest one's: then nothing is written and the latest
    /// info comes back with `changed: false`.
    ///
    /// # Errors
    /// `Mismatch` when `text` does not parse to `policy`'s hash; `Io` when a file cannot
    /// be written (the in-memory index is then unchanged).
    pub fn commit(
        &mut self,
        text: &str,
        policy: &Policy,
        operator: &str,
        source: &str,
        key: &SigningKey,
        rollback_of: Option<u64>,
    ) -> Result<Committed, StoreError> {
        let sha256 = canonical_sha256(policy);
        let reparsed = parse(text).map_err(|e| StoreError::Mismatch(e.to_string()))?;
        if canonical_sha256(&reparsed) != sha256 {
            return Err(StoreError::Mismatch("the canonical sha256 differs".into()));
        }
        if let Some(latest) = self.latest() {
            if latest.sha256 == sha256 {
                return Ok(Committed {
                    info: latest.clone(),
                    changed: false,
                    changed_sections: Vec::new(),
                });
            }
        }
        let sections = section_hashes(policy);
        let empty = BTreeMap::new();
        let before = self.latest().map_or(&empty, |l| &l.sections);
        let mut changed_sections: Vec<String> = sections
            .keys()
            .chain(before.keys())
            .filter(|name| sections.get(*name) != before.get(*name))
            .cloned()
            .collect();
        changed_sections.sort();
        changed_sections.dedup();
        let revision = self.latest().map_or(1, |l| l.revision + 1);
        let signature = key.sign(revision_message(&self.store_id, revision, &sha256).as_bytes());
        let info = RevisionInfo {
            store_id: self.store_id.clone(),
            revision,
            sha256,
            sections,
            signature,
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            operator: operator.to_string(),
            source: source.to_string(),
            changed_sections: changed_sections.clone(),
            rollback_of,
        };
        let json = to_json(&info)?;
        let revdir = self.dir.join("revisions");
        write_file(&rev_path(&revdir, revision, "yaml"), text.as_bytes())?;
        write_file(&rev_path(&revdir, revision, "json"), &json)?;
        self.index.push(info.clone());
        self.latest_text = text.to_string();
        Ok(Committed {
            info,
            changed: true,
            changed_sections,
        })
    }
}

/// Whether `info` is signed by `master_key` over `(store_id, revision, sha256)`.
pub fn verify(info: &RevisionInfo, master_key: &PublicKey) -> bool {
    let msg = revision_message(&info.store_id, info.revision, &info.sha256);
    master_key.verify(msg.as_bytes(), &info.signature)
}

/// `revisions/000000000042.EXT`.
fn rev_path(revdir: &Path, revision: u64, ext: &str) -> PathBuf {
    revdir.join(format!("{revision:012}.{ext}"))
}

fn read_text(path: &Path) -> Result<String, StoreError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// The file's text, or `None` when it does not exist.
fn read_opt(path: &Path) -> Result<Option<String>, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Pretty JSON of one of our (always serializable) types.
fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec_pretty(value).map_err(|e| StoreError::Other(e.to_string()))
}

/// Read `store.json`, or create it with a new random id when it does not exist.
fn load_or_create_id(path: &Path) -> Result<String, StoreError> {
    let Some(text) = read_opt(path)? else {
        let id = hex(&random_bytes::<16>().map_err(|e| StoreError::Other(e.to_string()))?);
        let file = StoreFile { store_id: id };
        write_file(path, &to_json(&file)?)?;
        return Ok(file.store_id);
    };
    let file: StoreFile = serde_json::from_str(&text).map_err(|e| corrupt(path, e.to_string()))?;
    let id = &file.store_id;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(corrupt(path, "store_id is not 32 hex digits"));
    }
    Ok(file.store_id)
}

/// Load and check one revision: its info parses, is revision `n` of store `store_id`, and
/// its text hashes to the info's sha256 and section hashes.
fn load_revision(
    jpath: &Path,
    ypath: &Path,
    n: u64,
    store_id: &str,
) -> Result<(RevisionInfo, String), StoreError> {
    let raw = read_text(jpath)?;
    let info: RevisionInfo =
        serde_json::from_str(&raw).map_err(|e| corrupt(jpath, e.to_string()))?;
    if info.revision != n {
        return Err(corrupt(
            jpath,
            format!("holds revision {}, not {n}", info.revision),
        ));
    }
    if info.store_id != store_id {
        return Err(corrupt(
            jpath,
            format!(
                "belongs to store {}, not to this store {store_id}",
                info.store_id
            ),
        ));
    }
    let text = read_text(ypath)?;
    check_text(ypath, &text, &info.sha256, &info.sections)?;
    Ok((info, text))
}

/// Parse `text` again and check its canonical sha256 and section hashes.
fn check_text(
    path: &Path,
    text: &str,
    sha256: &str,
    sections: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    let policy = parse(text).map_err(|e| corrupt(path, format!("does not parse: {e}")))?;
    let actual = canonical_sha256(&policy);
    if actual != sha256 {
        return Err(corrupt(
            path,
            format!("sha256 mismatch (content {actual}, recorded {sha256})"),
        ));
    }
    if *sections != section_hashes(&policy) {
        return Err(corrupt(path, "section hashes do not match the content"));
    }
    Ok(())
}

/// The slave's last good policy: the master's revision it last applied, and the text of
/// its own `sync.never` sections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGood {
    /// The master's revision (signed info and text).
    #[serde(flatten)]
    pub doc: PolicyDoc,
    /// The slave's local sections, as set with `ssq policy apply FILE --node SLAVE`.
    #[serde(default)]
    pub local_text: Option<String>,
}

/// Persist the last good policy as `dir/last_good.json`, atomically.
///
/// # Errors
/// `Io` when it cannot be written.
pub fn save_last_good(
    dir: &Path,
    doc: &PolicyDoc,
    local_text: Option<&str>,
) -> Result<(), StoreError> {
    let good = LastGood {
        doc: doc.clone(),
        local_text: local_text.map(str::to_string),
    };
    write_file(&dir.join(LAST_GOOD_FILE), &to_json(&good)?)
}

/// Load `dir/last_good.json`: `None` when the slave never synced. The text is parsed again
/// and must hash to its info's sha256; the local text must parse. (Its signature is the
/// caller's to check, against the pinned master key, with [`verify`].)
///
/// # Errors
/// `Corrupt` naming the file when it is damaged or its sha256 does not match; `Io`.
pub fn load_last_good(dir: &Path) -> Result<Option<LastGood>, StoreError> {
    let path = dir.join(LAST_GOOD_FILE);
    let Some(raw) = read_opt(&path)? else {
        return Ok(None);
    };
    let good: LastGood = serde_json::from_str(&raw).map_err(|e| corrupt(&path, e.to_string()))?;
    let policy =
        parse(&good.doc.text).map_err(|e| corrupt(&path, format!("does not parse: {e}")))?;
    if canonical_sha256(&policy) != good.doc.info.sha256 {
        return Err(corrupt(
            &path,
            "sha256 mismatch, refusing a corrupted last good policy",
        ));
    }
    if let Some(local) = &good.local_text {
        parse(local).map_err(|e| corrupt(&path, format!("local sections do not parse: {e}")))?;
    }
    Ok(Some(good))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "categories:\n  social: [facebook.com]\nrules:\n  - name: no-social\n    categories: [social]\n    action: deny\n";
    const B: &str = "categories:\n  social: [facebook.com, tiktok.com]\nrules:\n  - name: no-social\n    categories: [social]\n    action: deny\nconnect: {ports: [443]}\n";
    const C: &str = "rules:\n  - name: no-social\n    domains: [facebook.com]\n    action: deny\n";

    /// A temp dir, a node key in it, and the store dir `policy/` holding A (revision 1).
    fn setup() -> (tempfile::TempDir, SigningKey, PathBuf, PolicyStore) {
        let d = tempfile::tempdir().unwrap();
        let k = SigningKey::create(&d.path().join("node.key"), None).unwrap();
        let dir = d.path().join("policy");
        let mut s = PolicyStore::open(&dir).unwrap();
        assert!(s.latest().is_none());
        assert_eq!(commit(&mut s, A, &k).info.revision, 1);
        (d, k, dir, s)
    }

    fn commit(s: &mut PolicyStore, text: &str, k: &SigningKey) -> Committed {
        let policy = parse(text).unwrap();
        s.commit(text, &policy, "op1", "10.0.0.9", k, None).unwrap()
    }

    fn open_err(dir: &Path) -> String {
        PolicyStore::open(dir).unwrap_err().to_string()
    }

    #[test]
    fn revisions_grow_and_store_id_is_stable() {
        let (_d, k, dir, mut s) = setup();
        let id = s.store_id().to_string();
        assert_eq!(id.len(), 32);
        let first = s.latest().unwrap().clone();
        assert_eq!(first.changed_sections, ["categories", "rules"]);
        assert_eq!((first.operator.as_str(), first.time.len()), ("op1", 20));
        // Same content, other formatting: no new revision, nothing written.
        let same = commit(&mut s, &format!("# comment\n{A}"), &k);
        assert_eq!((same.changed, &same.info), (false, &first));
        assert!(same.changed_sections.is_empty());
        assert_eq!(std::fs::read_dir(dir.join("revisions")).unwrap().count(), 2);
        let second = commit(&mut s, B, &k);
        assert_eq!((second.changed, second.info.revision), (true, 2));
        assert_eq!(second.changed_sections, ["categories", "connect"]);
        drop(s);
        let mut s = PolicyStore::open(&dir).unwrap();
        assert_eq!(s.store_id(), id);
        assert_eq!(s.latest(), Some(&second.info));
        let third = s.commit(C, &parse(C).unwrap(), "op2", "::1", &k, Some(1));
        let third = third.unwrap();
        assert_eq!((third.info.revision, third.info.rollback_of), (3, Some(1)));
        // categories and connect removed, rules changed.
        assert_eq!(third.changed_sections, ["categories", "connect", "rules"]);
        let revs: Vec<u64> = s.history().iter().map(|i| i.revision).collect();
        assert_eq!(revs, [1, 2, 3]);
        let s = PolicyStore::open(&dir).unwrap();
        assert_eq!(s.history()[0], first);
        let texts: Vec<String> = (1..=3).map(|r| s.get(r).unwrap().text).collect();
        assert_eq!(texts, [A, B, C]);
    }

    #[test]
    fn signatures() {
        let (d, k, _dir, s) = setup();
        let other = SigningKey::create(&d.path().join("other.key"), None).unwrap();
        let info = s.latest().unwrap().clone();
        assert!(verify(&info, &k.public()));
        assert!(!verify(&info, &other.public()));
        let mut tampered = info.clone();
        tampered.sha256 = canonical_sha256(&parse(B).unwrap());
        assert!(!verify(&tampered, &k.public()));
        tampered = info;
        tampered.revision = 9;
        assert!(!verify(&tampered, &k.public()));
    }

    #[test]
    fn missing_revision_and_mismatched_policy() {
        let d = tempfile::tempdir().unwrap();
        let e = PolicyStore::open(d.path()).unwrap().get(1).unwrap_err();
        assert!(
            e.to_string()
                .contains("revision 1 does not exist (no revision"),
            "{e}"
        );
        let (_d, k, dir, mut s) = setup();
        commit(&mut s, B, &k);
        let e = s.get(5).unwrap_err().to_string();
        assert!(
            e.contains("revision 5 does not exist (revisions 1 to 2 exist)"),
            "{e}"
        );
        let e = s.commit(C, &parse(B).unwrap(), "op", "", &k, None);
        assert!(matches!(e, Err(StoreError::Mismatch(_))), "{e:?}");
        assert_eq!(s.history().len(), 2);
        assert_eq!(std::fs::read_dir(dir.join("revisions")).unwrap().count(), 4);
    }

    #[test]
    fn damaged_revisions_fail_open_naming_the_file() {
        let (_d, k, dir, mut s) = setup();
        commit(&mut s, B, &k);
        let rev = dir.join("revisions");
        let y = rev.join("000000000001.yaml");
        std::fs::write(&y, A.replace("facebook", "fakebook")).unwrap();
        let e = open_err(&dir);
        assert!(e.contains("000000000001.yaml: sha256 mismatch"), "{e}");
        std::fs::write(&y, "rules: [").unwrap();
        assert!(open_err(&dir).contains("000000000001.yaml: does not parse"));
        std::fs::write(&y, A).unwrap();
        std::fs::write(rev.join("000000000002.json"), "{").unwrap();
        assert!(open_err(&dir).contains("000000000002.json"));
        std::fs::remove_file(rev.join("000000000002.yaml")).unwrap();
        assert!(open_err(&dir).contains("000000000002.json: revision info without"));
        std::fs::remove_file(rev.join("000000000002.json")).unwrap();
        std::fs::write(rev.join("notes.txt"), "").unwrap();
        assert!(open_err(&dir).contains("notes.txt: unexpected file"));
        std::fs::remove_file(rev.join("notes.txt")).unwrap();
        std::fs::write(dir.join("store.json"), "{\"store_id\":\"00\"}").unwrap();
        assert!(open_err(&dir).contains("store.json: store_id is not"));
    }

    #[test]
    fn temp_files_and_interrupted_commits_ignored() {
        let (_d, k, dir, _s) = setup();
        let rev = dir.join("revisions");
        std::fs::write(rev.join(".000000000002.json.abc123.tmp"), "{").unwrap();
        std::fs::write(rev.join("000000000002.yaml"), B).unwrap();
        let mut s = PolicyStore::open(&dir).unwrap();
        assert_eq!(s.history().len(), 1);
        assert_eq!(commit(&mut s, C, &k).info.revision, 2);
        assert_eq!(PolicyStore::open(&dir).unwrap().get(2).unwrap().text, C);
    }

    #[test]
    fn last_good_round_trip_and_tampering() {
        let (d, k, _dir, s) = setup();
        let doc = s.get(1).unwrap();
        let slave = d.path().join("slave");
        assert_eq!(load_last_good(&slave).unwrap(), None);
        save_last_good(&slave, &doc, Some("connect: {ports: [443]}\n")).unwrap();
        let good = load_last_good(&slave).unwrap().unwrap();
        assert_eq!(good.doc, doc);
        assert_eq!(
            good.local_text.as_deref(),
            Some("connect: {ports: [443]}\n")
        );
        assert!(verify(&good.doc.info, &k.public()));
        save_last_good(&slave, &doc, None).unwrap();
        assert_eq!(load_last_good(&slave).unwrap().unwrap().local_text, None);
        let mut bad = doc;
        bad.text = B.to_string();
        save_last_good(&slave, &bad, None).unwrap();
        let e = load_last_good(&slave).unwrap_err().to_string();
        assert!(
            e.contains("last_good.json: sha256 mismatch, refusing"),
            "{e}"
        );
        std::fs::write(slave.join(LAST_GOOD_FILE), "{not json").unwrap();
        let e = load_last_good(&slave).unwrap_err().to_string();
        assert!(e.contains("last_good.json"), "{e}");
    }
}
