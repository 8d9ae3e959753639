//! Validation of a parsed policy: every problem is collected (not just the first), each
//! naming its section, item (rule name, else `rules[N]`) and field. Problems that do not
//! make the document wrong (a rule for a node not met yet) are warnings. The result,
//! [`Validated`], is the only input the matcher compiles from.

use std::collections::{BTreeMap, HashMap};

use super::cidr::Cidr;
use super::limits::{check_limits, EffectiveLimits};
use super::model::{Policy, Rule};
use super::{Issue, PolicyError};

/// The largest compiled size of one regex or of all a node's regexes together, in bytes.
pub(crate) const REGEX_SIZE_LIMIT: usize = 32 << 20;

/// A policy that passed validation, with its warnings and effective limits.
#[derive(Debug, Clone)]
pub struct Validated {
    policy: Policy,
    warnings: Vec<String>,
    limits: EffectiveLimits,
}

impl Validated {
    /// The policy as parsed.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Problems that did not refuse the document (e.g. a rule naming an unknown node).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The `limits` section with defaults filled in.
    pub fn limits(&self) -> &EffectiveLimits {
        &self.limits
    }
}

/// How a rule is named in messages: `rule "name"`, else `rules[i]`.
pub(crate) fn rule_label(rule: &Rule, i: usize) -> String {
    match &rule.name {
        Some(n) => format!("rule \"{n}\""),
        None => format!("rules[{i}]"),
    }
}

/// The first line of a regex error that says what is wrong.
pub(crate) fn regex_message(err: &regex::Error) -> String {
    let text = err.to_string();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map(str::trim)
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("invalid regex");
    line.to_string()
}

/// Checks a `domains:` or category entry: a host name, optionally prefixed by `*.`.
fn check_domain(entry: &str) -> Result<(), String> {
    let name = entry.strip_prefix("*.").unwrap_or(entry);
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.contains('*') {
        return Err(format!(
            "\"{entry}\": a wildcard is allowed only as a \"*.\" prefix (\"*.example.com\")"
        ));
    }
    if name.is_empty() || name.len() > 253 {
        return Err(format!("\"{entry}\" is not a domain name"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "\"{entry}\" is not a domain name (use \"example.com\" or \"*.example.com\", without scheme, path or port)"
            ));
        }
    }
    Ok(())
}

/// True for an HTTP method token (RFC 9110 tchar).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Collects issues for one section.
pub(crate) struct Issues<'a> {
    pub(crate) out: &'a mut Vec<Issue>,
    pub(crate) section: &'static str,
}

impl Issues<'_> {
    /// Adds one issue to the section.
    pub(crate) fn add(&mut self, item: Option<&str>, field: Option<&str>, message: String) {
        self.out.push(Issue {
            section: self.section.to_string(),
            item: item.map(str::to_string),
            field: field.map(str::to_string),
            message,
        });
    }
}

/// Validates `p`. `known_nodes` are the node names the caller knows; a rule naming
/// another node is a warning. Every problem is reported in one
/// [`PolicyError::Invalid`].
pub fn validate(p: &Policy, known_nodes: &[String]) -> Result<Validated, PolicyError> {
    let mut issues = Vec::new();
    let mut warnings = Vec::new();
    check_access(p, &mut issues);
    check_categories(p, &mut issues);
    check_rules(p, known_nodes, &mut issues, &mut warnings);
    if let Some(c) = &p.connect {
        let mut is = Issues {
            out: &mut issues,
            section: "connect",
        };
        if c.ports.contains(&0) {
            is.add(None, Some("ports"), "port 0 is not a port".to_string());
        }
        if c.ports.is_empty() {
            warnings.push("connect: ports: no port listed, every CONNECT is refused".into());
        }
    }
    let limits = check_limits(p.limits.as_ref(), &mut issues, &mut warnings);
    if let Some(m) = &p.probe {
        let ok = !m.is_empty()
            && m.len() <= 64
            && m.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !ok {
            issues.push(Issue {
                section: "probe".into(),
                item: None,
                field: None,
                message: format!(
                    "\"{m}\" is not a probe marker (1 to 64 letters, digits, '-', '_', '.', ':')"
                ),
            });
        }
    }
    if !issues.is_empty() {
        return Err(PolicyError::Invalid(issues));
    }
    Ok(Validated {
        policy: p.clone(),
        warnings,
        limits,
    })
}

