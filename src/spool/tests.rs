//! Spool tests: round trips, reopen, ack, damage (torn tails, flipped bytes, a writer
//! killed mid-record, damage in an older segment), the size bound, and the frame format.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::reportapi::SpoolRecord;

fn small() -> SpoolOptions {
    SpoolOptions {
        segment_bytes: 256,
        max_bytes: 1 << 20,
    }
}

fn ev(i: u64) -> Payload {
    Payload::Event {
        line: format!("event number {i}"),
    }
}

fn all(spool: &mut Spool) -> Vec<SpoolRecord> {
    spool.read_batch(0, usize::MAX, usize::MAX).unwrap()
}

fn seqs(records: &[SpoolRecord]) -> Vec<u64> {
    records.iter().map(|r| r.seq).collect()
}

fn gaps(records: &[SpoolRecord]) -> Vec<(u64, u64)> {
    records
        .iter()
        .filter_map(|r| match r.payload {
            Payload::Gap { from, to } => Some((from, to)),
            _ => None,
        })
        .collect()
}

fn seg_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    v.sort();
    v
}

/// Every seq handed out is acknowledged, held by a record, or inside a gap, and no
/// record's seq is also declared lost.
fn assert_accounted(spool: &mut Spool) {
    let recs = all(spool);
    let gaps = gaps(&recs);
    let held: Vec<u64> = seqs(&recs);
    for s in 1..spool.next_seq() {
        let in_gap = gaps.iter().any(|&(f, t)| (f..=t).contains(&s));
        let is_held = held.contains(&s);
        assert!(
            s <= spool.acked() || is_held || in_gap,
            "seq {s} unaccounted: held {held:?} gaps {gaps:?}"
        );
        assert!(
            !(is_held && in_gap && s > spool.acked()),
            "seq {s} held and declared lost"
        );
    }
}

fn open(dir: &Path, opts: SpoolOptions) -> (Spool, Vec<String>) {
    Spool::open(dir, opts).unwrap()
}

#[test]
fn append_read_ack_round_trip_across_rolls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = spool_dir(tmp.path());
    let (mut spool, notes) = open(&dir, small());
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(spool.epoch().len(), 16);
    for i in 1..=40 {
        assert_eq!(spool.append(ev(i)).unwrap(), i);
    }
    assert!(seg_files(&dir).len() >= 4, "small segments roll");
    let recs = all(&mut spool);
    assert_eq!(seqs(&recs), (1..=40).collect::<Vec<_>>());
    assert_eq!(recs[6].payload, ev(7));

    // batches by count and by bytes, resuming after the last seq returned
    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let batch = spool.read_batch(after, usize::MAX, 7).unwrap();
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 7);
        after = batch.last().unwrap().seq;
        got.extend(seqs(&batch));
    }
    assert_eq!(got, (1..=40).collect::<Vec<_>>());
    let one = spool.read_batch(10, 1, 100).unwrap();
    assert_eq!(
        seqs(&one),
        vec![11],
        "at least one record even past max_bytes"
    );
    let len = serde_json::to_vec(&one[0]).unwrap().len();
    let two = spool.read_batch(10, 2 * len + 1, 100).unwrap();
    assert_eq!(seqs(&two), vec![11, 12]);

    spool.ack(25).unwrap();
    assert_eq!(
        seqs(&spool.read_batch(25, usize::MAX, usize::MAX).unwrap()),
        (26..=40).collect::<Vec<_>>()
    );
    let st = spool.stats();
    assert_eq!((st.spooled, st.acked, st.pending_records), (40, 25, 15));
    assert_eq!(st.segments as usize, seg_files(&dir).len());
    assert_eq!(
        st.bytes_on_disk,
        seg_files(&dir)
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .sum::<u64>()
    );
}

#[test]
fn reopen_continues_seq_and_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(tmp.path(), small());
    let epoch = spool.epoch().to_string();
    for i in 1..=5 {
        spool.append(ev(i)).unwrap();
    }
    drop(spool);
    let (mut spool, notes) = open(tmp.path(), small());
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(spool.epoch(), epoch);
    assert_eq!(spool.next_seq(), 6);
    assert_eq!(spool.append(ev(6)).unwrap(), 6);
    assert_eq!(seqs(&all(&mut spool)), (1..=6).collect::<Vec<_>>());
    assert_eq!(
        fs::read_to_string(tmp.path().join("epoch")).unwrap().trim(),
        epoch
    );
}

