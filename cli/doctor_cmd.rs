//! `ssq doctor --node NODE`: the seed's troubleshooting steps for one node, run for real
//! and in order — `dns`, `tcp` (the seed's `telnet master 8888`), `tls` (handshake and
//! the certificate against its pin), `signature` (a signed status accepted, same
//! activation key), `allow_list` (this address admitted), and on a slave
//! `master_reachable` (asked of the slave itself), `last_sync` and `shipper`.
//!
//! Every step that can run does; one that cannot because an earlier one failed is SKIP
//! and says which ("not reached: TCP connect failed"). Each failure carries its likely
//! cause and the command that fixes it. The report is printed (table, or `-o json` on
//! stdout) whether or not a step failed; the exit code then follows DESIGN.md's
//! precedence 2, 4, 3, 5: dns/tcp → 3, tls pin/signature/allow list → 4, the slave's own
//! side (master_reachable, last_sync, shipper) → 5.
//!
//! The portal checks a request's source address before its signature, so a 403 from the
//! allow list means the signature was never looked at (SKIP), and a signature refusal
//! means the address was admitted (allow_list PASS).
//!
//! The slave steps live in `doctor_cmd/slave.rs`; raw DNS/TCP/TLS in `ssq::netcheck`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use ssq::api::{CheckStep, Status};
use ssq::client::{with_default_port, ClientError, ClientOptions, Conn, Portal};
use ssq::keys::{pub_path, ActivationKey};
use ssq::netcheck::{self, NetError, PinSource, Resolved};
use tokio::net::TcpStream;

use crate::args::{DoctorArgs, Format};
use crate::output::{emit, table, Failure};
use crate::target::Ctx;

mod slave;

/// The longest any one raw step (dns, tcp, tls) may take, so a dropped packet leaves time
/// for the report.
const STEP_CAP: Duration = Duration::from_secs(10);
/// The least a step is given, even when the overall limit is nearly spent.
const FLOOR: Duration = Duration::from_millis(100);

/// The steps a slave adds.
const SLAVE_STEPS: [&str; 3] = ["master_reachable", "last_sync", "shipper"];

/// What `ssq doctor` prints.
#[derive(Debug, Serialize)]
struct Report {
    /// The node as given (`--node`).
    node: String,
    /// The portal address checked (`HOST:PORT`).
    address: String,
    /// The steps, in order.
    steps: Vec<Step>,
}

/// One step's outcome.
#[derive(Debug, Serialize)]
struct Step {
    /// The step's id.
    step: &'static str,
    /// PASS, FAIL or SKIP.
    status: &'static str,
    /// What was found, or what failed.
    reason: String,
    /// On a failure: the likely cause's fix.
    fix: Option<String>,
    /// How long it took.
    ms: u64,
    /// `master_reachable`: the slave's own steps (dns, tcp, tls, sync).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    master_steps: Vec<CheckStep>,
    /// The exit code a failure stands for.
    #[serde(skip)]
    exit: i32,
}

/// How far the signed status got.
enum Reached {
    /// Accepted: the node's status, on an open signed connection.
    Status(Box<Status>, Box<Conn>),
    /// The allow list refused this address (the signature was never checked).
    AllowList {
        /// The node's message.
        message: String,
        /// The node's code.
        code: String,
    },
    /// The signature was refused (so the address was admitted).
    Signature,
    /// The status could not be read for another reason, given.
    Lost(String),
}

/// One doctor run.
struct Doctor<'a> {
    /// Settings.
    ctx: &'a Ctx,
    /// The node as given.
    node: String,
    /// `HOST:PORT`.
    address: String,
    /// The host part.
    host: String,
    /// The port.
    port: u16,
    /// The fingerprint given by `--fingerprint` or the inventory.
    given_fp: Option<String>,
    /// When the whole run must end (`--timeout`).
    deadline: Instant,
    /// This host's address as the TCP step saw it (what the allow list sees).
    local_ip: Option<IpAddr>,
    /// The steps so far.
    steps: Vec<Step>,
}

