//! The slave's report shipper: sends what the spool holds to the master's
//! `POST /api/v1/reports/ingest` in batches (up to 1 MiB, soon after each spool sync),
//! signed with the sync credential and bound to this node's own address; on an answer it
//! records the acknowledged sequence durably and only then lets the spool delete the
//! segments wholly at or below it. While the master is away it backs off with jitter,
//! capped at 5 s so a returning master is found quickly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssq::client::{ClientError, ClientOptions, Conn, Portal};
use ssq::reportapi::{IngestAnswer, IngestBatch};
use ssq::spool::Spool;
use tokio::sync::Notify;

use crate::node::Node;

/// Largest batch, in bytes of spool records.
const BATCH_BYTES: usize = 512 << 10;
/// Largest batch, in records.
const BATCH_RECORDS: usize = 20_000;
/// Longest pause between attempts while the master is away.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Where the shipper stands, for status.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShipperState {
    /// The last error, if the last attempt failed.
    pub error: Option<String>,
    /// Batches acknowledged.
    pub batches: u64,
}

/// Ship until the node stops.
pub async fn run(
    node: Arc<Node>,
    spool: Arc<Mutex<Spool>>,
    flushed: Arc<Notify>,
    state: Arc<Mutex<ShipperState>>,
) {
    let Some(master) = node.files.startup.master.as_ref().map(|m| m.to_string()) else {
        return;
    };
    let Some(opts) = crate::slave::master_client(&node, "report", Duration::from_secs(30)) else {
        return;
    };
    let mut stopping = node.stopping.subscribe();
    let mut conn: Option<Conn> = None;
    let mut backoff = Duration::from_millis(250);
    let mut last_error = String::new();
    loop {
        if *stopping.borrow() {
            return;
        }
        // Disk reads (and the fsync before them) must not stall a runtime worker.
        let (epoch, batch) = match tokio::task::block_in_place(|| spool.lock()) {
            Ok(mut s) => {
                let after = s.acked();
                let epoch = s.epoch().to_string();
                match s.read_batch(after, BATCH_BYTES, BATCH_RECORDS) {
                    Ok(b) => (epoch, b),
                    Err(e) => {
                        node.files
                            .log
                            .warn("report", &format!("cannot read the report spool: {e}"));
                        (epoch, Vec::new())
                    }
                }
            }
            Err(_) => return,
        };
        if batch.is_empty() {
            tokio::select! {
                _ = flushed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stopping.changed() => return,
            }
            continue;
        }
        let body = IngestBatch {
            node: node.files.startup.node.clone(),
            epoch,
            records: batch,
        };
        let sent = tokio::select! {
            r = send(&master, &opts, &mut conn, &body) => r,
            _ = stopping.changed() => return,
        };
        match sent {
            Ok(answer)
                if answer.acked
                    < body
                        .records
                        .first()
                        .map(|r| r.seq)
                        .unwrap_or(1)
                        .saturating_sub(1) =>
            {
                // The master holds less than it acknowledged before (its store was
                // rebuilt or restored): those records are gone from this spool and
                // cannot be resent. Say so, and do not spin.
                let msg = format!(
                    "the master acknowledges only up to record {} of epoch {}, less than before: its report store lost records this slave had already deleted",
                    answer.acked, body.epoch
                );
                if msg != last_error {
                    node.files.log.warn("report", &msg);
                    last_error = msg.clone();
                }
                if let Ok(mut st) = state.lock() {
                    st.error = Some(msg);
                }
                tokio::select! {
                    _ = tokio::time::sleep(BACKOFF_MAX) => {}
                    _ = stopping.changed() => return,
                }
            }
            Ok(answer) => {
                backoff = Duration::from_millis(250);
                if !last_error.is_empty() {
                    node.files
                        .log
                        .info("report", &format!("shipping to {master} again"));
                    last_error.clear();
                }
                let acked = tokio::task::block_in_place(|| {
                    spool
                        .lock()
                        .map_err(|_| "spool lock poisoned".to_string())
                        .and_then(|mut s| s.ack(answer.acked).map_err(|e| e.to_string()))
                });
                if let Err(e) = acked {
                    node.files
                        .log
                        .warn("report", &format!("cannot record the acknowledgement: {e}"));
                }
                if let Ok(mut st) = state.lock() {
                    st.error = None;
                    st.batches += 1;
                }
                // Unless the spool is more than a batch behind, wait for the writer's
                // next sync (every fsync_ms) instead of sending a trickle of tiny
                // batches, each a signed request, an ack fsync here and a commit fsync
                // on the master.
                let waiting = spool.lock().map(|s| s.stats().pending_records).unwrap_or(0);
                if waiting <= body.records.len() as u64 {
                    tokio::select! {
                        _ = flushed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stopping.changed() => return,
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if msg != last_error {
                    node.files
                        .log
                        .warn("report", &format!("cannot ship reports to {master}: {msg}"));
                    last_error = msg.clone();
                }
                if let Ok(mut st) = state.lock() {
                    st.error = Some(msg);
                }
                if !matches!(e, ClientError::Api { .. }) {
                    conn = None;
                }
                let pause = jitter(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stopping.changed() => return,
                }
            }
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let r = ssq::keys::random_bytes::<2>()
        .map(|b| u64::from(u16::from_le_bytes(b)))
        .unwrap_or(0);
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms / 2 + r % (ms / 2 + 1))
}

async fn send(
    master: &str,
    opts: &ClientOptions,
    conn: &mut Option<Conn>,
    body: &IngestBatch,
) -> Result<IngestAnswer, ClientError> {
    if conn.is_none() {
        *conn = Some(Conn::Portal(Box::new(Portal::connect(master, opts).await?)));
    }
    match conn.as_mut() {
        Some(c) => c.call("POST", "/api/v1/reports/ingest", Some(body)).await,
        None => Err(ClientError::Local("no connection".into())),
    }
}