#[test]
fn ack_deletes_only_wholly_acked_segments_and_persists() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(tmp.path(), small());
    for i in 1..=30 {
        spool.append(ev(i)).unwrap();
    }
    spool.flush().unwrap();
    let before = seg_files(tmp.path());
    let firsts: Vec<u64> = before.iter().map(|p| first_of(p)).collect();
    // ack in the middle of the third segment
    let mid = firsts[2] + 1;
    spool.ack(mid).unwrap();
    let after = seg_files(tmp.path());
    assert_eq!(
        after,
        before[2..].to_vec(),
        "only the two wholly acked segments go"
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("acked")).unwrap().trim(),
        mid.to_string()
    );
    spool.ack(mid - 5).unwrap();
    assert_eq!(spool.acked(), mid, "acks never go back");
    drop(spool);

    let (mut spool, notes) = open(tmp.path(), small());
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(spool.acked(), mid);
    assert_eq!(spool.next_seq(), 31);
    let rest = spool
        .read_batch(spool.acked(), usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(seqs(&rest), (mid + 1..=30).collect::<Vec<_>>());

    spool.ack(1000).unwrap();
    assert_eq!(spool.acked(), 30, "clamped to the last seq handed out");
    assert_eq!(
        seg_files(tmp.path()).len(),
        1,
        "the segment being written stays"
    );
    assert!(spool
        .read_batch(30, usize::MAX, usize::MAX)
        .unwrap()
        .is_empty());
    assert_eq!(spool.stats().pending_records, 0);
}

fn first_of(p: &Path) -> u64 {
    segment::parse_segment_name(&p.file_name().unwrap().to_string_lossy()).unwrap()
}

fn last_file(dir: &Path) -> PathBuf {
    seg_files(dir).pop().unwrap()
}

fn ten_records(dir: &Path) {
    let (mut spool, _) = open(dir, SpoolOptions::default());
    for i in 1..=10 {
        spool.append(ev(i)).unwrap();
    }
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    let tmp = tempfile::tempdir().unwrap();
    ten_records(tmp.path());
    let file = last_file(tmp.path());
    let len = fs::metadata(&file).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 5)
        .unwrap();

    let (mut spool, notes) = open(tmp.path(), SpoolOptions::default());
    assert_eq!(notes.len(), 1, "{notes:?}");
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        notes[0].contains(&name) && notes[0].contains("torn"),
        "{}",
        notes[0]
    );
    let frame = segment::encode(&SpoolRecord {
        seq: 10,
        payload: ev(10),
    })
    .unwrap()
    .len() as u64;
    assert!(
        notes[0].contains(&format!("at offset {}", len - frame)),
        "{}",
        notes[0]
    );
    assert!(
        notes[0].contains(&format!("cut {} bytes", frame - 5)),
        "{}",
        notes[0]
    );
    assert_eq!(fs::metadata(&file).unwrap().len(), len - frame);
    assert_eq!(seqs(&all(&mut spool)), (1..=9).collect::<Vec<_>>());
    assert_eq!(spool.append(ev(99)).unwrap(), 10);
    drop(spool);
    let (mut spool, notes) = open(tmp.path(), SpoolOptions::default());
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(all(&mut spool).last().unwrap().payload, ev(99));
}

#[test]
fn flipped_byte_in_last_record_is_cut() {
    let tmp = tempfile::tempdir().unwrap();
    ten_records(tmp.path());
    let file = last_file(tmp.path());
    let mut bytes = fs::read(&file).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x04;
    fs::write(&file, &bytes).unwrap();

    let (mut spool, notes) = open(tmp.path(), SpoolOptions::default());
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("CRC32C"), "{}", notes[0]);
    assert_eq!(seqs(&all(&mut spool)), (1..=9).collect::<Vec<_>>());
    assert_eq!(spool.next_seq(), 10);
    assert_eq!(spool.append(ev(10)).unwrap(), 10);
}