/// Run `ssq doctor`.
///
/// # Errors
/// Exit 2 for bad input; otherwise the report is printed and a failing step's exit code
/// is returned (DESIGN.md precedence 2, 4, 3, 5).
pub async fn run(ctx: &Ctx, a: DoctorArgs) -> Result<(), Failure> {
    if ctx.g.local {
        return Err(Failure::usage(
            "ssq doctor checks a node over the network from where you stand: run it without --local (on the node itself, ssq --local --config FILE status shows whether ssqd runs)",
        ));
    }
    let node = match a.node {
        Some(n) => n,
        None => ctx.master_ref(None).map_err(|_| {
            Failure::usage(
                "which node? give --node NAME|HOST:PORT (or --inventory FILE for its master)",
            )
        })?,
    };
    let (address, inventory_fp) = match ctx.inventory.as_ref().and_then(|i| i.find(&node)) {
        Some(e) => (e.address.clone(), e.fingerprint.clone()),
        None => (node.clone(), None),
    };
    let address = with_default_port(&address);
    let (host, port) = netcheck::split_host_port(&address).map_err(|e| {
        Failure::usage(format!(
            "{e}: give --node HOST:PORT of the node's portal, or a name from the inventory"
        ))
    })?;
    let mut d = Doctor {
        ctx,
        given_fp: ctx.g.fingerprint.clone().or(inventory_fp.clone()),
        node,
        address,
        host,
        port,
        deadline: Instant::now() + ctx.g.timeout,
        local_ip: ctx.g.bind,
        steps: Vec::with_capacity(8),
    };
    d.run(inventory_fp).await;
    let report = Report {
        node: d.node,
        address: d.address,
        steps: d.steps,
    };
    emit(ctx.g.output, &report, || human(&report))?;
    let exit = exit_code(&report.steps);
    if exit == 0 {
        return Ok(());
    }
    let failed: Vec<&str> = report
        .steps
        .iter()
        .filter(|s| s.status == "FAIL")
        .map(|s| s.step)
        .collect();
    Err(Failure::new(
        exit,
        "check_failed",
        format!(
            "doctor: {} failed for {}: see each failing step's fix",
            failed.join(", "),
            report.node
        ),
    ))
}

/// The exit code of a report: 0 when nothing failed, else DESIGN.md's precedence.
fn exit_code(steps: &[Step]) -> i32 {
    let codes: Vec<i32> = steps
        .iter()
        .filter(|s| s.status == "FAIL")
        .map(|s| s.exit)
        .collect();
    [2, 4, 3, 5]
        .into_iter()
        .find(|c| codes.contains(c))
        .or_else(|| codes.first().copied())
        .unwrap_or(0)
}

/// The table, then one fix line per failure.
fn human(r: &Report) -> String {
    let mut rows = Vec::new();
    for s in &r.steps {
        rows.push(vec![
            s.step.to_string(),
            s.status.to_string(),
            s.reason.clone(),
        ]);
        for m in &s.master_steps {
            rows.push(vec![
                format!("  ↳ {}", m.step),
                m.status.clone(),
                m.reason.clone(),
            ]);
        }
    }
    let mut out = format!(
        "ssq doctor: {} ({})\n{}\n",
        r.node,
        r.address,
        table(&["step", "status", "reason"], rows)
    );
    for s in &r.steps {
        if let (Some(fix), "FAIL") = (&s.fix, s.status) {
            out.push_str(&format!("→ fix ({}): {fix}\n", s.step));
        }
    }
    out
}

