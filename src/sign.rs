//! Request signing for the Configuration Portal: the canonical string, the
//! `Authorization: SSQ1 ...` header, and the pure checks a node makes of it.
//!
//! Canonical string (one field a line, no trailing newline):
//! `method \n host:port \n path?query \n ts \n nonce \n node \n boot_id \n sha256(body) \n
//! sha256(server certificate)`; both hashes are lower-case hex.
//!
//! Two credentials:
//! - operator: `kid` is the operator key's fingerprint, `sig` its Ed25519 signature;
//!   good for every config endpoint (sync endpoints take a node credential).
//! - sync (node to node): `kid` is the activation key's id, `mac` its HMAC, `sig` the
//!   sending node's Ed25519 signature and `pub` that node's public key; good for sync
//!   endpoints only.
//!
//! The header's fields are `name=value` pairs separated by commas; values never contain a
//! comma. New fields may be added; unknown fields are ignored.

use std::collections::{HashMap, VecDeque};

use crate::keys::{random_bytes, ActivationKey, PublicKey, SigningKey};

/// How far a request's time may be from the node's clock, in seconds.
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a signed request was refused. Each reason has its own message; none carries a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No Authorization header.
    #[error("missing Authorization header: portal requests must be signed (use ssq, with an operator key)")]
    Missing,
    /// The header does not parse.
    #[error("malformed Authorization header: {0}")]
    Malformed(String),
    /// An operator key the node does not list.
    #[error("unknown operator key {0}: add its .pub line to the node's data_dir/operators (ssq --local --config FILE operator add FILE.pub)")]
    UnknownOperator(String),
    /// A MAC made with another activation key.
    #[error("activation key mismatch: the request's key id is {theirs}, this node's is {ours}; every node needs the same activation key")]
    ActivationMismatch {
        /// The caller's key id.
        theirs: String,
        /// This node's key id.
        ours: String,
    },
    /// The node has no activation key to check a sync credential with.
    #[error("this node has no activation key loaded")]
    NoActivationKey,
    /// A MAC that does not verify under the right key id.
    #[error("bad activation-key MAC: the request was altered or forged")]
    BadMac,
    /// An Ed25519 signature that does not verify.
    #[error("bad signature: the request was altered in transit, or signed for another node or certificate")]
    BadSignature,
    /// Too far from the node's clock.
    #[error("stale timestamp: the request is {skew} s off this node's clock (limit {MAX_SKEW_SECS} s); check both clocks")]
    StaleTimestamp {
        /// Seconds between the request's ts and now.
        skew: i64,
    },
    /// A nonce seen before within the window.
    #[error("replayed nonce: this request was already received once")]
    ReplayedNonce,
    /// Signed for an earlier boot of the node.
    #[error(
        "stale boot id: the request was signed for boot {theirs}, the node now runs boot {current}"
    )]
    StaleBootId {
        /// The boot id the request was signed for.
        theirs: String,
        /// The node's current boot id.
        current: String,
    },
    /// A sync credential on a config endpoint.
    #[error("a sync credential (activation key) cannot call a config endpoint: sign with an operator key")]
    SyncOnConfig,
}

impl SignError {
    /// The HTTP status a node answers with.
    pub fn status(&self) -> u16 {
        match self {
            SignError::StaleBootId { .. } => 409,
            SignError::SyncOnConfig => 403,
            _ => 401,
        }
    }

    /// A stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            SignError::Missing => "unsigned",
            SignError::Malformed(_) => "malformed_authorization",
            SignError::UnknownOperator(_) => "unknown_operator_key",
            SignError::ActivationMismatch { .. } => "activation_key_mismatch",
            SignError::NoActivationKey => "no_activation_key",
            SignError::BadMac => "bad_mac",
            SignError::BadSignature => "bad_signature",
            SignError::StaleTimestamp { .. } => "stale_timestamp",
            SignError::ReplayedNonce => "replayed_nonce",
            SignError::StaleBootId { .. } => "stale_boot_id",
            SignError::SyncOnConfig => "sync_credential_on_config_endpoint",
        }
    }
}

