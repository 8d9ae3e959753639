//! The record writer: the proxy's end-of-request hook (and, on a slave, every
//! extended.log event) pushes records onto a bounded queue; one task takes the whole
//! queue every 50 ms (sooner when it fills up) and appends it to log_dir/access.log in
//! one write — no request waits on the disk, and a busy proxy pays neither a task wakeup
//! nor a system call per request — and, on a slave, to the report spool, fsynced on a
//! short timer (200 ms), with a statistics record every 10 s. A full queue (the disk far
//! behind) is counted and reported in extended.log, never silent.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssq::accessrecord::AccessRecord;
use ssq::extlog::ExtLog;
use ssq::reportapi::{Payload, Stats};
use ssq::spool::Spool;
use tokio::sync::Notify;

use crate::connlimit::ConnCounter;

/// Records waiting to be written, at most.
const QUEUE: usize = 65_536;
/// How often the writer takes the queue.
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// A queue this long wakes the writer before its tick.
const WAKE_AT: usize = 4_096;
/// How often a statistics record is spooled.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// What the writer receives. Records are by far the most common message: they travel
/// unboxed (no allocation per request for the channel).
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// A request's record.
    Request(AccessRecord),
    /// An extended.log line (slaves ship their events).
    Event(String),
    /// Write everything out now (at shutdown), then answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Counters since start, for the statistics record.
#[derive(Default)]
pub struct Counters {
    /// Requests recorded.
    pub requests: AtomicU64,
    /// Of which blocked.
    pub blocked: AtomicU64,
    /// Bytes to clients.
    pub bytes: AtomicU64,
}

/// The proxy's handle on the writer.
pub struct AccessLog {
    /// What the writer has yet to take.
    queue: Mutex<Vec<Msg>>,
    /// Wakes the writer before its tick (a long queue, a flush).
    wake: Notify,
    /// Records that found the queue full.
    pub dropped: AtomicU64,
    /// Since start.
    pub counters: Counters,
}

/// The spool side of the writer, on a slave.
pub struct Spooling {
    /// The spool (shared with the shipper).
    pub spool: Arc<Mutex<Spool>>,
    /// Woken after each fsync, so the shipper sends soon.
    pub flushed: Arc<Notify>,
    /// Open client connections, for the statistics record.
    pub conns: Arc<ConnCounter>,
    /// How often the spool is fsynced (reports.fsync_ms; default 200 ms).
    pub sync_every: Duration,
}

