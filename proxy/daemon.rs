//! The daemon's life: load startup params, keys and certificate; bind (or adopt) the
//! listeners; print the ready line; serve until a signal or a restart request; drain.
//!
//! Signals: SIGTERM drains connections (deadline 10 s; idle keep-alives close at once)
//! and exits 0; SIGINT exits at once. A restart drains the same way and then
//! re-executes in place with the listening sockets handed over (see `handover`).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use ssq::extlog::ExtLog;
use ssq::keys::{hex, random_bytes, sha256_hex, ActivationKey, SigningKey};
use ssq::nodeconf::{write_atomic, NodeFiles};
use ssq::sign::NonceCache;
use ssq::startup::{self, Role, Startup};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::handover::{self, Inherited};
use crate::node::{Command, Node};
use crate::portal::{self, Via};

/// The most portal connections open at once (operators and slaves; a proxy's client
/// traffic never comes here).
const MAX_PORTAL_CONNECTIONS: usize = 4096;

/// How long connections get to finish on SIGTERM or restart.
const DRAIN: Duration = Duration::from_secs(10);

/// Everything loaded and bound, ready to serve.
pub struct Prepared {
    /// The node.
    node: Arc<Node>,
    /// The portal's TLS acceptor.
    tls: tokio_rustls::TlsAcceptor,
    /// Listeners and the descriptors kept for a restart.
    portal: (std::net::TcpListener, OwnedFd),
    /// The proxy listener (not on a master).
    proxy: Option<(std::net::TcpListener, OwnedFd)>,
    /// The admin socket.
    admin: (std::os::unix::net::UnixListener, OwnedFd),
    /// The restart channel's receiving end.
    commands: watch::Receiver<Command>,
    /// data_dir/ssqd.addr.
    addr_file: PathBuf,
    /// data_dir/admin.sock.
    admin_path: PathBuf,
}

fn adopt_tcp(
    inherited: &mut Inherited,
    name: &str,
    want: SocketAddr,
) -> Result<std::net::TcpListener> {
    if let Some(fd) = inherited.take(name) {
        let l = std::net::TcpListener::from(fd);
        if let Ok(have) = l.local_addr() {
            if have.ip() == want.ip() && (want.port() == 0 || want.port() == have.port()) {
                return Ok(l);
            }
        }
    }
    std::net::TcpListener::bind(want).with_context(|| {
        format!("cannot listen on {want}: is another ssqd (or another service) using it? Change {name}.listen in the startup params")
    })
}

