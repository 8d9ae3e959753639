//! The types of the report pipeline, shared by the slave's spool and shipper, the
//! master's store and the CLI. Same compatibility rule as `api`: fields are only ever
//! added, each with a default; the spool's on-disk records use these types, so an old
//! spool stays readable.
//!
//! Endpoints:
//! - `POST /api/v1/reports/ingest` (sync credential) `IngestBatch` → `IngestAnswer`
//! - `GET /api/v1/reports/{summary|domains|clients|blocked|nodes|timeline}?from=MS&to=MS&slave=NAME&limit=N&bucket=minute|hour`
//!   (config) → `Report`

use serde::{Deserialize, Serialize};

use crate::accessrecord::AccessRecord;

/// What a spool record carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// One proxied request.
    Request(Box<AccessRecord>),
    /// One extended.log event line.
    Event {
        /// The line as written.
        line: String,
    },
    /// A periodic statistics snapshot.
    Stats(Stats),
    /// Records `from..=to` were lost (the spool was full): the loss, written down.
    Gap {
        /// First lost sequence number.
        from: u64,
        /// Last lost sequence number.
        to: u64,
    },
}

/// A slave's statistics snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Stats {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Requests served since start.
    pub requests: u64,
    /// Of which blocked.
    pub blocked: u64,
    /// Open client connections.
    pub active_connections: u64,
    /// Bytes to clients since start.
    pub bytes: u64,
    /// Records in the spool not yet acknowledged.
    pub spool_depth: u64,
}

/// One record in the spool and on the wire, keyed by `(node, epoch, seq)`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpoolRecord {
    /// Sequence number within the spool's epoch (from 1, never repeats).
    pub seq: u64,
    /// What it carries.
    pub payload: Payload,
}

/// `POST /api/v1/reports/ingest` body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct IngestBatch {
    /// The sending slave (must equal the signed node name).
    pub node: String,
    /// Its spool's epoch.
    pub epoch: String,
    /// Records in ascending `seq`.
    pub records: Vec<SpoolRecord>,
}

/// `POST /api/v1/reports/ingest` answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct IngestAnswer {
    /// The highest sequence number below which the master holds every record of this
    /// (node, epoch): the slave may delete up to it.
    pub acked: u64,
    /// Records newly stored by this batch.
    #[serde(default)]
    pub inserted: u64,
    /// Records of this batch the master held already.
    #[serde(default)]
    pub duplicates: u64,
}

/// A report: the time range and one object per row (integer counts).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Report {
    /// Range start (Unix ms).
    pub from: u64,
    /// Range end (Unix ms).
    pub to: u64,
    /// Totals for `summary` (requests, blocked, bytes, clients); empty otherwise.
    #[serde(default, flatten)]
    pub totals: serde_json::Map<String, serde_json::Value>,
    /// The rows.
    pub rows: Vec<serde_json::Value>,
}

/// What to report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportQuery {
    /// summary, domains, clients, blocked, nodes, timeline, events, stats, requests.
    pub kind: String,
    /// Range start (Unix ms, inclusive).
    pub from_ms: u64,
    /// Range end (Unix ms, exclusive).
    pub to_ms: u64,
    /// Only this slave.
    pub slave: Option<String>,
    /// At most this many rows.
    pub limit: u32,
    /// For timeline: `minute` or `hour`.
    pub bucket: String,
    /// For requests: only this host.
    pub host: Option<String>,
}

/// The host of a record's URL (`http://h:p/...` or CONNECT `h:p`), lower-case.
pub fn url_host(url: &str) -> String {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(url_host("http://Example.com:8080/x?y"), "example.com");
        assert_eq!(url_host("a.b:443"), "a.b");
        assert_eq!(url_host("http://[::1]:80/"), "::1");
        assert_eq!(url_host("-"), "-");
    }

    #[test]
    fn payloads_round_trip_with_their_kind() {
        let r = SpoolRecord {
            seq: 7,
            payload: Payload::Gap { from: 1, to: 6 },
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(j.contains("\"kind\":\"gap\""), "{j}");
        assert_eq!(serde_json::from_str::<SpoolRecord>(&j).unwrap(), r);
    }
}
