//! Small line-oriented helpers for YAML text: find the line where a key is defined (to
//! name it in validation errors), edit one top-level scalar while keeping every other
//! byte of the file (comments included), and turn a serde-saphyr error into a position
//! and a one-line message.

/// One line's key, as seen by the indentation-aware scan.
struct KeyLine<'a> {
    /// Column of the key (list markers `- ` count as indentation).
    indent: usize,
    /// The key, without quotes.
    key: &'a str,
    /// What follows `key:` on the same line, trimmed.
    rest: &'a str,
}

/// Reads `key: rest` from one line, or None for blank lines, comments and non-keys.
fn key_line(line: &str) -> Option<KeyLine<'_>> {
    let line = line.trim_end_matches(['\n', '\r']);
    let mut indent = line.len() - line.trim_start_matches(' ').len();
    let mut body = &line[indent..];
    while let Some(after) = body.strip_prefix("- ") {
        let trimmed = after.trim_start_matches(' ');
        indent += body.len() - trimmed.len();
        body = trimmed;
    }
    if body.is_empty() || body.starts_with('#') || body.starts_with("---") {
        return None;
    }
    let (key, after) = if let Some(q) = body.chars().next().filter(|c| *c == '"' || *c == '\'') {
        let inner = &body[1..];
        let end = inner.find(q)?;
        let after = inner[end + 1..].trim_start_matches(' ');
        (&inner[..end], after.strip_prefix(':')?)
    } else {
        let bytes = body.as_bytes();
        let pos = (0..bytes.len()).find(|&i| {
            bytes[i] == b':' && bytes.get(i + 1).is_none_or(|b| *b == b' ' || *b == b'\t')
        })?;
        let key = body[..pos].trim_end();
        if key.is_empty() || key.contains(['{', '[', '#', '"', '\'']) {
            return None;
        }
        (key, &body[pos + 1..])
    };
    Some(KeyLine {
        indent,
        key,
        rest: after.trim(),
    })
}

/// True when `rest` starts a block scalar (`|`, `>-`, ...), whose lines are not keys.
fn starts_block_scalar(rest: &str) -> bool {
    let value = rest.split(" #").next().unwrap_or("").trim();
    value.starts_with('|') || value.starts_with('>')
}

/// True when the flow text `flow` names the keys `keys` in order (`{ a: { b: 1 } }`).
fn flow_has_keys(flow: &str, keys: &[&str]) -> bool {
    let mut from = 0;
    for key in keys {
        let found = [format!("{{{key}:"), format!(" {key}:"), format!(",{key}:")]
            .iter()
            .filter_map(|pat| flow[from..].find(pat.as_str()).map(|i| i + pat.len()))
            .min();
        match found {
            Some(end) => from += end,
            None => return false,
        }
    }
    true
}

/// The 1-based line where the key `dotted` (`portal.listen`, `master`) is defined in
/// `text`, found by an indentation-aware scan of block mappings. When the last keys sit
/// inside a flow mapping on one line (`portal: { listen: "x" }`), that line is returned.
pub fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let want: Vec<&str> = dotted.split('.').collect();
    let mut stack: Vec<(usize, &str)> = Vec::new();
    let mut block_scalar_indent: Option<usize> = None;
    for (idx, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(outer) = block_scalar_indent {
            if line.trim().is_empty() || indent > outer {
                continue;
            }
            block_scalar_indent = None;
        }
        let Some(kl) = key_line(line) else { continue };
        while stack.last().is_some_and(|(i, _)| *i >= kl.indent) {
            stack.pop();
        }
        stack.push((kl.indent, kl.key));
        let keys: Vec<&str> = stack.iter().map(|(_, k)| *k).collect();
        if keys == want {
            return Some(idx + 1);
        }
        if keys.len() < want.len()
            && want.starts_with(&keys)
            && kl.rest.starts_with('{')
            && flow_has_keys(kl.rest, &want[keys.len()..])
        {
            return Some(idx + 1);
        }
        if starts_block_scalar(kl.rest) {
            block_scalar_indent = Some(kl.indent);
        }
    }
    None
}

