//! The record writer: the proxy's end-of-request hook (and, on a slave, every
//! extended.log event) pushes records onto a bounded queue; one thread of its own takes
//! the whole queue every 50 ms (sooner when it fills up) and appends it to
//! log_dir/access.log in one write — no request waits on the disk, a busy proxy pays
//! neither a wakeup nor a system call per request, and no runtime worker is held up by
//! file I/O — and, on a slave, to the report spool, fsynced on a short timer (200 ms),
//! with a statistics record every 10 s. A full queue (the disk far behind) is counted
//! and reported in extended.log, never silent.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

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
    wake: Condvar,
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
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let writer = Writer {
            me: log.clone(),
            out: std::io::BufWriter::with_capacity(1 << 16, file),
            line: String::with_capacity(512),
            spare: Vec::new(),
            path,
            events,
            spooling,
            dirty: false,
            spool_failing: false,
            reported: 0,
        };
        std::thread::Builder::new()
            .name("ssqd-accesslog".into())
            .spawn(move || writer.run())?;
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
        let urgent = matches!(m, Msg::Flush(_));
        q.push(m);
        if urgent || q.len() == WAKE_AT {
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

/// The writer thread's state.
struct Writer {
    me: Arc<AccessLog>,
    out: std::io::BufWriter<std::fs::File>,
    /// One access.log line, reused.
    line: String,
    /// The strings of the records written, for the workers (see `textpool`).
    spare: Vec<String>,
    path: std::path::PathBuf,
    events: ExtLog,
    spooling: Option<Spooling>,
    /// Spooled since the last fsync.
    dirty: bool,
    /// The last spool write failed (reported once until it works again).
    spool_failing: bool,
    /// Dropped records already reported.
    reported: u64,
}

impl Writer {
    fn run(mut self) {
        let sync_every = self
            .spooling
            .as_ref()
            .map(|s| s.sync_every)
            .unwrap_or(Duration::from_millis(200));
        let mut next_sync = Instant::now() + sync_every;
        // A statistics record at start, then every STATS_EVERY.
        let mut next_stats = Instant::now();
        let mut batch: Vec<Msg> = Vec::with_capacity(WAKE_AT);
        loop {
            let now = Instant::now();
            let wait = WRITE_EVERY
                .min(next_sync.saturating_duration_since(now))
                .min(next_stats.saturating_duration_since(now));
            let Ok(mut q) = self.me.queue.lock() else {
                return;
            };
            if q.len() < WAKE_AT && !q.iter().any(|m| matches!(m, Msg::Flush(_))) {
                q = match self.me.wake.wait_timeout(q, wait) {
                    Ok((q, _)) => q,
                    Err(_) => return,
                };
            }
            std::mem::swap(&mut *q, &mut batch);
            drop(q);
            self.write(&mut batch);
            let now = Instant::now();
            if now >= next_sync {
                self.sync();
                next_sync = now + sync_every;
            }
            if now >= next_stats {
                crate::memory::release_free_memory();
                self.stats();
                next_stats = now + STATS_EVERY;
            }
        }
    }

    fn append(&mut self, payload: Payload) {
        let Some(sp) = &self.spooling else { return };
        let r = match sp.spool.lock() {
            Ok(mut s) => s.append(payload).map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err("spool lock poisoned".into()),
        };
        match r {
            Ok(()) => self.spool_failing = false,
            Err(e) => {
                if !self.spool_failing {
                    self.events
                        .warn("report", &format!("cannot write the report spool: {e}"));
                }
                self.spool_failing = true;
            }
        }
        self.dirty = true;
    }

    fn write(&mut self, batch: &mut Vec<Msg>) {
        if batch.is_empty() {
            return;
        }
        for m in batch.drain(..) {
            match m {
                Msg::Request(rec) => {
                    let c = &self.me.counters;
                    c.requests.fetch_add(1, Ordering::Relaxed);
                    if rec.action == "blocked" {
                        c.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    c.bytes.fetch_add(rec.bytes_down, Ordering::Relaxed);
                    self.line.clear();
                    rec.push_squid_line(&mut self.line);
                    if let Err(e) = self.out.write_all(self.line.as_bytes()) {
                        self.events.warn(
                            "access",
                            &format!("cannot write {}: {e}", self.path.display()),
                        );
                    }
                    if self.spooling.is_some() {
                        self.append(Payload::Request(Box::new(rec)));
                    } else {
                        crate::textpool::collect(rec, &mut self.spare);
                    }
                }
                Msg::Event(line) => self.append(Payload::Event { line }),
                Msg::Flush(done) => {
                    let _ = self.out.flush();
                    if let Some(sp) = &self.spooling {
                        if let Ok(mut s) = sp.spool.lock() {
                            let _ = s.flush();
                        }
                    }
                    let _ = done.send(());
                }
            }
        }
        if let Err(e) = self.out.flush() {
            self.events.warn(
                "access",
                &format!("cannot write {}: {e}", self.path.display()),
            );
        }
        // The records' strings go back to the workers, to be filled again.
        crate::textpool::give_back(&mut self.spare);
    }

    /// fsync the spool when something was written, and wake the shipper; report
    /// records that found the queue full.
    fn sync(&mut self) {
        if let (Some(sp), true) = (&self.spooling, self.dirty) {
            self.dirty = false;
            let r = sp
                .spool
                .lock()
                .map_err(|_| "spool lock poisoned".to_string())
                .and_then(|mut s| {
                    let notes = s.take_notes();
                    s.flush().map(|()| notes).map_err(|e| e.to_string())
                });
            match r {
                Ok(notes) => {
                    for n in notes {
                        self.events.warn("report", &n);
                    }
                    sp.flushed.notify_one();
                }
                Err(e) => self
                    .events
                    .warn("report", &format!("cannot sync the report spool: {e}")),
            }
        }
        let dropped = self.me.dropped.load(Ordering::Relaxed);
        if dropped > self.reported {
            self.events.warn(
                "access",
                &format!(
                    "{} records could not be queued (the disk is far behind); total {dropped}",
                    dropped - self.reported
                ),
            );
            self.reported = dropped;
        }
    }

    /// Spool a statistics record (slaves).
    fn stats(&mut self) {
        let Some(sp) = &self.spooling else { return };
        let depth = sp
            .spool
            .lock()
            .map(|s| s.stats().pending_records)
            .unwrap_or(0);
        let c = &self.me.counters;
        let stats = Stats {
            time_ms: now_ms(),
            requests: c.requests.load(Ordering::Relaxed),
            blocked: c.blocked.load(Ordering::Relaxed),
            active_connections: sp.conns.open(),
            bytes: c.bytes.load(Ordering::Relaxed),
            spool_depth: depth,
        };
        self.append(Payload::Stats(stats));
    }
}
