//! Tests against real SQLite files in temporary directories.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::*;
use crate::accessrecord::AccessRecord;
use crate::reportapi::{Payload, Stats};

/// A minute-aligned base time.
const T: u64 = 1_700_000_040_000;

fn store() -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports.db");
    let s = SqliteStore::open(&path).unwrap();
    (dir, path, s)
}

fn req(
    seq: u64,
    time_ms: u64,
    client: &str,
    url: &str,
    blocked: Option<Option<&str>>,
    bytes: u64,
) -> SpoolRecord {
    SpoolRecord {
        seq,
        payload: Payload::Request(Box::new(AccessRecord {
            time_ms,
            node: "ignored".into(),
            client: client.into(),
            method: if url.starts_with("http") {
                "GET"
            } else {
                "CONNECT"
            }
            .into(),
            url: url.into(),
            status: if blocked.is_some() { 451 } else { 200 },
            bytes_up: 1,
            bytes_down: bytes,
            duration_ms: 3,
            action: if blocked.is_some() {
                "blocked"
            } else {
                "allowed"
            }
            .into(),
            rule: blocked.flatten().map(String::from),
            revision: 4,
            ..AccessRecord::default()
        })),
    }
}

fn plain(seq: u64) -> SpoolRecord {
    req(
        seq,
        T.saturating_add(seq),
        "10.0.0.1",
        "http://x.test/",
        None,
        1,
    )
}

fn plains(seqs: impl IntoIterator<Item = u64>) -> Vec<SpoolRecord> {
    seqs.into_iter().map(plain).collect()
}

fn gap(seq: u64, from: u64, to: u64) -> SpoolRecord {
    SpoolRecord {
        seq,
        payload: Payload::Gap { from, to },
    }
}

fn query(kind: &str) -> ReportQuery {
    ReportQuery {
        kind: kind.into(),
        from_ms: 0,
        to_ms: 0,
        ..ReportQuery::default()
    }
}

fn answer(acked: u64, inserted: u64, duplicates: u64) -> IngestAnswer {
    IngestAnswer {
        acked,
        inserted,
        duplicates,
    }
}

#[test]
fn a_resent_batch_inserts_nothing_twice() {
    let (_d, _p, mut s) = store();
    let batch = plains(1..=5);
    assert_eq!(s.ingest("s1", "e1", &batch).unwrap(), answer(5, 5, 0));
    assert_eq!(s.ingest("s1", "e1", &batch).unwrap(), answer(5, 0, 5));
    // Overlapping resend: 4 and 5 again, 6 and 7 new.
    assert_eq!(
        s.ingest("s1", "e1", &plains(4..=7)).unwrap(),
        answer(7, 2, 2)
    );
    let r = s.report(&query("summary")).unwrap();
    assert_eq!(r.totals["requests"], json!(7));
    let p = s.progress().unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].acked, p[0].records, p[0].gaps), (7, 7, 0));
    // An empty batch only asks.
    assert_eq!(s.ingest("s1", "e1", &[]).unwrap(), answer(7, 0, 0));
    assert_eq!(s.ingest("s1", "other", &[]).unwrap(), answer(0, 0, 0));
}

#[test]
fn acked_advances_only_over_contiguous_records() {
    let (_d, _p, mut s) = store();
    assert_eq!(
        s.ingest("s1", "e", &plains(4..=6)).unwrap(),
        answer(0, 3, 0)
    );
    assert_eq!(
        s.ingest("s1", "e", &plains(1..=2)).unwrap(),
        answer(2, 2, 0)
    );
    // 3 closes the hole: acked walks over 4..=6 stored earlier.
    assert_eq!(s.ingest("s1", "e", &plains([3])).unwrap(), answer(6, 1, 0));
    assert_eq!(s.ingest("s1", "e", &plains([8, 10])).unwrap().acked, 6);
    // Unsorted batch.
    assert_eq!(s.ingest("s1", "e", &plains([9, 7])).unwrap().acked, 10);
    // A long run stored out of order, beyond one walk chunk.
    assert_eq!(s.ingest("s1", "e", &plains(12..=9000)).unwrap().acked, 10);
    assert_eq!(s.ingest("s1", "e", &plains([11])).unwrap().acked, 9000);
}

