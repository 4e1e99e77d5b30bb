//! The pod's grace period is sized from the stop timeout its supervisor will really use: a
//! container that sets its own `WAVE_STOP_TIMEOUT` longer than the webhook config's gets a
//! grace period long enough for its agents' grace and the final upload. The patched pod runs
//! the way the kubelet runs it and is stopped the way the kubelet stops it (SIGTERM, then
//! SIGKILL to the whole container when `terminationGracePeriodSeconds` ends), against s3s-fs.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use wave_contract::names::grace_period;
use wave_tests::kubelet::{LocalPod, PodIdentity, Stopped, stop_container};
use wave_tests::process::Running;
use wave_tests::s3::S3sFs;
use wave_tests::workspace_bin;
use wave_webhook::config::Config;
use wave_webhook::mutate::{Verdict, admit};
use wave_webhook::part::OwnerReplicas;

/// An agent that ignores SIGTERM (it notes it and goes on), so its supervisor waits its
/// whole stop timeout before SIGKILL and only then uploads.
const STUBBORN_AGENT: &str = "trap 'echo got TERM >> \"$WAVE_OUTPUT_DIR/ticks.log\"' TERM; \
     while true; do echo tick >> \"$WAVE_OUTPUT_DIR/ticks.log\"; sleep 0.1; done";

/// The webhook config's stop timeout: its grace period (2 × 1 s + 10 s) is shorter than the
/// container's own stop timeout.
const CONFIG_STOP_TIMEOUT: Duration = Duration::from_secs(1);
/// The container's own `WAVE_STOP_TIMEOUT`.
const OWN_STOP_TIMEOUT: &str = "13s";

fn stubborn_pod(bucket: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "grace",
            "namespace": "wave-tests",
            "labels": {"testId": "t-grace"},
            "annotations": {
                "waveloadtest.io/total-players": "10",
                "waveloadtest.io/agents": "1",
                "waveloadtest.io/players-per-agent": "10",
                "waveloadtest.io/coordination": "off",
                "waveloadtest.io/resources": "none",
                "waveloadtest.io/supervisor": "image",
                "waveloadtest.io/script": format!("s3://{bucket}/scripts/t-grace/"),
                "waveloadtest.io/results": format!("s3://{bucket}/results/t-grace/"),
            },
        },
        "spec": {
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "game",
                "image": "game:1",
                "command": ["sh", "-c", STUBBORN_AGENT],
                "env": [{"name": "WAVE_STOP_TIMEOUT", "value": OWN_STOP_TIMEOUT}],
            }],
        },
    }))
    .expect("a pod")
}

/// The pod as the cluster's admission returns it.
fn admitted(pod: &Pod, config: &Config) -> Pod {
    let Verdict::Patch { patch, warnings } = admit(pod, OwnerReplicas::NoOwner, config) else {
        panic!("expected a patch");
    };
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("terminationGracePeriodSeconds raised from 30 to 36")),
        "{warnings:?}"
    );
    let mut value = serde_json::to_value(pod).expect("pod json");
    json_patch::patch(&mut value, &patch.operations()).expect("the patch applies");
    serde_json::from_value(value).expect("a patched pod")
}

/// Runs the pod's one container as pod `name`, then deletes the pod: the kubelet's SIGTERM,
/// and SIGKILL when `grace` ends.
async fn run_and_delete(pod: &Pod, name: &str, s3: &S3sFs, grace: Duration) -> (Stopped, String) {
    let volumes = tempfile::tempdir().expect("volumes");
    let local = LocalPod {
        pod,
        identity: PodIdentity {
            name: name.to_owned(),
            namespace: "wave-tests".into(),
            uid: format!("uid-{name}"),
            node_name: "node-1".into(),
        },
        volumes_root: volumes.path().to_path_buf(),
        image_path: vec![
            workspace_bin("wave-agent")
                .parent()
                .expect("target dir")
                .to_path_buf(),
        ],
    };
    local.create_volumes().expect("volumes");
    let mut containers = local.containers().expect("containers");
    let mut container = containers.remove(0);
    assert_eq!(
        container.env_value("WAVE_STOP_TIMEOUT"),
        Some(OWN_STOP_TIMEOUT)
    );
    for (key, value) in s3.agent_env() {
        container.set_env(&key, value);
    }
    container.set_env(
        "WAVE_WORK_DIR",
        volumes.path().join("wave-work").display().to_string(),
    );
    container.set_env("WAVE_METRICS_PORT", "0");
    container.set_env("WAVE_STATSD_PORT", "0");
    let log = volumes.path().join("supervisor.log");
    let mut supervisor = Running::spawn(&mut container.command(), log);
    wave_tests::wait_for("the agent's first tick", Duration::from_secs(30), || {
        let ticks = volumes.path().join("wave-work/results/agent-0/ticks.log");
        std::future::ready(ticks.exists())
    })
    .await;
    let stopped = stop_container(&mut supervisor, grace).await;
    (stopped, supervisor.output())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_containers_own_stop_timeout_gets_a_grace_period_its_final_upload_fits_in() {
    let s3 = S3sFs::start().await;
    s3.put(
        "scripts/t-grace/README",
        "the agent is the container's command",
    )
    .await;
    let config = Config {
        stop_timeout: CONFIG_STOP_TIMEOUT,
        ..Config::default()
    };
    let pod = admitted(&stubborn_pod(s3.bucket()), &config);
    let sized = pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .expect("a grace period");
    assert_eq!(sized, 36, "2 × 13 s + 10 s");
    // The same pod stopped within the grace period the config alone would give (the sizing
    // before the webhook read the container's own timeout): the kubelet's SIGKILL lands
    // while the supervisor still waits for its agent, and the final upload never happens.
    let (sized_run, too_short_run) = tokio::join!(
        run_and_delete(&pod, "grace-sized", &s3, Duration::from_secs(36)),
        run_and_delete(&pod, "grace-short", &s3, grace_period(CONFIG_STOP_TIMEOUT)),
    );

    let (stopped, log) = sized_run;
    assert!(
        matches!(stopped, Stopped::Exited(_)),
        "the supervisor must finish within the grace period:\n{log}"
    );
    let ticks = s3
        .get("results/t-grace/grace-sized/c0/agent-0/ticks.log")
        .await;
    assert!(
        String::from_utf8_lossy(&ticks).contains("got TERM"),
        "the final upload carries what the agent wrote after SIGTERM:\n{log}"
    );
    let summary = s3.get("results/t-grace/grace-sized/c0/summary.json").await;
    assert!(!summary.is_empty());

    let (stopped, log) = too_short_run;
    assert_eq!(stopped, Stopped::Killed, "{log}");
    let stored: Vec<String> = s3
        .list("results/t-grace/grace-short/")
        .await
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert!(
        !stored.iter().any(|k| k.ends_with("summary.json")),
        "killed before its final upload, yet {stored:?}"
    );
}