fn elapsed_ms(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Doctor<'_> {
    /// What a step may still take, at most `cap`.
    fn left(&self, cap: Option<Duration>) -> Duration {
        let rest = self.deadline.saturating_duration_since(Instant::now());
        cap.map_or(rest, |c| rest.min(c)).max(FLOOR)
    }

    fn pass(&mut self, step: &'static str, reason: String, t: Instant) {
        self.steps.push(Step {
            step,
            status: "PASS",
            reason,
            fix: None,
            ms: elapsed_ms(t),
            master_steps: Vec::new(),
            exit: 0,
        });
    }

    fn fail(&mut self, step: &'static str, exit: i32, reason: String, fix: String, t: Instant) {
        self.steps.push(Step {
            step,
            status: "FAIL",
            reason,
            fix: Some(fix),
            ms: elapsed_ms(t),
            master_steps: Vec::new(),
            exit,
        });
    }

    fn skip(&mut self, steps: &[&'static str], reason: &str) {
        for &step in steps {
            self.steps.push(Step {
                step,
                status: "SKIP",
                reason: reason.to_string(),
                fix: None,
                ms: 0,
                master_steps: Vec::new(),
                exit: 0,
            });
        }
    }

    /// The known_nodes file (inventory > SSQ_HOME), as `Ctx` picks it.
    fn known_nodes(&self) -> PathBuf {
        self.ctx
            .inventory
            .as_ref()
            .and_then(|i| i.known_nodes.clone())
            .unwrap_or_else(|| self.ctx.home.join("known_nodes"))
    }

    /// "on the node: ssq --local --config FILE ..." for fixes.
    fn on_node(&self, cmd: &str) -> String {
        format!("on the node itself (FILE: its startup.yaml): ssq --local --config FILE {cmd}")
    }

    async fn run(&mut self, inventory_fp: Option<String>) {
        let after_dns = ["tcp", "tls", "signature", "allow_list"];
        let Some(resolved) = self.dns().await else {
            self.skip(&after_dns, "not reached: DNS resolution failed");
            self.skip(&SLAVE_STEPS, "not reached: DNS resolution failed");
            return;
        };
        let Some(tcp) = self.tcp(&resolved).await else {
            self.skip(&after_dns[1..], "not reached: TCP connect failed");
            self.skip(&SLAVE_STEPS, "not reached: TCP connect failed");
            return;
        };
        if let Err(why) = self.tls(tcp).await {
            let why = format!("not reached: {why}");
            self.skip(&after_dns[2..], &why);
            self.skip(&SLAVE_STEPS, &why);
            return;
        }
        let reached = self.signature(inventory_fp).await;
        self.allow_list(&reached);
        match reached {
            Reached::Status(status, mut conn) => self.slave_steps(&status, &mut conn).await,
            Reached::AllowList { .. } => self.skip(
                &SLAVE_STEPS,
                "not reached: the allow list refused this address, so the node's role is unknown",
            ),
            Reached::Signature => self.skip(
                &SLAVE_STEPS,
                "not reached: the signature was refused, so the node's role is unknown",
            ),
            Reached::Lost(why) => self.skip(
                &SLAVE_STEPS,
                &format!("not reached: the node's status could not be read ({why})"),
            ),
        }
    }

    async fn dns(&mut self) -> Option<Resolved> {
        let t = Instant::now();
        let host = self.host.clone();
        match netcheck::resolve(&host, self.port, self.left(Some(STEP_CAP))).await {
            Ok(r) if r.literal => {
                self.pass("dns", format!("{host} is an IP address"), t);
                Some(r)
            }
            Ok(r) => {
                let ips: Vec<String> = r.addrs.iter().map(|a| a.ip().to_string()).collect();
                self.pass("dns", format!("{host} resolves to {}", ips.join(", ")), t);
                Some(r)
            }
            Err(e) => {
                let fix = format!(
                    "check the name: does this host resolve it (getent hosts {host}; /etc/hosts, the DNS server in /etc/resolv.conf)? Or give the node's IP: --node IP:{} (or the inventory's address:)",
                    self.port
                );
                self.fail("dns", 3, e.to_string(), fix, t);
                None
            }
        }
    }

    async fn tcp(&mut self, resolved: &Resolved) -> Option<TcpStream> {
        let t = Instant::now();
        let bind = self.ctx.g.bind;
        match netcheck::connect(&resolved.addrs, bind, self.left(Some(STEP_CAP))).await {
            Ok(s) => {
                let local = s.local_addr().ok();
                self.local_ip = local.map(|a| a.ip()).or(bind);
                let from = local.map(|a| a.to_string()).unwrap_or_else(|| "?".into());
                let to = s
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| self.address.clone());
                self.pass("tcp", format!("connected from {from} to {to}"), t);
                Some(s)
            }
            Err(e @ NetError::Bind { .. }) => {
                let fix = "--bind / SSQ_BIND must be an address of this host (see: ip -brief addr)"
                    .to_string();
                self.fail("tcp", 2, e.to_string(), fix, t);
                None
            }
            Err(e) => {
                let port = self.port;
                let from = match bind {
                    Some(ip) => format!("this host ({ip})"),
                    None => "this host".into(),
                };
                let fix = format!(
                    "nothing listens on TCP port {port} of {}, or a firewall drops it: check ssqd runs on the node (ssq --local --config FILE status there, FILE its startup.yaml) and the firewall allows TCP {port} from {from}",
                    self.host
                );
                self.fail("tcp", 3, e.to_string(), fix, t);
                None
            }
        }
    }

    /// The handshake and the pin; Err names why the signature step cannot run.
    async fn tls(&mut self, tcp: TcpStream) -> Result<(), String> {
        let t = Instant::now();
        let ca = self.ctx.g.ca.clone();
        let host = self.host.clone();
        let seen = match netcheck::handshake(tcp, &host, ca.as_deref(), self.left(Some(STEP_CAP)))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let (exit, fix) = match (&e, &ca) {
                    (NetError::Config(_), _) => (2, "give a readable PEM file to --ca".to_string()),
                    (NetError::Tls { .. }, Some(ca)) => (
                        4,
                        format!(
                            "the node's certificate does not verify with --ca {}: is that the CA that signed its portal.cert?",
                            ca.display()
                        ),
                    ),
                    _ => (
                        3,
                        format!(
                            "the port accepts TCP but does not answer like an ssq portal: is {} the portal's port (portal.listen in the node's startup.yaml, or data_dir/ssqd.addr), not its proxy's?",
                            self.port
                        ),
                    ),
                };
                self.fail("tls", exit, e.to_string(), fix, t);
                return Err("TLS handshake failed".into());
            }
        };
        let fp = seen.fingerprint.clone();
        let version = seen.version;
        if let Some(ca) = &ca {
            self.pass(
                "tls",
                format!(
                    "{version}, certificate {fp} verified by the CA in {}",
                    ca.display()
                ),
                t,
            );
            return Ok(());
        }
        let known_nodes = self.known_nodes();
        let expected =
            match netcheck::expected_pin(&known_nodes, &self.address, self.given_fp.as_deref()) {
                Ok(e) => e,
                Err(e) => {
                    self.fail(
                        "tls",
                        1,
                        format!("{}: {e}", known_nodes.display()),
                        format!(
                            "make {} readable (it holds the certificate pins)",
                            known_nodes.display()
                        ),
                        t,
                    );
                    return Err("the pins cannot be read".into());
                }
            };
        let source = |s: &PinSource| match s {
            PinSource::Given if self.ctx.g.fingerprint.is_some() => "--fingerprint".to_string(),
            PinSource::Given => "the inventory".to_string(),
            PinSource::KnownNodes => known_nodes.display().to_string(),
        };
        match expected {
            Some((pin, src)) if netcheck::same_fingerprint(&pin, &fp) => {
                self.pass(
                    "tls",
                    format!(
                        "{version}, certificate {fp} matches the pin ({})",
                        source(&src)
                    ),
                    t,
                );
                Ok(())
            }
            Some((pin, src)) => {
                let reason = format!(
                    "the certificate changed: pinned {pin} ({}), {} presents {fp}",
                    source(&src),
                    self.address
                );
                let fix = match src {
                    PinSource::KnownNodes => format!(
                        "if the node was reinstalled or its certificate replaced on purpose, accept the new one with: ssq node trust {}; if not, something else answers at {}: find out what before trusting it",
                        self.node, self.address
                    ),
                    PinSource::Given => format!(
                        "the expected fingerprint comes from {}: if the node's certificate was replaced on purpose, update it there (the node's own fingerprint: {})",
                        source(&src),
                        self.on_node("status")
                    ),
                };
                self.fail("tls", 4, reason, fix, t);
                Err("the certificate does not match the pin".into())
            }
            None if self.ctx.g.strict_pins => {
                let reason = format!(
                    "no pin for {} and --strict-pins is set; it presents {fp}",
                    self.address
                );
                let fix = format!(
                    "compare {fp} with the node's own fingerprint ({}), then give --fingerprint {fp}, add fingerprint: to the inventory, or run ssq node trust {}",
                    self.on_node("status"),
                    self.node
                );
                self.fail("tls", 4, reason, fix, t);
                Err("no pin and --strict-pins".into())
            }
            None => {
                self.pass(
                    "tls",
                    format!(
                        "{version}, certificate {fp}: no pin yet (first contact: ssq pins it in {})",
                        known_nodes.display()
                    ),
                    t,
                );
                Ok(())
            }
        }
    }

    /// A signed GET /api/v1/status, and what it says about the keys.
    async fn signature(&mut self, inventory_fp: Option<String>) -> Reached {
        let t = Instant::now();
        let mut opts = match self.ctx.client_options(inventory_fp) {
            Ok(o) => o,
            Err(f) => {
                let first = f.message.lines().next().unwrap_or_default().to_string();
                let key = self.ctx.operator_key_path();
                let fix = format!(
                    "create an operator key with: ssq key new --operator --out {}, and add its .pub line on the node: {}",
                    key.display(),
                    self.on_node(&format!("operator add {}", pub_path(&key).display()))
                );
                self.fail("signature", 2, first, fix, t);
                return Reached::Lost("no operator key".into());
            }
        };
        opts.timeout = self.left(None);
        let operator = opts
            .operator_key
            .as_ref()
            .map(|k| k.public().fingerprint())
            .unwrap_or_default();
        let attempt = tokio::time::timeout(
            self.left(None),
            signed_status(&self.address, &opts, self.ctx.g.output),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Timeout {
                addr: self.address.clone(),
                secs: self.ctx.g.timeout.as_secs(),
            })
        });
        let (conn, status) = match attempt {
            Ok(ok) => ok,
            Err(e) => return self.signature_refused(e, &operator, t),
        };
        let skew = clock_skew(status.now_ms);
        let mut reason = format!(
            "{} ({}) accepted operator key {operator}{skew}",
            status.node, status.role
        );
        match self.ctx.key_file() {
            None => reason.push_str(&format!(
                "; its activation key id is {} (give --key-file to compare it with the cluster's)",
                status.key_id
            )),
            Some(path) => match ActivationKey::load(&path) {
                Ok(k) if k.key_id() == status.key_id => reason.push_str(&format!(
                    "; same activation key as {} ({})",
                    path.display(),
                    status.key_id
                )),
                Ok(k) => {
                    let reason = format!(
                        "{} accepted the operator signature, but its activation key ({}) is not the cluster's ({}: {})",
                        status.node,
                        status.key_id,
                        path.display(),
                        k.key_id()
                    );
                    let fix = format!(
                        "every node needs the same activation key: compare the key files (sha256sum {} and the node's activation_key_file), copy the cluster's key to the node, then ssq restart --node {}",
                        path.display(),
                        self.node
                    );
                    self.fail("signature", 4, reason, fix, t);
                    return Reached::Status(Box::new(status), Box::new(conn));
                }
                Err(e) => reason.push_str(&format!(
                    "; its activation key id is {} (cannot compare: {e})",
                    status.key_id
                )),
            },
        }
        self.pass("signature", reason, t);
        Reached::Status(Box::new(status), Box::new(conn))
    }

    /// The signature step when the signed status failed.
    fn signature_refused(&mut self, e: ClientError, operator: &str, t: Instant) -> Reached {
        match e {
            ClientError::Api {
                status: 403 | 503,
                code,
                message,
            } if code == "address_not_allowed" || code == "access_list_unreadable" => {
                self.skip(
                    &["signature"],
                    "not checked: the node's allow list refused this address before looking at the signature (see allow_list)",
                );
                Reached::AllowList { message, code }
            }
            ClientError::Api {
                status: 401 | 403,
                code,
                message,
            } => {
                let fix = match code.as_str() {
                    "unknown_operator_key" => format!(
                        "the node does not list operator key {operator}: add its .pub line {}",
                        self.on_node(&format!(
                            "operator add {}",
                            pub_path(&self.ctx.operator_key_path()).display()
                        ))
                    ),
                    "stale_timestamp" => "this host's clock and the node's differ by more than 300 s: set both right (NTP: timedatectl, chronyc tracking)".to_string(),
                    "bad_signature" => "something between here and the node altered the request or answers with another certificate (a TLS-intercepting proxy?): connect to the node directly".to_string(),
                    "unsigned" | "malformed_authorization" => "a proxy or load balancer in front of the node strips or alters the Authorization header: connect to the node directly".to_string(),
                    "replayed_nonce" => "retry; if it persists, something between here and the node replays requests".to_string(),
                    _ => format!("see why in the node's extended.log ({})", self.on_node("logs")),
                };
                self.fail("signature", 4, message, fix, t);
                Reached::Signature
            }
            other => {
                let exit = match other.exit_code() {
                    c @ 2..=4 => c,
                    _ => 3,
                };
                let why = other.to_string();
                self.fail(
                    "signature",
                    exit,
                    why.clone(),
                    format!(
                        "the node accepted TLS but the signed status failed: retry, and see the node's extended.log ({})",
                        self.on_node("logs")
                    ),
                    t,
                );
                Reached::Lost(why)
            }
        }
    }

    fn allow_list(&mut self, reached: &Reached) {
        let t = Instant::now();
        let ip = self
            .local_ip
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "THIS_ADDRESS".into());
        match reached {
            Reached::Status(status, _) if status.authentication => self.pass(
                "allow_list",
                format!(
                    "authentication on: {} admits {ip} for config",
                    status.node
                ),
                t,
            ),
            Reached::Status(status, _) => self.pass(
                "allow_list",
                format!(
                    "authentication off: {} admits any address (signatures are still required)",
                    status.node
                ),
                t,
            ),
            Reached::Signature => self.pass(
                "allow_list",
                format!("{ip} got past the allow list (the node refused the signature, which it checks after the address)"),
                t,
            ),
            Reached::AllowList { message, code } if code == "access_list_unreadable" => {
                let fix = format!(
                    "repair the node's data_dir/access.yaml: {}",
                    self.on_node("master allow list")
                );
                self.fail("allow_list", 4, message.clone(), fix, t);
            }
            Reached::AllowList { message, .. } => {
                let addr = refused_address(message).unwrap_or(ip);
                let fix = format!(
                    "add {addr} to the node's allow list {}; or call from an address it admits (--bind ADDR / SSQ_BIND)",
                    self.on_node(&format!("master allow add {addr} --access config"))
                );
                self.fail("allow_list", 4, message.clone(), fix, t);
            }
            Reached::Lost(why) => self.skip(&["allow_list"], &format!("not reached: {why}")),
        }
    }
}

