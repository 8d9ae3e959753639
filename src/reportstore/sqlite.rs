//! [`SqliteStore`]: the report store in one SQLite file (schema in the module above).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{now_ms, queries, NodeProgress, ReportStore, StoreError, SCHEMA_VERSION};
use crate::reportapi::{url_host, IngestAnswer, Payload, Report, ReportQuery, SpoolRecord};

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows read per step when walking `acked` over records stored earlier.
const WALK_CHUNK: i64 = 4096;

/// Version 1 of the schema.
const SCHEMA_V1: &str = "
CREATE TABLE requests (
    node TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, client TEXT NOT NULL, user TEXT, method TEXT NOT NULL,
    url TEXT NOT NULL, host TEXT NOT NULL, status INTEGER NOT NULL,
    bytes_up INTEGER NOT NULL, bytes_down INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
    action TEXT NOT NULL, rule TEXT, revision INTEGER NOT NULL,
    PRIMARY KEY (node, epoch, seq));
CREATE INDEX requests_time ON requests (time_ms);
CREATE INDEX requests_host ON requests (host);
CREATE TABLE events (
    node TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, line TEXT NOT NULL,
    PRIMARY KEY (node, epoch, seq));
CREATE TABLE stats (
    node TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    time_ms INTEGER NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (node, epoch, seq));
CREATE TABLE gaps (
    node TEXT NOT NULL, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
    from_seq INTEGER NOT NULL, to_seq INTEGER NOT NULL, time_ms INTEGER NOT NULL,
    PRIMARY KEY (node, epoch, seq));
CREATE TABLE progress (
    node TEXT NOT NULL, epoch TEXT NOT NULL, acked INTEGER NOT NULL,
    last_time_ms INTEGER NOT NULL, first_seen_ms INTEGER NOT NULL,
    last_ingest_ms INTEGER NOT NULL, records INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, epoch));
";

const INSERT_REQUEST: &str = "INSERT OR IGNORE INTO requests (node, epoch, seq, time_ms, \
    client, user, method, url, host, status, bytes_up, bytes_down, duration_ms, action, \
    rule, revision) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
    ?15, ?16)";
const INSERT_EVENT: &str =
    "INSERT OR IGNORE INTO events (node, epoch, seq, time_ms, line) VALUES (?1, ?2, ?3, ?4, ?5)";
const INSERT_STATS: &str =
    "INSERT OR IGNORE INTO stats (node, epoch, seq, time_ms, json) VALUES (?1, ?2, ?3, ?4, ?5)";
const INSERT_GAP: &str = "INSERT OR IGNORE INTO gaps (node, epoch, seq, from_seq, to_seq, \
    time_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const SELECT_ACKED: &str = "SELECT acked FROM progress WHERE node = ?1 AND epoch = ?2";
const UPSERT_PROGRESS: &str = "INSERT INTO progress (node, epoch, acked, last_time_ms, \
    first_seen_ms, last_ingest_ms, records) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6) \
    ON CONFLICT (node, epoch) DO UPDATE SET acked = max(acked, excluded.acked), \
    last_time_ms = max(last_time_ms, excluded.last_time_ms), \
    last_ingest_ms = excluded.last_ingest_ms, records = records + excluded.records";
/// What is held above `?3`, as `(first, last)` seq ranges by first: every record is its
/// own range, a gap record also covers its lost range.
const HELD_ABOVE: &str = "
    SELECT seq, seq FROM requests WHERE node = ?1 AND epoch = ?2 AND seq > ?3
    UNION ALL SELECT seq, seq FROM events WHERE node = ?1 AND epoch = ?2 AND seq > ?3
    UNION ALL SELECT seq, seq FROM stats WHERE node = ?1 AND epoch = ?2 AND seq > ?3
    UNION ALL SELECT seq, seq FROM gaps WHERE node = ?1 AND epoch = ?2 AND seq > ?3
    UNION ALL SELECT from_seq, to_seq FROM gaps WHERE node = ?1 AND epoch = ?2 AND to_seq > ?3
    ORDER BY 1 LIMIT ?4";

/// The report store in one SQLite file. One connection; open a second `SqliteStore` on
/// the same file to read reports while this one writes (WAL lets readers run alongside
/// the writer).
pub struct SqliteStore {
    conn: Connection,
}

