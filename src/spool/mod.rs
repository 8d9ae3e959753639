//! The slave's report spool: every [`Payload`] the daemon produces (request records,
//! extended.log events, statistics) is appended here, and the shipper reads it back in
//! order, sends it to the master and acknowledges what the master holds.
//!
//! # On-disk layout (`data_dir/spool/`, directory mode 0700, files 0600)
//!
//! - `epoch`: 16 lower-case hex digits, random, written once (atomically) when the spool
//!   is created. Records are keyed `(node, epoch, seq)` on the master, so a reinstalled or
//!   cloned slave (a new spool) never reuses a key.
//! - `acked`: a decimal `u64` and a newline: the highest seq the master acknowledged.
//!   Replaced atomically (temp file, fsync, rename, fsync of the directory). Missing = 0.
//! - `seg-<first seq, 20 digits>.log`: segment files, in seq order by name. Each is a run
//!   of frames, nothing else:
//!
//!   ```text
//!   len: u32 LE | crc32c: u32 LE (of the payload) | payload: len bytes
//!   ```
//!
//!   The payload is the serde_json encoding of a [`SpoolRecord`](crate::reportapi::SpoolRecord) (`{"seq":..,"payload":..}`);
//!   `len` is at most 16 MiB. The format follows `reportapi`'s rule: fields are only added.
//!
//! # Invariants
//!
//! - Sequence numbers start at 1, rise strictly through the segments in name order, and
//!   never repeat within an epoch: the next seq is never below `acked + 1`, the seq in the
//!   last segment's name, or any seq found in a well-formed frame — even one being cut.
//! - A segment's name is ≤ the seq of its first record; all seqs below a segment's name
//!   were handed out before it was created.
//! - Every seq from 1 to the last one is accounted for: held by a record, at or below
//!   `acked`, or inside the `from..=to` of a [`Payload::Gap`] record. Where something is
//!   lost (the spool is full, a write failed, or damage was cut away from a segment), a
//!   Gap record is appended; [`Spool::open`] also appends one for any hole it finds (a crash
//!   between dropping a segment and writing its gap heals this way).
//! - Only the last segment is written to, through a buffer; [`Spool::flush`] writes the
//!   buffer out and fsyncs it. A segment is fsynced before the next is created, and the
//!   directory is fsynced after a segment file is created or deleted.
//! - [`Spool::read_batch`] flushes first, so a record the shipper sends is on disk: a power
//!   loss cannot take back a record the master may hold, nor let its seq be handed out
//!   again.
//!
//! # When a segment may be deleted
//!
//! 1. Acknowledged: [`Spool::ack`] first persists the new `acked` durably, and only then
//!    deletes the segments whose every record is ≤ `acked` — never the segment being written.
//!    (In the other order, a crash in between would leave records missing above the old
//!    `acked`: a hole the next open would have to declare as a loss.)
//! 2. Full: when the bytes on disk exceed `max_bytes`, the OLDEST segment is deleted
//!    (acknowledged or not; never the one being written), the directory fsynced, and a
//!    Gap record appended for its records above `acked` (including the ranges of Gap
//!    records it held that are not yet acknowledged, so a dropped gap is declared again;
//!    the master keeps the union of overlapping gaps).
//! 3. Never for damage: a torn or corrupt segment is cut at its last good record
//!    (truncated and fsynced), and the cut is reported in the notes for extended.log. The
//!    spool never refuses to open because of what a segment contains — only for I/O errors.

mod crc;
mod read;
mod recover;
mod segment;
#[cfg(test)]
mod tests;
mod write;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use crc::crc32c;

use crate::reportapi::Payload;

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A spool file or the directory could not be read or written.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The epoch could not be created.
    #[error("cannot create the spool epoch: {0}")]
    Epoch(String),
    /// The options are out of range.
    #[error("spool options: {0}")]
    Options(String),
    /// A record's JSON exceeds the 16 MiB frame limit.
    #[error("spool record of {len} bytes exceeds the 16 MiB frame limit")]
    TooLarge {
        /// The encoded length.
        len: usize,
    },
    /// A record could not be encoded.
    #[error("spool record cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// A segment was damaged after the spool was opened (reopening cuts it).
    #[error("spool {path} is damaged at offset {offset}: {reason}; restart the daemon to cut it")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Offset of the bad frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Map an I/O error on `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// fsync a directory, so a file created, renamed or deleted in it stays so.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// The spool directory of a node: `data_dir/spool`.
