//! `ssq verify`: the operator's verification checklist, run on every slave at once.
//! The master is read first (status, allow list; with `--probe-policy` a probe revision
//! is published and every slave's time to apply it measured), then every slave is
//! checked in parallel under one overall `--timeout`, with a progress bar on a terminal.
//! Exit 0 when everything passes; else 2, then 4, then 3, then 5 (DESIGN.md).

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use ssq::api::Status;
use ssq::syncapi::{PolicyApply, SlaveInfo};

use crate::args::VerifyArgs;
use crate::output::{emit, Failure};
use crate::target::{Ctx, Target};
use crate::verify_report::{
    exit_code, render, NodeReport, VerifyReport, MASTER_CHECKS, SLAVE_CHECKS,
};
use crate::verify_slave::{rand_u64, verify, Shared, SlaveTarget};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Run `ssq verify`.
///
/// # Errors
/// Exit 4 refused, 3 unreachable, 5 a check failed (the report is printed first).
pub async fn run(ctx: &Ctx, a: VerifyArgs) -> Result<(), Failure> {
    let started = Instant::now();
    // Finish a little before the overall limit, so the report is always printed.
    let deadline =
        tokio::time::Instant::now() + ctx.g.timeout.saturating_sub(Duration::from_millis(500));
    let master_ref = ctx.master_ref(a.master.as_deref())?;
    let master_fp = ctx
        .inventory
        .as_ref()
        .and_then(|i| i.find(&master_ref))
        .and_then(|e| e.fingerprint.clone());
    let mut master_row = NodeReport::new(&master_ref, &master_ref);
    let t_connect = Instant::now();
    let mut mt = match ctx.target(Some(&master_ref)).await {
        Ok(t) => t,
        Err(f) => return master_down(ctx, &a, master_row, f, started),
    };
    let master_addr = mt.address().unwrap_or_else(|| master_ref.clone());
    master_row.address.clone_from(&master_addr);
    master_row.pass(
        "tls_pin",
        "certificate as pinned (or pinned now)",
        t_connect,
    );
    let t0 = now_ms();
    let ms = match mt.status().await {
        Ok(s) => s,
        Err(f) => return master_down(ctx, &a, master_row, f, started),
    };
    let t1 = now_ms();
    master_row.name.clone_from(&ms.node);
    master_row.pass(
        "reachable",
        format!(
            "{} ({}, ssqd {}) answers in {} ms",
            ms.node,
            ms.role,
            ms.version,
            t1.saturating_sub(t0)
        ),
        t_connect,
    );
    if ms.role != "master" {
        master_row.fail(
            "reachable",
            2,
            format!("{} is a {} node, not a master", ms.node, ms.role),
            "give the master with --master HOST:PORT",
            t_connect,
        );
    }
    let master_skew =
        (ms.now_ms != 0).then(|| ms.now_ms as i64 - (t0 + t1.saturating_sub(t0) / 2) as i64);
    master_checks(&mut master_row, &ms, master_skew, &a);
    let access = mt.access().await.map_err(|f| f.message);
    let targets = slave_targets(ctx, &a, &ms);
    let probe = if a.probe_policy && ms.policy.revision > 0 {
        let names: Vec<String> = targets
            .iter()
            .filter_map(|t| t.as_ref().ok())
            .map(|t| t.name.clone())
            .collect();
        Some(probe_policy(&mut mt, &ms, &names, a.probe_policy_limit, deadline).await)
    } else {
        None
    };
    // After a probe, the master's status (revision, rows) is the new one.
    let ms = if probe.is_some() {
        mt.status().await.unwrap_or(ms)
    } else {
        ms
    };
    let mut opts = ctx.client_options(None)?;
    opts.timeout = ctx.g.timeout.min(Duration::from_secs(10));
    let mut master_opts = ctx.client_options(master_fp)?;
    master_opts.timeout = opts.timeout;
    let shared = Arc::new(Shared {
        opts,
        master_opts,
        master_addr: master_addr.clone(),
        master: ms.clone(),
        master_skew_ms: master_skew,
        access,
        probe_traffic: a.probe_traffic,
        max_report_lag: a.max_report_lag,
        max_clock_skew: a.max_clock_skew,
        probe: probe.as_ref().map(|p| p.per_slave.clone()),
        deadline,
        bind: ctx.g.bind,
    });
    let slaves = check_slaves(shared, targets, deadline).await;
    let mut report = VerifyReport {
        master: master_row,
        slaves,
        probe_policy: probe.map(|p| p.summary),
        passed: false,
        exit: 0,
        elapsed_ms: 0,
    };
    finish(ctx, &mut report, started)
}

