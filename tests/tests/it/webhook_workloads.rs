//! StatefulSet and Job owners: the webhook's lookup against the kube-apiserver stand-in and
//! `wave-webhook inject -f` on the same manifests derive the same machines; and the owner
//! watches of a big shared cluster cost the webhook no memory for objects that are not tests.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wave_tests::apiserver::ApiServer;
use wave_tests::tls::TlsFiles;
use wave_tests::webhook::WebhookProcess;
use wave_tests::{wait_for, workspace_bin};
use wave_webhook::config::Config;
use wave_webhook::mutate::{Verdict, admit};
use wave_webhook::owners::{KubeAccess, OwnerLookup};
use wave_webhook::part::OwnerReplicas;

const NS: &str = "loadtest";

const STATEFUL_SET: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: game-sts
  namespace: loadtest
spec:
  replicas: 4
  serviceName: game
  selector:
    matchLabels: {app: game-sts}
  template:
    metadata:
      labels: {app: game-sts, testId: sts-test}
    spec:
      containers:
        - name: agent
          image: game:1
          command: [/game]
";

const INDEXED_JOB: &str = "apiVersion: batch/v1
kind: Job
metadata:
  name: burst
  namespace: loadtest
spec:
  completionMode: Indexed
  completions: 12
  parallelism: 6
  template:
    metadata:
      labels: {app: burst, testId: job-test}
    spec:
      restartPolicy: Never
      containers:
        - name: agent
          image: game:1
          command: [/game]
";

/// `wave-webhook inject -f -` on `manifest`: TOTAL_PLAYERS of its first container.
fn injected_total_players(manifest: &str) -> String {
    let mut child = Command::new(workspace_bin("wave-webhook"))
        .args(["inject", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wave-webhook inject");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(manifest.as_bytes())
        .expect("write stdin");
    let output = child.wait_with_output().expect("inject finishes");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&output.stdout))
        .expect("inject prints YAML");
    doc["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "TOTAL_PLAYERS")
        .and_then(|e| e["value"].as_str())
        .expect("TOTAL_PLAYERS")
        .to_string()
}

/// The workload in `manifest` stored in the stand-in, and one of its pods as its controller
/// would create it (template labels, controlling owner reference with the stored uid).
fn seed_workload_and_pod(api: &ApiServer, manifest: &str) -> Pod {
    let workload: Value = serde_saphyr::from_str(manifest).expect("manifest");
    let stored = api.seed(workload.clone());
    let template = &workload["spec"]["template"];
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{}-", stored["metadata"]["name"].as_str().expect("name")),
            "namespace": NS,
            "labels": template["metadata"]["labels"],
            "ownerReferences": [{
                "apiVersion": stored["apiVersion"],
                "kind": stored["kind"],
                "name": stored["metadata"]["name"],
                "uid": stored["metadata"]["uid"],
                "controller": true,
                "blockOwnerDeletion": true,
            }],
        },
        "spec": template["spec"],
    }))
    .expect("a pod")
}

/// TOTAL_PLAYERS the cluster's admission gives `pod` with `replicas` from the lookup.
fn admitted_total_players(pod: &Pod, replicas: OwnerReplicas) -> String {
    let Verdict::Patch { patch, .. } = admit(pod, replicas, &Config::default()) else {
        panic!("expected a patch")
    };
    let mut value = serde_json::to_value(pod).expect("pod json");
    json_patch::patch(&mut value, &patch.operations()).expect("patch applies");
    value["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "TOTAL_PLAYERS")
        .and_then(|e| e["value"].as_str())
        .expect("TOTAL_PLAYERS")
        .to_string()
}

#[tokio::test]
async fn stateful_set_and_indexed_job_owners_give_what_inject_f_gives() {
    let api = ApiServer::start().await;
    let stop = CancellationToken::new();
    let lookup = OwnerLookup::start(
        &KubeAccess::Kubeconfig(api.kubeconfig("system:serviceaccount:wave-system:wave-webhook")),
        stop.clone(),
    )
    .await;
    for (manifest, machines, total) in [
        (STATEFUL_SET, 4, "4000"),
        // An Indexed Job: its completions (12 indexes), not its parallelism (6 at once).
        (INDEXED_JOB, 12, "12000"),
    ] {
        let pod = seed_workload_and_pod(&api, manifest);
        let replicas = lookup.replicas(&pod, NS).await;
        assert_eq!(replicas, OwnerReplicas::Known(machines), "{manifest}");
        assert_eq!(admitted_total_players(&pod, replicas), total);
        assert_eq!(injected_total_players(manifest), total, "{manifest}");
    }
    stop.cancel();
}

/// Peak RSS of a webhook whose owner watches have listed everything `api` holds.
async fn webhook_peak_rss_kib(api: &ApiServer, dir: &std::path::Path, name: &str) -> u64 {
    let tls = TlsFiles::new();
    let kubeconfig = api.kubeconfig("system:serviceaccount:wave-system:wave-webhook");
    let server = WebhookProcess::start(
        &tls,
        &["--kubeconfig", kubeconfig.to_str().expect("UTF-8 path")],
        &dir.join(name),
    );
    server.wait_ready();
    wait_for(
        "the webhook to watch ReplicaSets, Deployments, StatefulSets and Jobs",
        Duration::from_secs(60),
        || {
            let all = ["replicasets", "deployments", "statefulsets", "jobs"]
                .iter()
                .all(|r| api.watching(r));
            async move { all }
        },
    )
    .await;
    // Let any list still being decoded finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.peak_rss_kib()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_unrelated_replica_sets_cost_the_webhook_no_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = ApiServer::start().await;
    let empty_kib = webhook_peak_rss_kib(&empty, dir.path(), "empty.log").await;

    let big = ApiServer::start().await;
    // A shared cluster: 2,000 Deployments with 10 revisions of history each, none a test.
    for d in 0..2_000 {
        let labels = json!({"app": format!("svc-{d}")});
        let template = json!({
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "app", "image": format!("registry.example/svc-{d}:1"),
                      "env": [{"name": "CONFIG", "value": "x".repeat(200)}]}]}
        });
        let deployment = big.seed(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("svc-{d}"), "namespace": format!("team-{}", d % 50), "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels}, "template": template},
        }));
        for revision in 0..10 {
            big.seed(json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {
                    "name": format!("svc-{d}-{revision:05}"),
                    "namespace": deployment["metadata"]["namespace"],
                    "labels": labels,
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": deployment["metadata"]["name"], "uid": deployment["metadata"]["uid"],
                        "controller": true}],
                },
                "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": template},
            }));
        }
    }
    let big_kib = webhook_peak_rss_kib(&big, dir.path(), "big.log").await;
    println!(
        "webhook VmHWM: {empty_kib} KiB with an empty cluster, {big_kib} KiB with 20,000 ReplicaSets and 2,000 Deployments"
    );
    assert!(
        big_kib < empty_kib + 8 * 1024,
        "peak RSS {big_kib} KiB against {empty_kib} KiB for an empty cluster"
    );
    // Every list and watch of ReplicaSets the webhook made was label-selected, the lists paged.
    let reads: Vec<_> = big
        .requests()
        .into_iter()
        .filter(|r| r.resource == "replicasets" && (r.verb == "list" || r.verb == "watch"))
        .collect();
    assert!(!reads.is_empty());
    for read in &reads {
        assert!(
            read.query.contains("labelSelector=testId"),
            "{}",
            read.line()
        );
        if read.verb == "list" {
            assert!(read.query.contains("limit=500"), "{}", read.line());
        }
    }
}
