//! Opening a spool: create it, or scan what is there, cut damage, and declare holes.

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use super::segment::{self, parse_segment_name};
use super::{conf_err, io, open_for_append, Segment, Spool, SpoolError, SpoolOptions, Writer};
use crate::reportapi::Payload;

impl Spool {
    /// Open the spool in `dir` (normally [`spool_dir`](super::spool_dir)), creating the
    /// directory and its epoch if absent. Every segment is scanned in order; damage (a
    /// torn frame, a bad CRC, a payload that is not a record, an impossible length or seq)
    /// is cut at the last good record, the file truncated and fsynced. Seqs missing after
    /// that (and not acknowledged or covered by a Gap record) get a Gap record.
    ///
    /// Returns the spool and notes for extended.log (each cut: file, offset, bytes cut;
    /// each gap written).
    ///
    /// # Errors
    /// `Options` for bad sizes; `Io` when the directory or a file cannot be read or written
    /// (never for what a segment contains); `Epoch` when no random id can be made.
    pub fn open(dir: &Path, opts: SpoolOptions) -> Result<(Spool, Vec<String>), SpoolError> {
        opts.validate()?;
        let mut notes = Vec::new();
        create_dir(dir)?;
        remove_temp_files(dir)?;
        let acked = read_acked(dir, &mut notes)?;
        let (epoch, new_epoch) = read_or_create_epoch(dir, &mut notes)?;

        let mut segments = Vec::new();
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let mut highest = 0u64;
        for (first, path) in list_segments(dir, &mut notes)? {
            let data = fs::read(&path).map_err(io(&path))?;
            let s = segment::scan(&data, highest.saturating_add(1).max(first));
            if let Some((offset, damage)) = &s.damage {
                cut(&path, s.good_len)?;
                notes.push(format!(
                    "spool: {}: {damage} at offset {offset}; cut {} bytes, kept {} records",
                    path.display(),
                    data.len() as u64 - s.good_len,
                    s.records
                ));
            }
            highest = highest
                .max(first.saturating_sub(1))
                .max(s.last.unwrap_or(0))
                .max(s.salvaged_max.unwrap_or(0));
            covered.extend(&s.runs);
            covered.extend(s.gaps.iter().filter(|g| g.0 <= g.1));
            segments.push(Segment {
                first,
                last: s.last,
                bytes: s.good_len,
                min_gap_from: s.gaps.iter().map(|g| g.0).min(),
                path,
            });
        }

        let mut gaps = Vec::new();
        if new_epoch && (!segments.is_empty() || acked > 0) {
            // The records below the first one left (and up to `acked`) went to the master
            // under the lost epoch; in this one they must be accounted for to be passed.
            let lowest = covered.iter().map(|r| r.0).min();
            let upto = acked.max(lowest.map_or(highest, |l| l.saturating_sub(1)));
            if upto >= 1 {
                notes.push(format!(
                    "spool: the epoch file was lost; new epoch {epoch}: seqs 1..={upto} of it \
                     are recorded as a gap (they were shipped, or lost, under the old epoch)"
                ));
                gaps.push((1, upto));
                covered.push((1, upto));
            }
        }
        if acked >= 1 {
            covered.push((1, acked));
        }
        let next_seq = highest.max(acked).saturating_add(1);
        for (from, to) in uncovered(covered, next_seq.saturating_sub(1)) {
            notes.push(format!(
                "spool: records {from}..={to} are missing (cut from a damaged segment, or \
                 dropped before their gap was written): recorded as a gap"
            ));
            gaps.push((from, to));
        }

        let mut spool = Spool {
            dir: dir.to_path_buf(),
            opts,
            epoch,
            acked,
            next_seq,
            segments,
            writer: None,
            lost: Vec::new(),
            cursor: None,
            notes: Vec::new(),
        };
        if let Some(last) = spool.segments.last() {
            let file = open_for_append(&last.path, false)?;
            spool.writer = Some(Writer {
                out: BufWriter::with_capacity(256 << 10, file),
                flushed_len: last.bytes,
                flushed_last: last.last,
                dirty: false,
            });
        }
        for (from, to) in gaps {
            spool.write_record(Payload::Gap { from, to })?;
        }
        spool.flush()?;
        if let Err(e) = spool.enforce_max() {
            notes.push(format!("spool: cannot enforce the size bound: {e}"));
        }
        spool.flush()?;
        notes.append(&mut spool.notes);
        Ok((spool, notes))
    }
}

