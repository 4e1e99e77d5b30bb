//! Helpers for wave's workspace-level tests: they start real servers (S3 on s3s-fs and
//! Garage, Prometheus) and real TLS material on 127.0.0.1, and stop them on Drop.
//!
//! The servers are installed by `scripts/install-test-deps.sh`; a missing one is a test
//! failure with a message saying how to install it, never a silent skip.

pub mod apiserver;
pub mod balancer;
pub mod kubelet;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod s3;
pub mod synthetic;
pub mod target;
pub mod tls;
pub mod webhook;

use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Path of a binary built from this workspace (`wave-agent`, `wave-webhook`).
///
/// Integration tests of this crate cannot use `CARGO_BIN_EXE_*` for another package's
/// binaries, so they look next to the test executable, where cargo puts them.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`)",
        bin.display()
    );
    bin
}

/// Where `scripts/install-test-deps.sh` installs: `$WAVE_TOOLS_DIR`, else
/// `~/.cache/wave-tools`.
fn tools_dir() -> Option<PathBuf> {
    std::env::var_os("WAVE_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wave-tools")))
}

/// Path of an external tool installed by `scripts/install-test-deps.sh` (or on PATH).
pub fn tool(name: &str) -> PathBuf {
    let candidates = tools_dir()
        .into_iter()
        .flat_map(|t| [t.join("bin").join(name), t.join("venv/bin").join(name)])
        .chain(
            std::env::var_os("PATH")
                .into_iter()
                .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .map(|dir| dir.join(name)),
        );
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{name}` is not installed: run scripts/install-test-deps.sh");
}

/// The Python of the tools' venv (`<tools>/venv`), which holds the Python packages
/// `scripts/install-test-deps.sh` installs: the StatsD client libraries the ingest tests
/// send with among them. Never the system Python, which lacks them.
pub fn tools_python() -> PathBuf {
    let python = tools_dir()
        .map(|t| t.join("venv/bin/python3"))
        .filter(|p| p.is_file());
    python.unwrap_or_else(|| {
        panic!("the tools' Python venv is not installed: run scripts/install-test-deps.sh")
    })
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for servers that cannot bind port 0.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the loopback interface has free ports")
}

/// Root of the workspace, for tests that read manifests, examples or the README.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_path_buf()
}

/// Polls `condition` every 20 ms until it holds; fails naming `what` after `timeout`.
/// Tests wait for real servers and processes this way instead of sleeping a fixed time.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for_value(what, timeout, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// [`wait_for`] for a value: polls `probe` until it gives one, and returns it.
pub async fn wait_for_value<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The blocking form, for tests without a runtime: polls `probe` every 20 ms until it
/// gives a value; `None` once `timeout` has passed, so the caller can say what it saw.
pub fn poll_blocking<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.0 answer: status, header block (lowercased) and body.
pub struct PlainResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// A plain HTTP/1.0 GET on 127.0.0.1 with a 10 s read timeout, enough for `/metrics`,
/// `/readyz` and Prometheus's JSON API; `None` while nothing answers on `port`.
pub fn http_get(port: u16, path: &str) -> Option<PlainResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some(PlainResponse {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    })
}
