//! The compiled policy of one node and its pure, I/O-free decision for one request.
//!
//! Per request the cost does not grow with list length: the client is looked up in a
//! prefix index (one hash probe per distinct prefix length), the host by walking its
//! dot-separated suffixes through one hash map, the URL by one `RegexSet`. Each index
//! yields the rules it matches; the lowest-numbered candidate whose every field matches
//! is the first match.

use std::collections::HashMap;
use std::net::IpAddr;

use regex::{RegexSet, RegexSetBuilder};

use super::cidr::{Cidr, CidrIndex};
use super::decision::{Decision, Request, Verdict};
use super::limits::EffectiveLimits;
use super::model::Action;
use super::validate::{regex_message, rule_domains, Validated, REGEX_SIZE_LIMIT};
use super::{Issue, PolicyError};

/// The networks that may use the proxy when the policy has no `access` section.
const DEFAULT_ACCESS: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

/// Which index finds a rule: the first of hosts, clients, regex it has; else methods only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primary {
    Hosts,
    Clients,
    Regex,
    MethodsOnly,
}

/// One rule kept for this node.
#[derive(Debug, Clone)]
struct CompiledRule {
    label: String,
    action: Action,
    message: Option<String>,
    has_clients: bool,
    has_hosts: bool,
    has_regex: bool,
    methods: Vec<String>,
    primary: Primary,
}

/// The rules a host-name suffix matches.
#[derive(Debug, Clone, Default)]
struct HostEntry {
    /// Bare `x.com`: the name itself and its subdomains.
    bare: Vec<u32>,
    /// `*.x.com`: subdomains only.
    sub: Vec<u32>,
}

/// Access marks for one network: the first allow and deny entries listing it.
#[derive(Debug, Clone, Default)]
struct AccessMark {
    allow: Option<usize>,
    deny: Option<usize>,
}

/// A policy compiled for one node.
#[derive(Debug, Clone)]
pub struct Matcher {
    node: String,
    access: CidrIndex<AccessMark>,
    access_default: Action,
    rules: Vec<CompiledRule>,
    hosts: HashMap<Box<str>, HostEntry, foldhash::fast::RandomState>,
    clients: CidrIndex<Vec<u32>>,
    regex: Option<RegexSet>,
    regex_rule: Vec<u32>,
    regex_primary: bool,
    methods_only: Vec<u32>,
    connect_ports: Vec<u16>,
    limits: EffectiveLimits,
}

/// A compile failure (validation makes these unlikely), as a policy error.
fn compile_error(field: &str, message: String) -> PolicyError {
    PolicyError::Invalid(vec![Issue {
        section: "rules".into(),
        item: None,
        field: Some(field.into()),
        message,
    }])
}

/// Sorts and dedups rule indices.
fn normalize(v: &mut Vec<u32>) {
    v.sort_unstable();
    v.dedup();
}

