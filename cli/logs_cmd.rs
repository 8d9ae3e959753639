//! `ssq logs`: a node's extended.log through its portal, filtered by text and category,
//! followed with `--follow`; the master's copy of a slave's events when the slave cannot
//! be reached.
//!
//! The node filters (`GET /api/v1/logs?n=&grep=&category=&after=`) and so does the CLI
//! again, for an older node that ignores the parameters. `--follow` polls with the
//! cursor of the previous answer every 500 ms and outlives a node that stops answering
//! (one notice on stderr, then it keeps asking). When the node is unreachable (exit 3),
//! the lines come from the master's report store (`GET /api/v1/reports/events?slave=`):
//! the slave's events as its shipper delivered them, the newest 10,000 searched.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use ssq::api::{LogLines, Status};
use ssq::client::with_default_port;
use ssq::extlog::{LogFilter, CATEGORIES};
use ssq::query::percent_encode;
use ssq::reportapi::Report;
use ssq::syncapi::SlaveInfo;

use crate::args::{Format, LogsArgs};
use crate::output::{emit, print_out, Failure};
use crate::target::{Ctx, Target};

/// How often `--follow` asks for new lines.
const POLL: Duration = Duration::from_millis(500);

/// Lines one `--follow` poll asks a node for (its cursor pages through the rest).
const FOLLOW_BATCH: usize = 10_000;

/// How many of a slave's newest events on the master are searched.
const MASTER_LIMIT: u32 = 10_000;

/// `-o json|yaml` answer without `--follow`.
#[derive(Serialize)]
struct LogsOut<'a> {
    /// The lines and, from a node, its cursor (0 for the master's copy).
    #[serde(flatten)]
    logs: LogLines,
    /// The node as given (`--node`, or the `--config` file with `--local`).
    node: &'a str,
    /// `node`, or `master` for the master's copy of the node's events.
    source: &'static str,
}

/// Where the lines come from.
enum Source {
    /// The node's own extended.log.
    Node(NodeSource),
    /// The master's copy of a slave's events.
    Master(MasterSource),
}

/// A node's extended.log, through its portal, admin socket or files.
struct NodeSource {
    /// `--node` (unused with `--local`).
    node: Option<String>,
    /// The connection; `None` after a failure, so the next poll reconnects.
    t: Option<Target>,
    /// Where the last answer ended (`None` before the first).
    cursor: Option<u64>,
}

/// The master's copy of a slave's events.
struct MasterSource {
    /// The master's name or address.
    master: String,
    /// The slave's node name, as the master stores it.
    slave: String,
    /// The connection; `None` after a failure.
    t: Option<Target>,
    /// The ingest time (Unix ms) of the newest event seen (`None` before the first).
    from_ms: Option<u64>,
    /// The lines already printed that were ingested at `from_ms` (asked again, inclusive).
    seen: HashSet<String>,
}

/// Run `ssq logs`.
///
/// # Errors
/// Exit 2 for an unknown category; as the call; exit 3 when the node cannot be reached
/// and no master has a copy of its events.
pub async fn run(ctx: &Ctx, a: LogsArgs) -> Result<(), Failure> {
    let filter = filter_of(&a)?;
    let label = a
        .node
        .clone()
        .filter(|_| !ctx.g.local)
        .or_else(|| ctx.g.config.as_ref().map(|c| c.display().to_string()))
        .unwrap_or_else(|| "the master".into());
    let mut src = Source::Node(NodeSource {
        node: a.node.clone(),
        t: None,
        cursor: None,
    });
    let lines = match src.fetch(ctx, &filter).await {
        Ok(lines) => lines,
        Err(f) if f.exit == 3 && !ctx.g.local && a.node.is_some() => {
            let (master, lines) = fallback(ctx, &a, &filter, &label, f).await?;
            src = Source::Master(master);
            lines
        }
        Err(f) => return Err(f),
    };
    if a.follow {
        src.check_follow(&lines, &label)?;
        print_lines(ctx.g.output, &lines);
        return follow(ctx, &mut src, &filter, &label).await;
    }
    let out = LogsOut {
        logs: LogLines {
            cursor: src.cursor(),
            lines,
        },
        node: &label,
        source: src.name(),
    };
    emit(ctx.g.output, &out, || out.logs.lines.join("\n"))
}

