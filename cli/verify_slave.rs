//! The checks `ssq verify` runs on one slave, against what it learnt from the master:
//! reachable, tls_pin, startup_params, allow_list, activation_key, policy_sync, reports
//! (with `--probe-traffic`, a request through the slave's proxy that must reach the
//! master's store), sync_events, clock and version.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use ssq::access::{Access, AccessList};
use ssq::api::{LogLines, Status};
use ssq::client::{ClientError, ClientOptions, Conn, PinEvent, Portal};
use ssq::query::percent_encode;
use ssq::reportapi::Report;
use ssq::syncapi::SlaveInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::verify_report::NodeReport;

/// What every slave is checked against.
pub struct Shared {
    /// Client options for slaves (no fingerprint: each slave's comes with it).
    pub opts: ClientOptions,
    /// Client options for the master.
    pub master_opts: ClientOptions,
    /// The master's portal as dialed.
    pub master_addr: String,
    /// The master's status.
    pub master: Status,
    /// The master's clock minus this host's (ms), when it says.
    pub master_skew_ms: Option<i64>,
    /// The master's allow list, or why it could not be read.
    pub access: Result<AccessList, String>,
    /// `--probe-traffic`.
    pub probe_traffic: bool,
    /// The largest report lag that passes.
    pub max_report_lag: Duration,
    /// The largest clock difference to the master that passes.
    pub max_clock_skew: Duration,
    /// With `--probe-policy`: each slave's time to apply the probe, or why it did not.
    pub probe: Option<HashMap<String, Result<u64, String>>>,
    /// When every check must be done.
    pub deadline: tokio::time::Instant,
    /// This host's source address (`--bind`).
    pub bind: Option<IpAddr>,
}

