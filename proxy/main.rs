//! `ssqd`: the node daemon. Parses its one flag, loads the node and serves it; the
//! work lives in the modules below and in the `ssq` library.

mod accesslog;
mod active;
mod apierror;
mod connlimit;
mod daemon;
mod diagnose;
mod forward;
mod framing;
mod handover;
mod idle;
mod master;
mod node;
mod pages;
mod portal;
mod reports;
mod reports_page;
mod shipper;
mod slave;
mod sync_api;
mod tracked;
mod upbody;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The ssq node daemon: forward proxy, Configuration Portal, policy sync and reports.
#[derive(Debug, Parser)]
#[command(name = "ssqd", version, about)]
struct Args {
    /// The node's startup params.
    #[arg(long, env = "SSQ_CONFIG", default_value = "/etc/ssq/startup.yaml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    // Descriptors handed over by a restart are taken before any thread starts.
    let inherited = handover::Inherited::from_env();
    let args = Args::parse();
    // An absolute path keeps every relative path of the node stable across restarts.
    let config = std::fs::canonicalize(&args.config).unwrap_or(args.config);
    // SSQD_WORKER_THREADS: the runtime's worker threads (default: one per core).
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("SSQD_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ssqd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async {
        // Signal handlers before anything else, so a SIGTERM during start-up (or during
        // a restart's re-exec) is handled, not fatal.
        let signals = match daemon::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("ssqd: cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        };
        let prepared = match daemon::prepare(&config, inherited) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("ssqd: {}", chain(&e));
                return ExitCode::from(2);
            }
        };
        match daemon::serve(prepared, signals).await {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            Err(e) => {
                eprintln!("ssqd: {}", chain(&e));
                ExitCode::from(1)
            }
        }
    })
}

/// The error and its causes on one line, skipping a cause its parent already quotes.
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
