//! The `limits` section: its defaults, its allowed ranges, and the check that turns it
//! into the [`EffectiveLimits`] a proxy applies.

use std::time::Duration;

use super::model::Limits;
use super::validate::Issues;
use super::Issue;

/// The limits a proxy applies: the `limits` section with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EffectiveLimits {
    /// Time a client has to send the request head.
    pub header_read_timeout: Duration,
    /// Time a connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Time to wait for an upstream TCP connection.
    pub upstream_connect_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: u64,
    /// Concurrent connections from one client address.
    pub max_connections_per_client: u64,
    /// Concurrent client connections in total.
    pub max_connections: u64,
}

impl Default for EffectiveLimits {
    fn default() -> Self {
        EffectiveLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_connections_per_client: 1024,
            max_connections: 8192,
        }
    }
}

/// One duration limit: parsed, and within `lo..=hi`.
fn duration(
    is: &mut Issues<'_>,
    field: &str,
    value: Option<&String>,
    default: Duration,
    (lo, hi): (Duration, Duration),
) -> Duration {
    let Some(text) = value else { return default };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d >= lo && d <= hi => d,
        Ok(_) => {
            let (lo, hi) = (
                humantime::format_duration(lo),
                humantime::format_duration(hi),
            );
            is.add(
                None,
                Some(field),
                format!("\"{text}\" is out of range ({lo} to {hi})"),
            );
            default
        }
        Err(e) => {
            is.add(
                None,
                Some(field),
                format!("\"{text}\" is not a duration like \"10s\": {e}"),
            );
            default
        }
    }
}

/// One count limit within `lo..=hi`.
fn count(
    is: &mut Issues<'_>,
    field: &str,
    value: Option<u64>,
    default: u64,
    lo: u64,
    hi: u64,
) -> u64 {
    match value {
        None => default,
        Some(v) if (lo..=hi).contains(&v) => v,
        Some(v) => {
            is.add(
                None,
                Some(field),
                format!("{v} is out of range ({lo} to {hi})"),
            );
            default
        }
    }
}

/// Checks the `limits` section (issues and warnings are added) and fills in defaults.
pub(crate) fn check_limits(
    limits: Option<&Limits>,
    issues: &mut Vec<Issue>,
    warnings: &mut Vec<String>,
) -> EffectiveLimits {
    let d = EffectiveLimits::default();
    let Some(l) = limits else { return d };
    let mut is = Issues {
        out: issues,
        section: "limits",
    };
    let secs = Duration::from_secs;
    let out = EffectiveLimits {
        header_read_timeout: duration(
            &mut is,
            "header_read_timeout",
            l.header_read_timeout.as_ref(),
            d.header_read_timeout,
            (secs(1), secs(300)),
        ),
        idle_timeout: duration(
            &mut is,
            "idle_timeout",
            l.idle_timeout.as_ref(),
            d.idle_timeout,
            (secs(1), secs(86_400)),
        ),
        upstream_connect_timeout: duration(
            &mut is,
            "upstream_connect_timeout",
            l.upstream_connect_timeout.as_ref(),
            d.upstream_connect_timeout,
            (Duration::from_millis(100), secs(300)),
        ),
        max_header_bytes: count(
            &mut is,
            "max_header_bytes",
            l.max_header_bytes,
            d.max_header_bytes,
            1024,
            1 << 20,
        ),
        max_connections_per_client: count(
            &mut is,
            "max_connections_per_client",
            l.max_connections_per_client,
            d.max_connections_per_client,
            1,
            1_000_000,
        ),
        max_connections: count(
            &mut is,
            "max_connections",
            l.max_connections,
            d.max_connections,
            1,
            1_000_000,
        ),
    };
    if out.max_connections_per_client > out.max_connections {
        warnings.push(format!(
            "limits: max_connections_per_client ({}) is above max_connections ({})",
            out.max_connections_per_client, out.max_connections
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_ranges() {
        let (mut issues, mut warnings) = (Vec::new(), Vec::new());
        assert_eq!(
            check_limits(None, &mut issues, &mut warnings),
            EffectiveLimits::default()
        );
        assert!(EffectiveLimits::default().max_connections_per_client >= 1024);
        let l = Limits {
            upstream_connect_timeout: Some("250ms".into()),
            max_header_bytes: Some(2 << 20),
            ..Limits::default()
        };
        let got = check_limits(Some(&l), &mut issues, &mut warnings);
        assert_eq!(got.upstream_connect_timeout, Duration::from_millis(250));
        assert_eq!(issues.len(), 1);
        assert!(issues[0]
            .to_string()
            .starts_with("limits: max_header_bytes: 2097152 is out of range"));
        assert!(warnings.is_empty());
    }
}
