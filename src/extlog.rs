//! `extended.log`: the node's events, one line each:
//! `TIME LEVEL NODE CATEGORY: MESSAGE`, e.g.
//! `2026-11-26T15:00:00Z INFO slave-1 sync: synchronized section: rules`.
//!
//! Categories: sync, portal, access, config, restart, report, proxy. Nothing secret is ever
//! written here: callers pass key ids and fingerprints, never keys. Appends are single
//! `write` calls on an O_APPEND file, so the daemon and a `ssq --local` edit can both log.
//!
//! Reading back ([`read`], for `GET /api/v1/logs` and `ssq logs`): the last N lines that
//! match a [`LogFilter`], or those written after a cursor (a byte offset just past a
//! complete line), never a half-written last line, scanning at most 64 MiB per read.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::query::{percent_decode, percent_encode};

/// Event severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Routine.
    Info,
    /// Needs attention.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        }
    }
}

/// The event log of one node.
pub struct ExtLog {
    /// The node's name, written on every line.
    node: String,
    /// The open file (append mode).
    file: Mutex<File>,
    /// Its path, for reading back.
    path: PathBuf,
    /// Also hands each line here (a slave ships its events to the master).
    tap: Mutex<Option<Tap>>,
}

/// A receiver of every event line.
pub type Tap = Box<dyn Fn(&str) + Send>;

impl std::fmt::Debug for ExtLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExtLog({})", self.path.display())
    }
}

impl ExtLog {
    /// Open (create) log_dir/extended.log.
    ///
    /// # Errors
    /// The OS error, when the directory or file cannot be created.
    pub fn open(log_dir: &Path, node: &str) -> std::io::Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let path = log_dir.join("extended.log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(ExtLog {
            node: node.to_string(),
            file: Mutex::new(file),
            path,
            tap: Mutex::new(None),
        })
    }

    /// Append one event. A failed write is reported on stderr, never fatal.
    pub fn log(&self, level: Level, category: &str, message: &str) {
        let line = format_line(level, &self.node, category, message);
        let result = match self.file.lock() {
            Ok(mut f) => f.write_all(line.as_bytes()),
            Err(_) => Ok(()),
        };
        if let Err(e) = result {
            eprintln!("ssqd: cannot write {}: {e}", self.path.display());
        }
        if let Ok(tap) = self.tap.lock() {
            if let Some(f) = tap.as_ref() {
                f(line.trim_end());
            }
        }
    }

    /// Hand every later event line to `tap` as well.
    pub fn set_tap(&self, tap: Tap) {
        if let Ok(mut t) = self.tap.lock() {
            *t = Some(tap);
        }
    }

    /// Shorthand for an info event.
    pub fn info(&self, category: &str, message: &str) {
        self.log(Level::Info, category, message);
    }

    /// Shorthand for a warning.
    pub fn warn(&self, category: &str, message: &str) {
        self.log(Level::Warn, category, message);
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One log line, newline included; newlines inside the message are escaped so an event
/// is always one line.
pub fn format_line(level: Level, node: &str, category: &str, message: &str) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let message = message.replace('\n', "\\n");
    format!("{now} {} {node} {category}: {message}\n", level.as_str())
}

/// The categories an event line may carry.
pub const CATEGORIES: &[&str] = &[
    "sync", "portal", "access", "config", "restart", "report", "proxy",
];

/// Lines a read returns when the query names no `n`.
pub const DEFAULT_LINES: usize = 100;

/// The most lines one read returns (a larger `n` is cut to this).
pub const MAX_LINES: usize = 100_000;

/// The most bytes one read scans: the end of the file, or from `after` onwards.
const WINDOW: u64 = 64 << 20;

/// What to read of extended.log (`GET /api/v1/logs?n=N&grep=TEXT&category=CAT&after=CURSOR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFilter {
    /// How many lines: the last `n` that match, or with `after` the first `n` written
    /// since (the cursor then stops after the n-th, so nothing is skipped). 0: none, only
    /// the cursor.
    pub n: usize,
    /// Only lines containing this text (plain substring, case-sensitive).
    pub grep: Option<String>,
    /// Only lines of this category (the field before the first `:`).
    pub category: Option<String>,
    /// Only complete lines that start at or after this byte offset (a cursor from an
    /// earlier read); a file now shorter than it was truncated or rotated: read from 0.
    pub after: Option<u64>,
}

impl Default for LogFilter {
    fn default() -> Self {
        LogFilter {
            n: DEFAULT_LINES,
            grep: None,
            category: None,
            after: None,
        }
    }
}

