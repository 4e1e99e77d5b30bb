//! The `wave-webhook serve` binary as a child process on 127.0.0.1 port 0: its addresses from
//! its log, readiness from its metrics port, signals, and its peak memory from /proc.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};

use crate::process::{Running, wait_for_webhook_addresses};
use crate::tls::TlsFiles;
use crate::{http_get, poll_blocking, workspace_bin};

/// A running `wave-webhook serve`.
pub struct WebhookProcess {
    running: Running,
    /// The HTTPS admission address.
    pub https: SocketAddr,
    /// The plain-HTTP metrics and probe address.
    pub metrics: SocketAddr,
}

impl WebhookProcess {
    /// Starts the binary serving `tls`'s files with no API server (pods that need the owner
    /// lookup are denied), `extra` arguments after `serve`, logging to `log`; returns once it
    /// names its addresses.
    pub fn start(tls: &TlsFiles, extra: &[&str], log: &Path) -> WebhookProcess {
        let mut command = Self::command(extra);
        command
            .env("WAVE_WEBHOOK_TLS_CERT", tls.cert_path())
            .env("WAVE_WEBHOOK_TLS_KEY", tls.key_path())
            .env("KUBECONFIG", "/nonexistent/kubeconfig");
        Self::spawn(&mut command, log)
    }

    /// Starts the binary with `--tls-self-managed` against the API server of `kubeconfig`,
    /// `extra` arguments after `serve`, logging to `log`; returns once it names its
    /// addresses (its certificate may not be issued yet: see [`WebhookProcess::wait_ready`]).
    pub fn start_self_managed(kubeconfig: &Path, extra: &[&str], log: &Path) -> WebhookProcess {
        let mut command = Self::command(extra);
        command
            .arg("--tls-self-managed")
            .arg("--kubeconfig")
            .arg(kubeconfig);
        Self::spawn(&mut command, log)
    }

    fn command(extra: &[&str]) -> Command {
        let mut command = Command::new(workspace_bin("wave-webhook"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info");
        command
    }

    fn spawn(command: &mut Command, log: &Path) -> WebhookProcess {
        let running = Running::spawn(command, log.to_path_buf());
        let (https, metrics) = wait_for_webhook_addresses(log, Duration::from_secs(30));
        WebhookProcess {
            running,
            https,
            metrics,
        }
    }

    /// The `/readyz` status on the metrics port, `None` while nothing answers there.
    pub fn readyz(&self) -> Option<u16> {
        http_get(self.metrics.port(), "/readyz").map(|r| r.status)
    }

    /// Waits until `/readyz` answers 200; fails the test with the log after 30 s.
    pub fn wait_ready(&self) {
        poll_blocking(Duration::from_secs(30), || {
            (self.readyz() == Some(200)).then_some(())
        })
        .unwrap_or_else(|| panic!("not ready after 30 s:\n{}", self.running.output()));
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        kill(self.running.pid(), signal).expect("the webhook process can be signalled");
    }

    /// Waits for the process to exit; fails the test with its log after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        self.running.wait(limit).await
    }

    /// Everything it logged so far.
    pub fn output(&self) -> String {
        self.running.output()
    }

    /// Bytes the process has read through system calls so far, from files and sockets alike
    /// (`rchar` of `/proc/<pid>/io`).
    pub fn bytes_read(&self) -> u64 {
        self.proc_number("io", "rchar")
    }

    /// Peak resident memory so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_number("status", "VmHWM")
    }

    /// The number after `field:` in `/proc/<pid>/<file>` (a unit after it, such as `kB`, is
    /// left off).
    fn proc_number(&self, file: &str, field: &str) -> u64 {
        let path = format!("/proc/{}/{file}", self.running.pid());
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("the webhook's {path} is readable: {e}"));
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("a number after {field}: in {path}"))
    }
}
