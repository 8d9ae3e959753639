//! One segment file: its name, the record frame, and the scan that finds where its good
//! records end (see the layout in the parent module's header).

use std::fmt;

use super::crc::crc32c;
use super::SpoolError;
use crate::reportapi::{Payload, SpoolRecord};

/// Bytes before a frame's payload: `len: u32 LE` + `crc32c: u32 LE`.
pub(super) const HEADER: usize = 8;

/// The largest payload a frame may carry; a longer `len` is damage, not a record.
pub(super) const MAX_PAYLOAD: usize = 16 << 20;

/// How every payload starts (serde_json writes `SpoolRecord`'s fields in order): used only
/// to find frames again after damage, never to accept one.
const PAYLOAD_START: &[u8] = b"{\"seq\":";

/// The file name of the segment whose first sequence number is `first`.
pub(super) fn segment_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

/// The first sequence number in a segment file name, if it is one.
pub(super) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The frame of one record.
///
/// # Errors
/// `SpoolError::Encode` if serde fails, `SpoolError::TooLarge` past [`MAX_PAYLOAD`].
pub(super) fn encode(record: &SpoolRecord) -> Result<Vec<u8>, SpoolError> {
    let json = serde_json::to_vec(record)?;
    if json.len() > MAX_PAYLOAD {
        return Err(SpoolError::TooLarge { len: json.len() });
    }
    let len = u32::try_from(json.len()).map_err(|_| SpoolError::TooLarge { len: json.len() })?;
    let mut frame = Vec::with_capacity(HEADER + json.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&crc32c(&json).to_le_bytes());
    frame.extend_from_slice(&json);
    Ok(frame)
}

/// Why the bytes at some offset are not a good record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Damage {
    /// The file ends inside the header or the payload (a torn write).
    Short {
        /// Bytes present from the frame's start.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// `len` is larger than [`MAX_PAYLOAD`].
    TooLong(u32),
    /// The payload's CRC32C does not match the header.
    Crc,
    /// The payload is not a `SpoolRecord`.
    Json(String),
    /// The record's sequence number does not follow the previous one.
    Order {
        /// The record's seq.
        seq: u64,
        /// The lowest seq allowed here.
        min: u64,
    },
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Short { have, need } => {
                write!(f, "torn frame ({have} of {need} bytes)")
            }
            Damage::TooLong(len) => write!(f, "frame length {len} exceeds 16 MiB"),
            Damage::Crc => write!(f, "CRC32C mismatch"),
            Damage::Json(e) => write!(f, "payload is not a spool record ({e})"),
            Damage::Order { seq, min } => {
                write!(f, "sequence number {seq} out of order (expected >= {min})")
            }
        }
    }
}

/// The `len` field of a frame header, if the header is complete and `len` is allowed.
pub(super) fn frame_len(header: &[u8]) -> Result<usize, Damage> {
    let len_bytes: [u8; 4] =
        header
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(Damage::Short {
                have: header.len(),
                need: HEADER,
            })?;
    let len = u32::from_le_bytes(len_bytes);
    if len as usize > MAX_PAYLOAD {
        return Err(Damage::TooLong(len));
    }
    Ok(len as usize)
}

/// Check a payload against the CRC in its header and decode it.
pub(super) fn decode_payload(header: &[u8], payload: &[u8]) -> Result<SpoolRecord, Damage> {
    let crc_bytes: [u8; 4] =
        header
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(Damage::Short {
                have: header.len(),
                need: HEADER,
            })?;
    if u32::from_le_bytes(crc_bytes) != crc32c(payload) {
        return Err(Damage::Crc);
    }
    serde_json::from_slice(payload).map_err(|e| Damage::Json(e.to_string()))
}

/// Decode the frame at the start of `buf`: the record and the frame's length.
pub(super) fn decode(buf: &[u8]) -> Result<(SpoolRecord, usize), Damage> {
    if buf.len() < HEADER {
        return Err(Damage::Short {
            have: buf.len(),
            need: HEADER,
        });
    }
    let len = frame_len(buf)?;
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Err(Damage::Short {
            have: buf.len(),
            need: HEADER + len,
        });
    };
    Ok((decode_payload(buf, payload)?, HEADER + len))
}

