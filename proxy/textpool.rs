//! Spare strings for the access record's text, so that a busy proxy fills strings it
//! already has instead of allocating a handful per request.
//!
//! On a node without a spool (standalone, master) a record's access.log line is written
//! on the worker that made it (`accesslog`), and the record's strings go straight back
//! to that worker's spares ([`keep`]): taken and kept on one thread, they never meet
//! another thread's part of the allocator. On a slave the record travels on to the
//! access-log thread for the spool, which consumes it; its worker allocates afresh.

use std::cell::RefCell;

use ssq::accessrecord::AccessRecord;

/// Strings one thread keeps, at most (a few tens of KiB).
const KEEP: usize = 512;
/// A string larger than this is not kept (one long URL must not hold memory for good).
const MAX_ROOM: usize = 256;

thread_local! {
    static LOCAL: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// An empty string: a spare one when this thread has one.
pub fn blank() -> String {
    LOCAL.with(|local| {
        local
            .try_borrow_mut()
            .ok()
            .and_then(|mut l| l.pop())
            .unwrap_or_default()
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
    LOCAL.with(|local| {
        let Ok(mut local) = local.try_borrow_mut() else {
            return;
        };
        for mut s in all {
            if local.len() >= KEEP {
                break;
            }
            if s.capacity() > 0 && s.capacity() <= MAX_ROOM {
                s.clear();
                local.push(s);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_go_round_on_their_thread_emptied_and_small_ones_only() {
        // On a thread of its own: the test harness may run others on this one.
        std::thread::spawn(|| {
            let rec = AccessRecord {
                node: "n".into(),
                client: "10.0.0.1".into(),
                method: "GET".into(),
                url: "x".repeat(MAX_ROOM + 1),
                action: "allowed".into(),
                peer: Some("10.0.0.2".into()),
                ..AccessRecord::default()
            };
            // Where each string's bytes are: a spare taken again is one of them.
            let small: Vec<usize> = [&rec.node, &rec.client, &rec.method, &rec.action]
                .iter()
                .map(|s| s.as_ptr() as usize)
                .chain(rec.peer.iter().map(|s| s.as_ptr() as usize))
                .collect();
            let url = rec.url.as_ptr() as usize;
            keep(rec);
            // The URL is too large to keep; the empty Options give nothing: five spares,
            // each handed out emptied, then new strings.
            let mut places = Vec::new();
            for _ in 0..5 {
                let t = blank();
                assert!(t.is_empty(), "a spare comes back emptied: {t:?}");
                places.push(t.as_ptr() as usize);
            }
            places.sort_unstable();
            let mut want = small.clone();
            want.sort_unstable();
            assert_eq!(places, want, "the five small strings, and only those");
            assert!(!places.contains(&url));
            assert_eq!(blank().capacity(), 0, "no spare left: a new, empty string");
            // Another thread has none of this one's spares.
            keep(AccessRecord {
                client: "10.0.0.9".into(),
                ..AccessRecord::default()
            });
            let other = std::thread::spawn(|| blank().capacity())
                .join()
                .expect("thread");
            assert_eq!(other, 0);
            assert_eq!(text("abc"), "abc");
        })
        .join()
        .expect("test thread");
    }
}