/// The master's own checks beyond reachability.
fn master_checks(row: &mut NodeReport, ms: &Status, skew: Option<i64>, a: &VerifyArgs) {
    let at = Instant::now();
    if ms.policy.revision == 0 {
        row.fail(
            "policy",
            5,
            "the master has no policy yet: its slaves refuse all proxy traffic",
            "ssq policy apply FILE --wait",
            at,
        );
    } else {
        row.pass(
            "policy",
            format!(
                "revision {} (sha256 {})",
                ms.policy.revision,
                ms.policy.sha256.chars().take(12).collect::<String>()
            ),
            at,
        );
    }
    match skew {
        None => row.skip("clock", "the master does not report its clock (older ssqd)"),
        Some(s) if s.unsigned_abs() as u128 > a.max_clock_skew.as_millis() => row.warn(
            "clock",
            format!("the master's clock is {s:+} ms off this host's (slaves are compared with the master)"),
            at,
        ),
        Some(s) => row.pass("clock", format!("{s:+} ms from this host"), at),
    }
}

/// The slaves to check: `--slave` names (inventory, then the master's list, then taken
/// as HOST:PORT), or every slave in the inventory and every slave the master knows.
fn slave_targets(ctx: &Ctx, a: &VerifyArgs, ms: &Status) -> Vec<Result<SlaveTarget, String>> {
    let known: Vec<SlaveInfo> = ms.slaves.clone().unwrap_or_default();
    let inventory: Vec<ssq::inventory::NodeEntry> = ctx
        .inventory
        .as_ref()
        .map(|i| i.slaves.clone())
        .unwrap_or_default();
    let from_master = |i: &SlaveInfo| -> Result<SlaveTarget, String> {
        let address = portal_of(i).ok_or_else(|| {
            format!(
                "the master does not know where the portal of {} is (older ssqd on it?)",
                i.name
            )
        })?;
        Ok(SlaveTarget {
            name: i.name.clone(),
            address,
            fingerprint: None,
            info: Some(i.clone()),
        })
    };
    let from_inventory = |e: &ssq::inventory::NodeEntry| SlaveTarget {
        name: e.name.clone(),
        address: ssq::client::with_default_port(&e.address),
        fingerprint: e.fingerprint.clone(),
        info: known.iter().find(|k| k.name == e.name).cloned(),
    };
    if !a.slaves.is_empty() {
        return a
            .slaves
            .iter()
            .map(|n| {
                if let Some(e) = inventory.iter().find(|e| e.name == *n || e.address == *n) {
                    return Ok(from_inventory(e));
                }
                if let Some(i) = known.iter().find(|k| k.name == *n) {
                    return from_master(i);
                }
                if n.contains(':') {
                    return Ok(SlaveTarget {
                        name: n.clone(),
                        address: n.clone(),
                        fingerprint: None,
                        info: None,
                    });
                }
                Err(n.clone())
            })
            .collect();
    }
    let mut out: Vec<Result<SlaveTarget, String>> =
        inventory.iter().map(|e| Ok(from_inventory(e))).collect();
    for i in &known {
        if !inventory.iter().any(|e| e.name == i.name) {
            out.push(from_master(i).map_err(|e| format!("{}\u{0}{e}", i.name)));
        }
    }
    out
}

/// A slave's portal as it reported it to the master; when it listens on every address,
/// at the address the master sees it come from.
fn portal_of(i: &SlaveInfo) -> Option<String> {
    let p: std::net::SocketAddr = i.portal.as_ref()?.parse().ok()?;
    if p.ip().is_unspecified() {
        let ip: std::net::IpAddr = i.address.parse().ok()?;
        return Some(std::net::SocketAddr::new(ip, p.port()).to_string());
    }
    Some(p.to_string())
}

