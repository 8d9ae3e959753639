//! The report queries of [`super::SqliteStore`] (rows as documented on
//! [`super::ReportStore::report`]).

use std::collections::BTreeMap;

use rusqlite::{params, Connection, Row};
use serde_json::{json, Map, Value};

use super::sqlite::{int, uint};
use super::{duplicate_names, NodeProgress, StoreError, DEFAULT_LIMIT, MAX_LIMIT};
use crate::reportapi::{Report, ReportQuery};

/// The requests a report covers: `?1` from, `?2` to, `?3` node or NULL.
const RANGE: &str = "time_ms >= ?1 AND time_ms < ?2 AND (?3 IS NULL OR node = ?3)";

/// A query's bounds, ready to bind.
struct Range<'a> {
    from: i64,
    to: i64,
    node: Option<&'a str>,
    limit: i64,
}

/// Column `i` (an integer, NULL as 0) as a JSON number.
fn num(row: &Row<'_>, i: usize) -> rusqlite::Result<Value> {
    Ok(Value::from(uint(
        row.get::<_, Option<i64>>(i)?.unwrap_or(0),
    )))
}

/// Run one report.
pub(super) fn report(
    conn: &Connection,
    now_ms: u64,
    q: &ReportQuery,
) -> Result<Report, StoreError> {
    let bucket_ms: i64 = match (q.kind.as_str(), q.bucket.as_str()) {
        ("timeline", "" | "minute") => 60_000,
        ("timeline", "hour") => 3_600_000,
        ("timeline", other) => return Err(StoreError::UnknownBucket(other.into())),
        _ => 0,
    };
    let to_ms = if q.to_ms == 0 {
        now_ms.saturating_add(1)
    } else {
        q.to_ms
    };
    let limit = match q.limit {
        0 if q.kind == "timeline" => MAX_LIMIT,
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    let range = Range {
        from: int(q.from_ms),
        to: int(to_ms),
        node: q.slave.as_deref().filter(|s| !s.is_empty()),
        limit: i64::from(limit),
    };
    let mut out = Report {
        from: q.from_ms,
        to: to_ms,
        ..Report::default()
    };
    match q.kind.as_str() {
        "summary" => summary(conn, &range, &mut out)?,
        "domains" => {
            out.rows = grouped(conn, &range, "host", "domain")?;
        }
        "clients" => {
            out.rows = grouped(conn, &range, "client", "client")?;
        }
        "blocked" => out.rows = blocked(conn, &range)?,
        "nodes" => out.rows = nodes(conn, &range, now_ms)?,
        "timeline" => out.rows = timeline(conn, &range, bucket_ms)?,
        "events" => out.rows = events(conn, &range)?,
        "stats" => out.rows = latest_stats(conn, &range)?,
        "requests" => out.rows = requests(conn, &range, q.host.as_deref())?,
        other => return Err(StoreError::UnknownReport(other.into())),
    }
    Ok(out)
}

/// The slaves' extended.log events in the range, the newest `limit`, oldest first:
/// `{node, time_ms (the master's ingest time), line}`.
fn events(conn: &Connection, r: &Range<'_>) -> Result<Vec<Value>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT node, time_ms, line FROM events WHERE {RANGE} \
         ORDER BY time_ms DESC, seq DESC LIMIT ?4"
    ))?;
    let mut rows: Vec<Value> = stmt
        .query_map(params![r.from, r.to, r.node, r.limit], |row| {
            Ok(serde_json::json!({
                "node": row.get::<_, String>(0)?,
                "time_ms": uint(row.get::<_, i64>(1)?),
                "line": row.get::<_, String>(2)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    rows.reverse();
    Ok(rows)
}

/// The newest `limit` requests in the range (only `host`'s, when given), oldest first:
/// `{node, time_ms, client, method, url, status, action, rule}`.
fn requests(
    conn: &Connection,
    r: &Range<'_>,
    host: Option<&str>,
) -> Result<Vec<Value>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT node, time_ms, client, method, url, status, action, rule FROM requests \
         WHERE {RANGE} AND (?5 IS NULL OR host = ?5) ORDER BY time_ms DESC, seq DESC LIMIT ?4"
    ))?;
    let mut rows: Vec<Value> = stmt
        .query_map(params![r.from, r.to, r.node, r.limit, host], |row| {
            Ok(json!({
                "node": row.get::<_, String>(0)?,
                "time_ms": uint(row.get::<_, i64>(1)?),
                "client": row.get::<_, String>(2)?,
                "method": row.get::<_, String>(3)?,
                "url": row.get::<_, String>(4)?,
                "status": row.get::<_, i64>(5)?,
                "action": row.get::<_, String>(6)?,
                "rule": row.get::<_, Option<String>>(7)?,
            }))
        })?
        .collect::<Result<_, _>>()?;
    rows.reverse();
    Ok(rows)
}

/// Each node's latest statistics record in the range: `{node, time_ms, requests,
/// blocked, active_connections, bytes, spool_depth}`.
fn latest_stats(conn: &Connection, r: &Range<'_>) -> Result<Vec<Value>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT node, json FROM stats s WHERE {RANGE} AND time_ms = \
         (SELECT max(time_ms) FROM stats t WHERE t.node = s.node AND t.time_ms >= ?1 AND t.time_ms < ?2) \
         GROUP BY node ORDER BY node LIMIT ?4"
    ))?;
    let rows = stmt.query_map(params![r.from, r.to, r.node, r.limit], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (node, json) = row?;
        let mut v: Value = serde_json::from_str(&json)?;
        if let Value::Object(m) = &mut v {
            m.insert("node".into(), Value::String(node));
        }
        out.push(v);
    }
    Ok(out)
}

