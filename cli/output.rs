//! What the CLI prints: results as a table, JSON or YAML on stdout; failures as one line
//! (or `{"error", "message"}` JSON with `-o json`) on stderr, with an exit code.

use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use serde::Serialize;
use ssq::client::ClientError;
use ssq::nodeconf::ConfError;

use crate::args::Format;

/// A failed command: exit code, stable code, message for the operator.
#[derive(Debug)]
pub struct Failure {
    /// Process exit code (DESIGN.md: 1 error, 2 bad input, 3 unreachable, 4 refused, 5 check).
    pub exit: i32,
    /// Stable machine-readable code.
    pub code: String,
    /// What happened and what to check next.
    pub message: String,
}

impl Failure {
    /// A failure with an explicit exit code.
    pub fn new(exit: i32, code: &str, message: impl Into<String>) -> Self {
        Failure {
            exit,
            code: code.into(),
            message: message.into(),
        }
    }

    /// Bad input (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(2, "usage", message)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure {
            exit: e.exit_code(),
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<ConfError> for Failure {
    fn from(e: ConfError) -> Self {
        let (status, code) = e.status_code();
        let exit = match status {
            400 => 2,
            401 | 403 => 4,
            _ => 1,
        };
        Failure::new(exit, code, e.to_string())
    }
}

impl From<ssq::startup::StartupError> for Failure {
    fn from(e: ssq::startup::StartupError) -> Self {
        Failure::from(ConfError::from(e))
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::new(1, "io", e.to_string())
    }
}

/// Print a failure on stderr.
pub fn print_failure(f: &Failure, format: Format) {
    if format == Format::Json {
        let v = serde_json::json!({"error": f.code, "message": f.message});
        eprintln!("{v}");
    } else {
        eprintln!("ssq: {}", f.message);
    }
}

/// Print a result: JSON or YAML of `value`, or the table/text that `human` gives.
///
/// # Errors
/// Only when serialization fails.
pub fn emit<T: Serialize>(
    format: Format,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), Failure> {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map_err(|e| Failure::new(1, "internal", e.to_string()))?,
        Format::Yaml => serde_saphyr::to_string(value)
            .map_err(|e| Failure::new(1, "internal", e.to_string()))?,
        Format::Table | Format::Csv => human(),
    };
    let text = text.trim_end();
    if !text.is_empty() {
        print_out(&format!("{text}\n"));
    }
    Ok(())
}

/// Write to stdout. A closed stdout (`ssq ... | head`) ends the program quietly with
/// success, as ripgrep does; SIGPIPE itself stays ignored (Rust's default), so a peer that
/// closes a socket mid-request is an error with a message, never a silent death.
pub fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("ssq: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// A table with a header row.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(header.iter().map(|h| h.to_string()));
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

/// A two-column key/value table.
pub fn kv(rows: Vec<(&str, String)>) -> String {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    t.to_string()
}