/// Check every slave in parallel; rows in name order.
async fn check_slaves(
    shared: Arc<Shared>,
    targets: Vec<Result<SlaveTarget, String>>,
    deadline: tokio::time::Instant,
) -> Vec<NodeReport> {
    let bar = (std::io::stderr().is_terminal() && !targets.is_empty()).then(|| {
        let b = indicatif::ProgressBar::new(targets.len() as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "verifying {bar:30} {pos}/{len} slaves {elapsed}",
        ) {
            b.set_style(style);
        }
        b
    });
    let mut rows: Vec<Arc<Mutex<NodeReport>>> = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for t in targets {
        match t {
            Ok(t) => {
                let row = Arc::new(Mutex::new(NodeReport::new(&t.name, &t.address)));
                rows.push(row.clone());
                set.spawn(verify(shared.clone(), t, row));
            }
            Err(e) => {
                let (name, why) = match e.split_once('\u{0}') {
                    Some((n, w)) => (n.to_string(), w.to_string()),
                    None => (
                        e.clone(),
                        format!("{e} is neither in the inventory nor known to the master"),
                    ),
                };
                let mut r = NodeReport::new(&name, "-");
                r.fail(
                    "reachable",
                    2,
                    why,
                    "give a slave's name (ssq status lists them) or its HOST:PORT",
                    Instant::now(),
                );
                rows.push(Arc::new(Mutex::new(r)));
            }
        }
    }
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(_)) => {
                if let Some(b) = &bar {
                    b.inc(1);
                }
            }
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut out: Vec<NodeReport> = rows
        .iter()
        .map(|r| {
            let mut row = r
                .lock()
                .map(|g| g.clone())
                .unwrap_or_else(|p| p.into_inner().clone());
            let unreachable = row
                .checks
                .iter()
                .any(|c| matches!(c.check.as_str(), "reachable" | "tls_pin") && c.exit != 0);
            if unreachable {
                row.complete(
                    SLAVE_CHECKS,
                    "not checked: the slave could not be reached",
                    None,
                );
            } else {
                row.complete(SLAVE_CHECKS, "not finished within --timeout", Some(3));
            }
            row
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What `--probe-policy` found.
struct ProbeOutcome {
    per_slave: HashMap<String, Result<u64, String>>,
    summary: serde_json::Value,
}

/// Add (or replace) the top-level `probe:` marker of a policy text, keeping the rest
/// (comments included); a flow-style document is rewritten as canonical JSON instead.
fn with_probe_marker(text: &str, marker: &str) -> Result<String, String> {
    let mut p = ssq::policy::parse(text).map_err(|e| e.to_string())?;
    p.probe = Some(marker.to_string());
    let mut kept: String = text
        .lines()
        .filter(|l| !l.starts_with("probe:"))
        .map(|l| format!("{l}\n"))
        .collect();
    kept.push_str(&format!("probe: \"{marker}\"\n"));
    match ssq::policy::parse(&kept) {
        Ok(q) if q == p => Ok(kept),
        _ => Ok(ssq::policy::canonical_json(&p)),
    }
}

/// Publish a probe revision (the current content plus a new `probe` marker) and watch
/// the master's rows until every named slave applied it, or the limit.
async fn probe_policy(
    mt: &mut Target,
    ms: &Status,
    names: &[String],
    limit: Duration,
    deadline: tokio::time::Instant,
) -> ProbeOutcome {
    let fail_all = |why: String| ProbeOutcome {
        per_slave: names
            .iter()
            .map(|n| (n.clone(), Err(why.clone())))
            .collect(),
        summary: json!({"error": why}),
    };
    let doc = match mt.policy(None).await {
        Ok(d) => d,
        Err(f) => {
            return fail_all(format!(
                "the master's policy could not be read: {}",
                f.message
            ))
        }
    };
    let marker = format!("verify-{}-{:08x}", now_ms(), rand_u64() as u32);
    let text = match with_probe_marker(&doc.text, &marker) {
        Ok(t) => t,
        Err(e) => return fail_all(format!("the master's policy does not parse here: {e}")),
    };
    let body = PolicyApply {
        text,
        dry_run: false,
        if_revision: Some(ms.policy.revision),
        local: false,
    };
    let applied = match mt.policy_apply(&body).await {
        Ok(a) => a,
        Err(f) => {
            return fail_all(format!(
                "the probe revision was not published: {}",
                f.message
            ))
        }
    };
    let published = Instant::now();
    let known: Vec<&String> = names
        .iter()
        .filter(|n| ms.slaves.iter().flatten().any(|s| s.name == **n))
        .collect();
    let mut per: HashMap<String, Result<u64, String>> = HashMap::new();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    while per.len() < known.len() {
        let over = published.elapsed() >= limit || tokio::time::Instant::now() >= deadline;
        if let Ok(s) = mt.status().await {
            for row in s.slaves.iter().flatten() {
                if !known.contains(&&row.name) || per.contains_key(&row.name) {
                    continue;
                }
                if row.revision >= applied.revision
                    && (row.revision > applied.revision || row.sha256 == applied.sha256)
                {
                    per.insert(row.name.clone(), Ok(published.elapsed().as_millis() as u64));
                } else if row.state == "REJECTED" && row.revision < applied.revision {
                    // An older rejection may still be on the row; only a rejection of
                    // this revision counts, and the master names it in `error`.
                    if let Some(e) = &row.error {
                        last.insert(row.name.clone(), format!("rejected: {e}"));
                    }
                } else {
                    last.insert(row.name.clone(), format!("state {}", row.state));
                }
            }
        }
        if over {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in &known {
        if !per.contains_key(*n) {
            let state = last.get(*n).cloned().unwrap_or_else(|| "no answer".into());
            per.insert(
                (*n).clone(),
                Err(format!(
                    "revision {} not applied within {} ms ({state})",
                    applied.revision,
                    limit.as_millis()
                )),
            );
        }
    }
    let all_ms = per
        .values()
        .map(|r| r.as_ref().ok().copied())
        .collect::<Option<Vec<u64>>>()
        .map(|v| v.into_iter().max().unwrap_or(0));
    ProbeOutcome {
        summary: json!({
            "revision": applied.revision,
            "sha256": applied.sha256,
            "marker": marker,
            "all_ms": all_ms,
            "limit_ms": limit.as_millis() as u64,
        }),
        per_slave: per,
    }
}

/// The master could not be reached or refused: report that, and every slave unchecked.
fn master_down(
    ctx: &Ctx,
    a: &VerifyArgs,
    mut master: NodeReport,
    f: Failure,
    started: Instant,
) -> Result<(), Failure> {
    let exit = if matches!(f.exit, 2 | 4) { f.exit } else { 3 };
    let check = if f.code == "certificate_changed" || f.code == "no_pin" {
        "tls_pin"
    } else {
        "reachable"
    };
    master.fail(
        check,
        exit,
        f.message.clone(),
        format!(
            "find the failing step with: ssq doctor --node {}",
            master.address
        ),
        started,
    );
    master.complete(
        MASTER_CHECKS,
        "not checked: the master could not be reached",
        None,
    );
    // Without the master's list, the slaves named here or in the inventory.
    let named: Vec<(String, String)> = if a.slaves.is_empty() {
        ctx.inventory
            .as_ref()
            .map(|i| {
                i.slaves
                    .iter()
                    .map(|e| (e.name.clone(), e.address.clone()))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        a.slaves
            .iter()
            .map(|n| (n.clone(), "-".to_string()))
            .collect()
    };
    let slaves = named
        .iter()
        .map(|(n, addr)| {
            let mut r = NodeReport::new(n, addr);
            r.complete(
                SLAVE_CHECKS,
                "not checked: the master could not be reached",
                None,
            );
            r
        })
        .collect();
    let mut report = VerifyReport {
        master,
        slaves,
        probe_policy: None,
        passed: false,
        exit,
        elapsed_ms: 0,
    };
    finish(ctx, &mut report, started)
}

/// Print the report; the exit code.
fn finish(ctx: &Ctx, report: &mut VerifyReport, started: Instant) -> Result<(), Failure> {
    report.master.complete(MASTER_CHECKS, "not checked", None);
    let exit = exit_code(
        report
            .slaves
            .iter()
            .chain(std::iter::once(&report.master))
            .flat_map(|n| n.checks.iter()),
    );
    report.exit = exit;
    report.passed = exit == 0;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    emit(ctx.g.output, &*report, || render(report))?;
    if exit == 0 {
        Ok(())
    } else {
        // The report says it all; no second message.
        Err(Failure::new(exit, "verify_failed", ""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_marker_is_added_or_replaced() {
        let t = "# keep me\nrules:\n  - domains: [a.test]\n    action: deny\n";
        let once = with_probe_marker(t, "m1").unwrap();
        assert!(once.starts_with("# keep me\n"));
        assert!(once.ends_with("probe: \"m1\"\n"));
        let twice = with_probe_marker(&once, "m2").unwrap();
        assert_eq!(twice.matches("probe:").count(), 1);
        assert!(twice.contains("m2"));
        let flow = "{rules: [{domains: [a.test], action: deny}]}";
        let f = with_probe_marker(flow, "m3").unwrap();
        let p = ssq::policy::parse(&f).unwrap();
        assert_eq!(p.probe.as_deref(), Some("m3"));
        assert_eq!(p.rules.len(), 1);
    }
}
