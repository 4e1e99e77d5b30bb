//! One test across many pods (docs/coordination.md) with real `wave-agent` processes sharing a
//! `file:///dir/` slot folder: distinct slots, agent numbers and player ranges that tile the
//! part, a pod waiting for a freed slot, a restarted supervisor taking its own slot back,
//! `start: together` across 50 supervisors, a quorum reached by the timeout, a late pod, and
//! a stopped part.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use serde_json::Value;
use wave_agent::slots::probe_order;
use wave_agent::start::parse_time;
use wave_tests::process::Running;
use wave_tests::{http_get, poll_blocking, workspace_bin};

const PATIENCE: Duration = Duration::from_secs(90);

/// What each agent writes at its start: its own clock, then the variables of docs/coordination.md.
const AGENT: &str = r#"now=$(date +%s%N)
printf '%s %s %s %s %s %s %s\n' "$now" "$WAVE_MACHINE_INDEX" "$WAVE_MACHINES" "$WAVE_AGENT_NUMBER" "$WAVE_TOTAL_AGENTS" "$WAVE_PLAYER_OFFSET" "$WAVE_START_AT" > "$WAVE_OUTPUT_DIR/slot.txt"
exec sleep "${HOLD:-0}""#;

/// One agent's line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AgentStart {
    /// Nanoseconds since the epoch, by the agent's own clock.
    at_nanos: u128,
    machine_index: u32,
    machines: u32,
    agent_number: u64,
    total_agents: u64,
    player_offset: u64,
    start_at: String,
}

impl AgentStart {
    fn parse(line: &str) -> Option<AgentStart> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [at, m, machines, g, total, offset, start_at] = f.as_slice() else {
            return None;
        };
        Some(AgentStart {
            at_nanos: at.parse().ok()?,
            machine_index: m.parse().ok()?,
            machines: machines.parse().ok()?,
            agent_number: g.parse().ok()?,
            total_agents: total.parse().ok()?,
            player_offset: offset.parse().ok()?,
            start_at: (*start_at).to_owned(),
        })
    }
}

/// A test part's shared slot folder and the work dirs of its pods.
struct Part {
    dir: tempfile::TempDir,
    machines: u32,
    agents: u32,
}

impl Part {
    fn new(machines: u32, agents: u32) -> Part {
        Part {
            dir: tempfile::tempdir().expect("tempdir"),
            machines,
            agents,
        }
    }

    fn work(&self, pod: &str) -> PathBuf {
        self.dir.path().join(pod)
    }

    fn slots_dir(&self) -> PathBuf {
        self.dir.path().join("slots")
    }

    /// A supervisor of pod `pod` (its UID is `uid-<pod>` unless `uid` says otherwise).
    fn start(&self, pod: &str, env: &[(&str, &str)]) -> Running {
        self.start_as(pod, &format!("uid-{pod}"), env)
    }

