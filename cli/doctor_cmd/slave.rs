//! The slave's side of `ssq doctor`: `master_reachable` (the slave checks its master
//! itself, through `POST /api/v1/diagnose/master`), `last_sync` and `shipper` (from its
//! status), each failure with the fix its error text points to.

use std::time::Instant;

use ssq::api::{MasterCheck, Status};
use ssq::client::{ClientError, Conn};

use super::{Doctor, SLAVE_STEPS};

impl Doctor<'_> {
    /// The slave steps, or SKIP on a node that is not a slave.
    pub(super) async fn slave_steps(&mut self, status: &Status, conn: &mut Conn) {
        if status.role != "slave" {
            self.skip(
                &SLAVE_STEPS,
                &format!(
                    "not applicable: {} is a {}, not a slave",
                    status.node, status.role
                ),
            );
            return;
        }
        let w = SlaveRef::new(status, &self.node);
        self.master_reachable(&w, conn).await;
        self.last_sync(status, &w);
        self.shipper(status, &w);
    }

    async fn master_reachable(&mut self, w: &SlaveRef, conn: &mut Conn) {
        let t = Instant::now();
        let call = conn.call::<MasterCheck>("POST", "/api/v1/diagnose/master", None::<&()>);
        let answer = tokio::time::timeout(self.left(None), call)
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Timeout {
                    addr: self.address.clone(),
                    secs: self.ctx.g.timeout.as_secs(),
                })
            });
        let check = match answer {
            Ok(c) => c,
            Err(ClientError::Api {
                status: 404 | 409,
                message,
                ..
            }) => {
                self.skip(
                    &["master_reachable"],
                    &format!("not available: the node cannot check its master itself ({message})"),
                );
                return;
            }
            Err(e) => {
                let exit = if matches!(
                    e,
                    ClientError::Timeout { .. } | ClientError::Unreachable { .. }
                ) {
                    3
                } else {
                    5
                };
                self.fail(
                    "master_reachable",
                    exit,
                    format!("the slave did not answer the check of its master: {e}"),
                    format!("see the slave's extended.log ({})", self.on_node("logs")),
                    t,
                );
                return;
            }
        };
        let master = check.master.clone();
        let failed = check.steps.iter().find(|s| s.status == "FAIL").cloned();
        match failed {
            None => {
                let names: Vec<&str> = check.steps.iter().map(|s| s.step.as_str()).collect();
                self.pass(
                    "master_reachable",
                    format!(
                        "the slave reaches its master {master}: {} pass",
                        names.join(", ")
                    ),
                    t,
                );
            }
            Some(f) => {
                let fix = match f.step.as_str() {
                    "dns" => format!(
                        "the slave cannot resolve its master's name: fix DNS or /etc/hosts on the slave, or point it at the master's IP: ssq slave set-master IP:PORT --node {}",
                        w.node
                    ),
                    "tls" if f.reason.contains("changed") => w.rebuilt_master_fix(),
                    "tls" => format!(
                        "{master} does not answer TLS like an ssq portal: is it the master's portal port? (ssq slave set-master HOST:PORT --node {})",
                        w.node
                    ),
                    "sync" => remote_fix(&f.reason, w),
                    _ => w.unreachable_fix(),
                };
                self.fail(
                    "master_reachable",
                    5,
                    format!(
                        "the slave cannot reach its master at {master}: {} {}",
                        f.step, f.reason
                    ),
                    fix,
                    t,
                );
            }
        }
        if let Some(last) = self.steps.last_mut() {
            last.master_steps = check.steps;
        }
    }

    fn last_sync(&mut self, status: &Status, w: &SlaveRef) {
        let t = Instant::now();
        let Some(sync) = &status.sync else {
            self.skip(
                &["last_sync"],
                "not available: the node reports no sync state",
            );
            return;
        };
        let contact = sync.last_contact.as_deref().unwrap_or("never");
        let policy = format!(
            "policy revision {} {}",
            status.policy.revision, status.policy.state
        );
        match &sync.error {
            Some(err) => self.fail(
                "last_sync",
                5,
                format!(
                    "state {}, last contact {contact}, {policy}: {err}",
                    sync.state
                ),
                remote_fix(err, w),
                t,
            ),
            None if sync.last_contact.is_some() => self.pass(
                "last_sync",
                format!(
                    "state {}, last contact {contact} with {}, {policy}",
                    sync.state, sync.master
                ),
                t,
            ),
            None => self.fail(
                "last_sync",
                5,
                format!(
                    "no contact with its master {} yet (state {}), {policy}",
                    sync.master, sync.state
                ),
                format!(
                    "a slave reaches its master within seconds of its start: see master_reachable, and the slave's extended.log ({})",
                    self.on_node("logs")
                ),
                t,
            ),
        }
    }

    fn shipper(&mut self, status: &Status, w: &SlaveRef) {
        let t = Instant::now();
        let Some(r) = &status.report else {
            self.skip(
                &["shipper"],
                "not available: the node reports no report spool",
            );
            return;
        };
        match &r.error {
            Some(err) => self.fail(
                "shipper",
                5,
                format!("{err} ({} record(s) waiting in the spool)", r.pending),
                remote_fix(err, w),
                t,
            ),
            None => self.pass(
                "shipper",
                format!(
                    "no error: {} record(s) acknowledged by the master, {} waiting",
                    r.acked, r.pending
                ),
                t,
            ),
        }
    }
}

