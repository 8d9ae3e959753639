//! `ssq policy ...`: the master's policy. Every command talks to the master
//! (`--master ADDR|NAME`, else the inventory's), except `policy apply --node SLAVE`, which
//! sets that slave's own (`sync.never`) sections. A file is parsed and validated here
//! before anything is sent, so a bad document never leaves the operator's machine.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use ssq::policy::{canonical_sha256, parse, validate, Policy};
use ssq::syncapi::{PolicyApplied, PolicyApply, PolicyTest, WaitResult};

use crate::args::{MasterOpt, PolicyApplyArgs, PolicyCmd};
use crate::output::{emit, kv, table, Failure};
use crate::target::{Ctx, Target};

/// The longest wait one `/api/v1/policy/wait` call may ask of the master.
const MAX_WAIT_SECS: u64 = 3600;

/// Lines of context around each change in `policy diff`.
const CONTEXT: usize = 3;

/// Connect to the master (`--master` > inventory), or with `--local` to the node itself.
async fn open_master(ctx: &Ctx, m: &MasterOpt) -> Result<Target, Failure> {
    if ctx.g.local {
        return ctx.target(None).await;
    }
    let master = ctx.master_ref(m.master.as_deref())?;
    ctx.target(Some(&master)).await
}

/// The first `n` characters (never splits a character).
pub fn prefix(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Read a policy file; exit 2 naming it when it cannot be read.
fn read_policy_file(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))
}

/// Parse and validate locally; exit 2 with the parser's or validator's text.
fn check_locally(path: &Path, text: &str) -> Result<Policy, Failure> {
    let p = parse(text).map_err(|e| bad_document(path, &e))?;
    // Nodes named in rules are the master's to judge (it knows its slaves): no list here.
    validate(&p, &[]).map_err(|e| bad_document(path, &e))?;
    Ok(p)
}

fn bad_document(path: &Path, e: &ssq::policy::PolicyError) -> Failure {
    let text = e.to_string();
    let message = if text.contains('\n') {
        format!("{} is not a valid policy:\n{text}", path.display())
    } else {
        format!("{}: {text}", path.display())
    };
    Failure::new(2, "invalid_policy", message)
}

/// The request `policy apply` sends.
pub fn apply_request(text: String, a: &PolicyApplyArgs) -> PolicyApply {
    PolicyApply {
        text,
        dry_run: a.dry_run,
        if_revision: a.if_revision,
        local: a.node.is_some(),
    }
}

/// The request `policy test` sends.
pub fn test_request(
    url: String,
    client: Option<std::net::IpAddr>,
    method: Option<String>,
    slave: Option<String>,
) -> PolicyTest {
    PolicyTest {
        url,
        client: client.map(|c| c.to_string()),
        method: method.map(|m| m.to_ascii_uppercase()),
        slave,
    }
}

/// Run `ssq policy ...`.
///
/// # Errors
/// Exit 2 for a bad file; 5 for a lost `--if-revision` race or a slave's rejection under
/// `--wait`; 3 at the timeout; 1 when `policy diff` finds a difference (with no message).
pub async fn run(ctx: &Ctx, cmd: PolicyCmd) -> Result<(), Failure> {
    match cmd {
        PolicyCmd::Apply(a) => apply(ctx, a).await,
        PolicyCmd::Show { revision, master } => {
            let mut t = open_master(ctx, &master).await?;
            let doc = t.policy(revision).await?;
            emit(ctx.g.output, &doc, || doc.text.clone())
        }
        PolicyCmd::Diff { file, master } => diff(ctx, &file, &master).await,
        PolicyCmd::History { master } => {
            let mut t = open_master(ctx, &master).await?;
            let h = t.policy_history().await?;
            emit(ctx.g.output, &h, || render_history(&h))
        }
        PolicyCmd::Rollback { revision, master } => {
            let mut t = open_master(ctx, &master).await?;
            let a = t.policy_rollback(revision).await?;
            warn(&a.warnings);
            emit(ctx.g.output, &a, || {
                format!("rollback to revision {revision}:\n{}", render_applied(&a))
            })
        }
        PolicyCmd::Test {
            url,
            client,
            method,
            slave,
            master,
        } => {
            let body = test_request(url, client, method, slave);
            let mut t = open_master(ctx, &master).await?;
            let r = t.policy_test(&body).await?;
            emit(ctx.g.output, &r, || {
                kv(vec![
                    ("action", r.action.clone()),
                    (
                        "rule",
                        r.rule.clone().unwrap_or_else(|| "(no rule matched)".into()),
                    ),
                    ("message", r.message.clone().unwrap_or_else(|| "-".into())),
                    ("revision", r.revision.to_string()),
                    ("node", r.node.clone()),
                ])
            })
        }
    }
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("ssq: warning: {w}");
    }
}

