//! The write path: framing a record into the current segment, rolling segments, cutting
//! back after a failed write, and the size bound.

use std::io::{BufWriter, Write};

use super::{open_for_append, remove, segment, sync_dir, Segment, Spool, SpoolError, Writer};
use crate::reportapi::{Payload, SpoolRecord};

impl Spool {
    /// Frame and write one record to the current segment (rolling first if needed).
    pub(super) fn write_record(&mut self, payload: Payload) -> Result<u64, SpoolError> {
        let seq = self.next_seq;
        let gap = match payload {
            Payload::Gap { from, to } => Some((from, to)),
            _ => None,
        };
        let frame = segment::encode(&SpoolRecord { seq, payload })?;
        self.ensure_writer(frame.len() as u64)?;
        let (Some(w), Some(seg)) = (self.writer.as_mut(), self.segments.last_mut()) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no segment open"),
            });
        };
        self.next_seq = seq.saturating_add(1);
        match w.out.write_all(&frame) {
            Ok(()) => {
                seg.bytes += frame.len() as u64;
                seg.last = Some(seq);
                if let Some((from, _)) = gap {
                    seg.min_gap_from = Some(seg.min_gap_from.map_or(from, |m| m.min(from)));
                }
                w.dirty = true;
                Ok(seq)
            }
            Err(e) => {
                let path = seg.path.clone();
                self.poison(gap);
                Err(SpoolError::Io { path, source: e })
            }
        }
    }

    /// Make sure a segment with room for `frame_len` more bytes is open.
    pub(super) fn ensure_writer(&mut self, frame_len: u64) -> Result<(), SpoolError> {
        if let (Some(_), Some(seg)) = (&self.writer, self.segments.last()) {
            if seg.bytes == 0 || seg.bytes + frame_len <= self.opts.segment_bytes {
                return Ok(());
            }
            self.flush()?;
            self.writer = None;
        }
        self.open_segment()
    }

    /// Open the last segment for appending if it is named `next_seq` (empty), else create
    /// `seg-<next_seq>.log`, and fsync the directory.
    pub(super) fn open_segment(&mut self) -> Result<(), SpoolError> {
        let reuse = self
            .segments
            .last()
            .is_some_and(|s| s.first == self.next_seq);
        let path = self.dir.join(segment::segment_name(self.next_seq));
        let file = open_for_append(&path, !reuse)?;
        if !reuse {
            sync_dir(&self.dir)?;
            self.segments.push(Segment {
                first: self.next_seq,
                last: None,
                bytes: 0,
                min_gap_from: None,
                path,
            });
        }
        let seg = self.segments.last();
        self.writer = Some(Writer {
            out: BufWriter::with_capacity(256 << 10, file),
            flushed_len: seg.map_or(0, |s| s.bytes),
            flushed_last: seg.and_then(|s| s.last),
            dirty: false,
        });
        Ok(())
    }

    /// After a failed write: cut the segment back to its last flush, close it, and
    /// remember the seqs lost (plus `gap`, a Gap record that failed) for the next append.
    pub(super) fn poison(&mut self, gap: Option<(u64, u64)>) {
        self.cursor = None;
        let Some(w) = self.writer.take() else {
            return;
        };
        let (file, _unwritten) = w.out.into_parts();
        let _ = file.set_len(w.flushed_len).and_then(|()| file.sync_all());
        let last_seq = self.next_seq.saturating_sub(1);
        if let Some(seg) = self.segments.last_mut() {
            let from = w
                .flushed_last
                .map_or(seg.first, |l| l.saturating_add(1))
                .max(self.acked.saturating_add(1));
            seg.bytes = w.flushed_len;
            seg.last = w.flushed_last;
            let mut note = format!(
                "spool: write to {} failed; cut back to its last flush ({} bytes)",
                seg.path.display(),
                w.flushed_len
            );
            if from <= last_seq {
                self.lost.push((from, last_seq));
                note.push_str(&format!("; records {from}..={last_seq} lost"));
            }
            self.notes.push(note);
        }
        if let Some(g) = gap {
            self.lost.push(g);
        }
    }

    /// Drop the oldest segments while the spool is over `max_bytes`, declaring the loss.
    pub(super) fn enforce_max(&mut self) -> Result<(), SpoolError> {
        let mut rounds = self.segments.len();
        while rounds > 0 && self.segments.len() > 1 {
            rounds -= 1;
            let total: u64 = self.segments.iter().map(|s| s.bytes).sum();
            if total <= self.opts.max_bytes {
                break;
            }
            let seg = self.segments.remove(0);
            remove(&seg.path)?;
            sync_dir(&self.dir)?;
            if self.cursor.is_some_and(|c| c.segment == seg.first) {
                self.cursor = None;
            }
            let Some(last) = seg.last else { continue };
            let from = seg
                .min_gap_from
                .map_or(seg.first, |g| g.min(seg.first))
                .max(self.acked.saturating_add(1));
            let mut note = format!(
                "spool full ({total} bytes > {} bytes): dropped {} (records {}..={last})",
                self.opts.max_bytes,
                seg.path.display(),
                seg.first
            );
            if from <= last {
                note.push_str(&format!(
                    "; records {from}..={last} were not acknowledged: recorded as a gap"
                ));
                self.notes.push(note);
                self.write_record(Payload::Gap { from, to: last })?;
            } else {
                note.push_str("; all were acknowledged");
                self.notes.push(note);
            }
        }
        Ok(())
    }
}
