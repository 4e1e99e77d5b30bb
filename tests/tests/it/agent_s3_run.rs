//! `wave-agent run` as a process against real S3 servers: script in, results out, through
//! an S3 outage, and the errors a user reads in the pod log.
//!
//! Needs the workspace binaries: `cargo build --workspace --bins` first.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use wave_tests::process::Running;
use wave_tests::s3::{Garage, S3Access, S3sFs};
use wave_tests::workspace_bin;

/// An agent that writes a log line and a 64 KiB frame every 100 ms, `ticks` times.
fn agent_script(ticks: u32) -> String {
    format!(
        "#!/bin/sh\nset -e\nfor i in $(seq 1 {ticks}); do\n  echo \"agent $AGENT_INDEX tick $i\" >> \"$WAVE_OUTPUT_DIR/ticks.log\"\n  head -c 65536 /dev/urandom > \"$WAVE_OUTPUT_DIR/frame-$i.bin\"\n  sleep 0.1\ndone\necho \"agent $AGENT_INDEX done\"\n"
    )
}

/// Starts `wave-agent run` with 2 agents, exiting on completion, results every 300 ms; its
/// output goes to `<work>.log`. `extra` environment variables override the others.
fn start_supervisor(
    s3: &S3Access,
    work: &Path,
    script_url: &str,
    results_url: &str,
    extra: &[(&str, &str)],
) -> Running {
    let mut command = Command::new(workspace_bin("wave-agent"));
    command
        .arg("run")
        .envs(s3.agent_env())
        .env("TEST_ID", "t-run")
        .env("POD_NAME", "pod-x")
        .env("WAVE_CONTAINER_INDEX", "0")
        .env("WAVE_AGENTS", "2")
        .env("PLAYERS_PER_AGENT", "5")
        .env("WAVE_WORK_DIR", work)
        .env("WAVE_SCRIPT_URL", script_url)
        .env("WAVE_RESULTS_URL", results_url)
        .env("WAVE_METRICS_PORT", "0")
        .env("WAVE_UPLOAD_INTERVAL", "300ms")
        .env("WAVE_STOP_TIMEOUT", "30s")
        .env("WAVE_EXIT_ON_COMPLETE", "true")
        .envs(extra.iter().copied());
    Running::spawn(&mut command, work.with_extension("log"))
}

fn local_files(root: &Path) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                files.push((rel.display().to_string(), path));
            }
        }
    }
    files.sort();
    files
}

/// Checks that every file under `<work>/results` is in S3 under `prefix` with the same
/// content, and nothing else is; returns the parsed summary.json.
async fn assert_results_mirrored(s3: &S3Access, work: &Path, prefix: &str) -> serde_json::Value {
    let local = local_files(&work.join("results"));
    let stored: Vec<String> = s3.list(prefix).await.into_iter().map(|(k, _)| k).collect();
    let expected: Vec<String> = local
        .iter()
        .map(|(rel, _)| format!("{prefix}{rel}"))
        .collect();
    assert_eq!(stored, expected);
    for (rel, path) in &local {
        let key = format!("{prefix}{rel}");
        assert!(
            s3.get(&key).await == fs::read(path).expect("local file"),
            "{key} differs from {}",
            path.display()
        );
    }
    serde_json::from_slice(&s3.get(&format!("{prefix}summary.json")).await)
        .expect("summary.json is JSON")
}