/// Connect (pinning on first contact, as every command does) and read the status.
async fn signed_status(
    address: &str,
    opts: &ClientOptions,
    format: Format,
) -> Result<(Conn, Status), ClientError> {
    let portal = Portal::connect(address, opts).await?;
    crate::target::pin_notice(&portal, opts, format);
    let mut conn = Conn::Portal(Box::new(portal));
    let status: Status = conn.call("GET", "/api/v1/status", None::<&()>).await?;
    Ok((conn, status))
}

/// ", clock skew N s" when the node's clock is more than a second off ours.
fn clock_skew(node_ms: u64) -> String {
    if node_ms == 0 {
        return String::new();
    }
    let ours = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0);
    let skew = (i128::from(node_ms) - ours) as f64 / 1000.0;
    if skew.abs() < 1.0 {
        return String::new();
    }
    format!(", clock skew {skew:+.1} s (refused past ±300 s)")
}

/// The address in a refusal "address X is not in the allow list ...".
fn refused_address(message: &str) -> Option<String> {
    let rest = message.split("address ").nth(1)?;
    let addr = rest.split_whitespace().next()?;
    addr.parse::<IpAddr>().ok().map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &'static str, status: &'static str, exit: i32) -> Step {
        Step {
            step: name,
            status,
            reason: String::new(),
            fix: None,
            ms: 0,
            master_steps: Vec::new(),
            exit,
        }
    }

    #[test]
    fn exit_code_follows_the_precedence() {
        assert_eq!(
            exit_code(&[step("dns", "PASS", 0), step("x", "SKIP", 0)]),
            0
        );
        assert_eq!(exit_code(&[step("a", "FAIL", 5), step("b", "FAIL", 3)]), 3);
        assert_eq!(exit_code(&[step("a", "FAIL", 3), step("b", "FAIL", 4)]), 4);
        assert_eq!(exit_code(&[step("a", "FAIL", 4), step("b", "FAIL", 2)]), 2);
        assert_eq!(exit_code(&[step("a", "FAIL", 1)]), 1);
    }

    #[test]
    fn refused_address_is_read_from_the_message() {
        let m = "address 127.0.0.4 is not in the allow list of n (or its entry does not grant config); add it with: ...";
        assert_eq!(refused_address(m).as_deref(), Some("127.0.0.4"));
        assert_eq!(refused_address("no address here"), None);
    }
}
