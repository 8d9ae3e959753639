//! Node-level commands: `ssq status`, `ssq restart`, `ssq node trust`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use serde_json::json;
use ssq::api::Status;
use ssq::client::{with_default_port, ClientOptions, Portal};
use ssq::keys::ActivationKey;
use ssq::pins::{KnownNodes, Pin};

use crate::args::{NodeArg, NodeCmd, RestartArgs, Via};
use crate::output::{emit, kv, table, Failure};
use crate::target::Ctx;

/// Run `ssq status`.
///
/// # Errors
/// As the call.
pub async fn status(ctx: &Ctx, a: NodeArg) -> Result<(), Failure> {
    let node = match (&a.node, &a.master) {
        (Some(n), _) => Some(n.clone()),
        (None, Some(m)) => Some(m.clone()),
        (None, None) => None,
    };
    let mut t = ctx.target(node.as_deref()).await?;
    let s = t.status().await?;
    // With a key file at hand, say whether the node holds the same activation key (by
    // key id: no secret crosses the wire).
    let key_note = match ctx.key_file() {
        Some(path) => match ActivationKey::load(&path) {
            Ok(k) if k.key_id() == s.key_id => format!(" (matches {})", path.display()),
            Ok(k) => format!(" (DIFFERS from {}: {})", path.display(), k.key_id()),
            Err(e) => format!(" (cannot compare: {e})"),
        },
        None => String::new(),
    };
    emit(ctx.g.output, &s, || render_status(&s, &key_note))
}

fn render_status(s: &Status, key_note: &str) -> String {
    let mut out = node_table(s, key_note);
    if let Some(sync) = &s.sync {
        out.push_str(&format!(
            "\nsync with {}: {}{}{}",
            sync.master,
            sync.state,
            sync.error
                .as_ref()
                .map(|e| format!(" (error: {e})"))
                .unwrap_or_default(),
            sync.last_contact
                .as_ref()
                .map(|t| format!(", last contact {t}"))
                .unwrap_or_default(),
        ));
    }
    if let Some(r) = &s.report {
        out.push_str(&format!(
            "
report spool (epoch {}): {} records spooled, {} acknowledged by the master, {} pending, {} bytes on disk{}",
            r.epoch,
            r.spooled,
            r.acked,
            r.pending,
            r.bytes_on_disk,
            r.error
                .as_ref()
                .map(|e| format!(" (shipping error: {e})"))
                .unwrap_or_default()
        ));
    }
    if let Some(slaves) = &s.slaves {
        let rows: Vec<Vec<String>> = slaves.iter().map(slave_row).collect();
        out.push_str(&format!("\nslaves ({}):\n", slaves.len()));
        out.push_str(&table(
            &[
                "name",
                "state",
                "revision",
                "sha256",
                "last seen",
                "report lag",
                "version",
                "address",
                "reports",
                "error",
            ],
            rows,
        ));
    }
    if let Some(refused) = s.refused.as_ref().filter(|r| !r.is_empty()) {
        let rows: Vec<Vec<String>> = refused
            .iter()
            .map(|r| {
                vec![
                    r.address.clone(),
                    r.node.clone(),
                    r.reason.clone(),
                    r.last.clone(),
                    r.count.to_string(),
                ]
            })
            .collect();
        out.push_str(&format!("\nrefused sync attempts ({}):\n", refused.len()));
        out.push_str(&table(
            &["address", "claimed node", "reason", "last", "count"],
            rows,
        ));
    }
    out
}