/// A u64 as SQLite's INTEGER, saturating.
pub(super) fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An INTEGER read back as u64 (negative: 0).
pub(super) fn uint(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Open (creating when absent) the store at `path`: WAL journal, `synchronous=FULL`,
    /// busy timeout; creates or migrates the schema.
    ///
    /// # Errors
    /// [`StoreError::Open`] when the file cannot be opened or set up,
    /// [`StoreError::Schema`] when a newer ssq wrote it.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // journal_mode answers a row; WAL sticks to the file once set.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(StoreError::NotWal {
                path: path.to_path_buf(),
                mode,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -32_768)
            .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(32);
        migrate(&mut conn).map_err(|e| match e {
            StoreError::Sqlite(source) => open_err(source),
            other => other,
        })?;
        Ok(SqliteStore { conn })
    }

    /// [`ReportStore::ingest`] with the master's clock given (Unix ms).
    ///
    /// # Errors
    /// As [`ReportStore::ingest`].
    pub fn ingest_at(
        &mut self,
        now_ms: u64,
        node: &str,
        epoch: &str,
        records: &[SpoolRecord],
    ) -> Result<IngestAnswer, StoreError> {
        validate(node, epoch, records)?;
        if records.is_empty() {
            let acked: Option<i64> = self
                .conn
                .prepare_cached(SELECT_ACKED)?
                .query_row(params![node, epoch], |r| r.get(0))
                .optional()?;
            return Ok(IngestAnswer {
                acked: uint(acked.unwrap_or(0)),
                ..IngestAnswer::default()
            });
        }
        let now = int(now_ms);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut inserted = 0u64;
        let mut last_time = 0i64;
        // (first, last) seq ranges this batch covers.
        let mut covered: Vec<(u64, u64)> = Vec::with_capacity(records.len());
        {
            let mut req = tx.prepare_cached(INSERT_REQUEST)?;
            let mut ev = tx.prepare_cached(INSERT_EVENT)?;
            let mut st = tx.prepare_cached(INSERT_STATS)?;
            let mut gap = tx.prepare_cached(INSERT_GAP)?;
            for rec in records {
                let seq = int(rec.seq);
                let n = match &rec.payload {
                    Payload::Request(a) => {
                        let t = int(a.time_ms);
                        last_time = last_time.max(t);
                        req.execute(params![
                            node,
                            epoch,
                            seq,
                            t,
                            a.client,
                            a.user,
                            a.method,
                            a.url,
                            url_host(&a.url),
                            a.status,
                            int(a.bytes_up),
                            int(a.bytes_down),
                            int(a.duration_ms),
                            a.action,
                            a.rule,
                            int(a.revision),
                        ])?
                    }
                    Payload::Event { line } => ev.execute(params![node, epoch, seq, now, line])?,
                    Payload::Stats(s) => {
                        let t = int(s.time_ms);
                        last_time = last_time.max(t);
                        let json = serde_json::to_string(s)?;
                        st.execute(params![node, epoch, seq, t, json])?
                    }
                    Payload::Gap { from, to } => {
                        covered.push((*from, *to));
                        gap.execute(params![node, epoch, seq, int(*from), int(*to), now])?
                    }
                };
                inserted += n as u64;
                covered.push((rec.seq, rec.seq));
            }
        }
        let before: u64 = uint(
            tx.prepare_cached(SELECT_ACKED)?
                .query_row(params![node, epoch], |r| r.get(0))
                .optional()?
                .unwrap_or(0),
        );
        // The batch itself, in order (normally one contiguous run from acked + 1) ...
        let mut acked = before;
        if !covered.windows(2).all(|w| w[0].0 <= w[1].0) {
            covered.sort_unstable();
        }
        for &(first, last) in &covered {
            if first > acked.saturating_add(1) {
                break;
            }
            acked = acked.max(last);
        }
        // ... then whatever arrived earlier out of order right after it.
        acked = walk_held(&tx, node, epoch, acked)?;
        tx.prepare_cached(UPSERT_PROGRESS)?.execute(params![
            node,
            epoch,
            int(acked),
            last_time,
            now,
            int(inserted)
        ])?;
        tx.commit()?;
        Ok(IngestAnswer {
            acked,
            inserted,
            duplicates: records.len() as u64 - inserted,
        })
    }

    /// [`ReportStore::report`] with the master's clock given (Unix ms).
    ///
    /// # Errors
    /// As [`ReportStore::report`].
    pub fn report_at(&self, now_ms: u64, q: &ReportQuery) -> Result<Report, StoreError> {
        queries::report(&self.conn, now_ms, q)
    }
}

/// Advance `acked` over records already held right after it.
fn walk_held(
    conn: &Connection,
    node: &str,
    epoch: &str,
    mut acked: u64,
) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(HELD_ABOVE)?;
    loop {
        let mut rows = stmt.query(params![node, epoch, int(acked), WALK_CHUNK])?;
        let mut n = 0;
        while let Some(row) = rows.next()? {
            n += 1;
            let first = uint(row.get(0)?);
            let last = uint(row.get(1)?);
            if first > acked.saturating_add(1) {
                return Ok(acked);
            }
            acked = acked.max(last);
        }
        if n < WALK_CHUNK {
            return Ok(acked);
        }
    }
}

/// Refuse a batch that cannot be stored faithfully, before storing any of it.
fn validate(node: &str, epoch: &str, records: &[SpoolRecord]) -> Result<(), StoreError> {
    let bad = |m: String| Err(StoreError::InvalidBatch(m));
    if node.is_empty() || epoch.is_empty() {
        return bad("empty node or epoch".into());
    }
    let max = i64::MAX as u64;
    for r in records {
        if r.seq == 0 || r.seq > max {
            return bad(format!("seq {} out of range", r.seq));
        }
        if let Payload::Gap { from, to } = r.payload {
            if from == 0 || from > to || to > max {
                return bad(format!("gap record {} covers {from}..={to}", r.seq));
            }
        }
    }
    Ok(())
}

/// Create the schema, or bring an older one up to [`SCHEMA_VERSION`].
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let has_table: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    let found: i64 = if has_table {
        tx.query_row("SELECT max(version) FROM schema_version", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?
        .unwrap_or(0)
    } else {
        tx.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")?;
        0
    };
    if found > SCHEMA_VERSION {
        return Err(StoreError::Schema {
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    // Steps from each older version; version 0 is "nothing yet".
    if found < 1 {
        tx.execute_batch(SCHEMA_V1)?;
    }
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

impl ReportStore for SqliteStore {
    fn ingest(
        &mut self,
        node: &str,
        epoch: &str,
        records: &[SpoolRecord],
    ) -> Result<IngestAnswer, StoreError> {
        self.ingest_at(now_ms(), node, epoch, records)
    }

    fn report(&self, q: &ReportQuery) -> Result<Report, StoreError> {
        self.report_at(now_ms(), q)
    }

    fn progress(&self) -> Result<Vec<NodeProgress>, StoreError> {
        queries::progress(&self.conn)
    }
}
