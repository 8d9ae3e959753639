//! `POST /api/v1/diagnose/master`: a slave checks, from where it stands, that its master
//! answers (DNS, TCP, TLS as pinned, its sync credential accepted), for `ssq doctor`.
//!
//! The steps run the way the slave's sync does: the master from the startup params, the
//! connection bound to the slave's outgoing address, the certificate compared with the
//! pin in data_dir/master_known_nodes, then a `GET /api/v1/sync/ping` signed with the
//! activation key and the node key. Nothing is written: with no pin yet, the certificate
//! is reported, not pinned (the sync loop pins it at its first contact). The whole check
//! finishes within `BUDGET`; a step that cannot run because an earlier one failed is SKIP.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ssq::api::{CheckStep, MasterCheck, SyncPong};
use ssq::client::ClientError;
use ssq::client::{Conn, Portal};
use ssq::netcheck;
use ssq::startup::{MasterAddr, Role};

use crate::apierror::ApiError;
use crate::node::Node;

/// The whole check's time limit.
const BUDGET: Duration = Duration::from_secs(5);
/// The least any step is given, even when the budget is nearly spent.
const FLOOR: Duration = Duration::from_millis(200);

/// Whether this module serves `path`.
pub fn serves(path: &str) -> bool {
    path == "/api/v1/diagnose/master"
}

/// Serve one diagnose request.
///
/// # Errors
/// 405 for another method; 409 on a node that is not a slave.
pub async fn route(
    node: &Arc<Node>,
    method: &str,
    path: &str,
) -> Result<(u16, serde_json::Value), ApiError> {
    if method != "POST" {
        return Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{method} {path}: use POST"),
        ));
    }
    let startup = &node.files.startup;
    let master = match (&startup.master, startup.role) {
        (Some(m), Role::Slave) => m.clone(),
        _ => {
            return Err(ApiError::new(
                409,
                "not_a_slave",
                format!(
                    "{} is a {} node, not a slave: it has no master to check (startup params set no master)",
                    startup.node,
                    node.role()
                ),
            ))
        }
    };
    let check = check_master(node, &master).await;
    serde_json::to_value(&check)
        .map(|v| (200, v))
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

/// The steps so far, and the time left.
struct Steps {
    /// When the check must end.
    deadline: Instant,
    /// The steps, in order.
    steps: Vec<CheckStep>,
}

impl Steps {
    /// What a step may still take.
    fn left(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(FLOOR)
    }