    fn start_as(&self, pod: &str, uid: &str, env: &[(&str, &str)]) -> Running {
        let work = self.work(pod);
        std::fs::create_dir_all(&work).expect("work dir");
        let mut cmd = Command::new(workspace_bin("wave-agent"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WAVE_WORK_DIR", &work)
            .env("WAVE_METRICS_PORT", "0")
            .env("WAVE_METRICS_ADDRESS", "127.0.0.1")
            .env("POD_NAME", pod)
            .env("POD_UID", uid)
            .env("TEST_ID", "slots-test")
            .env("WAVE_TEST_PART", "p1")
            .env(
                "WAVE_COORDINATION",
                format!("file://{}/", self.slots_dir().display()),
            )
            .env("WAVE_MACHINES", self.machines.to_string())
            .env("WAVE_AGENTS", self.agents.to_string())
            .env("PLAYERS_PER_AGENT", "100")
            .env("WAVE_STOP_TIMEOUT", "2s")
            .envs(env.iter().copied())
            .args(["--", "sh", "-c", AGENT]);
        Running::spawn(&mut cmd, self.dir.path().join(format!("{pod}.log")))
    }

    /// The agents' lines of pod `pod`, once all of them wrote one.
    fn starts(&self, pod: &str) -> Option<Vec<AgentStart>> {
        (0..self.agents)
            .map(|k| {
                let path = self.work(pod).join(format!("results/agent-{k}/slot.txt"));
                AgentStart::parse(&std::fs::read_to_string(path).ok()?)
            })
            .collect()
    }

    fn wait_starts(&self, pod: &str, supervisor: &Running) -> Vec<AgentStart> {
        poll_blocking(PATIENCE, || self.starts(pod)).unwrap_or_else(|| {
            panic!(
                "the agents of {pod} did not start:\n{}",
                supervisor.output()
            )
        })
    }

    fn summary(&self, pod: &str) -> Option<Value> {
        let text = std::fs::read(self.work(pod).join("results/summary.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

fn metrics(supervisor: &Running) -> String {
    http_get(supervisor.metrics_port(PATIENCE), "/metrics")
        .map(|r| r.body)
        .unwrap_or_default()
}

#[test]
fn file_slots_tile_the_part_and_a_fourth_pod_waits_for_the_slot_freed_by_a_dead_one() {
    let part = Part::new(3, 2);
    let hold = [("HOLD", "120")];
    let mut pods: Vec<(String, Running)> = (0..3)
        .map(|i| {
            let pod = format!("pod-{i}");
            let running = part.start(&pod, &hold);
            (pod, running)
        })
        .collect();
    let mut all = Vec::new();
    for (pod, running) in &pods {
        let starts = part.wait_starts(pod, running);
        assert!(
            starts
                .iter()
                .all(|s| s.machine_index == starts[0].machine_index),
            "one slot per pod: {starts:?}"
        );
        all.extend(starts);
    }
    let machines: BTreeSet<u32> = all.iter().map(|s| s.machine_index).collect();
    assert_eq!(machines, BTreeSet::from([0, 1, 2]));
    let numbers: BTreeSet<u64> = all.iter().map(|s| s.agent_number).collect();
    assert_eq!(numbers, (0..6).collect(), "every agent number once");
    let mut offsets: Vec<u64> = all.iter().map(|s| s.player_offset).collect();
    offsets.sort_unstable();
    assert_eq!(
        offsets,
        [0, 100, 200, 300, 400, 500],
        "players [0, 600) tiled"
    );
    assert!(all.iter().all(|s| s.machines == 3 && s.total_agents == 6));

    // A fourth pod finds every slot held and says so in /readyz and its metrics.
    let fourth = part.start("pod-3", &hold);
    let port = fourth.metrics_port(PATIENCE);
    let readyz = poll_blocking(PATIENCE, || {
        http_get(port, "/readyz").filter(|r| r.body.contains("are held"))
    })
    .unwrap_or_else(|| {
        panic!(
            "/readyz never said the slots are held:\n{}",
            fourth.output()
        )
    });
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    let text = metrics(&fourth);
    assert!(
        text.contains("wave_slot_state{test_id=\"slots-test\",state=\"waiting\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wave_machine_index{test_id=\"slots-test\"} -1"),
        "{text}"
    );
    assert!(part.starts("pod-3").is_none(), "no agents without a slot");

    // Its slot frees when pod-1's supervisor dies; the fourth pod takes exactly that one.
    let (_, dead) = pods.remove(1);
    let freed = part.starts("pod-1").expect("pod-1 started")[0].machine_index;
    kill(dead.pid(), Signal::SIGKILL).expect("SIGKILL pod-1's supervisor");
    let taken = part.wait_starts("pod-3", &fourth);
    assert_eq!(taken[0].machine_index, freed);
    let text = metrics(&fourth);
    assert!(
        text.contains(&format!(
            "wave_machine_index{{test_id=\"slots-test\"}} {freed}"
        )),
        "{text}"
    );
    drop(dead);
}

#[test]
fn a_restarted_supervisor_takes_its_own_slot_back() {
    let part = Part::new(2, 1);
    let uid_a = "uid-a";
    let first_a = probe_order(uid_a, 2).next().expect("a slot");
    // b probes a's first slot first too, and claims before a: a gets the other one.
    let uid_b = (0..)
        .map(|i| format!("uid-b-{i}"))
        .find(|uid| probe_order(uid, 2).next() == Some(first_a))
        .expect("some uid probes the same slot first");
    let hold = [("HOLD", "120")];
    let b = part.start_as("b", &uid_b, &hold);
    assert_eq!(part.wait_starts("b", &b)[0].machine_index, first_a);
    let a = part.start_as("a", uid_a, &hold);
    let slot_a = part.wait_starts("a", &a)[0].machine_index;
    assert_ne!(slot_a, first_a);

    // Both supervisors die; a's container restarts first (same pod UID, a fresh work dir).
    for supervisor in [&a, &b] {
        kill(supervisor.pid(), Signal::SIGKILL).expect("SIGKILL");
    }
    drop((a, b));
    std::fs::remove_dir_all(part.work("a")).expect("clear a's work dir");
    let again = part.start_as("a", uid_a, &hold);
    assert_eq!(
        part.wait_starts("a", &again)[0].machine_index,
        slot_a,
        "its own slot, not the first of its probe order"
    );
}

#[test]
fn together_starts_fifty_supervisors_at_one_start_at_and_a_late_pod_at_once() {
    let machines = 50;
    let part = Part::new(machines, 1);
    let env = [("WAVE_START", "together"), ("HOLD", "120")];
    let pods: Vec<(String, Running)> = (0..machines)
        .map(|i| {
            let pod = format!("pod-{i:02}");
            let running = part.start(&pod, &env);
            (pod, running)
        })
        .collect();
    let starts: Vec<AgentStart> = pods
        .iter()
        .flat_map(|(pod, running)| part.wait_starts(pod, running))
        .collect();
    let start_at = &starts[0].start_at;
    assert!(
        starts.iter().all(|s| &s.start_at == start_at),
        "one WAVE_START_AT: {starts:?}"
    );
    let agreed = parse_time(start_at).expect("WAVE_START_AT is RFC 3339");
    let agreed_nanos = agreed
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    assert!(
        starts.iter().all(|s| s.at_nanos >= agreed_nanos),
        "no agent started before {start_at}: {starts:?}"
    );
    let first = starts.iter().map(|s| s.at_nanos).min().expect("starts");
    let last = starts.iter().map(|s| s.at_nanos).max().expect("starts");
    eprintln!(
        "start: together, {machines} supervisors: agents started {:.1} ms to {:.1} ms after start-at {start_at} (spread {:.1} ms)",
        (first - agreed_nanos) as f64 / 1e6,
        (last - agreed_nanos) as f64 / 1e6,
        (last - first) as f64 / 1e6
    );
    let machines_seen: BTreeSet<u32> = starts.iter().map(|s| s.machine_index).collect();
    assert_eq!(machines_seen.len(), 50);

    // A pod that comes later (its predecessor died) starts at once with the same start-at.
    let (_, dead) = &pods[7];
    kill(dead.pid(), Signal::SIGKILL).expect("SIGKILL");
    let late = part.start("pod-late", &env);
    let late_start = part.wait_starts("pod-late", &late);
    assert_eq!(&late_start[0].start_at, start_at);
    assert!(late_start[0].at_nanos > last);
}

#[test]
fn a_quorum_not_reached_starts_the_ready_machines_after_the_timeout() {
    // 3 of 5 machines, quorum 80% (4): the timeout decides.
    let part = Part::new(5, 1);
    let env = [
        ("WAVE_START", "together"),
        ("WAVE_START_QUORUM", "80%"),
        ("WAVE_START_TIMEOUT", "2s"),
        ("HOLD", "120"),
    ];
    let pods: Vec<(String, Running)> = (0..3)
        .map(|i| {
            let pod = format!("pod-{i}");
            let running = part.start(&pod, &env);
            (pod, running)
        })
        .collect();
    let starts: Vec<AgentStart> = pods
        .iter()
        .flat_map(|(pod, running)| part.wait_starts(pod, running))
        .collect();
    assert!(starts.iter().all(|s| s.start_at == starts[0].start_at));
    let log = pods[0].1.output() + &pods[1].1.output() + &pods[2].1.output();
    assert!(
        log.contains("start-timeout reached with 3 of 5 machines ready (quorum 4)"),
        "{log}"
    );
}

#[test]
fn stopping_the_part_stops_every_supervisor_records_the_reason_and_keeps_them_up() {
    let part = Part::new(3, 2);
    let env = [("HOLD", "300")];
    let mut pods: Vec<(String, Running)> = (0..3)
        .map(|i| {
            let pod = format!("pod-{i}");
            let running = part.start(&pod, &env);
            (pod, running)
        })
        .collect();
    for (pod, running) in &pods {
        part.wait_starts(pod, running);
    }
    let start_name = wave_agent::slots::Part::from_label("slots-test--p1").start_name();
    std::fs::write(
        part.slots_dir().join(format!("{start_name}.stop")),
        "enough load\n",
    )
    .expect("stop the part");
    for (pod, running) in &mut pods {
        let summary = poll_blocking(PATIENCE, || part.summary(pod))
            .unwrap_or_else(|| panic!("no summary from {pod}:\n{}", running.output()));
        assert_eq!(summary["stopped"], "enough load", "{summary}");
        assert_eq!(summary["completed"], true);
        assert!(running.try_wait().is_none(), "{pod}'s supervisor stays up");
        let text = metrics(running);
        assert!(
            text.contains("wave_test_completed{test_id=\"slots-test\"} 1"),
            "{text}"
        );
    }
}