/// One row of the master's slave table.
fn slave_row(x: &ssq::syncapi::SlaveInfo) -> Vec<String> {
    let lag = match &x.report {
        Some(r) if r.last_time_ms > 0 => format!("{:.1} s", r.lag_ms as f64 / 1000.0),
        Some(_) => "no records yet".into(),
        None => "-".into(),
    };
    let reports = match &x.report {
        Some(r) => format!(
            "acked {}, lost {}{}{}",
            r.acked,
            r.gaps,
            if r.duplicate_name {
                ", TWO LIVE SPOOLS"
            } else {
                ""
            },
            r.stats
                .as_ref()
                .map(|st| format!(
                    "; {} requests, {} blocked, {} open connections",
                    st.requests, st.blocked, st.active_connections
                ))
                .unwrap_or_default()
        ),
        None => "-".into(),
    };
    vec![
        x.name.clone(),
        x.state.clone(),
        x.revision.to_string(),
        x.sha256.chars().take(12).collect(),
        format!("{} ({} s ago)", x.last_seen, x.last_seen_secs),
        lag,
        if x.version.is_empty() {
            "-".into()
        } else {
            x.version.clone()
        },
        x.address.clone(),
        reports,
        x.error.clone().unwrap_or_default(),
    ]
}

fn node_table(s: &Status, key_note: &str) -> String {
    kv(vec![
        ("node", s.node.clone()),
        ("role", s.role.clone()),
        ("version", s.version.clone()),
        ("pid", s.pid.to_string()),
        ("boot id", s.boot_id.clone()),
        ("started", s.started_at.clone()),
        ("master", s.master.clone().unwrap_or_else(|| "-".into())),
        ("portal", s.portal.clone()),
        ("proxy", s.proxy.clone().unwrap_or_else(|| "-".into())),
        ("certificate", s.fingerprint.clone()),
        ("activation key id", format!("{}{key_note}", s.key_id)),
        ("node key", s.node_key.clone()),
        (
            "authentication",
            if s.authentication { "on" } else { "off" }.into(),
        ),
        (
            "policy",
            format!(
                "{} (revision {}{})",
                s.policy.state,
                s.policy.revision,
                if s.policy.sha256.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", sha256 {}",
                        s.policy.sha256.chars().take(12).collect::<String>()
                    )
                }
            ),
        ),
    ])
}

/// Run `ssq restart`.
///
/// # Errors
/// Exit 3 when the node does not come back within --timeout.
pub async fn restart(ctx: &Ctx, a: RestartArgs) -> Result<(), Failure> {
    if a.via == Via::Master {
        return restart_via_master(ctx, a).await;
    }
    let mut t = ctx.target(a.node.as_deref()).await?;
    let r = t.restart().await?;
    if !a.wait {
        return emit(ctx.g.output, &r, || {
            format!(
                "restart requested (pid {}); configuration backed up to {}\nwait for it with: ssq status{}",
                r.pid,
                r.backup,
                a.node.as_ref().map(|n| format!(" --node {n}")).unwrap_or_default()
            )
        });
    }
    let s = wait_new_boot(ctx, a.node.as_deref(), &r.old_boot_id).await?;
    let out = json!({
        "backup": r.backup,
        "old_boot_id": r.old_boot_id,
        "boot_id": s.boot_id,
        "pid": s.pid,
        "same_pid": s.pid == r.pid,
        "portal": s.portal,
        "proxy": s.proxy,
    });
    emit(ctx.g.output, &out, || {
        format!(
            "{} restarted: boot {} -> {}, pid {}{}; configuration backed up to {}",
            s.node,
            r.old_boot_id,
            s.boot_id,
            s.pid,
            if s.pid == r.pid {
                " (same)"
            } else {
                " (changed!)"
            },
            r.backup
        )
    })
}

