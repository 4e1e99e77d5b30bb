//! A supervisor killed mid-test and started again on the same work directory, as when a
//! load container crashes and the kubelet restarts it with its emptyDir intact (docs/agent-supervisor.md). The supervisor runs as PID 1 of its own PID namespace (`unshare --pid --fork
//! --mount-proc`), so SIGKILL takes its agents with it, as in a container.
//!
//! Needs the workspace binaries (`cargo build --workspace --bins`) and root (for `unshare`).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use wave_tests::process::Running;
use wave_tests::proxy::CountingProxy;
use wave_tests::s3::{S3Access, S3sFs};
use wave_tests::workspace_bin;

const PREFIX: &str = "results/t-resume/pod-r/c0/";

/// Agent 0 finishes at once; agent 1 waits forever in its first run and finishes in the
/// next. Each run leaves a 6 MB file of its own and appends to runs.txt.
const AGENT: &str = r#"
echo "agent $AGENT_INDEX run $WAVE_RUN" >> "$WAVE_OUTPUT_DIR/runs.txt"
head -c 6000000 /dev/urandom > "data-$AGENT_INDEX.tmp"
mv "data-$AGENT_INDEX.tmp" "$WAVE_OUTPUT_DIR/data-run$WAVE_RUN.bin"
i=0
while [ $i -lt 10 ]; do echo "agent $AGENT_INDEX run $WAVE_RUN line $i"; i=$((i+1)); done
if [ "$AGENT_INDEX" = 1 ] && [ "$WAVE_RUN" = 0 ]; then
  echo waiting > "$WAVE_OUTPUT_DIR/waiting"
  exec sleep 600
fi
"#;

fn start_in_namespace(s3: &S3Access, endpoint: &str, work: &Path, log: &str) -> Running {
    let script = work.with_extension("agent.sh");
    fs::write(&script, AGENT).expect("write the agent");
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(workspace_bin("wave-agent"))
        .arg("run")
        .envs(s3.agent_env())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("TEST_ID", "t-resume")
        .env("POD_NAME", "pod-r")
        .env("WAVE_CONTAINER_INDEX", "0")
        .env("WAVE_AGENTS", "2")
        .env("PLAYERS_PER_AGENT", "1")
        .env("WAVE_WORK_DIR", work)
        .env("WAVE_RESULTS_URL", s3.url("results/t-resume/").to_string())
        .env("WAVE_METRICS_PORT", "0")
        .env("WAVE_UPLOAD_INTERVAL", "200ms")
        .env("WAVE_EXIT_ON_COMPLETE", "true")
        .arg("--")
        .arg("sh")
        .arg(&script);
    Running::spawn(&mut command, work.with_extension(log))
}

/// The pid (outside the namespace) of `unshare`'s child: the namespace's PID 1.
fn namespace_init(unshare: Pid) -> Pid {
    let children = format!("/proc/{unshare}/task/{unshare}/children");
    let text = fs::read_to_string(&children).expect("unshare's children");
    let pid = text
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("unshare has forked its child");
    Pid::from_raw(pid)
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_default()).unwrap_or_default()
}