fn summary(conn: &Connection, r: &Range<'_>, out: &mut Report) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT count(*), sum(action = 'blocked'), sum(bytes_down), count(DISTINCT client) \
         FROM requests WHERE {RANGE}"
    );
    let totals: [Value; 4] = conn
        .prepare_cached(&sql)?
        .query_row(params![r.from, r.to, r.node], |row| {
            Ok([num(row, 0)?, num(row, 1)?, num(row, 2)?, num(row, 3)?])
        })?;
    let mut map = Map::new();
    for (k, v) in ["requests", "blocked", "bytes", "clients"]
        .into_iter()
        .zip(totals)
    {
        map.insert(k.into(), v);
    }
    out.totals = map;
    let sql = format!(
        "SELECT node, count(*) AS n, sum(action = 'blocked'), sum(bytes_down), \
         count(DISTINCT client) FROM requests WHERE {RANGE} \
         GROUP BY node ORDER BY n DESC, node LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![r.from, r.to, r.node, r.limit], |row| {
        Ok(json!({
            "node": row.get::<_, String>(0)?,
            "requests": num(row, 1)?,
            "blocked": num(row, 2)?,
            "bytes": num(row, 3)?,
            "clients": num(row, 4)?,
        }))
    })?;
    out.rows = rows.collect::<Result<_, _>>()?;
    Ok(())
}

