//! The command line, as clap definitions: the one source of the help text, the man
//! pages (`man/`) and the README's command list.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// Complete, stable JSON for scripts.
    Json,
    /// The same as YAML.
    Yaml,
    /// Comma-separated values (`ssq report` only).
    Csv,
}

/// ssq: drive a cluster of ssq web gateways (one master, many slaves).
#[derive(Debug, Parser)]
#[command(
    name = "ssq",
    version,
    about,
    long_about = None,
    propagate_version = true,
    args_override_self = true
)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Cmd,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        value_enum,
        default_value = "table",
        global = true
    )]
    pub output: Format,
    /// The inventory (ssq.yaml): master, slaves, key files.
    #[arg(long, env = "SSQ_INVENTORY", global = true)]
    pub inventory: Option<PathBuf>,
    /// The cluster's activation key file.
    #[arg(long, env = "SSQ_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// The operator key that signs requests (default SSQ_HOME/operator.key).
    #[arg(long, env = "SSQ_OPERATOR_KEY", global = true)]
    pub operator_key: Option<PathBuf>,
    /// Source address for outgoing connections (what the node's allow list sees).
    #[arg(long, env = "SSQ_BIND", global = true)]
    pub bind: Option<IpAddr>,
    /// Accept certificates signed by this CA (PEM) instead of pinning.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// The node certificate's expected fingerprint (sha256:HEX).
    #[arg(long, global = true)]
    pub fingerprint: Option<String>,
    /// Refuse (exit 4) a node whose certificate is not pinned yet.
    #[arg(long, global = true)]
    pub strict_pins: bool,
    /// Overall time limit, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: std::time::Duration,
    /// Run on this node itself: through its admin socket, or on its files when ssqd is
    /// not running. Needs --config.
    #[arg(long, global = true, requires = "config")]
    pub local: bool,
    /// The node's startup.yaml, with --local.
    #[arg(long, global = true, env = "SSQ_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create keys: the cluster's activation key, or an operator key pair.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Point a slave at its master, and show a slave's startup params.
    #[command(subcommand)]
    Slave(SlaveCmd),
    /// The master's access restriction (allow list) and slave membership.
    #[command(subcommand)]
    Master(MasterSub),
    /// The policy on the master: apply, show, diff, history, rollback, test.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Reports from the master's store: every request every slave served.
    Report(ReportArgs),
    /// Restart a node in place (same PID and ports, new boot id), after a backup.
    Restart(RestartArgs),
    /// Show a node's status (default: the master).
    Status(NodeArg),
    /// Show (or follow) a node's extended.log; the master's copy when a slave is away.
    Logs(LogsArgs),
    /// Check the whole cluster: every slave against the master (exit 0 all pass).
    Verify(VerifyArgs),
    /// Run the troubleshooting steps for one node and name the one that fails.
    Doctor(DoctorArgs),
    /// Certificates of nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// The operator keys a node obeys (with --local, on the node itself).
    #[command(subcommand)]
    Operator(OperatorCmd),
    /// Write the man pages into a directory.
    #[command(hide = true)]
    GenerateMan {
        /// Target directory.
        dir: PathBuf,
    },
}

/// `ssq key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Create a new key. Never overwrites, never prints the key.
    New {
        /// Where to write it (default ./activation.key, or SSQ_HOME/operator.key with --operator).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Create an operator key pair (FILE and FILE.pub) instead of an activation key.
        #[arg(long)]
        operator: bool,
    },
}

/// Which node a command talks to.
#[derive(Debug, Args)]
pub struct NodeArg {
    /// Node name (from the inventory) or HOST:PORT of its portal.
    #[arg(long)]
    pub node: Option<String>,
    /// The master (name or HOST:PORT; default: the inventory's).
    #[arg(long)]
    pub master: Option<String>,
}