/// What a request is, for signing.
#[derive(Debug, Clone)]
pub struct Canonical<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// `host:port` the client addressed.
    pub authority: &'a str,
    /// Path and query.
    pub path_and_query: &'a str,
    /// Unix seconds.
    pub ts: i64,
    /// Random hex, unique per request.
    pub nonce: &'a str,
    /// The sender's node name (an operator's host name for the CLI).
    pub node: &'a str,
    /// The server's boot id as the client knows it (empty if none yet).
    pub boot_id: &'a str,
    /// sha256 hex of the body.
    pub body_sha256: &'a str,
    /// sha256 hex of the server's DER certificate.
    pub cert_sha256: &'a str,
}

impl Canonical<'_> {
    /// The string that is signed.
    pub fn string(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.method,
            self.authority,
            self.path_and_query,
            self.ts,
            self.nonce,
            self.node,
            self.boot_id,
            self.body_sha256,
            self.cert_sha256
        )
    }
}

/// The parsed `Authorization: SSQ1 ...` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthHeader {
    /// Key id: operator fingerprint, or activation key id.
    pub kid: String,
    /// Sender's name.
    pub node: String,
    /// Unix seconds.
    pub ts: i64,
    /// Random hex.
    pub nonce: String,
    /// Ed25519 signature, base64url.
    pub sig: String,
    /// Activation-key HMAC (sync credential only).
    pub mac: Option<String>,
    /// The signing node's public key, base64 (sync credential only).
    pub pubkey: Option<String>,
    /// The boot id the request was signed for (empty: none known yet).
    pub boot: String,
}

impl AuthHeader {
    /// Parse the header value.
    ///
    /// # Errors
    /// `SignError::Malformed` naming what is missing.
    pub fn parse(value: &str) -> Result<Self, SignError> {
        let rest = value
            .strip_prefix("SSQ1 ")
            .ok_or_else(|| SignError::Malformed("expected the SSQ1 scheme".into()))?;
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for part in rest.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| SignError::Malformed(format!("field `{part}` has no value")))?;
            fields.insert(k, v);
        }
        let need = |k: &str| -> Result<String, SignError> {
            fields
                .get(k)
                .map(|v| v.to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| SignError::Malformed(format!("field `{k}` is missing")))
        };
        let ts = need("ts")?
            .parse::<i64>()
            .map_err(|_| SignError::Malformed("ts is not a number".into()))?;
        Ok(AuthHeader {
            kid: need("kid")?,
            node: need("node")?,
            ts,
            nonce: need("nonce")?,
            sig: need("sig")?,
            mac: fields.get("mac").map(|v| v.to_string()),
            pubkey: fields.get("pub").map(|v| v.to_string()),
            boot: fields
                .get("boot")
                .map(|v| v.to_string())
                .unwrap_or_default(),
        })
    }

    /// The header value.
    pub fn to_value(&self) -> String {
        let mut s = format!(
            "SSQ1 kid={},node={},ts={},nonce={},sig={}",
            self.kid, self.node, self.ts, self.nonce, self.sig
        );
        if let Some(mac) = &self.mac {
            s.push_str(&format!(",mac={mac}"));
        }
        if let Some(p) = &self.pubkey {
            s.push_str(&format!(",pub={p}"));
        }
        if !self.boot.is_empty() {
            s.push_str(&format!(",boot={}", self.boot));
        }
        s
    }
}

/// A fresh 128-bit nonce, hex.
///
/// # Errors
/// When the system random source fails.
pub fn new_nonce() -> Result<String, crate::keys::KeyError> {
    Ok(crate::keys::hex(&random_bytes::<16>()?))
}

/// Sign a request as an operator.
pub fn sign_operator(key: &SigningKey, c: &Canonical<'_>) -> AuthHeader {
    AuthHeader {
        kid: key.public().fingerprint(),
        node: c.node.to_string(),
        ts: c.ts,
        nonce: c.nonce.to_string(),
        sig: key.sign(c.string().as_bytes()),
        mac: None,
        pubkey: None,
        boot: c.boot_id.to_string(),
    }
}

/// Sign a request as a node (the sync credential): activation-key MAC plus node signature.
pub fn sign_sync(ak: &ActivationKey, node_key: &SigningKey, c: &Canonical<'_>) -> AuthHeader {
    let s = c.string();
    AuthHeader {
        kid: ak.key_id().to_string(),
        node: c.node.to_string(),
        ts: c.ts,
        nonce: c.nonce.to_string(),
        sig: node_key.sign(s.as_bytes()),
        mac: Some(ak.mac(s.as_bytes())),
        pubkey: Some(base64_url(&node_key.public())),
        boot: c.boot_id.to_string(),
    }
}

