//! `ssq verify`: the operator's verification checklist, run on every slave at once.

use crate::args::VerifyArgs;
use crate::output::Failure;
use crate::target::Ctx;

/// Run `ssq verify`.
///
/// # Errors
/// Exit 4 refused, 3 unreachable, 5 a check failed.
pub async fn run(_ctx: &Ctx, _a: VerifyArgs) -> Result<(), Failure> {
    Err(Failure::new(1, "not_built", "ssq verify is being built"))
}
