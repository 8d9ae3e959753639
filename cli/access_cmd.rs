//! `ssq master allow|auth`: the allow list of the master (default) or, with `--node`,
//! of that node. Input is checked before any network call; the node's one write path
//! applies the lock-out guard.

use ssq::access::{parse_access_list, AccessList, AddressSpec, AllowEntry};
use ssq::api::AccessChange;

use crate::args::{AllowCmd, AuthCmd, ListTarget, MasterCmd};
use crate::output::{emit, table, Failure};
use crate::target::{Ctx, Target};

async fn open(ctx: &Ctx, t: &ListTarget) -> Result<Target, Failure> {
    if ctx.g.local {
        return ctx.target(None).await;
    }
    match &t.node {
        Some(n) => ctx.target(Some(n)).await,
        None => {
            let m = ctx.master_ref(t.master.as_deref())?;
            ctx.target(Some(&m)).await
        }
    }
}

/// Run `ssq master ...`.
///
/// # Errors
/// Exit 2 for bad input or a change the lock-out guard refuses; others as the call.
pub async fn run(ctx: &Ctx, cmd: MasterCmd) -> Result<(), Failure> {
    match cmd {
        MasterCmd::Allow(AllowCmd::Add {
            address,
            access,
            comment,
            force,
            target,
        }) => {
            let spec: AddressSpec = address
                .parse()
                .map_err(|e: ssq::access::AccessError| Failure::usage(e.to_string()))?;
            let access = parse_access_list(&access).map_err(|e| Failure::usage(e.to_string()))?;
            let entry = AllowEntry {
                address: spec,
                access,
                comment,
                enabled: true,
            };
            let mut t = open(ctx, &target).await?;
            let change = t.allow_add(entry, force).await?;
            print_change(ctx, &change, &address)
        }
        MasterCmd::Allow(AllowCmd::Remove {
            address,
            force,
            target,
        }) => {
            address
                .parse::<AddressSpec>()
                .map_err(|e| Failure::usage(e.to_string()))?;
            let mut t = open(ctx, &target).await?;
            let change = t.allow_remove(address.clone(), force).await?;
            print_change(ctx, &change, &address)
        }
        MasterCmd::Allow(AllowCmd::List { target }) => {
            let mut t = open(ctx, &target).await?;
            let list = t.access().await?;
            emit(ctx.g.output, &list, || render(&list))
        }
        MasterCmd::Auth(AuthCmd::Enable { force, target }) => {
            let mut t = open(ctx, &target).await?;
            let change = t.set_auth(true, force).await?;
            print_change(ctx, &change, "authentication")
        }
        MasterCmd::Auth(AuthCmd::Disable { force, target }) => {
            let mut t = open(ctx, &target).await?;
            let change = t.set_auth(false, force).await?;
            print_change(ctx, &change, "authentication")
        }
    }
}

fn print_change(ctx: &Ctx, change: &AccessChange, what: &str) -> Result<(), Failure> {
    for w in &change.warnings {
        eprintln!("ssq: warning: {w}");
    }
    emit(ctx.g.output, change, || {
        let head = match change.outcome.as_str() {
            "added" => format!("added {what}"),
            "updated" => format!("updated the entry for {what}"),
            "removed" => format!("removed {what}"),
            "already_present" => format!("{what} is already in the allow list: nothing changed"),
            "not_found" => format!("{what} is not in the allow list: nothing changed"),
            "enabled" => "authentication enabled: the allow list is enforced".into(),
            "disabled" => "authentication disabled: any address may call the portal (signatures still required)".into(),
            "unchanged" => "nothing changed".into(),
            other => other.to_string(),
        };
        format!("{head}\n{}", render(&change.access))
    })
}

fn render(list: &AccessList) -> String {
    let rows = list
        .allow
        .iter()
        .enumerate()
        .map(|(i, e)| {
            vec![
                (i + 1).to_string(),
                e.address.to_string(),
                e.access
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                if e.enabled { "yes" } else { "no" }.to_string(),
                e.comment.clone().unwrap_or_default(),
            ]
        })
        .collect();
    format!(
        "authentication: {}\n{}",
        if list.authentication { "on" } else { "off" },
        table(&["#", "address", "access", "enabled", "comment"], rows)
    )
}