/// `ssq slave ...`.
#[derive(Debug, Subcommand)]
pub enum SlaveCmd {
    /// Set a slave's master in its startup params (backup first); restart to apply.
    SetMaster {
        /// The master's HOST[:PORT] (port 8888 by default).
        master: String,
        /// The slave (name or HOST:PORT of its portal).
        #[arg(long)]
        node: Option<String>,
        /// Restart the slave afterwards without asking.
        #[arg(long, conflicts_with = "no_restart")]
        restart: bool,
        /// Do not restart the slave.
        #[arg(long)]
        no_restart: bool,
        /// With a restart: wait until the slave answers again.
        #[arg(long)]
        wait: bool,
        /// Answer yes to the restart question.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Show a slave's startup params.
    Show {
        /// The slave (name or HOST:PORT of its portal).
        #[arg(long)]
        node: Option<String>,
    },
}

/// `ssq master ...`: the allow-list commands and `forget`.
#[derive(Debug, Subcommand)]
pub enum MasterSub {
    /// allow, auth.
    #[command(flatten)]
    Access(MasterCmd),
    /// Remove a slave from the master's list and clear its node-key pin.
    Forget {
        /// The slave's node name.
        slave: String,
        /// The master.
        #[command(flatten)]
        master: MasterOpt,
    },
}

/// The master a command talks to.
#[derive(Debug, Args)]
pub struct MasterOpt {
    /// The master (name or HOST:PORT; default: the inventory's).
    #[arg(long)]
    pub master: Option<String>,
}

/// `ssq policy ...` (talks to the master).
#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file (here, then on the master) and store it as a new revision.
    Apply(PolicyApplyArgs),
    /// Print the current policy (or an older revision).
    Show {
        /// The revision to show (default: the current one).
        #[arg(long)]
        revision: Option<u64>,
        /// The master.
        #[command(flatten)]
        master: MasterOpt,
    },
    /// Compare a policy file with the master's current policy (exit 0 same, 1 differs, 2+ error).
    Diff {
        /// The policy file.
        file: PathBuf,
        /// The master.
        #[command(flatten)]
        master: MasterOpt,
    },
    /// List the stored revisions.
    History {
        /// The master.
        #[command(flatten)]
        master: MasterOpt,
    },
    /// Republish an old revision's content as a new revision.
    Rollback {
        /// The revision whose content to republish.
        revision: u64,
        /// The master.
        #[command(flatten)]
        master: MasterOpt,
    },
    /// Show what the current policy decides for a request, and which rule decides it.
    Test {
        /// The URL (or HOST:PORT for CONNECT).
        url: String,
        /// The client's address (default 10.0.0.1).
        #[arg(long)]
        client: Option<IpAddr>,
        /// The request method (default GET).
        #[arg(long)]
        method: Option<String>,
        /// Decide as this slave would (rules naming nodes).
        #[arg(long)]
        slave: Option<String>,
        /// The master.
        #[command(flatten)]
        master: MasterOpt,
    },
}

/// `ssq policy apply`.
#[derive(Debug, Args)]
pub struct PolicyApplyArgs {
    /// The policy file (YAML).
    pub file: PathBuf,
    /// Validate only (here and on the master); store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse (exit 5) unless the master's current revision is N.
    #[arg(long, value_name = "N")]
    pub if_revision: Option<u64>,
    /// Return when every known slave has applied the revision (exit 5 on a rejection,
    /// 3 at --timeout).
    #[arg(long, conflicts_with_all = ["dry_run", "node"])]
    pub wait: bool,
    /// Send to this slave instead: sets only the sections in its sync.never.
    #[arg(long, value_name = "SLAVE", conflicts_with = "master")]
    pub node: Option<String>,
    /// The master.
    #[command(flatten)]
    pub master: MasterOpt,
}

/// `ssq master allow|auth ...`.
#[derive(Debug, Subcommand)]
pub enum MasterCmd {
    /// Edit or list the allow list.
    #[command(subcommand)]
    Allow(AllowCmd),
    /// Turn the allow list on or off.
    #[command(subcommand)]
    Auth(AuthCmd),
}

/// Where an allow-list command applies.
#[derive(Debug, Args)]
pub struct ListTarget {
    /// The master (name or HOST:PORT; default: the inventory's).
    #[arg(long)]
    pub master: Option<String>,
    /// Edit this node's own list instead of the master's.
    #[arg(long)]
    pub node: Option<String>,
}

/// `ssq master allow ...`.
#[derive(Debug, Subcommand)]
pub enum AllowCmd {
    /// Add an entry: IP, CIDR or range A-B.
    Add {
        /// IP (10.0.0.5), CIDR (10.0.0.0/24) or range (10.0.0.5-10.0.0.9).
        address: String,
        /// What it grants: sync, config, or both (sync,config).
        #[arg(long, default_value = "sync")]
        access: String,
        /// A note kept with the entry.
        #[arg(long)]
        comment: Option<String>,
        /// Skip the lock-out guard.
        #[arg(long)]
        force: bool,
        /// Target.
        #[command(flatten)]
        target: ListTarget,
    },
    /// Remove the entry for an address.
    Remove {
        /// The entry's address as listed.
        address: String,
        /// Skip the lock-out guard.
        #[arg(long)]
        force: bool,
        /// Target.
        #[command(flatten)]
        target: ListTarget,
    },
    /// List the entries.
    List {
        /// Target.
        #[command(flatten)]
        target: ListTarget,
    },
}

/// `ssq master auth ...`.
#[derive(Debug, Subcommand)]
pub enum AuthCmd {
    /// Enforce the allow list.
    Enable {
        /// Skip the lock-out guard.
        #[arg(long)]
        force: bool,
        /// Target.
        #[command(flatten)]
        target: ListTarget,
    },
    /// Stop enforcing the allow list (signatures are still required).
    Disable {
        /// Skip the lock-out guard.
        #[arg(long)]
        force: bool,
        /// Target.
        #[command(flatten)]
        target: ListTarget,
    },
}