fn base64_url(k: &PublicKey) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k.0)
}

/// Who signed a request that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An operator listed in data_dir/operators.
    Operator {
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// A cluster node holding the activation key.
    Node {
        /// The node's name.
        node: String,
        /// Its Ed25519 public key (to pin).
        key: PublicKey,
    },
}

/// Check a request's credential (not its time, nonce or boot id: see `check_fresh`).
///
/// # Errors
/// The `SignError` that names why.
pub fn verify(
    h: &AuthHeader,
    canonical: &str,
    operators: &[PublicKey],
    activation: Option<&ActivationKey>,
) -> Result<Caller, SignError> {
    if let Some(mac) = &h.mac {
        let ak = activation.ok_or(SignError::NoActivationKey)?;
        if h.kid != ak.key_id() {
            return Err(SignError::ActivationMismatch {
                theirs: h.kid.clone(),
                ours: ak.key_id().to_string(),
            });
        }
        if !ak.verify_mac(canonical.as_bytes(), mac) {
            return Err(SignError::BadMac);
        }
        let pk = h
            .pubkey
            .as_deref()
            .ok_or_else(|| SignError::Malformed("field `pub` is missing".into()))?;
        let key = {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(pk)
                .map_err(|_| SignError::Malformed("pub is not base64url".into()))?;
            let arr: [u8; 32] = bytes
                .try_into()
                .map_err(|_| SignError::Malformed("pub is not 32 bytes".into()))?;
            PublicKey(arr)
        };
        if !key.verify(canonical.as_bytes(), &h.sig) {
            return Err(SignError::BadSignature);
        }
        return Ok(Caller::Node {
            node: h.node.clone(),
            key,
        });
    }
    let op = operators
        .iter()
        .find(|k| k.fingerprint() == h.kid)
        .ok_or_else(|| SignError::UnknownOperator(h.kid.clone()))?;
    if !op.verify(canonical.as_bytes(), &h.sig) {
        return Err(SignError::BadSignature);
    }
    Ok(Caller::Operator {
        fingerprint: h.kid.clone(),
    })
}

/// Remembers nonces for the freshness window, so a captured request cannot be replayed.
#[derive(Debug, Default)]
pub struct NonceCache {
    /// Nonces seen, with their request time.
    seen: HashMap<String, i64>,
    /// Insertion order, for expiry.
    order: VecDeque<(i64, String)>,
}

/// The most nonces remembered; past it the oldest are forgotten early (a request that old
/// within the window is refused as stale anyway only after the window, so the cap is high).
const NONCE_CAP: usize = 1_000_000;

