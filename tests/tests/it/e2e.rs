//! The contract between the halves, end to end: the example Deployment's pod goes through
//! the webhook over HTTPS (owner lookup through the kube client), three copies of the
//! patched pod are run the way the kubelet would run them, their supervisors claim slots
//! 0-2 as Leases, start together, fetch the script from a real S3 server, run agents that
//! play disjoint player ranges and upload to the docs/agent-storage.md layout, and a real Prometheus
//! scrapes one of them.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::process::{Child, Command};
use wave_tests::apiserver::{ApiRequest, ApiServer};
use wave_tests::kubelet::{LocalPod, PodIdentity};
use wave_tests::process::{metrics_address, wait_for_webhook_addresses};
use wave_tests::prometheus::Prometheus;
use wave_tests::s3::S3sFs;
use wave_tests::tls::{HttpsClient, TlsFiles};
use wave_tests::{wait_for, wait_for_value, workspace_bin, workspace_root};

const TEST_ID: &str = "2e9103ae-3268-11ed-b5cf-0242ac110033";
const NAMESPACE: &str = "wave-tests";
const REPLICA_SET: &str = "ltystore-10k-p1-7c9d8f6b5d";
/// The service account the webhook runs as (manifests/base/rbac.yaml).
const WEBHOOK_USER: &str = "system:serviceaccount:wave-system:wave-webhook";

fn example_deployment() -> Deployment {
    let path = workspace_root().join("manifests/examples/loadtest-linux.yaml");
    serde_saphyr::from_str(&std::fs::read_to_string(path).expect("example manifest"))
        .expect("a Deployment")
}

/// The ReplicaSet the Deployment controller makes for the (stored) example Deployment.
fn replica_set(deployment: &Deployment) -> ReplicaSet {
    let spec = deployment.spec.clone().expect("spec");
    let mut template = spec.template.clone();
    let labels = template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default);
    labels.insert("pod-template-hash".into(), "7c9d8f6b5d".into());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(REPLICA_SET.into()),
            namespace: Some(NAMESPACE.into()),
            uid: Some("6f0d8c1e-1111-4a4a-9b9b-000000000001".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: deployment.metadata.name.clone().expect("name"),
                uid: deployment
                    .metadata
                    .uid
                    .clone()
                    .expect("a stored Deployment has a uid"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: spec.replicas,
            selector: spec.selector.clone(),
            template: Some(template),
            ..Default::default()
        }),
        status: None,
    }
}

