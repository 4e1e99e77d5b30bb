//! The supervisor as a user runs it: the real `wave-agent` binary with real agent
//! processes (sh scripts), real signals and a `file://` results store in a temp dir.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use wave_agent::procfs::{ProcStat, all_processes};
use wave_tests::process::metrics_address;
use wave_tests::{poll_blocking, workspace_bin};

/// Bound on every wait, so a broken supervisor fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

/// A temp directory holding a work dir, a `file://` store, agent scripts and captured output.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn work(&self) -> PathBuf {
        self.path("work")
    }

    fn results(&self) -> PathBuf {
        self.path("work/results")
    }

    fn store_url(&self) -> String {
        format!("file://{}/", self.path("store").display())
    }

    /// Writes an agent script and returns its path.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        path
    }

    /// A `wave-agent run` command with the sandbox's work dir, metrics on a free port (see
    /// [`Sandbox::metrics_port`]) and the sandbox's output files.
    fn command(&self) -> Command {
        let mut cmd = Command::new(workspace_bin("wave-agent"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("WAVE_WORK_DIR", self.work())
            .env("WAVE_METRICS_PORT", "0")
            .env("WAVE_METRICS_ADDRESS", "127.0.0.1")
            .env("POD_NAME", "pod-1")
            .stdin(Stdio::null())
            .stdout(File::create(self.path("supervisor.out")).expect("stdout file"))
            .stderr(File::create(self.path("supervisor.err")).expect("stderr file"));
        cmd
    }

    /// The port the supervisor bound, from its `serving metrics on <address>` log line.
    fn metrics_port(&self) -> u16 {
        poll_blocking(PATIENCE, || metrics_address(&self.stderr()))
            .unwrap_or_else(|| panic!("no metrics address in the log:\n{}", self.stderr()))
            .port()
    }

    fn stdout(&self) -> Vec<u8> {
        std::fs::read(self.path("supervisor.out")).expect("supervisor stdout")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("supervisor.err")).unwrap_or_default()
    }

    fn summary(&self) -> Value {
        let text = std::fs::read(self.results().join("summary.json")).expect("summary.json");
        serde_json::from_slice(&text).expect("summary.json is JSON")
    }

    fn wait_for_file(&self, path: &Path) {
        wait_until(&format!("{} to appear", path.display()), || path.exists());
    }

    /// Runs to the end (with a bound) and returns the exit status.
    fn run_to_end(&self, mut cmd: Command) -> ExitStatus {
        let mut child = cmd.spawn().expect("start wave-agent");
        self.wait_exit(&mut child)
    }

    fn wait_exit(&self, child: &mut Child) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for wave-agent") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("wave-agent did not exit; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    assert!(
        poll_blocking(PATIENCE, || done().then_some(())).is_some(),
        "gave up waiting for {what}"
    );
}

/// A plain HTTP/1.0 GET; returns (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    wave_tests::http_get(port, path).map(|r| (r.status, r.body))
}

/// A plain HTTP/1.0 GET; returns (status code, lowercased header block, body).
fn http_get_with_headers(port: u16, path: &str) -> Option<(u16, String, String)> {
    wave_tests::http_get(port, path).map(|r| (r.status, r.head, r.body))
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).expect("signal wave-agent");
}

fn pid_in(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// (state, ppid) of a process, None once it is gone.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    ProcStat::read(pid).map(|stat| (stat.state, stat.ppid))
}