    fn push(&mut self, step: &str, status: &str, reason: String, started: Instant) {
        self.steps.push(CheckStep {
            step: step.into(),
            status: status.into(),
            reason,
            ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    fn pass(&mut self, step: &str, reason: String, started: Instant) {
        self.push(step, "PASS", reason, started);
    }

    fn fail(&mut self, step: &str, reason: String, started: Instant) {
        self.push(step, "FAIL", reason, started);
    }

    /// SKIP `steps`, each saying which earlier step kept it from running.
    fn skip(&mut self, steps: &[&str], because: &str) {
        for s in steps {
            self.steps.push(CheckStep {
                step: (*s).into(),
                status: "SKIP".into(),
                reason: format!("not reached: {because}"),
                ms: 0,
            });
        }
    }
}

/// Run dns, tcp, tls and sync against `master`, as this slave's sync would.
async fn check_master(node: &Node, master: &MasterAddr) -> MasterCheck {
    let addr = master.to_string();
    let mut s = Steps {
        deadline: Instant::now() + BUDGET,
        steps: Vec::with_capacity(4),
    };
    let bind = node.files.startup.outgoing_bind();

    let t = Instant::now();
    let resolved = match netcheck::resolve(&master.host, master.port, s.left()).await {
        Ok(r) => {
            let reason = if r.literal {
                format!("{} is an IP address", master.host)
            } else {
                let list: Vec<String> = r.addrs.iter().map(|a| a.ip().to_string()).collect();
                format!("{} resolves to {}", master.host, list.join(", "))
            };
            s.pass("dns", reason, t);
            r
        }
        Err(e) => {
            s.fail("dns", format!("the slave {e}"), t);
            s.skip(&["tcp", "tls", "sync"], "DNS resolution failed");
            return MasterCheck {
                master: addr,
                steps: s.steps,
            };
        }
    };

    let t = Instant::now();
    let tcp = match netcheck::connect(&resolved.addrs, bind, s.left()).await {
        Ok(c) => {
            let from = c
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into());
            let to = c
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| addr.clone());
            s.pass("tcp", format!("connected from {from} to {to}"), t);
            c
        }
        Err(e) => {
            let from = bind.map(|ip| format!(" (from {ip})")).unwrap_or_default();
            s.fail("tcp", format!("{e}{from}"), t);
            s.skip(&["tls", "sync"], "TCP connect failed");
            return MasterCheck {
                master: addr,
                steps: s.steps,
            };
        }
    };

    let t = Instant::now();
    let opts = crate::slave::master_client(node, "sync", BUDGET);
    let pinned = opts
        .as_ref()
        .map(|o| netcheck::expected_pin(&o.known_nodes, &addr, None));
    let seen = match netcheck::handshake(tcp, &master.host, None, s.left()).await {
        Ok(seen) => seen,
        Err(e) => {
            s.fail("tls", e.to_string(), t);
            s.skip(&["sync"], "TLS handshake failed");
            return MasterCheck {
                master: addr,
                steps: s.steps,
            };
        }
    };
    let mut trust_on_connect = false;
    match pinned {
        Some(Ok(Some((pin, _)))) => {
            if netcheck::same_fingerprint(&pin, &seen.fingerprint) {
                s.pass(
                    "tls",
                    format!(
                        "{} certificate {} matches the slave's pin",
                        seen.version, seen.fingerprint
                    ),
                    t,
                );
            } else {
                s.fail(
                    "tls",
                    format!(
                        "the master's certificate changed: the slave pinned {pin}, {addr} presents {}; if the master was rebuilt on purpose, run ssq slave set-master {addr} --node {}",
                        seen.fingerprint, node.files.startup.node
                    ),
                    t,
                );
                s.skip(&["sync"], "the master's certificate does not match the pin");
                return MasterCheck {
                    master: addr,
                    steps: s.steps,
                };
            }
        }
        Some(Ok(None)) => {
            trust_on_connect = true;
            s.pass(
                "tls",
                format!(
                    "{} certificate {} (not pinned yet: the slave pins it at its first sync)",
                    seen.version, seen.fingerprint
                ),
                t,
            );
        }
        Some(Err(e)) => {
            s.fail(
                "tls",
                format!("the slave's pin file for its master cannot be read: {e}"),
                t,
            );
            s.skip(&["sync"], "the master's pin cannot be read");
            return MasterCheck {
                master: addr,
                steps: s.steps,
            };
        }
        None => {
            s.pass(
                "tls",
                format!("{} certificate {}", seen.version, seen.fingerprint),
                t,
            );
        }
    }

    let t = Instant::now();
    let Some(mut opts) = opts else {
        s.fail(
            "sync",
            "this slave's node key (data_dir/node.key) cannot be loaded: see extended.log".into(),
            t,
        );
        return MasterCheck {
            master: addr,
            steps: s.steps,
        };
    };
    opts.timeout = s.left();
    opts.trust_on_connect = trust_on_connect;
    let ping = async {
        let p = Portal::connect(&addr, &opts).await?;
        Conn::Portal(Box::new(p))
            .call::<SyncPong>("GET", "/api/v1/sync/ping", None::<&()>)
            .await
    };
    match tokio::time::timeout(s.left(), ping).await {
        Ok(Ok(pong)) => s.pass(
            "sync",
            format!(
                "the master {} accepts this slave's sync credential ({})",
                pong.node, pong.caller
            ),
            t,
        ),
        Ok(Err(e @ ClientError::Api { .. })) => s.fail(
            "sync",
            format!("the master refused this slave's sync credential: {e}"),
            t,
        ),
        Ok(Err(e)) => s.fail("sync", e.to_string(), t),
        Err(_) => s.fail(
            "sync",
            format!(
                "{addr} did not answer a signed ping within the {} s budget",
                BUDGET.as_secs()
            ),
            t,
        ),
    }
    MasterCheck {
        master: addr,
        steps: s.steps,
    }
}
