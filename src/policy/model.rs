//! The typed policy document: one struct per section, read with serde-saphyr
//! (`deny_unknown_fields` everywhere, so a misspelt key is a parse error with its line
//! and column) and written back as canonical JSON (see `canonical.rs`).
//!
//! Fields that are absent, empty or `None` are left out when serializing, so adding a new
//! optional section or field later does not change the hash of documents that do not use
//! it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole policy document. Each top-level key is a section, synced on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Which clients may use the proxy. Absent: loopback and private networks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessSection>,
    /// Named domain lists that rules refer to by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, Vec<String>>,
    /// Request rules, in order; the first rule that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// CONNECT tunnels. Absent: port 443 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectSection>,
    /// Timeouts and size and connection limits. Absent: the defaults of `Limits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// A marker `ssq verify --probe-policy` sets to publish a new revision that changes
    /// nothing the proxy does (up to 64 letters, digits, `-`, `_`, `.`, `:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<String>,
}

/// What a rule, or the access section's default, does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Refuse the request.
    #[default]
    Deny,
}

/// The `access` section: which client addresses may use the proxy at all.
///
/// The most specific entry (longest prefix) covering the client decides; when an allow
/// and a deny entry are equally specific, deny wins; no entry covering it: `default`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessSection {
    /// What happens to a client no entry covers (default: deny).
    #[serde(default)]
    pub default: Action,
    /// Clients that may use the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<AccessEntry>,
    /// Clients that may not use the proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<AccessEntry>,
}

/// One entry of `access.allow` or `access.deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEntry {
    /// IP addresses or CIDR networks (`10.0.0.5`, `10.0.0.0/8`, `fc00::/7`).
    pub clients: Vec<String>,
    /// Free text for the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One request rule. It matches a request when every non-empty matcher field matches:
/// `clients` AND (`domains` or `categories`) AND `url_regex` AND `methods`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// A unique name, shown on the block page and in logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only on these nodes (empty: on every node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Client IP addresses or CIDR networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// Host names: `x.com` matches x.com and its subdomains, `*.x.com` subdomains only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// Names of `categories` whose domains this rule matches (like `domains`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// Regular expressions, any of which matching the request URL matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub url_regex: Vec<String>,
    /// HTTP methods (`GET`, `POST`, `CONNECT`, ...), compared case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// What to do with a matching request.
    pub action: Action,
    /// Shown on the block page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The `connect` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectSection {
    /// Ports CONNECT may reach (default when the section is absent: 443).
    #[serde(default)]
    pub ports: Vec<u16>,
}

/// The `limits` section; every field is optional and falls back to its default
/// (see `EffectiveLimits`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Time a client has to send the request head (`"10s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_read_timeout: Option<String>,
    /// Time a connection may sit idle between requests (`"60s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// Time to wait for an upstream TCP connection (`"10s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_connect_timeout: Option<String>,
    /// Largest request head accepted, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_header_bytes: Option<u64>,
    /// Concurrent connections from one client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<u64>,
    /// Concurrent client connections in total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u64>,
}
