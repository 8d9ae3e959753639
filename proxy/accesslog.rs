//! The record writer: the proxy's end-of-request hook (and, on a slave, every
//! extended.log event) hands records to one thread of its own, which every 50 ms
//! (sooner when much is waiting) appends them to log_dir/access.log in one write — no
//! request waits on the disk, a busy proxy pays neither a wakeup nor a system call per
//! request, and no runtime worker is held up by file I/O — and, on a slave, to the
//! report spool, fsynced on a short timer (200 ms), with a statistics record every
//! 10 s.
//!
//! A record's access.log line is written where the record was made, on the proxy
//! worker, while its text is still in that core's cache, into the worker's own buffer
//! (one slot per worker, so no two workers share a lock); the writer thread takes each
//! slot's text whole. Formatting it on the writer instead meant reading every string of
//! the record from another core's cache: 0.5 µs a request, a tenth of the proxy's own
//! CPU (bench/README.md). Only a slave's records still travel to the writer, for the
//! spool. A full buffer (the disk far behind) is counted and reported in extended.log,
//! never silent.

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

/// Records (for the spool) and events waiting for the writer, at most.
const QUEUE: usize = 65_536;
/// access.log text waiting in all the slots together, at most (about 250,000 lines),
/// shared out among the slots, each of which may hold at least [`SLOT_FLOOR`].
const SLOTS_MAX: usize = 32 << 20;
/// The least one slot may hold.
const SLOT_FLOOR: usize = 1 << 20;
/// How often the writer takes the queue and the slots.
const WRITE_EVERY: Duration = Duration::from_millis(50);
/// A queue this long wakes the writer before its tick.
const WAKE_AT: usize = 4_096;
/// A slot holding this much text wakes the writer before its tick.
const SLOT_WAKE_AT: usize = 256 << 10;
/// How often a statistics record is spooled.
const STATS_EVERY: Duration = Duration::from_secs(10);

/// What the writer receives through the queue. Records are by far the most common
/// message on a slave: they travel unboxed (no allocation per request for the channel).
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// A request's record, for the spool (its access.log line is in a slot already).
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

/// One worker's access.log text and counts, not yet taken by the writer.
#[derive(Default)]
struct Slot {
    /// Whole lines, newline-terminated.
    text: String,
    /// Records in `text`.
    requests: u64,
    /// Of which blocked.
    blocked: u64,
    /// Their bytes to clients.
    bytes: u64,
}

/// The proxy's handle on the writer.
pub struct AccessLog {
    /// Slot 0 for threads off the proxy workers, then one per worker (`workers::shard`).
    slots: Box<[Mutex<Slot>]>,
    /// Text one slot may hold; a record that finds its slot full is dropped and counted.
    slot_max: usize,
    /// Records go to the spool too (a slave).
    spooling: bool,
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
    /// Open log_dir/access.log and start the writer thread, with a slot for each of
    /// `workers` proxy workers.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn start(
        log_dir: &Path,
        node: &str,
        spooling: Option<Spooling>,
        workers: usize,
    ) -> std::io::Result<Arc<AccessLog>> {
        let events = ExtLog::open(log_dir, node)?;
        let path = log_dir.join("access.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let log = Arc::new(AccessLog {
            slots: (0..=workers).map(|_| Mutex::default()).collect(),
            slot_max: (SLOTS_MAX / (workers + 1)).max(SLOT_FLOOR),
            spooling: spooling.is_some(),
            queue: Mutex::new(Vec::with_capacity(WAKE_AT)),
            wake: Condvar::new(),
            dropped: AtomicU64::new(0),
            counters: Counters::default(),
        });
        let writer = Writer {
            me: log.clone(),
            out: std::io::BufWriter::with_capacity(1 << 16, file),
            taken: String::new(),
            path,
            events,
            spooling,
            dirty: false,
            spool_failing: false,
            access_failing: false,
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

    /// Log one record (never blocks): its line into this thread's slot; on a slave the
    /// record itself to the queue, for the spool.
    pub fn record(&self, rec: AccessRecord) {
        let i = crate::workers::shard().min(self.slots.len() - 1);
        let written = match self.slots[i].lock() {
            Ok(mut slot) if slot.text.len() < self.slot_max => {
                let before = slot.text.len();
                rec.push_squid_line(&mut slot.text);
                slot.requests += 1;
                slot.blocked += u64::from(rec.action == "blocked");
                slot.bytes += rec.bytes_down;
                if before < SLOT_WAKE_AT && slot.text.len() >= SLOT_WAKE_AT {
                    // Once, as it passes the mark (a notify with no waiter is lost: the
                    // writer's tick takes it then).
                    self.wake.notify_one();
                }
                true
            }
            _ => false,
        };
        if !written {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if self.spooling {
            if !self.push(Msg::Request(rec)) && written {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            // Its strings back to this thread's spares, to be filled again.
            crate::textpool::keep(rec);
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
    /// A slot's text, taken (swapped with the slot's: both keep their room).
    taken: String,
    path: std::path::PathBuf,
    events: ExtLog,
    spooling: Option<Spooling>,
    /// Spooled since the last fsync.
    dirty: bool,
    /// The last spool write failed (reported once until it works again).
    spool_failing: bool,
    /// The last write to access.log failed (reported once until lines are written again).
    access_failing: bool,
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

    /// Append every slot's text to access.log (buffered); whether there was any.
    fn take_slots(&mut self) -> bool {
        let me = self.me.clone();
        let mut any = false;
        for slot in me.slots.iter() {
            let Ok(mut slot) = slot.lock() else { continue };
            if slot.requests == 0 {
                continue;
            }
            std::mem::swap(&mut slot.text, &mut self.taken);
            let (requests, blocked, bytes) = (slot.requests, slot.blocked, slot.bytes);
            (slot.requests, slot.blocked, slot.bytes) = (0, 0, 0);
            drop(slot);
            any = true;
            let c = &self.me.counters;
            c.requests.fetch_add(requests, Ordering::Relaxed);
            c.blocked.fetch_add(blocked, Ordering::Relaxed);
            c.bytes.fetch_add(bytes, Ordering::Relaxed);
            if let Err(e) = self.out.write_all(self.taken.as_bytes()) {
                self.access_error(&e);
            }
            self.taken.clear();
            if self.taken.capacity() > SLOT_WAKE_AT * 2 {
                // A burst's room is not kept for good.
                self.taken = String::new();
            }
        }
        any
    }

    /// Report a failed access.log write, once until lines are written again (a full
    /// disk must not fill extended.log, nor a slave's spool, with the same warning).
    fn access_error(&mut self, e: &std::io::Error) {
        if !self.access_failing {
            self.events.warn(
                "access",
                &format!("cannot write {}: {e}", self.path.display()),
            );
        }
        self.access_failing = true;
    }

    fn write(&mut self, batch: &mut Vec<Msg>) {
        let mut wrote = self.take_slots();
        for m in batch.drain(..) {
            match m {
                Msg::Request(rec) => self.append(Payload::Request(Box::new(rec))),
                Msg::Event(line) => self.append(Payload::Event { line }),
                Msg::Flush(done) => {
                    // Lines logged before the flush was asked for are in the slots.
                    wrote |= self.take_slots();
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
        match self.out.flush() {
            Ok(()) if wrote => self.access_failing = false,
            Ok(()) => {}
            Err(e) => self.access_error(&e),
        }
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
