//! `wave-agent run`: the whole life of a load container (docs/agent-supervisor.md).
//!
//! metrics server up → script fetched → agents started and supervised, results synced every
//! upload interval → summary.json written and final upload → stay up serving metrics (or exit
//! with `WAVE_EXIT_ON_COMPLETE`). A shutdown request at any point stops the agents, uploads
//! what they wrote within the stop timeout and ends the run. A supervisor restarted in a pod
//! whose work directory holds a completed summary does not run the test again.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::RunArgs;
use crate::coordination::{
    self, Claim, CoordinationError, CoordinationMetrics, Coordinator, Waiting,
};
use crate::error_chain::ErrorChain;
use crate::logs::StdoutSink;
use crate::metrics::{self, AgentMetrics, HttpState};
use crate::process::ProcessSpawner;
use crate::reap::{self, Tracked};
use crate::resume::Resumption;
use crate::script::{self, ScriptError, ScriptMetrics};
use crate::shutdown::Shutdown;
use crate::statsd::{Statsd, StatsdError, WindowMeta};
use crate::store::{CutOffSetter, Store, StoreError, StoreUrl};
use crate::summary::{Summary, SummaryContext, SummaryError};
use crate::supervise::{
    AgentCommand, AgentState, SuperviseConfig, SuperviseContext, SuperviseError, Supervisor,
};
use crate::upload::{UploadError, UploadMetrics, Uploader};

/// Where the store's confirmations are kept, relative to the work directory (outside the
/// results, so it is not uploaded itself).
const UPLOAD_LEDGER: &str = "state/uploads.json";
/// The agents' runs, kept for a restarted supervisor (see [`crate::resume`]).
const AGENT_JOURNAL: &str = "state/agents.json";

