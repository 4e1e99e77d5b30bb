//! Real TLS material for tests: a private CA made with rcgen, server certificates for
//! `127.0.0.1`/`localhost` written to files, and an HTTPS client that trusts only the CAs it
//! is given (never the system roots) and records which server certificate it saw.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("rcgen generates keys");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("empty SAN list");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signing a CA");
        TestCa {
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A server certificate for `127.0.0.1` and `localhost` signed by this CA.
    pub fn issue_server_cert(&self) -> ServerCert {
        let key = KeyPair::generate().expect("rcgen generates keys");
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .expect("valid SANs");
        params
            .distinguished_name
            .push(DnType::CommonName, "wave-webhook test");
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("CA signs the server cert");
        ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// notAfter of every server certificate issued here (2036-01-01T00:00:00Z), Unix seconds.
pub const SERVER_CERT_NOT_AFTER: i64 = 2_082_758_400;

/// A server certificate and its key.
#[derive(Clone)]
pub struct ServerCert {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: String,
    /// Certificate, DER, to compare with what a client saw.
    pub der: CertificateDer<'static>,
}

/// A CA and a server certificate written as `tls.crt` / `tls.key` in a temporary directory
/// (the names cert-manager gives them).
pub struct TlsFiles {
    dir: tempfile::TempDir,
    /// The CA that signed the current files.
    pub ca: TestCa,
    /// The pair currently on disk.
    pub server: ServerCert,
}

impl TlsFiles {
    /// A fresh CA and server certificate on disk.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("wave test CA");
        let server = ca.issue_server_cert();
        let files = TlsFiles { dir, ca, server };
        files.write(&files.server);
        files
    }

    /// Path of the certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    /// Path of the key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    /// The directory holding both files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces both files with `pair`: the certificate first, then the key, each by an
    /// atomic rename, so a reader can see the new certificate next to the old key for a moment
    /// (as with cert-manager writing a Secret mounted without `..data`).
    pub fn write(&self, pair: &ServerCert) {
        replace_file(&self.cert_path(), pair.cert_pem.as_bytes());
        replace_file(&self.key_path(), pair.key_pem.as_bytes());
    }
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self::new()
    }
}

/// A TLS 1.2/1.3 client configuration (ring) that trusts exactly `roots`.
pub fn client_config(roots: RootCertStore) -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports TLS 1.2 and 1.3")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// Writes `contents` to a temporary sibling of `path` and renames it over `path`.
pub fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over the target");
}

/// Verifies server certificates against the given roots only, and remembers the last leaf.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        *self.seen.lock().expect("verifier lock") = Some(end_entity.clone().into_owned());
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// An answer read to its end.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Bytes,
    /// The HTTP version the answer came over.
    pub version: http::Version,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// An HTTPS client that trusts only given CAs.
pub struct HttpsClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    seen: Arc<Mutex<Option<CertificateDer<'static>>>>,
}

/// How an [`HttpsClient`] connects.
pub struct ClientOptions<'a> {
    /// CAs to trust (and nothing else).
    pub trust: &'a [&'a TestCa],
    /// TLS versions to offer.
    pub versions: &'a [&'static SupportedProtocolVersion],
    /// Keep connections open between requests; `false` opens a new connection (and a new
    /// handshake) for every request.
    pub keep_alive: bool,
}

impl HttpsClient {
    /// A keep-alive client offering TLS 1.2 and 1.3 that trusts only `ca`.
    pub fn trusting(ca: &TestCa) -> Self {
        Self::with_options(&ClientOptions {
            trust: &[ca],
            versions: rustls::ALL_VERSIONS,
            keep_alive: true,
        })
    }

    /// A keep-alive client that offers only HTTP/2 by ALPN (as kube-apiserver's webhook
    /// client negotiates it), over TLS 1.2 or 1.3, trusting only `ca`.
    pub fn http2_trusting(ca: &TestCa) -> Self {
        Self::build(
            &ClientOptions {
                trust: &[ca],
                versions: rustls::ALL_VERSIONS,
                keep_alive: true,
            },
            true,
        )
    }

    /// A client as `options` say, speaking HTTP/1.1.
    pub fn with_options(options: &ClientOptions<'_>) -> Self {
        Self::build(options, false)
    }

    fn build(options: &ClientOptions<'_>, http2: bool) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in options.trust {
            roots
                .add(ca.cert_der().clone())
                .expect("test CA is a valid root");
        }
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("verifier with test roots");
        let seen = Arc::new(Mutex::new(None));
        let verifier = RecordingVerifier {
            inner,
            seen: seen.clone(),
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(options.versions)
            .expect("ring supports the requested versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        // A resumed session skips the certificate; every new connection must show the one
        // the server serves now.
        config.resumption = rustls::client::Resumption::disabled();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only();
        let connector = if http2 {
            connector.enable_http2().build()
        } else {
            connector.enable_http1().build()
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder.http2_only(http2);
        if !options.keep_alive {
            builder.pool_max_idle_per_host(0);
        }
        HttpsClient {
            client: builder.build(connector),
            seen,
        }
    }

    /// Sends a request and reads the whole answer; `Err` for connection or TLS failures.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .map_err(|_| "no answer within 30 s".to_string())?
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
            version: parts.version,
        })
    }

    /// `POST url` with a JSON body.
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Result<Reply, String> {
        self.request(Method::POST, url, body).await
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.request(Method::GET, url, Bytes::new()).await
    }

    /// The leaf certificate the server presented in the latest handshake.
    pub fn last_server_cert(&self) -> Option<CertificateDer<'static>> {
        self.seen.lock().expect("verifier lock").clone()
    }
}
