//! The canonical form of a policy, over which revisions are hashed: JSON with object keys
//! sorted and no insignificant whitespace, from the typed model (so YAML formatting,
//! comments, quoting and key order do not count; absent and empty fields are left out).

use std::collections::BTreeMap;

use serde_json::Value;

use super::model::Policy;
use crate::keys::sha256_hex;

/// Appends the canonical JSON of `v` to `out` (keys sorted at every level).
fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(val, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The policy as a JSON value (the typed model cannot fail to serialize; `null` if it did).
fn to_value(p: &Policy) -> Value {
    serde_json::to_value(p).unwrap_or(Value::Null)
}

/// The canonical JSON text of a policy.
pub fn canonical_json(p: &Policy) -> String {
    let mut out = String::new();
    write(&to_value(p), &mut out);
    out
}

/// The sha256 (lower-case hex) of the canonical JSON of a policy.
pub fn canonical_sha256(p: &Policy) -> String {
    sha256_hex(canonical_json(p).as_bytes())
}

/// The sha256 of each section present (non-empty) in the policy, by section name, each
/// taken over that section's canonical JSON.
pub fn section_hashes(p: &Policy) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Value::Object(map) = to_value(p) {
        for (name, v) in &map {
            let mut text = String::new();
            write(v, &mut text);
            out.insert(name.clone(), sha256_hex(text.as_bytes()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const A: &str = "# the policy\ncategories:\n  social: [facebook.com, tiktok.com]\nrules:\n  - name: no-social\n    categories: [social]\n    action: deny\n    message: \"No.\"\nconnect: { ports: [443, 8443] }\n";
    const B: &str = "connect:\n  ports:\n    - 443\n    - 8443\nrules: [{action: deny, message: No., categories: ['social'], name: \"no-social\"}]\n\n# other comment\ncategories: {social: [\"facebook.com\", 'tiktok.com']}\n";

    #[test]
    fn same_content_same_hash() {
        let (a, b) = (parse(A).unwrap(), parse(B).unwrap());
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_sha256(&a), canonical_sha256(&b));
        assert_eq!(section_hashes(&a), section_hashes(&b));
        assert_eq!(canonical_sha256(&a).len(), 64);
        let json = canonical_json(&a);
        assert!(!json.contains(' ') || json.contains("\"No.\""), "{json}");
        assert!(json.starts_with("{\"categories\":"), "{json}");
    }

    #[test]
    fn different_content_different_hash() {
        let a = parse(A).unwrap();
        let c = parse(&A.replace("8443", "8444")).unwrap();
        assert_ne!(canonical_sha256(&a), canonical_sha256(&c));
        let (ha, hc) = (section_hashes(&a), section_hashes(&c));
        assert_eq!(
            ha.keys().collect::<Vec<_>>(),
            ["categories", "connect", "rules"]
        );
        assert_eq!(ha["rules"], hc["rules"]);
        assert_ne!(ha["connect"], hc["connect"]);
    }

    #[test]
    fn absent_and_empty_are_the_same() {
        let a = parse("rules: []\ncategories: {}\n").unwrap();
        let b = parse("").unwrap();
        assert_eq!(canonical_sha256(&a), canonical_sha256(&b));
        assert_eq!(canonical_json(&b), "{}");
        assert!(section_hashes(&b).is_empty());
        let deny_default = parse("access: {allow: [{clients: [10.0.0.0/8]}]}").unwrap();
        let explicit = parse("access: {default: deny, allow: [{clients: [10.0.0.0/8]}]}").unwrap();
        assert_eq!(canonical_sha256(&deny_default), canonical_sha256(&explicit));
    }
}
