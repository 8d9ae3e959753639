//! The access log writer: records arrive on a bounded channel from the proxy's
//! end-of-request hook and one task appends them to log_dir/access.log, flushing whenever
//! the queue runs empty (batched under load), so no request waits on the disk. A full channel (the disk far behind) is
//! counted and reported in extended.log, never silent.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ssq::accessrecord::AccessRecord;
use ssq::extlog::ExtLog;
use tokio::sync::mpsc;

/// Records waiting to be written, at most.
const QUEUE: usize = 65_536;

/// The proxy's handle on the writer.
pub struct AccessLog {
    /// To the writer task.
    tx: mpsc::Sender<AccessRecord>,
    /// Records that found the queue full.
    pub dropped: AtomicU64,
}

impl AccessLog {
    /// Open log_dir/access.log and start the writer task.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn start(log_dir: &Path, node: &str) -> std::io::Result<Arc<AccessLog>> {
        let events = ExtLog::open(log_dir, node)?;
        let path = log_dir.join("access.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let (tx, mut rx) = mpsc::channel::<AccessRecord>(QUEUE);
        let log = Arc::new(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        });
        let me = log.clone();
        tokio::spawn(async move {
            let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            let mut reported = 0;
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(rec) => {
                            let mut r = out.write_all(rec.squid_line().as_bytes());
                            // Prompt when idle, batched under load.
                            if r.is_ok() && rx.is_empty() {
                                r = out.flush();
                            }
                            if let Err(e) = r {
                                events.warn("access", &format!("cannot write {}: {e}", path.display()));
                            }
                        }
                        None => break,
                    },
                    _ = tick.tick() => {
                        if let Err(e) = out.flush() {
                            events.warn("access", &format!("cannot write {}: {e}", path.display()));
                        }
                        let dropped = me.dropped.load(Ordering::Relaxed);
                        if dropped > reported {
                            events.warn("access", &format!("{} access records could not be queued (the log is far behind); total {dropped}", dropped - reported));
                            reported = dropped;
                        }
                    }
                }
            }
            let _ = out.flush();
        });
        Ok(log)
    }

    /// Queue one record (never blocks).
    pub fn record(&self, rec: AccessRecord) {
        if self.tx.try_send(rec).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
