//! Tests of the document side: validation errors and warnings, parse errors, limits,
//! and a property test that garbled documents never panic.

use super::tests::{nodes, req, DOC};
use super::*;

/// The issues of a refused document, as text.
fn issues(doc: &str) -> Vec<String> {
    match validate(&parse(doc).unwrap(), &nodes()) {
        Err(PolicyError::Invalid(v)) => v.iter().map(ToString::to_string).collect(),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn validation_errors_name_where() {
    let doc = r#"
access: {allow: [{clients: [10.0.0.300]}, {clients: []}]}
categories: {games: [steam.com, "bad domain"]}
rules:
  - {name: a, categories: [nosuch], action: deny}
  - {name: b, url_regex: ['(unclosed'], action: deny}
  - {name: c, clients: [10.0.0.0/33], action: deny}
  - {name: d, action: deny}
  - {name: a, domains: [x.com], action: deny}
  - {methods: ["GE T"], action: deny}
  - {domains: ["a.*.com", "*.ok.com"], action: deny}
connect: {ports: [443, 0]}
limits: {header_read_timeout: 0s, idle_timeout: soon, max_header_bytes: 10, max_connections: 0}
"#;
    let got = issues(doc);
    let expect = [
        "access: allow[0]: clients: \"10.0.0.300\" is not an IP address or CIDR",
        "access: allow[1]: clients: no client listed",
        "categories: category \"games\": \"bad domain\" is not a domain name",
        "rules: rule \"a\": categories: unknown category \"nosuch\"",
        "rules: rule \"b\": url_regex: \"(unclosed\": unclosed group",
        "rules: rule \"c\": clients: \"10.0.0.0/33\": the prefix length",
        "rules: rule \"d\": empty rule",
        "rules: rule \"a\": name: duplicate rule name (rules[0] and rules[4])",
        "rules: rules[5]: methods: \"GE T\" is not an HTTP method",
        "rules: rules[6]: domains: \"a.*.com\": a wildcard is allowed only as a \"*.\" prefix",
        "connect: ports: port 0 is not a port",
        "limits: header_read_timeout: \"0s\" is out of range",
        "limits: idle_timeout: \"soon\" is not a duration",
        "limits: max_header_bytes: 10 is out of range",
        "limits: max_connections: 0 is out of range",
    ];
    for e in expect {
        assert!(
            got.iter().any(|g| g.starts_with(e)),
            "missing {e:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    // Display: one per line.
    let err = validate(&parse(doc).unwrap(), &[]).unwrap_err();
    assert_eq!(err.to_string().lines().count(), expect.len());
}

#[test]
fn unknown_node_is_a_warning() {
    let p =
        parse("rules: [{name: later, nodes: [slave-9], domains: [x.com], action: deny}]").unwrap();
    let v = validate(&p, &nodes()).unwrap();
    assert_eq!(v.warnings().len(), 1);
    assert!(
        v.warnings()[0].contains("rule \"later\"") && v.warnings()[0].contains("slave-9"),
        "{:?}",
        v.warnings()
    );
    assert!(Matcher::compile(&v, "slave-1")
        .unwrap()
        .rule_labels()
        .is_empty());
    assert_eq!(
        Matcher::compile(&v, "slave-9").unwrap().rule_labels(),
        ["later"]
    );
}

#[test]
fn parse_errors_name_line_and_column() {
    let err = parse("rules:\n  - name: x\n    domainz: [a.com]\n    action: deny\n").unwrap_err();
    match &err {
        PolicyError::Parse {
            line,
            column,
            message,
        } => {
            assert_eq!(*line, Some(3), "{err}");
            assert!(column.is_some());
            assert!(message.contains("domainz"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("line 3, column "), "{err}");
    assert!(matches!(
        parse("connect: {ports: [70000]}"),
        Err(PolicyError::Parse { line: Some(1), .. })
    ));
    assert!(matches!(
        parse("rules: [{domains: [a.com], action: maybe}]"),
        Err(PolicyError::Parse { .. })
    ));
    assert!(matches!(
        parse("nosuchsection: {}"),
        Err(PolicyError::Parse { .. })
    ));
    assert_eq!(parse("# nothing\n").unwrap(), Policy::default());
}

#[test]
fn limits_are_filled_in() {
    let p = parse(
        "limits: {header_read_timeout: 5s, max_connections_per_client: 2000, max_connections: 100}",
    )
    .unwrap();
    let v = validate(&p, &[]).unwrap();
    assert_eq!(
        v.limits().header_read_timeout,
        std::time::Duration::from_secs(5)
    );
    assert_eq!(
        v.limits().idle_timeout,
        EffectiveLimits::default().idle_timeout
    );
    assert_eq!(v.limits().max_connections_per_client, 2000);
    assert_eq!(v.warnings().len(), 1, "{:?}", v.warnings());
    assert_eq!(
        Matcher::compile(&v, "n").unwrap().limits().max_connections,
        100
    );
}

/// A deterministic xorshift64 generator.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[test]
fn garbled_documents_never_panic() {
    let alphabet = b" \n\t:-[]{},#'\"*./\\|>&!%@0123456789abcxyz";
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let base = DOC.as_bytes();
    let mut refused = 0;
    for round in 0..400 {
        let mut bytes = base.to_vec();
        let edits = 1 + (rng.next() % 8) as usize;
        for _ in 0..edits {
            let pos = (rng.next() as usize) % bytes.len().max(1);
            match rng.next() % 4 {
                0 => bytes[pos] = alphabet[(rng.next() as usize) % alphabet.len()],
                1 => {
                    bytes.remove(pos);
                }
                2 => bytes.insert(pos, alphabet[(rng.next() as usize) % alphabet.len()]),
                _ => bytes[pos] = (rng.next() & 0xff) as u8,
            }
        }
        if round % 50 == 0 {
            bytes.truncate((rng.next() as usize) % bytes.len().max(1));
        }
        let text = String::from_utf8_lossy(&bytes);
        let Ok(p) = parse(&text) else {
            refused += 1;
            continue;
        };
        let _ = canonical_sha256(&p);
        let Ok(v) = validate(&p, &nodes()) else {
            refused += 1;
            continue;
        };
        for node in ["slave-1", "slave-2"] {
            if let Ok(m) = Matcher::compile(&v, node) {
                let _ = m.decide(&req(
                    "10.0.0.1",
                    "GET",
                    "www.facebook.com",
                    "http://x/y.exe",
                ));
                let _ = m.decide(&req("8.8.8.8", "POST", "upload.test", "/"));
            }
        }
    }
    // Most mutations break the document, some do not: both paths were exercised.
    assert!(refused > 50 && refused < 400, "{refused}");
}

#[test]
fn hostile_documents_are_refused_without_panic() {
    let deep = format!("rules: {}", "[".repeat(100_000));
    let deep_map = "a: {".repeat(50_000);
    let mut laughs = String::from(
        "categories:\n  a: &a [x.com, x.com, x.com, x.com, x.com, x.com, x.com, x.com, x.com]\n",
    );
    for (i, c) in ('b'..='k').enumerate() {
        let prev = (b'a' + i as u8) as char;
        laughs.push_str(&format!("  {c}: &{c} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"));
    }
    let big_regex = "rules: [{url_regex: ['(a{1000}){1000}'], action: deny}]".to_string();
    let nul = "rules:\n  - domains: [\"a\\0b.com\"]\n    action: deny\n".to_string();
    for doc in [
        deep,
        deep_map,
        laughs,
        big_regex,
        nul,
        "\u{feff}\u{0}".into(),
        "- a\n- b".into(),
        "~".into(),
    ] {
        if let Ok(p) = parse(&doc) {
            let _ = canonical_sha256(&p);
            if let Ok(v) = validate(&p, &[]) {
                let _ = Matcher::compile(&v, "n");
            }
        }
    }
}

#[test]
fn a_probe_marker_changes_the_hash_and_nothing_else() {
    let base = parse("rules:\n  - domains: [a.test]\n    action: deny\n").unwrap();
    let probed =
        parse("rules:\n  - domains: [a.test]\n    action: deny\nprobe: \"v-1:x.y\"\n").unwrap();
    assert_ne!(canonical_sha256(&base), canonical_sha256(&probed));
    let hb = section_hashes(&base);
    let hp = section_hashes(&probed);
    assert_eq!(hb["rules"], hp["rules"]);
    assert!(hp.contains_key("probe"));
    assert!(validate(&probed, &[]).is_ok());
    let bad = parse("probe: \"no spaces\"\n").unwrap();
    let err = validate(&bad, &[]).unwrap_err().to_string();
    assert!(err.contains("probe"), "{err}");
}
