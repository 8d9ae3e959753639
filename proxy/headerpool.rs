//! Spare header maps, kept per thread for the next request head (response heads are
//! not made into maps: see `rawhead`). A head of eight fields makes a map of twelve
//! buckets (over a KiB): taken from the allocator for every request, that is an
//! allocation big enough to make glibc sweep its small free lists each time. A map
//! handed back here is cleared (its values dropped, its room kept) and given to the
//! next head parsed on the same thread.

use std::cell::RefCell;

use http::HeaderMap;

/// Spare maps kept per thread: enough for the requests one worker has in hand at once
/// on a busy node; past it, maps are freed as before.
const KEEP: usize = 32;
/// Larger maps (a head of many fields) are not kept: one odd head must not hold memory
/// for good.
const MAX_ROOM: usize = 48;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// An empty map with room for `n` fields: a spare one when there is one.
pub fn take(n: usize) -> HeaderMap {
    let spare = SPARE.with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()));
    match spare {
        Some(mut map) => {
            map.reserve(n);
            map
        }
        None => HeaderMap::with_capacity(n),
    }
}

/// Hand `map` back for a later head (it is cleared; a large one is dropped).
pub fn give(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_ROOM {
        return;
    }
    map.clear();
    SPARE.with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < KEEP {
                s.push(map);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_given_map_comes_back_empty_with_its_room() {
        let mut m = HeaderMap::with_capacity(8);
        m.insert("a", HeaderValue::from_static("b"));
        let room = m.capacity();
        give(m);
        let again = take(1);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // A large map is not kept.
        let big = HeaderMap::with_capacity(200);
        give(big);
        assert!(take(0).capacity() <= MAX_ROOM);
    }
}