fn admin_socket(
    inherited: &mut Inherited,
    path: &Path,
) -> Result<std::os::unix::net::UnixListener> {
    if let Some(fd) = inherited.take("admin") {
        return Ok(std::os::unix::net::UnixListener::from(fd));
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(anyhow!(
                "another ssqd is running with this data_dir (its admin socket {} answers); stop it first",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale admin socket {}", path.display()))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot create the admin socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
    Ok(l)
}

/// Load the startup params and everything they name; bind the listeners.
///
/// # Errors
/// Anything that keeps the node from starting, named with the file and what to fix.
pub fn prepare(config: &Path, mut inherited: Inherited) -> Result<Prepared> {
    let (s, _text): (Startup, String) = startup::load(config)?;
    // A data_dir that ssqd creates is private (0700); an existing one keeps its mode,
    // since it may be a shared directory.
    if !s.data_dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&s.data_dir)
            .with_context(|| format!("cannot create {}", s.data_dir.display()))?;
    }
    std::fs::create_dir_all(&s.log_dir)
        .with_context(|| format!("cannot create {}", s.log_dir.display()))?;
    let log = ExtLog::open(&s.log_dir, &s.node)
        .with_context(|| format!("cannot open {}/extended.log", s.log_dir.display()))?;
    let activation = ActivationKey::load(&s.activation_key_file)?;
    let node_key = SigningKey::load_or_create(&s.data_dir.join("node.key"))?;
    let mut names = vec![s.node.clone(), "localhost".to_string()];
    if !s.portal_listen.ip().is_unspecified() {
        names.push(s.portal_listen.ip().to_string());
    }
    let configured = match (&s.portal_cert, &s.portal_key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let identity = ssq::tls::load_or_create(&s.data_dir, configured, &names)?;
    let tls = tokio_rustls::TlsAcceptor::from(ssq::tls::server_config(&identity)?);
    let cert_sha256 = identity
        .chain
        .first()
        .map(|c| sha256_hex(c.as_ref()))
        .unwrap_or_default();

    let admin_path = s.data_dir.join("admin.sock");
    // The admin socket tells whether another ssqd runs on this data_dir; only once it
    // is ours may the address file go (it would describe the other daemon otherwise).
    let admin = admin_socket(&mut inherited, &admin_path)?;
    let addr_file = s.data_dir.join("ssqd.addr");
    match std::fs::remove_file(&addr_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("cannot remove {}: {e}", addr_file.display())),
    }
    let portal = adopt_tcp(&mut inherited, "portal", s.portal_listen)?;
    let proxy = match s.role {
        Role::Master => None,
        _ => Some(adopt_tcp(&mut inherited, "proxy", s.proxy_listen)?),
    };
    let portal_addr = portal.local_addr()?;
    let proxy_addr = match &proxy {
        Some(p) => Some(p.local_addr()?),
        None => None,
    };
    let keep =
        |fd: &dyn std::os::fd::AsFd| -> Result<OwnedFd> { Ok(fd.as_fd().try_clone_to_owned()?) };
    let portal_fd = keep(&portal)?;
    let admin_fd = keep(&admin)?;
    let proxy = match proxy {
        Some(p) => {
            let fd = keep(&p)?;
            Some((p, fd))
        }
        None => None,
    };
    let (tx, rx) = watch::channel(Command::Run);
    let master = match s.role {
        Role::Slave => None,
        _ => Some(Arc::new(crate::master::Master::open(&s.data_dir)?)),
    };
    let reports = match s.role {
        Role::Master => Some(crate::reports::Reports::open(
            &s.data_dir.join("reports.db"),
        )?),
        _ => None,
    };
    // A slave's report spool: a damaged tail is cut (and said so), never fatal.
    let spool = match s.role {
        Role::Slave => {
            let (spool, notes) = ssq::spool::Spool::open(
                &s.data_dir.join("spool"),
                ssq::spool::SpoolOptions {
                    segment_bytes: s.spool_segment_bytes,
                    max_bytes: s.spool_max_bytes,
                },
            )
            .with_context(|| {
                format!(
                    "cannot open the report spool in {}",
                    s.data_dir.join("spool").display()
                )
            })?;
            for n in notes {
                log.warn("report", &n);
            }
            Some(Arc::new(Mutex::new(spool)))
        }
        _ => None,
    };
    let sync_status = ssq::api::SyncStatus {
        master: s.master.as_ref().map(|m| m.to_string()).unwrap_or_default(),
        state: "starting".into(),
        ..Default::default()
    };
    let boot_id = hex(&random_bytes::<8>()?);
    let files = NodeFiles::from_parts(s, log);
    if let (Some(m), Role::Master) = (&master, files.startup.role) {
        // A change of the allow list that takes `sync` away from a known slave warns.
        let m = m.clone();
        files.set_known_slaves(Box::new(move || {
            m.slave_infos()
                .into_iter()
                .filter_map(|i| Some((i.name, i.address.parse().ok()?)))
                .collect()
        }));
    }
    let node = Arc::new(Node {
        files,
        boot_id,
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        fingerprint: identity.fingerprint(),
        cert_sha256,
        node_key,
        activation,
        nonces: Mutex::new(NonceCache::default()),
        portal_addr,
        proxy_addr,
        command: tx,
        stopping: watch::channel(false).0,
        master,
        active: crate::active::Slot::default(),
        sync: Mutex::new(sync_status),
        reports,
        spool,
        shipper: Arc::new(Mutex::new(crate::shipper::ShipperState::default())),
        sessions: crate::reports_page::Sessions::default(),
    });
    // The last good policy is enforced before the ready line, before any talk with the
    // master.
    crate::slave::load_at_start(&node);
    Ok(Prepared {
        node,
        tls,
        portal: (portal, portal_fd),
        proxy,
        admin: (admin, admin_fd),
        commands: rx,
        addr_file,
        admin_path,
    })
}

/// SIGTERM and SIGINT, caught from the start.
pub struct Signals {
    /// Drain and exit.
    sigterm: tokio::signal::unix::Signal,
    /// Exit now.
    sigint: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install the handlers (inside the runtime).
    ///
    /// # Errors
    /// When the OS refuses.
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            sigterm: signal(SignalKind::terminate())?,
            sigint: signal(SignalKind::interrupt())?,
        })
    }
}

/// How the serve loop ended.
enum End {
    Drain,
    Now,
    Restart,
}

fn http1() -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    b
}