/// How long "until it is done" is for an upload nobody is waiting on.
const NO_DEADLINE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("failed to create the work directory {}", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to read the address of the metrics listener")]
    MetricsAddress(#[source] io::Error),
    #[error("failed to set up signal handling")]
    Signals(#[source] io::Error),
    #[error("failed to open the store of {url}")]
    Store {
        url: StoreUrl,
        #[source]
        source: Box<StoreError>,
    },
    #[error(transparent)]
    Script(#[from] Box<ScriptError>),
    #[error(
        "no agent command: {} does not exist (give a command after `--` or a script with a `run` file)",
        path.display()
    )]
    NoCommand { path: PathBuf },
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    #[error(transparent)]
    Summary(#[from] SummaryError),
    #[error(transparent)]
    Coordination(#[from] CoordinationError),
    #[error(transparent)]
    Statsd(#[from] StatsdError),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every agent ended and `WAVE_EXIT_ON_COMPLETE` asked to exit.
    Completed { all_succeeded: bool },
    /// A shutdown request ended the run.
    Stopped,
}

impl RunOutcome {
    /// Exit code of the process: 1 only when a completed test had failed agents.
    pub fn exit_code(self) -> u8 {
        match self {
            RunOutcome::Completed {
                all_succeeded: false,
            } => 1,
            _ => 0,
        }
    }
}

/// Paths inside the work directory.
struct WorkDir {
    root: PathBuf,
    script: PathBuf,
    results: PathBuf,
}

impl WorkDir {
    fn create(root: &Path) -> Result<WorkDir, RunError> {
        let dir = WorkDir {
            root: root.to_path_buf(),
            script: root.join("script"),
            results: root.join("results"),
        };
        for path in [&dir.script, &dir.results] {
            std::fs::create_dir_all(path).map_err(|source| RunError::WorkDir {
                path: path.clone(),
                source,
            })?;
        }
        Ok(dir)
    }
}

/// Runs the test described by `args` until it completes (with `exit_on_complete`) or
/// `shutdown` ends it, serving metrics on `listener`. Agent output goes to `stdout` as
/// prefixed lines.
pub async fn run(
    args: RunArgs,
    listener: TcpListener,
    shutdown: Shutdown,
    stdout: Option<StdoutSink>,
) -> Result<RunOutcome, RunError> {
    let pod = args.pod();
    let work = WorkDir::create(&args.work_dir)?;

    let mut registry = metrics::new_registry(&args.test_id);
    let agent_metrics = AgentMetrics::register(&mut registry);
    let script_metrics = ScriptMetrics::register(&mut registry);
    let upload_metrics = UploadMetrics::register(&mut registry);
    let coordination_metrics = CoordinationMetrics::register(&mut registry);
    let waiting = Waiting::default();
    agent_metrics.set_players_configured(u64::from(args.agents) * args.players_per_agent);
    let statsd = Arc::new(Statsd::start(args.statsd_config(), &mut registry)?);

    let address = listener.local_addr().map_err(RunError::MetricsAddress)?;
    let ready = Arc::new(AtomicBool::new(false));
    // The metrics server and the orphan reaper last until the run ends (or a kill).
    let background = shutdown.kill.child_token();
    let http = HttpState {
        registry: Arc::new(registry),
        ready: ready.clone(),
        waiting: waiting.clone(),
    };
    let server = tokio::spawn(metrics::serve(
        listener,
        http,
        background.clone().cancelled_owned(),
    ));
    // Tests and benchmarks with WAVE_METRICS_PORT=0 read the port from this line.
    info!("serving metrics on {address}");

    let tracked = Arc::new(Tracked::default());
    if let Err(err) = reap::become_subreaper() {
        warn!("cannot become a child subreaper ({err}); orphans are reaped only as PID 1");
    }
    let reaper =
        reap::spawn_reaper(tracked.clone(), background.clone()).map_err(RunError::Signals)?;

    let s3 = args.s3_options();
    let mut uploader = match &args.results_url {
        Some(url) => {
            let store = Store::open(url, &s3)
                .await
                .map_err(|source| RunError::Store {
                    url: url.clone(),
                    source: Box::new(source),
                })?;
            let remote = Uploader::destination(url, &pod, args.container_index);
            info!("results go to {remote}");
            Some(
                Uploader::new(store, &work.results, remote, upload_metrics)
                    .with_ledger(work.root.join(UPLOAD_LEDGER)),
            )
        }
        None => {
            info!(
                "no WAVE_RESULTS_URL: results stay in {}",
                work.results.display()
            );
            None
        }
    };

    let outcome = match Summary::load(&work.results) {
        Ok(Some(summary)) if summary.completed => {
            info!("summary.json says this test already completed here; not running it again");
            show_summary(&agent_metrics, &summary);
            ready.store(true, Ordering::Release);
            after_completion(&args, uploader.as_mut(), shutdown, summary.succeeded).await
        }
        found => {
            if let Err(err) = found {
                warn!("{err}; running the test");
            }
            let test = Test {
                args: &args,
                pod: &pod,
                work: &work,
                agent_metrics: &agent_metrics,
                script_metrics: &script_metrics,
                coordination_metrics: &coordination_metrics,
                waiting,
                tracked,
                ready,
                stdout,
                statsd,
            };
            test.run(uploader, shutdown).await
        }
    };

    background.cancel();
    let _ = server.await;
    let _ = reaper.await;
    outcome
}

/// A test to run from the start.
struct Test<'a> {
    args: &'a RunArgs,
    pod: &'a str,
    work: &'a WorkDir,
    agent_metrics: &'a AgentMetrics,
    script_metrics: &'a ScriptMetrics,
    coordination_metrics: &'a CoordinationMetrics,
    /// What `/readyz` says the supervisor waits for.
    waiting: Waiting,
    tracked: Arc<Tracked>,
    ready: Arc<AtomicBool>,
    stdout: Option<StdoutSink>,
    statsd: Arc<Statsd>,
}

impl Test<'_> {
    async fn run(
        self,
        uploader: Option<Uploader>,
        shutdown: Shutdown,
    ) -> Result<RunOutcome, RunError> {
        let args = self.args;
        // The slot comes first: agents never start without one (docs/coordination.md).
        let slot_config = args.slot_config();
        let mut coordinator = match coordination::claim(
            &slot_config,
            self.coordination_metrics,
            &self.waiting,
            &shutdown,
        )
        .await?
        {
            Claim::Off => None,
            Claim::Held(coordinator) => Some(coordinator),
            Claim::Stopped => {
                info!("stopped while claiming a slot");
                return Ok(RunOutcome::Stopped);
            }
        };
        if let Some(url) = &args.script_url {
            let store = Store::open(url, &args.s3_options())
                .await
                .map_err(|source| RunError::Store {
                    url: url.clone(),
                    source: Box::new(source),
                })?;
            info!("fetching the script from {url}");
            tokio::select! {
                fetched = script::fetch(&store, url, &self.work.script, self.script_metrics) => {
                    let fetched = fetched.map_err(Box::new)?;
                    info!("script ready: {} objects, {} bytes", fetched.objects, fetched.bytes);
                }
                () = shutdown.stop.cancelled() => {
                    info!("stopped while fetching the script");
                    return Ok(RunOutcome::Stopped);
                }
            }
        }
        let command = agent_command(&args.command, &self.work.script)?;
        let start_at = match coordinator.as_mut() {
            Some(c) => {
                c.start(args.start, args.start_quorum, args.start_timeout, &shutdown)
                    .await
            }
            None => coordination::start_without_slot(args.start, &shutdown).await,
        };
        let Some(start_at) = start_at else {
            info!("stopped while waiting for the start");
            return Ok(RunOutcome::Stopped);
        };
        let coordinator: Option<Arc<Coordinator>> = coordinator.map(Arc::from);
        let placement = coordinator.as_ref().map(|c| c.placement.clone());

        let config = SuperviseConfig {
            agents: args.agents,
            command,
            script_dir: self.work.script.clone(),
            results_dir: self.work.results.clone(),
            pod: self.pod.to_owned(),
            container: args.container_index,
            players_per_agent: args.players_per_agent,
            restart: args.restart,
            max_restarts: args.max_restarts,
            stop_timeout: args.stop_timeout,
            placement: placement.clone(),
            start_at: Some(start_at.clone()),
            env: self.statsd.agent_env(),
        };
        let resumed = Resumption::begin(
            self.work.root.join(AGENT_JOURNAL),
            args.restart,
            args.max_restarts,
            args.agents,
        );
        let (history, supervisor_start) = (resumed.history.clone(), resumed.supervisor_start);
        let earlier_runs = resumed.earlier_runs.clone();
        let supervisor_starts = resumed.supervisor_starts();
        let ctx = SuperviseContext {
            observer: Arc::new(resumed.observe(self.agent_metrics.clone())),
            ready: self.ready.clone(),
        };
        let spawner = ProcessSpawner::new(config.clone(), self.tracked, self.stdout)
            .with_earlier_runs(&earlier_runs);
        let supervisor =
            Supervisor::new(config, Arc::new(spawner), ctx)?.resume_from(history, supervisor_start);
        let started_at = supervisor_starts[0];
        info!("starting {} agents", args.agents);

        let windows_stop = shutdown.kill.child_token();
        let windows = {
            let (statsd, metrics) = (self.statsd.clone(), self.agent_metrics.clone());
            let meta = WindowMeta {
                pod: self.pod.to_owned(),
                container: args.container_index,
                results_dir: self.work.results.clone(),
                agents_running: Box::new(move || metrics.running_agents()),
            };
            let (length, stop) = (args.load_window, windows_stop.clone());
            tokio::spawn(async move { statsd.write_windows(meta, length, stop).await })
        };
        let sync_stop = shutdown.kill.child_token();
        let syncing = uploader.map(|uploader| {
            (
                uploader.cutoff(),
                tokio::spawn(sync_periodically(
                    uploader,
                    args.upload_interval,
                    sync_stop.clone(),
                )),
            )
        });
        let stopped_by = Arc::new(std::sync::Mutex::new(None));
        let supervision_shutdown =
            watch_part_stop(&shutdown, coordinator.clone(), stopped_by.clone());
        let supervision = supervisor.run(supervision_shutdown).await;
        let stopped_by = stopped_by.lock().unwrap_or_else(|p| p.into_inner()).take();
        // The last window is in load-metrics.jsonl before the final upload.
        windows_stop.cancel();
        let _ = windows.await;
        // The final upload's budget starts now; a sync under way goes on within it (its
        // finished files and parts are kept) instead of starting over.
        let deadline = Instant::now() + args.stop_timeout;
        sync_stop.cancel();
        let mut uploader = match syncing {
            Some((cutoff, task)) => Some(finish_sync(task, &cutoff, deadline, &shutdown).await),
            None => None,
        };

        let summary = Summary::new(
            &SummaryContext {
                test_id: args.test_id.clone(),
                pod: self.pod.to_owned(),
                container: args.container_index,
                total_players: args.total_players,
                players_per_agent: args.players_per_agent,
                started_at,
                part: args.test_part.clone(),
                placement,
                start_at: Some(start_at),
                stopped: stopped_by.clone(),
                supervisor_starts,
            },
            &supervision,
            SystemTime::now(),
        );
        summary.write(&self.work.results, &self.work.root)?;
        report(&summary);
        if let Some(coordinator) = &coordinator {
            coordinator.mark_done().await;
        }

        if supervision.stopped && stopped_by.is_none() {
            if let Some(uploader) = uploader.as_mut() {
                final_upload(uploader, deadline, &shutdown).await;
            }
            return Ok(RunOutcome::Stopped);
        }
        self.agent_metrics.set_completed(true);
        after_completion(args, uploader.as_mut(), shutdown, summary.succeeded).await
    }
}

/// The shutdown the supervision obeys: the process's own requests, and a stop of the whole
/// test part (docs/coordination.md), whose reason lands in `stopped_by`.
fn watch_part_stop(
    shutdown: &Shutdown,
    coordinator: Option<Arc<Coordinator>>,
    stopped_by: Arc<std::sync::Mutex<Option<String>>>,
) -> Shutdown {
    let supervision = Shutdown {
        kill: shutdown.kill.clone(),
        stop: shutdown.kill.child_token(),
    };
    let (process_stop, stop) = (shutdown.stop.clone(), supervision.stop.clone());
    tokio::spawn(async move {
        let part_stopped = async {
            match &coordinator {
                Some(c) => c.stopped().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = process_stop.cancelled() => {}
            () = stop.cancelled() => return,
            reason = part_stopped => {
                info!("the test part was stopped ({reason}): stopping the agents");
                *stopped_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
            }
        }
        stop.cancel();
    });
    supervision
}

/// After every agent ended: upload until everything is in the store, then exit or stay up
/// serving metrics until a shutdown request.
async fn after_completion(
    args: &RunArgs,
    mut uploader: Option<&mut Uploader>,
    shutdown: Shutdown,
    all_succeeded: bool,
) -> Result<RunOutcome, RunError> {
    if let Some(uploader) = uploader.as_deref_mut() {
        let cutoff = uploader.cutoff();
        let flush = uploader.flush(Instant::now() + NO_DEADLINE);
        tokio::pin!(flush);
        let done = tokio::select! {
            result = &mut flush => {
                log_upload(result);
                true
            }
            () = shutdown.stop.cancelled() => false,
        };
        if !done {
            // The flush under way goes on, now within the stop timeout.
            info!("uploading results before exit");
            cutoff.set(Instant::now() + args.stop_timeout);
            tokio::select! {
                result = &mut flush => log_upload(result),
                () = shutdown.kill.cancelled() => {
                    cutoff.set(Instant::now());
                    log_upload(flush.await);
                }
            }
            return Ok(RunOutcome::Stopped);
        }
    }
    if args.exit_on_complete {
        return Ok(RunOutcome::Completed { all_succeeded });
    }
    info!("test complete; serving metrics until stopped");
    shutdown.stop.cancelled().await;
    if let Some(uploader) = uploader {
        let deadline = Instant::now() + args.stop_timeout;
        final_upload(uploader, deadline, &shutdown).await;
    }
    Ok(RunOutcome::Stopped)
}

/// The upload at shutdown, bounded by `deadline` and cut short by a second request (which
/// still waits for the aborts of cut-off multipart uploads).
async fn final_upload(uploader: &mut Uploader, deadline: Instant, shutdown: &Shutdown) {
    info!("uploading results before exit");
    let cutoff = uploader.cutoff();
    let flush = uploader.flush(deadline);
    tokio::pin!(flush);
    tokio::select! {
        result = &mut flush => log_upload(result),
        () = shutdown.kill.cancelled() => {
            warn!("final upload interrupted; some results were not uploaded");
            cutoff.set(Instant::now());
            log_upload(flush.await);
        }
    }
}

fn log_upload(result: Result<crate::upload::SyncReport, UploadError>) {
    match result {
        Ok(_) => info!("all results uploaded"),
        Err(err) => warn!("{}", ErrorChain(&err)),
    }
}

/// Uploads new or changed results every `interval` until told to stop; returns the uploader.
async fn sync_periodically(
    mut uploader: Uploader,
    interval: Duration,
    stop: CancellationToken,
) -> Uploader {
    let mut ticks = tokio::time::interval_at(Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return uploader,
        }
        // Not dropped at a stop: what is under way finishes (bounded by the uploader's
        // cut-off) and the final flush only sends what is left.
        match uploader.sync().await {
            Ok(report) if report.uploaded_files > 0 => info!(
                "uploaded {} result files ({} bytes)",
                report.uploaded_files, report.uploaded_bytes
            ),
            Ok(_) => {}
            Err(err) => warn!("{}", ErrorChain(&err)),
        }
    }
}

/// Waits for the periodic sync task to end (it finishes the sync under way), bounding it by
/// `deadline` once a shutdown is requested and cutting it off at a second request.
async fn finish_sync(
    mut task: tokio::task::JoinHandle<Uploader>,
    cutoff: &CutOffSetter,
    deadline: Instant,
    shutdown: &Shutdown,
) -> Uploader {
    let (mut stopping, mut killed) = (false, false);
    loop {
        tokio::select! {
            done = &mut task => return done.expect("the sync task does not panic"),
            () = shutdown.stop.cancelled(), if !stopping => {
                stopping = true;
                cutoff.set(deadline.max(Instant::now()));
            }
            () = shutdown.kill.cancelled(), if !killed => {
                killed = true;
                cutoff.set(Instant::now());
            }
        }
    }
}

/// The agent command: what follows `--`, else `<script>/run`.
fn agent_command(
    command: &[std::ffi::OsString],
    script_dir: &Path,
) -> Result<AgentCommand, RunError> {
    match command.split_first() {
        Some((program, args)) => Ok(AgentCommand {
            program: program.clone(),
            args: args.to_vec(),
        }),
        None => {
            let run = script_dir.join("run");
            if !run.is_file() {
                return Err(RunError::NoCommand { path: run });
            }
            Ok(AgentCommand {
                program: run.into_os_string(),
                args: Vec::new(),
            })
        }
    }
}

/// Sets the metrics from a summary found on disk (the agents are not running again).
fn show_summary(metrics: &AgentMetrics, summary: &Summary) {
    let mut counts = HashMap::new();
    for agent in &summary.agents {
        *counts.entry(agent.state).or_insert(0) += 1;
    }
    metrics.set_states(&counts);
    metrics.set_completed(true);
}

fn report(summary: &Summary) {
    let count = |state| summary.agents.iter().filter(|a| a.state == state).count();
    info!(
        "{} agents ended: {} succeeded, {} failed; summary.json written",
        summary.agents.len(),
        count(AgentState::Succeeded),
        count(AgentState::Failed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_command_after_double_dash() {
        let cmd = agent_command(&["sh".into(), "-c".into(), "true".into()], Path::new("/x"))
            .expect("a command");
        assert_eq!(cmd.program, "sh");
        assert_eq!(cmd.args, ["-c", "true"]);
    }

    #[test]
    fn without_a_command_needs_the_script_run_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = agent_command(&[], dir.path()).expect_err("no run file");
        assert!(err.to_string().contains("/run does not exist"), "{err}");
        std::fs::write(dir.path().join("run"), "#!/bin/sh\n").expect("write");
        let cmd = agent_command(&[], dir.path()).expect("run exists");
        assert_eq!(cmd.program, dir.path().join("run").into_os_string());
    }

    #[test]
    fn exit_code_is_one_only_for_a_completed_test_with_failures() {
        assert_eq!(
            RunOutcome::Completed {
                all_succeeded: true
            }
            .exit_code(),
            0
        );
        assert_eq!(
            RunOutcome::Completed {
                all_succeeded: false
            }
            .exit_code(),
            1
        );
        assert_eq!(RunOutcome::Stopped.exit_code(), 0);
    }

    /// A plain HTTP/1.0 GET of `path` on `address`; returns the status line.
    async fn status_line(address: std::net::SocketAddr, path: &str) -> io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response.lines().next().unwrap_or_default().to_owned())
    }

    #[tokio::test]
    async fn serves_probes_on_the_listener_it_is_given_until_stopped() {
        use clap::Parser;
        let work = tempfile::tempdir().expect("tempdir");
        let cli = crate::cli::Cli::try_parse_from([
            "wave-agent",
            "run",
            "--work-dir",
            work.path().to_str().expect("UTF-8 temp path"),
            "--pod-name",
            "pod",
            "--",
            "sleep",
            "30",
        ])
        .expect("valid arguments");
        let crate::cli::Command::Run(args) = cli.command else {
            unreachable!("parsed `run`")
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("bound address");
        let shutdown = Shutdown::default();
        let running = tokio::spawn(run(*args, listener, shutdown.clone(), None));

        let deadline = Instant::now() + Duration::from_secs(30);
        while !status_line(address, "/readyz")
            .await
            .is_ok_and(|line| line.contains(" 200 "))
        {
            assert!(Instant::now() < deadline, "/readyz never answered 200");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.request();
        let outcome = running.await.expect("the run does not panic");
        assert_eq!(outcome.expect("a clean stop"), RunOutcome::Stopped);
        assert!(
            status_line(address, "/healthz").await.is_err(),
            "the server is gone with the run"
        );
    }
}
