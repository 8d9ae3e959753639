//! The read path: records after a seq, within limits, from the flushed segments.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use super::{io, segment, Cursor, Segment, Spool, SpoolError};
use crate::reportapi::SpoolRecord;

impl Spool {
    /// Records with `seq > after_seq`, in order, up to `max_bytes` of payload or
    /// `max_records` records (always at least one if there is any). Flushes (and fsyncs)
    /// first, so everything appended is seen and what is returned is durable.
    ///
    /// # Errors
    /// `Io`; `Corrupt` if a segment was damaged after the spool was opened.
    pub fn read_batch(
        &mut self,
        after_seq: u64,
        max_bytes: usize,
        max_records: usize,
    ) -> Result<Vec<SpoolRecord>, SpoolError> {
        let mut out = Vec::new();
        if after_seq.saturating_add(1) >= self.next_seq {
            return Ok(out);
        }
        self.flush()?;
        let cursor = self
            .cursor
            .filter(|c| c.after == after_seq && self.segments.iter().any(|s| s.first == c.segment));
        let mut bytes = 0usize;
        let mut last_pos = None;
        for seg in &self.segments {
            let start = match cursor {
                Some(c) if seg.first < c.segment => continue,
                Some(c) if seg.first == c.segment => c.offset,
                _ if seg.last.is_none_or(|l| l <= after_seq) => continue,
                _ => 0,
            };
            let full = read_segment(
                seg,
                start,
                after_seq,
                &mut out,
                &mut bytes,
                max_bytes,
                max_records,
            )?;
            if let Some(off) = full.last_offset {
                last_pos = Some((seg.first, off));
            }
            if full.stopped {
                break;
            }
        }
        if let (Some(rec), Some((segment, offset))) = (out.last(), last_pos) {
            self.cursor = Some(Cursor {
                after: rec.seq,
                segment,
                offset,
            });
        }
        Ok(out)
    }
}

/// How [`read_segment`] ended.
struct ReadEnd {
    /// Offset just past the last record taken from this segment, if any.
    last_offset: Option<u64>,
    /// Whether a limit was reached.
    stopped: bool,
}

/// Append the records of `seg` from `start` with seq > `after` to `out`, within limits.
fn read_segment(
    seg: &Segment,
    start: u64,
    after: u64,
    out: &mut Vec<SpoolRecord>,
    bytes: &mut usize,
    max_bytes: usize,
    max_records: usize,
) -> Result<ReadEnd, SpoolError> {
    let mut end = ReadEnd {
        last_offset: None,
        stopped: false,
    };
    if start >= seg.bytes {
        return Ok(end);
    }
    let mut file = File::open(&seg.path).map_err(io(&seg.path))?;
    file.seek(SeekFrom::Start(start)).map_err(io(&seg.path))?;
    let mut r = BufReader::with_capacity(256 << 10, file.take(seg.bytes - start));
    let mut pos = start;
    let corrupt = |offset: u64, reason: String| SpoolError::Corrupt {
        path: seg.path.clone(),
        offset,
        reason,
    };
    let mut header = [0u8; segment::HEADER];
    let mut payload = Vec::new();
    while pos < seg.bytes {
        r.read_exact(&mut header)
            .map_err(|e| corrupt(pos, format!("torn frame header ({e})")))?;
        let len = segment::frame_len(&header).map_err(|d| corrupt(pos, d.to_string()))?;
        if !out.is_empty() && (out.len() >= max_records || *bytes + len > max_bytes) {
            end.stopped = true;
            break;
        }
        payload.resize(len, 0);
        r.read_exact(&mut payload)
            .map_err(|e| corrupt(pos, format!("torn frame ({e})")))?;
        let rec =
            segment::decode_payload(&header, &payload).map_err(|d| corrupt(pos, d.to_string()))?;
        pos += (segment::HEADER + len) as u64;
        if rec.seq > after {
            *bytes += len;
            out.push(rec);
            end.last_offset = Some(pos);
        }
    }
    Ok(end)
}
