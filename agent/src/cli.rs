//! Command line of `wave-agent`: every option is a flag and an environment variable, the
//! variables being the ones the webhook injects (`wave_contract::env`, docs/agent-supervisor.md), so a pod needs no arguments and a
//! local run needs only flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

use wave_contract::names::{METRICS_PORT_BASE, STATSD_PORT_BASE, WORK_DIR};
use wave_contract::part::{DEFAULT_START_TIMEOUT, Quorum};
use wave_contract::{env, value};

use crate::coordination::{Mode, SlotConfig};
use crate::slots::Part;
use crate::start::StartMode;
use crate::store::{ChecksumMode, S3Options, StoreUrl};
use crate::supervise::RestartPolicy;

/// `wave-agent`: the supervisor that runs a wave test's agents inside one container.
#[derive(Debug, Parser)]
#[command(name = "wave-agent", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Fetch the test script, run the agents, upload their results and serve metrics.
    Run(Box<RunArgs>),
    /// Copy this executable into DIR (what the `wave-install` init container runs).
    Install(InstallArgs),
}

/// Options of `wave-agent run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Test id; labels every metric and names the results.
    #[arg(long, value_name = env::TEST_ID, env = env::TEST_ID, default_value = "local")]
    pub test_id: String,

    /// Players in the whole test (all pods); recorded in summary.json.
    #[arg(long, value_name = env::TOTAL_PLAYERS, env = env::TOTAL_PLAYERS)]
    pub total_players: Option<u64>,

    /// Players each agent simulates; passed to every agent.
    #[arg(
        long,
        value_name = env::PLAYERS_PER_AGENT,
        env = env::PLAYERS_PER_AGENT,
        default_value_t = 100
    )]
    pub players_per_agent: u64,

    /// Agent processes to run in this container.
    #[arg(
        long,
        value_name = env::AGENTS,
        env = env::AGENTS,
        default_value_t = 1
    )]
    pub agents: u32,

    /// Index of this container in the pod (the `c<i>` in agent ids and result paths).
    #[arg(
        long,
        value_name = env::CONTAINER_INDEX,
        env = env::CONTAINER_INDEX,
        default_value_t = 0
    )]
    pub container_index: u32,

    /// Where the script comes from: `s3://bucket/prefix/`, a single `.tar.gz`/`.tgz`/`.zip`
    /// object, or `file:///path/`. Without it `<work>/script/` is used as it is.
    #[arg(long, value_name = env::SCRIPT_URL, env = env::SCRIPT_URL)]
    pub script_url: Option<StoreUrl>,

    /// Where results go: `s3://bucket/prefix/` or `file:///path/`; files land under
    /// `<url><pod>/c<container>/`. Without it results stay in `<work>/results/`.
    #[arg(long, value_name = env::RESULTS_URL, env = env::RESULTS_URL)]
    pub results_url: Option<StoreUrl>,

    /// Port of the metrics and probe server (`/metrics`, `/healthz`, `/readyz`); 0 binds a
    /// free port, which the log line `serving metrics on <address>` names.
    #[arg(
        long,
        value_name = env::METRICS_PORT,
        env = env::METRICS_PORT,
        default_value_t = METRICS_PORT_BASE
    )]
    pub metrics_port: u16,

    /// Address the metrics server binds to.
    #[arg(
        long,
        value_name = env::METRICS_ADDRESS,
        env = env::METRICS_ADDRESS,
        default_value = "0.0.0.0"
    )]
    pub metrics_address: std::net::IpAddr,

    /// Pod name, part of agent ids and result paths; defaults to the host name.
    #[arg(long, value_name = env::POD_NAME, env = env::POD_NAME)]
    pub pod_name: Option<String>,

    /// Work directory: `script/` and `results/` live here (an emptyDir in a pod, so it
    /// survives container restarts).
    #[arg(
        long,
        value_name = env::WORK_DIR,
        env = env::WORK_DIR,
        default_value = WORK_DIR
    )]
    pub work_dir: PathBuf,

    /// When an ended agent is started again.
    #[arg(long, value_name = env::RESTART, env = env::RESTART, value_enum, default_value_t = RestartPolicy::OnFailure)]
    pub restart: RestartPolicy,

    /// Restarts per agent before it is marked failed.
    #[arg(
        long,
        value_name = env::MAX_RESTARTS,
        env = env::MAX_RESTARTS,
        default_value_t = 5
    )]
    pub max_restarts: u32,

    /// How often new or changed result files are uploaded.
    #[arg(long, value_name = env::UPLOAD_INTERVAL, env = env::UPLOAD_INTERVAL, default_value = "30s", value_parser = parse_duration)]
    pub upload_interval: Duration,

    /// Grace period between SIGTERM and SIGKILL for agents on shutdown; the final upload
    /// then gets as long again.
    #[arg(long, value_name = env::STOP_TIMEOUT, env = env::STOP_TIMEOUT, default_value = "20s", value_parser = positive_duration)]
    pub stop_timeout: Duration,

    /// Exit once every agent has ended (0 if all succeeded, else 1) instead of staying up.
    #[arg(long, value_name = env::EXIT_ON_COMPLETE, env = env::EXIT_ON_COMPLETE, default_value_t = false,
          value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub exit_on_complete: bool,

    /// Use path-style S3 addressing (most S3-compatible servers need it).
    #[arg(long, value_name = env::S3_PATH_STYLE, env = env::S3_PATH_STYLE, default_value_t = false,
          value_parser = BoolishValueParser::new(), num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: bool,

    /// Request checksums of the S3 client: `when-required` turns off the aws-chunked
    /// uploads that Garage and other S3-compatible stores reject.
    #[arg(
        long,
        value_name = env::S3_CHECKSUM,
        env = env::S3_CHECKSUM,
        default_value = "when-supported"
    )]
    pub s3_checksum: ChecksumMode,

    /// Test part: the `testId` label's text after `--` (slots are counted per part).
    #[arg(
        long,
        value_name = env::TEST_PART,
        env = env::TEST_PART,
        default_value = ""
    )]
    pub test_part: String,

    /// M, the test part's machine count (docs/coordination.md).
    #[arg(long, value_name = env::MACHINES, env = env::MACHINES)]
    pub machines: Option<u32>,

    /// How the pod claims its slot: `kubernetes` (Leases), `off`, or `file:///dir/`.
    #[arg(
        long,
        value_name = env::COORDINATION,
        env = env::COORDINATION,
        default_value = "off"
    )]
    pub coordination: Mode,

    /// When agents start: `immediately`, `together`, or an RFC 3339 time.
    #[arg(
        long,
        value_name = env::START,
        env = env::START,
        default_value = "immediately"
    )]
    pub start: StartMode,

    /// Share of the machines that must be ready before a `together` start.
    #[arg(
        long,
        value_name = env::START_QUORUM,
        env = env::START_QUORUM,
        default_value = "100%"
    )]
    pub start_quorum: Quorum,

    /// How long a `together` start waits for the quorum before starting without the rest.
    #[arg(long, value_name = env::START_TIMEOUT, env = env::START_TIMEOUT, default_value = DEFAULT_START_TIMEOUT, value_parser = positive_duration)]
    pub start_timeout: Duration,

    /// First player number of this test part.
    #[arg(
        long,
        value_name = env::PART_PLAYER_OFFSET,
        env = env::PART_PLAYER_OFFSET,
        default_value_t = 0
    )]
    pub part_player_offset: u64,

    /// Agents of the whole pod (all containers); defaults to this container's.
    #[arg(long, value_name = env::POD_AGENTS, env = env::POD_AGENTS)]
    pub pod_agents: Option<u32>,

    /// The pod's UID: owner of its slot Lease.
    #[arg(long, value_name = env::POD_UID, env = env::POD_UID)]
    pub pod_uid: Option<String>,

    /// The pod's namespace: where its slot Leases live.
    #[arg(long, value_name = env::POD_NAMESPACE, env = env::POD_NAMESPACE)]
    pub pod_namespace: Option<String>,

    /// An Indexed Job pod's index, set by the Job controller: its slot.
    #[arg(
        long,
        value_name = env::JOB_COMPLETION_INDEX,
        env = env::JOB_COMPLETION_INDEX
    )]
    pub job_completion_index: Option<u32>,

    /// UDP port of the agents' StatsD server on 127.0.0.1; defaults to 8125 + the container
    /// index (containers share the pod's network). 0 binds a free port.
    #[arg(long, value_name = env::STATSD_PORT, env = env::STATSD_PORT)]
    pub statsd_port: Option<u16>,

    /// Unix datagram socket of the StatsD server; defaults to `<work>/statsd.sock`.
    #[arg(long, value_name = env::STATSD_SOCKET, env = env::STATSD_SOCKET)]
    pub statsd_socket: Option<PathBuf>,

    /// Most StatsD series kept; lines that would make more are dropped and counted.
    #[arg(
        long,
        value_name = env::STATSD_MAX_SERIES,
        env = env::STATSD_MAX_SERIES,
        default_value_t = 10_000
    )]
    pub statsd_max_series: usize,

    /// Upper bounds of the Prometheus buckets of StatsD timers (seconds) and histograms,
    /// comma-separated; defaults to Prometheus's own (0.005 … 10).
    #[arg(long, value_name = env::STATSD_BUCKETS, env = env::STATSD_BUCKETS, value_parser = parse_buckets)]
    pub statsd_buckets: Option<Buckets>,

    /// Length of the windows written to `load-metrics.jsonl`.
    #[arg(long, value_name = env::LOAD_WINDOW, env = env::LOAD_WINDOW, default_value = "10s", value_parser = parse_duration)]
    pub load_window: Duration,

    /// Agent command and its arguments; defaults to `<work>/script/run`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Options of `wave-agent install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Directory that receives the `wave-agent` executable (created if missing).
    pub dir: PathBuf,
}

