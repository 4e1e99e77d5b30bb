//! Kubernetes slots (docs/coordination.md) against the kube-apiserver stand-in: 480 claimers (the claim
//! logic in-process, one kube client and API user per pod: 480 supervisor processes are too
//! heavy for two cores), replaced pods waiting for the slots their terminating predecessors
//! free, and real `wave-agent` processes refused by RBAC, facing an API outage, and
//! restarted in a pod that keeps its slot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use nix::sys::signal::{Signal, kill};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use wave_agent::coordination::{CoordinationMetrics, Waiting, claim_lease};
use wave_agent::shutdown::Shutdown;
use wave_agent::slots::Part;
use wave_agent::slots::kube::KubeSlots;
use wave_tests::apiserver::ApiServer;
use wave_tests::process::Running;
use wave_tests::{http_get, poll_blocking, wait_for, workspace_bin};

const NS: &str = "wave-tests";
const LABEL: &str = "kube-slots--p1";
const PATIENCE: Duration = Duration::from_secs(90);

fn part() -> Part {
    Part::from_label(LABEL)
}

/// A pod as the API server stores it once scheduled (a node name, so a delete lets it
/// terminate gracefully).
fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"testId": LABEL}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "game", "image": "game:1"}]},
        "status": {"phase": "Running"}
    })
}

/// Seeds pod `name`; returns its uid.
fn seed_pod(api: &ApiServer, name: &str) -> String {
    api.seed(pod(name))["metadata"]["uid"]
        .as_str()
        .expect("a stored pod has a uid")
        .to_owned()
}

fn user(pod: &str) -> String {
    format!("system:serviceaccount:{NS}:{pod}")
}

async fn client(kubeconfig: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("a kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a client config");
    Client::try_from(config).expect("a client")
}

/// A claimer in-process: what `wave-agent` runs for the pod, with the pod's own API user.
struct Claimer {
    pod: String,
    waiting: Waiting,
}

fn spawn_claim(
    api: &ApiServer,
    tasks: &mut JoinSet<(String, Option<u32>)>,
    pod: &str,
    uid: String,
    machines: u32,
) -> Claimer {
    let kubeconfig = api.kubeconfig(&user(pod));
    let waiting = Waiting::default();
    let (name, shared) = (pod.to_owned(), waiting.clone());
    tasks.spawn(async move {
        let slots = KubeSlots::new(client(&kubeconfig).await, NS, part(), &name, &uid);
        let metrics = CoordinationMetrics::register(&mut Registry::default());
        let index = claim_lease(
            &slots,
            machines,
            &part(),
            &metrics,
            &shared,
            &Shutdown::default(),
        )
        .await;
        (name, index)
    });
    Claimer {
        pod: pod.to_owned(),
        waiting,
    }
}