/// The filter of the flags; an unknown category is bad input.
fn filter_of(a: &LogsArgs) -> Result<LogFilter, Failure> {
    if let Some(c) = &a.category {
        if !CATEGORIES.iter().any(|k| k.eq_ignore_ascii_case(c)) {
            return Err(Failure::usage(format!(
                "--category {c}: not a category; use one of {}",
                CATEGORIES.join(", ")
            )));
        }
    }
    Ok(LogFilter {
        n: a.lines,
        grep: a.grep.clone().filter(|g| !g.is_empty()),
        category: a.category.clone(),
        after: None,
    })
}

impl Source {
    /// The first lines (the last `n` that match), then at each call the lines since.
    async fn fetch(&mut self, ctx: &Ctx, filter: &LogFilter) -> Result<Vec<String>, Failure> {
        match self {
            Source::Node(s) => s.fetch(ctx, filter).await,
            Source::Master(s) => s.fetch(ctx, filter).await,
        }
    }

    /// `node` or `master`.
    fn name(&self) -> &'static str {
        match self {
            Source::Node(_) => "node",
            Source::Master(_) => "master",
        }
    }

    /// The node's cursor (0 for the master's copy).
    fn cursor(&self) -> u64 {
        match self {
            Source::Node(s) => s.cursor.unwrap_or(0),
            Source::Master(_) => 0,
        }
    }

    /// Lines without a cursor come from an ssqd that cannot be followed.
    fn check_follow(&self, lines: &[String], label: &str) -> Result<(), Failure> {
        if matches!(self, Source::Node(_)) && self.cursor() == 0 && !lines.is_empty() {
            return Err(unsupported(label));
        }
        Ok(())
    }
}

/// An ssqd that answers without a cursor (older than `--follow`).
fn unsupported(label: &str) -> Failure {
    Failure::new(
        1,
        "unsupported",
        format!("{label} runs an ssqd too old for --follow (its answer has no cursor): upgrade it, or leave out --follow"),
    )
}

impl NodeSource {
    async fn fetch(&mut self, ctx: &Ctx, filter: &LogFilter) -> Result<Vec<String>, Failure> {
        let mut t = match self.t.take() {
            Some(t) => t,
            None => ctx.target(self.node.as_deref()).await?,
        };
        let ask = match self.cursor {
            Some(c) => LogFilter {
                n: FOLLOW_BATCH,
                after: Some(c),
                ..filter.clone()
            },
            None => filter.clone(),
        };
        let l = t.logs(&ask).await?;
        self.t = Some(t);
        let following = self.cursor.is_some();
        if following && l.cursor == 0 && !l.lines.is_empty() {
            return Err(unsupported(self.node.as_deref().unwrap_or("the node")));
        }
        self.cursor = Some(l.cursor);
        Ok(if following {
            l.lines.into_iter().filter(|x| filter.matches(x)).collect()
        } else {
            filter.keep_last(l.lines)
        })
    }
}

impl MasterSource {
    async fn fetch(&mut self, ctx: &Ctx, filter: &LogFilter) -> Result<Vec<String>, Failure> {
        let mut t = match self.t.take() {
            Some(t) => t,
            None => ctx.target(Some(&self.master)).await?,
        };
        let path = format!(
            "/api/v1/reports/events?from={}&slave={}&limit={MASTER_LIMIT}",
            self.from_ms.unwrap_or(0),
            percent_encode(&self.slave)
        );
        let report: Report = t.get_json(&path).await?;
        self.t = Some(t);
        let first = self.from_ms.is_none();
        let new = self.take_new(&report);
        Ok(if first {
            filter.keep_last(new)
        } else {
            new.into_iter().filter(|x| filter.matches(x)).collect()
        })
    }

