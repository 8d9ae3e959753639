//! Key material: the cluster's activation key (membership, HMAC), and Ed25519 key pairs
//! for nodes and operators (signatures), with their file formats and fingerprints.
//!
//! Files:
//! - activation key: one line `ssq-activation-key-v1 <64 hex>`, mode 0600;
//! - private Ed25519 key (node.key, operator.key): one line `ssq-ed25519-private-v1
//!   <base64 PKCS#8>`, mode 0600;
//! - public key line (operator.key.pub, a line of data_dir/operators):
//!   `ssq-ed25519 <base64 32-byte key> [comment]`.
//!
//! Key ids: an Ed25519 key is named by its fingerprint `SHA256:<base64 of sha256(key)>`;
//! the activation key by `ak:<hex>`, an HKDF output (label `ssq key id`) that reveals
//! nothing of the secret, so two nodes' keys can be compared without the key itself.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use ring::{hkdf, hmac, rand as ringrand};

const ACTIVATION_TAG: &str = "ssq-activation-key-v1";
const PRIVATE_TAG: &str = "ssq-ed25519-private-v1";
const PUBLIC_TAG: &str = "ssq-ed25519";

/// Errors from reading, writing or using key material. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file could not be written.
    #[error("cannot write key file {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file exists already and is never overwritten.
    #[error("{0} exists already; refusing to overwrite a key (remove it first if you mean to replace it)")]
    Exists(PathBuf),
    /// The file's content is not a key of the expected kind.
    #[error("{path} is not {what}: {reason}")]
    Format {
        /// The file (or a description of the input).
        path: String,
        /// The kind of key expected.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The system random source failed.
    #[error("the system random source failed")]
    Random,
}

/// Fill a buffer with random bytes from the system source.
///
/// # Errors
/// `KeyError::Random` when the OS refuses.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    ringrand::generate::<[u8; N]>(&ringrand::SystemRandom::new())
        .map(|r| r.expose())
        .map_err(|_| KeyError::Random)
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Decode lower- or upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

/// SHA-256 of bytes, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Create a file that must not exist yet, mode 0600, and write `content` to it (fsynced).
fn write_secret_file(path: &Path, content: &str) -> Result<(), KeyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(path.to_path_buf())
            } else {
                KeyError::Write {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
    f.write_all(content.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| KeyError::Write {
            path: path.to_path_buf(),
            source: e,
        })
}

fn read_file(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|e| KeyError::Read {
        path: path.to_path_buf(),
        source: e,
    })
}

/// An HKDF output length, as ring wants it.
struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The cluster's shared 32-byte secret.
#[derive(Clone)]
pub struct ActivationKey {
    /// The HMAC key derived with the label `ssq portal v1`.
    mac_key: hmac::Key,
    /// The public key id derived with the label `ssq key id`.
    id: String,
}

impl fmt::Debug for ActivationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActivationKey({})", self.id)
    }
}