fn zombie_children_of(parent: i32) -> Vec<i32> {
    all_processes()
        .filter(|(_, stat)| stat.state == 'Z' && stat.ppid == parent)
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn agents_get_their_environment_and_output_dirs_from_env_configuration() {
    let sb = Sandbox::new();
    let agent = sb.script(
        "agent.sh",
        r#"printf '%s|%s|%s|%s|%s|%s\n' "$AGENT_INDEX" "$WAVE_AGENT_ID" "$PLAYERS_PER_AGENT" \
            "$WAVE_OUTPUT_DIR" "$(pwd)" "$TEST_ID" > "$WAVE_OUTPUT_DIR/env.txt""#,
    );
    let mut cmd = sb.command();
    cmd.env("TEST_ID", "t-42")
        .env("WAVE_AGENTS", "3")
        .env("WAVE_CONTAINER_INDEX", "2")
        .env("PLAYERS_PER_AGENT", "25")
        .env("WAVE_EXIT_ON_COMPLETE", "true")
        .arg("--")
        .arg("sh")
        .arg(&agent);
    let status = sb.run_to_end(cmd);
    assert!(status.success(), "{status}; stderr:\n{}", sb.stderr());

    for k in 0..3 {
        let out_dir = sb.results().join(format!("agent-{k}"));
        let env = std::fs::read_to_string(out_dir.join("env.txt")).expect("agent wrote env.txt");
        let expected = format!(
            "{k}|pod-1-c2-a{k}|25|{}/|{}|t-42\n",
            out_dir.display(),
            sb.work().join("script").display()
        );
        assert_eq!(env, expected);
    }
}

#[test]
fn output_reaches_log_files_and_prefixed_stdout_including_non_utf8_and_long_lines() {
    let sb = Sandbox::new();
    let agent = sb.script(
        "agent.sh",
        r#"printf 'hello\n\377\376 raw bytes\n'
head -c 100000 /dev/zero | tr '\0' x
echo
echo "to stderr" >&2
printf 'no newline at the end'"#,
    );
    let mut cmd = sb.command();
    cmd.args(["--agents", "2", "--exit-on-complete", "--", "sh"])
        .arg(&agent);
    let status = sb.run_to_end(cmd);
    assert!(status.success(), "{status}; stderr:\n{}", sb.stderr());

    let long = "x".repeat(100_000);
    let mut expected_stdout = b"hello\n\xff\xfe raw bytes\n".to_vec();
    expected_stdout.extend_from_slice(long.as_bytes());
    expected_stdout.extend_from_slice(b"\nno newline at the end");
    let stdout = sb.stdout();
    for k in 0..2 {
        let dir = sb.results().join(format!("agent-{k}"));
        assert_eq!(
            std::fs::read(dir.join("stdout.log")).expect("stdout.log"),
            expected_stdout
        );
        assert_eq!(
            std::fs::read(dir.join("stderr.log")).expect("stderr.log"),
            b"to stderr\n"
        );

        let prefix = format!("[agent-{k}] ");
        let lines: Vec<&[u8]> = stdout
            .split(|&b| b == b'\n')
            .filter_map(|l| l.strip_prefix(prefix.as_bytes()))
            .collect();
        assert!(
            lines.contains(&&b"hello"[..]),
            "no hello line for agent-{k}"
        );
        assert!(lines.contains(&&b"\xff\xfe raw bytes"[..]));
        assert!(lines.contains(&&b"to stderr"[..]));
        assert!(lines.contains(&&b"no newline at the end"[..]));
        let pieces: Vec<&&[u8]> = lines.iter().filter(|l| l.starts_with(b"x")).collect();
        assert!(pieces.len() > 1, "the long line was not split");
        let joined: Vec<u8> = pieces.iter().flat_map(|p| p.to_vec()).collect();
        assert_eq!(joined, long.as_bytes());
    }
}

#[test]
fn a_crashing_agent_is_restarted_then_marked_failed() {
    let sb = Sandbox::new();
    let agent = sb.script(
        "agent.sh",
        r#"echo run >> "$WAVE_OUTPUT_DIR/runs"; [ "$AGENT_INDEX" = 0 ] && exit 0; exit 3"#,
    );
    let mut cmd = sb.command();
    cmd.args(["--agents", "2", "--max-restarts", "2", "--exit-on-complete"])
        .args(["--test-id", "crash", "--", "sh"])
        .arg(&agent);
    let status = sb.run_to_end(cmd);
    assert_eq!(status.code(), Some(1), "stderr:\n{}", sb.stderr());

    let summary = sb.summary();
    assert_eq!(summary["completed"], true);
    assert_eq!(summary["succeeded"], false);
    assert_eq!(summary["test_id"], "crash");
    let ok = &summary["agents"][0];
    assert_eq!(ok["state"], "succeeded");
    assert_eq!(ok["restarts"], 0);
    assert_eq!(ok["exit_codes"], serde_json::json!([0]));
    let crashing = &summary["agents"][1];
    assert_eq!(crashing["state"], "failed");
    assert_eq!(crashing["restarts"], 2);
    assert_eq!(crashing["exit_codes"], serde_json::json!([3, 3, 3]));
    assert_eq!(crashing["runs"].as_array().map(Vec::len), Some(3));
    let runs = std::fs::read_to_string(sb.results().join("agent-1/runs")).expect("runs file");
    assert_eq!(runs.lines().count(), 3);
    assert!(
        sb.stderr()
            .contains("agent-1 exited with code 3; restart 1 of 2")
    );
}

#[test]
fn with_restart_never_a_failed_agent_is_not_restarted() {
    let sb = Sandbox::new();
    let mut cmd = sb.command();
    cmd.args([
        "--restart",
        "never",
        "--exit-on-complete",
        "--",
        "sh",
        "-c",
        "exit 5",
    ]);
    let status = sb.run_to_end(cmd);
    assert_eq!(status.code(), Some(1));
    let agent = &sb.summary()["agents"][0];
    assert_eq!(agent["restarts"], 0);
    assert_eq!(agent["exit_codes"], serde_json::json!([5]));
}

#[test]
fn sigterm_reaches_agents_and_their_children() {
    let sb = Sandbox::new();
    let agent = sb.script(
        "agent.sh",
        r#"out="$WAVE_OUTPUT_DIR"
trap 'echo term > "$out/agent-term"; exit 0' TERM
sh -c 'trap "echo term > \"$0/child-term\"; exit 0" TERM; touch "$0/child-ready"; while :; do sleep 0.05; done' "$out" &
while :; do sleep 0.05; done"#,
    );
    let mut cmd = sb.command();
    cmd.args(["--agents", "2", "--stop-timeout", "30s", "--", "sh"])
        .arg(&agent);
    let mut child = cmd.spawn().expect("start wave-agent");
    for k in 0..2 {
        sb.wait_for_file(&sb.results().join(format!("agent-{k}/child-ready")));
    }
    signal(&child, Signal::SIGTERM);
    let status = sb.wait_exit(&mut child);
    assert!(status.success(), "{status}; stderr:\n{}", sb.stderr());

    for k in 0..2 {
        let dir = sb.results().join(format!("agent-{k}"));
        assert!(dir.join("agent-term").exists(), "agent-{k} got no SIGTERM");
        assert!(
            dir.join("child-term").exists(),
            "agent-{k}'s child got no SIGTERM"
        );
    }
    let summary = sb.summary();
    assert_eq!(summary["completed"], false);
    assert_eq!(summary["agents"][0]["exit_codes"], serde_json::json!([0]));
}

#[test]
fn an_agent_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let sb = Sandbox::new();
    let agent = sb.script(
        "agent.sh",
        r#"trap '' TERM; echo $$ > "$WAVE_OUTPUT_DIR/pid"; while :; do sleep 0.05; done"#,
    );
    let mut cmd = sb.command();
    cmd.args(["--stop-timeout", "1s", "--", "sh"]).arg(&agent);
    let mut child = cmd.spawn().expect("start wave-agent");
    let pid_file = sb.results().join("agent-0/pid");
    sb.wait_for_file(&pid_file);
    wait_until("the pid file to be written", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let agent_pid = pid_in(&pid_file);
    signal(&child, Signal::SIGTERM);
    let status = sb.wait_exit(&mut child);
    assert!(status.success(), "{status}; stderr:\n{}", sb.stderr());

    assert_eq!(proc_state(agent_pid), None, "the agent survived");
    let agent = &sb.summary()["agents"][0];
    assert_eq!(agent["exit_codes"], serde_json::json!([137]));
    assert_eq!(agent["runs"][0]["outcome"], "signal");
    assert_eq!(agent["state"], "failed");
    assert!(sb.stderr().contains("stop timeout reached"));
}

#[test]
fn a_second_signal_kills_agents_at_once() {
    let sb = Sandbox::new();
    let agent = sb.script(
        "agent.sh",
        r#"trap '' TERM; touch "$WAVE_OUTPUT_DIR/ready"; while :; do sleep 0.05; done"#,
    );
    let mut cmd = sb.command();
    // A stop timeout the test would never wait for.
    cmd.args(["--stop-timeout", "1h", "--", "sh"]).arg(&agent);
    let mut child = cmd.spawn().expect("start wave-agent");
    sb.wait_for_file(&sb.results().join("agent-0/ready"));
    signal(&child, Signal::SIGTERM);
    wait_until("the stop to begin", || {
        sb.stderr().contains("stopping 1 agents")
    });
    signal(&child, Signal::SIGINT);
    let status = sb.wait_exit(&mut child);
    assert!(status.success(), "{status}; stderr:\n{}", sb.stderr());
    assert_eq!(
        sb.summary()["agents"][0]["exit_codes"],
        serde_json::json!([137])
    );
}

#[test]
fn an_orphaned_grandchild_is_reaped() {
    let sb = Sandbox::new();
    // The agent leaves a background job behind in a new session (out of reach of the
    // agent's process group) that exits a little later, orphaned.
    let agent = sb.script(
        "agent.sh",
        r#"setsid sh -c 'echo $$ > "$0/orphan.tmp"; mv "$0/orphan.tmp" "$0/orphan"; sleep 0.3' "$WAVE_OUTPUT_DIR" </dev/null >/dev/null 2>&1 &
exit 0"#,
    );
    let mut cmd = sb.command();
    cmd.args(["--", "sh"]).arg(&agent);
    let mut child = cmd.spawn().expect("start wave-agent");
    let supervisor = child.id() as i32;
    let orphan_file = sb.results().join("agent-0/orphan");
    sb.wait_for_file(&orphan_file);
    let orphan = pid_in(&orphan_file);
    wait_until("the orphan to exit and be reaped", || {
        proc_state(orphan).is_none()
    });
    wait_until("the test to complete", || {
        sb.results().join("summary.json").exists()
    });
    assert_eq!(zombie_children_of(supervisor), Vec::<i32>::new());
    signal(&child, Signal::SIGTERM);
    assert!(sb.wait_exit(&mut child).success());
}

#[test]
fn after_completion_it_stays_up_serving_metrics_and_uploads_to_the_spec_layout() {
    let sb = Sandbox::new();
    let agent = sb.script(
        "agent.sh",
        r#"mkdir -p "$WAVE_OUTPUT_DIR/nested"; echo "data $AGENT_INDEX" > "$WAVE_OUTPUT_DIR/nested/result.txt""#,
    );
    let mut cmd = sb.command();
    cmd.env("WAVE_RESULTS_URL", sb.store_url())
        .env("WAVE_CONTAINER_INDEX", "1")
        .env("TEST_ID", "layout")
        .args(["--agents", "2", "--", "sh"])
        .arg(&agent);
    let mut child = cmd.spawn().expect("start wave-agent");
    let uploaded_summary = sb.path("store/pod-1/c1/summary.json");
    sb.wait_for_file(&uploaded_summary);

    for k in 0..2 {
        let base = sb.path(&format!("store/pod-1/c1/agent-{k}"));
        assert_eq!(
            std::fs::read_to_string(base.join("nested/result.txt")).expect("uploaded result"),
            format!("data {k}\n")
        );
        assert!(base.join("stdout.log").exists());
        assert!(base.join("stderr.log").exists());
    }
    let uploaded: Value =
        serde_json::from_slice(&std::fs::read(&uploaded_summary).expect("read")).expect("JSON");
    assert_eq!(uploaded["completed"], true);
    assert_eq!(uploaded["pod"], "pod-1");
    assert_eq!(uploaded["container"], 1);

    // Still up: metrics show the completed test.
    let port = sb.metrics_port();
    let (status, headers, body) = http_get_with_headers(port, "/metrics").expect("metrics answer");
    assert_eq!(status, 200);
    assert!(
        headers
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{headers}"
    );
    assert!(
        body.contains("wave_test_completed{test_id=\"layout\"} 1"),
        "{body}"
    );
    assert!(body.contains("wave_agents{test_id=\"layout\",state=\"succeeded\"} 2"));
    assert!(body.contains("wave_agent_starts_total{test_id=\"layout\"} 2"));
    assert!(body.ends_with("# EOF\n"));
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(
        child.try_wait().expect("poll"),
        None,
        "exited after completion"
    );

    signal(&child, Signal::SIGTERM);
    assert!(sb.wait_exit(&mut child).success());
}

#[test]
fn a_restart_that_finds_the_completed_summary_does_not_rerun_the_test() {
    let sb = Sandbox::new();
    let counter = sb.path("runs");
    let agent = sb.script("agent.sh", r#"echo run >> "$0.runs""#);
    let first = {
        let mut cmd = sb.command();
        cmd.args(["--exit-on-complete", "--restart", "never", "--", "sh"])
            .arg(&agent);
        sb.run_to_end(cmd)
    };
    assert!(first.success());
    let summary_before = sb.summary();

    let mut cmd = sb.command();
    cmd.args(["--exit-on-complete", "--restart", "never", "--", "sh"])
        .arg(&agent);
    let second = sb.run_to_end(cmd);
    assert!(second.success(), "stderr:\n{}", sb.stderr());
    let runs = std::fs::read_to_string(counter.with_file_name("agent.sh.runs")).expect("runs");
    assert_eq!(runs.lines().count(), 1, "the test ran again");
    assert_eq!(sb.summary(), summary_before);
    assert!(sb.stderr().contains("already completed"));
}

#[test]
fn a_completed_test_with_a_failed_agent_exits_1_when_found_again() {
    let sb = Sandbox::new();
    let run = |sb: &Sandbox| {
        let mut cmd = sb.command();
        cmd.args(["--exit-on-complete", "--restart", "never", "--", "false"]);
        sb.run_to_end(cmd)
    };
    assert_eq!(run(&sb).code(), Some(1));
    assert_eq!(run(&sb).code(), Some(1));
}

#[test]
fn a_missing_agent_command_is_a_clear_error() {
    let sb = Sandbox::new();
    let status = sb.run_to_end(sb.command());
    assert_eq!(status.code(), Some(2));
    let expected = format!(
        "{}/run does not exist (give a command after `--` or a script with a `run` file)",
        sb.work().join("script").display()
    );
    assert!(sb.stderr().contains(&expected), "{}", sb.stderr());
}

#[test]
fn an_unstartable_agent_is_reported_and_fails() {
    let sb = Sandbox::new();
    let mut cmd = sb.command();
    cmd.args([
        "--exit-on-complete",
        "--max-restarts",
        "1",
        "--",
        "/nonexistent/agent",
    ]);
    let status = sb.run_to_end(cmd);
    assert_eq!(status.code(), Some(1));
    let agent = &sb.summary()["agents"][0];
    assert_eq!(agent["state"], "failed");
    assert_eq!(agent["exit_codes"], serde_json::json!([127, 127]));
    assert!(
        sb.stderr().contains("cannot run /nonexistent/agent"),
        "{}",
        sb.stderr()
    );
}

#[test]
fn a_bad_store_url_is_rejected_naming_the_variable_value() {
    let sb = Sandbox::new();
    let mut cmd = sb.command();
    cmd.env("WAVE_RESULTS_URL", "ftp://somewhere/")
        .args(["--", "true"]);
    let status = sb.run_to_end(cmd);
    assert_eq!(status.code(), Some(2));
    assert!(sb.stderr().contains("ftp://somewhere/"), "{}", sb.stderr());
    assert!(sb.stderr().contains("WAVE_RESULTS_URL"), "{}", sb.stderr());
}

#[test]
fn runs_the_script_run_file_fetched_from_a_file_store() {
    let sb = Sandbox::new();
    let scripts = sb.path("scripts/t1");
    std::fs::create_dir_all(scripts.join("lib")).expect("mkdir");
    std::fs::write(scripts.join("lib/msg"), "from the bundle\n").expect("write");
    // No mode bits on purpose: objects fetched from a prefix carry none.
    std::fs::write(
        scripts.join("run"),
        "#!/bin/sh\ncat lib/msg > \"$WAVE_OUTPUT_DIR/msg\"\n",
    )
    .expect("write");
    let mut cmd = sb.command();
    cmd.env("WAVE_SCRIPT_URL", format!("file://{}/", scripts.display()))
        .arg("--exit-on-complete");
    let status = sb.run_to_end(cmd);
    assert!(status.success(), "{status}; stderr:\n{}", sb.stderr());
    assert_eq!(
        std::fs::read_to_string(sb.results().join("agent-0/msg")).expect("agent output"),
        "from the bundle\n"
    );
}

#[test]
fn install_copies_the_executable_with_mode_755() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    let dir = sb.path("bin");
    let status = Command::new(workspace_bin("wave-agent"))
        .arg("install")
        .arg(&dir)
        .status()
        .expect("run install");
    assert!(status.success());
    let installed = dir.join("wave-agent");
    let meta = std::fs::metadata(&installed).expect("installed file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read(&installed).expect("read"),
        std::fs::read(workspace_bin("wave-agent")).expect("read")
    );
    let version = Command::new(&installed)
        .arg("--version")
        .output()
        .expect("run the copy");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("wave-agent "));
}

