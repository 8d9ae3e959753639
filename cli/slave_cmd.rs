//! `ssq slave set-master` and `ssq slave show`: a slave's startup params.

use std::io::{BufRead, IsTerminal, Write};

use serde_json::json;
use ssq::startup::{MasterAddr, StartupFile};
use ssq::yamlpos::set_top_level_scalar;

use crate::args::SlaveCmd;
use crate::node_cmd::wait_new_boot;
use crate::output::{emit, kv, Failure};
use crate::target::Ctx;

/// Ask a yes/no question on the terminal (default no).
pub fn ask(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim(), "y" | "Y" | "yes" | "YES")
}

/// Run `ssq slave ...`.
///
/// # Errors
/// Exit 2 for a bad master address (nothing written); others as the calls.
pub async fn run(ctx: &Ctx, cmd: SlaveCmd) -> Result<(), Failure> {
    match cmd {
        SlaveCmd::SetMaster {
            master,
            node,
            restart,
            no_restart,
            wait,
            yes,
        } => {
            let new: MasterAddr = master.parse().map_err(|e: ssq::startup::StartupError| {
                Failure::usage(format!("{e} (e.g. 10.0.0.1:8888)"))
            })?;
            if node.is_none() && !ctx.g.local {
                return Err(Failure::usage(
                    "which slave? give --node NAME|HOST:PORT (or --local --config FILE on the slave itself)",
                ));
            }
            let mut t = ctx.target(node.as_deref()).await?;
            let doc = t.startup().await?;
            let path = std::path::Path::new(&doc.path);
            let file = StartupFile::parse(&doc.text, path)?;
            let old = file.master.clone();
            let old_parsed = old.as_deref().and_then(|o| o.parse::<MasterAddr>().ok());
            // Pointing a slave at its master again (even the same one) clears the pins it
            // keeps of the master: how an operator accepts a rebuilt master.
            let pins = t.reset_master_pins().await?;
            if pins.existed && ctx.g.output == crate::args::Format::Table {
                eprintln!("ssq: cleared the slave's pins of its previous master (certificate, node key, store id)");
            }
            if old_parsed.as_ref() == Some(&new) {
                let out = json!({"node": node, "old": old, "new": new.to_string(), "changed": false, "restarted": false, "pins_cleared": pins.existed});
                return emit(ctx.g.output, &out, || {
                    format!("the master is already {new}: {} left untouched", doc.path)
                });
            }
            let text = set_top_level_scalar(&doc.text, "master", Some(&new.to_string()));
            let r = t.put_startup(text, false).await?;
            let do_restart = if restart {
                true
            } else if no_restart || !r.restart_needed || t.is_offline() {
                false
            } else if yes {
                true
            } else if std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
                ask("restart the slave now so it uses the new master?")
            } else {
                false
            };
            let mut restarted = None;
            if do_restart {
                let rr = t.restart().await?;
                if wait {
                    drop(t);
                    let target = if ctx.g.local { None } else { node.as_deref() };
                    let s = wait_new_boot(ctx, target, &rr.old_boot_id).await?;
                    restarted = Some(s.boot_id);
                } else {
                    restarted = Some(String::new());
                }
            }
            let out = json!({
                "node": node,
                "old": old,
                "new": new.to_string(),
                "changed": r.changed,
                "backup": r.backup,
                "restart_needed": r.restart_needed && restarted.is_none(),
                "restarted": restarted.is_some(),
                "boot_id": restarted.clone().filter(|b| !b.is_empty()),
                "pins_cleared": pins.existed,
            });
            emit(ctx.g.output, &out, || {
                let mut s = format!(
                    "master: {} -> {new}\nbackup of the old startup.yaml: {}",
                    old.clone().unwrap_or_else(|| "(none)".into()),
                    r.backup.clone().unwrap_or_default()
                );
                match &restarted {
                    Some(b) if !b.is_empty() => s.push_str(&format!("\nrestarted (boot {b})")),
                    Some(_) => s.push_str("\nrestart requested"),
                    None if r.restart_needed => s.push_str(&format!(
                        "\nnot restarted: the slave keeps its old master until it restarts (ssq restart{})",
                        node.as_ref().map(|n| format!(" --node {n}")).unwrap_or_default()
                    )),
                    None => {}
                }
                s
            })
        }
        SlaveCmd::Show { node } => {
            if node.is_none() && !ctx.g.local {
                return Err(Failure::usage("which slave? give --node NAME|HOST:PORT"));
            }
            let mut t = ctx.target(node.as_deref()).await?;
            let doc = t.startup().await?;
            let path = std::path::Path::new(&doc.path);
            let file = StartupFile::parse(&doc.text, path)?;
            let mut s = file.validate(&doc.text, path)?;
            // Without `node:` the name defaults to the node's host name: ask the node,
            // not this machine (on files, this machine is the node).
            if !t.is_offline() {
                s.node = t.status().await?.node;
            }
            let out = json!({"path": doc.path, "startup": s, "text": doc.text});
            emit(ctx.g.output, &out, || {
                kv(vec![
                    ("file", doc.path.clone()),
                    ("node", s.node.clone()),
                    ("role", format!("{:?}", s.role).to_lowercase()),
                    (
                        "master",
                        s.master
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ),
                    ("portal.listen", s.portal_listen.to_string()),
                    ("proxy.listen", s.proxy_listen.to_string()),
                    (
                        "source_address",
                        s.source_address
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ),
                    (
                        "activation_key_file",
                        s.activation_key_file.display().to_string(),
                    ),
                    ("data_dir", s.data_dir.display().to_string()),
                    ("log_dir", s.log_dir.display().to_string()),
                    ("sync.never", s.sync_never.join(", ")),
                ])
            })
        }
    }
}