/// The reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportKind {
    /// Requests, blocked, bytes, clients, per node.
    Summary,
    /// Top domains.
    Domains,
    /// Top clients.
    Clients,
    /// Top blocked domains and rules.
    Blocked,
    /// Per node: requests, last record, lag, gaps.
    Nodes,
    /// Per minute (or hour).
    Timeline,
    /// The slaves' extended.log events, as the master keeps them.
    Events,
    /// Each slave's latest statistics (requests, blocked, connections, bytes, spool).
    Stats,
    /// Single requests, newest last (--host for one site's).
    Requests,
    /// Print a link that opens the HTML report page in a browser (single use, 60 s).
    Open,
}

/// `ssq report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Which report.
    #[arg(value_enum)]
    pub kind: ReportKind,
    /// The last this long, e.g. 1h, 30m, 7d (default 24h).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "from")]
    pub since: Option<std::time::Duration>,
    /// Start: RFC 3339 time (2026-11-26T10:00:00Z) or Unix ms.
    #[arg(long)]
    pub from: Option<String>,
    /// End: RFC 3339 time or Unix ms (default now).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this slave's records.
    #[arg(long)]
    pub slave: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Timeline per hour instead of per minute.
    #[arg(long)]
    pub hourly: bool,
    /// With `requests`: only this host's.
    #[arg(long)]
    pub host: Option<String>,
    /// The master (name or HOST:PORT; default: the inventory's).
    #[arg(long)]
    pub master: Option<String>,
}

/// `ssq restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The node (name or HOST:PORT of its portal; with --via master, its name).
    #[arg(long)]
    pub node: Option<String>,
    /// Wait until the node answers again with a new boot id (with --via master: until
    /// the slave reports the task done).
    #[arg(long)]
    pub wait: bool,
    /// How to reach the node: its portal, or a task queued on the master (for a slave
    /// the operator cannot reach directly).
    #[arg(long, value_enum, default_value = "portal")]
    pub via: Via,
    /// The master, with --via master (default: the inventory's).
    #[arg(long)]
    pub master: Option<String>,
}

/// How a command reaches a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// The node's portal (HTTPS).
    Portal,
    /// A task queued on the master, delivered on the slave's watch.
    Master,
}

/// `ssq logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The node (name or HOST:PORT of its portal).
    #[arg(long)]
    pub node: Option<String>,
    /// How many lines (the last N that match).
    #[arg(short = 'n', long = "lines", default_value_t = 100)]
    pub lines: usize,
    /// Keep printing new lines as they are written, until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines containing this text.
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Only this category: sync, portal, access, config, restart, report, proxy.
    #[arg(long)]
    pub category: Option<String>,
    /// The master, for its copy of a slave's events when the slave cannot be reached
    /// (default: the inventory's).
    #[arg(long)]
    pub master: Option<String>,
}

/// `ssq verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The master (name or HOST:PORT; default: the inventory's).
    #[arg(long)]
    pub master: Option<String>,
    /// Only these slaves (repeat the flag); default: --all.
    #[arg(long = "slave", value_name = "NAME", conflicts_with = "all")]
    pub slaves: Vec<String>,
    /// Every slave in the inventory and every slave the master knows (the default).
    #[arg(long)]
    pub all: bool,
    /// Publish a probe revision and measure how long until every slave applies it.
    #[arg(long)]
    pub probe_policy: bool,
    /// The longest --probe-policy may take before it fails.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub probe_policy_limit: std::time::Duration,
    /// Send a request for http://ssq.probe/NONCE through each slave's proxy and wait for
    /// its record in the master's reports.
    #[arg(long)]
    pub probe_traffic: bool,
    /// The largest report lag that passes (records a slave wrote but the master does not
    /// hold yet).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub max_report_lag: std::time::Duration,
    /// The largest clock difference to the master that passes.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub max_clock_skew: std::time::Duration,
}

/// `ssq doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The node (name or HOST:PORT of its portal).
    #[arg(long)]
    pub node: Option<String>,
}

/// `ssq node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Accept a node's current certificate (after it changed), showing both fingerprints.
    Trust {
        /// Node name (from the inventory) or HOST:PORT.
        node: String,
        /// Do not ask (on a terminal, ssq asks before replacing a pin).
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// `ssq operator ...` (with --local).
#[derive(Debug, Subcommand)]
pub enum OperatorCmd {
    /// Add an operator key: a .pub file or its line.
    Add {
        /// FILE.pub, or the line itself.
        key: String,
    },
    /// List the operator keys.
    List,
    /// Remove an operator key by fingerprint (SHA256:...) or .pub file.
    Remove {
        /// Fingerprint, FILE.pub, or the line.
        key: String,
    },
}
