//! The supervisor's metrics (docs/agent-supervisor.md) and the HTTP server that exposes them with the probes.
//!
//! Everything is registered on one [`Registry`] created by [`new_registry`], which puts the
//! `test_id` label on every series. Per-agent CPU and memory are read from `/proc` when
//! Prometheus scrapes, so nothing polls in the background.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::procfs;
use crate::supervise::{AgentState, ExitOutcome, Observe};

/// Content type of the OpenMetrics text exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A registry whose every series carries `test_id`.
pub fn new_registry(test_id: &str) -> Registry {
    Registry::with_labels(std::iter::once((
        Cow::Borrowed("test_id"),
        Cow::Owned(test_id.to_owned()),
    )))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: AgentState,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
enum Outcome {
    success,
    failure,
    signal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

impl EncodeLabelValue for AgentState {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(self.as_str())
    }
}

/// Handles on the agent metrics, kept by the supervisor.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    agents: Family<StateLabels, Gauge>,
    starts: Counter,
    exits: Family<OutcomeLabels, Counter>,
    players_configured: Gauge,
    test_completed: Gauge,
    processes: Arc<AgentProcesses>,
}

impl AgentMetrics {
    /// Registers the agent metrics, every state and outcome present from the start (at 0).
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        let metrics = AgentMetrics {
            agents: Family::default(),
            starts: Counter::default(),
            exits: Family::default(),
            players_configured: Gauge::default(),
            test_completed: Gauge::default(),
            processes: Arc::new(AgentProcesses::default()),
        };
        for state in AgentState::ALL {
            metrics.agents.get_or_create(&StateLabels { state }).set(0);
        }
        for outcome in [Outcome::success, Outcome::failure, Outcome::signal] {
            metrics
                .exits
                .get_or_create(&OutcomeLabels { outcome })
                .inc_by(0);
        }
        registry.register(
            "wave_agents",
            "Agents of this container in each state",
            metrics.agents.clone(),
        );
        registry.register(
            "wave_agent_starts",
            "Agent processes started, restarts included",
            metrics.starts.clone(),
        );
        registry.register(
            "wave_agent_exits",
            "Agent processes that ended, by how they ended",
            metrics.exits.clone(),
        );
        registry.register(
            "wave_players_configured",
            "Players this container simulates: agents times players per agent",
            metrics.players_configured.clone(),
        );
        registry.register(
            "wave_test_completed",
            "1 once every agent of this container has ended, else 0",
            metrics.test_completed.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector(metrics.processes.clone())));
        metrics
    }

    /// Sets how many agents are in each state.
    pub fn set_states(&self, counts: &HashMap<AgentState, usize>) {
        for state in AgentState::ALL {
            let count = counts.get(&state).copied().unwrap_or(0);
            self.agents
                .get_or_create(&StateLabels { state })
                .set(count as i64);
        }
    }

    /// Agents running now (what `wave_agents{state="running"}` shows).
    pub fn running_agents(&self) -> u32 {
        let running = self.agents.get_or_create(&StateLabels {
            state: AgentState::Running,
        });
        u32::try_from(running.get()).unwrap_or(0)
    }

    pub fn set_players_configured(&self, players: u64) {
        self.players_configured
            .set(i64::try_from(players).unwrap_or(i64::MAX));
    }

    pub fn set_completed(&self, completed: bool) {
        self.test_completed.set(i64::from(completed));
    }
}

/// The supervisor keeps the agent series up to date.
impl Observe for AgentMetrics {
    fn agent_started(&self, index: usize, group: Option<i32>) {
        self.starts.inc();
        if group.is_some() {
            self.processes.set(index, group);
        }
    }

    fn agent_exited(&self, index: usize, outcome: &ExitOutcome) {
        let outcome = match outcome {
            ExitOutcome::Success => Outcome::success,
            ExitOutcome::Failure { .. } | ExitOutcome::SpawnFailed { .. } => Outcome::failure,
            ExitOutcome::Signal { .. } => Outcome::signal,
        };
        self.exits.get_or_create(&OutcomeLabels { outcome }).inc();
        self.processes.set(index, None);
    }

    fn states(&self, counts: &HashMap<AgentState, usize>) {
        self.set_states(counts);
    }
}

/// Process group of each running agent, by agent index.
#[derive(Debug, Default)]
struct AgentProcesses {
    groups: Mutex<Vec<Option<i32>>>,
}