    /// The rows not printed yet, remembering where the newest ends.
    fn take_new(&mut self, report: &Report) -> Vec<String> {
        let mut new = Vec::new();
        for row in &report.rows {
            let (Some(time), Some(line)) = (
                row.get("time_ms").and_then(serde_json::Value::as_u64),
                row.get("line").and_then(serde_json::Value::as_str),
            ) else {
                continue;
            };
            let from = self.from_ms.unwrap_or(0);
            if time < from || (time == from && self.seen.contains(line)) {
                continue;
            }
            if time > from || self.from_ms.is_none() {
                self.from_ms = Some(time);
                self.seen.clear();
            }
            self.seen.insert(line.to_string());
            new.push(line.to_string());
        }
        new
    }
}

/// The node cannot be reached: ask the master for its copy of the node's events.
async fn fallback(
    ctx: &Ctx,
    a: &LogsArgs,
    filter: &LogFilter,
    label: &str,
    unreachable: Failure,
) -> Result<(MasterSource, Vec<String>), Failure> {
    let Ok(master) = ctx.master_ref(a.master.as_deref()) else {
        return Err(Failure::new(
            unreachable.exit,
            &unreachable.code,
            format!(
                "{}\nno master to ask for its copy of {label}'s events: give --master HOST:PORT (or an inventory with a master) to see them",
                unreachable.message
            ),
        ));
    };
    let via_master = |e: Failure| master_failed(&unreachable, &master, label, e);
    let mut t = ctx.target(Some(&master)).await.map_err(via_master)?;
    let slave = slave_name(ctx, &mut t, label).await.map_err(via_master)?;
    let mut src = MasterSource {
        master: master.clone(),
        slave,
        t: Some(t),
        from_ms: None,
        seen: HashSet::new(),
    };
    let lines = src.fetch(ctx, filter).await.map_err(via_master)?;
    let text = format!(
        "{label} cannot be reached ({}); showing the master's copy of its events",
        reason(&unreachable)
    );
    notice(ctx.g.output, "master_copy", &text);
    Ok((src, lines))
}

/// Both the node and the master's copy failed: the node's failure, and why the master
/// could not stand in. Exit: the master's refusal or bad input (4, 2) first, else 3.
fn master_failed(unreachable: &Failure, master: &str, label: &str, e: Failure) -> Failure {
    let exit = if matches!(e.exit, 2 | 4) {
        e.exit
    } else {
        unreachable.exit
    };
    Failure::new(
        exit,
        &unreachable.code,
        format!(
            "{}\nthe master ({master}) could not show its copy of {label}'s events either: {}",
            unreachable.message, e.message
        ),
    )
}

/// The slave's node name: the inventory's, else the master's slave that `node` names.
async fn slave_name(ctx: &Ctx, master: &mut Target, node: &str) -> Result<String, Failure> {
    if let Some(e) = ctx.inventory.as_ref().and_then(|i| i.find(node)) {
        return Ok(e.name.clone());
    }
    let status: Status = master.status().await?;
    find_slave(node, &status.slaves.unwrap_or_default()).map(|s| s.name.clone())
}