/// Quotes `value` for YAML when it would not read back as the same plain string.
pub fn yaml_scalar(value: &str) -> String {
    let special = [
        "", "~", "null", "true", "false", "yes", "no", "on", "off", "y", "n",
    ];
    let needs_quotes = special.contains(&value.to_ascii_lowercase().as_str())
        || value.trim() != value
        || value.starts_with([
            '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%',
            '@', '`',
        ])
        || value.contains(": ")
        || value.contains(" #")
        || value.ends_with(':')
        || value.chars().any(char::is_control)
        || value.parse::<f64>().is_ok()
        || value.parse::<i64>().is_ok();
    if !needs_quotes {
        return value.to_string();
    }
    double_quoted(value)
}

/// `value` as a YAML double-quoted scalar, with `"`, `\\` and control characters escaped.
pub fn double_quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The trailing ` # comment` of a scalar value (with the spaces before it), if any.
fn trailing_comment(rest: &str) -> Option<&str> {
    let start = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => rest[1..].find(q).map(|i| i + 2).unwrap_or(rest.len()),
        _ => 0,
    };
    let hash = rest[start..]
        .find(" #")
        .or_else(|| rest[start..].find("\t#"))?;
    let begin = start + hash;
    let spaces = rest[..begin].len() - rest[..begin].trim_end().len();
    Some(&rest[begin - spaces..])
}

/// Returns `text` with the top-level `key: ...` set to `key: value` (double-quoted when
/// needed), appended at the end when absent, or removed when `value` is None. A value
/// spanning several lines is replaced whole; a trailing comment on the key's line is
/// kept; every other line is preserved byte for byte.
pub fn set_top_level_scalar(text: &str, key: &str, value: Option<&str>) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len() + key.len() + 16);
    let mut done = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let top = !line.starts_with([' ', '\t']);
        let kl = if top { key_line(line) } else { None };
        let Some(kl) = kl.filter(|kl| kl.key == key && kl.indent == 0) else {
            out.push_str(line);
            i += 1;
            continue;
        };
        // The entry runs on over following indented lines (a block value).
        let mut last = i;
        let mut j = i + 1;
        while j < lines.len() {
            let l = lines[j];
            if l.trim().is_empty() {
                j += 1;
            } else if l.starts_with([' ', '\t']) {
                last = j;
                j += 1;
            } else {
                break;
            }
        }
        if let (Some(v), false) = (value, done) {
            let ending = if line.ends_with("\r\n") {
                "\r\n"
            } else if line.ends_with('\n') {
                "\n"
            } else {
                ""
            };
            let comment = trailing_comment(kl.rest).unwrap_or("");
            out.push_str(&format!("{key}: {}{comment}{ending}", yaml_scalar(v)));
            if ending.is_empty() && last > i {
                out.push('\n');
            }
        }
        done = true;
        i = last + 1;
    }
    if let (Some(v), false) = (value, done) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{key}: {}\n", yaml_scalar(v)));
    }
    out
}

