//! The master's report store: the records slaves ship (`reportapi::SpoolRecord`), kept
//! exactly once per `(node, epoch, seq)`, and the reports run over them.
//!
//! The store sits behind [`ReportStore`] so a PostgreSQL store can join [`SqliteStore`]
//! later; everything a caller needs goes through the trait.
//!
//! # SQLite schema (version 1)
//!
//! `data_dir/reports.db`, WAL journal, `synchronous=FULL` (an acknowledged batch lets the slave delete it, so it must survive a power cut), a busy timeout of 5 s.
//! Counts, times (Unix ms) and sequence numbers are INTEGER (values above `i64::MAX` are
//! refused for sequence numbers and saturate elsewhere).
//!
//! ```sql
//! CREATE TABLE schema_version (version INTEGER NOT NULL);   -- one row
//! CREATE TABLE requests (node TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
//!     time_ms INTEGER NOT NULL, client TEXT NOT NULL, user TEXT, method TEXT NOT NULL,
//!     url TEXT NOT NULL, host TEXT NOT NULL,          -- reportapi::url_host(url)
//!     status INTEGER NOT NULL, bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL,
//!     duration_ms INTEGER NOT NULL, action TEXT NOT NULL, rule TEXT,
//!     revision INTEGER NOT NULL, PRIMARY KEY (node, epoch, seq));
//! CREATE INDEX requests_time ON requests (time_ms);
//! CREATE INDEX requests_host ON requests (host);
//! CREATE TABLE events (node, epoch, seq, time_ms, line, PRIMARY KEY (node, epoch, seq));
//! CREATE TABLE stats  (node, epoch, seq, time_ms, json, PRIMARY KEY (node, epoch, seq));
//! CREATE TABLE gaps   (node, epoch, seq, from_seq, to_seq, time_ms,
//!     PRIMARY KEY (node, epoch, seq));
//! CREATE TABLE progress (node TEXT NOT NULL, epoch TEXT NOT NULL,
//!     acked INTEGER NOT NULL, last_time_ms INTEGER NOT NULL,
//!     first_seen_ms INTEGER NOT NULL, last_ingest_ms INTEGER NOT NULL,
//!     records INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (node, epoch));
//! ```
//!
//! - `requests.node` is the batch's (signed) node name, not the record's own field.
//! - `events.time_ms` and `gaps.time_ms` are the master's time of ingest (those payloads
//!   carry no time); `stats.time_ms` is the snapshot's, `stats.json` the `Stats` object.
//! - `progress`: `acked` is the highest `S` such that every seq in `1..=S` of that
//!   (node, epoch) is held in one of the four tables — a gap record also covers its
//!   `from_seq..=to_seq` (lost, but written down). `last_time_ms` is the newest request
//!   or stats time; `first_seen_ms`/`last_ingest_ms` the master's time of the first and
//!   latest non-empty batch; `records` the number of records stored.
//!
//! # Compatibility rule
//!
//! The version in `schema_version` is raised with every change to the schema; a change
//! only adds (tables, indexes, columns with a default), never renames or drops, so reports
//! keep working over old rows. [`SqliteStore::open`] creates the schema when the table is
//! absent, migrates an older version forward step by step inside one transaction, and
//! refuses a store whose version is newer than this build knows ([`StoreError::Schema`])
//! rather than guess at it.
//!
//! # Reports
//!
//! See [`ReportStore::report`]; rows are JSON objects with integer counts. Requests are
//! selected by `time_ms` in `[from_ms, to_ms)` (`to_ms` 0: up to now) and optionally one
//! node; `limit` 0 means 20 (timeline: 10 000), at most 10 000. "blocked" means
//! `action = 'blocked'`, "bytes" the bytes sent to clients (`bytes_down`).

mod queries;
mod sqlite;

use serde::{Deserialize, Serialize};

use crate::reportapi::{IngestAnswer, Report, ReportQuery, SpoolRecord};

pub use sqlite::SqliteStore;

/// The current schema version of the SQLite store.
pub const SCHEMA_VERSION: i64 = 1;

/// Rows a report returns when the query names no limit.
pub const DEFAULT_LIMIT: u32 = 20;

/// The most rows a report returns.
pub const MAX_LIMIT: u32 = 10_000;

/// Two epochs of one node that both ingested within this window, over overlapping time
/// spans, are two live slaves under one name.
pub const LIVE_WINDOW_MS: u64 = 60_000;

