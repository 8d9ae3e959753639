//! The master's report store, owned by one thread (SQLite has one writer): ingest
//! batches from slaves and answer report queries in arrival order, so the async portal
//! never blocks on the database.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use ssq::reportapi::{IngestAnswer, Report, ReportQuery, SpoolRecord};
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
                        }
                        Job::Report { query, reply } => {
                            let _ = reply.send(store.report(&query).map_err(|e| e.to_string()));
                        }
                    }
                }
            })?;
        Ok(Reports { tx, progress })
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