impl ActivationKey {
    /// Derive the HMAC key and key id from the secret.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ssq").extract(secret);
        let derive = |label: &[u8]| -> [u8; 32] {
            let mut out = [0u8; 32];
            let labels = [label];
            // Expanding 32 bytes from SHA-256 HKDF cannot fail (limit is 255*32).
            if let Ok(okm) = prk.expand(&labels, Len(32)) {
                let _ = okm.fill(&mut out);
            }
            out
        };
        let mac = derive(b"ssq portal v1");
        let id = derive(b"ssq key id");
        ActivationKey {
            mac_key: hmac::Key::new(hmac::HMAC_SHA256, &mac),
            id: format!("ak:{}", hex(&id[..8])),
        }
    }

    /// Parse the key file's content.
    ///
    /// # Errors
    /// `KeyError::Format` when it is not an activation key.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyError> {
        let bad = |reason: &str| KeyError::Format {
            path: origin.to_string(),
            what: "an ssq activation key",
            reason: reason.to_string(),
        };
        let mut parts = text.split_whitespace();
        if parts.next() != Some(ACTIVATION_TAG) {
            return Err(bad(&format!(
                "expected a line starting with {ACTIVATION_TAG} (create one with: ssq key new)"
            )));
        }
        let hexkey = parts.next().ok_or_else(|| bad("the key is missing"))?;
        let bytes = unhex(hexkey).ok_or_else(|| bad("the key is not hex"))?;
        let secret: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("the key must be 32 bytes (64 hex digits)"))?;
        Ok(Self::from_secret(&secret))
    }

    /// Read an activation key file.
    ///
    /// # Errors
    /// `KeyError::Read` or `KeyError::Format`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Self::parse(&read_file(path)?, &path.display().to_string())
    }

    /// Create a new random key in `path` (0600); never overwrites.
    ///
    /// # Errors
    /// `KeyError::Exists`, `KeyError::Write` or `KeyError::Random`.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let secret = random_bytes::<32>()?;
        write_secret_file(path, &format!("{ACTIVATION_TAG} {}\n", hex(&secret)))?;
        Ok(Self::from_secret(&secret))
    }

    /// The key id (`ak:<hex>`), safe to show and log.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// HMAC-SHA256 of `msg` with the derived key, base64url.
    pub fn mac(&self, msg: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.mac_key, msg).as_ref())
    }

    /// Check a MAC in constant time.
    pub fn verify_mac(&self, msg: &[u8], mac: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(mac) {
            Ok(tag) => hmac::verify(&self.mac_key, msg, &tag).is_ok(),
            Err(_) => false,
        }
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// `SHA256:<base64 without padding>` of the key, as SSH shows fingerprints.
    pub fn fingerprint(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        format!("SHA256:{}", STANDARD_NO_PAD.encode(d.as_ref()))
    }

    /// The base64 form used on the wire and in files.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Parse the base64 form.
    ///
    /// # Errors
    /// `KeyError::Format` when it is not 32 bytes of base64.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|e| KeyError::Format {
            path: "public key".into(),
            what: "an Ed25519 public key",
            reason: e.to_string(),
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Format {
            path: "public key".into(),
            what: "an Ed25519 public key",
            reason: "it must be 32 bytes".into(),
        })?;
        Ok(PublicKey(key))
    }

    /// The line of a `.pub` file and of data_dir/operators.
    pub fn to_line(&self, comment: &str) -> String {
        if comment.is_empty() {
            format!("{PUBLIC_TAG} {}", self.to_base64())
        } else {
            format!("{PUBLIC_TAG} {} {comment}", self.to_base64())
        }
    }

    /// Parse a public key line; returns the key and its comment.
    ///
    /// # Errors
    /// `KeyError::Format` when the line is not `ssq-ed25519 <base64> [comment]`.
    pub fn parse_line(line: &str) -> Result<(Self, String), KeyError> {
        let mut parts = line.trim().splitn(3, char::is_whitespace);
        if parts.next() != Some(PUBLIC_TAG) {
            return Err(KeyError::Format {
                path: "public key line".into(),
                what: "an ssq public key line",
                reason: format!("expected `{PUBLIC_TAG} <base64> [comment]`"),
            });
        }
        let key = Self::from_base64(parts.next().unwrap_or(""))?;
        Ok((key, parts.next().unwrap_or("").trim().to_string()))
    }

    /// Verify a base64url signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(sig) {
            Ok(sig) => UnparsedPublicKey::new(&ED25519, &self.0)
                .verify(msg, &sig)
                .is_ok(),
            Err(_) => false,
        }
    }
}

/// An Ed25519 key pair (a node's or an operator's).
pub struct SigningKey {
    /// The ring key pair.
    pair: Ed25519KeyPair,
    /// Its public half.
    public: PublicKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.fingerprint())
    }
}