#[test]
fn mixed_payloads_all_count_as_held() {
    let (_d, _p, mut s) = store();
    let batch = vec![
        plain(1),
        SpoolRecord {
            seq: 2,
            payload: Payload::Event {
                line: "policy applied".into(),
            },
        },
        SpoolRecord {
            seq: 3,
            payload: Payload::Stats(Stats {
                time_ms: T + 99_000,
                requests: 10,
                ..Stats::default()
            }),
        },
        plain(4),
    ];
    assert_eq!(s.ingest("s1", "e", &batch).unwrap(), answer(4, 4, 0));
    assert_eq!(s.ingest("s1", "e", &batch[1..3]).unwrap(), answer(4, 0, 2));
    let p = &s.progress().unwrap()[0];
    assert_eq!(p.last_time_ms, T + 99_000);
    assert_eq!(p.records, 4);
}

#[test]
fn a_gap_record_covers_its_range() {
    let (_d, _p, mut s) = store();
    assert_eq!(s.ingest("s1", "e", &plains(1..=3)).unwrap().acked, 3);
    // 4..=8 were dropped from the full spool; the gap record is seq 9.
    assert_eq!(
        s.ingest("s1", "e", &[gap(9, 4, 8), plain(10)]).unwrap(),
        answer(10, 2, 0)
    );
    let p = &s.progress().unwrap()[0];
    assert_eq!((p.acked, p.gaps, p.records), (10, 5, 5));
    let nodes = s.report(&query("nodes")).unwrap();
    assert_eq!(nodes.rows[0]["gaps"], json!(5), "{:?}", nodes.rows);

    // Gap first, then what precedes it; then a record stored earlier past the gap.
    assert_eq!(
        s.ingest("s2", "e", &[gap(5, 3, 4), plain(6)])
            .unwrap()
            .acked,
        0
    );
    assert_eq!(s.ingest("s2", "e", &plains([8])).unwrap().acked, 0);
    assert_eq!(s.ingest("s2", "e", &plains(1..=2)).unwrap().acked, 6);
    assert_eq!(s.ingest("s2", "e", &plains([7])).unwrap().acked, 8);
}

#[test]
fn epochs_of_one_node_are_separate() {
    let (_d, _p, mut s) = store();
    assert_eq!(
        s.ingest_at(T, "s1", "old", &plains(1..=3)).unwrap(),
        answer(3, 3, 0)
    );
    // A reinstalled slave starts over at seq 1 under a new epoch: nothing is a duplicate.
    assert_eq!(
        s.ingest_at(T + 1_000, "s1", "new", &plains(1..=2)).unwrap(),
        answer(2, 2, 0)
    );
    let p = s.progress().unwrap();
    let keys: Vec<_> = p
        .iter()
        .map(|p| (p.epoch.as_str(), p.acked, p.records))
        .collect();
    assert_eq!(keys, [("new", 2, 2), ("old", 3, 3)]);
    // The old epoch stopped before the new one began: not two live slaves.
    assert!(duplicate_names(&p, T + 2_000).is_empty());
    let nodes = s.report_at(T + 2_000, &query("nodes")).unwrap();
    assert_eq!(nodes.rows[0]["duplicate_name"], json!(false));
    assert_eq!(nodes.rows[0]["epoch"], json!("new"));
    assert_eq!(nodes.rows[0]["acked"], json!(2));
    assert_eq!(nodes.rows[0]["epochs"], json!(2));
    // Both keep shipping: two slaves under one name.
    s.ingest_at(T + 3_000, "s1", "old", &plains([4])).unwrap();
    let p = s.progress().unwrap();
    assert_eq!(
        duplicate_names(&p, T + 4_000)
            .into_iter()
            .collect::<Vec<_>>(),
        ["s1"]
    );
    let nodes = s.report_at(T + 4_000, &query("nodes")).unwrap();
    assert_eq!(nodes.rows[0]["duplicate_name"], json!(true));
    // A minute later one of them is gone.
    let nodes = s
        .report_at(T + 3_000 + LIVE_WINDOW_MS, &query("nodes"))
        .unwrap();
    assert_eq!(nodes.rows[0]["duplicate_name"], json!(false));
}