/// A slave to check.
#[derive(Debug, Clone)]
pub struct SlaveTarget {
    /// Its name (inventory or master), or the address it was given as.
    pub name: String,
    /// Its portal.
    pub address: String,
    /// Its expected certificate fingerprint (inventory).
    pub fingerprint: Option<String>,
    /// The master's row for it, if the master knows it.
    pub info: Option<SlaveInfo>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn short(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// Check one slave, writing each result into `row` as soon as it is known (so a run
/// cut short by `--timeout` keeps what was found).
pub async fn verify(sh: Arc<Shared>, t: SlaveTarget, row: Arc<Mutex<NodeReport>>) {
    let set = |f: &mut dyn FnMut(&mut NodeReport)| {
        if let Ok(mut r) = row.lock() {
            f(&mut r);
        }
    };
    let started = Instant::now();
    let mut opts = sh.opts.clone();
    opts.fingerprint = t.fingerprint.clone();
    let doctor = format!("ssq doctor --node {}", t.address);
    let portal = match Portal::connect(&t.address, &opts).await {
        Ok(p) => p,
        Err(e @ (ClientError::PinMismatch { .. } | ClientError::UnknownPin { .. })) => {
            set(&mut |r| {
                r.pass("reachable", "its portal answers (TLS)", started);
                r.fail(
                    "tls_pin",
                    4,
                    e.to_string(),
                    format!(
                        "if the slave was reinstalled on purpose: ssq node trust {}",
                        t.address
                    ),
                    started,
                );
            });
            return;
        }
        Err(e) => {
            set(&mut |r| {
                r.fail(
                    "reachable",
                    3,
                    e.to_string(),
                    format!("start ssqd there, or find the failing step with: {doctor}"),
                    started,
                )
            });
            return;
        }
    };
    let pin = match &portal.pin_event {
        PinEvent::Known => format!("certificate {} as pinned", portal.fingerprint),
        PinEvent::Pinned(fp) => format!("first contact: pinned {fp}"),
    };
    set(&mut |r| r.pass("tls_pin", pin.clone(), started));
    let mut conn = Conn::Portal(Box::new(portal));
    let t0 = now_ms();
    let s: Status = match conn.call("GET", "/api/v1/status", None::<&()>).await {
        Ok(s) => s,
        Err(e) => {
            let exit = if e.exit_code() == 4 { 4 } else { 3 };
            set(&mut |r| {
                r.fail(
                    "reachable",
                    exit,
                    e.to_string(),
                    format!("find the failing step with: {doctor}"),
                    started,
                )
            });
            return;
        }
    };
    let t1 = now_ms();
    let reach = Instant::now();
    if t.name != t.address && s.node != t.name {
        set(&mut |r| {
            r.fail(
                "reachable",
                5,
                format!("{} answers as node {}, not {}", t.address, s.node, t.name),
                "correct the address in the inventory, or the node name in its startup params",
                started,
            )
        });
    } else {
        set(&mut |r| {
            r.name.clone_from(&s.node);
            r.pass(
                "reachable",
                format!(
                    "{} ({}, pid {}) answers in {} ms",
                    s.node,
                    s.role,
                    s.pid,
                    t1.saturating_sub(t0)
                ),
                started,
            )
        });
    }
    let info = t.info.clone().or_else(|| {
        sh.master
            .slaves
            .as_ref()
            .and_then(|l| l.iter().find(|i| i.name == s.node).cloned())
    });
    set(&mut |r| clock(&sh, &s, t0, t1, r, reach));
    set(&mut |r| version(&sh, &s, r, reach));
    set(&mut |r| activation_key(&sh, &s, &t.address, r, reach));
    let startup = startup_params(&sh, &s, &t.address).await;
    set(&mut |r| match &startup {
        Ok(why) => r.pass("startup_params", why.clone(), reach),
        Err((why, fix)) => r.fail("startup_params", 5, why.clone(), fix.clone(), reach),
    });
    let ip = slave_ip(info.as_ref(), &t.address).await;
    set(&mut |r| allow_list(&sh, &s.node, ip, r));
    set(&mut |r| policy_sync(&sh, &s, &t.address, info.as_ref(), r));
    let events = sync_events(&mut conn, &s, &t.address).await;
    set(&mut |r| match &events {
        Ok(why) => r.pass("sync_events", why.clone(), reach),
        Err((why, fix)) => r.fail("sync_events", 5, why.clone(), fix.clone(), reach),
    });
    let at = Instant::now();
    let reports = reports(&sh, &mut conn, &s, &t.address, info.as_ref()).await;
    set(&mut |r| match &reports {
        Ok((why, warn)) if *warn => r.warn("reports", why.clone(), at),
        Ok((why, _)) => r.pass("reports", why.clone(), at),
        Err((why, fix)) => r.fail("reports", 5, why.clone(), fix.clone(), at),
    });
}

fn clock(sh: &Shared, s: &Status, t0: u64, t1: u64, r: &mut NodeReport, at: Instant) {
    if s.now_ms == 0 {
        r.skip("clock", "the slave does not report its clock (older ssqd)");
        return;
    }
    let local = (t0 + t1.saturating_sub(t0) / 2) as i64;
    let skew = s.now_ms as i64 - local;
    let (vs, diff) = match sh.master_skew_ms {
        Some(m) => ("the master", skew - m),
        None => ("this host", skew),
    };
    let bound = sh.max_clock_skew.as_millis() as i64;
    let uncertainty = (t1.saturating_sub(t0) / 2) as i64;
    if diff.abs() > bound + uncertainty {
        r.fail(
            "clock",
            5,
            format!("the slave's clock is {diff:+} ms off {vs} (limit {bound} ms)"),
            "run NTP (chrony or systemd-timesyncd) on both nodes; report times and signatures depend on it",
            at,
        );
    } else {
        r.pass(
            "clock",
            format!("{diff:+} ms from {vs} (±{uncertainty} ms)"),
            at,
        );
    }
}

fn version(sh: &Shared, s: &Status, r: &mut NodeReport, at: Instant) {
    if s.version == sh.master.version {
        r.pass(
            "version",
            format!("ssqd {}, the same as the master", s.version),
            at,
        );
    } else {
        r.warn(
            "version",
            format!(
                "the slave runs ssqd {}, the master {}: upgrade them to the same version",
                s.version, sh.master.version
            ),
            at,
        );
    }
}

fn activation_key(sh: &Shared, s: &Status, address: &str, r: &mut NodeReport, at: Instant) {
    if s.key_id == sh.master.key_id {
        r.pass("activation_key", format!("key id {} on both", s.key_id), at);
    } else {
        r.fail(
            "activation_key",
            5,
            format!(
                "the slave's activation key id is {}, the master's {}",
                s.key_id, sh.master.key_id
            ),
            format!("copy the cluster's activation key to the slave's activation_key_file and restart it: ssq restart --node {address}"),
            at,
        );
    }
}

/// All socket addresses `host:port` resolves to (empty when it does not).
async fn resolve(addr: &str) -> Vec<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .map(|a| a.collect())
        .unwrap_or_default()
}

/// The slave's master is the master being verified: the same address (as resolved), or
/// the slave syncs with the very policy store of this master.
async fn startup_params(
    sh: &Shared,
    s: &Status,
    address: &str,
) -> Result<String, (String, String)> {
    let fix = format!(
        "point it here: ssq slave set-master {} --node {} --restart",
        sh.master_addr, address
    );
    if s.role != "slave" {
        return Err((
            format!(
                "{} is a {} node, not a slave (no master in its startup params)",
                s.node, s.role
            ),
            fix,
        ));
    }
    let Some(named) = &s.master else {
        return Err((
            format!("{} has no master in its startup params", s.node),
            fix,
        ));
    };
    let mut ours = resolve(&sh.master_addr).await;
    if let Ok(a) = sh.master.portal.parse::<SocketAddr>() {
        if !a.ip().is_unspecified() {
            ours.push(a);
        }
    }
    let theirs = resolve(named).await;
    if theirs.iter().any(|a| ours.contains(a)) {
        return Ok(format!("master {named} (this master)"));
    }
    let same_store = matches!(
        (&s.sync, &sh.master.store_id),
        (Some(sync), Some(id)) if sync.store_id.as_deref() == Some(id.as_str()) && sync.state == "connected"
    );
    if same_store {
        return Ok(format!(
            "master {named}, which is this master under another address (the same policy store)"
        ));
    }
    Err((
        format!(
            "{} names {named} as its master, not {} (the master being verified)",
            s.node, sh.master_addr
        ),
        fix,
    ))
}

/// The slave's address as the master sees it: its row's source address, else its
/// portal's address.
async fn slave_ip(info: Option<&SlaveInfo>, portal: &str) -> Option<IpAddr> {
    if let Some(ip) = info.and_then(|i| i.address.parse::<IpAddr>().ok()) {
        return Some(ip);
    }
    resolve(&ssq::client::with_default_port(portal))
        .await
        .first()
        .map(SocketAddr::ip)
}

fn allow_list(sh: &Shared, name: &str, ip: Option<IpAddr>, r: &mut NodeReport) {
    let at = Instant::now();
    let list = match &sh.access {
        Ok(l) => l,
        Err(e) => {
            r.fail(
                "allow_list",
                5,
                format!("the master's allow list could not be read: {e}"),
                "check this operator may read it: ssq master allow list",
                at,
            );
            return;
        }
    };
    if !list.authentication {
        r.skip(
            "allow_list",
            "authentication is off at the master: any address may sync",
        );
        return;
    }
    let Some(ip) = ip else {
        r.fail(
            "allow_list",
            5,
            format!("the address of {name} is not known (the master has not seen it and its portal does not resolve)"),
            "",
            at,
        );
        return;
    };
    let fix = format!("ssq master allow add {ip} --access sync --comment {name}");
    match list.first_match(ip) {
        Some((i, e)) if e.grants(Access::Sync) => r.pass(
            "allow_list",
            format!("entry {} ({}) grants sync to {ip}", i + 1, e.address),
            at,
        ),
        Some((i, e)) => r.fail(
            "allow_list",
            5,
            format!(
                "the first entry matching {ip} (entry {}, {}) does not grant sync",
                i + 1,
                e.address
            ),
            format!("give it sync: ssq master allow add {} --access sync,config (or add a more specific entry first)", e.address),
            at,
        ),
        None => r.fail(
            "allow_list",
            5,
            format!("no entry of the master's allow list matches {ip}: the master refuses its sync"),
            fix,
            at,
        ),
    }
}

fn policy_sync(
    sh: &Shared,
    s: &Status,
    address: &str,
    info: Option<&SlaveInfo>,
    r: &mut NodeReport,
) {
    let at = Instant::now();
    let m = &sh.master.policy;
    if m.revision == 0 {
        r.fail(
            "policy_sync",
            5,
            "the master has no policy yet: slaves refuse all proxy traffic until one is applied",
            "ssq policy apply FILE --wait",
            at,
        );
        return;
    }
    let why_not = info
        .and_then(|i| i.error.clone())
        .map(|e| format!("; the master says: {e}"))
        .unwrap_or_default();
    let probe = sh.probe.as_ref().map(|p| p.get(&s.node));
    match probe {
        Some(Some(Err(e))) => {
            r.fail(
                "policy_sync",
                5,
                format!("probe revision not applied: {e}{why_not}"),
                format!("see the slave's sync events: ssq logs --node {address} --category sync"),
                at,
            );
            return;
        }
        Some(None) => {
            r.fail(
                "policy_sync",
                5,
                "the master does not know this slave, so the probe revision never reached it",
                format!("check the slave's startup params and the master's allow list: ssq doctor --node {address}"),
                at,
            );
            return;
        }
        _ => {}
    }
    if s.policy.revision == m.revision && s.policy.sha256 == m.sha256 {
        let probe_note = match probe {
            Some(Some(Ok(ms))) => {
                format!("; the probe revision was applied {ms} ms after it was published")
            }
            _ => String::new(),
        };
        r.pass(
            "policy_sync",
            format!(
                "revision {} (sha256 {}), the master's{probe_note}",
                m.revision,
                short(&m.sha256)
            ),
            at,
        );
    } else {
        r.fail(
            "policy_sync",
            5,
            format!(
                "the slave applies revision {} (sha256 {}, {}), the master has {} (sha256 {}){why_not}",
                s.policy.revision,
                short(&s.policy.sha256),
                s.policy.state,
                m.revision,
                short(&m.sha256)
            ),
            format!("check its sync: ssq status --node {address} and ssq logs --node {address} --category sync"),
            at,
        );
    }
}

/// The slave's extended.log holds a `synchronized section` event of its revision.
async fn sync_events(
    conn: &mut Conn,
    s: &Status,
    address: &str,
) -> Result<String, (String, String)> {
    let rev = s.policy.revision;
    let fix = format!("see what the slave logged: ssq logs --node {address} --category sync");
    if rev == 0 {
        return Err((
            "the slave has applied no policy, so no sync event names one".into(),
            fix,
        ));
    }
    let path = format!(
        "/api/v1/logs?n=2000&category=sync&grep={}",
        percent_encode("synchronized section")
    );
    let lines: LogLines = conn.call("GET", &path, None::<&()>).await.map_err(|e| {
        (
            format!("its extended.log could not be read: {e}"),
            fix.clone(),
        )
    })?;
    let mark = format!("(revision {rev},");
    match lines
        .lines
        .iter()
        .rev()
        .find(|l| l.contains("sync: synchronized section") && l.contains(&mark))
    {
        Some(line) => Ok(line.clone()),
        None => Err((
            format!(
                "no `sync: synchronized section` event names revision {rev} in its extended.log"
            ),
            fix,
        )),
    }
}

/// Poll the slave until the master acknowledged every record it had written when the
/// check started; with `--probe-traffic`, send a probe and find its record on the
/// master. `Ok((reason, warning))`.
async fn reports(
    sh: &Shared,
    conn: &mut Conn,
    s: &Status,
    address: &str,
    info: Option<&SlaveInfo>,
) -> Result<(String, bool), (String, String)> {
    let doctor = format!("find the failing step with: ssq doctor --node {address}");
    let Some(rep) = &s.report else {
        return Err(("the slave reports no spool (is it a slave?)".into(), doctor));
    };
    if let Some(e) = &rep.error {
        return Err((format!("its shipper's last error: {e}"), doctor));
    }
    let start = Instant::now();
    let limit = sh.max_report_lag;
    let target = rep.spooled;
    let mut acked = rep.acked;
    while acked < target {
        if start.elapsed() >= limit || tokio::time::Instant::now() >= sh.deadline {
            return Err((
                format!(
                    "{} of its records are still not acknowledged by the master after {} ms (limit {} s)",
                    target - acked,
                    start.elapsed().as_millis(),
                    limit.as_secs()
                ),
                doctor,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now: Status = conn
            .call("GET", "/api/v1/status", None::<&()>)
            .await
            .map_err(|e| (format!("the slave stopped answering: {e}"), doctor.clone()))?;
        acked = now.report.as_ref().map(|r| r.acked).unwrap_or(0);
        if let Some(e) = now.report.as_ref().and_then(|r| r.error.clone()) {
            return Err((format!("its shipper's last error: {e}"), doctor));
        }
    }
    let mut why = format!("all {target} records acknowledged by the master");
    if sh.probe_traffic {
        let found = probe_traffic(sh, s, address).await?;
        why.push_str(&format!("; {found}"));
    }
    let lost = info
        .and_then(|i| i.report.as_ref())
        .map(|r| r.gaps)
        .unwrap_or(0);
    if lost > 0 {
        why.push_str(&format!(
            "; but {lost} records were lost earlier (spool full or damaged): see ssq report nodes"
        ));
    }
    Ok((why, lost > 0))
}

/// The proxy's address to send a probe to: as the slave reports it, with its portal's
/// host when it listens on every address.
fn proxy_addr(s: &Status, address: &str) -> Option<String> {
    let proxy: SocketAddr = s.proxy.as_ref()?.parse().ok()?;
    if !proxy.ip().is_unspecified() {
        return Some(proxy.to_string());
    }
    let host = address.rsplit_once(':').map(|(h, _)| h).unwrap_or(address);
    Some(format!("{host}:{}", proxy.port()))
}

/// One plain HTTP request through the proxy; its status code.
async fn send_probe(proxy: &str, url: &str, bind: Option<IpAddr>) -> Result<u16, String> {
    let addr = resolve(proxy)
        .await
        .into_iter()
        .next()
        .ok_or_else(|| format!("{proxy} does not resolve"))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(ip) = bind {
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("cannot bind {ip}: {e}"))?;
    }
    let work = async {
        let mut stream = socket.connect(addr).await.map_err(|e| e.to_string())?;
        let req = format!(
            "GET {url} HTTP/1.1\r\nHost: ssq.probe\r\nUser-Agent: ssq-verify/{}\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        stream
            .take(64 << 10)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| "no HTTP answer".to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

/// Send `http://ssq.probe/NONCE` through the slave's proxy and wait for its record in
/// the master's store.
async fn probe_traffic(sh: &Shared, s: &Status, address: &str) -> Result<String, (String, String)> {
    let fix = format!("find the failing step with: ssq doctor --node {address}");
    let Some(proxy) = proxy_addr(s, address) else {
        return Err(("the slave reports no proxy listener to probe".into(), fix));
    };
    let nonce = format!("{:016x}", rand_u64());
    let url = format!("http://ssq.probe/{nonce}");
    let sent = now_ms();
    let start = Instant::now();
    let code = send_probe(&proxy, &url, sh.bind).await.map_err(|e| {
        (
            format!("the probe through {proxy} failed: {e}"),
            fix.clone(),
        )
    })?;
    let mut master = Conn::Portal(Box::new(
        Portal::connect(&sh.master_addr, &sh.master_opts)
            .await
            .map_err(|e| {
                (
                    format!("the master could not be asked for the probe's record: {e}"),
                    fix.clone(),
                )
            })?,
    ));
    let path = format!(
        "/api/v1/reports/requests?host=ssq.probe&slave={}&from={}&limit=200",
        percent_encode(&s.node),
        sent.saturating_sub(600_000)
    );
    loop {
        let rep: Report = master.call("GET", &path, None::<&()>).await.map_err(|e| {
            (
                format!("the master's reports could not be read: {e}"),
                fix.clone(),
            )
        })?;
        let hit = rep.rows.iter().any(|r| {
            r.get("url")
                .and_then(Value::as_str)
                .is_some_and(|u| u.contains(&nonce))
        });
        if hit {
            return Ok(format!(
                "the probe {url} (HTTP {code} from {proxy}) reached the master's store in {} ms",
                start.elapsed().as_millis()
            ));
        }
        if start.elapsed() >= sh.max_report_lag || tokio::time::Instant::now() >= sh.deadline {
            return Err((
                format!(
                    "the probe {url} (HTTP {code} from {proxy}) did not reach the master's store within {} ms",
                    start.elapsed().as_millis()
                ),
                fix,
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A random u64 (for nonces); the clock and pid if the system has no randomness.
pub fn rand_u64() -> u64 {
    ssq::keys::random_bytes::<8>()
        .map(u64::from_le_bytes)
        .unwrap_or_else(|_| now_ms() ^ u64::from(std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_goes_to_the_portal_host_when_the_proxy_listens_everywhere() {
        let s = Status {
            proxy: Some("0.0.0.0:3128".into()),
            ..Status::default()
        };
        assert_eq!(
            proxy_addr(&s, "10.0.0.7:8888").as_deref(),
            Some("10.0.0.7:3128")
        );
        let s = Status {
            proxy: Some("127.0.0.9:41000".into()),
            ..Status::default()
        };
        assert_eq!(proxy_addr(&s, "x:1").as_deref(), Some("127.0.0.9:41000"));
        assert_eq!(proxy_addr(&Status::default(), "x:1"), None);
    }
}