#[test]
fn writer_killed_mid_record_reopens_fine() {
    let tmp = tempfile::tempdir().unwrap();
    ten_records(tmp.path());
    let file = last_file(tmp.path());
    let good = fs::metadata(&file).unwrap().len();
    // what a killed writer leaves: half of the next frame, then (another run) garbage
    let frame = segment::encode(&SpoolRecord {
        seq: 11,
        payload: ev(11),
    })
    .unwrap();
    let mut f = fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all(&frame[..frame.len() / 2]).unwrap();
    drop(f);
    let (mut spool, notes) = open(tmp.path(), SpoolOptions::default());
    assert!(notes.len() == 1 && notes[0].contains("torn"), "{notes:?}");
    assert_eq!(fs::metadata(&file).unwrap().len(), good);
    assert_eq!(seqs(&all(&mut spool)), (1..=10).collect::<Vec<_>>());
    assert_eq!(spool.append(ev(11)).unwrap(), 11);
    drop(spool);

    let mut f = fs::OpenOptions::new().append(true).open(&file).unwrap();
    f.write_all(&[0xff, 0xff, 0x00, 0x00, 1, 2, 3]).unwrap();
    drop(f);
    let (mut spool, notes) = open(tmp.path(), SpoolOptions::default());
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(seqs(&all(&mut spool)), (1..=11).collect::<Vec<_>>());
    assert_eq!(spool.append(ev(12)).unwrap(), 12);
}

#[test]
fn damage_in_an_older_segment_is_cut_and_declared_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(tmp.path(), small());
    for i in 1..=30 {
        spool.append(ev(i)).unwrap();
    }
    drop(spool);
    let files = seg_files(tmp.path());
    let second = &files[1];
    let first_seq = first_of(second);
    let next_first = first_of(&files[2]);
    let mut bytes = fs::read(second).unwrap();
    let frame = segment::encode(&SpoolRecord {
        seq: first_seq,
        payload: ev(first_seq),
    })
    .unwrap()
    .len();
    bytes[frame + 12] ^= 0x10; // inside its second record
    fs::write(second, &bytes).unwrap();

    let (mut spool, notes) = open(tmp.path(), small());
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains(&second.file_name().unwrap().to_string_lossy().to_string()));
    assert!(
        notes[1].contains(&format!("records {}..={}", first_seq + 1, next_first - 1)),
        "{}",
        notes[1]
    );
    let recs = all(&mut spool);
    assert_eq!(gaps(&recs), vec![(first_seq + 1, next_first - 1)]);
    assert_eq!(
        recs.last().unwrap().seq,
        31,
        "the gap record continues the sequence"
    );
    assert!(seqs(&recs).contains(&first_seq) && seqs(&recs).contains(&next_first));
    assert_accounted(&mut spool);
    drop(spool);
    let (_, notes) = open(tmp.path(), small());
    assert!(notes.is_empty(), "healed for good: {notes:?}");
}

#[test]
fn damage_before_good_frames_never_reuses_their_seqs() {
    let tmp = tempfile::tempdir().unwrap();
    ten_records(tmp.path());
    let file = last_file(tmp.path());
    let mut bytes = fs::read(&file).unwrap();
    let frame = segment::encode(&SpoolRecord {
        seq: 1,
        payload: ev(1),
    })
    .unwrap()
    .len();
    bytes[3 * frame + 12] ^= 0x10; // record 4 of 10
    fs::write(&file, &bytes).unwrap();

    let (mut spool, notes) = open(tmp.path(), SpoolOptions::default());
    assert_eq!(notes.len(), 2, "{notes:?}");
    let recs = all(&mut spool);
    assert_eq!(seqs(&recs), vec![1, 2, 3, 11]);
    assert_eq!(gaps(&recs), vec![(4, 10)]);
    assert_eq!(spool.append(ev(12)).unwrap(), 12);
}

