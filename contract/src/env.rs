//! The environment variables of a test container: the ones the webhook injects and the
//! supervisor's own settings. `wave-agent run` takes each as a flag too, so a local run
//! needs no environment (docs/agent-supervisor.md); a test checks that every variable in
//! [`INJECTED`] with [`ReadBy::Supervisor`] is an `env =` argument of the supervisor's CLI.

/// The seed's names: a game client written for the seed reads these.
pub const TEST_ID: &str = "TEST_ID";
pub const TOTAL_PLAYERS: &str = "TOTAL_PLAYERS";
pub const PLAYERS_PER_AGENT: &str = "PLAYERS_PER_AGENT";

pub const TEST_PART: &str = "WAVE_TEST_PART";
/// Agents in this container.
pub const AGENTS: &str = "WAVE_AGENTS";
pub const CONTAINER_INDEX: &str = "WAVE_CONTAINER_INDEX";
pub const MACHINE_TYPE: &str = "WAVE_MACHINE_TYPE";
pub const SCRIPT_URL: &str = "WAVE_SCRIPT_URL";
pub const RESULTS_URL: &str = "WAVE_RESULTS_URL";
pub const METRICS_PORT: &str = "WAVE_METRICS_PORT";
pub const POD_NAME: &str = "POD_NAME";
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const POD_UID: &str = "POD_UID";
pub const NODE_NAME: &str = "NODE_NAME";
/// M, the test part's machine count.
pub const MACHINES: &str = "WAVE_MACHINES";
pub const COORDINATION: &str = "WAVE_COORDINATION";
pub const START: &str = "WAVE_START";
pub const START_QUORUM: &str = "WAVE_START_QUORUM";
pub const START_TIMEOUT: &str = "WAVE_START_TIMEOUT";
pub const PART_PLAYER_OFFSET: &str = "WAVE_PART_PLAYER_OFFSET";
/// Agents of the whole pod (all containers).
pub const POD_AGENTS: &str = "WAVE_POD_AGENTS";
pub const STATSD_PORT: &str = "WAVE_STATSD_PORT";
pub const STOP_TIMEOUT: &str = "WAVE_STOP_TIMEOUT";

/// The supervisor's own settings, not injected (defaults in docs/agent-supervisor.md).
pub const WORK_DIR: &str = "WAVE_WORK_DIR";
pub const METRICS_ADDRESS: &str = "WAVE_METRICS_ADDRESS";
pub const RESTART: &str = "WAVE_RESTART";
pub const MAX_RESTARTS: &str = "WAVE_MAX_RESTARTS";
pub const UPLOAD_INTERVAL: &str = "WAVE_UPLOAD_INTERVAL";
pub const EXIT_ON_COMPLETE: &str = "WAVE_EXIT_ON_COMPLETE";
pub const S3_PATH_STYLE: &str = "WAVE_S3_PATH_STYLE";
pub const S3_CHECKSUM: &str = "WAVE_S3_CHECKSUM";
pub const STATSD_SOCKET: &str = "WAVE_STATSD_SOCKET";
pub const STATSD_MAX_SERIES: &str = "WAVE_STATSD_MAX_SERIES";
pub const STATSD_BUCKETS: &str = "WAVE_STATSD_BUCKETS";
pub const LOAD_WINDOW: &str = "WAVE_LOAD_WINDOW";
/// Set by the Job controller on an Indexed Job's pods: the pod's slot.
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";

/// Who reads an injected variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBy {
    /// `wave-agent run` (it also passes it on to the agents).
    Supervisor,
    /// Only the agents (the user's game client): the supervisor passes it through untouched.
    Agents,
}

/// One variable the webhook injects into every test container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Injected {
    pub name: &'static str,
    pub read_by: ReadBy,
}

const fn supervisor(name: &'static str) -> Injected {
    Injected {
        name,
        read_by: ReadBy::Supervisor,
    }
}

const fn agents(name: &'static str) -> Injected {
    Injected {
        name,
        read_by: ReadBy::Agents,
    }
}

/// Every variable the webhook injects, in the order it appends them to a container's env.
pub const INJECTED: &[Injected] = &[
    supervisor(TEST_ID),
    supervisor(TOTAL_PLAYERS),
    supervisor(PLAYERS_PER_AGENT),
    supervisor(TEST_PART),
    supervisor(AGENTS),
    supervisor(CONTAINER_INDEX),
    agents(MACHINE_TYPE),
    supervisor(SCRIPT_URL),
    supervisor(RESULTS_URL),
    supervisor(METRICS_PORT),
    supervisor(POD_NAME),
    supervisor(POD_NAMESPACE),
    supervisor(POD_UID),
    agents(NODE_NAME),
    supervisor(MACHINES),
    supervisor(COORDINATION),
    supervisor(START),
    supervisor(START_QUORUM),
    supervisor(START_TIMEOUT),
    supervisor(PART_PLAYER_OFFSET),
    supervisor(POD_AGENTS),
    supervisor(STATSD_PORT),
    supervisor(STOP_TIMEOUT),
];

/// The injected variable called `name`, if the webhook injects one.
pub fn injected(name: &str) -> Option<Injected> {
    INJECTED.iter().copied().find(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_names_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for v in INJECTED {
            assert!(seen.insert(v.name), "{} is injected twice", v.name);
        }
    }
}