impl LogFilter {
    /// Whether `line` passes the text and category filters.
    pub fn matches(&self, line: &str) -> bool {
        let text = self.grep.as_deref().is_none_or(|g| line.contains(g));
        let cat = self
            .category
            .as_deref()
            .is_none_or(|c| category(line).is_some_and(|l| l.eq_ignore_ascii_case(c)));
        text && cat
    }

    /// The last `n` of `lines` that match (for an answer from a node that ignored the
    /// filter, or the master's copy of a slave's events).
    pub fn keep_last(&self, lines: impl IntoIterator<Item = String>) -> Vec<String> {
        let mut kept: Vec<String> = lines.into_iter().filter(|l| self.matches(l)).collect();
        let cut = kept.len().saturating_sub(self.n);
        kept.drain(..cut);
        kept
    }

    /// Parse a query string (values percent-decoded; `n` capped at [`MAX_LINES`]; unknown
    /// or malformed parameters ignored).
    pub fn from_query(query: Option<&str>) -> LogFilter {
        let mut f = LogFilter::default();
        for kv in query.unwrap_or("").split('&') {
            let (key, raw) = kv.split_once('=').unwrap_or((kv, ""));
            let value = percent_decode(raw);
            match key {
                "n" => {
                    if let Ok(n) = value.parse::<usize>() {
                        f.n = n.min(MAX_LINES);
                    }
                }
                "grep" => f.grep = Some(value).filter(|v| !v.is_empty()),
                "category" => f.category = Some(value).filter(|v| !v.is_empty()),
                "after" => f.after = value.parse().ok(),
                _ => {}
            }
        }
        f
    }

    /// The query string that [`LogFilter::from_query`] reads back (values
    /// percent-encoded).
    pub fn to_query(&self) -> String {
        let mut q = format!("n={}", self.n);
        if let Some(g) = &self.grep {
            q.push_str(&format!("&grep={}", percent_encode(g)));
        }
        if let Some(c) = &self.category {
            q.push_str(&format!("&category={}", percent_encode(c)));
        }
        if let Some(a) = self.after {
            q.push_str(&format!("&after={a}"));
        }
        q
    }
}

/// The category of an event line (`TIME LEVEL NODE CATEGORY: MESSAGE`), if it has one.
pub fn category(line: &str) -> Option<&str> {
    let rest = line.splitn(4, ' ').nth(3)?;
    let (cat, _) = rest.split_once(':')?;
    (!cat.is_empty() && !cat.contains(' ')).then_some(cat)
}

/// The byte range one read scans: `(start, end)`.
fn window(len: u64, after: Option<u64>, max: u64) -> (u64, u64) {
    match after {
        // Shorter than the cursor: truncated or rotated, so everything in it is new.
        Some(c) if c > len => (0, len.min(max)),
        Some(c) => (c, len.min(c.saturating_add(max))),
        None => (len.saturating_sub(max), len),
    }
}

/// Read the lines of a log file that `f` selects: `(lines oldest first, cursor)`. The
/// cursor is the byte offset just past the last complete line scanned: pass it back as
/// `after` for the lines written since. A last line without its newline (being written)
/// is left for the next read. An absent file has no lines and cursor 0. At most 64 MiB
/// are scanned: the end of the file, or from `after` on (the cursor then tells where
/// the next read goes on).
///
/// # Errors
/// The OS error when the file exists but cannot be read.
pub fn read(path: &Path, f: &LogFilter) -> std::io::Result<(Vec<String>, u64)> {
    read_window(path, f, WINDOW)
}

/// [`read`], scanning at most `max` bytes.
fn read_window(path: &Path, f: &LogFilter, max: u64) -> std::io::Result<(Vec<String>, u64)> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e),
    };
    let (start, end) = window(file.metadata()?.len(), f.after, max);
    // Begin one byte early and drop everything up to the first newline: that is only the
    // newline before `start` when `start` begins a line, else the rest of a cut line.
    let begin = start.saturating_sub(1);
    file.seek(SeekFrom::Start(begin))?;
    let mut reader = BufReader::new(file.take(end - begin));
    let mut lines = std::collections::VecDeque::new();
    let mut buf = Vec::new();
    let (mut pos, mut cursor, mut skip) = (begin, start, start > 0);
    loop {
        buf.clear();
        let got = reader.read_until(b'\n', &mut buf)?;
        if got == 0 || buf.last() != Some(&b'\n') {
            break;
        }
        pos += got as u64;
        cursor = pos;
        if std::mem::take(&mut skip) || f.n == 0 {
            continue;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        if !f.matches(line) {
            continue;
        }
        lines.push_back(line.to_string());
        if f.after.is_some() && lines.len() >= f.n {
            break;
        }
        if lines.len() > f.n {
            lines.pop_front();
        }
    }
    Ok((lines.into(), cursor))
}