/// The pod the ReplicaSet controller creates, as the API server hands it to admission:
/// defaults filled in, `generateName` and no name.
fn pod_from(replica_set: &ReplicaSet) -> Value {
    let template = replica_set
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .expect("template");
    let mut pod = serde_json::to_value(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{REPLICA_SET}-")),
            namespace: Some(NAMESPACE.into()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: REPLICA_SET.into(),
                uid: replica_set.metadata.uid.clone().expect("uid"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    })
    .expect("a Pod serializes");
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    let spec = &mut pod["spec"];
    spec["restartPolicy"] = json!("Always");
    spec["dnsPolicy"] = json!("ClusterFirst");
    spec["schedulerName"] = json!("default-scheduler");
    spec["securityContext"] = json!({});
    spec["enableServiceLinks"] = json!(true);
    for container in spec["containers"].as_array_mut().expect("containers") {
        container["terminationMessagePath"] = json!("/dev/termination-log");
        container["terminationMessagePolicy"] = json!("File");
        container["resources"] = json!({});
    }
    pod
}

fn admission_review(uid: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "2a3b4c5d-0000-4000-8000-00000000c0de",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// A running `wave-webhook serve`, killed on drop.
struct Webhook {
    /// Killed on drop.
    _child: Child,
    url: String,
    _config: tempfile::NamedTempFile,
    _log: tempfile::NamedTempFile,
}

impl Webhook {
    async fn start(tls: &TlsFiles, api: &ApiServer, bucket: &str) -> Self {
        let config = tempfile::NamedTempFile::new().expect("config file");
        std::fs::write(config.path(), format!("bucket: {bucket}\n")).expect("write config");
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(workspace_bin("wave-webhook"))
            .arg("serve")
            .arg("--config")
            .arg(config.path())
            .arg("--tls-cert")
            .arg(tls.cert_path())
            .arg("--tls-key")
            .arg(tls.key_path())
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .arg("--kubeconfig")
            .arg(api.kubeconfig(WEBHOOK_USER))
            .stdout(log.reopen().expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("start wave-webhook");
        let (https, _) = wait_for_webhook_addresses(log.path(), Duration::from_secs(30));
        let webhook = Webhook {
            _child: child,
            url: format!("https://{https}"),
            _config: config,
            _log: log,
        };
        let client = HttpsClient::trusting(&tls.ca);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(reply) = client.get(&format!("{}/readyz", webhook.url)).await
                && reply.status.is_success()
            {
                break webhook;
            }
            assert!(
                Instant::now() < deadline,
                "wave-webhook did not become ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends the pod for admission the way kube-apiserver does and applies the patch.
    async fn admit(&self, client: &HttpsClient, pod: &Value) -> (Value, Vec<String>) {
        let uid = "7d5e2a4c-5b0a-4f6e-9b1e-3f1c2d3e4f50";
        let body = admission_review(uid, pod).to_string();
        let reply = client
            .post(&format!("{}/mutate?timeout=5s", self.url), body)
            .await
            .expect("the webhook answers over HTTPS");
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let review = reply.json();
        let response = &review["response"];
        assert_eq!(response["uid"], uid);
        assert_eq!(response["allowed"], true, "{response}");
        // No patch at all is how an empty patch travels.
        let patch: json_patch::Patch = match response["patch"].as_str() {
            Some(encoded) => {
                assert_eq!(response["patchType"], "JSONPatch");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .expect("the patch is base64");
                serde_json::from_slice(&bytes).expect("the patch is a JSON Patch")
            }
            None => json_patch::Patch(Vec::new()),
        };
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch)
            .expect("the patch applies to the pod it was made for");
        let warnings = response["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        (patched, warnings)
    }
}

fn env_of(pod: &Pod) -> BTreeMap<String, Option<String>> {
    pod.spec.as_ref().expect("spec").containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone()))
        .collect()
}

/// The value of a query that returns one series (Prometheus's `data.result`).
fn scalar(result: &Value) -> Option<f64> {
    match result.as_array().map(Vec::as_slice) {
        Some([series]) => series["value"][1].as_str().and_then(|v| v.parse().ok()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_test_runs_from_deployment_to_s3_and_prometheus() {
    // The cluster side: S3 with the script uploaded, the API objects, the webhook.
    let s3 = S3sFs::start().await;
    let script_dir = workspace_root().join("examples/script");
    for entry in std::fs::read_dir(&script_dir).expect("examples/script") {
        let entry = entry.expect("script file");
        let key = format!("scripts/{TEST_ID}/{}", entry.file_name().to_string_lossy());
        s3.put(&key, std::fs::read(entry.path()).expect("script file"))
            .await;
    }
    let api = ApiServer::start().await;
    // The example scaled to three machines.
    let mut example = example_deployment();
    example.spec.as_mut().expect("spec").replicas = Some(3);
    let deployment = api.seed_typed(&example);
    let replica_set = api.seed_typed(&replica_set(&deployment));
    let tls = TlsFiles::new();
    let webhook = Webhook::start(&tls, &api, s3.bucket()).await;
    let client = HttpsClient::trusting(&tls.ca);

    // Admission, as kube-apiserver runs it.
    let (patched, warnings) = webhook.admit(&client, &pod_from(&replica_set)).await;
    assert!(
        warnings.is_empty(),
        "the example sets nothing wave sets: {warnings:?}"
    );
    let pod: Pod = serde_json::from_value(patched.clone()).expect("the patched object is a Pod");
    let env = env_of(&pod);
    let value = |name: &str| env.get(name).cloned().flatten();
    assert_eq!(value("TEST_ID").as_deref(), Some(TEST_ID));
    assert_eq!(
        value("TOTAL_PLAYERS").as_deref(),
        Some("3000"),
        "3 replicas × 10 agents × 100 players"
    );
    assert_eq!(value("WAVE_AGENTS").as_deref(), Some("10"));
    assert_eq!(value("WAVE_MACHINES").as_deref(), Some("3"));
    assert_eq!(value("WAVE_COORDINATION").as_deref(), Some("kubernetes"));
    assert_eq!(value("WAVE_START").as_deref(), Some("together"));
    assert_eq!(
        value("WAVE_SCRIPT_URL"),
        Some(format!("s3://{}/scripts/{TEST_ID}/", s3.bucket()))
    );
    let reinvoked = webhook.admit(&client, &patched).await.0;
    assert_eq!(reinvoked, patched, "reinvocation changes nothing");

    // The node side: the API server names and stores each pod, the kubelet runs it. Three
    // pods of the Deployment claim their slots as Leases owned by them, as the service
    // account bound by manifests/examples/slots-rbac.yaml.
    let mut pods = Vec::new();
    for suffix in ["x7k2p", "a4m9q", "c2v8w"] {
        let name = format!("{REPLICA_SET}-{suffix}");
        let mut stored = patched.clone();
        stored["metadata"]["name"] = json!(name);
        stored["spec"]["nodeName"] = json!("ip-10-0-1-23.ec2.internal");
        let uid = api.seed(stored)["metadata"]["uid"]
            .as_str()
            .expect("a stored pod has a uid")
            .to_owned();
        pods.push(start_pod(&pod, &name, &uid, &s3, &api).await);
    }
    let metrics_port = pods[0].metrics_port;

    // Prometheus sees the supervisor while it runs and after it completes.
    let target = format!("127.0.0.1:{metrics_port}");
    let prometheus = Prometheus::start(std::slice::from_ref(&target));
    prometheus.wait_target_up(&target);
    let completed = format!("wave_test_completed{{test_id=\"{TEST_ID}\"}}");
    wait_for("the test to complete", Duration::from_secs(90), || async {
        scalar(&prometheus.query(&completed)) == Some(1.0)
    })
    .await;
    let succeeded = prometheus.query(&format!(
        "wave_agents{{state=\"succeeded\",test_id=\"{TEST_ID}\"}}"
    ));
    assert_eq!(scalar(&succeeded), Some(10.0), "{succeeded}");
    let players = prometheus.query("wave_players_configured");
    assert_eq!(
        scalar(&players),
        Some(1000.0),
        "10 agents × 100 players: {players}"
    );

    // Everything every agent wrote is in S3, in the docs/agent-storage.md layout; the three pods hold
    // slots 0-2 and their agents' players tile [0, 3 × 10 × 100).
    let mut machines = Vec::new();
    let mut offsets = Vec::new();
    let mut start_ats = Vec::new();
    for running in &pods {
        let pod_name = &running.name;
        let prefix = format!("results/{TEST_ID}/{pod_name}/c0/");
        let summary_key = format!("{prefix}summary.json");
        // The final upload lands every agent's files with the summary.
        wait_for(
            "the pod's results in S3",
            Duration::from_secs(90),
            || async {
                let stored: BTreeMap<String, u64> = s3.list(&prefix).await.into_iter().collect();
                stored.contains_key(&summary_key)
                    && (0..10).all(|k| {
                        let local = running
                            .volumes
                            .path()
                            .join(format!("wave-work/results/agent-{k}/players.csv"));
                        let size = std::fs::metadata(local).map(|m| m.len()).ok();
                        stored.contains_key(&format!("{prefix}agent-{k}/report.json"))
                            && stored
                                .get(&format!("{prefix}agent-{k}/players.csv"))
                                .copied()
                                == size
                    })
            },
        )
        .await;
        let objects: BTreeMap<String, u64> = s3.list(&prefix).await.into_iter().collect();
        let summary: Value =
            serde_json::from_slice(&s3.get(&summary_key).await).expect("summary.json is JSON");
        assert_eq!(summary["test_id"], TEST_ID);
        assert_eq!(summary["pod"], pod_name.as_str());
        assert_eq!(summary["completed"], true);
        assert_eq!(summary["part"], "p1");
        assert_eq!(summary["machines"], 3);
        machines.push(summary["machine_index"].as_u64().expect("a slot"));
        start_ats.push(summary["start_at"].clone());
        let agents = summary["agents"].as_array().expect("agents");
        assert_eq!(agents.len(), 10);
        for (k, agent) in agents.iter().enumerate() {
            assert_eq!(agent["state"], "succeeded", "{agent}");
            assert_eq!(agent["players"], 100);
            let offset = agent["player_offset"].as_u64().expect("a player offset");
            offsets.push(offset);
            for file in ["players.csv", "report.json", "stdout.log", "stderr.log"] {
                let key = format!("{prefix}agent-{k}/{file}");
                assert!(objects.contains_key(&key), "{key} missing from {objects:?}");
            }
            let local_csv = running
                .volumes
                .path()
                .join(format!("wave-work/results/agent-{k}/players.csv"));
            let uploaded = s3.get(&format!("{prefix}agent-{k}/players.csv")).await;
            assert_eq!(
                uploaded,
                std::fs::read(&local_csv).expect("local players.csv"),
                "agent {k}'s results"
            );
            let text = String::from_utf8(uploaded).expect("a CSV");
            assert_eq!(
                text.lines().count(),
                1 + 4 * 100,
                "header + 4 s × 100 players"
            );
            // The example agent plays exactly its range.
            let played: std::collections::BTreeSet<u64> = text
                .lines()
                .skip(1)
                .filter_map(|l| l.split(',').nth(1)?.parse().ok())
                .collect();
            assert_eq!(
                played,
                (offset..offset + 100).collect(),
                "agent {k} of {pod_name}"
            );
        }
    }
    machines.sort_unstable();
    assert_eq!(machines, [0, 1, 2]);
    offsets.sort_unstable();
    assert_eq!(offsets, (0..30).map(|g| g * 100).collect::<Vec<_>>());
    assert!(
        start_ats
            .iter()
            .all(|a| a.is_string() && *a == start_ats[0]),
        "one start-at: {start_ats:?}"
    );
    let leases = api.list("coordination.k8s.io/v1", "Lease", Some(NAMESPACE));
    let slot_leases = leases
        .iter()
        .filter(|l| l["metadata"]["labels"]["waveloadtest.io/slot"].is_string())
        .count();
    assert_eq!(slot_leases, 3, "{leases:?}");

    // The supervisors stay up after completion, and stop cleanly on SIGTERM.
    for mut running in pods {
        let supervisor = &mut running.supervisor;
        assert!(
            supervisor.try_wait().expect("poll supervisor").is_none(),
            "the supervisor stays up after completion"
        );
        let pid = supervisor.id().expect("running supervisor");
        let pid = Pid::from_raw(i32::try_from(pid).expect("pids fit in i32"));
        signal::kill(pid, Signal::SIGTERM).expect("SIGTERM the supervisor");
        let status = tokio::time::timeout(Duration::from_secs(30), supervisor.wait())
            .await
            .expect("the supervisor exits after SIGTERM")
            .expect("wait for the supervisor");
        assert!(status.success(), "{status}");
    }
}

/// The service account the example's test pods run as.
const POD_USER: &str = "system:serviceaccount:wave-tests:wave-loadtest";

/// One patched pod run the way the kubelet runs it.
struct RunningPod {
    name: String,
    volumes: tempfile::TempDir,
    supervisor: Child,
    metrics_port: u16,
}

/// Runs the patched `pod` as pod `name` (uid `uid`): its volumes, init containers and its
/// one container, with what the node provides outside the pod spec.
async fn start_pod(pod: &Pod, name: &str, uid: &str, s3: &S3sFs, api: &ApiServer) -> RunningPod {
    let volumes = tempfile::tempdir().expect("volumes");
    let target_dir = workspace_bin("wave-agent")
        .parent()
        .expect("target dir")
        .to_path_buf();
    let local = LocalPod {
        pod,
        identity: PodIdentity {
            name: name.to_owned(),
            namespace: NAMESPACE.into(),
            uid: uid.to_owned(),
            node_name: "ip-10-0-1-23.ec2.internal".into(),
        },
        volumes_root: volumes.path().to_path_buf(),
        image_path: vec![target_dir],
    };
    local.create_volumes().expect("volumes");
    for init in local.init_containers().expect("init containers") {
        let status = Command::from(init.command())
            .status()
            .await
            .expect("run init container");
        assert!(status.success(), "init container {} failed", init.container);
    }
    let mut containers = local.containers().expect("containers");
    assert_eq!(containers.len(), 1);
    let mut container = containers.remove(0);
    assert_eq!(container.env_value("POD_NAME"), Some(name));
    assert_eq!(container.env_value("POD_NAMESPACE"), Some(NAMESPACE));
    assert_eq!(container.env_value("POD_UID"), Some(uid));
    assert_eq!(
        container.env_value("NODE_NAME"),
        Some("ip-10-0-1-23.ec2.internal")
    );
    // What the node provides outside the pod spec: S3 credentials (IRSA in a cluster), the
    // service account's API access (a kubeconfig here, the in-cluster token in a cluster),
    // the work dir's local folder, and a port of its own (every pod has its own network
    // namespace, this machine has one loopback: port 0, read back from the log).
    for (key, value) in s3.agent_env() {
        container.set_env(&key, value);
    }
    container.set_env("KUBECONFIG", api.kubeconfig(POD_USER).display().to_string());
    container.set_env(
        "WAVE_WORK_DIR",
        volumes.path().join("wave-work").display().to_string(),
    );
    container.set_env("WAVE_METRICS_PORT", "0");
    container.set_env("WAVE_STATSD_PORT", "0");
    container.set_env("WAVE_UPLOAD_INTERVAL", "1s");
    container.set_env("WAVE_EXAMPLE_SECONDS", "4");
    let supervisor_log = volumes.path().join("supervisor.log");
    let supervisor = Command::from(container.command())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&supervisor_log).expect("supervisor log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start the container's command");
    let metrics_port = wait_for_value(
        "the supervisor's metrics address",
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(&supervisor_log).unwrap_or_default();
            std::future::ready(metrics_address(&log).map(|address| address.port()))
        },
    )
    .await;
    RunningPod {
        name: name.to_owned(),
        volumes,
        supervisor,
        metrics_port,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_finds_a_replica_set_newer_than_its_cache() {
    let api = ApiServer::start().await;
    let deployment = api.seed_typed(&example_deployment());
    let tls = TlsFiles::new();
    let webhook = Webhook::start(&tls, &api, "wave-loadtest").await;
    let client = HttpsClient::trusting(&tls.ca);
    wait_for("both watches", Duration::from_secs(30), || async {
        api.watching("replicasets") && api.watching("deployments")
    })
    .await;
    // The caches listed the Deployment; the ReplicaSet is created now and its watch event
    // held back: only a direct GET finds it.
    api.hold_watch_events();
    let replica_set = api.seed_typed(&replica_set(&deployment));

    let (patched, _) = webhook.admit(&client, &pod_from(&replica_set)).await;
    let pod: Pod = serde_json::from_value(patched).expect("a Pod");
    assert_eq!(
        env_of(&pod)
            .get("TOTAL_PLAYERS")
            .cloned()
            .flatten()
            .as_deref(),
        Some("480000")
    );
    let gets: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.verb == "get" && r.status == 200)
        .map(ApiRequest::line)
        .collect();
    assert!(
        gets.iter().any(|r| r.starts_with(&format!(
            "GET /apis/apps/v1/namespaces/{NAMESPACE}/replicasets/{REPLICA_SET}?"
        ))),
        "the ReplicaSet was fetched directly: {gets:?}"
    );
}
