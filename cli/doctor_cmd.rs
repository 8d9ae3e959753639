//! `ssq doctor --node NODE`: the troubleshooting steps for one node, run for real.

use crate::args::DoctorArgs;
use crate::output::Failure;
use crate::target::Ctx;

/// Run `ssq doctor`.
///
/// # Errors
/// The failing step's exit code.
pub async fn run(_ctx: &Ctx, _a: DoctorArgs) -> Result<(), Failure> {
    Err(Failure::new(1, "not_built", "ssq doctor is being built"))
}