impl NonceCache {
    /// Check the time and the nonce of a request, and remember the nonce.
    ///
    /// # Errors
    /// `StaleTimestamp` or `ReplayedNonce`.
    pub fn check_fresh(&mut self, ts: i64, nonce: &str, now: i64) -> Result<(), SignError> {
        let skew = ts.saturating_sub(now);
        if ts.abs_diff(now) > MAX_SKEW_SECS.unsigned_abs() {
            return Err(SignError::StaleTimestamp { skew });
        }
        while let Some((t, _)) = self.order.front() {
            if *t < now - MAX_SKEW_SECS || self.order.len() >= NONCE_CAP {
                if let Some((_, n)) = self.order.pop_front() {
                    self.seen.remove(&n);
                }
            } else {
                break;
            }
        }
        if self.seen.contains_key(nonce) {
            return Err(SignError::ReplayedNonce);
        }
        self.seen.insert(nonce.to_string(), ts);
        self.order.push_back((ts, nonce.to_string()));
        Ok(())
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon<'a>(nonce: &'a str, boot: &'a str) -> Canonical<'a> {
        Canonical {
            method: "PUT",
            authority: "127.0.0.2:8888",
            path_and_query: "/api/v1/access",
            ts: 1000,
            nonce,
            node: "ops",
            boot_id: boot,
            body_sha256: "00",
            cert_sha256: "11",
        }
    }

    fn key(dir: &std::path::Path, name: &str) -> SigningKey {
        SigningKey::create(&dir.join(name), None).unwrap()
    }

    #[test]
    fn operator_signature_verifies_and_binds_every_field() {
        let d = tempfile::tempdir().unwrap();
        let k = key(d.path(), "op");
        let c = canon("n1", "b1");
        let h = sign_operator(&k, &c);
        let parsed = AuthHeader::parse(&h.to_value()).unwrap();
        assert_eq!(parsed, h);
        let ok = verify(&parsed, &c.string(), &[k.public()], None).unwrap();
        assert_eq!(
            ok,
            Caller::Operator {
                fingerprint: k.public().fingerprint()
            }
        );
        // Another boot id, cert or path: the signature no longer verifies.
        for other in [
            canon("n1", "b2").string(),
            Canonical {
                cert_sha256: "22",
                ..canon("n1", "b1")
            }
            .string(),
            Canonical {
                path_and_query: "/api/v1/restart",
                ..canon("n1", "b1")
            }
            .string(),
        ] {
            assert_eq!(
                verify(&parsed, &other, &[k.public()], None),
                Err(SignError::BadSignature)
            );
        }
    }

    #[test]
    fn unknown_operator_names_fingerprint() {
        let d = tempfile::tempdir().unwrap();
        let k = key(d.path(), "op");
        let other = key(d.path(), "other");
        let c = canon("n1", "b1");
        let h = sign_operator(&k, &c);
        let e = verify(&h, &c.string(), &[other.public()], None).unwrap_err();
        assert_eq!(e, SignError::UnknownOperator(k.public().fingerprint()));
        assert!(e.to_string().contains(&k.public().fingerprint()));
    }

    #[test]
    fn sync_credential_checks_key_id_mac_and_signature() {
        let d = tempfile::tempdir().unwrap();
        let nk = key(d.path(), "node");
        let ak = ActivationKey::from_secret(&[1u8; 32]);
        let wrong = ActivationKey::from_secret(&[2u8; 32]);
        let c = canon("n1", "b1");
        let h = sign_sync(&ak, &nk, &c);
        let caller = verify(&h, &c.string(), &[], Some(&ak)).unwrap();
        assert_eq!(
            caller,
            Caller::Node {
                node: "ops".into(),
                key: nk.public()
            }
        );
        let e = verify(&h, &c.string(), &[], Some(&wrong)).unwrap_err();
        assert!(matches!(e, SignError::ActivationMismatch { .. }));
        assert!(e.to_string().starts_with("activation key mismatch"));
        let mut forged = h.clone();
        forged.mac = Some(wrong.mac(c.string().as_bytes()));
        assert_eq!(
            verify(&forged, &c.string(), &[], Some(&ak)),
            Err(SignError::BadMac)
        );
        let other_node = key(d.path(), "n2");
        let mut swapped = h.clone();
        swapped.sig = other_node.sign(c.string().as_bytes());
        assert_eq!(
            verify(&swapped, &c.string(), &[], Some(&ak)),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn nonce_cache_refuses_replay_and_stale() {
        let mut n = NonceCache::default();
        n.check_fresh(1000, "a", 1000).unwrap();
        assert_eq!(
            n.check_fresh(1000, "a", 1001),
            Err(SignError::ReplayedNonce)
        );
        assert!(matches!(
            n.check_fresh(1000, "b", 1000 + MAX_SKEW_SECS + 1),
            Err(SignError::StaleTimestamp { .. })
        ));
        n.check_fresh(1010, "c", 1010).unwrap();
        // Extreme times are refused, never overflow.
        assert!(matches!(
            n.check_fresh(i64::MIN, "d", i64::MAX),
            Err(SignError::StaleTimestamp { .. })
        ));
        // After the window the old nonce is forgotten, but its time is then stale too.
        assert!(matches!(
            n.check_fresh(1000, "a", 2000),
            Err(SignError::StaleTimestamp { .. })
        ));
    }

    #[test]
    fn malformed_headers() {
        assert!(AuthHeader::parse("Bearer x").is_err());
        assert!(AuthHeader::parse("SSQ1 kid=a,node=b,ts=x,nonce=n,sig=s").is_err());
        assert!(AuthHeader::parse("SSQ1 kid=a,node=b,ts=1,nonce=n").is_err());
        assert!(AuthHeader::parse("SSQ1 garbage").is_err());
    }
}
