//! What the matcher is asked and what it answers: a [`Request`] as the proxy sees it
//! before any DNS lookup, and the [`Decision`] (a [`Verdict`] and the rule behind it).

use std::net::IpAddr;

/// One request, as the proxy sees it before any DNS lookup.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The HTTP method (`GET`, `CONNECT`, ...).
    pub method: &'a str,
    /// The target host, lower-case, without port (upper case is tolerated, at a cost).
    pub host: &'a str,
    /// The target port.
    pub port: u16,
    /// The URL the `url_regex` fields are matched against.
    pub url: &'a str,
    /// True for a CONNECT tunnel.
    pub connect: bool,
}

/// What the policy decides for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refused by a rule (HTTP 451; CONNECT 403).
    Deny,
    /// The client may not use the proxy (`access`; HTTP 403).
    ClientDenied,
    /// CONNECT to a port not in `connect.ports` (HTTP 403).
    PortDenied,
}

/// A decision and what made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub action: Verdict,
    /// The deciding rule (`name`, else `rules[N]`) or access entry (`access.deny[N]`,
    /// `access.default`); None when nothing matched or for a port refusal.
    pub rule: Option<String>,
    /// The rule's message, for the block page.
    pub message: Option<String>,
}