fn check_access(p: &Policy, issues: &mut Vec<Issue>) {
    let Some(a) = &p.access else { return };
    let mut is = Issues {
        out: issues,
        section: "access",
    };
    for (list, entries) in [("allow", &a.allow), ("deny", &a.deny)] {
        for (i, e) in entries.iter().enumerate() {
            let item = format!("{list}[{i}]");
            if e.clients.is_empty() {
                is.add(Some(&item), Some("clients"), "no client listed".into());
            }
            for c in &e.clients {
                if let Err(m) = Cidr::parse(c) {
                    is.add(Some(&item), Some("clients"), m);
                }
            }
        }
    }
}

fn check_categories(p: &Policy, issues: &mut Vec<Issue>) {
    let mut is = Issues {
        out: issues,
        section: "categories",
    };
    for (name, domains) in &p.categories {
        let item = format!("category \"{name}\"");
        if name.trim().is_empty() {
            is.add(Some(&item), None, "a category needs a name".into());
        }
        for d in domains {
            if let Err(m) = check_domain(d) {
                is.add(Some(&item), None, m);
            }
        }
    }
}

fn check_rules(
    p: &Policy,
    known_nodes: &[String],
    issues: &mut Vec<Issue>,
    warnings: &mut Vec<String>,
) {
    let mut is = Issues {
        out: issues,
        section: "rules",
    };
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, r) in p.rules.iter().enumerate() {
        let item = rule_label(r, i);
        let it = Some(item.as_str());
        if let Some(n) = &r.name {
            if n.trim().is_empty() {
                is.add(
                    Some(&format!("rules[{i}]")),
                    Some("name"),
                    "empty name".into(),
                );
            } else if let Some(first) = names.insert(n, i) {
                is.add(
                    it,
                    Some("name"),
                    format!("duplicate rule name (rules[{first}] and rules[{i}])"),
                );
            }
        }
        for n in &r.nodes {
            if n.trim().is_empty() {
                is.add(it, Some("nodes"), "empty node name".into());
            } else if !known_nodes.contains(n) {
                warnings.push(format!(
                    "rules: {item}: nodes: node \"{n}\" is not known yet; the rule applies once it joins"
                ));
            }
        }
        for c in &r.clients {
            if let Err(m) = Cidr::parse(c) {
                is.add(it, Some("clients"), m);
            }
        }
        for d in &r.domains {
            if let Err(m) = check_domain(d) {
                is.add(it, Some("domains"), m);
            }
        }
        for c in &r.categories {
            if !p.categories.contains_key(c) {
                is.add(it, Some("categories"), format!("unknown category \"{c}\""));
            }
        }
        for re in &r.url_regex {
            let built = regex::RegexBuilder::new(re)
                .size_limit(REGEX_SIZE_LIMIT)
                .build();
            if let Err(e) = built {
                is.add(
                    it,
                    Some("url_regex"),
                    format!("\"{re}\": {}", regex_message(&e)),
                );
            }
        }
        for m in &r.methods {
            if !is_token(m) {
                is.add(
                    it,
                    Some("methods"),
                    format!("\"{m}\" is not an HTTP method"),
                );
            }
        }
        let empty = r.clients.is_empty()
            && r.domains.is_empty()
            && r.categories.is_empty()
            && r.url_regex.is_empty()
            && r.methods.is_empty();
        if empty {
            is.add(
                it,
                None,
                "empty rule: give it clients, domains, categories, url_regex or methods (for a catch-all, clients: [0.0.0.0/0, \"::/0\"])".into(),
            );
        }
    }
}

/// The domains a rule matches: its `domains` plus those of its `categories`.
pub(crate) fn rule_domains<'a>(
    rule: &'a Rule,
    categories: &'a BTreeMap<String, Vec<String>>,
) -> impl Iterator<Item = &'a String> + 'a {
    rule.domains.iter().chain(
        rule.categories
            .iter()
            .filter_map(move |c| categories.get(c))
            .flatten(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_methods() {
        for ok in [
            "example.com",
            "*.example.com",
            "a-b_c.example.com.",
            "localhost",
            "10.0.0.1",
        ] {
            assert!(check_domain(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "*.",
            "*",
            "a.*.com",
            "example.*",
            "http://x.com",
            "x.com:80",
            "x..com",
            "x.com/a",
        ] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
        assert!(is_token("GET") && is_token("M-SEARCH"));
        assert!(!is_token("") && !is_token("GE T") && !is_token("GET,POST"));
    }

    #[test]
    fn empty_policy_is_valid() {
        let v = validate(&Policy::default(), &[]).unwrap();
        assert_eq!(*v.limits(), EffectiveLimits::default());
        assert!(v.warnings().is_empty());
    }
}