/// Host pids of a process's children, from /proc/<pid>/task/*/children.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_ascii_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

#[test]
fn as_pid_1_of_a_pid_namespace_it_reaps_orphans_and_stops_on_sigterm() {
    let sb = Sandbox::new();
    // The agent leaves a job behind that waits for the test's go, then exits as an orphan.
    let agent = sb.script(
        "agent.sh",
        r#"setsid sh -c 'while [ ! -e "$0/release" ]; do sleep 0.05; done' "$WAVE_OUTPUT_DIR" </dev/null >/dev/null 2>&1 &
exit 0"#,
    );
    let cmd = sb.command();
    let run_args: Vec<std::ffi::OsString> = ["--", "sh"]
        .iter()
        .map(Into::into)
        .chain([agent.into_os_string()])
        .collect();
    // `unshare` becomes the parent; wave-agent runs as PID 1 of a new PID namespace with its
    // own /proc, as in a container.
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .args(&run_args)
        .env_clear()
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .stdin(Stdio::null())
        .stdout(File::create(sb.path("supervisor.out")).expect("stdout file"))
        .stderr(File::create(sb.path("supervisor.err")).expect("stderr file"));
    let mut child = unshare.spawn().expect("run unshare (util-linux)");
    let mut supervisor = None;
    wait_until("wave-agent to start under unshare", || {
        supervisor = children_of(child.id() as i32).first().copied();
        supervisor.is_some()
    });
    let supervisor = supervisor.expect("found above");
    wait_until("the test to complete", || {
        sb.results().join("summary.json").exists()
    });
    let mut orphan = None;
    wait_until("the orphan to be handed to wave-agent", || {
        orphan = children_of(supervisor).first().copied();
        orphan.is_some()
    });
    let orphan = orphan.expect("found above");
    std::fs::write(sb.results().join("agent-0/release"), "").expect("release the orphan");
    wait_until("the orphan to exit and be reaped", || {
        proc_state(orphan).is_none()
    });
    assert_eq!(zombie_children_of(supervisor), Vec::<i32>::new());

    kill(Pid::from_raw(supervisor), Signal::SIGTERM).expect("signal wave-agent");
    let status = sb.wait_exit(&mut child);
    assert!(status.success(), "{status}; stderr:\n{}", sb.stderr());
    assert!(sb.stderr().contains("SIGTERM received"), "{}", sb.stderr());
}

#[test]
fn results_are_uploaded_every_interval_while_agents_run() {
    let sb = Sandbox::new();
    let agent = sb.script(
        "agent.sh",
        r#"echo early > "$WAVE_OUTPUT_DIR/early.txt"
while [ ! -e "$WAVE_OUTPUT_DIR/release" ]; do sleep 0.05; done"#,
    );
    let mut cmd = sb.command();
    cmd.env("WAVE_RESULTS_URL", sb.store_url())
        .env("WAVE_UPLOAD_INTERVAL", "200ms")
        .args(["--exit-on-complete", "--", "sh"])
        .arg(&agent);
    let mut child = cmd.spawn().expect("start wave-agent");
    let uploaded = sb.path("store/pod-1/c0/agent-0/early.txt");
    sb.wait_for_file(&uploaded);
    assert!(
        !sb.results().join("summary.json").exists(),
        "uploaded only at the end"
    );
    assert_eq!(child.try_wait().expect("poll"), None);
    std::fs::write(sb.results().join("agent-0/release"), "").expect("release the agent");
    assert!(sb.wait_exit(&mut child).success(), "{}", sb.stderr());
    assert!(sb.path("store/pod-1/c0/summary.json").exists());
}