pub fn spool_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("spool")
}

/// Sizes of the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// A new segment is started when the next record would take the current one past
    /// this (default 8 MiB; 256 B..=256 MiB).
    pub segment_bytes: u64,
    /// The bound on the spool: past it the oldest segment is dropped and the loss written
    /// down as a gap (default 1 GiB; at least twice `segment_bytes`).
    pub max_bytes: u64,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: 8 << 20,
            max_bytes: 1 << 30,
        }
    }
}

impl SpoolOptions {
    /// Check the ranges.
    ///
    /// # Errors
    /// `SpoolError::Options` naming the bad value.
    pub fn validate(&self) -> Result<(), SpoolError> {
        if !(256..=256 << 20).contains(&self.segment_bytes) {
            return Err(SpoolError::Options(format!(
                "segment_bytes {} is outside 256 B..=256 MiB",
                self.segment_bytes
            )));
        }
        if self.max_bytes < self.segment_bytes.saturating_mul(2) {
            return Err(SpoolError::Options(format!(
                "max_bytes {} must be at least twice segment_bytes {}",
                self.max_bytes, self.segment_bytes
            )));
        }
        Ok(())
    }
}

/// Counts for `ssq status` and the statistics record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Sequence numbers handed out (`next_seq - 1`).
    pub spooled: u64,
    /// The highest acknowledged seq.
    pub acked: u64,
    /// Sequence numbers handed out and not yet acknowledged.
    pub pending_records: u64,
    /// Bytes in the segment files (including what is still buffered).
    pub bytes_on_disk: u64,
    /// Segment files.
    pub segments: u64,
}

/// What the spool knows about one segment file.
#[derive(Debug, Clone)]
struct Segment {
    /// The seq in its name.
    first: u64,
    /// Its last record's seq, if it holds any.
    last: Option<u64>,
    /// Length of its good records (the file's length once flushed).
    bytes: u64,
    /// The lowest `from` of the Gap records it holds, so dropping it declares them again.
    min_gap_from: Option<u64>,
    /// Its path.
    path: PathBuf,
}

/// The open last segment.
#[derive(Debug)]
struct Writer {
    /// Buffered appends.
    out: BufWriter<File>,
    /// The segment's length at the last successful flush + fsync.
    flushed_len: u64,
    /// Its last seq at that point.
    flushed_last: Option<u64>,
    /// Whether anything was appended since.
    dirty: bool,
}

/// Where the last [`Spool::read_batch`] stopped, so the next one need not rescan.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The last seq returned.
    after: u64,
    /// The segment it was in.
    segment: u64,
    /// The offset just past it.
    offset: u64,
}

/// The spool (see the module header). Not shared: the daemon owns one, behind a lock.
#[derive(Debug)]
pub struct Spool {
    /// The spool directory.
    dir: PathBuf,
    /// Sizes.
    opts: SpoolOptions,
    /// This spool's random id.
    epoch: String,
    /// The highest acknowledged seq (persisted).
    acked: u64,
    /// The seq the next record gets.
    next_seq: u64,
    /// Segment files, oldest first; the last is the one `writer` appends to.
    segments: Vec<Segment>,
    /// The open last segment, if any (none before the first append, or after a failed write).
    writer: Option<Writer>,
    /// Seq ranges lost to failed writes, declared by Gap records on the next append.
    lost: Vec<(u64, u64)>,
    /// Read position cache.
    cursor: Option<Cursor>,
    /// Notes for extended.log not yet taken.
    notes: Vec<String>,
}