impl AccessLog {
    /// Open log_dir/access.log and start the writer task.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn start(
        log_dir: &Path,
        node: &str,
        spooling: Option<Spooling>,
    ) -> std::io::Result<Arc<AccessLog>> {
        let events = ExtLog::open(log_dir, node)?;
        let path = log_dir.join("access.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let log = Arc::new(AccessLog {
            queue: Mutex::new(Vec::with_capacity(WAKE_AT)),
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
            counters: Counters::default(),
        });
        tokio::spawn(write_loop(log.clone(), file, path, events, spooling));
        Ok(log)
    }

    /// Queue a message; false when the queue is full.
    fn push(&self, m: Msg) -> bool {
        let Ok(mut q) = self.queue.lock() else {
            return false;
        };
        if q.len() >= QUEUE && !matches!(m, Msg::Flush(_)) {
            return false;
        }
        q.push(m);
        if q.len() == WAKE_AT {
            self.wake.notify_one();
        }
        true
    }

    /// Queue one record (never blocks).
    pub fn record(&self, rec: AccessRecord) {
        if !self.push(Msg::Request(rec)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Write out everything queued so far (access.log and spool, fsynced); at shutdown.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.push(Msg::Flush(tx)) {
            self.wake.notify_one();
            let _ = rx.await;
        }
    }

    /// Queue one event line for the spool (never blocks).
    pub fn event(&self, line: &str) {
        if !self.push(Msg::Event(line.to_string())) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn write_loop(
    me: Arc<AccessLog>,
    file: std::fs::File,
    path: std::path::PathBuf,
    events: ExtLog,
    spooling: Option<Spooling>,
) {
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    let mut sync_tick = tokio::time::interval(
        spooling
            .as_ref()
            .map(|s| s.sync_every)
            .unwrap_or(Duration::from_millis(200)),
    );
    let mut stats_tick = tokio::time::interval(STATS_EVERY);
    let mut write_tick = tokio::time::interval(WRITE_EVERY);
    write_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch: Vec<Msg> = Vec::with_capacity(WAKE_AT);
    let mut reported = 0;
    let mut dirty = false;
    let mut spool_failing = false;
    let append = |payload: Payload, failing: &mut bool| {
        let Some(sp) = &spooling else { return };
        let r = match sp.spool.lock() {
            Ok(mut s) => s.append(payload).map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err("spool lock poisoned".into()),
        };
        match r {
            Ok(()) => *failing = false,
            Err(e) => {
                if !*failing {
                    events.warn("report", &format!("cannot write the report spool: {e}"));
                }
                *failing = true;
            }
        }
    };
    loop {
        tokio::select! {
            _ = write_tick.tick() => {}
            () = me.wake.notified() => {}
            _ = sync_tick.tick() => {
                if let (Some(sp), true) = (&spooling, dirty) {
                    dirty = false;
                    // The fsync may take a while: let the runtime move other work off
                    // this thread meanwhile.
                    let r = tokio::task::block_in_place(|| {
                        sp.spool.lock().map_err(|_| "spool lock poisoned".to_string())
                            .and_then(|mut s| {
                                let notes = s.take_notes();
                                s.flush().map(|()| notes).map_err(|e| e.to_string())
                            })
                    });
                    match r {
                        Ok(notes) => {
                            for n in notes {
                                events.warn("report", &n);
                            }
                            sp.flushed.notify_one();
                        }
                        Err(e) => events.warn("report", &format!("cannot sync the report spool: {e}")),
                    }
                }
                let dropped = me.dropped.load(Ordering::Relaxed);
                if dropped > reported {
                    events.warn("access", &format!("{} records could not be queued (the disk is far behind); total {dropped}", dropped - reported));
                    reported = dropped;
                }
            }
            _ = stats_tick.tick() => {
                if let Some(sp) = &spooling {
                    let depth = sp.spool.lock().map(|s| s.stats().pending_records).unwrap_or(0);
                    let stats = Stats {
                        time_ms: now_ms(),
                        requests: me.counters.requests.load(Ordering::Relaxed),
                        blocked: me.counters.blocked.load(Ordering::Relaxed),
                        active_connections: sp.conns.open(),
                        bytes: me.counters.bytes.load(Ordering::Relaxed),
                        spool_depth: depth,
                    };
                    append(Payload::Stats(stats), &mut spool_failing);
                    dirty = true;
                }
            }
        }
        if let Ok(mut q) = me.queue.lock() {
            std::mem::swap(&mut *q, &mut batch);
        }
        if batch.is_empty() {
            continue;
        }
        for m in batch.drain(..) {
            match m {
                Msg::Request(rec) => {
                    me.counters.requests.fetch_add(1, Ordering::Relaxed);
                    if rec.action == "blocked" {
                        me.counters.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    me.counters
                        .bytes
                        .fetch_add(rec.bytes_down, Ordering::Relaxed);
                    if let Err(e) = out.write_all(rec.squid_line().as_bytes()) {
                        events.warn("access", &format!("cannot write {}: {e}", path.display()));
                    }
                    if spooling.is_some() {
                        append(Payload::Request(Box::new(rec)), &mut spool_failing);
                        dirty = true;
                    }
                }
                Msg::Event(line) => {
                    append(Payload::Event { line }, &mut spool_failing);
                    dirty = true;
                }
                Msg::Flush(done) => {
                    let _ = out.flush();
                    if let Some(sp) = &spooling {
                        if let Ok(mut s) = sp.spool.lock() {
                            let _ = s.flush();
                        }
                    }
                    let _ = done.send(());
                }
            }
        }
        if let Err(e) = out.flush() {
            events.warn("access", &format!("cannot write {}: {e}", path.display()));
        }
    }
}
