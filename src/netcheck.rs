//! Raw network checks for `ssq doctor` and a slave's `POST /api/v1/diagnose/master`:
//! DNS resolution, a TCP connect (bound to a chosen source address), and a TLS handshake
//! that reports the certificate it saw — each run and timed on its own, so a failure names
//! the one step that failed and why (refused, timed out, not TLS, ...).
//!
//! Nothing here signs a request or writes a pin: callers compare the fingerprint with
//! their pin (`expected_pin`) and then use `client::Portal` for signed calls.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::pins::KnownNodes;
use crate::tls;

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Not `HOST:PORT`.
    #[error("{addr} is not HOST:PORT")]
    BadAddress {
        /// What was given.
        addr: String,
    },
    /// The resolver failed.
    #[error("cannot resolve {host}: {reason}")]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// The resolver answered with no address.
    #[error("{host} resolves to no address")]
    NoAddress {
        /// The name.
        host: String,
    },
    /// The source address cannot be bound.
    #[error("cannot bind to {ip}: {reason} (is it an address of this host?)")]
    Bind {
        /// The source address.
        ip: IpAddr,
        /// The OS error.
        reason: String,
    },
    /// The peer answered the SYN with a reset.
    #[error("connection to {addr} refused: nothing listens on TCP port {port} there")]
    Refused {
        /// The address dialed.
        addr: String,
        /// Its port.
        port: u16,
    },
    /// Another connect error (no route, network unreachable, ...).
    #[error("cannot connect to {addr} (TCP port {port}): {reason}")]
    Connect {
        /// The address dialed.
        addr: String,
        /// Its port.
        port: u16,
        /// The OS error.
        reason: String,
    },
    /// A step did not finish in time.
    #[error("{what} {addr} did not finish within {ms} ms{hint}")]
    Timeout {
        /// Which step: "resolving", "TCP connect to", "TLS handshake with".
        what: &'static str,
        /// The name or address.
        addr: String,
        /// The limit.
        ms: u64,
        /// What a timeout usually means for this step.
        hint: &'static str,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// The address dialed.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// Local TLS configuration (a `--ca` file) is unusable.
    #[error("{0}")]
    Config(String),
}

impl NetError {
    /// Whether the peer was never reached (refused, timed out, no route): a firewall or
    /// a daemon that is not running.
    pub fn unreachable(&self) -> bool {
        matches!(
            self,
            NetError::Refused { .. } | NetError::Connect { .. } | NetError::Timeout { .. }
        )
    }
}

/// Split `HOST:PORT` (`[v6]:PORT` for IPv6).
///
/// # Errors
/// `NetError::BadAddress`.
pub fn split_host_port(addr: &str) -> Result<(String, u16), NetError> {
    let bad = || NetError::BadAddress {
        addr: addr.to_string(),
    };
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// What a name resolved to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The addresses, in the resolver's order.
    pub addrs: Vec<SocketAddr>,
    /// True when the host was an IP literal (nothing was looked up).
    pub literal: bool,
}