impl Spool {
    /// This spool's epoch (16 hex digits).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The highest acknowledged sequence number.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counts for status.
    pub fn stats(&self) -> SpoolStats {
        let spooled = self.next_seq.saturating_sub(1);
        SpoolStats {
            spooled,
            acked: self.acked,
            pending_records: spooled.saturating_sub(self.acked),
            bytes_on_disk: self.segments.iter().map(|s| s.bytes).sum(),
            segments: self.segments.len() as u64,
        }
    }

    /// Notes for extended.log since the last call (cuts, drops, gaps, write failures).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Append one record; returns its seq. Buffered: durable after the next
    /// [`flush`](Self::flush). May drop the oldest segment when the spool is full, which
    /// appends a Gap record and leaves a note.
    ///
    /// # Errors
    /// `TooLarge`/`Encode` for a record that cannot be framed (nothing is written, no seq
    /// used); `Io` when the write fails: the segment is cut back to its last flush, the seqs
    /// lost are declared by a Gap record on the next append, and a new segment is started.
    pub fn append(&mut self, payload: Payload) -> Result<u64, SpoolError> {
        let mut pending = std::mem::take(&mut self.lost);
        while let Some((from, to)) = pending.first().copied() {
            if let Err(e) = self.write_record(Payload::Gap { from, to }) {
                self.lost.extend(pending);
                return Err(e);
            }
            pending.remove(0);
            self.notes.push(format!(
                "spool: records {from}..={to} lost to a failed write are recorded as a gap"
            ));
        }
        let seq = self.write_record(payload)?;
        if let Err(e) = self.enforce_max() {
            self.notes
                .push(format!("spool: cannot enforce the size bound: {e}"));
        }
        Ok(seq)
    }

    /// Write out the buffer and fsync the current segment (the daemon's timer calls it).
    ///
    /// # Errors
    /// `Io`; the segment is then handled as for a failed [`append`](Self::append).
    pub fn flush(&mut self) -> Result<(), SpoolError> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        if !w.dirty {
            return Ok(());
        }
        let done = w.out.flush().and_then(|()| w.out.get_ref().sync_data());
        match (done, self.segments.last()) {
            (Ok(()), Some(seg)) => {
                w.flushed_len = seg.bytes;
                w.flushed_last = seg.last;
                w.dirty = false;
                Ok(())
            }
            (Ok(()), None) => Ok(()),
            (Err(e), _) => {
                let path = self
                    .segments
                    .last()
                    .map(|s| s.path.clone())
                    .unwrap_or_default();
                self.poison(None);
                Err(SpoolError::Io { path, source: e })
            }
        }
    }

    /// The master acknowledged every record up to `seq` (clamped to the last seq handed
    /// out): persist it durably, then delete the segments wholly at or below it (never the
    /// one being written).
    ///
    /// # Errors
    /// `Io` when `acked` cannot be written (then nothing is deleted) or a segment cannot
    /// be deleted (retried on the next ack).
    pub fn ack(&mut self, seq: u64) -> Result<(), SpoolError> {
        let seq = seq.min(self.next_seq.saturating_sub(1));
        if seq > self.acked {
            let path = self.dir.join("acked");
            crate::nodeconf::write_atomic(&path, format!("{seq}\n").as_bytes(), 0o600)
                .map_err(|e| conf_err(&path, e))?;
            self.acked = seq;
        }
        let keep_last = usize::from(self.writer.is_some());
        let mut deleted = false;
        while self.segments.len() > keep_last {
            let seg = &self.segments[0];
            if seg.last.is_some_and(|l| l > self.acked) {
                break;
            }
            remove(&seg.path)?;
            self.segments.remove(0);
            deleted = true;
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Open (or with `create`, create anew) a segment for appending, mode 0600.
fn open_for_append(path: &Path, create: bool) -> Result<File, SpoolError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create_new(create)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

/// Delete a file; one already gone is fine.
fn remove(path: &Path) -> Result<(), SpoolError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SpoolError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Map an error of `nodeconf::write_atomic`.
fn conf_err(path: &Path, e: crate::nodeconf::ConfError) -> SpoolError {
    match e {
        crate::nodeconf::ConfError::Io { path, source } => SpoolError::Io { path, source },
        other => SpoolError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}