impl Matcher {
    /// Compiles `v` for the node `node`: rules whose `nodes` list is non-empty and does
    /// not name `node` are left out.
    pub fn compile(v: &Validated, node: &str) -> Result<Matcher, PolicyError> {
        let p = v.policy();
        let mut access = CidrIndex::<AccessMark>::default();
        let access_default = match &p.access {
            None => {
                for net in DEFAULT_ACCESS {
                    let net = Cidr::parse(net).map_err(|m| compile_error("access", m))?;
                    access.entry(net).allow.get_or_insert(0);
                }
                Action::Deny
            }
            Some(a) => {
                for (deny, list) in [(false, &a.allow), (true, &a.deny)] {
                    for (i, e) in list.iter().enumerate() {
                        for c in &e.clients {
                            let net = Cidr::parse(c).map_err(|m| compile_error("clients", m))?;
                            let mark = access.entry(net);
                            let slot = if deny {
                                &mut mark.deny
                            } else {
                                &mut mark.allow
                            };
                            slot.get_or_insert(i);
                        }
                    }
                }
                a.default
            }
        };
        let mut m = Matcher {
            node: node.to_string(),
            access,
            access_default,
            rules: Vec::new(),
            hosts: HashMap::default(),
            clients: CidrIndex::default(),
            regex: None,
            regex_rule: Vec::new(),
            regex_primary: false,
            methods_only: Vec::new(),
            connect_ports: p.connect.as_ref().map_or(vec![443], |c| c.ports.clone()),
            limits: *v.limits(),
        };
        let mut patterns: Vec<&str> = Vec::new();
        let kept = p.rules.iter().enumerate();
        let kept = kept.filter(|(_, r)| r.nodes.is_empty() || r.nodes.iter().any(|n| n == node));
        for (doc_index, r) in kept {
            let id = u32::try_from(m.rules.len())
                .map_err(|_| compile_error("rules", "too many rules".into()))?;
            let mut has_hosts = false;
            for d in rule_domains(r, &p.categories) {
                has_hosts = true;
                let d = d.trim().to_ascii_lowercase();
                let d = d.strip_suffix('.').unwrap_or(&d);
                let (name, sub) = match d.strip_prefix("*.") {
                    Some(rest) => (rest, true),
                    None => (d, false),
                };
                let e = m.hosts.entry(name.into()).or_default();
                if sub {
                    e.sub.push(id)
                } else {
                    e.bare.push(id)
                }
            }
            // A rule naming only empty categories still needs a host match: it matches nothing.
            has_hosts |= !r.categories.is_empty();
            for c in &r.clients {
                let net = Cidr::parse(c).map_err(|m| compile_error("clients", m))?;
                m.clients.entry(net).push(id);
            }
            for re in &r.url_regex {
                patterns.push(re);
                m.regex_rule.push(id);
            }
            let (has_clients, has_regex) = (!r.clients.is_empty(), !r.url_regex.is_empty());
            let primary = if has_hosts {
                Primary::Hosts
            } else if has_clients {
                Primary::Clients
            } else if has_regex {
                m.regex_primary = true;
                Primary::Regex
            } else {
                m.methods_only.push(id);
                Primary::MethodsOnly
            };
            m.rules.push(CompiledRule {
                label: match &r.name {
                    Some(n) => n.clone(),
                    None => format!("rules[{doc_index}]"),
                },
                action: r.action,
                message: r.message.clone(),
                has_clients,
                has_hosts,
                has_regex,
                methods: r.methods.clone(),
                primary,
            });
        }
        for e in m.hosts.values_mut() {
            normalize(&mut e.bare);
            normalize(&mut e.sub);
        }
        if !patterns.is_empty() {
            let set = RegexSetBuilder::new(&patterns)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| compile_error("url_regex", regex_message(&e)))?;
            m.regex = Some(set);
        }
        Ok(m)
    }

    /// The node this matcher was compiled for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The labels (name, else `rules[N]`) of the rules kept for this node, in order.
    pub fn rule_labels(&self) -> Vec<&str> {
        self.rules.iter().map(|r| r.label.as_str()).collect()
    }

    /// The ports CONNECT may reach.
    pub fn connect_ports(&self) -> &[u16] {
        &self.connect_ports
    }

    /// The limits the proxy applies.
    pub fn limits(&self) -> &EffectiveLimits {
        &self.limits
    }

    /// Decides for one request: client access, then the rules (first match wins), then,
    /// for CONNECT not denied by a rule, `connect.ports`. Nothing matched: allow.
    pub fn decide(&self, req: &Request<'_>) -> Decision {
        if let Some(d) = self.check_access(req.client) {
            return d;
        }
        let matched = self.first_match(req);
        if let Some(r) = matched.filter(|r| r.action == Action::Deny) {
            return Decision {
                action: Verdict::Deny,
                rule: Some(r.label.clone()),
                message: r.message.clone(),
            };
        }
        if req.connect && !self.connect_ports.contains(&req.port) {
            return Decision {
                action: Verdict::PortDenied,
                rule: None,
                message: Some(format!("CONNECT to port {} is not allowed", req.port)),
            };
        }
        Decision {
            action: Verdict::Allow,
            rule: matched.map(|r| r.label.clone()),
            message: matched.and_then(|r| r.message.clone()),
        }
    }

    /// None when the client may use the proxy, else the refusal.
    fn check_access(&self, client: IpAddr) -> Option<Decision> {
        let denied = |rule: String| Decision {
            action: Verdict::ClientDenied,
            rule: Some(rule),
            message: None,
        };
        match self.access.matches(client).next() {
            Some((_, mark)) => mark.deny.map(|i| denied(format!("access.deny[{i}]"))),
            None if self.access_default == Action::Deny => Some(denied("access.default".into())),
            None => None,
        }
    }

    /// The rules whose host index matches `host` (sorted).
    fn host_hits(&self, host: &str) -> Vec<u32> {
        let mut out = Vec::new();
        if self.hosts.is_empty() {
            return out;
        }
        let owned;
        let mut host = host.strip_suffix('.').unwrap_or(host);
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            owned = host.to_ascii_lowercase();
            host = &owned;
        }
        let (mut suffix, mut whole) = (host, true);
        loop {
            if let Some(e) = self.hosts.get(suffix) {
                out.extend_from_slice(&e.bare);
                if !whole {
                    out.extend_from_slice(&e.sub);
                }
            }
            // (A byte search: the names are short, a char searcher costs more.)
            match suffix.bytes().position(|b| b == b'.') {
                Some(i) => (suffix, whole) = (&suffix[i + 1..], false),
                None => break,
            }
        }
        normalize(&mut out);
        out
    }

    /// The rules one of whose `url_regex` matches `url` (sorted).
    fn regex_hits(&self, url: &str) -> Vec<u32> {
        let Some(set) = &self.regex else {
            return Vec::new();
        };
        // Most URLs match none: a yes/no search stops early, where listing every match
        // scans for all of them.
        if !set.is_match(url) {
            return Vec::new();
        }
        let mut out: Vec<u32> = set
            .matches(url)
            .iter()
            .filter_map(|i| self.regex_rule.get(i).copied())
            .collect();
        normalize(&mut out);
        out
    }

    /// The first rule (in document order) matching every one of its fields.
    fn first_match(&self, req: &Request<'_>) -> Option<&CompiledRule> {
        if self.rules.is_empty() {
            return None;
        }
        let hosts = self.host_hits(req.host);
        let mut clients: Vec<u32> = Vec::new();
        if !self.clients.is_empty() {
            for (_, ids) in self.clients.matches(req.client) {
                clients.extend_from_slice(ids);
            }
            normalize(&mut clients);
        }
        let mut regex: Option<Vec<u32>> = None;
        if self.regex_primary {
            regex = Some(self.regex_hits(req.url));
        }
        let primary_is = |p: Primary| move |i: &&u32| self.rules[**i as usize].primary == p;
        let mut cands: Vec<u32> = hosts.clone();
        cands.extend(clients.iter().filter(primary_is(Primary::Clients)));
        if let Some(r) = &regex {
            cands.extend(r.iter().filter(primary_is(Primary::Regex)));
        }
        cands.extend_from_slice(&self.methods_only);
        normalize(&mut cands);
        for id in cands {
            let r = &self.rules[id as usize];
            if (r.has_hosts && hosts.binary_search(&id).is_err())
                || (r.has_clients && clients.binary_search(&id).is_err())
            {
                continue;
            }
            if !r.methods.is_empty()
                && !r.methods.iter().any(|m| m.eq_ignore_ascii_case(req.method))
            {
                continue;
            }
            if r.has_regex {
                let hits = regex.get_or_insert_with(|| self.regex_hits(req.url));
                if hits.binary_search(&id).is_err() {
                    continue;
                }
            }
            return Some(r);
        }
        None
    }
}
