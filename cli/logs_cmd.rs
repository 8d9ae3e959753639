//! `ssq logs`: a node's extended.log through its portal, filtered by text and category,
//! followed with `--follow`; the master's copy of a slave's events when the slave cannot
//! be reached.

use crate::args::LogsArgs;
use crate::output::{emit, Failure};
use crate::target::Ctx;

/// Run `ssq logs`.
///
/// # Errors
/// As the call.
pub async fn run(ctx: &Ctx, a: LogsArgs) -> Result<(), Failure> {
    let mut t = ctx.target(a.node.as_deref()).await?;
    let l = t.logs(a.lines).await?;
    emit(ctx.g.output, &l, || l.lines.join("\n"))
}