/// Every file under `root`, relative path and size.
fn local_files(root: &Path) -> Vec<(String, u64)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                let size = fs::metadata(&path).expect("meta").len();
                files.push((rel.display().to_string(), size));
            }
        }
    }
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread")]
async fn a_supervisor_killed_mid_test_resumes_it_without_rerunning_or_resending() {
    let s3 = S3sFs::start().await;
    let proxy = CountingProxy::start(s3.address());
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).expect("work dir");
    let mut first = start_in_namespace(&s3, &proxy.endpoint(), &work, "log1");

    // Agent 0 has ended, agent 1 is waiting, and the store has both 6 MB files.
    let started = Instant::now();
    loop {
        let journal = json(&work.join("state/agents.json"));
        let stored = s3.list(PREFIX).await;
        let has = |rel: &str, size: u64| stored.contains(&(format!("{PREFIX}{rel}"), size));
        if journal["agents"][0]["state"] == "succeeded"
            && work.join("results/agent-1/waiting").exists()
            && has("agent-0/data-run0.bin", 6_000_000)
            && has("agent-1/data-run0.bin", 6_000_000)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first run did not get there:\n{}",
            first.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Two more syncs, so the ledger has caught up with what the store holds.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let init = namespace_init(first.pid());
    signal::kill(init, Signal::SIGKILL).expect("SIGKILL the supervisor");
    let status = first.wait(Duration::from_secs(30)).await;
    assert!(!status.success(), "killed: {status}");
    let stored_at_kill = s3.list(PREFIX).await;
    let sent_before = proxy.sent();

    let mut second = start_in_namespace(&s3, &proxy.endpoint(), &work, "log2");
    let status = second.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}:\n{}", second.output());
    let output = second.output();
    assert!(output.contains("resuming the test"), "{output}");

    let results = work.join("results");
    let runs =
        |k: u32| fs::read_to_string(results.join(format!("agent-{k}/runs.txt"))).expect("runs.txt");
    assert_eq!(
        runs(0),
        "agent 0 run 0\n",
        "agent 0 had ended: not run again"
    );
    assert_eq!(
        runs(1),
        "agent 1 run 0\nagent 1 run 1\n",
        "agent 1 restarted with WAVE_RUN=1"
    );
    let log = fs::read_to_string(results.join("agent-1/stdout.log")).expect("stdout.log");
    let marker = log
        .find("WAVE_RUN=1")
        .expect("a marker line before the second run");
    assert!(
        log[..marker].contains("agent 1 run 0 line 9"),
        "the first run's output is kept:\n{log}"
    );
    assert!(log[marker..].contains("agent 1 run 1 line 9"), "{log}");

    // Every byte of both runs is in the store, as on disk.
    let local = local_files(&results);
    let stored: Vec<(String, u64)> = s3
        .list(PREFIX)
        .await
        .into_iter()
        .map(|(k, size)| {
            (
                k.strip_prefix(PREFIX).expect("under the prefix").to_owned(),
                size,
            )
        })
        .collect();
    assert_eq!(stored, local);
    for (rel, _) in &local {
        assert!(
            s3.get_unvalidated(&format!("{PREFIX}{rel}")).await
                == fs::read(results.join(rel)).expect("local file"),
            "{rel} differs"
        );
    }

    // What the second supervisor sent: the files that were not in the store yet (agent 1's
    // second 6 MB file, the summary) and the logs that grew, not the 12 MB stored before.
    let sent_after = proxy.sent() - sent_before;
    let new_bytes: u64 = local
        .iter()
        .filter(|(rel, size)| !stored_at_kill.contains(&(format!("{PREFIX}{rel}"), *size)))
        .map(|(_, size)| size)
        .sum();
    assert!(
        sent_after as f64 <= 1.1 * new_bytes as f64 + 512.0 * 1024.0,
        "the second supervisor sent {sent_after} bytes for {new_bytes} new bytes"
    );

    let summary = json(&results.join("summary.json"));
    assert_eq!(summary["completed"], true, "{summary:#}");
    assert_eq!(summary["succeeded"], true, "{summary:#}");
    assert_eq!(
        summary["supervisor_starts"].as_array().map(Vec::len),
        Some(2),
        "{summary:#}"
    );
    let agent0 = &summary["agents"][0];
    assert_eq!(agent0["exit_codes"], serde_json::json!([0]), "{summary:#}");
    assert_eq!(agent0["runs"][0]["supervisor_start"], 0, "{summary:#}");
    let agent1 = &summary["agents"][1];
    assert_eq!(agent1["restarts"], 1, "{summary:#}");
    assert_eq!(
        agent1["exit_codes"],
        serde_json::json!([137, 0]),
        "{summary:#}"
    );
    assert_eq!(agent1["runs"][0]["supervisor_start"], 0, "{summary:#}");
    assert_eq!(agent1["runs"][1]["supervisor_start"], 1, "{summary:#}");
    assert_eq!(agent1["runs"][1]["run"], 1, "{summary:#}");
}
