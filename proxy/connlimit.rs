//! Connection limits of the proxy: concurrent connections per client address and in
//! total. A permit is held for a connection's life; a connection past a limit is
//! answered (429 per client, 503 in total) and recorded, never silently dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Open connections.
#[derive(Default)]
pub struct ConnCounter {
    /// In total.
    total: AtomicU64,
    /// Per client address.
    per_client: Mutex<HashMap<IpAddr, u64>>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many from this address (429).
    PerClient,
    /// Too many in total (503).
    Total,
}

/// Held while a connection is open.
pub struct Permit {
    /// The counters.
    counter: Arc<ConnCounter>,
    /// The client.
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.counter.total.fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut m) = self.counter.per_client.lock() {
            if let Some(n) = m.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.ip);
                }
            }
        }
    }
}

impl ConnCounter {
    /// Take a permit for a new connection from `ip`, or say which limit refuses it.
    ///
    /// # Errors
    /// `Refused` naming the limit.
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        per_client: u64,
        total: u64,
    ) -> Result<Permit, Refused> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let Ok(mut m) = self.per_client.lock() else {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Total);
        };
        let n = m.entry(ip).or_insert(0);
        if *n >= per_client {
            drop(m);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::PerClient);
        }
        *n += 1;
        Ok(Permit {
            counter: self.clone(),
            ip,
        })
    }

    /// Open connections in total.
    pub fn open(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_hold_and_release() {
        let c = Arc::new(ConnCounter::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = c.acquire(a, 2, 3).unwrap();
        let _p2 = c.acquire(a, 2, 3).unwrap();
        assert_eq!(c.acquire(a, 2, 3).err(), Some(Refused::PerClient));
        let _p3 = c.acquire(b, 2, 3).unwrap();
        assert_eq!(c.acquire(b, 2, 3).err(), Some(Refused::Total));
        drop(p1);
        let p4 = c.acquire(a, 2, 3);
        assert!(p4.is_ok());
        assert_eq!(c.open(), 3);
        drop(p4);
        assert_eq!(c.open(), 2);
    }
}