/// The report kinds, in the order the CLI lists them.
pub const REPORT_KINDS: [&str; 8] = [
    "summary", "domains", "clients", "blocked", "nodes", "timeline", "events", "stats",
];

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or prepared.
    #[error("report store {path}: {source}")]
    Open {
        /// The database file.
        path: std::path::PathBuf,
        /// Why.
        source: rusqlite::Error,
    },
    /// The file refused the WAL journal mode (e.g. a file system without shared memory).
    #[error("report store {path}: journal mode is {mode}, not WAL")]
    NotWal {
        /// The database file.
        path: std::path::PathBuf,
        /// The mode it kept.
        mode: String,
    },
    /// The database was written by a newer ssq.
    #[error(
        "report store schema version {found} is newer than this ssq knows ({known}); upgrade ssq"
    )]
    Schema {
        /// The version in the file.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A database operation failed.
    #[error("report store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stats record could not be encoded.
    #[error("report store: encoding stats: {0}")]
    Json(#[from] serde_json::Error),
    /// The batch is malformed (nothing of it was stored).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// Not a report this store knows.
    #[error("unknown report {0:?} (summary, domains, clients, blocked, nodes, timeline)")]
    UnknownReport(String),
    /// Not a timeline bucket this store knows.
    #[error("unknown timeline bucket {0:?} (minute, hour)")]
    UnknownBucket(String),
}

impl StoreError {
    /// True when the caller's input is at fault (answer 400), false for the store's own
    /// failures (answer 500).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidBatch(_)
                | StoreError::UnknownReport(_)
                | StoreError::UnknownBucket(_)
        )
    }
}

/// What the master holds of one (node, epoch).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct NodeProgress {
    /// The slave's name.
    pub node: String,
    /// Its spool's epoch.
    pub epoch: String,
    /// Every seq in `1..=acked` is held (or written down as lost).
    pub acked: u64,
    /// The newest request or stats time (Unix ms; 0: none yet).
    pub last_time_ms: u64,
    /// Records stored.
    pub records: u64,
    /// Records lost (the sum of the gap records' ranges).
    pub gaps: u64,
    /// The master's time of the first batch.
    pub first_seen_ms: u64,
    /// The master's time of the latest batch.
    pub last_ingest_ms: u64,
}

/// A place to keep shipped records and to run reports over them.
pub trait ReportStore: Send {
    /// Store one batch of a (node, epoch) in one transaction: records already held are
    /// counted as duplicates and left alone. Answers the new `acked`.
    ///
    /// # Errors
    /// [`StoreError::InvalidBatch`] (nothing stored) for an empty node or epoch, a seq of
    /// 0 or above `i64::MAX`, or a gap with `from > to`; a database failure otherwise.
    fn ingest(
        &mut self,
        node: &str,
        epoch: &str,
        records: &[SpoolRecord],
    ) -> Result<IngestAnswer, StoreError>;

    /// Run a report. Rows by kind:
    /// - `summary`: totals `requests, blocked, bytes, clients` (distinct) and per node
    ///   `{node, requests, blocked, bytes, clients}`, most requests first;
    /// - `domains`: `{domain, requests, blocked, bytes}`, most requests first;
    /// - `clients`: `{client, requests, blocked, bytes}`, most requests first;
    /// - `blocked`: `{domain, rule, requests}` of blocked requests (`rule` null when
    ///   none), most first;
    /// - `nodes`: every node the store knows, by name: `{node, epoch (the latest),
    ///   requests (in range), last_record_ms, acked (latest epoch), lag_ms (now −
    ///   last_record_ms; both null before any record), gaps (records lost, gap records
    ///   ingested in range), epochs (epochs ingesting during the range), duplicate_name}`;
    /// - `timeline`: `{bucket_start_ms, requests, blocked, bytes}` per `minute` (default)
    ///   or `hour`, oldest first; buckets without requests are absent; when limited, the
    ///   newest buckets are kept.
    ///
    /// # Errors
    /// [`StoreError::UnknownReport`], [`StoreError::UnknownBucket`], or a database
    /// failure.
    fn report(&self, q: &ReportQuery) -> Result<Report, StoreError>;

    /// Progress per (node, epoch), by node then epoch. Cheap: meant to be called after
    /// every batch.
    ///
    /// # Errors
    /// A database failure.
    fn progress(&self) -> Result<Vec<NodeProgress>, StoreError>;
}

/// The nodes with two live slaves under one name: two epochs that both ingested within
/// [`LIVE_WINDOW_MS`] of `now_ms` and whose spans (first batch to latest batch) overlap.
/// A reinstalled slave (the new epoch starts after the old one's last batch) is not one.
pub fn duplicate_names(
    progress: &[NodeProgress],
    now_ms: u64,
) -> std::collections::BTreeSet<String> {
    let live: Vec<&NodeProgress> = progress
        .iter()
        .filter(|p| now_ms.saturating_sub(p.last_ingest_ms) < LIVE_WINDOW_MS)
        .collect();
    let mut out = std::collections::BTreeSet::new();
    for (i, a) in live.iter().enumerate() {
        for b in &live[i + 1..] {
            if a.node == b.node
                && a.epoch != b.epoch
                && a.first_seen_ms <= b.last_ingest_ms
                && b.first_seen_ms <= a.last_ingest_ms
            {
                out.insert(a.node.clone());
            }
        }
    }
    out
}

/// Now, in Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
