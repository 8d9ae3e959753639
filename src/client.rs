//! The portal client: HTTPS to a node's portal (bound to a chosen source address, with
//! certificate pinning and signed requests, retrying once on a stale boot id), or plain
//! HTTP over the node's admin socket (no signature; the socket's permissions and peer
//! check are the credential). Both answer through `Conn::call`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{ErrorBody, BOOT_ID_HEADER};
use crate::keys::{sha256_hex, SigningKey};
use crate::pins::{KnownNodes, Pin};
use crate::sign::{new_nonce, sign_operator, unix_now, Canonical};
use crate::tls;

/// Why a call to a node failed. `exit_code` maps each to the CLI's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address.
    #[error("nothing answers on {addr} ({reason}): is ssqd running there, and is the port open?")]
    Unreachable {
        /// The address dialed.
        addr: String,
        /// The OS error.
        reason: String,
    },
    /// The node did not answer in time.
    #[error("{addr} did not answer within {secs} s: is the node overloaded, or a firewall dropping packets?")]
    Timeout {
        /// The address dialed.
        addr: String,
        /// The limit.
        secs: u64,
    },
    /// TLS failed.
    #[error("TLS with {addr} failed: {reason} (is that an ssq portal?)")]
    Tls {
        /// The address dialed.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The node's certificate differs from the pinned one.
    #[error("the certificate of {addr} changed: pinned {pinned}, presented {presented}. If the node was reinstalled or its certificate replaced on purpose, accept it with: ssq node trust {addr}")]
    PinMismatch {
        /// The address dialed.
        addr: String,
        /// The pinned fingerprint.
        pinned: String,
        /// The presented fingerprint.
        presented: String,
    },
    /// `--strict-pins` and no pin.
    #[error("no pinned certificate for {addr} (it presents {presented}) and --strict-pins is set: give --fingerprint, an inventory fingerprint, or run ssq node trust {addr}")]
    UnknownPin {
        /// The address dialed.
        addr: String,
        /// The presented fingerprint.
        presented: String,
    },
    /// The node answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The node's error code.
        code: String,
        /// The node's message.
        message: String,
    },
    /// An answer that is not what the API says.
    #[error("unexpected answer from {addr}: {reason}")]
    Protocol {
        /// The address dialed.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// A local file problem (operator key, known_nodes, ...).
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// The CLI exit code: 2 bad input, 4 refused, 3 unreachable or timeout, 1 other.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } => 3,
            ClientError::PinMismatch { .. } | ClientError::UnknownPin { .. } => 4,
            ClientError::Api { status, .. } => match status {
                401 | 403 => 4,
                400 | 404 | 409 | 422 => 2,
                503 | 504 => 3,
                _ => 1,
            },
            _ => 1,
        }
    }

    /// A stable code for `-o json` errors.
    pub fn code(&self) -> String {
        match self {
            ClientError::Unreachable { .. } => "unreachable".into(),
            ClientError::Timeout { .. } => "timeout".into(),
            ClientError::Tls { .. } => "tls".into(),
            ClientError::PinMismatch { .. } => "certificate_changed".into(),
            ClientError::UnknownPin { .. } => "no_pin".into(),
            ClientError::Api { code, .. } => code.clone(),
            ClientError::Protocol { .. } => "protocol".into(),
            ClientError::Local(_) => "local".into(),
        }
    }
}

/// How the CLI reaches portals.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Source address for outgoing connections (`--bind`, SSQ_BIND).
    pub bind: Option<IpAddr>,
    /// A CA file to verify certificates with instead of pins.
    pub ca: Option<PathBuf>,
    /// The expected fingerprint (flag or inventory).
    pub fingerprint: Option<String>,
    /// Refuse nodes with no pin.
    pub strict_pins: bool,
    /// The known_nodes file.
    pub known_nodes: PathBuf,
    /// The operator key that signs requests.
    pub operator_key: Option<Arc<SigningKey>>,
    /// Per-call limit.
    pub timeout: Duration,
    /// The name the CLI signs as (the host name).
    pub sender: String,
    /// Accept whatever certificate is presented, reading and writing no pin (for
    /// `ssq node trust`, which shows it and then pins it itself).
    pub trust_on_connect: bool,
    /// Sign as a cluster node (sync endpoints) instead of as an operator.
    pub node_signer: Option<NodeSigner>,
}

/// The sync credential: the activation key and this node's key pair.
#[derive(Debug, Clone)]
pub struct NodeSigner {
    /// The cluster's activation key.
    pub activation: crate::keys::ActivationKey,
    /// This node's key pair.
    pub key: Arc<SigningKey>,
}

/// What happened to the pin on connect, for the CLI to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinEvent {
    /// Matched a pin (or verified by CA).
    Known,
    /// First contact: pinned now.
    Pinned(String),
}

/// An answer from a node.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

/// A signed HTTPS connection to a portal.
pub struct Portal {
    /// `host:port` as dialed (the signed authority).
    addr: String,
    /// The open HTTP/1.1 connection.
    send: SendRequest<Full<Bytes>>,
    /// sha256 hex of the server certificate.
    cert_sha256: String,
    /// The server certificate's fingerprint.
    pub fingerprint: String,
    /// The node's boot id as last seen.
    pub boot_id: String,
    /// What happened to the pin.
    pub pin_event: PinEvent,
    /// Options.
    opts: ClientOptions,
}

