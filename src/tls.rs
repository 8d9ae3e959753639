//! TLS for the portal: the node's certificate (given, or self-signed at first start in
//! data_dir/tls/), the server config, and the client config that pins by fingerprint.
//!
//! Only the ring provider is used (mixing providers panics at the first handshake).
//! A certificate's fingerprint is `sha256:<hex of sha256(DER)>`; the same hash goes into
//! every signed request, so a relay with another certificate cannot forward one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::keys::sha256_hex;

/// Errors from TLS material and configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("cannot create a self-signed certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The ring provider, shared.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The leaf's fingerprint.
    pub fn fingerprint(&self) -> String {
        self.chain
            .first()
            .map(|c| fingerprint(c.as_ref()))
            .unwrap_or_default()
    }
}

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(der))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read a PEM certificate chain and key.
///
/// # Errors
/// `TlsError::Io` or `TlsError::Pem`.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let pem_err = |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e))?;
    Ok(Identity { chain, key })
}

/// The node's identity: the configured files, or data_dir/tls/{cert,key}.pem, created
/// self-signed (for `names`: host names and IPs) on first start.
///
/// # Errors
/// `TlsError` when files cannot be read, written or generated.
pub fn load_or_create(
    data_dir: &Path,
    configured: Option<(&Path, &Path)>,
    names: &[String],
) -> Result<Identity, TlsError> {
    if let Some((cert, key)) = configured {
        return load_identity(cert, key);
    }
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return load_identity(&cert, &key);
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, ck.cert.pem()).map_err(io_err(&cert))?;
    load_identity(&cert, &key)
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

/// The portal's server config (HTTP/1.1 over TLS).
///
/// # Errors
/// `TlsError::Config` when rustls refuses the key.
pub fn server_config(id: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A verifier that checks the handshake signature (the server holds the certificate's
/// key) but leaves the decision on the certificate to the caller's pin check, after the
/// handshake, where a clear error can name both fingerprints. With a CA, the chain is
/// verified by webpki as usual instead.
#[derive(Debug)]
pub struct PinVerifier {
    /// The provider's signature algorithms.
    provider: Arc<CryptoProvider>,
    /// The verifier for `--ca`, when given.
    ca: Option<Arc<dyn ServerCertVerifier>>,
    /// The leaf certificate seen in the last handshake.
    seen: Mutex<Option<Vec<u8>>>,
}

impl PinVerifier {
    /// The DER of the server certificate seen, once a handshake has happened.
    pub fn seen(&self) -> Option<Vec<u8>> {
        self.seen.lock().ok().and_then(|g| g.clone())
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut g) = self.seen.lock() {
            *g = Some(end_entity.as_ref().to_vec());
        }
        if let Some(ca) = &self.ca {
            return ca.verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config whose verifier records the server certificate for pinning; with
/// `ca`, chains are verified against that CA file.
///
/// # Errors
/// `TlsError` when the CA file is unusable.
pub fn client_config(
    ca: Option<&Path>,
) -> Result<(Arc<rustls::ClientConfig>, Arc<PinVerifier>), TlsError> {
    let provider = provider();
    let ca_verifier: Option<Arc<dyn ServerCertVerifier>> = match ca {
        None => None,
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| TlsError::Pem {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })? {
                let cert = cert.map_err(|e| TlsError::Pem {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
                roots.add(cert).map_err(|e| TlsError::Pem {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?;
            }
            let v = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
            Some(v)
        }
    };
    let verifier = Arc::new(PinVerifier {
        provider: provider.clone(),
        ca: ca_verifier,
        seen: Mutex::new(None),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), verifier))
}