fn assert_summary_all_succeeded(summary: &serde_json::Value) {
    assert_eq!(summary["completed"], true, "{summary:#}");
    assert_eq!(summary["succeeded"], true, "{summary:#}");
    assert_eq!(summary["pod"], "pod-x", "{summary:#}");
    let agents = summary["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 2, "{summary:#}");
    for (k, agent) in agents.iter().enumerate() {
        assert_eq!(agent["index"], k as u64, "{summary:#}");
        assert_eq!(agent["state"], "succeeded", "{summary:#}");
        assert_eq!(agent["exit_codes"], serde_json::json!([0]), "{summary:#}");
        assert_eq!(agent["players"], 5, "{summary:#}");
    }
}

/// The S3 server goes away while the agents write and comes back later: every byte every
/// agent wrote ends up in S3, and summary.json is right.
#[tokio::test(flavor = "multi_thread")]
async fn every_result_byte_reaches_s3_through_an_outage() {
    let mut s3 = S3sFs::start().await;
    s3.put("scripts/t-run/run", agent_script(40)).await;
    s3.put("scripts/t-run/assets/readme.txt", "game assets")
        .await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    let script_url = s3.url("scripts/t-run/").to_string();
    let results_url = s3.url("results/t-run/").to_string();
    let mut agent = start_supervisor(&s3, &work, &script_url, &results_url, &[]);

    // Let the agents start and the first uploads happen, then cut S3 for two seconds.
    let started = Instant::now();
    while !work.join("results/agent-1/frame-5.bin").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "agents did not start:\n{}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s3.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        agent.try_wait().is_none(),
        "still running during the outage"
    );
    s3.start_again().await;

    let status = agent.wait(Duration::from_secs(90)).await;
    assert!(status.success(), "{status}:\n{}", agent.output());
    assert!(work.join("script/assets/readme.txt").is_file());
    let summary = assert_results_mirrored(&s3, &work, "results/t-run/pod-x/c0/").await;
    assert_summary_all_succeeded(&summary);
    for k in 0..2 {
        let ticks =
            fs::read_to_string(work.join(format!("results/agent-{k}/ticks.log"))).expect("ticks");
        assert_eq!(ticks.lines().count(), 40, "agent {k} wrote every tick");
    }
}

/// SIGTERM arrives while results are going up and the store is down: the final upload
/// keeps trying within the stop timeout, and once the store is back every byte the agents
/// wrote is in S3, with a summary.json saying the run was stopped.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_an_upload_and_an_outage_still_uploads_everything() {
    let mut s3 = S3sFs::start().await;
    let script = "#!/bin/sh\nhead -c 48000000 /dev/urandom > \"$WAVE_OUTPUT_DIR/big.bin\"\n\
                  echo written > \"$WAVE_OUTPUT_DIR/written\"\nexec sleep 600\n";
    s3.put("scripts/t-stop/run", script).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    let script_url = s3.url("scripts/t-stop/").to_string();
    let results_url = s3.url("results/t-stop/").to_string();
    let mut agent = start_supervisor(
        &s3,
        &work,
        &script_url,
        &results_url,
        &[
            ("WAVE_UPLOAD_INTERVAL", "200ms"),
            ("WAVE_STOP_TIMEOUT", "20s"),
            ("WAVE_EXIT_ON_COMPLETE", "false"),
        ],
    );

    // Both agents have written their 48 MB and the periodic sync is sending them (in
    // multipart) when the store goes away and the pod is told to stop.
    let started = Instant::now();
    while !(work.join("results/agent-0/written").exists()
        && work.join("results/agent-1/written").exists())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "agents did not write their results:\n{}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s3.stop();
    let pid = agent.pid();
    signal::kill(pid, Signal::SIGTERM).expect("SIGTERM the supervisor");
    tokio::time::sleep(Duration::from_secs(3)).await;
    s3.start_again().await;

    agent.wait(Duration::from_secs(60)).await;
    let summary = assert_results_mirrored(&s3, &work, "results/t-stop/pod-x/c0/").await;
    assert_eq!(summary["completed"], false, "{summary:#}");
    for k in 0..2 {
        let key = format!("results/t-stop/pod-x/c0/agent-{k}/big.bin");
        let stored: Vec<(String, u64)> = s3.list(&key).await;
        assert_eq!(stored, vec![(key, 48_000_000)], "agent {k}'s big file");
    }
}

/// Garage with `WAVE_S3_CHECKSUM=when-required` (from the helper's environment): a .tar.gz
/// script comes down, the results go up.
#[tokio::test(flavor = "multi_thread")]
async fn garage_runs_a_test_from_a_tar_gz_script() {
    let garage = Garage::start().await;
    let mut tar = tar::Builder::new(Vec::new());
    let script = agent_script(3);
    let mut header = tar::Header::new_gnu();
    header.set_path("run").expect("path");
    header.set_mode(0o755);
    header.set_size(script.len() as u64);
    header.set_cksum();
    tar.append(&header, script.as_bytes()).expect("append");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar.into_inner().expect("tar")).expect("gzip");
    garage
        .put("scripts/t-run/bundle.tar.gz", gz.finish().expect("gzip"))
        .await;

    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    let mut agent = start_supervisor(
        &garage,
        &work,
        &garage.url("scripts/t-run/").to_string(),
        &garage.url("results/t-run/").to_string(),
        &[],
    );
    let status = agent.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}:\n{}", agent.output());
    let summary = assert_results_mirrored(&garage, &work, "results/t-run/pod-x/c0/").await;
    assert_summary_all_succeeded(&summary);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_script_stops_the_supervisor_with_the_url_in_the_log() {
    let s3 = S3sFs::start().await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    let script_url = s3.url("scripts/not-uploaded/").to_string();
    let results_url = s3.url("results/x/").to_string();
    let mut agent = start_supervisor(&s3, &work, &script_url, &results_url, &[]);
    let status = agent.wait(Duration::from_secs(60)).await;
    assert!(!status.success());
    let output = agent.output();
    assert!(
        output.contains("no script at s3://wave/scripts/not-uploaded/"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_stop_the_supervisor_with_a_clear_message() {
    let s3 = S3sFs::start().await;
    s3.put("scripts/t-run/run", agent_script(1)).await;
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    let mut agent = start_supervisor(
        &s3,
        &work,
        &s3.url("scripts/t-run/").to_string(),
        &s3.url("results/t-run/").to_string(),
        &[("AWS_SECRET_ACCESS_KEY", "wrong-secret")],
    );
    let status = agent.wait(Duration::from_secs(60)).await;
    let output = agent.output();
    assert!(!status.success(), "{output}");
    assert!(output.contains("s3://wave/scripts/t-run/"), "{output}");
    assert!(output.contains("SignatureDoesNotMatch"), "{output}");
    assert!(output.contains("check AWS_ACCESS_KEY_ID"), "{output}");
}