fn unreachable(addr: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Unreachable {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// Open a TCP connection to `addr`, from `bind` when given, within `timeout`.
///
/// # Errors
/// `Unreachable` or `Timeout`.
pub async fn tcp_connect(
    addr: &str,
    bind: Option<IpAddr>,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ClientError> {
    let fut = async {
        let mut last = None;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| unreachable(addr, format!("cannot resolve: {e}")))?
            .collect();
        for sa in addrs {
            let sock = if sa.is_ipv4() {
                tokio::net::TcpSocket::new_v4()
            } else {
                tokio::net::TcpSocket::new_v6()
            }
            .map_err(|e| unreachable(addr, e))?;
            if let Some(ip) = bind {
                if ip.is_ipv4() == sa.is_ipv4() {
                    sock.bind(SocketAddr::new(ip, 0))
                        .map_err(|e| unreachable(addr, format!("cannot bind to {ip}: {e}")))?;
                }
            }
            match sock.connect(sa).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(unreachable(
            addr,
            last.map(|e| e.to_string())
                .unwrap_or_else(|| "no address".into()),
        ))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::Timeout {
            addr: addr.to_string(),
            secs: timeout.as_secs(),
        })?
}

/// Add `:8888` when no port is given.
pub fn with_default_port(addr: &str) -> String {
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    if addr.parse::<IpAddr>().is_ok() && addr.contains(':') {
        return format!("[{addr}]:8888");
    }
    if addr
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        addr.to_string()
    } else {
        format!("{addr}:8888")
    }
}

impl Portal {
    /// Connect, handshake, check the pin (pinning on first contact unless strict).
    ///
    /// # Errors
    /// `ClientError` naming what failed and what to check.
    pub async fn connect(addr: &str, opts: &ClientOptions) -> Result<Self, ClientError> {
        let addr = with_default_port(addr);
        let tcp = tcp_connect(&addr, opts.bind, opts.timeout).await?;
        let (cfg, verifier) = tls::client_config(opts.ca.as_deref())
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(&addr)
            .to_string();
        let name = rustls::pki_types::ServerName::try_from(host)
            .map_err(|e| ClientError::Local(format!("{addr}: {e}")))?;
        let tls_err = |e: std::io::Error| ClientError::Tls {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let tls = tokio::time::timeout(
            opts.timeout,
            tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
        )
        .await
        .map_err(|_| ClientError::Timeout {
            addr: addr.clone(),
            secs: opts.timeout.as_secs(),
        })?
        .map_err(tls_err)?;
        let der = verifier.seen().ok_or_else(|| ClientError::Tls {
            addr: addr.clone(),
            reason: "no certificate presented".into(),
        })?;
        let fingerprint = tls::fingerprint(&der);
        let pin_event = if opts.ca.is_some() || opts.trust_on_connect {
            PinEvent::Known
        } else {
            check_pin(&addr, &fingerprint, opts)?
        };
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Protocol {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Portal {
            addr,
            send,
            cert_sha256: sha256_hex(&der),
            fingerprint,
            boot_id: String::new(),
            pin_event,
            opts: opts.clone(),
        })
    }

    /// The address dialed.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Send a signed request; on 409 stale boot id, learn the new one and retry once.
    ///
    /// # Errors
    /// `ClientError` for transport failures; an HTTP error status is returned as an
    /// `Answer` (see `call`).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let body = body.unwrap_or_default();
        let mut retried = false;
        loop {
            let (answer, boot) = self.send_once(method, path, &body).await?;
            if let Some(b) = boot {
                let changed = b != self.boot_id;
                self.boot_id = b;
                if answer.status == 409 && changed && !retried && method != "GET" {
                    retried = true;
                    continue;
                }
            }
            return Ok(answer);
        }
    }

    async fn send_once(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(Answer, Option<String>), ClientError> {
        let nonce = new_nonce().map_err(|e| ClientError::Local(e.to_string()))?;
        let body_sha = sha256_hex(body);
        let c = Canonical {
            method,
            authority: &self.addr,
            path_and_query: path,
            ts: unix_now(),
            nonce: &nonce,
            node: &self.opts.sender,
            boot_id: &self.boot_id,
            body_sha256: &body_sha,
            cert_sha256: &self.cert_sha256,
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.addr)
            .header("content-type", "application/json");
        if let Some(ns) = &self.opts.node_signer {
            req = req.header(
                "authorization",
                crate::sign::sign_sync(&ns.activation, &ns.key, &c).to_value(),
            );
        } else if let Some(key) = &self.opts.operator_key {
            req = req.header("authorization", sign_operator(key, &c).to_value());
        }
        let req = req
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let addr = self.addr.clone();
        let resp = send(&mut self.send, req, &addr, self.opts.timeout).await?;
        Ok(resp)
    }
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    req: hyper::Request<Full<Bytes>>,
    addr: &str,
    timeout: Duration,
) -> Result<(Answer, Option<String>), ClientError> {
    let proto = |e: String| ClientError::Protocol {
        addr: addr.to_string(),
        reason: e,
    };
    let fut = async {
        sender.ready().await.map_err(|e| proto(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| proto(e.to_string()))?;
        let status = resp.status().as_u16();
        let boot = resp
            .headers()
            .get(BOOT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| proto(e.to_string()))?
            .to_bytes();
        Ok((Answer { status, body }, boot))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::Timeout {
            addr: addr.to_string(),
            secs: timeout.as_secs(),
        })?
}

fn check_pin(addr: &str, presented: &str, opts: &ClientOptions) -> Result<PinEvent, ClientError> {
    let mut known =
        KnownNodes::load(&opts.known_nodes).map_err(|e| ClientError::Local(e.to_string()))?;
    let expected = opts
        .fingerprint
        .clone()
        .or_else(|| known.get(addr).map(|p| p.fingerprint.clone()));
    match expected {
        Some(pinned) if pinned.eq_ignore_ascii_case(presented) => Ok(PinEvent::Known),
        Some(pinned) => Err(ClientError::PinMismatch {
            addr: addr.to_string(),
            pinned,
            presented: presented.to_string(),
        }),
        None if opts.strict_pins => Err(ClientError::UnknownPin {
            addr: addr.to_string(),
            presented: presented.to_string(),
        }),
        None => {
            known
                .set(Pin {
                    address: addr.to_string(),
                    fingerprint: presented.to_string(),
                    node: None,
                })
                .map_err(|e| ClientError::Local(e.to_string()))?;
            Ok(PinEvent::Pinned(presented.to_string()))
        }
    }
}

/// Plain HTTP over a node's admin socket.
pub struct Admin {
    /// data_dir/admin.sock.
    path: PathBuf,
    /// The open connection.
    send: SendRequest<Full<Bytes>>,
    /// Per-call limit.
    timeout: Duration,
}

impl Admin {
    /// Connect to the socket.
    ///
    /// # Errors
    /// `Unreachable` when no daemon listens there.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let shown = path.display().to_string();
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| unreachable(&shown, e))?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol {
                addr: shown,
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Admin {
            path: path.to_path_buf(),
            send,
            timeout,
        })
    }

    /// Send a request.
    ///
    /// # Errors
    /// `ClientError` for transport failures.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ClientError> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "admin.sock")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let shown = self.path.display().to_string();
        Ok(send(&mut self.send, req, &shown, self.timeout).await?.0)
    }
}

/// A connection to a node: its portal, or its admin socket.
pub enum Conn {
    /// HTTPS, signed.
    Portal(Box<Portal>),
    /// The admin socket.
    Admin(Admin),
}

impl Conn {
    /// Send a request and decode a JSON answer; an error status becomes
    /// `ClientError::Api` with the node's code and message.
    ///
    /// # Errors
    /// `ClientError`.
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let bytes = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ClientError::Local(e.to_string()))?),
            None => None,
        };
        let (answer, addr) = match self {
            Conn::Portal(p) => (p.request(method, path, bytes).await?, p.addr.clone()),
            Conn::Admin(a) => (
                a.request(method, path, bytes).await?,
                a.path.display().to_string(),
            ),
        };
        decode(answer, &addr)
    }
}