fn sections(s: &[String]) -> String {
    if s.is_empty() {
        "none".into()
    } else {
        s.join(", ")
    }
}

/// The human form of an apply's or rollback's answer.
pub fn render_applied(a: &PolicyApplied) -> String {
    if a.dry_run {
        if a.changed {
            format!(
                "dry run: the document is valid; nothing stored\nsha256 {}\nwould change sections: {}",
                a.sha256,
                sections(&a.changed_sections)
            )
        } else {
            format!(
                "dry run: the document is valid; revision {} already has this content",
                a.revision
            )
        }
    } else if !a.changed {
        format!(
            "unchanged: revision {} already has this content",
            a.revision
        )
    } else {
        format!(
            "revision {}\nsha256 {}\nchanged sections: {}",
            a.revision,
            a.sha256,
            sections(&a.changed_sections)
        )
    }
}

/// What `policy apply` prints with `-o json|yaml`: the apply's answer at the top level,
/// and with `--wait` the last wait answer under `wait`.
#[derive(Serialize)]
struct ApplyOut<'a> {
    #[serde(flatten)]
    applied: &'a PolicyApplied,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait: Option<&'a WaitResult>,
}

async fn apply(ctx: &Ctx, a: PolicyApplyArgs) -> Result<(), Failure> {
    let start = Instant::now();
    let text = read_policy_file(&a.file)?;
    check_locally(&a.file, &text)?;
    let body = apply_request(text, &a);
    let mut t = match &a.node {
        Some(slave) if !ctx.g.local => ctx.target(Some(slave)).await?,
        _ => open_master(ctx, &a.master).await?,
    };
    let applied = t.policy_apply(&body).await.map_err(|mut f| {
        if f.code == "revision_moved" {
            f.exit = 5;
        }
        f
    })?;
    warn(&applied.warnings);
    let human = || match &a.node {
        Some(n) => format!(
            "{n} (its own sync.never sections):\n{}",
            render_applied(&applied)
        ),
        None => render_applied(&applied),
    };
    if !a.wait {
        let out = ApplyOut {
            applied: &applied,
            wait: None,
        };
        return emit(ctx.g.output, &out, human);
    }
    // Table mode: say what was stored now, then wait.
    if ctx.g.output == crate::args::Format::Table {
        crate::output::print_out(&format!("{}\n", human()));
    }
    let deadline = start + ctx.g.timeout;
    let w = wait(&mut t, &applied, deadline, ctx.g.timeout).await?;
    let out = ApplyOut {
        applied: &applied,
        wait: Some(&w),
    };
    emit(ctx.g.output, &out, || {
        if w.slaves.is_empty() {
            "no slaves known: nothing to wait for".into()
        } else {
            format!(
                "every slave ({}) applied revision {}: {}",
                w.slaves.len(),
                w.revision,
                w.slaves
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    })
}

/// Where a wait stands after one answer.
#[derive(Debug, PartialEq, Eq)]
pub enum WaitVerdict {
    /// Every known slave applied the revision.
    Done,
    /// These slaves rejected it: (name, reason).
    Rejected(Vec<(String, String)>),
    /// These slaves have not applied it yet: (name, state).
    Pending(Vec<(String, String)>),
}

/// Judge one wait answer.
pub fn verdict(w: &WaitResult) -> WaitVerdict {
    if w.done {
        return WaitVerdict::Done;
    }
    let rejected: Vec<(String, String)> = w
        .slaves
        .iter()
        .filter(|s| s.state.eq_ignore_ascii_case("REJECTED"))
        .map(|s| {
            (
                s.name.clone(),
                s.error.clone().unwrap_or_else(|| "no reason given".into()),
            )
        })
        .collect();
    if !rejected.is_empty() {
        return WaitVerdict::Rejected(rejected);
    }
    WaitVerdict::Pending(
        w.slaves
            .iter()
            .filter(|s| !(s.state.eq_ignore_ascii_case("SYNCED") && s.revision >= w.revision))
            .map(|s| (s.name.clone(), s.state.clone()))
            .collect(),
    )
}

/// How long one wait call may ask the master to hold: a second under what is left (so
/// the master answers before the client gives up), at least 1, at most an hour.
pub fn wait_secs(remaining: Duration) -> u64 {
    remaining
        .as_secs()
        .saturating_sub(1)
        .clamp(1, MAX_WAIT_SECS)
}

fn names(v: &[(String, String)]) -> String {
    v.iter()
        .map(|(n, s)| format!("{n} ({s})"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn wait(
    t: &mut Target,
    applied: &PolicyApplied,
    deadline: Instant,
    limit: Duration,
) -> Result<WaitResult, Failure> {
    let rev = applied.revision;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_message(format!("waiting for the slaves to apply revision {rev}"));
        b.enable_steady_tick(Duration::from_millis(120));
        b
    });
    let finish = |bar: &Option<indicatif::ProgressBar>| {
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    };
    let mut pending: Option<Vec<(String, String)>> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let answer =
            tokio::time::timeout(remaining, t.policy_wait(rev, wait_secs(remaining))).await;
        let w = match answer {
            Err(_) => break,
            Ok(Err(mut f)) => {
                finish(&bar);
                f.message = format!(
                    "revision {rev} was stored, but waiting for the slaves failed: {}",
                    f.message
                );
                return Err(f);
            }
            Ok(Ok(w)) => w,
        };
        match verdict(&w) {
            WaitVerdict::Done => {
                finish(&bar);
                return Ok(w);
            }
            WaitVerdict::Rejected(r) => {
                finish(&bar);
                let detail = r
                    .iter()
                    .map(|(n, e)| format!("{n}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(Failure::new(
                    5,
                    "rejected",
                    format!(
                        "revision {rev} was stored, but a slave rejected it and keeps its old policy: {detail}"
                    ),
                ));
            }
            WaitVerdict::Pending(p) => {
                if let Some(b) = &bar {
                    b.set_message(format!(
                        "revision {rev}: waiting for {}",
                        if p.is_empty() {
                            "the master".to_string()
                        } else {
                            names(&p)
                        }
                    ));
                }
                pending = Some(p);
            }
        }
    }
    finish(&bar);
    let who = match &pending {
        None => "no answer from the master yet".to_string(),
        Some(p) if p.is_empty() => "the master has not confirmed every slave".to_string(),
        Some(p) => format!("not yet synced: {}", names(p)),
    };
    Err(Failure::new(
        3,
        "timeout",
        format!(
            "revision {rev} was stored, but not every slave applied it within {} (--timeout); {who}. Check them with: ssq status",
            humantime::format_duration(limit)
        ),
    ))
}

/// What `policy diff` prints with `-o json|yaml`.
#[derive(Serialize)]
struct DiffOut {
    same: bool,
    revision: u64,
    master_sha256: String,
    file_sha256: String,
    diff: String,
}

async fn diff(ctx: &Ctx, file: &Path, m: &MasterOpt) -> Result<(), Failure> {
    let text = read_policy_file(file)?;
    let p = check_locally(file, &text)?;
    let file_sha = canonical_sha256(&p);
    let mut t = open_master(ctx, m).await?;
    let doc = t.policy(None).await?;
    let same = file_sha == doc.info.sha256;
    let d = if same {
        String::new()
    } else {
        line_diff(
            &doc.text,
            &text,
            &format!("master (revision {})", doc.info.revision),
            &file.display().to_string(),
        )
    };
    let out = DiffOut {
        same,
        revision: doc.info.revision,
        master_sha256: doc.info.sha256.clone(),
        file_sha256: file_sha.clone(),
        diff: d.clone(),
    };
    emit(ctx.g.output, &out, || {
        if same {
            format!(
                "same content as revision {} (sha256 {})",
                doc.info.revision,
                prefix(&file_sha, 12)
            )
        } else if d.is_empty() {
            format!(
                "the texts are equal line for line, but the canonical sha256 differs: revision {} has {}, {} has {}",
                doc.info.revision,
                doc.info.sha256,
                file.display(),
                file_sha
            )
        } else {
            d.clone()
        }
    })?;
    if same {
        Ok(())
    } else {
        // Like diff(1): 1 means "differs"; the difference is the output, no message.
        Err(Failure::new(1, "differs", ""))
    }
}

fn render_history(h: &[ssq::syncapi::RevisionInfo]) -> String {
    let rows = h
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                r.time.clone(),
                prefix(&r.sha256, 12),
                r.operator.clone(),
                r.source.clone(),
                r.changed_sections.join(", "),
                r.rollback_of
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "revision",
            "time",
            "sha256",
            "operator",
            "source",
            "changed sections",
            "rollback of",
        ],
        rows,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Same,
    Del,
    Add,
}

/// The edit script from `a` to `b`: longest common subsequence of lines, after trimming
/// the common head and tail (a very large middle is shown as replaced whole).
fn diff_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(Tag, &'a str)> {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut ops: Vec<(Tag, &str)> = a[..head].iter().map(|l| (Tag::Same, *l)).collect();
    let (n, m) = (am.len(), bm.len());
    if n.saturating_mul(m) > 16_000_000 {
        ops.extend(am.iter().map(|l| (Tag::Del, *l)));
        ops.extend(bm.iter().map(|l| (Tag::Add, *l)));
    } else {
        // lcs[i][j]: LCS length of am[i..] and bm[j..].
        let w = m + 1;
        let mut lcs = vec![0u32; (n + 1) * w];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[i * w + j] = if am[i] == bm[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                ops.push((Tag::Same, am[i]));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                ops.push((Tag::Del, am[i]));
                i += 1;
            } else {
                ops.push((Tag::Add, bm[j]));
                j += 1;
            }
        }
    }
    ops.extend(a[a.len() - tail..].iter().map(|l| (Tag::Same, *l)));
    ops
}