/// Histogram bucket bounds, ascending.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets(pub Vec<f64>);

fn parse_buckets(text: &str) -> Result<Buckets, String> {
    let bounds = text
        .split(',')
        .map(|b| {
            b.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("{:?} is not a number", b.trim()))
        })
        .collect::<Result<Vec<f64>, String>>()?;
    if bounds.windows(2).any(|w| w[0] >= w[1]) {
        return Err("bucket bounds must be in increasing order".into());
    }
    Ok(Buckets(bounds))
}

/// The stop and start timeouts: what the webhook accepts in their annotations, no more.
fn positive_duration(text: &str) -> Result<Duration, value::Invalid> {
    value::positive_duration(text)
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

impl RunArgs {
    /// S3 client settings from `WAVE_S3_PATH_STYLE` and `WAVE_S3_CHECKSUM`.
    pub fn s3_options(&self) -> S3Options {
        S3Options {
            path_style: self.s3_path_style,
            checksum: self.s3_checksum,
            ..S3Options::default()
        }
    }

    /// What the slot claim needs to know about this container.
    pub fn slot_config(&self) -> SlotConfig {
        let pod_agents = self.pod_agents.unwrap_or(self.agents).max(self.agents);
        SlotConfig {
            mode: self.coordination.clone(),
            part: Part {
                test_id: self.test_id.clone(),
                part: self.test_part.clone(),
            },
            machines: self.machines,
            pod: self.pod(),
            uid: self.pod_uid.clone(),
            namespace: self.pod_namespace.clone(),
            job_index: self.job_completion_index,
            agents: self.agents,
            pod_agents,
            earlier_agents: self.container_index.saturating_mul(self.agents),
            part_player_offset: self.part_player_offset,
            players_per_agent: self.players_per_agent,
        }
    }

    /// The StatsD server's sockets and limits (docs/load-metrics.md).
    pub fn statsd_config(&self) -> crate::statsd::StatsdConfig {
        let index = u16::try_from(self.container_index).unwrap_or(u16::MAX);
        crate::statsd::StatsdConfig {
            port: self
                .statsd_port
                .unwrap_or_else(|| STATSD_PORT_BASE.saturating_add(index)),
            port_required: self.statsd_port.is_some(),
            socket: self
                .statsd_socket
                .clone()
                .unwrap_or_else(|| self.work_dir.join("statsd.sock")),
            aggregate: crate::statsd::aggregate::AggregateConfig {
                max_series: self.statsd_max_series,
                buckets: self.statsd_buckets.clone().map_or_else(
                    || crate::statsd::aggregate::DEFAULT_BUCKETS.to_vec(),
                    |b| b.0,
                ),
            },
        }
    }

    /// The pod name used in agent ids and result paths: `POD_NAME`, else the host name.
    pub fn pod(&self) -> String {
        self.pod_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|name| name.into_string().ok())
                .unwrap_or_else(|| "localhost".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            ["wave-agent", "run"]
                .iter()
                .chain(args)
                .map(|s| s.to_string()),
        )?;
        match cli.command {
            Command::Run(run) => Ok(*run),
            Command::Install(_) => unreachable!("parsed `run`"),
        }
    }

    #[test]
    fn takes_the_command_after_double_dash() {
        let run = parse(&["--agents", "3", "--", "sh", "-c", "echo --agents"]).expect("valid");
        assert_eq!(run.agents, 3);
        assert_eq!(run.command, ["sh", "-c", "echo --agents"]);
    }

    #[test]
    fn reads_durations_and_policies() {
        let run = parse(&[
            "--upload-interval",
            "1m 30s",
            "--stop-timeout",
            "500ms",
            "--restart",
            "always",
            "--s3-checksum",
            "when-required",
            "--exit-on-complete",
        ])
        .expect("valid");
        assert_eq!(run.upload_interval, Duration::from_secs(90));
        assert_eq!(run.stop_timeout, Duration::from_millis(500));
        assert_eq!(run.restart, RestartPolicy::Always);
        assert_eq!(run.s3_checksum, ChecksumMode::WhenRequired);
        assert!(run.exit_on_complete);
    }

    #[test]
    fn rejects_an_unknown_restart_policy() {
        let err = parse(&["--restart", "sometimes"]).expect_err("invalid policy");
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn rejects_a_store_url_of_another_scheme() {
        let err = parse(&["--script-url", "http://example.com/x"]).expect_err("invalid URL");
        assert!(err.to_string().contains("http://example.com/x"), "{err}");
    }

    #[test]
    fn s3_options_come_from_path_style_and_checksum() {
        let options = parse(&["--s3-path-style", "--s3-checksum", "when-required"])
            .expect("valid")
            .s3_options();
        assert!(options.path_style);
        assert_eq!(options.checksum, ChecksumMode::WhenRequired);
        assert_eq!(
            parse(&[]).expect("valid").s3_options(),
            S3Options::default()
        );
        assert!(parse(&["--s3-path-style=maybe"]).is_err());
    }

    #[test]
    fn reads_the_slot_and_start_settings() {
        let run = parse(&[
            "--coordination",
            "file:///tmp/slots/",
            "--machines",
            "3",
            "--start",
            "together",
            "--start-quorum",
            "90%",
            "--agents",
            "5",
            "--pod-agents",
            "10",
            "--container-index",
            "1",
        ])
        .expect("valid");
        let config = run.slot_config();
        assert_eq!(config.mode, Mode::File("/tmp/slots/".into()));
        assert_eq!(config.machines, Some(3));
        assert_eq!(config.earlier_agents, 5);
        assert_eq!(config.pod_agents, 10);
        assert_eq!(run.start, StartMode::Together);
        assert_eq!(run.start_quorum, Quorum(90));
        let defaults = parse(&[]).expect("valid");
        assert_eq!(defaults.coordination, Mode::Off);
        assert_eq!(defaults.start, StartMode::Immediately);
        assert_eq!(defaults.start_quorum, wave_contract::part::DEFAULT_QUORUM);
        assert_eq!(
            defaults.start_timeout,
            wave_contract::part::DEFAULT_START_TIMEOUT_DURATION
        );
        assert_eq!(
            defaults.stop_timeout,
            wave_contract::names::DEFAULT_STOP_TIMEOUT
        );
        assert!(parse(&["--stop-timeout", "0s"]).is_err());
        let err = parse(&["--start", "tomorow"]).expect_err("invalid");
        assert!(err.to_string().contains("is not a start"), "{err}");
        assert!(parse(&["--coordination", "file://relative/"]).is_err());
    }

    #[test]
    fn statsd_defaults_to_8125_plus_the_container_index_in_the_work_dir() {
        let config = parse(&["--container-index", "2", "--work-dir", "/w"])
            .expect("valid")
            .statsd_config();
        assert_eq!(config.port, 8127);
        assert_eq!(config.socket, PathBuf::from("/w/statsd.sock"));
        assert_eq!(config.aggregate.max_series, 10_000);
        let config = parse(&["--statsd-port", "9000", "--statsd-buckets", "0.1, 1,10"])
            .expect("valid")
            .statsd_config();
        assert_eq!(config.port, 9000);
        assert_eq!(config.aggregate.buckets, [0.1, 1.0, 10.0]);
        assert!(parse(&["--statsd-buckets", "1,0.5"]).is_err());
        assert!(parse(&["--statsd-buckets", "1,x"]).is_err());
    }

    #[test]
    fn rejects_a_duration_without_unit() {
        assert!(parse(&["--stop-timeout", "20"]).is_err());
    }
}
