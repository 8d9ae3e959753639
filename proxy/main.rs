//! `ssqd`: the node daemon. Parses its one flag, loads the node and serves it; the
//! work lives in the modules below and in the `ssq` library.

mod accesslog;
mod active;
mod apierror;
mod chunked;
mod clientconn;
mod connlimit;
mod daemon;
mod diagnose;
mod dnscache;
mod forward;
mod handover;
mod headerpool;
mod iptext;
mod master;
mod memory;
mod node;
mod pages;
mod portal;
mod rawhead;
mod reports;
mod reports_page;
mod reqbody;
mod reqhead;
mod resphead;
mod shipper;
mod slave;
mod splice;
mod stall;
mod sync_api;
mod textpool;
mod throttle;
mod tracked;
mod upbody;
mod upload;
mod upstream;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

/// What `ssqd --help` prints.
const USAGE: &str =
    "The ssq node daemon: forward proxy, Configuration Portal, policy sync and reports.

Usage: ssqd [--config FILE]

Options:
      --config <FILE>  The node's startup params [env: SSQ_CONFIG=] [default: /etc/ssq/startup.yaml]
  -h, --help           Print help
  -V, --version        Print version
";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Args {
    /// Run the node with this startup params file.
    Run(PathBuf),
    /// Print this text and exit 0.
    Print(String),
}

/// Parse ssqd's one flag (and `--help`, `--version`); Err is the usage error. A
/// hand-written parser: the daemon's resident size is mostly its own code, and a
/// command-line library would add to it for one flag.
fn parse_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    env: Option<std::ffi::OsString>,
) -> Result<Args, String> {
    let mut config: Option<PathBuf> = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let Some(s) = a.to_str() else {
            return Err(format!("unexpected argument {a:?}"));
        };
        match s {
            "-h" | "--help" => return Ok(Args::Print(USAGE.to_string())),
            "-V" | "--version" => {
                return Ok(Args::Print(format!("ssqd {}\n", env!("CARGO_PKG_VERSION"))))
            }
            "--config" => match it.next() {
                Some(v) if !v.is_empty() => config = Some(PathBuf::from(v)),
                _ => return Err("--config needs a value: --config FILE".into()),
            },
            _ => match s.strip_prefix("--config=") {
                Some(v) if !v.is_empty() => config = Some(PathBuf::from(v)),
                _ => return Err(format!("unexpected argument '{s}'")),
            },
        }
    }
    Ok(Args::Run(config.unwrap_or_else(|| {
        env.filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/ssq/startup.yaml"))
    })))
}

/// Raise the soft limit on open descriptors to the hard limit; the limit now in force.
fn raise_nofile() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

fn main() -> ExitCode {
    // Descriptors handed over by a restart are taken before any thread starts.
    let inherited = handover::Inherited::from_env();
    let config = match parse_args(std::env::args_os().skip(1), std::env::var_os("SSQ_CONFIG")) {
        Ok(Args::Run(config)) => config,
        Ok(Args::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // An absolute path keeps every relative path of the node stable across restarts.
    let config = std::fs::canonicalize(&config).unwrap_or(config);
    // Every client connection, upstream connection and tunnel pipe is a descriptor: the
    // soft limit goes up to the hard one, and a sixteenth of it may be tunnel pipes.
    splice::set_budget(raise_nofile() / 16);
    // The control runtime (portal, sync, shipper, accept): on a node that runs the
    // proxy, one thread (client connections have their own, `workers`); on the master,
    // which serves every slave's sync and reports, SSQD_WORKER_THREADS or one per core.
    let proxy_node = !matches!(
        ssq::startup::load(&config).map(|(s, _)| s.role),
        Ok(ssq::startup::Role::Master)
    );
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(if proxy_node { 1 } else { workers::count() });
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

/// `pow` from a pure-Rust port of musl's libm. The runtime's scheduler calls `pow`
/// (its poll-time average); with this definition the daemon does not load the system's
/// libm for that one function, which would add about 0.5 MiB to its resident size.
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: Option<&str>) -> Result<Args, String> {
        parse_args(args.iter().map(Into::into), env.map(Into::into))
    }

    #[test]
    fn the_one_flag_and_its_defaults() {
        let run = |p: &str| Ok(Args::Run(PathBuf::from(p)));
        assert_eq!(parse(&[], None), run("/etc/ssq/startup.yaml"));
        assert_eq!(parse(&[], Some("/x.yaml")), run("/x.yaml"));
        assert_eq!(
            parse(&["--config", "a.yaml"], Some("/x.yaml")),
            run("a.yaml")
        );
        assert_eq!(parse(&["--config=b.yaml"], None), run("b.yaml"));
        assert!(matches!(parse(&["--help"], None), Ok(Args::Print(t)) if t.contains("--config")));
        assert!(matches!(parse(&["-V"], None), Ok(Args::Print(t)) if t.starts_with("ssqd ")));
        assert!(parse(&["--config"], None).is_err());
        assert!(parse(&["--confi", "x"], None)
            .unwrap_err()
            .contains("--confi"));
        assert!(parse(&["serve"], None).is_err());
    }
}