/// Top values of `column` (host or client) by requests, named `name` in the rows.
fn grouped(
    conn: &Connection,
    r: &Range<'_>,
    column: &str,
    name: &str,
) -> Result<Vec<Value>, StoreError> {
    let sql = format!(
        "SELECT {column}, count(*) AS n, sum(action = 'blocked'), sum(bytes_down) \
         FROM requests WHERE {RANGE} GROUP BY {column} ORDER BY n DESC, {column} LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![r.from, r.to, r.node, r.limit], |row| {
        let mut m = Map::new();
        m.insert(name.into(), Value::from(row.get::<_, String>(0)?));
        m.insert("requests".into(), num(row, 1)?);
        m.insert("blocked".into(), num(row, 2)?);
        m.insert("bytes".into(), num(row, 3)?);
        Ok(Value::Object(m))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn blocked(conn: &Connection, r: &Range<'_>) -> Result<Vec<Value>, StoreError> {
    let sql = format!(
        "SELECT host, rule, count(*) AS n FROM requests \
         WHERE action = 'blocked' AND {RANGE} \
         GROUP BY host, rule ORDER BY n DESC, host, rule LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![r.from, r.to, r.node, r.limit], |row| {
        Ok(json!({
            "domain": row.get::<_, String>(0)?,
            "rule": row.get::<_, Option<String>>(1)?,
            "requests": num(row, 2)?,
        }))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Per node and value of the first column, the integer in the second.
fn counts_by_node(
    conn: &Connection,
    sql: &str,
    r: &Range<'_>,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![r.from, r.to, r.node], |row| {
        Ok((
            row.get::<_, String>(0)?,
            uint(row.get::<_, Option<i64>>(1)?.unwrap_or(0)),
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records lost per node in the range: the union of the gap records' ranges per epoch
/// (a full spool may declare one range again, overlapping, when it drops a segment that
/// held an unacknowledged gap record).
fn lost_by_node(conn: &Connection, r: &Range<'_>) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT node, epoch, from_seq, to_seq FROM gaps WHERE {RANGE}"
    ))?;
    let rows = stmt.query_map(params![r.from, r.to, r.node], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            uint(row.get::<_, i64>(2)?),
            uint(row.get::<_, i64>(3)?),
        ))
    })?;
    let mut ranges: BTreeMap<(String, String), Vec<(u64, u64)>> = BTreeMap::new();
    for row in rows {
        let (node, epoch, from, to) = row?;
        ranges.entry((node, epoch)).or_default().push((from, to));
    }
    let mut out = BTreeMap::new();
    for ((node, _), v) in ranges {
        *out.entry(node).or_insert(0) += union_len(v);
    }
    Ok(out)
}

/// How many integers the ranges cover together.
pub(super) fn union_len(mut v: Vec<(u64, u64)>) -> u64 {
    v.sort_unstable();
    let mut total = 0u64;
    let mut cur: Option<(u64, u64)> = None;
    for (a, b) in v {
        if b < a {
            continue;
        }
        match cur {
            Some((ca, cb)) if a <= cb.saturating_add(1) => cur = Some((ca, cb.max(b))),
            Some((ca, cb)) => {
                total += cb - ca + 1;
                cur = Some((a, b));
            }
            None => cur = Some((a, b)),
        }
    }
    if let Some((ca, cb)) = cur {
        total += cb - ca + 1;
    }
    total
}

fn nodes(conn: &Connection, r: &Range<'_>, now_ms: u64) -> Result<Vec<Value>, StoreError> {
    let requests = counts_by_node(
        conn,
        &format!("SELECT node, count(*) FROM requests WHERE {RANGE} GROUP BY node"),
        r,
    )?;
    let lost = lost_by_node(conn, r)?;
    let all = progress(conn)?;
    let duplicates = duplicate_names(&all, now_ms);
    let (from, to) = (uint(r.from), uint(r.to));
    let mut by_node: BTreeMap<&str, Vec<&NodeProgress>> = BTreeMap::new();
    for p in &all {
        if r.node.is_none_or(|n| n == p.node) {
            by_node.entry(&p.node).or_default().push(p);
        }
    }
    let mut rows = Vec::new();
    for (node, epochs) in by_node
        .into_iter()
        .take(usize::try_from(r.limit).unwrap_or(usize::MAX))
    {
        let Some(latest) = epochs
            .iter()
            .max_by_key(|p| (p.last_ingest_ms, p.first_seen_ms))
        else {
            continue;
        };
        let last = epochs.iter().map(|p| p.last_time_ms).max().unwrap_or(0);
        let (last_record, lag) = if last == 0 {
            (Value::Null, Value::Null)
        } else {
            (Value::from(last), Value::from(now_ms.saturating_sub(last)))
        };
        let seen = epochs
            .iter()
            .filter(|p| p.first_seen_ms < to && p.last_ingest_ms >= from)
            .count();
        rows.push(json!({
            "node": node,
            "epoch": latest.epoch,
            "requests": requests.get(node).copied().unwrap_or(0),
            "last_record_ms": last_record,
            "acked": latest.acked,
            "lag_ms": lag,
            "gaps": lost.get(node).copied().unwrap_or(0),
            "epochs": seen,
            "duplicate_name": duplicates.contains(node),
        }));
    }
    Ok(rows)
}

fn timeline(conn: &Connection, r: &Range<'_>, bucket_ms: i64) -> Result<Vec<Value>, StoreError> {
    let sql = format!(
        "SELECT (time_ms / ?5) * ?5 AS b, count(*), sum(action = 'blocked'), sum(bytes_down) \
         FROM requests WHERE {RANGE} GROUP BY b ORDER BY b DESC LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![r.from, r.to, r.node, r.limit, bucket_ms], |row| {
        Ok(json!({
            "bucket_start_ms": num(row, 0)?,
            "requests": num(row, 1)?,
            "blocked": num(row, 2)?,
            "bytes": num(row, 3)?,
        }))
    })?;
    let mut rows: Vec<Value> = rows.collect::<Result<_, _>>()?;
    rows.reverse();
    Ok(rows)
}

/// Progress per (node, epoch), by node then epoch.
pub(super) fn progress(conn: &Connection) -> Result<Vec<NodeProgress>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.node, p.epoch, p.acked, p.last_time_ms, p.records, \
         0, \
         p.first_seen_ms, p.last_ingest_ms FROM progress p ORDER BY p.node, p.epoch",
    )?;
    let u = |row: &Row<'_>, i: usize| -> rusqlite::Result<u64> {
        Ok(uint(row.get::<_, Option<i64>>(i)?.unwrap_or(0)))
    };
    let rows = stmt.query_map([], |row| {
        Ok(NodeProgress {
            node: row.get(0)?,
            epoch: row.get(1)?,
            acked: u(row, 2)?,
            last_time_ms: u(row, 3)?,
            records: u(row, 4)?,
            gaps: u(row, 5)?,
            first_seen_ms: u(row, 6)?,
            last_ingest_ms: u(row, 7)?,
        })
    })?;
    let mut all: Vec<NodeProgress> = rows.collect::<Result<_, _>>()?;
    // Lost records: the union of each (node, epoch)'s gap ranges.
    let mut gaps = conn.prepare_cached("SELECT node, epoch, from_seq, to_seq FROM gaps")?;
    let mut ranges: BTreeMap<(String, String), Vec<(u64, u64)>> = BTreeMap::new();
    for row in gaps.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            uint(row.get::<_, i64>(2)?),
            uint(row.get::<_, i64>(3)?),
        ))
    })? {
        let (node, epoch, from, to) = row?;
        ranges.entry((node, epoch)).or_default().push((from, to));
    }
    for p in &mut all {
        if let Some(v) = ranges.remove(&(p.node.clone(), p.epoch.clone())) {
            p.gaps = union_len(v);
        }
    }
    Ok(all)
}
