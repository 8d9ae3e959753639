//! What `ssq verify` found: one row per node, one entry per check (PASS, FAIL or SKIP
//! with a one-line reason and, for a failure, what to do next), the summary table and
//! the exit code by DESIGN.md's precedence (2, then 4, then 3, then 5).

use std::time::Instant;

use serde::Serialize;

use crate::output::table;

/// The per-slave checks, in the order they are shown.
pub const SLAVE_CHECKS: &[&str] = &[
    "reachable",
    "tls_pin",
    "startup_params",
    "allow_list",
    "activation_key",
    "policy_sync",
    "reports",
    "sync_events",
    "clock",
    "version",
];

/// The checks of the master itself.
pub const MASTER_CHECKS: &[&str] = &["reachable", "tls_pin", "policy", "clock"];

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// It holds.
    #[serde(rename = "PASS")]
    Pass,
    /// It does not.
    #[serde(rename = "FAIL")]
    Fail,
    /// It does not apply (or could not run; the reason says which).
    #[serde(rename = "SKIP")]
    Skip,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        }
    }
}

/// One check of one node.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The check's id (`startup_params`, ...).
    pub check: String,
    /// PASS, FAIL or SKIP.
    pub status: Outcome,
    /// One line: what was found.
    pub reason: String,
    /// For a failure: what to do next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// A pass that deserves attention (e.g. a version difference).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warning: bool,
    /// How long the check took.
    pub ms: u64,
    /// The exit code a failure stands for (3 unreachable, 4 refused, 5 a check, 2 input).
    #[serde(skip)]
    pub exit: i32,
}

/// One node's row.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Its name.
    pub name: String,
    /// The portal address it was reached at.
    pub address: String,
    /// Its checks, in order.
    pub checks: Vec<Check>,
}

impl NodeReport {
    /// A row with no checks yet.
    pub fn new(name: &str, address: &str) -> Self {
        NodeReport {
            name: name.to_string(),
            address: address.to_string(),
            checks: Vec::new(),
        }
    }

    fn push(
        &mut self,
        check: &str,
        status: Outcome,
        reason: String,
        started: Instant,
    ) -> &mut Check {
        self.checks.retain(|c| c.check != check);
        self.checks.push(Check {
            check: check.to_string(),
            status,
            reason,
            fix: None,
            warning: false,
            ms: started.elapsed().as_millis() as u64,
            exit: 0,
        });
        let last = self.checks.len() - 1;
        &mut self.checks[last]
    }

    /// Record a pass.
    pub fn pass(&mut self, check: &str, reason: impl Into<String>, started: Instant) {
        self.push(check, Outcome::Pass, reason.into(), started);
    }

    /// Record a pass with a warning.
    pub fn warn(&mut self, check: &str, reason: impl Into<String>, started: Instant) {
        self.push(check, Outcome::Pass, reason.into(), started)
            .warning = true;
    }

    /// Record a skip.
    pub fn skip(&mut self, check: &str, reason: impl Into<String>) {
        self.push(check, Outcome::Skip, reason.into(), Instant::now())
            .ms = 0;
    }

    /// Record a failure (`exit`: the code it stands for) and what to do about it.
    pub fn fail(
        &mut self,
        check: &str,
        exit: i32,
        reason: impl Into<String>,
        fix: impl Into<String>,
        started: Instant,
    ) {
        let c = self.push(check, Outcome::Fail, reason.into(), started);
        c.exit = exit;
        let fix = fix.into();
        c.fix = (!fix.is_empty()).then_some(fix);
    }

    /// Whether a check has a result yet.
    pub fn has(&self, check: &str) -> bool {
        self.checks.iter().any(|c| c.check == check)
    }

    /// Give every check of `order` that has no result yet `reason` as a SKIP, or, with
    /// `fail_exit`, as a FAIL standing for that exit code; then sort into `order`.
    pub fn complete(&mut self, order: &[&str], reason: &str, fail_exit: Option<i32>) {
        for check in order {
            if !self.has(check) {
                match fail_exit {
                    Some(exit) => self.fail(check, exit, reason, "", Instant::now()),
                    None => self.skip(check, reason),
                }
            }
        }
        self.checks.sort_by_key(|c| {
            order
                .iter()
                .position(|o| *o == c.check)
                .unwrap_or(order.len())
        });
    }
}