/// The slave that `node` (a name or HOST:PORT) names: by name or reported portal; else
/// the one slave whose requests come from HOST, when its portal's port is unknown (it
/// reports it with its first policy ACK) or the same (a slave listening on 0.0.0.0).
fn find_slave<'a>(node: &str, slaves: &'a [SlaveInfo]) -> Result<&'a SlaveInfo, Failure> {
    let given = with_default_port(node);
    if let Some(s) = slaves
        .iter()
        .find(|s| s.name == node || s.portal.as_deref() == Some(given.as_str()))
    {
        return Ok(s);
    }
    let (host, port) = given.rsplit_once(':').unwrap_or((given.as_str(), ""));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loose: Vec<&SlaveInfo> = slaves
        .iter()
        .filter(|s| s.address == host)
        .filter(|s| {
            s.portal
                .as_deref()
                .and_then(|p| p.rsplit_once(':'))
                .is_none_or(|(_, p)| p == port)
        })
        .collect();
    match loose.as_slice() {
        [one] => Ok(one),
        [] => Err(Failure::new(
            2,
            "unknown_slave",
            format!("{node} is not a slave of this master (ssq status --master MASTER lists them)"),
        )),
        _ => Err(Failure::new(
            2,
            "ambiguous_slave",
            format!("several slaves of this master run on {host}: give --node NAME (ssq status --master MASTER lists them)"),
        )),
    }
}

/// Why the node could not be reached, without the advice that follows.
fn reason(f: &Failure) -> String {
    let head = f
        .message
        .split_once(": is ")
        .map_or(f.message.as_str(), |(h, _)| h);
    // "nothing answers on ADDR (REASON)": just REASON.
    match (head.strip_prefix("nothing answers on "), head.find(" (")) {
        (Some(_), Some(i)) if head.ends_with(')') => head[i + 2..head.len() - 1].to_string(),
        _ => head.to_string(),
    }
}

/// A notice for the operator on stderr (JSON with `-o json`).
fn notice(format: Format, code: &str, text: &str) {
    if format == Format::Json {
        eprintln!("{}", serde_json::json!({ "notice": code, "message": text }));
    } else {
        eprintln!("ssq: {text}");
    }
}

/// Print followed lines: as they are, one JSON object each, or YAML list items.
fn print_lines(format: Format, lines: &[String]) {
    let mut out = String::new();
    for l in lines {
        match format {
            Format::Json => out.push_str(&serde_json::json!({ "line": l }).to_string()),
            Format::Yaml => out.push_str(&format!("- {}", serde_json::Value::from(l.as_str()))),
            Format::Table | Format::Csv => out.push_str(l),
        }
        out.push('\n');
    }
    if !out.is_empty() {
        print_out(&out);
    }
}