/// Create the spool directory (0700) if absent, durably.
fn create_dir(dir: &Path) -> Result<(), SpoolError> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => super::sync_dir(p),
        _ => Ok(()),
    }
}

/// Remove temp files an interrupted atomic write left behind.
fn remove_temp_files(dir: &Path) -> Result<(), SpoolError> {
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') && name.ends_with(".tmp") {
            super::remove(&entry.path())?;
        }
    }
    Ok(())
}

/// The persisted acknowledgement (0 if absent; 0 with a note if unreadable: the master
/// drops what is resent, so starting low loses nothing).
fn read_acked(dir: &Path, notes: &mut Vec<String>) -> Result<u64, SpoolError> {
    let path = dir.join("acked");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().parse().unwrap_or_else(|_| {
            notes.push(format!(
                "spool: {} does not hold a number; starting from 0 (the master drops resent records)",
                path.display()
            ));
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(SpoolError::Io { path, source: e }),
    }
}

/// The epoch, and whether it was created just now.
fn read_or_create_epoch(dir: &Path, notes: &mut Vec<String>) -> Result<(String, bool), SpoolError> {
    let path = dir.join("epoch");
    match fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.len() == 16
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Ok((id.to_string(), false));
            }
            notes.push(format!(
                "spool: {} is damaged; creating a new epoch",
                path.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(SpoolError::Io { path, source: e }),
    }
    let id = crate::keys::random_bytes::<8>()
        .map(|b| crate::keys::hex(&b))
        .map_err(|e| SpoolError::Epoch(e.to_string()))?;
    crate::nodeconf::write_atomic(&path, format!("{id}\n").as_bytes(), 0o600)
        .map_err(|e| conf_err(&path, e))?;
    Ok((id, true))
}

/// The segment files, by first seq.
fn list_segments(dir: &Path, notes: &mut Vec<String>) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        match parse_segment_name(&name) {
            Some(first) => found.push((first, entry.path())),
            None if name.starts_with("seg-") => {
                notes.push(format!(
                    "spool: ignoring {}: not a segment name",
                    entry.path().display()
                ));
            }
            None => {}
        }
    }
    found.sort();
    Ok(found)
}

/// Truncate a segment to its good prefix, durably.
fn cut(path: &Path, len: u64) -> Result<(), SpoolError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(path))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

/// The ranges of `1..=upto` that no range in `covered` contains.
fn uncovered(mut covered: Vec<(u64, u64)>, upto: u64) -> Vec<(u64, u64)> {
    covered.sort_unstable();
    let mut holes = Vec::new();
    let mut next = 1u64; // lowest seq not yet known covered
    for (from, to) in covered {
        if next > upto {
            break;
        }
        if from > next {
            holes.push((next, (from - 1).min(upto)));
        }
        if to >= next {
            match to.checked_add(1) {
                Some(n) => next = n,
                None => return holes,
            }
        }
    }
    if next <= upto {
        holes.push((next, upto));
    }
    holes
}

#[cfg(test)]
mod tests {
    use super::uncovered;

    #[test]
    fn holes_between_runs_gaps_and_acked() {
        assert_eq!(uncovered(vec![], 0), vec![]);
        assert_eq!(uncovered(vec![], 3), vec![(1, 3)]);
        assert_eq!(uncovered(vec![(1, 4), (8, 9), (3, 5)], 9), vec![(6, 7)]);
        assert_eq!(uncovered(vec![(2, 2), (4, 20)], 10), vec![(1, 1), (3, 3)]);
        assert_eq!(uncovered(vec![(1, u64::MAX)], u64::MAX), vec![]);
    }
}
