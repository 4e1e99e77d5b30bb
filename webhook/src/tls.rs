//! Serving certificate: loaded from PEM files, checked as a pair, and swapped atomically so
//! that new connections get a renewed certificate without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate/key pair could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file holds no PEM certificate, or a broken one.
    #[error("{} holds no usable PEM certificate", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: Option<rustls_pki_types::pem::Error>,
    },
    /// The key file holds no PEM private key, or one of an unsupported kind.
    #[error("{} holds no usable PEM private key", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key cannot sign, or it does not belong to the certificate (for example one of the
    /// two files was replaced and the other not yet).
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The certificate's validity period cannot be read.
    #[error("cannot read the expiry of the certificate in {}", path.display())]
    Expiry { path: PathBuf },
}

/// A checked certificate/key pair ready to serve.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// The chain and signing key handed to rustls.
    pub certified: Arc<CertifiedKey>,
    /// notAfter of the leaf certificate, Unix seconds.
    pub not_after: i64,
}

/// The one crypto provider of the workspace.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a pair from PEM bytes; the paths only name the files in errors.
pub fn pair_from_pem(
    cert: &Path,
    cert_pem: &[u8],
    key: &Path,
    key_pem: &[u8],
) -> Result<LoadedCert, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificate {
            path: cert.to_path_buf(),
            source: Some(source),
        })?;
    let leaf = chain.first().ok_or_else(|| TlsError::Certificate {
        path: cert.to_path_buf(),
        source: None,
    })?;
    let not_after = not_after(leaf).ok_or_else(|| TlsError::Expiry {
        path: cert.to_path_buf(),
    })?;
    let private_key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Key {
        path: key.to_path_buf(),
        source,
    })?;
    let certified = CertifiedKey::from_der(chain, private_key, &provider()).map_err(|source| {
        TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        }
    })?;
    Ok(LoadedCert {
        certified: Arc::new(certified),
        not_after,
    })
}

/// notAfter of a DER certificate as Unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

/// Hands rustls whichever pair was loaded last; `None` until the first one loads, which makes
/// handshakes fail (and the server report not ready) instead of serving a wrong certificate.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: ArcSwapOption<CertifiedKey>,
}

impl CertResolver {
    /// Serves `cert` to every connection from now on.
    pub fn set(&self, cert: Arc<CertifiedKey>) {
        self.current.store(Some(cert));
    }

    /// Whether a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// TLS 1.2 and 1.3 with ring, HTTP/2 or HTTP/1.1 by ALPN, certificates from `resolver`.
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