impl SigningKey {
    fn from_pkcs8(pkcs8: &[u8], origin: &str) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| KeyError::Format {
            path: origin.to_string(),
            what: "an ssq Ed25519 private key",
            reason: e.to_string(),
        })?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(SigningKey {
            pair,
            public: PublicKey(public),
        })
    }

    fn generate() -> Result<(Self, String), KeyError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&ringrand::SystemRandom::new())
            .map_err(|_| KeyError::Random)?;
        let line = format!("{PRIVATE_TAG} {}\n", STANDARD.encode(doc.as_ref()));
        Ok((Self::from_pkcs8(doc.as_ref(), "new key")?, line))
    }

    /// Read a private key file.
    ///
    /// # Errors
    /// `KeyError::Read` or `KeyError::Format`.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_file(path)?;
        let origin = path.display().to_string();
        let mut parts = text.split_whitespace();
        if parts.next() != Some(PRIVATE_TAG) {
            return Err(KeyError::Format {
                path: origin,
                what: "an ssq Ed25519 private key",
                reason: format!(
                    "expected a line starting with {PRIVATE_TAG} (create one with: ssq key new --operator)"
                ),
            });
        }
        let der = STANDARD
            .decode(parts.next().unwrap_or(""))
            .map_err(|e| KeyError::Format {
                path: origin.clone(),
                what: "an ssq Ed25519 private key",
                reason: e.to_string(),
            })?;
        Self::from_pkcs8(&der, &origin)
    }

    /// Create a new key pair in `path` (0600) and, if `pub_comment` is given, its public
    /// line in `path.pub`. Never overwrites.
    ///
    /// # Errors
    /// `KeyError::Exists`, `KeyError::Write` or `KeyError::Random`.
    pub fn create(path: &Path, pub_comment: Option<&str>) -> Result<Self, KeyError> {
        let (key, line) = Self::generate()?;
        if let Some(comment) = pub_comment {
            let pub_path = pub_path(path);
            if pub_path.exists() {
                return Err(KeyError::Exists(pub_path));
            }
            write_secret_file(path, &line)?;
            std::fs::write(&pub_path, format!("{}\n", key.public.to_line(comment))).map_err(
                |e| KeyError::Write {
                    path: pub_path.clone(),
                    source: e,
                },
            )?;
        } else {
            write_secret_file(path, &line)?;
        }
        Ok(key)
    }

    /// Load the key at `path`, creating it first if there is none (a node's key).
    ///
    /// # Errors
    /// As `load` and `create`.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::create(path, None) {
            Ok(k) => Ok(k),
            Err(KeyError::Exists(_)) => Self::load(path),
            Err(e) => Err(e),
        }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// Sign `msg`; base64url.
    pub fn sign(&self, msg: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.pair.sign(msg).as_ref())
    }
}

/// `FILE.pub` beside a private key file.
pub fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".pub");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_key_round_trip_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.key");
        let k = ActivationKey::create(&p).unwrap();
        let again = ActivationKey::load(&p).unwrap();
        assert_eq!(k.key_id(), again.key_id());
        assert!(k.key_id().starts_with("ak:"));
        let mode = std::fs::metadata(&p).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        assert!(matches!(
            ActivationKey::create(&p),
            Err(KeyError::Exists(_))
        ));
        let other = ActivationKey::from_secret(&[7u8; 32]);
        assert_ne!(other.key_id(), k.key_id());
        let mac = k.mac(b"hello");
        assert!(again.verify_mac(b"hello", &mac));
        assert!(!again.verify_mac(b"hellp", &mac));
        assert!(!other.verify_mac(b"hello", &mac));
        assert!(!k.key_id().contains(&hex(&[7u8; 32])));
    }

    #[test]
    fn activation_key_format_errors() {
        assert!(ActivationKey::parse("nonsense", "x").is_err());
        assert!(ActivationKey::parse("ssq-activation-key-v1 abcd", "x").is_err());
        assert!(ActivationKey::parse("ssq-activation-key-v1 zz", "x").is_err());
    }

    #[test]
    fn ed25519_sign_verify_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("op.key");
        let k = SigningKey::create(&p, Some("alice")).unwrap();
        let loaded = SigningKey::load(&p).unwrap();
        assert_eq!(k.public(), loaded.public());
        let line = std::fs::read_to_string(pub_path(&p)).unwrap();
        let (pk, comment) = PublicKey::parse_line(&line).unwrap();
        assert_eq!(pk, k.public());
        assert_eq!(comment, "alice");
        let sig = k.sign(b"msg");
        assert!(pk.verify(b"msg", &sig));
        assert!(!pk.verify(b"msh", &sig));
        assert!(!pk.verify(b"msg", "not base64!"));
        assert!(pk.fingerprint().starts_with("SHA256:"));
        assert!(matches!(
            SigningKey::create(&p, Some("x")),
            Err(KeyError::Exists(_))
        ));
        let n = dir.path().join("node.key");
        let a = SigningKey::load_or_create(&n).unwrap();
        let b = SigningKey::load_or_create(&n).unwrap();
        assert_eq!(a.public(), b.public());
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex(&hex(&[0, 1, 255])).unwrap(), vec![0, 1, 255]);
        assert!(unhex("abc").is_none());
    }
}
