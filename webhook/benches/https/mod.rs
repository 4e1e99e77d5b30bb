//! What the benchmarks that load the `wave-webhook` binary over HTTPS share: certificates, the
//! server as a child process pinned to CPU 0, TLS clients of either HTTP version, one
//! admission, the server's peak memory.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Microseconds as milliseconds.
pub fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Pins this process (and the children it starts later) to `cpu`, so the load generator never
/// competes with the server.
pub fn pin_self_to_cpu(cpu: u32) {
    let status = Command::new("taskset")
        .args([
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .expect("taskset is installed (util-linux)");
    assert!(status.success(), "taskset could not pin the load generator");
}

/// A CA and a server certificate for 127.0.0.1 in `dir`; returns the CA certificate.
pub fn write_certificates(dir: &Path) -> CertificateDer<'static> {
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("server cert");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("write key");
    ca_cert.der().clone()
}

/// A port on 127.0.0.1 free a moment ago.
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// Starts `WAVE_WEBHOOK_BIN` (by default the `wave-webhook` built with the bench) pinned to
/// CPU 0, with `WAVE_WEBHOOK_WRAP` before its command, serving the certificate in `dir`.
pub fn start_server(dir: &Path, https: SocketAddr, metrics: SocketAddr) -> Child {
    let binary = std::env::var_os("WAVE_WEBHOOK_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_wave-webhook").into());
    let wrap = std::env::var("WAVE_WEBHOOK_WRAP").unwrap_or_default();
    Command::new("taskset")
        .args(["-c", "0"])
        .args(wrap.split_whitespace())
        .arg(binary)
        .envs(image_environment())
        .arg("serve")
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .args(["--listen", &https.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        // No API server here: the benchmark's pods carry total-players and never need one.
        .env("KUBECONFIG", dir.join("no-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start wave-webhook")
}

/// The `ENV NAME=value` lines of `Dockerfile.webhook`.
pub fn image_environment() -> Vec<(String, String)> {
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile.webhook");
    let text = std::fs::read_to_string(&dockerfile).expect("Dockerfile.webhook is readable");
    text.lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .filter_map(|assignment| assignment.trim().split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

/// A TLS client offering `h2` or `http/1.1` by ALPN.
pub fn connector(ca: &CertificateDer<'static>, h2: bool) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    TlsConnector::from(Arc::new(config))
}

/// One client connection, of the version ALPN chose.
pub enum SendRequest {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// A TLS connection and an HTTP client on it.
pub async fn connect(connector: &TlsConnector, addr: SocketAddr) -> Result<SendRequest, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("TCP: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("TCP: {e}"))?;
    let name = ServerName::try_from("127.0.0.1").expect("IP name");
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
        tokio::spawn(connection);
        Ok(SendRequest::Http2(sender))
    } else {
        let (sender, connection) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1: {e}"))?;
        tokio::spawn(connection);
        Ok(SendRequest::Http1(sender))
    }
}

/// Waits until the server accepts TLS connections (20 s at most).
pub async fn wait_ready(connector: &TlsConnector, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while connect(connector, addr).await.is_err() {
        assert!(Instant::now() < deadline, "wave-webhook did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One admission on `sender`; true when it was answered 200.
pub async fn admit(sender: &mut SendRequest, body: Bytes) -> bool {
    let request = Request::post("https://127.0.0.1/mutate")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("request");
    let response = match sender {
        SendRequest::Http1(sender) => {
            let mut request = request;
            *request.uri_mut() = http::Uri::from_static("/mutate");
            request
                .headers_mut()
                .insert("host", http::HeaderValue::from_static("127.0.0.1"));
            sender.send_request(request).await
        }
        SendRequest::Http2(sender) => sender.send_request(request).await,
    };
    let Ok(response) = response else {
        return false;
    };
    let ok = response.status() == StatusCode::OK;
    ok && response.into_body().collect().await.is_ok()
}

/// Peak resident set of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("server running");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}