/// The position (1-based line and column) and a one-line message of a serde-saphyr
/// error, without the source snippet its Display renders.
pub fn saphyr_error(err: &serde_saphyr::Error) -> (Option<usize>, Option<usize>, String) {
    let loc = err.location();
    let line = loc.map(|l| usize::try_from(l.line()).unwrap_or(usize::MAX));
    let column = loc.map(|l| usize::try_from(l.column()).unwrap_or(usize::MAX));
    let full = err.without_snippet().to_string();
    let first = full.lines().next().unwrap_or("").trim();
    let mut msg = first.strip_prefix("error:").unwrap_or(first).trim();
    if let Some(after) = msg.strip_prefix("line ") {
        // "line 2 column 1: message"
        if let Some(pos) = after.find(": ") {
            if after[..pos]
                .split(' ')
                .all(|w| w == "column" || (!w.is_empty() && w.bytes().all(|b| b.is_ascii_digit())))
            {
                msg = after[pos + 2..].trim();
            }
        }
    }
    // Some messages end with " at line N, column M", which the position already says.
    if let Some(pos) = msg.rfind(" at line ") {
        let tail = &msg[pos + " at line ".len()..];
        if tail
            .split(", column ")
            .all(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            msg = msg[..pos].trim_end();
        }
    }
    let msg = if msg.is_empty() { first } else { msg };
    (line, column, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# startup\nnode: slave-1   # name\nportal:\n  listen: \"0.0.0.0:8888\"\n  # c\n  cert: a.pem\nproxy: { listen: \"0.0.0.0:8080\" }\nsync:\n  never:\n    - rules\nnote: |\n  master: fake\nmaster: 10.0.0.1:8888\n";

    #[test]
    fn finds_block_and_flow_keys() {
        assert_eq!(line_of_key(SAMPLE, "node"), Some(2));
        assert_eq!(line_of_key(SAMPLE, "portal"), Some(3));
        assert_eq!(line_of_key(SAMPLE, "portal.listen"), Some(4));
        assert_eq!(line_of_key(SAMPLE, "portal.cert"), Some(6));
        assert_eq!(line_of_key(SAMPLE, "proxy.listen"), Some(7));
        assert_eq!(line_of_key(SAMPLE, "sync.never"), Some(9));
        assert_eq!(line_of_key(SAMPLE, "master"), Some(13));
        assert_eq!(line_of_key(SAMPLE, "portal.key"), None);
        assert_eq!(line_of_key(SAMPLE, "listen"), None);
    }

    #[test]
    fn finds_keys_in_list_items() {
        let text = "allow:\n  - address: 10.0.0.1\n    access: [sync]\n";
        assert_eq!(line_of_key(text, "allow.address"), Some(2));
        assert_eq!(line_of_key(text, "allow.access"), Some(3));
    }

    #[test]
    fn replaces_scalar_keeping_comments() {
        let out = set_top_level_scalar(SAMPLE, "master", Some("10.0.0.2:9999"));
        assert_eq!(out, SAMPLE.replace("10.0.0.1:8888", "10.0.0.2:9999"));
        let out = set_top_level_scalar(SAMPLE, "node", Some("slave-2"));
        assert!(out.contains("node: slave-2   # name\n"), "{out}");
        assert_eq!(out.lines().count(), SAMPLE.lines().count());
    }

    #[test]
    fn appends_when_absent_and_removes() {
        let out = set_top_level_scalar("node: a", "master", Some("h:1"));
        assert_eq!(out, "node: a\nmaster: h:1\n");
        let out = set_top_level_scalar(SAMPLE, "master", None);
        assert_eq!(out, SAMPLE.replace("master: 10.0.0.1:8888\n", ""));
        let out = set_top_level_scalar(SAMPLE, "portal", None);
        assert!(
            out.starts_with("# startup\nnode: slave-1   # name\nproxy:"),
            "{out}"
        );
        assert_eq!(set_top_level_scalar("a: 1\n", "b", None), "a: 1\n");
    }

    #[test]
    fn quotes_when_needed() {
        let out = set_top_level_scalar("", "node", Some("on"));
        assert_eq!(out, "node: \"on\"\n");
        let out = set_top_level_scalar("", "x", Some("a: \"b\""));
        assert_eq!(out, "x: \"a: \\\"b\\\"\"\n");
        let out = set_top_level_scalar("", "x", Some("8080"));
        assert_eq!(out, "x: \"8080\"\n");
    }

    #[test]
    fn strips_snippet_from_errors() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct S {
            a: Option<u8>,
        }
        let err = serde_saphyr::from_str::<S>("a: 1\nb: 2\n").unwrap_err();
        let (line, col, msg) = saphyr_error(&err);
        assert_eq!((line, col), (Some(2), Some(1)));
        assert!(msg.starts_with("unknown field `b`"), "{msg}");
        assert!(!msg.contains('\n'));
        assert!(!msg.contains("line 2"), "{msg}");
    }
}
