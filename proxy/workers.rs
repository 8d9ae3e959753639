//! The proxy's worker threads: one single-threaded runtime per core, each serving the
//! client connections handed to it from the accept loop, start to end.
//!
//! A connection stays on one thread for its whole life, with its timers and its
//! upstream connections (the pool keeps one shard per worker, see [`shard`]). Nothing
//! of a request crosses threads: no work-stealing queue, no cross-thread wake-up, no
//! contended lock. With one worker this took 5% less CPU per 1 KiB request than
//! tokio's multi-threaded scheduler did on the same two shared cores (bench/README.md).
//! The control plane (portal, sync, shipper, accept) stays on the multi-threaded
//! runtime, so a slow task there (a large policy compiling) never holds up a request.
//!
//! A new connection goes to the worker with the fewest open connections. If a worker
//! is gone (its thread failed to start or ended), the connection is served on the
//! control runtime instead: never dropped.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ssq::policy::EffectiveLimits;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::connlimit::{Permit, Refused};
use crate::forward::Proxy;

thread_local! {
    /// This thread's worker number (1..=N), or 0 off the workers.
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// The shard of per-worker state (the upstream pool) this thread uses: its worker
/// number, or 0 on any other thread.
pub fn shard() -> usize {
    SHARD.with(Cell::get)
}

/// How many workers to start: `SSQD_WORKER_THREADS`, else one per core.
pub fn count() -> usize {
    std::env::var("SSQD_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
        .unwrap_or(1)
}

/// One client connection to serve.
struct Job {
    proxy: Arc<Proxy>,
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    limits: EffectiveLimits,
    permit: Result<Permit, Refused>,
    stopping: watch::Receiver<bool>,
    /// The worker's open-connection count, released when the connection ends.
    open: OpenGuard,
}

/// One worker: where its connections go, and how many it has open.
struct Worker {
    tx: mpsc::UnboundedSender<Job>,
    open: Arc<AtomicUsize>,
}

/// Decrements a worker's open-connection count when dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The proxy's worker threads.
pub struct Workers {
    list: Vec<Worker>,
}

impl Workers {
    /// Start `n` workers (at least one), numbered 1..=n.
    ///
    /// # Errors
    /// A runtime or a thread that cannot be made (out of memory or of threads).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut list = Vec::with_capacity(n.max(1));
        for number in 1..=n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            std::thread::Builder::new()
                .name(format!("ssqd-proxy-{number}"))
                .spawn(move || {
                    SHARD.with(|s| s.set(number));
                    rt.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            tokio::spawn(run(job));
                        }
                    });
                })?;
            list.push(Worker {
                tx,
                open: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Workers { list })
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Serve a client's connection on the worker with the fewest open connections (on
    /// the calling runtime when no worker is left).
    pub fn serve(
        &self,
        proxy: Arc<Proxy>,
        tcp: TcpStream,
        peer: SocketAddr,
        limits: EffectiveLimits,
        permit: Result<Permit, Refused>,
        stopping: watch::Receiver<bool>,
    ) {
        let Some(worker) = self
            .list
            .iter()
            .filter(|w| !w.tx.is_closed())
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            tokio::spawn(crate::clientconn::serve(
                proxy, tcp, peer, limits, permit, stopping,
            ));
            return;
        };
        // Out of this runtime's poller, into the worker's (there at its first poll).
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                proxy.warn(&format!(
                    "cannot hand a connection from {peer} to a worker: {e}; closed it"
                ));
                return;
            }
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            proxy,
            tcp,
            peer,
            limits,
            permit,
            stopping,
            open: OpenGuard(worker.open.clone()),
        };
        if let Err(mpsc::error::SendError(job)) = worker.tx.send(job) {
            // The worker ended between the check and the send: serve it here.
            tokio::spawn(run(job));
        }
    }
}

/// Serve one handed-over connection on the current runtime.
async fn run(job: Job) {
    let _open = job.open;
    match TcpStream::from_std(job.tcp) {
        Ok(tcp) => {
            crate::clientconn::serve(
                job.proxy,
                tcp,
                job.peer,
                job.limits,
                job.permit,
                job.stopping,
            )
            .await
        }
        Err(e) => job.proxy.warn(&format!(
            "cannot serve a connection from {}: {e} (registering it with the poller failed)",
            job.peer
        )),
    }
}