/// Decode an answer: JSON body on 2xx, `ClientError::Api` otherwise.
///
/// # Errors
/// `ClientError::Api` or `ClientError::Protocol`.
pub fn decode<T: DeserializeOwned>(answer: Answer, addr: &str) -> Result<T, ClientError> {
    if (200..300).contains(&answer.status) {
        return serde_json::from_slice(&answer.body).map_err(|e| ClientError::Protocol {
            addr: addr.to_string(),
            reason: format!("bad JSON: {e}"),
        });
    }
    match serde_json::from_slice::<ErrorBody>(&answer.body) {
        Ok(e) => Err(ClientError::Api {
            status: answer.status,
            code: e.error,
            message: e.message,
        }),
        Err(_) => Err(ClientError::Api {
            status: answer.status,
            code: "http_error".into(),
            message: format!(
                "{addr} answered HTTP {}: {}",
                answer.status,
                String::from_utf8_lossy(&answer.body).trim()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port_is_added() {
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:8888");
        assert_eq!(with_default_port("10.0.0.1:9"), "10.0.0.1:9");
        assert_eq!(with_default_port("master"), "master:8888");
        assert_eq!(with_default_port("::1"), "[::1]:8888");
        assert_eq!(with_default_port("[::1]:7"), "[::1]:7");
    }

    #[test]
    fn exit_codes_follow_the_design() {
        let api = |status| ClientError::Api {
            status,
            code: "x".into(),
            message: "m".into(),
        };
        assert_eq!(api(401).exit_code(), 4);
        assert_eq!(api(403).exit_code(), 4);
        assert_eq!(api(400).exit_code(), 2);
        assert_eq!(
            ClientError::Unreachable {
                addr: "a".into(),
                reason: "r".into()
            }
            .exit_code(),
            3
        );
    }
}
