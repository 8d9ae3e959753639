//! `ssq report KIND`: the master's reports over a time range, as a table, JSON, YAML or
//! CSV (cells a spreadsheet would read as a formula are escaped).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use ssq::reportapi::Report;

use crate::args::{Format, ReportArgs, ReportKind};
use crate::output::{emit, table, Failure};
use crate::target::Ctx;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A time given as RFC 3339 (`2026-11-26T10:00:00Z`, or without the zone) or Unix ms.
fn parse_time(s: &str) -> Result<u64, Failure> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|_| {
            Failure::usage(format!(
                "{s} is not a time: use e.g. 2026-11-26T10:00:00Z or Unix milliseconds"
            ))
        })?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| Failure::usage(format!("{s} is before 1970")))
}

/// The (from, to) range in Unix ms: `--from`/`--to`, else `--since` (default 24h).
pub fn range(a: &ReportArgs, now: u64) -> Result<(u64, u64), Failure> {
    let to = match &a.to {
        Some(t) => parse_time(t)?,
        None => now + 1,
    };
    let from = match (&a.from, &a.since) {
        (Some(f), _) => parse_time(f)?,
        (None, Some(s)) => to.saturating_sub(s.as_millis() as u64),
        (None, None) => to.saturating_sub(Duration::from_secs(86_400).as_millis() as u64),
    };
    if from >= to {
        return Err(Failure::usage("--from must be before --to"));
    }
    Ok((from, to))
}

fn kind_name(k: ReportKind) -> &'static str {
    match k {
        ReportKind::Summary => "summary",
        ReportKind::Domains => "domains",
        ReportKind::Clients => "clients",
        ReportKind::Blocked => "blocked",
        ReportKind::Nodes => "nodes",
        ReportKind::Timeline => "timeline",
        ReportKind::Events => "events",
        ReportKind::Stats => "stats",
        ReportKind::Requests => "requests",
        ReportKind::Open => "open",
    }
}

/// The columns of each report, in order.
fn columns(k: ReportKind) -> &'static [&'static str] {
    match k {
        ReportKind::Summary => &["node", "requests", "blocked", "bytes", "clients"],
        ReportKind::Domains => &["domain", "requests", "blocked", "bytes"],
        ReportKind::Clients => &["client", "requests", "blocked", "bytes"],
        ReportKind::Blocked => &["domain", "rule", "requests"],
        ReportKind::Nodes => &[
            "node",
            "requests",
            "last_record_ms",
            "acked",
            "lag_ms",
            "gaps",
            "epochs",
            "duplicate_name",
        ],
        ReportKind::Timeline => &["bucket_start_ms", "requests", "blocked", "bytes"],
        ReportKind::Events => &["node", "time_ms", "line"],
        ReportKind::Stats => &[
            "node",
            "time_ms",
            "requests",
            "blocked",
            "active_connections",
            "bytes",
            "spool_depth",
        ],
        ReportKind::Requests => &[
            "node", "time_ms", "client", "method", "url", "status", "action", "rule",
        ],
        ReportKind::Open => &[],
    }
}

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// One CSV cell: quoted when needed; a leading `= + - @` (or tab, CR) is prefixed with
/// `'` so a spreadsheet shows it as text instead of running it.
pub fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) && s.parse::<f64>().is_err() {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(cols: &[&str], rows: &[Value]) -> String {
    let mut out = cols.join(",");
    out.push('\n');
    for r in rows {
        let line: Vec<String> = cols.iter().map(|c| csv_cell(&cell(r.get(*c)))).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// Run `ssq report KIND`.
///
/// # Errors
/// As the call; exit 2 for a bad range.
pub async fn run(ctx: &Ctx, a: ReportArgs) -> Result<(), Failure> {
    let (from, to) = range(&a, now_ms())?;
    let master = ctx.master_ref(a.master.as_deref())?;
    let mut t = ctx.target(Some(&master)).await?;
    if a.kind == ReportKind::Open {
        let v: Value = t.post_json("/api/v1/reports/session").await?;
        let url = format!(
            "https://{}{}",
            t.address().unwrap_or_default(),
            v.get("path").and_then(Value::as_str).unwrap_or("/reports")
        );
        let out = serde_json::json!({ "url": url, "expires_in_secs": 60 });
        return emit(ctx.g.output, &out, || {
            format!(
                "{url}\n(open it within 60 s; it works once and signs this browser in for 8 hours)"
            )
        });
    }
    let mut path = format!(
        "/api/v1/reports/{}?from={from}&to={to}&limit={}&bucket={}",
        kind_name(a.kind),
        a.limit,
        if a.hourly { "hour" } else { "minute" }
    );
    if let Some(s) = &a.slave {
        path.push_str(&format!("&slave={s}"));
    }
    if let Some(h) = &a.host {
        path.push_str(&format!("&host={h}"));
    }
    let report: Report = t.get_json(&path).await?;
    let cols = columns(a.kind);
    if ctx.g.output == Format::Csv {
        crate::output::print_out(&csv(cols, &report.rows));
        return Ok(());
    }
    emit(ctx.g.output, &report, || {
        let rows = report
            .rows
            .iter()
            .map(|r| cols.iter().map(|c| cell(r.get(*c))).collect())
            .collect();
        let mut out = format!(
            "{} to {}\n",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(report.from)),
            humantime::format_rfc3339_seconds(
                UNIX_EPOCH + Duration::from_millis(report.to.min(now_ms() + 1))
            )
        );
        if !report.totals.is_empty() {
            let totals: Vec<String> = ["requests", "blocked", "bytes", "clients"]
                .iter()
                .filter_map(|k| report.totals.get(*k).map(|v| format!("{k}: {v}")))
                .collect();
            out.push_str(&totals.join("   "));
            out.push('\n');
        }
        out.push_str(&table(cols, rows));
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_escapes_formulas_and_quotes() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("+1+2"), "'+1+2");
        assert_eq!(csv_cell("-5"), "-5");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("plain"), "plain");
    }

    #[test]
    fn ranges() {
        let a = ReportArgs {
            kind: ReportKind::Summary,
            since: Some(Duration::from_secs(3600)),
            from: None,
            to: None,
            slave: None,
            limit: 20,
            hourly: false,
            host: None,
            master: None,
        };
        assert_eq!(
            range(&a, 10_000_000).unwrap(),
            (10_000_001 - 3_600_000, 10_000_001)
        );
        let b = ReportArgs {
            from: Some("2026-11-26T10:00:00Z".into()),
            to: Some("2026-11-26T09:00:00Z".into()),
            ..a
        };
        assert!(range(&b, 0).is_err());
    }
}
