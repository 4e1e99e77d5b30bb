//! One test across many pods, the supervisor's side (docs/coordination.md): claim the pod's slot before
//! anything else, agree on the start, and watch for the part being stopped. Claims retry
//! with backoff and never give up on their own: agents never start without a slot (players
//! would collide silently). What the supervisor waits for is in its log, in `/readyz` and in
//! the metrics.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::time::Instant;
use tracing::{info, warn};
use wave_contract::part::{Coordination, Quorum};

use crate::error_chain::ErrorChain;
use crate::shutdown::Shutdown;
use crate::slots::file::{FileSlot, FileSlots};
use crate::slots::kube::{FixedSlot, KubeError, KubeSlots, Round};
use crate::slots::{Part, Placement};
use crate::start::{self, Next, StartMode};

/// First retry delay after a failed API call; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long one wait for a free slot lasts before the part is listed again.
const FULL_WAIT: Duration = Duration::from_secs(30);
/// How often file slots and the file start object are looked at while waiting.
const FILE_POLL: Duration = Duration::from_millis(100);

/// `WAVE_COORDINATION`: how the pod claims its slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Off,
    Kubernetes,
    File(PathBuf),
}

impl FromStr for Mode {
    type Err = wave_contract::Invalid;

    /// The webhook's parser (`wave_contract::part::Coordination`), so the supervisor accepts
    /// exactly what admission let through.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value.parse::<Coordination>()? {
            Coordination::Off => Mode::Off,
            Coordination::Kubernetes => Mode::Kubernetes,
            Coordination::File(url) => Mode::File(PathBuf::from(url.trim_start_matches("file://"))),
        })
    }
}

/// Everything the claim and the start need to know about the pod.
#[derive(Debug, Clone)]
pub struct SlotConfig {
    pub mode: Mode,
    pub part: Part,
    /// M; required unless the mode is `off`.
    pub machines: Option<u32>,
    pub pod: String,
    /// The pod UID; outside a cluster the pod name stands in.
    pub uid: Option<String>,
    pub namespace: Option<String>,
    /// Indexed Job pods: `JOB_COMPLETION_INDEX`.
    pub job_index: Option<u32>,
    /// Agents of this container.
    pub agents: u32,
    pub pod_agents: u32,
    pub earlier_agents: u32,
    pub part_player_offset: u64,
    pub players_per_agent: u64,
}