#[test]
fn bad_batches_store_nothing() {
    let (_d, _p, mut s) = store();
    for (node, epoch, recs) in [
        ("", "e", plains([1])),
        ("s1", "", plains([1])),
        ("s1", "e", plains([1, 0])),
        ("s1", "e", vec![plain(1), gap(3, 2, 1)]),
        ("s1", "e", plains([1, u64::MAX])),
    ] {
        let e = s.ingest(node, epoch, &recs).unwrap_err();
        assert!(matches!(e, StoreError::InvalidBatch(_)), "{e}");
        assert!(e.is_client_error());
    }
    assert!(s.progress().unwrap().is_empty());
    let e = s.report(&query("everything")).unwrap_err();
    assert!(matches!(e, StoreError::UnknownReport(_)), "{e}");
    let e = s
        .report(&ReportQuery {
            bucket: "week".into(),
            ..query("timeline")
        })
        .unwrap_err();
    assert!(matches!(e, StoreError::UnknownBucket(_)), "{e}");
}

#[test]
fn reopening_keeps_records_and_refuses_newer_schema() {
    let (_d, path, mut s) = store();
    s.ingest("s1", "e", &plains(1..=3)).unwrap();
    drop(s);
    let mut s = SqliteStore::open(&path).unwrap();
    assert_eq!(
        s.ingest("s1", "e", &plains(1..=4)).unwrap(),
        answer(4, 1, 3)
    );
    drop(s);
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    c.execute(
        "UPDATE schema_version SET version = ?1",
        [SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(c);
    let e = SqliteStore::open(&path).err().unwrap();
    assert!(matches!(e, StoreError::Schema { .. }), "{e}");
}

/// Two nodes, three minutes, known numbers (see each report's expectation).
fn fixture() -> (tempfile::TempDir, SqliteStore) {
    let (d, _p, mut s) = store();
    let ads = Some(Some("ads"));
    let s1 = vec![
        req(1, T, "c1", "http://a.com/x", None, 100),
        req(2, T + 1_000, "c1", "b.com:443", None, 200),
        req(3, T + 2_000, "c2", "http://A.com/y", ads, 10),
        req(4, T + 61_000, "c2", "http://c.com/", ads, 5),
        SpoolRecord {
            seq: 5,
            payload: Payload::Event { line: "x".into() },
        },
        SpoolRecord {
            seq: 6,
            payload: Payload::Stats(Stats {
                time_ms: T + 62_000,
                ..Stats::default()
            }),
        },
        req(7, T + 61_500, "c2", "http://c.com/2", ads, 3),
    ];
    let s2 = vec![
        req(1, T + 3_000, "c3", "http://a.com/", None, 1_000),
        req(2, T + 120_000, "c1", "http://c.com/z", Some(None), 7),
    ];
    assert_eq!(
        s.ingest_at(T + 200_000, "s1", "e1", &s1).unwrap(),
        answer(7, 7, 0)
    );
    assert_eq!(
        s.ingest_at(T + 200_000, "s2", "e2", &s2).unwrap(),
        answer(2, 2, 0)
    );
    (d, s)
}

fn rows(r: &Report) -> &[Value] {
    &r.rows
}

#[test]
fn summary_report() {
    let (_d, s) = fixture();
    let r = s.report_at(T + 205_000, &query("summary")).unwrap();
    // "Up to now" includes now's own millisecond.
    assert_eq!((r.from, r.to), (0, T + 205_001));
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["requests"], json!(7));
    assert_eq!(v["blocked"], json!(4));
    assert_eq!(v["bytes"], json!(1325));
    assert_eq!(v["clients"], json!(3));
    assert_eq!(
        rows(&r),
        [
            json!({"node": "s1", "requests": 5, "blocked": 3, "bytes": 318, "clients": 2}),
            json!({"node": "s2", "requests": 2, "blocked": 1, "bytes": 1007, "clients": 2}),
        ]
    );
    let one = s
        .report(&ReportQuery {
            limit: 1,
            ..query("summary")
        })
        .unwrap();
    assert_eq!(one.rows.len(), 1);
    assert_eq!(one.totals["requests"], json!(7));
    // Nothing in range: zeros, not nulls.
    let none = s
        .report(&ReportQuery {
            from_ms: 1,
            to_ms: 2,
            ..query("summary")
        })
        .unwrap();
    assert_eq!(none.totals["bytes"], json!(0));
    assert!(none.rows.is_empty());
}

#[test]
fn domains_clients_blocked_reports() {
    let (_d, s) = fixture();
    let r = s.report(&query("domains")).unwrap();
    assert_eq!(
        rows(&r),
        [
            json!({"domain": "a.com", "requests": 3, "blocked": 1, "bytes": 1110}),
            json!({"domain": "c.com", "requests": 3, "blocked": 3, "bytes": 15}),
            json!({"domain": "b.com", "requests": 1, "blocked": 0, "bytes": 200}),
        ]
    );
    assert!(r.totals.is_empty());
    let r = s.report(&query("clients")).unwrap();
    assert_eq!(
        rows(&r),
        [
            json!({"client": "c1", "requests": 3, "blocked": 1, "bytes": 307}),
            json!({"client": "c2", "requests": 3, "blocked": 3, "bytes": 18}),
            json!({"client": "c3", "requests": 1, "blocked": 0, "bytes": 1000}),
        ]
    );
    let r = s.report(&query("blocked")).unwrap();
    assert_eq!(
        rows(&r),
        [
            json!({"domain": "c.com", "rule": "ads", "requests": 2}),
            json!({"domain": "a.com", "rule": "ads", "requests": 1}),
            json!({"domain": "c.com", "rule": null, "requests": 1}),
        ]
    );
}

#[test]
fn nodes_report() {
    let (_d, mut s) = fixture();
    s.ingest_at(T + 200_500, "s2", "e2", &[gap(6, 3, 5)])
        .unwrap();
    let r = s.report_at(T + 205_000, &query("nodes")).unwrap();
    assert_eq!(
        rows(&r),
        [
            json!({"node": "s1", "epoch": "e1", "requests": 5, "last_record_ms": T + 62_000,
                   "acked": 7, "lag_ms": 143_000, "gaps": 0, "epochs": 1,
                   "duplicate_name": false}),
            json!({"node": "s2", "epoch": "e2", "requests": 2, "last_record_ms": T + 120_000,
                   "acked": 6, "lag_ms": 85_000, "gaps": 3, "epochs": 1,
                   "duplicate_name": false}),
        ]
    );
}

#[test]
fn timeline_report() {
    let (_d, s) = fixture();
    let r = s.report(&query("timeline")).unwrap();
    assert_eq!(
        rows(&r),
        [
            json!({"bucket_start_ms": T, "requests": 4, "blocked": 1, "bytes": 1310}),
            json!({"bucket_start_ms": T + 60_000, "requests": 2, "blocked": 2, "bytes": 8}),
            json!({"bucket_start_ms": T + 120_000, "requests": 1, "blocked": 1, "bytes": 7}),
        ]
    );
    let hour = T - T % 3_600_000;
    let r = s
        .report(&ReportQuery {
            bucket: "hour".into(),
            ..query("timeline")
        })
        .unwrap();
    assert_eq!(
        rows(&r),
        [json!({"bucket_start_ms": hour, "requests": 7, "blocked": 4, "bytes": 1325})]
    );
    // Limited: the newest buckets, oldest first.
    let r = s
        .report(&ReportQuery {
            limit: 2,
            ..query("timeline")
        })
        .unwrap();
    let starts: Vec<_> = r
        .rows
        .iter()
        .map(|r| r["bucket_start_ms"].clone())
        .collect();
    assert_eq!(starts, [json!(T + 60_000), json!(T + 120_000)]);
}

#[test]
fn slave_and_time_range_filters() {
    let (_d, s) = fixture();
    let only_s2 = ReportQuery {
        slave: Some("s2".into()),
        ..query("summary")
    };
    let r = s.report(&only_s2).unwrap();
    assert_eq!(r.totals["requests"], json!(2));
    assert_eq!(r.rows.len(), 1);
    assert_eq!(r.rows[0]["node"], json!("s2"));
    let r = s
        .report(&ReportQuery {
            kind: "nodes".into(),
            ..only_s2.clone()
        })
        .unwrap();
    assert_eq!(r.rows.len(), 1);
    let r = s
        .report(&ReportQuery {
            kind: "domains".into(),
            ..only_s2
        })
        .unwrap();
    assert_eq!(r.rows.len(), 2);

    // [T+1000, T+61000): s1 #2 and #3, s2 #1; the end is exclusive.
    let window = ReportQuery {
        from_ms: T + 1_000,
        to_ms: T + 61_000,
        ..query("summary")
    };
    let r = s.report(&window).unwrap();
    assert_eq!((r.from, r.to), (T + 1_000, T + 61_000));
    assert_eq!(r.totals["requests"], json!(3));
    assert_eq!(r.totals["bytes"], json!(1210));
    let r = s
        .report(&ReportQuery {
            slave: Some("s1".into()),
            ..window
        })
        .unwrap();
    assert_eq!(r.totals["requests"], json!(2));
    assert_eq!(r.totals["blocked"], json!(1));
}

/// This thread's CPU time in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

#[test]
fn ingest_rate_print() {
    let (_d, _p, mut s) = store();
    let all: Vec<SpoolRecord> = (1..=100_000u64)
        .map(|i| {
            req(
                i,
                T + i * 7,
                &format!("10.0.{}.{}", i % 7, i % 251),
                &format!("http://host{}.example.com/path/{i}?q=1", i % 997),
                (i % 10 == 0).then_some(Some("ads")),
                i % 5000,
            )
        })
        .collect();
    let start = std::time::Instant::now();
    let cpu = thread_cpu_secs();
    let mut acked = 0;
    for batch in all.chunks(1000) {
        acked = s.ingest("s1", "e", batch).unwrap().acked;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_secs() - cpu;
    assert_eq!(acked, 100_000);
    println!(
        "reportstore ingest: 100000 request records in batches of 1000: {secs:.2} s wall \
         ({:.0} records/s), {cpu:.2} s CPU ({:.0} records/CPU-s)",
        100_000.0 / secs,
        100_000.0 / cpu
    );
    let start = std::time::Instant::now();
    let r = s.report(&query("domains")).unwrap();
    assert_eq!(r.rows.len(), 20);
    println!(
        "reportstore domains report over 100000: {:?}",
        start.elapsed()
    );
}

#[test]
fn overlapping_gap_ranges_count_once() {
    assert_eq!(
        super::queries::union_len(vec![(1, 18), (6, 22), (9, 26), (1, 34)]),
        34
    );
    assert_eq!(super::queries::union_len(vec![(1, 2), (4, 5)]), 4);
    assert_eq!(super::queries::union_len(vec![(3, 4), (5, 6)]), 4);
    assert_eq!(super::queries::union_len(vec![]), 0);
}

#[test]
fn requests_report_lists_single_records_of_one_host() {
    let (_d, s) = fixture();
    let all = s.report(&query("requests")).unwrap();
    assert_eq!(rows(&all).len(), 7, "{all:?}");
    // Oldest first.
    assert_eq!(rows(&all)[0]["url"], "http://a.com/x");
    let c = s
        .report(&ReportQuery {
            host: Some("c.com".into()),
            ..query("requests")
        })
        .unwrap();
    let urls: Vec<&str> = rows(&c).iter().filter_map(|r| r["url"].as_str()).collect();
    assert_eq!(urls, ["http://c.com/", "http://c.com/2", "http://c.com/z"]);
    assert_eq!(rows(&c)[2]["node"], "s2");
    assert_eq!(rows(&c)[0]["status"], 451);
    let none = s
        .report(&ReportQuery {
            host: Some("nowhere.test".into()),
            ..query("requests")
        })
        .unwrap();
    assert!(rows(&none).is_empty());
}
