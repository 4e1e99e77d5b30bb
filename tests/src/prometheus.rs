//! A real Prometheus (Debian's `prometheus`) on 127.0.0.1 that scrapes given targets every
//! second: proof that wave's exposition is what Prometheus accepts (it rejects, for one,
//! OpenMetrics text without `# EOF`), queried through its HTTP API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, http_get, tool};

/// How long Prometheus may take to start, and a target to come up (the first scrape comes
/// about 5 s after start: target discovery is throttled).
const PATIENCE: Duration = Duration::from_secs(60);

/// A running Prometheus, killed on Drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`host:port`, path `/metrics`) every second,
    /// with its database in a temporary directory, and waits until it is ready.
    pub fn start(targets: &[String]) -> Prometheus {
        let target_list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: wave\n    static_configs:\n      - targets: [{target_list}]\n"
        );
        Prometheus::with_config(&config)
    }

    /// Starts Prometheus with the configuration file `config` (YAML text), its database in a
    /// temporary directory, and waits until it is ready.
    pub fn with_config(config: &str) -> Prometheus {
        let binary = prometheus_binary();
        let dir = tempfile::tempdir().expect("a temporary directory for Prometheus");
        let port = free_port();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write the Prometheus config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let mut prometheus = Prometheus { child, port, dir };
        prometheus.wait_ready();
        prometheus
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until the target `host:port` was scraped successfully; panics with
    /// Prometheus's own error for it (e.g. a rejected exposition) if that does not happen.
    pub fn wait_target_up(&self, target: &str) {
        let deadline = Instant::now() + PATIENCE;
        let mut last = String::from("not discovered yet");
        loop {
            if let Some(targets) = self.get_json("/api/v1/targets")
                && let Some(active) = targets["data"]["activeTargets"].as_array()
            {
                for t in active {
                    if t["labels"]["instance"] == target {
                        if t["health"] == "up" {
                            return;
                        }
                        last = format!("health {}, last error {}", t["health"], t["lastError"]);
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped {target} successfully: {last}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs an instant PromQL query; returns `data.result` (a vector of series).
    pub fn query(&self, promql: &str) -> Value {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let answer = self
            .get_json(&path)
            .unwrap_or_else(|| panic!("Prometheus did not answer {path}"));
        assert_eq!(answer["status"], "success", "query {promql}: {answer}");
        answer["data"]["result"].clone()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while http_get(self.port, "/-/ready").map(|r| r.status) != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Prometheus exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A GET on Prometheus's HTTP API; the JSON body of a 200 answer.
    pub fn get_json(&self, path: &str) -> Option<Value> {
        let crate::PlainResponse { status, body, .. } = http_get(self.port, path)?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_binary() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/prometheus");
    if debian.is_file() {
        debian
    } else {
        tool("prometheus")
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