/// What [`scan`] found in one segment's bytes.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// Length of the good prefix: the file is cut here if it is longer.
    pub good_len: u64,
    /// Good records.
    pub records: u64,
    /// Seq of the last good record.
    pub last: Option<u64>,
    /// Runs of consecutive seqs held by good records, ascending.
    pub runs: Vec<(u64, u64)>,
    /// The `from..=to` of each good Gap record.
    pub gaps: Vec<(u64, u64)>,
    /// Where the good prefix ends and why, if it ends before the file does.
    pub damage: Option<(u64, Damage)>,
    /// The highest seq of a well-formed frame found after the damage (kept only so that
    /// no seq is ever handed out twice; such frames are cut with the rest).
    pub salvaged_max: Option<u64>,
}

/// Read the frames of one segment from its bytes. `min_seq` is the lowest seq its first
/// record may have (one past the previous segment's last record, and at least the seq
/// in the file's name); seqs must rise strictly from there.
pub(super) fn scan(buf: &[u8], min_seq: u64) -> Scan {
    let mut s = Scan::default();
    let mut pos = 0usize;
    let mut min = min_seq;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let found = decode(rest).and_then(|(rec, n)| {
            if rec.seq < min {
                Err(Damage::Order { seq: rec.seq, min })
            } else {
                Ok((rec, n))
            }
        });
        match found {
            Ok((rec, n)) => {
                match s.runs.last_mut() {
                    Some((_, hi)) if hi.checked_add(1) == Some(rec.seq) => *hi = rec.seq,
                    _ => s.runs.push((rec.seq, rec.seq)),
                }
                if let Payload::Gap { from, to } = rec.payload {
                    s.gaps.push((from, to));
                }
                s.records += 1;
                s.last = Some(rec.seq);
                min = rec.seq.saturating_add(1);
                pos += n;
            }
            Err(d) => {
                s.damage = Some((pos as u64, d));
                s.salvaged_max = salvage(&buf[pos..], min);
                break;
            }
        }
    }
    s.good_len = pos as u64;
    s
}

/// The highest seq ≥ `min` of any well-formed frame in `buf` after its first byte.
fn salvage(buf: &[u8], min: u64) -> Option<u64> {
    let mut best = None;
    let mut pos = 1usize;
    while pos + HEADER + PAYLOAD_START.len() <= buf.len() {
        let here = &buf[pos..];
        if here[HEADER..].starts_with(PAYLOAD_START) {
            if let Ok((rec, n)) = decode(here) {
                if rec.seq >= min {
                    best = best.max(Some(rec.seq));
                }
                pos += n;
                continue;
            }
        }
        pos += 1;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Vec<u8> {
        encode(&SpoolRecord {
            seq,
            payload: Payload::Event {
                line: format!("event {seq}"),
            },
        })
        .unwrap()
    }

    #[test]
    fn names_round_trip_and_sort_by_seq() {
        assert_eq!(segment_name(42), "seg-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("seg-42.log"), None);
        assert_eq!(parse_segment_name("seg-99999999999999999999.log"), None);
        assert_eq!(parse_segment_name("seg-0000000000000000004x.log"), None);
        assert!(segment_name(9) < segment_name(10));
    }

    #[test]
    fn scan_stops_at_each_kind_of_damage() {
        let mut buf = [frame(1), frame(2)].concat();
        let good = buf.len() as u64;
        let s = scan(&buf, 1);
        assert_eq!((s.good_len, s.records, s.last), (good, 2, Some(2)));
        assert_eq!(s.runs, vec![(1, 2)]);

        let third = frame(3);
        buf.extend_from_slice(&third[..third.len() - 3]);
        let s = scan(&buf, 1);
        assert_eq!(s.good_len, good);
        assert!(matches!(s.damage, Some((o, Damage::Short { .. })) if o == good));

        let mut bad = [frame(1), frame(2), frame(3)].concat();
        let last = bad.len() - 2;
        bad[last] ^= 0x20;
        let s = scan(&bad, 1);
        assert_eq!(
            (s.good_len, s.damage.map(|d| d.1)),
            (good, Some(Damage::Crc))
        );

        let mut long = frame(1);
        long[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            scan(&long, 1).damage.map(|d| d.1),
            Some(Damage::TooLong(u32::MAX))
        );

        let s = scan(&[frame(5), frame(4)].concat(), 1);
        assert_eq!(s.records, 1);
        assert_eq!(
            s.damage.map(|d| d.1),
            Some(Damage::Order { seq: 4, min: 6 })
        );
    }

    #[test]
    fn salvage_finds_later_frames_so_seqs_are_not_reused() {
        let mut buf = [frame(1), frame(2), frame(3)].concat();
        let second = frame(1).len() + 10;
        buf[second] ^= 0x01;
        let s = scan(&buf, 1);
        assert_eq!(s.records, 1);
        assert_eq!(s.salvaged_max, Some(3));
    }
}
