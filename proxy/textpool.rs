//! Spare strings for the access record's text, so that a busy proxy fills strings it
//! already has instead of allocating a handful per request.
//!
//! On a node without a spool (standalone, master) a record's access.log line is written
//! on the worker that made it, and the record's strings go straight back to that
//! worker's spares ([`keep`]). On a slave the record travels to the access-log thread
//! for the spool and is dropped there: each of its strings (the node, the client, the
//! method, the URL, ...) would be freed into another thread's part of the allocator,
//! and the worker would allocate the next ones without a cached chunk, both on glibc's
//! slow path. So the writer hands the strings of the records it spooled back here (one
//! lock per batch), and workers take them in handfuls (one lock per handful).

use std::cell::RefCell;
use std::sync::Mutex;

use ssq::accessrecord::AccessRecord;

/// Strings kept for the workers, at most (a few hundred KiB).
const KEEP: usize = 8192;
/// Strings one thread keeps for itself, at most.
const LOCAL_KEEP: usize = 512;
/// Strings a worker takes at once.
const HANDFUL: usize = 64;
/// A string larger than this is not kept (one long URL must not hold memory for good).
const MAX_ROOM: usize = 256;

static SHARED: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    static LOCAL: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// An empty string: a spare one when there is one.
pub fn blank() -> String {
    LOCAL.with(|local| {
        let Ok(mut local) = local.try_borrow_mut() else {
            return String::new();
        };
        if local.is_empty() {
            if let Ok(mut shared) = SHARED.lock() {
                let from = shared.len().saturating_sub(HANDFUL);
                local.extend(shared.drain(from..));
            }
        }
        local.pop().unwrap_or_default()
    })
}

/// `s`, in a spare string.
pub fn text(s: &str) -> String {
    let mut t = blank();
    t.push_str(s);
    t
}

/// Keep the strings of `rec` (emptied) as this thread's spares, as many as are kept.
pub fn keep(rec: AccessRecord) {
    LOCAL.with(|local| {
        if let Ok(mut local) = local.try_borrow_mut() {
            collect(rec, &mut local);
            local.truncate(LOCAL_KEEP);
        }
    });
}

/// Keep the strings of `rec` (emptied) in `out`, for [`give_back`].
pub fn collect(rec: AccessRecord, out: &mut Vec<String>) {
    let AccessRecord {
        node,
        client,
        user,
        method,
        url,
        action,
        rule,
        peer,
        content_type,
        ..
    } = rec;
    let all = [node, client, method, url, action]
        .into_iter()
        .chain([user, rule, peer, content_type].into_iter().flatten());
    for mut s in all {
        if s.capacity() > 0 && s.capacity() <= MAX_ROOM {
            s.clear();
            out.push(s);
        }
    }
}

/// Hand the strings in `spare` to the workers (as many as are kept; `spare` is left
/// empty).
pub fn give_back(spare: &mut Vec<String>) {
    if spare.is_empty() {
        return;
    }
    if let Ok(mut shared) = SHARED.lock() {
        let room = KEEP.saturating_sub(shared.len());
        let n = room.min(spare.len());
        shared.extend(spare.drain(..n));
    }
    // What found no room is freed here, outside the lock.
    spare.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_go_round_emptied_and_small_ones_only() {
        let rec = AccessRecord {
            node: "n".into(),
            client: "10.0.0.1".into(),
            method: "GET".into(),
            url: "x".repeat(MAX_ROOM + 1),
            action: "allowed".into(),
            peer: Some("10.0.0.2".into()),
            ..AccessRecord::default()
        };
        let mut spare = Vec::new();
        collect(rec, &mut spare);
        // The URL is too large to keep; the empty Options give nothing.
        assert_eq!(spare.len(), 5);
        assert!(spare.iter().all(String::is_empty));
        // Where each kept string's bytes are: a string taken again is one of them.
        let places: Vec<usize> = spare.iter().map(|s| s.as_ptr() as usize).collect();
        give_back(&mut spare);
        assert!(spare.is_empty());
        // Another thread's own spares are none: it takes a handful of the shared ones,
        // and fills one in place ("abc" fits in any of them but the node's).
        let (got, place) = std::thread::spawn(|| {
            let t = text("abc");
            let place = t.as_ptr() as usize;
            (t, place)
        })
        .join()
        .expect("thread");
        assert_eq!(got, "abc");
        assert!(places.contains(&place), "a new string, not a spare one");
    }
}
