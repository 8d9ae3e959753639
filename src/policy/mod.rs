//! The policy document: what the proxy enforces and the master syncs to its slaves.
//!
//! One YAML document in sections (`access`, `categories`, `rules`, `connect`, `limits`,
//! and `probe`, a marker that changes nothing but the hash),
//! [`parse`]d into the typed [`Policy`], [`validate`]d into a [`Validated`] policy (with
//! warnings), hashed over a canonical form ([`canonical_sha256`], [`section_hashes`]) and
//! compiled per node into a [`Matcher`] whose pure [`Matcher::decide`] answers for one
//! request.
//!
//! # Adding a section
//!
//! The model is open to new sections: add a field to [`Policy`] with
//! `#[serde(default, skip_serializing_if = "...")]` (an `Option` or an empty collection),
//! its name to [`SECTIONS`], its checks to `validate.rs` and, if the proxy needs it, its
//! compiled form to `matcher.rs`. Because absent sections are not serialized, documents
//! that do not use the new section keep their sha256, and [`section_hashes`] picks the
//! section up by itself.

mod canonical;
mod cidr;
mod decision;
mod limits;
mod matcher;
mod model;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_doc;

use std::fmt;

pub use canonical::{canonical_json, canonical_sha256, section_hashes};
pub use cidr::Cidr;
pub use decision::{Decision, Request, Verdict};
pub use limits::EffectiveLimits;
pub use matcher::Matcher;
pub use model::{AccessEntry, AccessSection, Action, ConnectSection, Limits, Policy, Rule};
pub use validate::{validate, Validated};

/// The names of the sections a policy document may hold, in document order.
pub const SECTIONS: &[&str] = &[
    "access",
    "categories",
    "rules",
    "connect",
    "limits",
    "probe",
];

/// One validation problem, naming where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The section (`rules`, `access`, ...).
    pub section: String,
    /// The item inside the section: `rule "name"`, `rules[3]`, `allow[0]`, `category "x"`.
    pub item: Option<String>,
    /// The field of that item (`domains`, `url_regex`, ...).
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.section)?;
        if let Some(item) = &self.item {
            write!(f, ": {item}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a policy document was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The text is not YAML, or not the shape of a policy.
    #[error("{}{message}", position(*.line, *.column))]
    Parse {
        /// 1-based line, if known.
        line: Option<usize>,
        /// 1-based column, if known.
        column: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The document parsed but breaks the rules; every problem found, one per line.
    #[error("{}", list(.0))]
    Invalid(Vec<Issue>),
}

/// `line L, column C: ` or as much of it as is known.
fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: "),
        (Some(l), None) => format!("line {l}: "),
        _ => String::new(),
    }
}

/// The issues, one per line.
fn list(issues: &[Issue]) -> String {
    let lines: Vec<String> = issues.iter().map(Issue::to_string).collect();
    lines.join("\n")
}

/// Parses a policy document. An empty document (or one holding only comments) is the
/// empty policy. Errors name the line and column.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let blank = text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
    if blank {
        return Ok(Policy::default());
    }
    serde_saphyr::from_str::<Policy>(text).map_err(|e| {
        let (line, column, message) = crate::yamlpos::saphyr_error(&e);
        PolicyError::Parse {
            line,
            column,
            message,
        }
    })
}
