//! The master's report store, owned by one thread (SQLite has one writer): ingest
//! batches from slaves and answer report queries in arrival order, so the async portal
//! never blocks on the database.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use ssq::reportapi::{IngestAnswer, Report, ReportQuery, SpoolRecord, Stats};
use ssq::reportstore::{NodeProgress, ReportStore, SqliteStore};
use tokio::sync::oneshot;

use crate::apierror::ApiError;

/// A job for the store thread.
enum Job {
    Ingest {
        node: String,
        epoch: String,
        records: Vec<SpoolRecord>,
        reply: oneshot::Sender<Result<IngestAnswer, String>>,
    },
    Report {
        query: ReportQuery,
        reply: oneshot::Sender<Result<Report, String>>,
    },
}

/// The handle the portal uses.
pub struct Reports {
    /// To the store thread.
    tx: mpsc::Sender<Job>,
    /// Progress per (node, epoch) after the last ingest, for status.
    progress: Arc<Mutex<Vec<NodeProgress>>>,
    /// Each node's latest statistics, refreshed at most every 5 s.
    stats: Arc<Mutex<Vec<(String, Stats)>>>,
}

fn latest_stats(store: &SqliteStore) -> Vec<(String, Stats)> {
    let q = ReportQuery {
        kind: "stats".into(),
        from_ms: 0,
        to_ms: 0,
        slave: None,
        limit: 10_000,
        bucket: String::new(),
        host: None,
    };
    store
        .report(&q)
        .map(|r| {
            r.rows
                .into_iter()
                .filter_map(|v| {
                    let node = v.get("node")?.as_str()?.to_string();
                    Some((node, serde_json::from_value::<Stats>(v).ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn gone() -> ApiError {
    ApiError::new(500, "report_store", "the report store thread has stopped")
}

impl Reports {
    /// Open data_dir/reports.db and start its thread.
    ///
    /// # Errors
    /// When the database cannot be opened.
    pub fn open(path: &Path) -> anyhow::Result<Reports> {
        let mut store =
            SqliteStore::open(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel::<Job>();
        let progress = Arc::new(Mutex::new(store.progress().unwrap_or_default()));
        let cache = progress.clone();
        let stats = Arc::new(Mutex::new(latest_stats(&store)));
        let stats_cache = stats.clone();
        let mut stats_at = std::time::Instant::now();
        std::thread::Builder::new()
            .name("ssq-reports".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Ingest {
                            node,
                            epoch,
                            records,
                            reply,
                        } => {
                            let r = store
                                .ingest(&node, &epoch, &records)
                                .map_err(|e| e.to_string());
                            let _ = reply.send(r);
                            if let (Ok(p), Ok(mut c)) = (store.progress(), cache.lock()) {
                                *c = p;
                            }
                            if stats_at.elapsed() >= std::time::Duration::from_secs(5) {
                                stats_at = std::time::Instant::now();
                                if let Ok(mut c) = stats_cache.lock() {
                                    *c = latest_stats(&store);
                                }
                            }
                        }
                        Job::Report { query, reply } => {
                            let _ = reply.send(store.report(&query).map_err(|e| e.to_string()));
                        }
                    }
                }
            })?;
        Ok(Reports {
            tx,
            progress,
            stats,
        })
    }

    /// Each node's latest statistics (as of at most 5 s ago).
    pub fn cached_stats(&self) -> Vec<(String, Stats)> {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Progress as of the last ingest.
    pub fn cached_progress(&self) -> Vec<NodeProgress> {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Store a batch.
    ///
    /// # Errors
    /// 500 when the store fails.
    pub async fn ingest(
        &self,
        node: String,
        epoch: String,
        records: Vec<SpoolRecord>,
    ) -> Result<IngestAnswer, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Ingest {
                node,
                epoch,
                records,
                reply,
            })
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| ApiError::new(500, "report_store", e))
    }

    /// Run a report.
    ///
    /// # Errors
    /// 400 for an unknown report, 500 when the store fails.
    pub async fn report(&self, query: ReportQuery) -> Result<Report, ApiError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job::Report { query, reply })
            .map_err(|_| gone())?;
        rx.await
            .map_err(|_| gone())?
            .map_err(|e| ApiError::bad("bad_report", e))
    }
}