/// Poll for new lines until interrupted (Ctrl-C ends with success).
async fn follow(
    ctx: &Ctx,
    src: &mut Source,
    filter: &LogFilter,
    label: &str,
) -> Result<(), Failure> {
    let interrupted = async {
        // Without a signal handler, Ctrl-C still ends the process the default way.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    let mut down = false;
    loop {
        tokio::select! {
            () = &mut interrupted => return Ok(()),
            r = poll_once(ctx, src, filter, label, &mut down) => r?,
        }
    }
}

/// Wait, ask once, print what is new; a node that does not answer is asked again.
async fn poll_once(
    ctx: &Ctx,
    src: &mut Source,
    filter: &LogFilter,
    label: &str,
    down: &mut bool,
) -> Result<(), Failure> {
    tokio::time::sleep(POLL).await;
    let from = match src {
        Source::Node(_) => label.to_string(),
        Source::Master(m) => format!("the master ({})", m.master),
    };
    match src.fetch(ctx, filter).await {
        Ok(lines) => {
            if std::mem::take(down) {
                notice(ctx.g.output, "answering", &format!("{from} answers again"));
            }
            print_lines(ctx.g.output, &lines);
            Ok(())
        }
        // Refused, bad input or too old: asking again will not help.
        Err(f) if matches!(f.exit, 2 | 4) || f.code == "unsupported" => Err(f),
        Err(f) => {
            if !std::mem::replace(down, true) {
                let text = format!(
                    "{from} stopped answering ({}); still trying (Ctrl-C to stop)",
                    reason(&f)
                );
                notice(ctx.g.output, "not_answering", &text);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slave(name: &str, portal: Option<&str>, address: &str) -> SlaveInfo {
        SlaveInfo {
            name: name.into(),
            state: "SYNCED".into(),
            revision: 1,
            sha256: String::new(),
            effective_sha256: String::new(),
            error: None,
            last_seen: String::new(),
            last_seen_secs: 0,
            address: address.into(),
            portal: portal.map(str::to_string),
            proxy: None,
            node_key: String::new(),
            version: String::new(),
            report: None,
        }
    }

    #[test]
    fn slaves_are_found_by_name_portal_or_address_and_port() {
        let find = |node, slaves: &[SlaveInfo]| find_slave(node, slaves).map(|s| s.name.clone());
        let s1 = slave("s1", Some("127.0.0.12:4444"), "127.0.0.12");
        let wild = slave("s2", Some("0.0.0.0:8888"), "10.0.0.11");
        let quiet = slave("s3", None, "10.0.0.13");
        let all = [s1, wild, quiet];
        assert_eq!(find("s1", &all).ok().as_deref(), Some("s1"));
        assert_eq!(find("127.0.0.12:4444", &all).ok().as_deref(), Some("s1"));
        assert_eq!(find("127.0.0.12:4445", &all).map_err(|f| f.exit), Err(2));
        assert_eq!(find("10.0.0.11", &all).ok().as_deref(), Some("s2"));
        assert_eq!(find("10.0.0.11:8888", &all).ok().as_deref(), Some("s2"));
        assert_eq!(find("10.0.0.13:9999", &all).ok().as_deref(), Some("s3"));
        assert_eq!(find("10.0.0.12:8888", &all).map_err(|f| f.exit), Err(2));
        let twins = [slave("a", None, "10.0.0.5"), slave("b", None, "10.0.0.5")];
        assert_eq!(
            find("10.0.0.5:1", &twins).map_err(|f| f.code),
            Err("ambiguous_slave".to_string())
        );
    }

    #[test]
    fn reasons_drop_the_address_and_the_advice() {
        let f = Failure::new(
            3,
            "unreachable",
            "nothing answers on 127.0.0.5:1 (Connection refused (os error 111)): is ssqd running there, and is the port open?",
        );
        assert_eq!(reason(&f), "Connection refused (os error 111)");
        let t = Failure::new(3, "timeout", "a:1 did not answer within 3 s: is the node overloaded, or a firewall dropping packets?");
        assert_eq!(reason(&t), "a:1 did not answer within 3 s");
    }

    #[test]
    fn the_masters_copy_is_read_once() {
        let mut m = MasterSource {
            master: "m".into(),
            slave: "s".into(),
            t: None,
            from_ms: None,
            seen: HashSet::new(),
        };
        let rows = |r: &[(u64, &str)]| Report {
            rows: r
                .iter()
                .map(|(t, l)| serde_json::json!({ "node": "s", "time_ms": t, "line": l }))
                .collect(),
            ..Report::default()
        };
        assert_eq!(m.take_new(&rows(&[(5, "a"), (7, "b")])), ["a", "b"]);
        // Asked again from 7 (inclusive): only what is new.
        assert_eq!(
            m.take_new(&rows(&[(7, "b"), (7, "c"), (9, "d")])),
            ["c", "d"]
        );
        assert_eq!(m.take_new(&rows(&[(9, "d")])), Vec::<String>::new());
        assert_eq!(m.from_ms, Some(9));
    }

    #[test]
    fn unknown_categories_are_refused_before_any_call() {
        let a = LogsArgs {
            node: Some("n".into()),
            lines: 5,
            follow: false,
            grep: Some(String::new()),
            category: Some("bogus".into()),
            master: None,
        };
        assert_eq!(filter_of(&a).map_err(|f| f.exit).err(), Some(2));
        let ok = filter_of(&LogsArgs {
            category: Some("Sync".into()),
            ..a
        })
        .map_err(|f| f.message)
        .unwrap();
        assert_eq!(ok.grep, None);
        assert_eq!(ok.n, 5);
    }
}