/// A setting that makes claiming impossible; retrying would not help.
#[derive(Debug, thiserror::Error)]
pub enum CoordinationError {
    #[error("WAVE_COORDINATION={mode} needs WAVE_MACHINES (the test part's machine count)")]
    NoMachines { mode: String },
    #[error(
        "WAVE_COORDINATION=kubernetes needs {name} (the webhook sets it from the downward API)"
    )]
    NoPodIdentity { name: &'static str },
    #[error(
        "no Kubernetes API configuration for the slot Leases (in-cluster service account or KUBECONFIG)"
    )]
    Client(#[source] kube::Error),
    #[error("failed to claim a file slot")]
    File(#[source] std::io::Error),
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForbiddenLabels {
    verb: &'static str,
    resource: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    reason: &'static str,
}

const SLOT_STATES: [&str; 4] = ["claiming", "waiting", "held", "off"];

/// The coordination metrics.
#[derive(Debug, Clone)]
pub struct CoordinationMetrics {
    machine_index: Gauge,
    start_wait: Gauge<f64, std::sync::atomic::AtomicU64>,
    slot_state: Family<StateLabels, Gauge>,
    forbidden: Family<ForbiddenLabels, Gauge>,
    errors: Family<ErrorLabels, Counter>,
}

impl CoordinationMetrics {
    pub fn register(registry: &mut Registry) -> CoordinationMetrics {
        let metrics = CoordinationMetrics {
            machine_index: Gauge::default(),
            start_wait: Gauge::default(),
            slot_state: Family::default(),
            forbidden: Family::default(),
            errors: Family::default(),
        };
        metrics.machine_index.set(-1);
        for reason in ["forbidden", "api"] {
            metrics
                .errors
                .get_or_create(&ErrorLabels { reason })
                .inc_by(0);
        }
        registry.register(
            "wave_machine_index",
            "This pod's slot m in the test part (-1 while it has none)",
            metrics.machine_index.clone(),
        );
        registry.register_with_unit(
            "wave_start_wait",
            "How long the supervisor waited for the slot and the agreed start",
            Unit::Seconds,
            metrics.start_wait.clone(),
        );
        registry.register(
            "wave_slot_state",
            "1 for the state of this pod's slot claim (claiming, waiting: all slots taken, held, off)",
            metrics.slot_state.clone(),
        );
        registry.register(
            "wave_coordination_forbidden",
            "1 while RBAC refuses the pod's service account this verb on this resource",
            metrics.forbidden.clone(),
        );
        registry.register(
            "wave_coordination_errors",
            "Failed Kubernetes API calls of the slot claim, start and stop watch",
            metrics.errors.clone(),
        );
        metrics.set_state("claiming");
        metrics
    }

    fn set_state(&self, state: &'static str) {
        for s in SLOT_STATES {
            self.slot_state
                .get_or_create(&StateLabels { state: s })
                .set(i64::from(s == state));
        }
    }

    fn error(&self, err: &KubeError) {
        match err.forbidden() {
            Some((verb, resource)) => {
                self.forbidden
                    .get_or_create(&ForbiddenLabels { verb, resource })
                    .set(1);
                self.errors
                    .get_or_create(&ErrorLabels {
                        reason: "forbidden",
                    })
                    .inc();
            }
            None => {
                self.errors
                    .get_or_create(&ErrorLabels { reason: "api" })
                    .inc();
            }
        }
    }

    fn clear_forbidden(&self) {
        self.forbidden.clear();
    }
}

/// What `/readyz` says while the agents are not started: shared with the HTTP server.
pub type Waiting = Arc<Mutex<Option<String>>>;

fn say(waiting: &Waiting, text: impl Into<String>) {
    *waiting.lock().unwrap_or_else(|p| p.into_inner()) = Some(text.into());
}

enum Backend {
    File { slots: FileSlots, held: FileSlot },
    Kube(Box<KubeSlots>),
}

/// A pod that holds its slot.
pub struct Coordinator {
    backend: Backend,
    machines: u32,
    pub placement: Placement,
    metrics: CoordinationMetrics,
    waiting: Waiting,
    claimed_at: Instant,
}

/// The outcome of [`claim`].
pub enum Claim {
    /// `WAVE_COORDINATION=off`: no slot.
    Off,
    Held(Box<Coordinator>),
    /// A shutdown request came first.
    Stopped,
}

/// Retries `call` with backoff until it succeeds or a shutdown request comes, saying in
/// the log, `/readyz` and the metrics what fails.
async fn retrying<T, F, Fut>(
    what: &str,
    metrics: &CoordinationMetrics,
    waiting: &Waiting,
    shutdown: &Shutdown,
    mut call: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KubeError>>,
{
    let mut delay = BACKOFF_START;
    loop {
        match call().await {
            Ok(value) => {
                metrics.clear_forbidden();
                return Some(value);
            }
            Err(err) => {
                metrics.error(&err);
                let text = format!(
                    "{what}: {}; retrying in {}",
                    ErrorChain(&err),
                    humantime::format_duration(delay)
                );
                warn!("{text}");
                say(waiting, text);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.stop.cancelled() => return None,
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// Claims the pod's slot (docs/coordination.md), waiting for as long as it takes.
pub async fn claim(
    config: &SlotConfig,
    metrics: &CoordinationMetrics,
    waiting: &Waiting,
    shutdown: &Shutdown,
) -> Result<Claim, CoordinationError> {
    if config.mode == Mode::Off {
        metrics.set_state("off");
        return Ok(Claim::Off);
    }
    let machines = config
        .machines
        .ok_or_else(|| CoordinationError::NoMachines {
            mode: match &config.mode {
                Mode::File(dir) => format!("file://{}", dir.display()),
                _ => "kubernetes".to_owned(),
            },
        })?;
    let began = Instant::now();
    let (backend, index, how) = match &config.mode {
        Mode::Off => unreachable!("handled above"),
        Mode::File(dir) => {
            let identity = config.uid.clone().unwrap_or_else(|| config.pod.clone());
            let slots = FileSlots::new(
                dir.clone(),
                config.part.clone(),
                config.pod.clone(),
                identity,
            );
            let mut logged = false;
            let held = loop {
                if let Some(held) = slots.try_claim(machines).map_err(CoordinationError::File)? {
                    break held;
                }
                if !logged {
                    let text = format!(
                        "all {machines} slots of {} in {} are held: waiting for one to free",
                        config.part,
                        dir.display()
                    );
                    info!("{text}");
                    say(waiting, text);
                    metrics.set_state("waiting");
                    logged = true;
                }
                tokio::select! {
                    () = tokio::time::sleep(FILE_POLL) => {}
                    () = shutdown.stop.cancelled() => return Ok(Claim::Stopped),
                }
            };
            let index = held.index;
            (Backend::File { slots, held }, index, "a file slot")
        }
        Mode::Kubernetes => {
            let uid = config
                .uid
                .clone()
                .ok_or(CoordinationError::NoPodIdentity { name: "POD_UID" })?;
            let namespace = config
                .namespace
                .clone()
                .ok_or(CoordinationError::NoPodIdentity {
                    name: "POD_NAMESPACE",
                })?;
            let client = kube::Client::try_default()
                .await
                .map_err(CoordinationError::Client)?;
            let slots = KubeSlots::new(client, &namespace, config.part.clone(), &config.pod, &uid);
            say(waiting, format!("claiming a slot of {}", config.part));
            let fixed = match config.job_index {
                Some(index) => Some(FixedSlot::JobIndex(index)),
                None => {
                    let Some(fixed) =
                        retrying("reading this pod", metrics, waiting, shutdown, || {
                            slots.statefulset_ordinal()
                        })
                        .await
                    else {
                        return Ok(Claim::Stopped);
                    };
                    fixed
                }
            };
            let (index, how) = match fixed {
                Some(FixedSlot::JobIndex(index)) => (index, "the Indexed Job's completion index"),
                Some(FixedSlot::Ordinal(index)) => (index, "the StatefulSet ordinal"),
                None => {
                    let Some(index) =
                        claim_lease(&slots, machines, &config.part, metrics, waiting, shutdown)
                            .await
                    else {
                        return Ok(Claim::Stopped);
                    };
                    (index, "a slot Lease")
                }
            };
            if index >= machines {
                warn!(
                    "slot {index} is outside [0, {machines}): WAVE_MACHINES is smaller than the owner's pod count"
                );
            }
            (Backend::Kube(Box::new(slots)), index, how)
        }
    };
    metrics.set_state("held");
    metrics.machine_index.set(i64::from(index));
    let placement = Placement {
        machine_index: index,
        machines,
        pod_agents: config.pod_agents,
        earlier_agents: config.earlier_agents,
        part_player_offset: config.part_player_offset,
        players_per_agent: config.players_per_agent,
    };
    info!(
        "holding slot {index} of {machines} ({how}) in {}: agent numbers [{}, {}), players [{}, {})",
        config.part,
        placement.agent_number(0),
        placement.agent_number(config.agents),
        placement.player_offset(0),
        placement.player_offset(config.agents),
    );
    metrics.start_wait.set(began.elapsed().as_secs_f64());
    Ok(Claim::Held(Box::new(Coordinator {
        backend,
        machines,
        placement,
        metrics: metrics.clone(),
        waiting: waiting.clone(),
        claimed_at: began,
    })))
}

/// Claims a slot Lease among `machines`, waiting while every slot is held and retrying
/// failed calls; `None` when a shutdown request came first.
pub async fn claim_lease(
    slots: &KubeSlots,
    machines: u32,
    part: &Part,
    metrics: &CoordinationMetrics,
    waiting: &Waiting,
    shutdown: &Shutdown,
) -> Option<u32> {
    let mut logged = false;
    loop {
        let round = retrying("claiming a slot Lease", metrics, waiting, shutdown, || {
            slots.try_claim(machines)
        })
        .await?;
        match round {
            Round::Held(index) => return Some(index),
            Round::Full { resource_version } => {
                if !logged {
                    let text = format!(
                        "all {machines} slots of {part} are held by running pods \
                         (a replaced pod still terminating?): waiting for one to free"
                    );
                    info!("{text}");
                    say(waiting, text);
                    metrics.set_state("waiting");
                    logged = true;
                }
                let wait = slots.wait_for_a_free_slot(&resource_version, FULL_WAIT);
                tokio::select! {
                    result = wait => if let Err(err) = result {
                        metrics.error(&err);
                        warn!("{}", ErrorChain(&err));
                        tokio::time::sleep(BACKOFF_START).await;
                    },
                    () = shutdown.stop.cancelled() => return None,
                }
            }
        }
    }
}

/// The start of agents when there is no slot (coordination `off`): `together` cannot be
/// agreed on, so it means immediately.
pub async fn start_without_slot(mode: StartMode, shutdown: &Shutdown) -> Option<String> {
    match mode {
        StartMode::At(at) => sleep_until(at, shutdown).await,
        StartMode::Together => {
            warn!("WAVE_START=together needs a slot (WAVE_COORDINATION is off): starting now");
            Some(start::format_time(SystemTime::now()))
        }
        StartMode::Immediately => Some(start::format_time(SystemTime::now())),
    }
}

/// Sleeps until `at` by the wall clock; `None` when a shutdown request came first.
async fn sleep_until(at: SystemTime, shutdown: &Shutdown) -> Option<String> {
    let left = start::until(at, SystemTime::now());
    if !left.is_zero() {
        info!(
            "agents start at {} (in {})",
            start::format_time(at),
            humantime::format_duration(Duration::from_millis(left.as_millis() as u64))
        );
    }
    tokio::select! {
        () = tokio::time::sleep(left) => Some(start::format_time(at)),
        () = shutdown.stop.cancelled() => None,
    }
}

impl Coordinator {
    /// Waits for the start (docs/coordination.md) and returns `WAVE_START_AT`; `None` when a shutdown
    /// request came first.
    pub async fn start(
        &mut self,
        mode: StartMode,
        quorum: Quorum,
        timeout: Duration,
        shutdown: &Shutdown,
    ) -> Option<String> {
        let at = match mode {
            StartMode::Immediately => SystemTime::now(),
            StartMode::At(at) => at,
            StartMode::Together => {
                let agreed = self.agree(quorum, timeout, shutdown).await?;
                match start::parse_time(&agreed) {
                    Some(at) => at,
                    None => {
                        warn!(
                            "the start object holds {agreed:?}, not an RFC 3339 time: starting now"
                        );
                        SystemTime::now()
                    }
                }
            }
        };
        let started = sleep_until(at, shutdown).await;
        self.metrics
            .start_wait
            .set(self.claimed_at.elapsed().as_secs_f64());
        started
    }

    /// Marks the slot ready and waits for the part's start object, creating it at the
    /// quorum or the timeout; returns its start-at.
    async fn agree(
        &mut self,
        quorum: Quorum,
        timeout: Duration,
        shutdown: &Shutdown,
    ) -> Option<String> {
        let machines = self.machines;
        let needed = quorum.of(machines);
        let text = format!(
            "ready; waiting for {needed} of {machines} machines to be ready (start-timeout {})",
            humantime::format_duration(timeout)
        );
        info!("{text}");
        say(&self.waiting, text);
        let began = Instant::now();
        match &mut self.backend {
            Backend::File { slots, held } => {
                if let Err(err) = held.mark_ready() {
                    warn!("cannot mark the slot ready: {err}");
                }
                loop {
                    match slots.start_at() {
                        Ok(Some(at)) => return Some(at),
                        Ok(None) => {}
                        Err(err) => warn!("{err}"),
                    }
                    let ready = slots.ready_count(machines);
                    if start::together(ready, machines, quorum, began.elapsed(), timeout)
                        == Next::CreateStart
                    {
                        log_decision(ready, machines, needed);
                        match slots.create_start(&start::proposed_start(SystemTime::now())) {
                            Ok(at) => return Some(at),
                            Err(err) => warn!("{err}"),
                        }
                    }
                    self.metrics
                        .start_wait
                        .set(self.claimed_at.elapsed().as_secs_f64());
                    tokio::select! {
                        () = tokio::time::sleep(FILE_POLL) => {}
                        () = shutdown.stop.cancelled() => return None,
                    }
                }
            }
            Backend::Kube(slots) => {
                let index = self.placement.machine_index;
                let (metrics, waiting) = (&self.metrics, &self.waiting);
                retrying("marking the slot ready", metrics, waiting, shutdown, || {
                    slots.mark(index, "ready")
                })
                .await?;
                loop {
                    let ready = retrying(
                        "counting ready machines",
                        metrics,
                        waiting,
                        shutdown,
                        || slots.count_marked("ready"),
                    )
                    .await?;
                    if start::together(ready, machines, quorum, began.elapsed(), timeout)
                        == Next::CreateStart
                    {
                        log_decision(ready, machines, needed);
                        let proposed = start::proposed_start(SystemTime::now());
                        return retrying(
                            "creating the start object",
                            metrics,
                            waiting,
                            shutdown,
                            || slots.create_start(&proposed),
                        )
                        .await;
                    }
                    let left = timeout
                        .saturating_sub(began.elapsed())
                        .max(Duration::from_millis(100));
                    let seen = retrying(
                        "watching the start object",
                        metrics,
                        waiting,
                        shutdown,
                        || slots.watch_start(left, |s| s.start_at.is_some()),
                    )
                    .await?;
                    if let Some(at) = seen.and_then(|s| s.start_at) {
                        return Some(at);
                    }
                    metrics
                        .start_wait
                        .set(self.claimed_at.elapsed().as_secs_f64());
                }
            }
        }
    }

    /// Resolves with the reason once the test part is stopped (docs/coordination.md).
    pub async fn stopped(&self) -> String {
        match &self.backend {
            Backend::File { slots, .. } => loop {
                if let Some(reason) = slots.stop_reason() {
                    return reason;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            },
            Backend::Kube(slots) => {
                let mut delay = BACKOFF_START;
                loop {
                    match slots
                        .watch_start(Duration::from_secs(290), |s| s.stop.is_some())
                        .await
                    {
                        Ok(Some(crate::slots::kube::Start {
                            stop: Some(reason), ..
                        })) => return reason,
                        Ok(_) => delay = BACKOFF_START,
                        Err(err) => {
                            self.metrics.error(&err);
                            warn!("watching for a stop: {}", ErrorChain(&err));
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(BACKOFF_MAX);
                        }
                    }
                }
            }
        }
    }

    /// Records that this pod's agents have ended, for `wave status`.
    pub async fn mark_done(&self) {
        if let Backend::Kube(slots) = &self.backend
            && let Err(err) = slots.mark(self.placement.machine_index, "done").await
        {
            self.metrics.error(&err);
            warn!("cannot mark the slot done: {}", ErrorChain(&err));
        }
    }
}

fn log_decision(ready: u32, machines: u32, needed: u32) {
    if ready >= needed {
        info!("{ready} of {machines} machines ready: agreeing on the start");
    } else {
        warn!(
            "start-timeout reached with {ready} of {machines} machines ready (quorum {needed}): starting without the others"
        );
    }
}
