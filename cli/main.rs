//! `ssq`: the operator's CLI. Parses the command line, runs the command, prints its
//! failure once and maps it to DESIGN.md's exit codes (0 ok, 1 error, 2 bad input,
//! 3 unreachable or timeout, 4 refused, 5 a check failed). A closed stdout
//! (`ssq ... | head`) is not an error.

mod access_cmd;
mod args;
mod doctor_cmd;
mod key_cmd;
mod logs_cmd;
mod man_cmd;
mod master_cmd;
mod node_cmd;
mod operator_cmd;
mod output;
mod policy_cmd;
mod report_cmd;
mod slave_cmd;
mod target;
mod verify_cmd;
mod verify_report;
mod verify_slave;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::args::{Cli, Cmd, MasterSub};
use crate::output::{print_failure, Failure};
use crate::target::Ctx;

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // `ssq verify` covers a whole cluster: its default limit is 60 s, not 30 s.
    if matches!(cli.command, Cmd::Verify(_))
        && matches.value_source("timeout") == Some(ValueSource::DefaultValue)
    {
        cli.global.timeout = std::time::Duration::from_secs(60);
    }
    let format = cli.global.output;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssq: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // A failure with no message is an answer, already printed (`policy diff`: 1
            // means "differs").
            if !f.message.is_empty() {
                print_failure(&f, format);
            }
            ExitCode::from(u8::try_from(f.exit).unwrap_or(1))
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    if cli.global.output == crate::args::Format::Csv && !matches!(cli.command, Cmd::Report(_)) {
        return Err(Failure::usage(
            "-o csv is for ssq report; use -o json or -o yaml here",
        ));
    }
    let ctx = Ctx::new(cli.global)?;
    let deadline = ctx.g.timeout;
    // `ssq logs --follow` runs until interrupted: no overall limit.
    let endless = matches!(&cli.command, Cmd::Logs(l) if l.follow);
    let work = async {
        match cli.command {
            Cmd::Key(k) => key_cmd::run(&ctx, k),
            Cmd::Slave(s) => slave_cmd::run(&ctx, s).await,
            Cmd::Master(MasterSub::Access(m)) => access_cmd::run(&ctx, m).await,
            Cmd::Master(MasterSub::Forget { slave, master }) => {
                master_cmd::forget(&ctx, &slave, &master).await
            }
            Cmd::Policy(p) => policy_cmd::run(&ctx, p).await,
            Cmd::Report(r) => report_cmd::run(&ctx, r).await,
            Cmd::Restart(r) => node_cmd::restart(&ctx, r).await,
            Cmd::Status(n) => node_cmd::status(&ctx, n).await,
            Cmd::Logs(l) => logs_cmd::run(&ctx, l).await,
            Cmd::Verify(v) => verify_cmd::run(&ctx, v).await,
            Cmd::Doctor(d) => doctor_cmd::run(&ctx, d).await,
            Cmd::Node(n) => node_cmd::node(&ctx, n).await,
            Cmd::Operator(o) => operator_cmd::run(&ctx, o).await,
            Cmd::GenerateMan { dir } => man_cmd::run(&dir),
        }
    };
    if endless {
        return work.await;
    }
    // One overall limit, a little above the per-call limit so a call's own timeout
    // (with its clearer message) fires first.
    match tokio::time::timeout(
        deadline.saturating_add(std::time::Duration::from_secs(2)),
        work,
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Failure::new(
            3,
            "timeout",
            format!(
                "gave up after {} (--timeout)",
                humantime::format_duration(deadline)
            ),
        )),
    }
}