/// Resolve `host` for `port` within `timeout`.
///
/// # Errors
/// `Resolve`, `NoAddress` or `Timeout`.
pub async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Resolved, NetError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Resolved {
            addrs: vec![SocketAddr::new(ip, port)],
            literal: true,
        });
    }
    let found = tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| NetError::Timeout {
            what: "resolving",
            addr: host.to_string(),
            ms: ms(timeout),
            hint: ": is the DNS server reachable from here?",
        })?
        .map_err(|e| NetError::Resolve {
            host: host.to_string(),
            reason: e.to_string(),
        })?;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for a in found {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(NetError::NoAddress {
            host: host.to_string(),
        });
    }
    Ok(Resolved {
        addrs,
        literal: false,
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Connect to the first of `addrs` that answers, from `bind` when given (an address of
/// the other family is tried unbound), all within `timeout`.
///
/// # Errors
/// `Bind`, `Refused`, `Connect` or `Timeout` — for the last address tried.
pub async fn connect(
    addrs: &[SocketAddr],
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, NetError> {
    let shown = addrs
        .first()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "(no address)".into());
    let attempt = async {
        let mut last = None;
        for &sa in addrs {
            match connect_one(sa, bind).await {
                Ok(s) => return Ok(s),
                Err(e @ NetError::Bind { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(NetError::Connect {
            addr: shown.clone(),
            port: 0,
            reason: "no address to connect to".into(),
        }))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| NetError::Timeout {
            what: "TCP connect to",
            addr: shown.clone(),
            ms: ms(timeout),
            hint: ": no answer at all, so a firewall probably drops the packets (or the host is down)",
        })?
}

async fn connect_one(sa: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, NetError> {
    let other = |e: std::io::Error| NetError::Connect {
        addr: sa.to_string(),
        port: sa.port(),
        reason: e.to_string(),
    };
    let sock = if sa.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(other)?;
    if let Some(ip) = bind {
        if ip.is_ipv4() == sa.is_ipv4() {
            sock.bind(SocketAddr::new(ip, 0))
                .map_err(|e| NetError::Bind {
                    ip,
                    reason: e.to_string(),
                })?;
        }
    }
    match sock.connect(sa).await {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(NetError::Refused {
            addr: sa.to_string(),
            port: sa.port(),
        }),
        Err(e) => Err(other(e)),
    }
}

/// What a TLS handshake showed.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    /// `sha256:<hex>` of the server certificate.
    pub fingerprint: String,
    /// The protocol version agreed, e.g. `TLSv1_3`.
    pub version: String,
}

/// Run a TLS handshake on `tcp` for `host` (any certificate is accepted and reported,
/// unless `ca` is given, which must then verify it), within `timeout`.
///
/// # Errors
/// `Tls`, `Timeout`, or `Config` for an unusable CA file.
pub async fn handshake(
    tcp: TcpStream,
    host: &str,
    ca: Option<&Path>,
    timeout: Duration,
) -> Result<TlsSeen, NetError> {
    let addr = tcp
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| host.to_string());
    let (cfg, verifier) = tls::client_config(ca).map_err(|e| NetError::Config(e.to_string()))?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| NetError::Tls {
            addr: addr.clone(),
            reason: format!("{host} is not a valid server name: {e}"),
        })?;
    let stream = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| NetError::Timeout {
        what: "TLS handshake with",
        addr: addr.clone(),
        ms: ms(timeout),
        hint: ": the port accepts connections but does not speak TLS (is it the portal's port?)",
    })?
    .map_err(|e| NetError::Tls {
        addr: addr.clone(),
        reason: e.to_string(),
    })?;
    let der = verifier.seen().ok_or_else(|| NetError::Tls {
        addr: addr.clone(),
        reason: "no certificate presented".into(),
    })?;
    let version = stream
        .get_ref()
        .1
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    Ok(TlsSeen {
        fingerprint: tls::fingerprint(&der),
        version,
    })
}

/// Where an expected fingerprint came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// Given by the caller (`--fingerprint`, the inventory).
    Given,
    /// A known_nodes file.
    KnownNodes,
}

/// The fingerprint a certificate at `addr` should have: `given` first, else the pin in
/// the known_nodes file `known_nodes`; None when neither has one.
///
/// # Errors
/// The OS error when the file exists but cannot be read.
pub fn expected_pin(
    known_nodes: &Path,
    addr: &str,
    given: Option<&str>,
) -> std::io::Result<Option<(String, PinSource)>> {
    if let Some(fp) = given {
        return Ok(Some((fp.to_string(), PinSource::Given)));
    }
    Ok(KnownNodes::load(known_nodes)?
        .get(addr)
        .map(|p| (p.fingerprint.clone(), PinSource::KnownNodes)))
}

/// Whether two fingerprints are the same (case-insensitive, as pins are compared).
pub fn same_fingerprint(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_splits() {
        assert_eq!(
            split_host_port("10.0.0.1:8888").unwrap(),
            ("10.0.0.1".to_string(), 8888)
        );
        assert_eq!(split_host_port("[::1]:7").unwrap(), ("::1".to_string(), 7));
        assert_eq!(
            split_host_port("master:1").unwrap(),
            ("master".to_string(), 1)
        );
        assert!(split_host_port("master").is_err());
        assert!(split_host_port(":1").is_err());
        assert!(split_host_port("a:99999").is_err());
    }

    #[tokio::test]
    async fn literal_is_not_looked_up() {
        let r = resolve("127.0.0.1", 9, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(r.literal);
        assert_eq!(r.addrs, vec!["127.0.0.1:9".parse().unwrap()]);
    }

    #[tokio::test]
    async fn a_closed_port_is_refused_and_names_the_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = connect(&[addr], None, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::Refused { port, .. } if port == addr.port()));
        assert!(e.unreachable());
        assert!(e.to_string().contains(&addr.port().to_string()), "{e}");
    }

    #[tokio::test]
    async fn a_plain_tcp_server_fails_the_handshake() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            if let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let tcp = connect(&[addr], None, Duration::from_secs(2))
            .await
            .unwrap();
        let e = handshake(tcp, "127.0.0.1", None, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, NetError::Tls { .. }), "{e:?}");
    }
}
