//! `ssq --local --config FILE operator add|list|remove`: the operator keys a node obeys
//! (data_dir/operators). Only on the node itself: the portal never changes them.

use ssq::api::OperatorEntry;

use crate::args::OperatorCmd;
use crate::output::{emit, table, Failure};
use crate::target::Ctx;

fn render(ops: &[OperatorEntry]) -> String {
    table(
        &["fingerprint", "comment"],
        ops.iter()
            .map(|o| vec![o.fingerprint.clone(), o.comment.clone()])
            .collect(),
    )
}

/// A `.pub` file's line, or the argument itself.
fn key_line(arg: &str) -> Result<String, Failure> {
    let p = std::path::Path::new(arg);
    if p.is_file() {
        let text = std::fs::read_to_string(p)?;
        return text
            .lines()
            .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(|l| l.trim().to_string())
            .ok_or_else(|| Failure::usage(format!("{arg} holds no key line")));
    }
    Ok(arg.to_string())
}

/// Run `ssq operator ...`.
///
/// # Errors
/// Exit 2 without `--local`, or for a bad key line.
pub async fn run(ctx: &Ctx, cmd: OperatorCmd) -> Result<(), Failure> {
    if !ctx.g.local {
        return Err(Failure::usage(
            "operator keys are changed on the node itself: ssq --local --config /etc/ssq/startup.yaml operator ...",
        ));
    }
    let mut t = ctx.target(None).await?;
    match cmd {
        OperatorCmd::List => {
            let ops = t.operators().await?;
            emit(ctx.g.output, &ops, || render(&ops))
        }
        OperatorCmd::Add { key } => {
            let change = t.operator_change(key_line(&key)?, true).await?;
            emit(ctx.g.output, &change, || {
                format!(
                    "{}\n{}",
                    change.outcome.replace('_', " "),
                    render(&change.operators)
                )
            })
        }
        OperatorCmd::Remove { key } => {
            let change = t.operator_change(key_line(&key)?, false).await?;
            emit(ctx.g.output, &change, || {
                format!(
                    "{}\n{}",
                    change.outcome.replace('_', " "),
                    render(&change.operators)
                )
            })
        }
    }
}
