//! `extended.log`: the node's events, one line each:
//! `TIME LEVEL NODE CATEGORY: MESSAGE`, e.g.
//! `2026-11-26T15:00:00Z INFO slave-1 sync: synchronized section: rules`.
//!
//! Categories: sync, portal, access, config, restart, report. Nothing secret is ever
//! written here: callers pass key ids and fingerprints, never keys. Appends are single
//! `write` calls on an O_APPEND file, so the daemon and a `ssq --local` edit can both log.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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

/// The last `n` lines of a log file (an absent file has none).
///
/// # Errors
/// The OS error when the file exists but cannot be read.
pub fn tail(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    // Read at most the last 4 MiB: enough for any sensible n, bounded for a huge log.
    let len = f.metadata()?.len();
    let start = len.saturating_sub(4 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut reader = BufReader::new(f);
    let mut buf = Vec::new();
    let mut first = start > 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        if first {
            // A partial line where the window starts.
            first = false;
            continue;
        }
        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
        lines.push_back(line);
        if lines.len() > n {
            lines.pop_front();
        }
    }
    Ok(lines.into_iter().collect())
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
}
