//! The `wave-webhook` binary as a real child process: JSON log lines, SIGTERM letting an
//! in-flight admission finish, and the `inject` command.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::support::captured_review;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wave_tests::process::wait_for_webhook_addresses;
use wave_tests::tls::{HttpsClient, TlsFiles};
use wave_tests::webhook::WebhookProcess;
use wave_tests::{workspace_bin, workspace_root};

/// The binary, stopped with SIGKILL on drop if a test failed before stopping it.
struct Server {
    child: Child,
    https: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(tls: &TlsFiles, kubeconfig: &Path, log: &Path) -> Server {
        let child = Command::new(workspace_bin("wave-webhook"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("WAVE_WEBHOOK_TLS_CERT", tls.cert_path())
            .env("WAVE_WEBHOOK_TLS_KEY", tls.key_path())
            .env("WAVE_WEBHOOK_KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(log).expect("log file"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wave-webhook");
        let (https, _) = wait_for_webhook_addresses(log, Duration::from_secs(20));
        Server { child, https }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https.port())
    }

    async fn wait_ready(&self, client: &HttpsClient) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = client.get(&self.url("/readyz")).await
                && reply.status == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "wave-webhook not ready within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wave-webhook did not exit within 30 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A kubeconfig pointing at a server that accepts connections and never answers, so an
/// admission that needs the owner lookup stays in flight until the lookup's timeout.
async fn silent_api_server(dir: &Path) -> (std::path::PathBuf, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: silent\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: silent\n  user:\n    token: t\ncontexts:\n- name: silent\n  context:\n    \
             cluster: silent\n    user: silent\ncurrent-context: silent\n"
        ),
    )
    .expect("write kubeconfig");
    (path, task)
}

fn log_lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .expect("log file")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"))
        })
        .collect()
}

#[tokio::test]
async fn sigterm_lets_the_admission_in_flight_finish_then_exits_with_json_logs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (kubeconfig, _api) = silent_api_server(dir.path()).await;
    let tls = TlsFiles::new();
    let log = dir.path().join("webhook.log");
    let mut server = Server::start(&tls, &kubeconfig, &log);
    let client = HttpsClient::trusting(&tls.ca);
    server.wait_ready(&client).await;

    // The ReplicaSet is in no cache and the API server never answers: this admission waits
    // for the direct GET's timeout, and SIGTERM arrives meanwhile.
    let review = captured_review();
    let url = server.url("/mutate");
    let body = serde_json::to_vec(&review).expect("json");
    let in_flight = tokio::spawn(async move { client.post(&url, body).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !in_flight.is_finished(),
        "the admission should still be waiting on the API"
    );
    server.terminate();

    let reply = in_flight
        .await
        .expect("task")
        .expect("the in-flight admission is answered");
    assert_eq!(reply.status, StatusCode::OK);
    let response = &reply.json()["response"];
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().expect("message");
    assert!(message.contains("did not answer"), "{message}");

    let status = server.wait_exit().await;
    assert!(status.success(), "exit status {status}");

    let lines = log_lines(&log);
    let denied = lines
        .iter()
        .find(|l| l["fields"]["message"] == "denied")
        .unwrap_or_else(|| panic!("no denial logged in {lines:?}"));
    assert_eq!(denied["level"], "INFO");
    assert_eq!(denied["fields"]["namespace"], "eks-sample-app");
    assert_eq!(
        denied["fields"]["pod"],
        "eks-sample-linux-deployment-6d4b9c7f58-"
    );
    assert!(
        denied["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("waveloadtest.io/total-players:")),
        "{denied}"
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "stopped"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn after_a_change_in_the_certificate_folder_an_idle_webhook_reads_its_files_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    let server = WebhookProcess::start(&tls, &[], &dir.path().join("webhook.log"));
    server.wait_ready();
    // Something else changes in the watched folder: the webhook checks its files once (reading
    // them is not a change of theirs), then stays idle.
    std::fs::write(tls.dir().join("unrelated"), b"x").expect("write beside the certificate");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let files = std::fs::metadata(tls.cert_path()).expect("cert").len()
        + std::fs::metadata(tls.key_path()).expect("key").len();
    let before = server.bytes_read();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let read = server.bytes_read() - before;
    assert!(
        read < files,
        "an idle webhook read {read} bytes in 3 s: it keeps re-reading its {files} bytes of \
         certificate files"
    );
}

fn inject(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(workspace_bin("wave-webhook"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wave-webhook inject");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    let output = child.wait_with_output().expect("inject finishes");
    (
        output.status.code().expect("exit code"),
        String::from_utf8(output.stdout).expect("UTF-8 output"),
        String::from_utf8(output.stderr).expect("UTF-8 errors"),
    )
}

#[test]
fn inject_prints_the_seed_deployment_as_the_cluster_would_run_it() {
    let seed = workspace_root().join("webhook/tests/fixtures/seed-deployment.yaml");
    let (code, stdout, stderr) = inject(&["-f", seed.to_str().expect("UTF-8 path")], None);
    assert_eq!(code, 0, "{stderr}");
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_saphyr::from_str(&stdout).expect("output is a Deployment");
    let spec = deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    let env = spec.containers[0].env.as_ref().expect("env");
    let total = env
        .iter()
        .find(|e| e.name == "TOTAL_PLAYERS")
        .expect("TOTAL_PLAYERS");
    assert_eq!(total.value.as_deref(), Some("480000"));
}

#[test]
fn inject_reads_standard_input_and_exits_1_with_the_denial() {
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "labels": {"testId": "t1"},
                     "annotations": {"waveloadtest.io/total-players": "10", "waveloadtest.io/machine-type": "r5.xlarg"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]}
    });
    let (code, stdout, stderr) = inject(&["-f", "-"], Some(&manifest.to_string()));
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stderr.contains("waveloadtest.io/machine-type: unknown machine type \"r5.xlarg\" (did you mean r5.xlarge?)"),
        "{stderr}"
    );
}

#[test]
fn inject_with_a_missing_file_names_it() {
    let (code, _, stderr) = inject(&["-f", "/nonexistent/wave.yaml"], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("/nonexistent/wave.yaml"), "{stderr}");
}