/// Slot index → owner pod name, from the stored slot Leases.
fn held_slots(api: &ApiServer) -> BTreeMap<u32, String> {
    let mut held = BTreeMap::new();
    for lease in api.list("coordination.k8s.io/v1", "Lease", Some(NS)) {
        let lease: Lease = serde_json::from_value(lease).expect("a Lease");
        let labels = lease.metadata.labels.clone().unwrap_or_default();
        let Some(index) = labels.get("waveloadtest.io/slot") else {
            continue;
        };
        let owner = lease.metadata.owner_references.clone().unwrap_or_default();
        let previous = held.insert(index.parse().expect("a slot number"), owner[0].name.clone());
        assert!(previous.is_none(), "slot {index} held twice");
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_eighty_pods_claim_distinct_slots_with_api_requests_linear_in_the_pods() {
    const M: u32 = 480;
    let api = ApiServer::start().await;
    let pods: Vec<(String, String)> = (0..M)
        .map(|i| {
            let name = format!("ltystore-p1-{i:03}");
            let uid = seed_pod(&api, &name);
            (name, uid)
        })
        .collect();
    let before = api.request_count();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (name, uid) in pods {
        spawn_claim(&api, &mut tasks, &name, uid, M);
    }
    let mut claimed = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (pod, index) = done.expect("a claim does not panic");
        claimed.insert(pod, index.expect("a slot"));
    }
    let elapsed = started.elapsed();
    let indices: BTreeSet<u32> = claimed.values().copied().collect();
    assert_eq!(indices, (0..M).collect(), "480 distinct slots");
    let held = held_slots(&api);
    assert_eq!(held.len(), 480);
    for (index, owner) in &held {
        assert_eq!(claimed[owner], *index, "the Lease's owner is its claimer");
    }
    // Agent numbers follow: m × 10 + k covers [0, 4800) once.
    let numbers: BTreeSet<u64> = indices
        .iter()
        .flat_map(|&m| (0..10).map(move |k| u64::from(m) * 10 + k))
        .collect();
    assert_eq!(numbers.len(), 4800);

    let requests: Vec<_> = api.requests().into_iter().skip(before).collect();
    let mut per_pod: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        *per_pod
            .entry(r.user.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let most = per_pod.values().max().copied().unwrap_or_default();
    eprintln!(
        "480 claims: {elapsed:.2?}, {} API requests ({:.2} per pod, at most {most} for one pod)",
        requests.len(),
        requests.len() as f64 / f64::from(M)
    );
    assert!(
        requests.len() <= 8 * M as usize,
        "API requests grow with the pods, not their square: {}",
        requests.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_pods_wait_for_terminating_ones_and_take_exactly_the_freed_slots() {
    const M: u32 = 40;
    let api = ApiServer::start().await;
    let mut tasks = JoinSet::new();
    for i in 0..M {
        let name = format!("old-{i:02}");
        let uid = seed_pod(&api, &name);
        spawn_claim(&api, &mut tasks, &name, uid, M);
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a claim does not panic").1.expect("a slot");
    }
    let before = held_slots(&api);

    // 20 pods are deleted: they terminate (still there, holding their slots) while their
    // replacements arrive.
    let replaced: Vec<String> = (0..20).map(|i| format!("old-{:02}", i * 2)).collect();
    for name in &replaced {
        api.delete("v1", "Pod", Some(NS), name);
    }
    let claimers: Vec<Claimer> = (0..20)
        .map(|i| {
            let name = format!("new-{i:02}");
            let uid = seed_pod(&api, &name);
            spawn_claim(&api, &mut tasks, &name, uid, M)
        })
        .collect();
    wait_for("every replacement to wait for a slot", PATIENCE, || async {
        claimers.iter().all(|c| {
            c.waiting
                .lock()
                .expect("not poisoned")
                .as_deref()
                .is_some_and(|w| w.contains("are held"))
        })
    })
    .await;
    assert_eq!(
        held_slots(&api),
        before,
        "nothing changed hands while they terminate"
    );
    assert!(
        tasks.try_join_next().is_none(),
        "no replacement has a slot yet"
    );

    // The kubelet finishes; the garbage collector frees their Leases.
    for name in &replaced {
        api.finish_termination(NS, name);
    }
    let mut taken = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        let (pod, index) = done.expect("a claim does not panic");
        taken.insert(index.expect("a slot"), pod);
    }
    let freed: BTreeSet<u32> = before
        .iter()
        .filter(|(_, owner)| replaced.contains(owner))
        .map(|(index, _)| *index)
        .collect();
    assert_eq!(taken.keys().copied().collect::<BTreeSet<_>>(), freed);
    let after = held_slots(&api);
    assert_eq!(after.len(), 40);
    for (index, owner) in &after {
        let expected = taken.get(index).unwrap_or(&before[index]);
        assert_eq!(owner, expected, "slot {index}");
    }
    assert!(claimers.iter().all(|c| taken.values().any(|p| p == &c.pod)));
}

/// A `wave-agent` of pod `pod` against the stand-in, as its API user.
fn supervisor(api: &ApiServer, dir: &Path, pod: &str, uid: &str, machines: u32) -> Running {
    let work = dir.join(pod);
    std::fs::create_dir_all(&work).expect("work dir");
    let mut cmd = Command::new(workspace_bin("wave-agent"));
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("KUBECONFIG", api.kubeconfig(&user(pod)))
        .env("WAVE_WORK_DIR", &work)
        .env("WAVE_METRICS_PORT", "0")
        .env("WAVE_METRICS_ADDRESS", "127.0.0.1")
        .env("TEST_ID", "kube-slots")
        .env("WAVE_TEST_PART", "p1")
        .env("WAVE_COORDINATION", "kubernetes")
        .env("WAVE_MACHINES", machines.to_string())
        .env("WAVE_AGENTS", "2")
        .env("POD_NAME", pod)
        .env("POD_UID", uid)
        .env("POD_NAMESPACE", NS)
        .args([
            "--",
            "sh",
            "-c",
            "echo $$ > \"$WAVE_OUTPUT_DIR/pid\"; echo \"$WAVE_MACHINE_INDEX $WAVE_PLAYER_OFFSET\" > \"$WAVE_OUTPUT_DIR/slot.txt\"; exec sleep 300",
        ]);
    Running::spawn(&mut cmd, dir.join(format!("{pod}.log")))
}

fn agent_slot(dir: &Path, pod: &str) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join(pod).join("results/agent-0/slot.txt")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn wait_slot(dir: &Path, pod: &str, supervisor: &Running) -> u32 {
    poll_blocking(PATIENCE, || agent_slot(dir, pod))
        .unwrap_or_else(|| panic!("{pod}'s agents never started:\n{}", supervisor.output()))
}

#[test]
fn a_supervisor_refused_by_rbac_names_the_permission_and_starts_agents_only_once_granted() {
    let api = ApiServer::start_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let uid = seed_pod(&api, "pod-a");
    api.deny(
        Some(&user("pod-a")),
        "create",
        "coordination.k8s.io",
        "leases",
    );
    let running = supervisor(&api, dir.path(), "pod-a", &uid, 3);
    let port = running.metrics_port(PATIENCE);
    let expected = "may not create leases.coordination.k8s.io in namespace wave-tests";
    let readyz = poll_blocking(PATIENCE, || {
        http_get(port, "/readyz").filter(|r| r.body.contains(expected))
    })
    .unwrap_or_else(|| panic!("/readyz never named the permission:\n{}", running.output()));
    assert_eq!(readyz.status, 503);
    assert!(running.output().contains(expected), "{}", running.output());
    let metrics = http_get(port, "/metrics").expect("metrics").body;
    assert!(
        metrics.contains(
            "wave_coordination_forbidden{test_id=\"kube-slots\",verb=\"create\",resource=\"leases.coordination.k8s.io\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        agent_slot(dir.path(), "pod-a").is_none(),
        "no agents without a slot"
    );

    api.allow_all();
    wait_slot(dir.path(), "pod-a", &running);
    let metrics = http_get(port, "/metrics").expect("metrics").body;
    assert!(
        !metrics.contains("wave_coordination_forbidden{"),
        "{metrics}"
    );
}

#[test]
fn a_supervisor_waits_out_an_api_outage_and_says_so() {
    let api = ApiServer::start_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let uid = seed_pod(&api, "pod-a");
    api.stop();
    let running = supervisor(&api, dir.path(), "pod-a", &uid, 3);
    let port = running.metrics_port(PATIENCE);
    let readyz = poll_blocking(PATIENCE, || {
        http_get(port, "/readyz").filter(|r| r.body.contains("retrying in"))
    })
    .unwrap_or_else(|| panic!("/readyz never said it retries:\n{}", running.output()));
    assert!(
        readyz
            .body
            .contains("cannot get pods in namespace wave-tests"),
        "{}",
        readyz.body
    );
    assert!(agent_slot(dir.path(), "pod-a").is_none());
    api.resume();
    wait_slot(dir.path(), "pod-a", &running);
}

#[test]
fn a_restarted_container_keeps_its_slot_while_another_pod_waits_for_one() {
    let api = ApiServer::start_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let uid_a = seed_pod(&api, "pod-a");
    let uid_b = seed_pod(&api, "pod-b");
    let a = supervisor(&api, dir.path(), "pod-a", &uid_a, 1);
    assert_eq!(wait_slot(dir.path(), "pod-a", &a), 0);
    let b = supervisor(&api, dir.path(), "pod-b", &uid_b, 1);
    let port = b.metrics_port(PATIENCE);
    poll_blocking(PATIENCE, || {
        http_get(port, "/readyz").filter(|r| r.body.contains("are held"))
    })
    .unwrap_or_else(|| panic!("pod-b never waited:\n{}", b.output()));

    // pod-a's container crashes and restarts with its work dir: its Lease is still its own.
    kill(a.pid(), Signal::SIGKILL).expect("SIGKILL");
    drop(a);
    // Its agents went with the container.
    for k in 0..2 {
        let pid: i32 =
            std::fs::read_to_string(dir.path().join(format!("pod-a/results/agent-{k}/pid")))
                .expect("agent pid")
                .trim()
                .parse()
                .expect("a pid");
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    std::fs::remove_file(dir.path().join("pod-a/results/agent-0/slot.txt")).expect("rm");
    let again = supervisor(&api, dir.path(), "pod-a", &uid_a, 1);
    assert_eq!(wait_slot(dir.path(), "pod-a", &again), 0);
    assert!(
        agent_slot(dir.path(), "pod-b").is_none(),
        "pod-b still waits"
    );
    assert!(
        again
            .output()
            .contains("holding slot 0 of 1 (a slot Lease)"),
        "{}",
        again.output()
    );
}

/// `wave` as a user runs it, with their own kubeconfig; its stdout.
fn wave(api: &ApiServer, args: &[&str]) -> String {
    let output = Command::new(workspace_bin("wave"))
        .args(args)
        .env("KUBECONFIG", api.kubeconfig("alice"))
        .output()
        .expect("run wave");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "wave {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn wave_status_counts_the_machines_and_wave_stop_stops_every_supervisor_of_the_part() {
    let api = ApiServer::start_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let running: Vec<(String, Running)> = ["pod-a", "pod-b"]
        .into_iter()
        .map(|name| {
            let uid = seed_pod(&api, name);
            (name.to_owned(), supervisor(&api, dir.path(), name, &uid, 3))
        })
        .collect();
    for (name, supervisor) in &running {
        wait_slot(dir.path(), name, supervisor);
    }
    let status = wave(&api, &["status", "kube-slots", "-n", NS]);
    assert_eq!(
        status.trim(),
        "test kube-slots part p1: 3 machines: 2 claimed, 0 ready, 2 running, 0 completed; \
         not started together; pods: 2 Running"
    );

    let stopped = wave(
        &api,
        &[
            "stop",
            "kube-slots",
            "-n",
            NS,
            "--part",
            "p1",
            "--reason",
            "enough load",
        ],
    );
    assert!(stopped.contains("stopped (enough load"), "{stopped}");
    for (name, supervisor) in &running {
        let summary = poll_blocking(PATIENCE, || {
            let text = std::fs::read(dir.path().join(name).join("results/summary.json")).ok()?;
            serde_json::from_slice::<Value>(&text).ok()
        })
        .unwrap_or_else(|| panic!("no summary from {name}:\n{}", supervisor.output()));
        assert_eq!(summary["stopped"], "enough load", "{summary}");
        assert_eq!(
            summary["agents"][0]["state"], "failed",
            "stopped agents did not succeed"
        );
        let port = supervisor.metrics_port(PATIENCE);
        poll_blocking(PATIENCE, || {
            http_get(port, "/metrics").filter(|m| {
                m.body
                    .contains("wave_test_completed{test_id=\"kube-slots\"} 1")
            })
        })
        .unwrap_or_else(|| panic!("{name} never reported completion:\n{}", supervisor.output()));
    }
    let status = poll_blocking(PATIENCE, || {
        Some(wave(&api, &["status", "kube-slots", "-n", NS])).filter(|s| s.contains("2 completed"))
    })
    .expect("both pods completed");
    assert!(status.contains("stopped: enough load"), "{status}");
    for (name, mut supervisor) in running {
        assert!(
            supervisor.try_wait().is_none(),
            "{name}'s supervisor stays up"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_of_a_pod_that_no_longer_exists_is_reclaimed() {
    let api = ApiServer::start().await;
    // A garbage collector that has not caught up: the Lease outlives its pod.
    api.set_garbage_collection(false);
    let mut tasks = JoinSet::new();
    let uid = seed_pod(&api, "gone");
    spawn_claim(&api, &mut tasks, "gone", uid, 1);
    let (_, index) = tasks.join_next().await.expect("a claim").expect("no panic");
    assert_eq!(index, Some(0));
    api.delete("v1", "Pod", Some(NS), "gone");
    api.finish_termination(NS, "gone");
    assert_eq!(held_slots(&api)[&0], "gone", "the Lease is still there");

    let uid = seed_pod(&api, "next");
    spawn_claim(&api, &mut tasks, "next", uid, 1);
    let (_, index) = tasks.join_next().await.expect("a claim").expect("no panic");
    assert_eq!(index, Some(0));
    assert_eq!(held_slots(&api)[&0], "next");
    let deletes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.verb == "delete" && r.resource == "leases")
        .collect();
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].user.as_deref(), Some(user("next").as_str()));
}