/// A slave, as its fixes name it.
struct SlaveRef {
    /// The slave as the operator gave it.
    node: String,
    /// Its node name.
    name: String,
    /// Its master, HOST:PORT.
    master: String,
    /// Its address as the master sees it (its portal IP), or SLAVE_IP.
    ip: String,
}

impl SlaveRef {
    fn new(status: &Status, given: &str) -> Self {
        let ip = status
            .portal
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "SLAVE_IP".into());
        SlaveRef {
            node: given.to_string(),
            name: status.node.clone(),
            master: status
                .master
                .clone()
                .or_else(|| status.sync.as_ref().map(|s| s.master.clone()))
                .unwrap_or_else(|| "MASTER".into()),
            ip,
        }
    }

    fn unreachable_fix(&self) -> String {
        format!(
            "the slave cannot reach its master at {m}: check the master runs (ssq status --node {m}), the firewall between them (TCP from {ip} to {m}), and the master's allow list (ssq master allow add {ip} --access sync --master {m})",
            m = self.master,
            ip = self.ip
        )
    }

    fn rebuilt_master_fix(&self) -> String {
        format!(
            "if the master was rebuilt or its certificate replaced on purpose, clear the slave's pins: ssq slave set-master {} --node {}",
            self.master, self.node
        )
    }
}

/// The likely fix for an error a slave met talking to its master.
fn remote_fix(err: &str, w: &SlaveRef) -> String {
    let e = err.to_ascii_lowercase();
    if e.contains("activation key") {
        format!(
            "every node needs the same activation key: compare the slave's and the master's key files (ssq status shows each node's key_id; sha256sum the files), copy the cluster's key to the slave's activation_key_file, then ssq restart --node {}",
            w.node
        )
    } else if e.contains("node key changed for") {
        format!(
            "the master knows {} under another node key: if this slave was reinstalled, run ssq master forget {} --master {}",
            w.name, w.name, w.master
        )
    } else if e.contains("not in the allow list") {
        format!(
            "add the slave to the master's allow list: ssq master allow add {} --access sync --master {}",
            w.ip, w.master
        )
    } else if (e.contains("certificate") && e.contains("changed"))
        || e.contains("master's node key changed")
        || e.contains("policy store changed")
    {
        w.rebuilt_master_fix()
    } else if e.contains("stale timestamp") {
        "the slave's and the master's clocks differ by more than 300 s: set both right (NTP)".into()
    } else if e.contains("nothing answers")
        || e.contains("did not answer")
        || e.contains("refused")
        || e.contains("timed out")
        || e.contains("tls with")
    {
        w.unreachable_fix()
    } else {
        format!(
            "see the slave's extended.log (ssq logs --node {}) and the master's (ssq logs --node {})",
            w.node, w.master
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixes_name_the_likely_cause() {
        let w = SlaveRef {
            node: "s".into(),
            name: "s".into(),
            master: "10.0.0.1:8888".into(),
            ip: "10.0.0.2".into(),
        };
        assert!(remote_fix("activation key mismatch: ...", &w).contains("same activation key"));
        assert!(remote_fix("node key changed for s; ...", &w).contains("ssq master forget s"));
        assert!(remote_fix("nothing answers on 10.0.0.1:8888 (refused)", &w)
            .contains("ssq master allow add 10.0.0.2"));
    }
}