/// The last `n` lines of a log file (an absent file has none).
///
/// # Errors
/// The OS error when the file exists but cannot be read.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let f = LogFilter {
        n,
        ..LogFilter::default()
    };
    Ok(read(path, &f)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_single_and_tail_returns_last() {
        let d = tempfile::tempdir().unwrap();
        let log = ExtLog::open(d.path(), "n1").unwrap();
        for i in 0..5 {
            log.info("config", &format!("event {i}\nsecond line"));
        }
        let t = tail(log.path(), 2).unwrap();
        assert_eq!(t.len(), 2);
        assert!(
            t[1].contains("INFO n1 config: event 4\\nsecond line"),
            "{t:?}"
        );
        assert!(t[0].contains("event 3"));
        assert!(tail(&d.path().join("none"), 3).unwrap().is_empty());
    }

    /// A log of `lines` events `(category, message)` written by ExtLog.
    fn log_with(d: &tempfile::TempDir, lines: &[(&str, &str)]) -> PathBuf {
        let log = ExtLog::open(d.path(), "n1").unwrap();
        for (cat, msg) in lines {
            log.info(cat, msg);
        }
        log.path().to_path_buf()
    }

    fn filter(n: usize, grep: Option<&str>, category: Option<&str>) -> LogFilter {
        LogFilter {
            n,
            grep: grep.map(str::to_string),
            category: category.map(str::to_string),
            after: None,
        }
    }

    fn messages(lines: &[String]) -> Vec<&str> {
        lines
            .iter()
            .map(|l| l.split_once(": ").map_or(l.as_str(), |(_, m)| m))
            .collect()
    }

    const EVENTS: &[(&str, &str)] = &[
        ("sync", "synchronizing with 10.0.0.1:8888"),
        ("config", "allow add 10.9.9.9 by op1"),
        ("sync", "synchronized section: rules"),
        ("portal", "refused config from 10.0.0.7"),
        ("config", "allow remove 10.9.9.9 by op1"),
        ("sync", "synchronized section: config"),
    ];

    #[test]
    fn grep_category_and_n_select_the_last_matching_lines() {
        let d = tempfile::tempdir().unwrap();
        let p = log_with(&d, EVENTS);
        let len = std::fs::metadata(&p).unwrap().len();

        let (l, cursor) = read(&p, &filter(100, None, Some("sync"))).unwrap();
        assert_eq!(
            messages(&l),
            [
                "synchronizing with 10.0.0.1:8888",
                "synchronized section: rules",
                "synchronized section: config"
            ]
        );
        assert_eq!(cursor, len);
        // The category is the field before the first ':', not any word of the message.
        let (l, _) = read(&p, &filter(100, None, Some("rules"))).unwrap();
        assert!(l.is_empty(), "{l:?}");
        let (l, _) = read(&p, &filter(100, None, Some("CONFIG"))).unwrap();
        assert_eq!(l.len(), 2, "{l:?}");

        let (l, _) = read(&p, &filter(100, Some("10.9.9.9"), None)).unwrap();
        assert_eq!(
            messages(&l),
            ["allow add 10.9.9.9 by op1", "allow remove 10.9.9.9 by op1"]
        );
        let (l, _) = read(&p, &filter(1, Some("section"), Some("sync"))).unwrap();
        assert_eq!(messages(&l), ["synchronized section: config"]);
        let (l, _) = read(&p, &filter(2, None, None)).unwrap();
        assert_eq!(
            messages(&l),
            [
                "allow remove 10.9.9.9 by op1",
                "synchronized section: config"
            ]
        );
        // n = 0: no lines, only where the file ends.
        assert_eq!(read(&p, &filter(0, None, None)).unwrap(), (vec![], len));
        // An absent file: nothing, cursor 0.
        let none = d.path().join("none.log");
        assert_eq!(read(&none, &filter(5, None, None)).unwrap(), (vec![], 0));
    }

    #[test]
    fn after_returns_only_complete_lines_written_since() {
        let d = tempfile::tempdir().unwrap();
        let p = log_with(&d, &EVENTS[..2]);
        let (_, c1) = read(&p, &filter(100, None, None)).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(format_line(Level::Warn, "n1", "sync", "third").as_bytes())
            .unwrap();
        // Half a line: not returned, and the cursor stays before it.
        f.write_all(b"2026-11-26T15:00:00Z INFO n1 config: four")
            .unwrap();
        let after = |c| LogFilter {
            after: Some(c),
            ..filter(100, None, None)
        };
        let (l, c2) = read(&p, &after(c1)).unwrap();
        assert_eq!(messages(&l), ["third"]);
        assert!(l[0].contains(" WARN n1 sync: third"), "{l:?}");
        let len = std::fs::metadata(&p).unwrap().len();
        assert!(c2 > c1 && c2 < len, "{c1} {c2} {len}");
        f.write_all(b"th\n").unwrap();
        let (l, c3) = read(&p, &after(c2)).unwrap();
        assert_eq!(l, ["2026-11-26T15:00:00Z INFO n1 config: fourth"]);
        assert_eq!(c3, std::fs::metadata(&p).unwrap().len());
        // Nothing new: nothing, same cursor; filters apply to the new lines too.
        assert_eq!(read(&p, &after(c3)).unwrap(), (vec![], c3));
        let sync_only = LogFilter {
            category: Some("sync".into()),
            ..after(c1)
        };
        assert_eq!(messages(&read(&p, &sync_only).unwrap().0), ["third"]);
    }

    #[test]
    fn after_a_truncation_reads_from_the_start() {
        let d = tempfile::tempdir().unwrap();
        let p = log_with(&d, EVENTS);
        let (_, c) = read(&p, &filter(100, None, None)).unwrap();
        std::fs::write(&p, format_line(Level::Info, "n1", "restart", "rotated")).unwrap();
        let f = LogFilter {
            after: Some(c),
            ..filter(100, None, None)
        };
        let (l, c2) = read(&p, &f).unwrap();
        assert_eq!(messages(&l), ["rotated"]);
        assert_eq!(c2, std::fs::metadata(&p).unwrap().len());
    }

    #[test]
    fn after_with_n_pages_through_without_skipping() {
        let d = tempfile::tempdir().unwrap();
        let p = log_with(&d, EVENTS);
        let mut f = LogFilter {
            after: Some(0),
            ..filter(2, None, None)
        };
        let mut seen = Vec::new();
        for _ in 0..10 {
            let (l, c) = read(&p, &f).unwrap();
            if l.is_empty() {
                break;
            }
            assert!(l.len() <= 2, "{l:?}");
            seen.extend(l);
            f.after = Some(c);
        }
        let all: Vec<&str> = EVENTS.iter().map(|(_, m)| *m).collect();
        assert_eq!(messages(&seen), all);
    }

    #[test]
    fn the_scan_is_bounded_and_starts_on_a_whole_line() {
        let d = tempfile::tempdir().unwrap();
        let p = log_with(&d, EVENTS);
        let text = std::fs::read_to_string(&p).unwrap();
        let last = text.lines().last().unwrap().len() as u64 + 1;
        // A window a few bytes longer than the last line: the cut line before it is
        // dropped, the last line is whole.
        let (l, c) = read_window(&p, &filter(100, None, None), last + 5).unwrap();
        assert_eq!(messages(&l), ["synchronized section: config"]);
        assert_eq!(c, text.len() as u64);
        // A window exactly one line: that line.
        let (l, _) = read_window(&p, &filter(100, None, None), last).unwrap();
        assert_eq!(l.len(), 1, "{l:?}");
        // With `after`, the window bounds what is scanned past it, and the cursor says
        // where the next read goes on.
        let f = LogFilter {
            after: Some(0),
            ..filter(100, None, None)
        };
        let first = text.lines().next().unwrap().len() as u64 + 1;
        let (l, c) = read_window(&p, &f, first + 3).unwrap();
        assert_eq!(messages(&l), ["synchronizing with 10.0.0.1:8888"]);
        assert_eq!(c, first);
    }

    #[test]
    fn queries_round_trip_with_any_text() {
        let f = LogFilter {
            n: 7,
            grep: Some("a b&c=d%25+é/?".into()),
            category: Some("sync".into()),
            after: Some(42),
        };
        let q = f.to_query();
        assert!(!q.contains(' ') && !q.contains('é'), "{q}");
        assert_eq!(q.matches('&').count(), 3, "{q}");
        assert_eq!(LogFilter::from_query(Some(&q)), f);
        assert_eq!(LogFilter::from_query(None), LogFilter::default());
        let g = LogFilter::from_query(Some("n=999999999&grep=x+y%2&after=zz&bogus"));
        assert_eq!(g.n, MAX_LINES);
        assert_eq!(g.grep.as_deref(), Some("x y%2"));
        assert_eq!(g.after, None);
    }

    #[test]
    fn categories_are_the_field_before_the_colon() {
        assert_eq!(
            category("2026-11-26T15:00:00Z INFO slave-1 sync: synchronized section: rules"),
            Some("sync")
        );
        assert_eq!(category("garbage"), None);
        assert_eq!(category("a b c d e: f"), None);
        let f = filter(3, Some("x"), None);
        let kept = f.keep_last(["x1", "y", "x2", "x3", "x4"].map(String::from));
        assert_eq!(kept, ["x2", "x3", "x4"]);
    }
}