/// Poll the node until it answers with a boot id other than `old`.
pub async fn wait_new_boot(ctx: &Ctx, node: Option<&str>, old: &str) -> Result<Status, Failure> {
    let start = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message("waiting for the node to come back");
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let mut last = String::from("no answer yet");
    while start.elapsed() < ctx.g.timeout {
        match ctx.target(node).await {
            Ok(mut t) => match t.status().await {
                Ok(s) if s.boot_id != old => {
                    if let Some(b) = &bar {
                        b.finish_and_clear();
                    }
                    return Ok(s);
                }
                Ok(_) => last = "still the old boot".into(),
                Err(e) => last = e.message,
            },
            Err(e) => last = e.message,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    Err(Failure::new(
        3,
        "timeout",
        format!(
            "the node did not come back with a new boot id within {} (last: {last}); check its extended.log",
            humantime::format_duration(ctx.g.timeout)
        ),
    ))
}

/// Run `ssq node ...`.
///
/// # Errors
/// As the connection.
pub async fn node(ctx: &Ctx, cmd: NodeCmd) -> Result<(), Failure> {
    let NodeCmd::Trust { node, yes } = cmd;
    let (address, _) = match ctx.inventory.as_ref().and_then(|i| i.find(&node)) {
        Some(e) => (e.address.clone(), e.fingerprint.clone()),
        None => (node.clone(), None),
    };
    let address = with_default_port(&address);
    let base = ctx.client_options(None)?;
    let known_path = base.known_nodes.clone();
    let mut known = KnownNodes::load(&known_path)?;
    let old = known.get(&address).map(|p| p.fingerprint.clone());
    // Connect accepting whatever is presented now; show it; then pin it.
    let opts = ClientOptions {
        fingerprint: None,
        strict_pins: false,
        trust_on_connect: true,
        ..base
    };
    let portal = Portal::connect(&address, &opts).await?;
    let new = portal.fingerprint.clone();
    if old.as_ref().is_some_and(|o| *o != new)
        && !yes
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal()
    {
        eprintln!(
            "{address}\n  pinned:    {}\n  presented: {new}",
            old.clone().unwrap_or_default()
        );
        if !crate::slave_cmd::ask("trust the presented certificate from now on?") {
            return Err(Failure::new(4, "not_trusted", "the pin is unchanged"));
        }
    }
    known.set(Pin {
        address: address.clone(),
        fingerprint: new.clone(),
        node: Some(node.clone()).filter(|n| *n != address),
    })?;
    let out = json!({"address": address, "old": old, "new": new});
    emit(ctx.g.output, &out, || {
        format!(
            "{address}: pinned {new}{}",
            match &old {
                Some(o) if *o == new => " (unchanged)".to_string(),
                Some(o) => format!(" (was {o})"),
                None => " (first pin)".into(),
            }
        )
    })
}

/// `ssq restart --node SLAVE --via master`: a signed task queued on the master, delivered
/// on the slave's watch; with --wait, until the slave reports it done.
async fn restart_via_master(ctx: &Ctx, a: RestartArgs) -> Result<(), Failure> {
    let slave = a
        .node
        .clone()
        .ok_or_else(|| Failure::usage("--via master needs --node SLAVE (the slave's name)"))?;
    let master = ctx.master_ref(a.master.as_deref())?;
    let mut t = ctx.target(Some(&master)).await?;
    let mut view = t.queue_task(&slave, "restart").await?;
    if a.wait {
        let start = Instant::now();
        while matches!(view.state.as_str(), "queued" | "delivered") {
            if start.elapsed() >= ctx.g.timeout {
                return Err(Failure::new(
                    3,
                    "timeout",
                    format!(
                        "{slave} did not report the restart task within {} (state: {}); is it connected to the master? (ssq status)",
                        humantime::format_duration(ctx.g.timeout),
                        view.state
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            view = t.task(&view.task.id).await?;
        }
        match view.state.as_str() {
            "done" => {}
            "expired" => {
                return Err(Failure::new(
                    3,
                    "task_expired",
                    format!("the restart task for {slave} expired before the slave picked it up"),
                ))
            }
            _ => {
                return Err(Failure::new(
                    1,
                    "task_failed",
                    format!(
                        "{slave} refused the restart task: {}",
                        view.error.clone().unwrap_or_default()
                    ),
                ))
            }
        }
    }
    emit(ctx.g.output, &view, || {
        format!(
            "restart task {} for {slave}: {}",
            view.task.id,
            match view.state.as_str() {
                "done" => "done: the slave is restarting".to_string(),
                s => format!("{s} (follow it with ssq status)"),
            }
        )
    })
}
