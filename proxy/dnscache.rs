//! Upstream names already resolved. The system resolver (`getaddrinfo`, on a blocking
//! thread) costs a thread hand-off and usually a DNS round trip; without a cache every
//! request to `example.com` would pay it. Answers are kept for a minute (the resolver
//! does not tell TTLs; a minute is what browsers keep them), failures for 5 s, so a
//! name that starts resolving is used soon. IP literals never reach the cache. An
//! address that did not take a connection moves to the end of its name's answer, so
//! the next requests try the name's other addresses first.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a resolved name is used.
const POSITIVE: Duration = Duration::from_secs(60);
/// How long a failed lookup is remembered.
const NEGATIVE: Duration = Duration::from_secs(5);
/// Names kept at most; past this, expired entries go, then (if need be) all.
const MAX_NAMES: usize = 10_000;

/// A lookup's outcome: the addresses, or the resolver's error text.
pub type Answer = Result<Vec<SocketAddr>, String>;

/// The cache of one proxy.
#[derive(Default)]
pub struct DnsCache {
    /// (lower-case name, port) → answer and until when it is used.
    names: Mutex<HashMap<(String, u16), (Answer, Instant)>>,
}

impl DnsCache {
    /// The cached answer for (`host`, `port`), or `resolve`'s (then cached). `resolve`
    /// returning None (it timed out) is not cached.
    pub async fn get_or_resolve<F, Fut>(&self, host: &str, port: u16, resolve: F) -> Option<Answer>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Option<Answer>>,
    {
        let now = Instant::now();
        if let Some((answer, until)) = self.lock().get(&(host.to_string(), port)) {
            if *until > now {
                return Some(answer.clone());
            }
        }
        let answer = resolve().await?;
        let keep = if answer.is_ok() { POSITIVE } else { NEGATIVE };
        let mut names = self.lock();
        if names.len() >= MAX_NAMES {
            let now = Instant::now();
            names.retain(|_, (_, until)| *until > now);
            if names.len() >= MAX_NAMES {
                names.clear();
            }
        }
        names.insert((host.to_string(), port), (answer.clone(), now + keep));
        Some(answer)
    }

    /// `failed` (addresses of `host` that did not take a connection) move to the end
    /// of its cached answer, in their order: the next requests try the others first.
    pub fn demote(&self, host: &str, port: u16, failed: &[SocketAddr]) {
        if failed.is_empty() {
            return;
        }
        if let Some((Ok(addrs), _)) = self.lock().get_mut(&(host.to_string(), port)) {
            addrs.sort_by_key(|a| failed.contains(a));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u16), (Answer, Instant)>> {
        // A panic while holding the lock leaves a map that is still valid.
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn answers_and_failures_are_kept_timeouts_are_not() {
        let cache = DnsCache::default();
        let calls = AtomicUsize::new(0);
        let addr: SocketAddr = "192.0.2.1:80".parse().unwrap();
        let ok = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Some(Ok(vec![addr]))
        };
        for _ in 0..3 {
            assert_eq!(
                cache.get_or_resolve("a.example", 80, ok).await,
                Some(Ok(vec![addr]))
            );
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "resolved once, then cached"
        );
        // Another port is another entry.
        cache.get_or_resolve("a.example", 8080, ok).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let fail = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Some(Err("no such name".to_string()))
        };
        for _ in 0..2 {
            let r = cache.get_or_resolve("b.invalid", 80, fail).await;
            assert_eq!(r, Some(Err("no such name".to_string())));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3, "a failure is cached too");

        let timeout = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            None
        };
        assert_eq!(cache.get_or_resolve("c.example", 80, timeout).await, None);
        assert_eq!(cache.get_or_resolve("c.example", 80, timeout).await, None);
        assert_eq!(calls.load(Ordering::SeqCst), 5, "a timeout is not cached");
    }

    #[tokio::test]
    async fn addresses_that_failed_go_last() {
        let cache = DnsCache::default();
        let a: Vec<SocketAddr> = ["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let answer = a.clone();
        cache
            .get_or_resolve("m.example", 80, || async move { Some(Ok(answer)) })
            .await;
        cache.demote("m.example", 80, &a[..2]);
        let never = || async { None };
        assert_eq!(
            cache.get_or_resolve("m.example", 80, never).await,
            Some(Ok(vec![a[2], a[0], a[1]])),
            "the two that failed follow the one that worked, in their order"
        );
        // Another port's entry, or a name not cached, is left alone.
        cache.demote("m.example", 8080, &a[2..]);
        cache.demote("n.example", 80, &a[2..]);
        assert_eq!(
            cache.get_or_resolve("m.example", 80, never).await,
            Some(Ok(vec![a[2], a[0], a[1]]))
        );
    }
}