/// The whole answer of `ssq verify -o json`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// The master and its own checks.
    pub master: NodeReport,
    /// One row per slave.
    pub slaves: Vec<NodeReport>,
    /// With `--probe-policy`: the probe revision and how long until every slave had it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_policy: Option<serde_json::Value>,
    /// True when every check passed (or was skipped as not applicable).
    pub passed: bool,
    /// The exit code.
    pub exit: i32,
    /// How long the whole run took.
    pub elapsed_ms: u64,
}

/// The exit code for a set of failures: 0 none; else 2, then 4, then 3, then 5.
pub fn exit_code<'a>(checks: impl Iterator<Item = &'a Check>) -> i32 {
    let codes: Vec<i32> = checks
        .filter(|c| c.status == Outcome::Fail)
        .map(|c| c.exit)
        .collect();
    for code in [2, 4, 3, 5] {
        if codes.contains(&code) {
            return code;
        }
    }
    if codes.is_empty() {
        0
    } else {
        1
    }
}

/// The summary: a node × check table, then every failure and warning with what to do.
pub fn render(r: &VerifyReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "master {} ({}): {}\n",
        r.master.name,
        r.master.address,
        r.master
            .checks
            .iter()
            .map(|c| format!("{} {}", c.check, c.status.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut header = vec!["slave"];
    header.extend_from_slice(SLAVE_CHECKS);
    let rows = r
        .slaves
        .iter()
        .map(|s| {
            let mut row = vec![s.name.clone()];
            for id in SLAVE_CHECKS {
                row.push(match s.checks.iter().find(|c| c.check == *id) {
                    Some(c) if c.warning => "PASS (!)".into(),
                    Some(c) => c.status.as_str().into(),
                    None => "-".into(),
                });
            }
            row
        })
        .collect();
    if r.slaves.is_empty() {
        out.push_str("no slaves: none in the inventory and none known to the master\n");
    } else {
        out.push_str(&table(&header, rows));
        out.push('\n');
    }
    let mut notes = Vec::new();
    for node in std::iter::once(&r.master).chain(&r.slaves) {
        for c in &node.checks {
            if c.status == Outcome::Fail || c.warning {
                let mut line = format!(
                    "{} {} {}: {}",
                    if c.warning { "WARN" } else { "FAIL" },
                    node.name,
                    c.check,
                    c.reason
                );
                if let Some(f) = &c.fix {
                    line.push_str(&format!("\n  → {f}"));
                }
                notes.push(line);
            }
        }
    }
    if let Some(p) = &r.probe_policy {
        out.push_str(&format!(
            "probe revision {}: every slave had it after {} ms\n",
            p.get("revision").cloned().unwrap_or_default(),
            p.get("all_ms")
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        ));
    }
    out.push_str(&notes.join("\n"));
    if !notes.is_empty() {
        out.push('\n');
    }
    let failed = r
        .slaves
        .iter()
        .chain(std::iter::once(&r.master))
        .filter(|n| n.checks.iter().any(|c| c.status == Outcome::Fail))
        .count();
    out.push_str(&if r.passed {
        format!(
            "all checks passed on {} slave(s) in {} ms",
            r.slaves.len(),
            r.elapsed_ms
        )
    } else {
        format!(
            "{failed} node(s) failed a check (exit {}) in {} ms",
            r.exit, r.elapsed_ms
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_is_2_4_3_5() {
        let mut n = NodeReport::new("s", "a");
        let t = Instant::now();
        n.pass("reachable", "ok", t);
        assert_eq!(exit_code(n.checks.iter()), 0);
        n.fail("policy_sync", 5, "differs", "", t);
        assert_eq!(exit_code(n.checks.iter()), 5);
        n.fail("clock", 3, "timeout", "", t);
        assert_eq!(exit_code(n.checks.iter()), 3);
        n.fail("tls_pin", 4, "changed", "", t);
        assert_eq!(exit_code(n.checks.iter()), 4);
        n.skip("version", "n/a");
        assert_eq!(exit_code(n.checks.iter()), 4);
    }

    #[test]
    fn complete_fills_and_orders() {
        let mut n = NodeReport::new("s", "a");
        n.pass("version", "0.1.0", Instant::now());
        n.fail("reachable", 3, "down", "start it", Instant::now());
        n.complete(SLAVE_CHECKS, "not checked: unreachable", None);
        let ids: Vec<&str> = n.checks.iter().map(|c| c.check.as_str()).collect();
        assert_eq!(ids, SLAVE_CHECKS);
        assert_eq!(n.checks[1].status, Outcome::Skip);
        assert_eq!(n.checks[0].fix.as_deref(), Some("start it"));
    }
}
