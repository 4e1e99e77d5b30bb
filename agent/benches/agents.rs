//! Starting agents and sitting idle: how fast 1,000 agents start, and what 100 idle agents
//! cost the supervisor in CPU and memory.
//!
//! `cargo bench -p wave-agent --bench agents` (release build; prints one line per figure).

mod common;

use std::time::{Duration, Instant};

use common::{Supervisor, cpu_seconds, rss_bytes};

const START_AGENTS: u32 = 1000;
const IDLE_AGENTS: u32 = 100;
const IDLE_WINDOW: Duration = Duration::from_secs(20);

fn main() {
    spawn_floor();
    start_sleeping_agents();
    run_trivial_agents();
    idle_footprint();
}

/// The floor on this machine right now: one thread spawning 1,000 `sleep 3600` with
/// `std::process::Command` (no pipes, no process groups), for comparison.
fn spawn_floor() {
    let started = Instant::now();
    let mut children: Vec<_> = (0..START_AGENTS)
        .map(|_| {
            std::process::Command::new("sleep")
                .arg("3600")
                .spawn()
                .expect("spawn sleep")
        })
        .collect();
    let elapsed = started.elapsed();
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    println!(
        "floor: std::process::Command spawns {START_AGENTS} `sleep 3600` in {:.3} s",
        elapsed.as_secs_f64()
    );
}

/// 1,000 `sleep 3600` agents: time from launching the supervisor until every agent was
/// started (`/readyz` turns 200 after the last spawn).
fn start_sleeping_agents() {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let supervisor = Supervisor::start(START_AGENTS, &[], &["sleep", "3600"]);
        supervisor.wait_ready();
        let elapsed = started.elapsed();
        let starts = supervisor.metric("wave_agent_starts_total").unwrap_or(0.0);
        assert_eq!(starts, f64::from(START_AGENTS), "not every agent started");
        best = best.min(elapsed);
        println!(
            "start {START_AGENTS} `sleep 3600` agents: {:.3} s (launch to /readyz)",
            elapsed.as_secs_f64()
        );
    }
    println!(
        "start {START_AGENTS} agents, best of 3: {:.3} s",
        best.as_secs_f64()
    );
}

/// 1,000 `true` agents run to completion: launch until summary.json is written.
fn run_trivial_agents() {
    let started = Instant::now();
    let supervisor = Supervisor::start(START_AGENTS, &["--restart", "never"], &["true"]);
    supervisor.wait_complete();
    println!(
        "run {START_AGENTS} `true` agents to completion (summary.json written): {:.3} s",
        started.elapsed().as_secs_f64()
    );
}

/// 100 `sleep 3600` agents: supervisor CPU over a quiet window and its RSS.
fn idle_footprint() {
    let supervisor = Supervisor::start(IDLE_AGENTS, &[], &["sleep", "3600"]);
    supervisor.wait_ready();
    std::thread::sleep(Duration::from_secs(2));
    let pid = supervisor.pid();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    std::thread::sleep(IDLE_WINDOW);
    let cpu = cpu_seconds(pid) - cpu_before;
    let window = started.elapsed().as_secs_f64();
    println!(
        "{IDLE_AGENTS} idle agents: supervisor CPU {:.3} s over {:.1} s = {:.3}% of a core",
        cpu,
        window,
        100.0 * cpu / window
    );
    println!(
        "{IDLE_AGENTS} idle agents: supervisor RSS {:.1} MiB",
        rss_bytes(pid) as f64 / (1024.0 * 1024.0)
    );
}