#[test]
fn full_spool_drops_the_oldest_segment_and_records_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = SpoolOptions {
        segment_bytes: 256,
        max_bytes: 1024,
    };
    let (mut spool, _) = open(tmp.path(), opts);
    let mut i = 0;
    while spool.take_notes().is_empty() || i < 3 {
        i += 1;
        spool.append(ev(i)).unwrap();
        assert!(i < 100, "never dropped");
    }
    let recs = all(&mut spool);
    let g = gaps(&recs);
    assert_eq!(g.len(), 1, "{recs:?}");
    assert_eq!(g[0].0, 1);
    let first_held = recs
        .iter()
        .find(|r| !matches!(r.payload, Payload::Gap { .. }))
        .unwrap()
        .seq;
    assert_eq!(
        g[0].1,
        first_held - 1,
        "the gap is exactly the dropped records"
    );
    assert!(spool.stats().bytes_on_disk <= 1024 + 256);
    assert_accounted(&mut spool);

    // with part acknowledged, only what was not acked is declared lost
    let acked = spool.next_seq() - 3;
    spool.ack(acked).unwrap();
    let before = seg_files(tmp.path());
    let mark = spool.next_seq();
    let mut notes = Vec::new();
    while notes.is_empty() {
        i += 1;
        spool.append(ev(i)).unwrap();
        notes = spool.take_notes();
    }
    let dropped = before[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        notes[0].contains("dropped") && notes[0].contains(&dropped),
        "{notes:?}"
    );
    let recs = spool.read_batch(mark - 1, usize::MAX, usize::MAX).unwrap();
    let g = gaps(&recs);
    assert_eq!(g.len(), 1, "{recs:?}");
    assert_eq!(g[0].0, acked + 1, "{g:?}");
    assert_accounted(&mut spool);
}

#[test]
fn crash_between_drop_and_gap_heals_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(tmp.path(), small());
    for i in 1..=30 {
        spool.append(ev(i)).unwrap();
    }
    spool.ack(2).unwrap();
    drop(spool);
    let files = seg_files(tmp.path());
    let lost_to = first_of(&files[1]) - 1;
    fs::remove_file(&files[0]).unwrap();
    let (mut spool, notes) = open(tmp.path(), small());
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(gaps(&all(&mut spool)), vec![(3, lost_to)]);
    assert_accounted(&mut spool);
}

#[test]
fn lost_epoch_gets_a_new_one_and_accounts_for_old_seqs() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut spool, _) = open(tmp.path(), small());
    let old = spool.epoch().to_string();
    for i in 1..=20 {
        spool.append(ev(i)).unwrap();
    }
    spool.ack(12).unwrap();
    drop(spool);
    fs::remove_file(tmp.path().join("epoch")).unwrap();
    let (mut spool, notes) = open(tmp.path(), small());
    assert_ne!(spool.epoch(), old);
    assert_eq!(notes.len(), 1, "{notes:?}");
    let recs = spool.read_batch(12, usize::MAX, usize::MAX).unwrap();
    assert_eq!(gaps(&recs), vec![(1, 12)]);
    assert_eq!(recs.len(), 9);
}

#[test]
fn old_frames_stay_readable() {
    // a frame as written by the first version, byte for byte
    let tmp = tempfile::tempdir().unwrap();
    let json = br#"{"seq":1,"payload":{"kind":"event","line":"ssqd started"}}"#;
    let mut frame = (json.len() as u32).to_le_bytes().to_vec();
    frame.extend(crc32c(json).to_le_bytes());
    frame.extend(json);
    fs::write(tmp.path().join("epoch"), "0123456789abcdef\n").unwrap();
    fs::write(tmp.path().join("seg-00000000000000000001.log"), &frame).unwrap();
    let (mut spool, notes) = open(tmp.path(), small());
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(spool.epoch(), "0123456789abcdef");
    let recs = all(&mut spool);
    assert_eq!(
        recs[0].payload,
        Payload::Event {
            line: "ssqd started".into()
        }
    );
    assert_eq!(segment::encode(&recs[0]).unwrap(), frame);
}

#[test]
fn bad_options_and_oversized_records_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = SpoolOptions {
        segment_bytes: 1 << 20,
        max_bytes: 1 << 20,
    };
    assert!(matches!(
        Spool::open(tmp.path(), bad),
        Err(SpoolError::Options(_))
    ));
    let (mut spool, _) = open(tmp.path(), small());
    let huge = Payload::Event {
        line: "x".repeat(segment::MAX_PAYLOAD + 1),
    };
    assert!(matches!(
        spool.append(huge),
        Err(SpoolError::TooLarge { .. })
    ));
    assert_eq!(spool.append(ev(1)).unwrap(), 1, "no seq was used");
}
