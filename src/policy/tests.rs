//! Tests of the compiled matcher: first-match semantics, per-node rules, domains,
//! categories, regexes, methods, clients, access and CONNECT ports.

use std::net::IpAddr;

use super::*;

/// A policy using every matcher field.
pub(super) const DOC: &str = r#"
categories:
  social: [facebook.com, tiktok.com]
rules:
  - name: allow-boss
    clients: [10.9.0.0/16]
    categories: [social]
    action: allow
  - name: no-social
    categories: [social]
    action: deny
    message: "Social media is blocked at work."
  - name: slave2-only
    nodes: [slave-2]
    domains: [example.net]
    action: deny
  - domains: ["*.example.org"]
    action: deny
  - name: no-exe
    url_regex: ['\.exe$']
    action: deny
  - name: no-post-upload
    domains: [upload.test]
    methods: [post]
    action: deny
  - name: no-trace
    methods: [TRACE]
    action: deny
connect: { ports: [443, 8443] }
"#;

/// The nodes the tests know.
pub(super) fn nodes() -> Vec<String> {
    vec!["slave-1".into(), "slave-2".into()]
}

/// `doc` parsed, validated and compiled for `node`.
pub(super) fn matcher(doc: &str, node: &str) -> Matcher {
    let p = parse(doc).unwrap();
    let v = validate(&p, &nodes()).unwrap();
    Matcher::compile(&v, node).unwrap()
}

/// A plain (non-CONNECT) request on port 80.
pub(super) fn req<'a>(client: &str, method: &'a str, host: &'a str, url: &'a str) -> Request<'a> {
    Request {
        client: client.parse::<IpAddr>().unwrap(),
        method,
        host,
        port: 80,
        url,
        connect: false,
    }
}

fn decide(
    m: &Matcher,
    client: &str,
    method: &str,
    host: &str,
    url: &str,
) -> (Verdict, Option<String>) {
    let d = m.decide(&req(client, method, host, url));
    (d.action, d.rule)
}

fn deny(rule: &str) -> (Verdict, Option<String>) {
    (Verdict::Deny, Some(rule.to_string()))
}

#[test]
fn first_match_wins_and_categories() {
    let m = matcher(DOC, "slave-1");
    // The earlier allow beats the later deny.
    let got = decide(
        &m,
        "10.9.1.1",
        "GET",
        "www.facebook.com",
        "http://www.facebook.com/",
    );
    assert_eq!(got, (Verdict::Allow, Some("allow-boss".into())));
    let d = m.decide(&req(
        "10.1.1.1",
        "GET",
        "facebook.com",
        "http://facebook.com/",
    ));
    assert_eq!(d.action, Verdict::Deny);
    assert_eq!(d.rule.as_deref(), Some("no-social"));
    assert_eq!(
        d.message.as_deref(),
        Some("Social media is blocked at work.")
    );
    assert_eq!(
        decide(&m, "10.1.1.1", "GET", "tiktok.com", "/"),
        deny("no-social")
    );
    assert_eq!(
        decide(&m, "10.1.1.1", "GET", "notfacebook.com", "/"),
        (Verdict::Allow, None)
    );
    // A deny before an allow: the deny wins.
    let doc =
        "rules:\n  - {domains: [x.com], action: deny}\n  - {domains: [x.com], action: allow}\n";
    assert_eq!(
        decide(&matcher(doc, "n"), "127.0.0.1", "GET", "x.com", "/"),
        deny("rules[0]")
    );
}

#[test]
fn per_node_rules() {
    let on1 = matcher(DOC, "slave-1");
    let on2 = matcher(DOC, "slave-2");
    assert!(!on1.rule_labels().contains(&"slave2-only"));
    assert!(on2.rule_labels().contains(&"slave2-only"));
    assert_eq!(on2.node(), "slave-2");
    assert_eq!(
        decide(&on1, "10.0.0.1", "GET", "example.net", "/").0,
        Verdict::Allow
    );
    assert_eq!(
        decide(&on2, "10.0.0.1", "GET", "example.net", "/"),
        deny("slave2-only")
    );
}

#[test]
fn bare_and_wildcard_domains() {
    let m = matcher(DOC, "slave-2");
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "a.b.example.net", "/"),
        deny("slave2-only")
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "EXAMPLE.NET.", "/"),
        deny("slave2-only")
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "www.example.org", "/"),
        deny("rules[3]")
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "example.org", "/").0,
        Verdict::Allow
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "badexample.org", "/").0,
        Verdict::Allow
    );
    assert_eq!(decide(&m, "10.0.0.1", "GET", "", "/").0, Verdict::Allow);
}