/// A unified-style line diff from `a` to `b` (empty when the lines are equal).
pub fn line_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    let al: Vec<&str> = a.lines().collect();
    let bl: Vec<&str> = b.lines().collect();
    let ops = diff_ops(&al, &bl);
    // Hunks: ranges of ops around the changes, merged when their context touches.
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (k, _) in ops.iter().enumerate().filter(|(_, (t, _))| *t != Tag::Same) {
        let lo = k.saturating_sub(CONTEXT);
        let hi = (k + 1 + CONTEXT).min(ops.len());
        match ranges.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => ranges.push((lo, hi)),
        }
    }
    if ranges.is_empty() {
        return String::new();
    }
    // Line numbers before each op.
    let mut before = Vec::with_capacity(ops.len() + 1);
    let (mut oi, mut ni) = (0usize, 0usize);
    for (t, _) in &ops {
        before.push((oi, ni));
        match t {
            Tag::Same => {
                oi += 1;
                ni += 1;
            }
            Tag::Del => oi += 1,
            Tag::Add => ni += 1,
        }
    }
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    for (lo, hi) in ranges {
        let slice = &ops[lo..hi];
        let old_n = slice.iter().filter(|(t, _)| *t != Tag::Add).count();
        let new_n = slice.iter().filter(|(t, _)| *t != Tag::Del).count();
        let (o0, n0) = before[lo];
        let start = |at: usize, count: usize| if count == 0 { at } else { at + 1 };
        out.push_str(&format!(
            "@@ -{},{old_n} +{},{new_n} @@\n",
            start(o0, old_n),
            start(n0, new_n)
        ));
        for (t, l) in slice {
            let c = match t {
                Tag::Same => ' ',
                Tag::Del => '-',
                Tag::Add => '+',
            };
            out.push(c);
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssq::syncapi::SlaveInfo;
    use std::path::PathBuf;

    fn args() -> PolicyApplyArgs {
        PolicyApplyArgs {
            file: PathBuf::from("p.yaml"),
            dry_run: false,
            if_revision: None,
            wait: false,
            node: None,
            master: MasterOpt { master: None },
        }
    }

    #[test]
    fn apply_maps_flags_to_the_request() {
        let r = apply_request("x".into(), &args());
        assert_eq!(
            r,
            PolicyApply {
                text: "x".into(),
                dry_run: false,
                if_revision: None,
                local: false
            }
        );
        let mut a = args();
        a.dry_run = true;
        a.if_revision = Some(7);
        a.node = Some("slave-1".into());
        let r = apply_request("y".into(), &a);
        assert!(r.dry_run);
        assert_eq!(r.if_revision, Some(7));
        assert!(r.local, "--node sets the slave's own sections");
    }

    #[test]
    fn apply_args_parse_and_conflict() {
        use crate::args::{Cli, Cmd};
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "ssq",
            "policy",
            "apply",
            "p.yaml",
            "--if-revision",
            "3",
            "--wait",
            "--master",
            "m:8888",
        ])
        .unwrap();
        let Cmd::Policy(PolicyCmd::Apply(a)) = cli.command else {
            panic!("not policy apply")
        };
        assert_eq!(a.if_revision, Some(3));
        assert!(a.wait);
        assert_eq!(a.master.master.as_deref(), Some("m:8888"));
        for bad in [
            &["ssq", "policy", "apply", "p", "--wait", "--dry-run"][..],
            &["ssq", "policy", "apply", "p", "--wait", "--node", "s"][..],
            &[
                "ssq", "policy", "apply", "p", "--node", "s", "--master", "m",
            ][..],
        ] {
            assert!(
                Cli::try_parse_from(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn test_maps_flags_to_the_request() {
        let r = test_request(
            "https://example.com/".into(),
            Some("10.1.2.3".parse().unwrap()),
            Some("post".into()),
            Some("slave-2".into()),
        );
        assert_eq!(r.url, "https://example.com/");
        assert_eq!(r.client.as_deref(), Some("10.1.2.3"));
        assert_eq!(r.method.as_deref(), Some("POST"));
        assert_eq!(r.slave.as_deref(), Some("slave-2"));
        let r = test_request("example.com:443".into(), None, None, None);
        assert_eq!(
            r,
            PolicyTest {
                url: "example.com:443".into(),
                ..PolicyTest::default()
            }
        );
    }

    #[test]
    fn paths() {
        use crate::target::{policy_path, slave_path, wait_path};
        assert_eq!(policy_path(None), "/api/v1/policy");
        assert_eq!(policy_path(Some(4)), "/api/v1/policy?revision=4");
        assert_eq!(
            wait_path(9, 29),
            "/api/v1/policy/wait?revision=9&timeout=29"
        );
        assert_eq!(slave_path("slave-1"), "/api/v1/slaves/slave-1");
        assert_eq!(slave_path("a b/c"), "/api/v1/slaves/a%20b%2Fc");
        assert_eq!(slave_path("é"), "/api/v1/slaves/%C3%A9");
    }

    #[test]
    fn wait_secs_stays_under_the_deadline_and_the_cap() {
        assert_eq!(wait_secs(Duration::from_secs(30)), 29);
        assert_eq!(wait_secs(Duration::from_millis(500)), 1);
        assert_eq!(wait_secs(Duration::from_secs(100_000)), 3600);
    }

    fn slave(name: &str, state: &str, revision: u64, error: Option<&str>) -> SlaveInfo {
        SlaveInfo {
            name: name.into(),
            state: state.into(),
            revision,
            error: error.map(str::to_string),
            ..SlaveInfo::default()
        }
    }

    #[test]
    fn verdicts() {
        let mut w = WaitResult {
            revision: 5,
            done: true,
            slaves: vec![slave("a", "SYNCED", 5, None)],
        };
        assert_eq!(verdict(&w), WaitVerdict::Done);
        w.done = false;
        w.slaves = vec![
            slave("a", "SYNCED", 5, None),
            slave("b", "PENDING", 4, None),
            slave("c", "OFFLINE", 3, None),
        ];
        assert_eq!(
            verdict(&w),
            WaitVerdict::Pending(vec![
                ("b".into(), "PENDING".into()),
                ("c".into(), "OFFLINE".into())
            ])
        );
        w.slaves
            .push(slave("d", "REJECTED", 4, Some("rules: bad regex")));
        assert_eq!(
            verdict(&w),
            WaitVerdict::Rejected(vec![("d".into(), "rules: bad regex".into())])
        );
    }

    #[test]
    fn applied_rendering() {
        let mut a = PolicyApplied {
            revision: 3,
            sha256: "ab".repeat(32),
            changed_sections: vec!["rules".into(), "access".into()],
            changed: true,
            ..PolicyApplied::default()
        };
        let s = render_applied(&a);
        assert!(
            s.contains("revision 3") && s.contains("rules, access"),
            "{s}"
        );
        a.changed = false;
        assert_eq!(
            render_applied(&a),
            "unchanged: revision 3 already has this content"
        );
    }

    #[test]
    fn local_check_names_the_file_and_position() {
        let f = check_locally(Path::new("p.yaml"), "rules: [\n  {name: x,\n").unwrap_err();
        assert_eq!(f.exit, 2);
        assert!(f.message.starts_with("p.yaml"), "{}", f.message);
        assert!(f.message.contains("line"), "{}", f.message);
        assert!(check_locally(Path::new("p.yaml"), "# nothing\n").is_ok());
    }

    #[test]
    fn diff_of_equal_texts_is_empty() {
        assert_eq!(line_diff("a\nb\n", "a\nb\n", "x", "y"), "");
        assert_eq!(line_diff("", "", "x", "y"), "");
    }

    #[test]
    fn diff_shows_changes_with_context() {
        let a = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let b = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n11\n";
        let d = line_diff(a, b, "old", "new");
        assert_eq!(
            d,
            "--- old\n+++ new\n@@ -2,9 +2,10 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n 9\n 10\n+11\n"
        );
    }

    #[test]
    fn diff_splits_distant_changes_into_hunks() {
        let a: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let b: String = (1..=20)
            .filter(|i| *i != 19)
            .map(|i| {
                if i == 2 {
                    "two\n".into()
                } else {
                    format!("{i}\n")
                }
            })
            .collect();
        let d = line_diff(&a, &b, "old", "new");
        let hunks: Vec<&str> = d.lines().filter(|l| l.starts_with("@@")).collect();
        assert_eq!(hunks, ["@@ -1,5 +1,5 @@", "@@ -16,5 +16,4 @@"], "{d}");
        assert!(d.contains("-2\n+two\n") && d.contains("-19\n"), "{d}");
    }

    #[test]
    fn diff_from_and_to_empty() {
        assert_eq!(
            line_diff("", "a\nb\n", "o", "n"),
            "--- o\n+++ n\n@@ -0,0 +1,2 @@\n+a\n+b\n"
        );
        assert_eq!(
            line_diff("a\n", "", "o", "n"),
            "--- o\n+++ n\n@@ -1,1 +0,0 @@\n-a\n"
        );
    }

    #[test]
    fn prefix_never_splits_a_character() {
        assert_eq!(prefix("ééé", 2), "éé");
        assert_eq!(prefix("ab", 12), "ab");
    }
}