impl AgentProcesses {
    /// Records agent `index`'s process group (`None` while it is not running).
    fn set(&self, index: usize, group: Option<i32>) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if groups.len() <= index {
            groups.resize(index + 1, None);
        }
        groups[index] = group;
    }

    fn snapshot(&self) -> Vec<Option<i32>> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// CPU and memory of each agent's process group, summed over its live members at scrape time.
#[derive(Debug)]
struct ProcessCollector(Arc<AgentProcesses>);

#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpu_ticks: u64,
    rss_pages: u64,
}

fn group_usage(groups: &[i32]) -> HashMap<i32, Usage> {
    let mut usage: HashMap<i32, Usage> = groups.iter().map(|&g| (g, Usage::default())).collect();
    for (_, stat) in procfs::all_processes() {
        if let Some(sum) = usage.get_mut(&stat.pgrp) {
            sum.cpu_ticks += stat.cpu_ticks;
            sum.rss_pages += stat.rss_pages;
        }
    }
    usage
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let agents: Vec<(usize, i32)> = self
            .0
            .snapshot()
            .into_iter()
            .enumerate()
            .filter_map(|(index, group)| Some((index, group?)))
            .collect();
        let groups: Vec<i32> = agents.iter().map(|&(_, g)| g).collect();
        let usage = group_usage(&groups);
        let ticks = procfs::clock_ticks();
        let page = procfs::page_size();

        let cpu = ConstCounter::new(0.0f64);
        let mut family = encoder.encode_descriptor(
            "wave_agent_cpu",
            "CPU time of each running agent's process group (resets when the agent restarts).",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?;
        for &(index, group) in &agents {
            let seconds = usage.get(&group).map_or(0, |u| u.cpu_ticks) as f64 / ticks;
            let labels = [("agent", index.to_string())];
            ConstCounter::new(seconds).encode(family.encode_family(&labels)?)?;
        }

        let memory = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "wave_agent_resident_memory",
            "Resident memory of each running agent's process group (sum over its processes).",
            Some(&Unit::Bytes),
            memory.metric_type(),
        )?;
        for &(index, group) in &agents {
            let bytes = usage.get(&group).map_or(0, |u| u.rss_pages) * page;
            let labels = [("agent", index.to_string())];
            ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX))
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Shared state of the HTTP server.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub registry: Arc<Registry>,
    /// Set once the agents have been started (or a completed test was found).
    pub ready: Arc<AtomicBool>,
    /// What the supervisor waits for before the agents start (slot, start), for `/readyz`.
    pub waiting: crate::coordination::Waiting,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(state): State<HttpState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded\n",
        )
            .into_response(),
    }
}

async fn ready_handler(State(state): State<HttpState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let waiting = state
        .waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let text = match waiting {
        Some(why) => format!("agents not started yet: {why}\n"),
        None => "agents not started yet\n".to_owned(),
    };
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_carries_test_id_and_states_read_zero_before_any_agent() {
        let mut registry = new_registry("t-1");
        let metrics = AgentMetrics::register(&mut registry);
        metrics.set_players_configured(300);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        for state in ["running", "backoff", "succeeded", "failed"] {
            let series = format!("wave_agents{{test_id=\"t-1\",state=\"{state}\"}} 0");
            assert!(text.contains(&series), "missing {series} in\n{text}");
        }
        assert!(text.contains("wave_agent_exits_total{test_id=\"t-1\",outcome=\"signal\"} 0"));
        assert!(text.contains("wave_players_configured{test_id=\"t-1\"} 300"));
        assert!(text.ends_with("# EOF\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.contains("test_id=\"t-1\""),
                "unlabelled series: {line}"
            );
        }
    }

    #[test]
    fn reports_cpu_and_memory_of_a_running_agent_group() {
        let mut registry = new_registry("t");
        let metrics = AgentMetrics::register(&mut registry);
        let own_group = nix::unistd::getpgrp().as_raw();
        metrics.agent_started(2, Some(own_group));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        let memory = text
            .lines()
            .find(|l| l.starts_with("wave_agent_resident_memory_bytes{test_id=\"t\",agent=\"2\"}"))
            .unwrap_or_else(|| panic!("no memory series in\n{text}"));
        let bytes: f64 = memory
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert!(bytes > 0.0, "{memory}");
        assert!(text.contains("wave_agent_cpu_seconds_total{test_id=\"t\",agent=\"2\"}"));
    }
}