/// Serve until stopped; returns the process exit code.
///
/// # Errors
/// When a listener cannot be used or the restart's re-exec fails.
pub async fn serve(p: Prepared, signals: Signals) -> Result<i32> {
    let Prepared {
        node,
        tls,
        portal,
        proxy,
        admin,
        mut commands,
        addr_file,
        admin_path,
    } = p;
    let (portal_std, portal_fd) = portal;
    let (admin_std, admin_fd) = admin;
    portal_std.set_nonblocking(true)?;
    admin_std.set_nonblocking(true)?;
    let portal_l = TcpListener::from_std(portal_std)?;
    let admin_l = UnixListener::from_std(admin_std)?;
    let (proxy_l, proxy_fd) = match proxy {
        Some((l, fd)) => {
            l.set_nonblocking(true)?;
            (Some(TcpListener::from_std(l)?), Some(fd))
        }
        None => (None, None),
    };

    let Signals {
        mut sigterm,
        mut sigint,
    } = signals;
    let ready = serde_json::json!({
        "pid": std::process::id(),
        "node": node.files.startup.node,
        "portal": node.portal_addr.to_string(),
        "proxy": node.proxy_addr.map(|a| a.to_string()),
    })
    .to_string();
    write_atomic(&addr_file, format!("{ready}\n").as_bytes(), 0o644)?;
    println!("{ready}");
    node.files.log.info(
        "restart",
        &format!(
            "ssqd {} started as {} (pid {}, boot {}); portal {}{}",
            env!("CARGO_PKG_VERSION"),
            node.role(),
            std::process::id(),
            node.boot_id,
            node.portal_addr,
            node.proxy_addr
                .map(|a| format!(", proxy {a}"))
                .unwrap_or_default()
        ),
    );

    let graceful = GracefulShutdown::new();
    let portal_slots = Arc::new(tokio::sync::Semaphore::new(MAX_PORTAL_CONNECTIONS));
    let my_uid = unsafe_geteuid();
    if node.files.startup.role == Role::Slave {
        tokio::spawn(crate::slave::run(node.clone()));
    }
    let conns = Arc::new(crate::connlimit::ConnCounter::default());
    let flushed = Arc::new(tokio::sync::Notify::new());
    let proxy = match node.proxy_addr {
        Some(_) => {
            let spooling = node.spool.clone().map(|spool| crate::accesslog::Spooling {
                spool,
                flushed: flushed.clone(),
                conns: conns.clone(),
                sync_every: Duration::from_millis(node.files.startup.fsync_ms),
            });
            let n_workers = crate::workers::count();
            let log = crate::accesslog::AccessLog::start(
                &node.files.startup.log_dir,
                &node.files.startup.node,
                spooling,
                n_workers,
            )
            .with_context(|| {
                format!(
                    "cannot open {}/access.log",
                    node.files.startup.log_dir.display()
                )
            })?;
            if let Some(spool) = node.spool.clone() {
                // A slave ships its events and its records to the master.
                let tap = log.clone();
                node.files
                    .log
                    .set_tap(Box::new(move |line| tap.event(line)));
                tokio::spawn(crate::shipper::run(
                    node.clone(),
                    spool,
                    flushed.clone(),
                    node.shipper.clone(),
                ));
            }
            let workers = crate::workers::Workers::start(n_workers)
                .context("cannot start the proxy's worker threads")?;
            Some((
                crate::forward::Proxy::new(node.clone(), log, workers.len()),
                workers,
            ))
        }
        None => None,
    };
    let end = loop {
        tokio::select! {
            r = portal_l.accept() => {
                let (tcp, peer) = match r {
                    Ok(x) => x,
                    Err(e) => { accept_failed(&node, "portal", &e).await; continue }
                };
                // A cap on portal connections: past it, new ones are closed at once.
                let Ok(permit) = portal_slots.clone().try_acquire_owned() else {
                    node.files.log.warn("portal", &format!("refused a connection from {peer}: {MAX_PORTAL_CONNECTIONS} portal connections open"));
                    continue;
                };
                let local = tcp.local_addr().unwrap_or(node.portal_addr);
                let node = node.clone();
                let tls = tls.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _permit = permit;
                    let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        _ => return,
                    };
                    let svc = service_fn(move |req| portal::handle(node.clone(), Via::Portal { peer, local }, req));
                    let conn = http1().serve_connection(TokioIo::new(stream), svc);
                    let _ = watcher.watch(conn).await;
                });
            }
            r = admin_l.accept() => {
                let stream = match r {
                    Ok((s, _)) => s,
                    Err(e) => { accept_failed(&node, "admin socket", &e).await; continue }
                };
                let uid = stream.peer_cred().map(|c| c.uid()).ok();
                match uid {
                    Some(uid) if uid == 0 || uid == my_uid => {
                        let node = node.clone();
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let svc = service_fn(move |req| portal::handle(node.clone(), Via::Admin { uid }, req));
                            let conn = http1().serve_connection(TokioIo::new(stream), svc);
                            let _ = watcher.watch(conn).await;
                        });
                    }
                    _ => {
                        node.files.log.warn("access", &format!("admin socket: refused peer uid {uid:?} (only root or uid {my_uid})"));
                    }
                }
            }
            r = accept_opt(&proxy_l) => {
                let (tcp, peer) = match r {
                    Ok(x) => x,
                    Err(e) => { accept_failed(&node, "proxy", &e).await; continue }
                };
                let Some((proxy, workers)) = &proxy else { continue };
                let _ = tcp.set_nodelay(true);
                let limits = proxy.limits();
                let permit = conns.acquire(peer.ip(), limits.max_connections_per_client, limits.max_connections);
                // A connection over a limit is answered (429 or 503) and closed; one
                // within them holds its place until it closes, and on stop finishes the
                // request in flight first (the drain waits for the count to reach zero).
                let stopping = node.stopping.subscribe();
                workers.serve(proxy.clone(), tcp, peer, limits, permit, stopping);
            }
            _ = sigterm.recv() => break End::Drain,
            _ = sigint.recv() => break End::Now,
            r = commands.changed() => {
                if r.is_ok() && *commands.borrow() == Command::Restart {
                    break End::Restart;
                }
            }
        }
    };
    // Long-polls (watch, policy wait) answer at once; the sync loop ends.
    node.stopping.send_replace(true);
    drop(portal_l);
    drop(admin_l);
    drop(proxy_l);
    let flush_records = || async {
        if let Some((p, _)) = &proxy {
            p.log.flush().await;
        }
    };
    match end {
        End::Now => {
            flush_records().await;
            let _ = std::fs::remove_file(&addr_file);
            let _ = std::fs::remove_file(&admin_path);
            node.files
                .log
                .info("restart", "ssqd stopped (SIGINT, no drain)");
            Ok(130)
        }
        End::Drain => {
            let _ = std::fs::remove_file(&addr_file);
            let _ = std::fs::remove_file(&admin_path);
            let open = graceful.count();
            // SIGINT during the drain still means: now.
            let drained = tokio::select! {
                r = tokio::time::timeout(DRAIN, drain(graceful, &conns)) => r.is_ok(),
                _ = sigint.recv() => false,
            };
            flush_records().await;
            node.files.log.info(
                "restart",
                &format!(
                    "ssqd stopped (SIGTERM; {open} connections {})",
                    if drained {
                        "drained"
                    } else {
                        "cut at the drain deadline"
                    }
                ),
            );
            Ok(0)
        }
        End::Restart => {
            let _ = std::fs::remove_file(&addr_file);
            // A signal during the restart's drain wins over the restart: stop instead.
            let drained = tokio::select! {
                r = tokio::time::timeout(DRAIN, drain(graceful, &conns)) => r.is_ok(),
                _ = sigterm.recv() => return Ok(stop_during_restart(&node, &admin_path, "SIGTERM", 0)),
                _ = sigint.recv() => return Ok(stop_during_restart(&node, &admin_path, "SIGINT", 130)),
            };
            node.files.log.info(
                "restart",
                &format!(
                    "restarting in place (pid {}, boot {} ending; connections {})",
                    std::process::id(),
                    node.boot_id,
                    if drained {
                        "drained"
                    } else {
                        "cut at the drain deadline"
                    }
                ),
            );
            flush_records().await;
            let mut fds: Vec<(&str, &OwnedFd)> = vec![("portal", &portal_fd), ("admin", &admin_fd)];
            if let Some(fd) = &proxy_fd {
                fds.push(("proxy", fd));
            }
            let err = handover::reexec(&fds);
            node.files
                .log
                .warn("restart", &format!("re-exec failed: {err}; exiting"));
            Err(anyhow!("restart failed: cannot re-execute ssqd: {err}"))
        }
    }
}

/// Wait until every portal and admin connection has finished, and every proxy
/// connection has closed.
async fn drain(graceful: GracefulShutdown, conns: &crate::connlimit::ConnCounter) {
    graceful.shutdown().await;
    while conns.open() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A signal arrived while a restart drained: stop instead of re-executing.
fn stop_during_restart(node: &Node, admin_path: &Path, signal: &str, code: i32) -> i32 {
    let _ = std::fs::remove_file(admin_path);
    node.files.log.info(
        "restart",
        &format!("{signal} during a restart: ssqd stopped instead"),
    );
    code
}

/// Log a failed accept (e.g. out of descriptors) and pause briefly, so the loop does not
/// spin while the condition lasts.
async fn accept_failed(node: &Node, listener: &str, e: &std::io::Error) {
    node.files
        .log
        .warn(listener, &format!("accept failed: {e}; pausing 100 ms"));
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn accept_opt(
    l: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