#[test]
fn regex_methods_and_clients() {
    let m = matcher(DOC, "slave-1");
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "a.com", "http://a.com/x.exe"),
        deny("no-exe")
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "a.com", "http://a.com/x.exe?y").0,
        Verdict::Allow
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "POST", "upload.test", "/"),
        deny("no-post-upload")
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "upload.test", "/").0,
        Verdict::Allow
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "trace", "a.com", "/"),
        deny("no-trace")
    );
    let doc = "rules:\n  - {name: lab, clients: [10.5.0.0/16, '10.6.0.1', 'fd00::/8'], url_regex: ['^http://'], action: deny}\naccess: {default: allow}\n";
    let m = matcher(doc, "n");
    assert_eq!(
        decide(&m, "10.5.3.3", "GET", "a.com", "http://a.com/"),
        deny("lab")
    );
    assert_eq!(
        decide(&m, "10.6.0.1", "GET", "a.com", "http://a.com/"),
        deny("lab")
    );
    assert_eq!(
        decide(&m, "fd00::5", "GET", "a.com", "http://a.com/"),
        deny("lab")
    );
    assert_eq!(
        decide(&m, "10.6.0.2", "GET", "a.com", "http://a.com/").0,
        Verdict::Allow
    );
    assert_eq!(
        decide(&m, "10.5.3.3", "GET", "a.com", "https://a.com/").0,
        Verdict::Allow
    );
}

#[test]
fn default_and_explicit_access() {
    let m = matcher("", "n");
    for ok in [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
        "172.16.5.5",
        "172.31.255.255",
        "192.168.1.1",
        "fd00::1",
        "::ffff:192.168.0.1",
    ] {
        assert_eq!(
            decide(&m, ok, "GET", "a.com", "/").0,
            Verdict::Allow,
            "{ok}"
        );
    }
    for bad in [
        "8.8.8.8",
        "172.32.0.1",
        "169.254.1.1",
        "2001:db8::1",
        "fe80::1",
    ] {
        let d = m.decide(&req(bad, "GET", "a.com", "/"));
        assert_eq!(d.action, Verdict::ClientDenied, "{bad}");
        assert_eq!(d.rule.as_deref(), Some("access.default"));
    }
    let doc = "access:\n  default: deny\n  allow: [{clients: [10.0.0.0/8], comment: office}]\n  deny: [{clients: [10.9.0.0/16]}]\n";
    let m = matcher(doc, "n");
    assert_eq!(
        decide(&m, "10.1.0.1", "GET", "a.com", "/").0,
        Verdict::Allow
    );
    assert_eq!(
        decide(&m, "10.9.0.1", "GET", "a.com", "/"),
        (Verdict::ClientDenied, Some("access.deny[0]".into()))
    );
    assert_eq!(
        decide(&m, "127.0.0.1", "GET", "a.com", "/").0,
        Verdict::ClientDenied
    );
    let m = matcher(
        "access: {default: allow, deny: [{clients: [0.0.0.0/0]}], allow: [{clients: [1.2.3.4]}]}",
        "n",
    );
    assert_eq!(decide(&m, "1.2.3.4", "GET", "a.com", "/").0, Verdict::Allow);
    assert_eq!(
        decide(&m, "1.2.3.5", "GET", "a.com", "/").0,
        Verdict::ClientDenied
    );
    assert_eq!(decide(&m, "::5", "GET", "a.com", "/").0, Verdict::Allow);
}

#[test]
fn connect_ports() {
    let connect = |m: &Matcher, host: &'static str, port: u16| {
        m.decide(&Request {
            client: "10.0.0.1".parse().unwrap(),
            method: "CONNECT",
            host,
            port,
            url: host,
            connect: true,
        })
    };
    let m = matcher("", "n");
    assert_eq!(m.connect_ports(), [443]);
    assert_eq!(connect(&m, "a.com", 443).action, Verdict::Allow);
    assert_eq!(connect(&m, "a.com", 25).action, Verdict::PortDenied);
    let m = matcher(DOC, "slave-1");
    assert_eq!(connect(&m, "a.com", 8443).action, Verdict::Allow);
    assert_eq!(connect(&m, "a.com", 25).action, Verdict::PortDenied);
    // A rule's deny is reported before the port; an allow rule does not open a port.
    assert_eq!(connect(&m, "tiktok.com", 25).action, Verdict::Deny);
    let m = matcher("rules: [{domains: [mail.test], action: allow}]", "n");
    assert_eq!(connect(&m, "mail.test", 25).action, Verdict::PortDenied);
}

#[test]
fn many_domains_and_regexes_compile() {
    let mut doc = String::from("rules:\n  - name: big\n    domains:\n");
    for i in 0..20_000 {
        doc.push_str(&format!("      - d{i}.example\n"));
    }
    doc.push_str("    action: deny\n  - name: rx\n    url_regex:\n");
    for i in 0..100 {
        doc.push_str(&format!("      - '/p{i}/.*\\.bin$'\n"));
    }
    doc.push_str("    action: deny\n");
    let m = matcher(&doc, "n");
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "www.d19999.example", "/"),
        deny("big")
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "a.com", "http://a.com/p42/x.bin"),
        deny("rx")
    );
    assert_eq!(
        decide(&m, "10.0.0.1", "GET", "a.com", "http://a.com/p42/x.txt").0,
        Verdict::Allow
    );
}
