//! Applying the mutation to the typed pod: a pure function from a pod, its [`Settings`] and its
//! owner's replicas to a verdict (docs/webhook-reference.md).
//!
//! The pod is copied and the copy changed in place; [`crate::patch`] turns the difference
//! into the JSON Patch. Running the mutation on its own output changes nothing: everything
//! wave adds is recognised as wave's on the way back (the API server re-invokes webhooks).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector, Pod,
    PodSpec, ResourceRequirements, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use wave_contract::names::{
    BIN_DIR, BIN_VOLUME, INSTANCE_TYPE_SELECTOR, OS_SELECTOR, WORK_DIR, WORK_VOLUME, grace_period,
    metrics_port_name,
};
use wave_contract::value::{format_duration, positive_duration};
use wave_contract::{Annotation, env};

use crate::annotations::{Reading, Settings};
use crate::catalog::Amount;
use crate::config::{Config, Os, SupervisorMode};
use crate::denial::{Denial, deny};
use crate::part::{OwnerReplicas, Totals};
use crate::resources::{
    agents_per_container, format_cpu, format_memory, parse_cpu_millis, parse_memory_bytes, share,
};
use crate::{install, patch};

/// Extended resource the EKS VPC resource controller uses to give Windows pods an IP.
pub const WINDOWS_IP_RESOURCE: &str = "vpc.amazonaws.com/PrivateIPv4Address";

/// The outcome of admitting one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Allowed unchanged: not a test machine, or opted out.
    Skip {
        /// Why nothing is done, for logs.
        reason: &'static str,
    },
    /// Allowed with this patch (empty when the pod is already mutated) and these warnings.
    Patch {
        /// JSON Patch to apply to the pod.
        patch: patch::Patch,
        /// Admission warnings for the user (values of theirs that wave kept).
        warnings: Vec<String>,
    },
    /// Refused; the message names the annotation or label at fault.
    Deny(Denial),
}

/// Decides about one pod and admits it: skip, patch or deny (docs/webhook-reference.md).
/// Pure: no I/O.
pub fn admit(pod: &Pod, replicas: OwnerReplicas, config: &Config) -> Verdict {
    decide(pod, Settings::read(pod, config), replicas, config)
}

/// [`admit`] for a pod already read with [`Settings::read`], so the server can look up the
/// owner's replicas only when [`Settings::needs_owner_replicas`] says so.
pub fn decide(
    pod: &Pod,
    reading: Result<Reading<'_>, Denial>,
    replicas: OwnerReplicas,
    config: &Config,
) -> Verdict {
    let settings = match reading {
        Ok(Reading::Mutate(settings)) => settings,
        Ok(Reading::Skip(reason)) => return Verdict::Skip { reason },
        Err(denial) => return Verdict::Deny(denial),
    };
    match mutated_copy(pod, &settings, &replicas, config) {
        Ok((out, warnings)) => Verdict::Patch {
            patch: patch::build(pod, &out),
            warnings,
        },
        Err(denial) => Verdict::Deny(denial),
    }
}

/// The mutated copy of the pod and the warnings for the user's values kept.
fn mutated_copy(
    pod: &Pod,
    settings: &Settings<'_>,
    replicas: &OwnerReplicas,
    config: &Config,
) -> Result<(Pod, Vec<String>), Denial> {
    let (totals, machines_warning) = Totals::of(
        settings.total_players,
        replicas,
        settings.agents,
        settings.players_per_agent,
    )?;
    let mut out = pod.clone();
    let mut warnings = Vec::from_iter(machines_warning);
    apply(&mut out, settings, totals, config, &mut warnings)?;
    Ok((out, warnings))
}

/// The value wave gives an environment variable.
enum EnvValue {
    Plain(String),
    Field(&'static str),
}

/// Which containers are test containers: not a configured sidecar (a service-mesh proxy
/// injected before wave), and, when wave has already mutated the pod (the API server
/// re-invokes webhooks), only the containers wave mutated: a container another webhook added
/// since is left alone instead of changing how the agents are spread.
fn test_containers(containers: &[Container], config: &Config) -> Vec<bool> {
    let marked = |c: &Container| {
        c.env
            .as_ref()
            .is_some_and(|env| env.iter().any(|e| e.name == env::CONTAINER_INDEX))
    };
    let already_mutated = containers.iter().any(marked);
    containers
        .iter()
        .map(|c| {
            if already_mutated {
                marked(c)
            } else {
                !config.sidecar_containers.contains(&c.name)
            }
        })
        .collect()
}

/// Applies the settings to the pod in place, collecting warnings for the user's values kept.
fn apply(
    pod: &mut Pod,
    s: &Settings<'_>,
    totals: Totals,
    config: &Config,
    warnings: &mut Vec<String>,
) -> Result<(), Denial> {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    let agent_container = test_containers(&spec.containers, config);
    let test_count = agent_container.iter().filter(|&&t| t).count();
    let per_container = agents_per_container(s.agents, test_count)
        .map_err(|e| deny(Annotation::Agents, e.to_string()))?;
    // The other containers (sidecars, and native sidecars: init containers that keep running
    // with `restartPolicy: Always`) share the node with the agents: under `fit` their
    // requests come out of the budget like the DaemonSets'.
    let mut overhead = config.daemonset_overhead;
    let sidecars = spec
        .containers
        .iter()
        .zip(&agent_container)
        .filter(|(_, is_test)| !**is_test)
        .map(|(c, _)| c);
    let native_sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    for container in sidecars.chain(native_sidecars) {
        let requests = container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref());
        let request = |name: &str, parse: fn(&str) -> Option<u64>| {
            requests
                .and_then(|r| r.get(name))
                .and_then(|q| parse(&q.0))
                .unwrap_or(0)
        };
        overhead.cpu_millis = overhead
            .cpu_millis
            .saturating_add(request("cpu", parse_cpu_millis));
        overhead.memory_mib = overhead
            .memory_mib
            .saturating_add(request("memory", parse_memory_bytes).div_ceil(1 << 20));
    }
    let amount = share(s.resources, s.machine, overhead, s.agents, per_container).map_err(|e| {
        deny(
            Annotation::Agents,
            format!("{e} on {} ({} resources)", s.machine_type, s.resources),
        )
    })?;

    let mut index = 0;
    let mut longest_stop = Duration::ZERO;
    for (container, is_test) in spec.containers.iter_mut().zip(agent_container) {
        if !is_test {
            continue;
        }
        let port = container_port(
            config.metrics_port_base,
            index,
            "metrics",
            "metrics-port-base",
        )?;
        let statsd_port =
            container_port(config.statsd_port_base, index, "StatsD", "statsd-port-base")?;
        let stop_timeout = stop_timeout(container, s.stop_timeout, warnings)?;
        longest_stop = longest_stop.max(stop_timeout);
        let part = &s.part_settings;
        let plain = |v: String| EnvValue::Plain(v);
        let values = [
            (env::TEST_ID, plain(s.test_id.to_string())),
            (env::TOTAL_PLAYERS, plain(totals.players.to_string())),
            (
                env::PLAYERS_PER_AGENT,
                plain(s.players_per_agent.to_string()),
            ),
            (env::TEST_PART, plain(s.part.to_string())),
            (env::AGENTS, plain(per_container.to_string())),
            (env::CONTAINER_INDEX, plain(index.to_string())),
            (env::MACHINE_TYPE, plain(s.machine_type.to_string())),
            (env::SCRIPT_URL, plain(s.script.clone())),
            (env::RESULTS_URL, plain(s.results.clone())),
            (env::METRICS_PORT, plain(port.to_string())),
            (env::POD_NAME, EnvValue::Field("metadata.name")),
            (env::POD_NAMESPACE, EnvValue::Field("metadata.namespace")),
            (env::POD_UID, EnvValue::Field("metadata.uid")),
            (env::NODE_NAME, EnvValue::Field("spec.nodeName")),
            (env::MACHINES, plain(totals.machines.to_string())),
            (env::COORDINATION, plain(part.coordination.to_string())),
            (env::START, plain(part.start.to_string())),
            (env::START_QUORUM, plain(part.start_quorum.to_string())),
            (env::START_TIMEOUT, plain(part.start_timeout.clone())),
            (
                env::PART_PLAYER_OFFSET,
                plain(part.player_offset.to_string()),
            ),
            (env::POD_AGENTS, plain(s.agents.to_string())),
            (env::STATSD_PORT, plain(statsd_port.to_string())),
            (env::STOP_TIMEOUT, plain(format_duration(s.stop_timeout))),
        ];
        for (name, value) in values {
            add_env(container, name, value, warnings);
        }
        if let Some(amount) = amount {
            set_resources(container, amount, warnings);
        }
        if index == 0 && s.os == Os::Windows && config.windows_private_ipv4_address {
            set_windows_ip(container);
        }
        set_metrics_port(container, index, port, warnings);
        if s.supervisor != SupervisorMode::Off {
            wrap(container, s.supervisor)?;
        }
        index += 1;
    }

    let selector = spec.node_selector.get_or_insert_with(BTreeMap::new);
    set_selector(selector, OS_SELECTOR, s.os.as_str(), warnings);
    if config.instance_type_selector {
        set_selector(selector, INSTANCE_TYPE_SELECTOR, s.machine_type, warnings);
    }
    let wanted = config.tolerations(s.os);
    if !wanted.is_empty() {
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        for t in wanted {
            if !tolerations.iter().any(|have| same_toleration(have, t)) {
                tolerations.push(t.clone());
            }
        }
    }
    if s.supervisor != SupervisorMode::Off {
        add_volume(spec, WORK_VOLUME);
    }
    if s.supervisor == SupervisorMode::Inject {
        add_volume(spec, BIN_VOLUME);
        install::add_install_container(spec, &config.supervisor_image);
    }
    if s.supervisor != SupervisorMode::Off {
        raise_grace_period(spec, longest_stop, warnings);
    }
    let unsupervised_windows = s.os == Os::Windows
        && pod
            .metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key(Annotation::Supervisor.key()));
    if unsupervised_windows {
        warnings.push(
            "wave-agent is Linux-only: the agents of this Windows pod are not supervised \
             (no restarts, no result upload, no metrics from wave-agent)"
                .to_string(),
        );
    }

    let annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (key, value) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", config.metrics_port_base.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        match annotations.get(key) {
            Some(have) if *have != value => warnings.push(format!(
                "annotation {key} keeps the pod's value {have:?}; wave would set {value:?}"
            )),
            Some(_) => {}
            None => {
                annotations.insert(key.to_string(), value);
            }
        }
    }
    Ok(())
}

/// Appends `name` to the container's env, unless the container already sets it (then with a
/// warning unless its value is wave's).
fn add_env(container: &mut Container, name: &str, value: EnvValue, warnings: &mut Vec<String>) {
    let have = container
        .env
        .as_ref()
        .and_then(|env| env.iter().find(|e| e.name == name));
    if let Some(have) = have {
        let same = match &value {
            EnvValue::Plain(v) => {
                have.value_from.is_none() && have.value.as_deref().unwrap_or_default() == v
            }
            EnvValue::Field(path) => have
                .value_from
                .as_ref()
                .and_then(|from| from.field_ref.as_ref())
                .is_some_and(|f| f.field_path == *path),
        };
        if !same {
            let wave = match &value {
                EnvValue::Plain(v) => format!("{v:?}"),
                EnvValue::Field(path) => format!("the downward API field {path}"),
            };
            warnings.push(format!(
                "container {:?}: env {name} keeps the pod's own value; wave would set {wave}",
                container.name
            ));
        }
        return;
    }
    let (value, value_from) = match value {
        EnvValue::Plain(v) => (Some(v), None),
        EnvValue::Field(path) => (
            None,
            Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.to_string(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        ),
    };
    container.env.get_or_insert_with(Vec::new).push(EnvVar {
        name: name.to_string(),
        value,
        value_from,
    });
}

/// Requests and equal limits for cpu and memory; a resource the container already requests
/// or limits is left as it is (with a warning unless it already equals wave's share).
fn set_resources(container: &mut Container, amount: Amount, warnings: &mut Vec<String>) {
    let name = container.name.clone();
    let resources = container
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    let wanted = [
        (
            "cpu",
            format_cpu(amount.cpu_millis),
            parse_cpu_millis as fn(&str) -> Option<u64>,
            amount.cpu_millis,
        ),
        (
            "memory",
            format_memory(amount.memory_mib),
            parse_memory_bytes,
            amount.memory_mib << 20,
        ),
    ];
    for (resource, quantity, parse, value) in wanted {
        let request = resources.requests.as_ref().and_then(|r| r.get(resource));
        let limit = resources.limits.as_ref().and_then(|l| l.get(resource));
        if request.is_none() && limit.is_none() {
            for map in [&mut resources.requests, &mut resources.limits] {
                map.get_or_insert_with(BTreeMap::new)
                    .insert(resource.to_string(), Quantity(quantity.clone()));
            }
            continue;
        }
        let is_wave = |q: Option<&Quantity>| q.and_then(|q| parse(&q.0)) == Some(value);
        if !(is_wave(request) && is_wave(limit)) {
            let show = |q: Option<&Quantity>| q.map_or("none", |q| q.0.as_str()).to_string();
            warnings.push(format!(
                "container {name:?}: keeps its own {resource} request {} and limit {}; wave would set {quantity}",
                show(request),
                show(limit),
            ));
        }
    }
}

fn set_windows_ip(container: &mut Container) {
    let resources = container
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    for map in [&mut resources.requests, &mut resources.limits] {
        map.get_or_insert_with(BTreeMap::new)
            .entry(WINDOWS_IP_RESOURCE.to_string())
            .or_insert_with(|| Quantity("1".to_string()));
    }
}

fn set_metrics_port(
    container: &mut Container,
    index: usize,
    port: u16,
    warnings: &mut Vec<String>,
) {
    let name = metrics_port_name(u32::try_from(index).unwrap_or(u32::MAX));
    let container_name = &container.name;
    let ports = container.ports.get_or_insert_with(Vec::new);
    let port = i32::from(port);
    if let Some(have) = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(name.as_str()))
    {
        if have.container_port != port {
            warnings.push(format!(
                "container {container_name:?}: port {name} keeps the pod's number {}; wave would use {port}",
                have.container_port
            ));
        }
    } else if let Some(have) = ports.iter().find(|p| p.container_port == port) {
        warnings.push(format!(
            "container {container_name:?}: port {port} is already declared{}, so wave does not add {name}",
            have.name.as_ref().map(|n| format!(" as {n:?}")).unwrap_or_default()
        ));
    } else {
        ports.push(ContainerPort {
            name: Some(name),
            container_port: port,
            ..ContainerPort::default()
        });
    }
}

/// True when the command already starts the supervisor (`.../wave-agent run ...`).
fn runs_supervisor(command: &[String]) -> bool {
    let program = command.first().map_or("", |p| {
        let base = p.rsplit(['/', '\\']).next().unwrap_or(p);
        base.strip_suffix(".exe").unwrap_or(base)
    });
    program == "wave-agent" && command.get(1).map(String::as_str) == Some("run")
}

/// Wraps the container's command in the supervisor and mounts its volumes.
fn wrap(container: &mut Container, mode: SupervisorMode) -> Result<(), Denial> {
    if !runs_supervisor(container.command.as_deref().unwrap_or_default()) {
        let command = container.command.take().unwrap_or_default();
        let args = container.args.take().unwrap_or_default();
        if command.is_empty() && !args.is_empty() {
            return Err(deny(
                Annotation::Supervisor,
                format!(
                    "container {:?} sets args but no command, so its image ENTRYPOINT cannot be wrapped \
                     by the supervisor; set command as well, or use waveloadtest.io/supervisor: \"off\"",
                    container.name
                ),
            ));
        }
        let program = match mode {
            SupervisorMode::Inject => format!("{BIN_DIR}/wave-agent"),
            _ => "wave-agent".to_string(),
        };
        let mut wrapped = vec![program, "run".to_string()];
        if !command.is_empty() {
            wrapped.push("--".to_string());
            wrapped.extend(command);
            wrapped.extend(args);
        }
        container.command = Some(wrapped);
    }
    if mode == SupervisorMode::Inject {
        add_mount(container, BIN_VOLUME, BIN_DIR, true);
    }
    add_mount(container, WORK_VOLUME, WORK_DIR, false);
    Ok(())
}

fn add_mount(container: &mut Container, volume: &str, path: &str, read_only: bool) {
    let mounts = container.volume_mounts.get_or_insert_with(Vec::new);
    if mounts
        .iter()
        .any(|m| m.name == volume || m.mount_path == path)
    {
        return;
    }
    mounts.push(VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    });
}

fn add_volume(spec: &mut PodSpec, name: &str) {
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    if volumes.iter().any(|v| v.name == name) {
        return;
    }
    volumes.push(Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    });
}

/// The stop timeout the container's supervisor will use: the container's own
/// `WAVE_STOP_TIMEOUT` if it sets one, else `annotated` (the annotation, else the config).
fn stop_timeout(
    container: &Container,
    annotated: Duration,
    warnings: &mut Vec<String>,
) -> Result<Duration, Denial> {
    let own = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == env::STOP_TIMEOUT);
    let Some(own) = own else {
        return Ok(annotated);
    };
    match own.value.as_deref() {
        Some(text) if own.value_from.is_none() => positive_duration(text).map_err(|e| Denial {
            subject: format!("container {:?} env {}", container.name, env::STOP_TIMEOUT),
            problem: format!("{e}: the supervisor would refuse it"),
        }),
        _ => {
            warnings.push(format!(
                "container {:?}: {} comes from a reference wave cannot read; the grace period is \
                 sized for {}",
                container.name,
                env::STOP_TIMEOUT,
                format_duration(annotated)
            ));
            Ok(annotated)
        }
    }
}

/// Raises `terminationGracePeriodSeconds` to what the supervisor needs to stop: up to twice
/// its stop timeout (the agents' grace, then the final upload) plus 10 s. The API server has
/// already defaulted an unset value to 30 by the time webhooks run, so unset counts as 30.
fn raise_grace_period(spec: &mut PodSpec, stop_timeout: Duration, warnings: &mut Vec<String>) {
    let needed = i64::try_from(grace_period(stop_timeout).as_secs()).unwrap_or(i64::MAX);
    let have = spec.termination_grace_period_seconds.unwrap_or(30);
    if have < needed {
        warnings.push(format!(
            "terminationGracePeriodSeconds raised from {have} to {needed}: the supervisor needs \
             up to 2 × its stop timeout ({} s) + 10 s to stop the agents and upload the results",
            stop_timeout.as_secs()
        ));
        spec.termination_grace_period_seconds = Some(needed);
    }
}

fn set_selector(
    selector: &mut BTreeMap<String, String>,
    key: &str,
    value: &str,
    warnings: &mut Vec<String>,
) {
    match selector.get(key) {
        Some(have) if have != value => warnings.push(format!(
            "nodeSelector {key} keeps the pod's value {have:?}; wave would set {value:?}"
        )),
        Some(_) => {}
        None => {
            selector.insert(key.to_string(), value.to_string());
        }
    }
}

/// Tolerations equal in effect (an empty operator means `Equal`).
fn same_toleration(a: &Toleration, b: &Toleration) -> bool {
    let op = |t: &Toleration| t.operator.clone().unwrap_or_else(|| "Equal".to_string());
    a.key == b.key
        && op(a) == op(b)
        && a.value == b.value
        && a.effect == b.effect
        && a.toleration_seconds == b.toleration_seconds
}

/// Container `index`'s port of a per-container series (`base` + index): containers share the
/// pod's network, so each gets its own. Denied when it would leave the port range.
fn container_port(base: u16, index: usize, what: &str, key: &str) -> Result<u16, Denial> {
    u16::try_from(index)
        .ok()
        .and_then(|i| base.checked_add(i))
        .ok_or_else(|| Denial {
            subject: "spec.containers".to_string(),
            problem: format!(
                "container {index} would get a {what} port above 65535; lower {key} in the webhook config"
            ),
        })
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pods::{
        TEST_ID, annotate, apply_patch, containers, env, mk_pod, quantity, seed_deployment,
        seed_pod, selector, wave, with_command, with_container,
    };
    use serde_json::json;
    use wave_contract::names::{INSTALL_CONTAINER, TEST_ID_LABEL};

    /// [`admit`], checked against an oracle: the hand-built patch must give the same
    /// document as `json_patch::diff` of the pod and its mutated copy.
    fn verdict(pod: &Pod, replicas: OwnerReplicas, config: &Config) -> Verdict {
        let verdict = super::admit(pod, replicas.clone(), config);
        if let Verdict::Patch { patch, .. } = &verdict {
            let Ok(Reading::Mutate(settings)) = Settings::read(pod, config) else {
                panic!("a patched pod reads as one to mutate");
            };
            let (after, _) =
                mutated_copy(pod, &settings, &replicas, config).expect("a patched pod mutates");
            let before = serde_json::to_value(pod).expect("pod to json");
            let after = serde_json::to_value(&after).expect("pod to json");
            let mut via_diff = before.clone();
            json_patch::patch(&mut via_diff, &json_patch::diff(&before, &after))
                .expect("the diff applies");
            let mut via_ops = before;
            json_patch::patch(&mut via_ops, &patch.operations()).expect("the patch applies");
            assert_eq!(via_ops, via_diff, "hand-built patch and diff disagree");
        }
        verdict
    }

    fn admit(pod: &Pod, replicas: OwnerReplicas, config: &Config) -> (Pod, Vec<String>) {
        match verdict(pod, replicas, config) {
            Verdict::Patch { patch, warnings } => (apply_patch(pod, &patch), warnings),
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    fn denied(pod: &Pod) -> String {
        match verdict(pod, OwnerReplicas::Known(480), &Config::default()) {
            Verdict::Deny(d) => d.to_string(),
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    fn mutated(pod: &Pod) -> (Pod, Vec<String>) {
        admit(pod, OwnerReplicas::Known(480), &Config::default())
    }

    #[test]
    fn seed_deployment_gives_480000_total_players() {
        let replicas = seed_deployment()
            .spec
            .and_then(|s| s.replicas)
            .expect("replicas");
        assert_eq!(replicas, 480);
        let (pod, _) = admit(
            &mk_pod(1),
            OwnerReplicas::Known(replicas as u32),
            &Config::default(),
        );
        let c = &containers(&pod)[0];
        assert_eq!(env(c, "TOTAL_PLAYERS"), Some("480000"));
        assert_eq!(env(c, "PLAYERS_PER_AGENT"), Some("100"));
        assert_eq!(env(c, "TEST_ID"), Some(TEST_ID));
        assert_eq!(env(c, "WAVE_TEST_PART"), Some("p1"));
        assert_eq!(env(c, "WAVE_AGENTS"), Some("10"));
        assert_eq!(env(c, "WAVE_MACHINE_TYPE"), Some("r5.xlarge"));
    }

    #[test]
    fn seed_pod_as_written_keeps_its_env_without_warnings() {
        let (pod, warnings) = mutated(&seed_pod());
        let c = &containers(&pod)[0];
        assert_eq!(env(c, "TOTAL_PLAYERS"), Some("480000"));
        assert!(
            warnings.iter().all(|w| !w.contains("env")),
            "the seed's env equals wave's: {warnings:?}"
        );
    }

    #[test]
    fn env_is_appended_in_spec_order_after_the_users_own() {
        let mut pod = mk_pod(1);
        pod.spec.as_mut().expect("spec").containers[0].env = Some(vec![EnvVar {
            name: "MY_VAR".to_string(),
            value: Some("x".to_string()),
            value_from: None,
        }]);
        let (pod, _) = mutated(&pod);
        let names: Vec<_> = containers(&pod)[0]
            .env
            .as_ref()
            .expect("env")
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        let wave: Vec<&str> = env::INJECTED.iter().map(|v| v.name).collect();
        assert_eq!(names[0], "MY_VAR");
        assert_eq!(names[1..], wave);
    }

    #[test]
    fn test_part_env_comes_from_the_owner_and_the_annotations() {
        let (pod, warnings) = mutated(&mk_pod(1));
        assert!(warnings.is_empty(), "{warnings:?}");
        let c = &containers(&pod)[0];
        assert_eq!(env(c, "WAVE_MACHINES"), Some("480"));
        assert_eq!(env(c, "WAVE_COORDINATION"), Some("kubernetes"));
        assert_eq!(env(c, "WAVE_START"), Some("immediately"));
        assert_eq!(env(c, "WAVE_START_QUORUM"), Some("100%"));
        assert_eq!(env(c, "WAVE_START_TIMEOUT"), Some("10m"));
        assert_eq!(env(c, "WAVE_PART_PLAYER_OFFSET"), Some("0"));
        assert_eq!(env(c, "WAVE_POD_AGENTS"), Some("10"));

        let pod = wave(mk_pod(1), "start", "together");
        let pod = wave(pod, "start-quorum", "95%");
        let pod = wave(pod, "player-offset", "480000");
        let pod = wave(pod, "total-players", "3000");
        let (pod, _) = admit(&pod, OwnerReplicas::Known(7), &Config::default());
        let c = &containers(&pod)[0];
        assert_eq!(
            env(c, "WAVE_MACHINES"),
            Some("7"),
            "the owner's replicas win over total-players"
        );
        assert_eq!(env(c, "WAVE_START"), Some("together"));
        assert_eq!(env(c, "WAVE_START_QUORUM"), Some("95%"));
        assert_eq!(env(c, "WAVE_PART_PLAYER_OFFSET"), Some("480000"));
    }

    #[test]
    fn machines_without_a_readable_owner_are_derived_from_total_players_with_a_warning() {
        let pod = wave(mk_pod(1), "total-players", "3000");
        let (out, warnings) = admit(
            &pod,
            OwnerReplicas::Unavailable("no API server".into()),
            &Config::default(),
        );
        assert_eq!(env(&containers(&out)[0], "WAVE_MACHINES"), Some("3"));
        assert!(
            warnings.iter().any(|w| w.contains("WAVE_MACHINES=3")),
            "{warnings:?}"
        );
        let (out, warnings) = admit(&pod, OwnerReplicas::NoOwner, &Config::default());
        assert_eq!(env(&containers(&out)[0], "WAVE_MACHINES"), Some("3"));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn pod_identity_comes_from_the_downward_api() {
        let (pod, _) = mutated(&mk_pod(1));
        let c = &containers(&pod)[0];
        for (name, path) in [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("POD_UID", "metadata.uid"),
            ("NODE_NAME", "spec.nodeName"),
        ] {
            let var = c
                .env
                .as_ref()
                .and_then(|e| e.iter().find(|e| e.name == name))
                .unwrap_or_else(|| panic!("{name} is set"));
            let field = var
                .value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .map(|f| f.field_path.as_str());
            assert_eq!(field, Some(path), "{name}");
        }
    }

    #[test]
    fn users_env_value_is_kept_with_a_warning() {
        let mut pod = mk_pod(1);
        pod.spec.as_mut().expect("spec").containers[0].env = Some(vec![EnvVar {
            name: "TOTAL_PLAYERS".to_string(),
            value: Some("5".to_string()),
            value_from: None,
        }]);
        let (pod, warnings) = mutated(&pod);
        assert_eq!(env(&containers(&pod)[0], "TOTAL_PLAYERS"), Some("5"));
        assert_eq!(
            warnings,
            [
                "container \"All-service-ltystore-10k-p1-c1\": env TOTAL_PLAYERS keeps the pod's own value; wave would set \"480000\""
            ]
        );
    }

    #[test]
    fn nominal_gives_each_of_the_seeds_ten_containers_400m_3200mi() {
        let pod = wave(mk_pod(10), "resources", "nominal");
        let (pod, warnings) = mutated(&pod);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(containers(&pod).len(), 10);
        for (i, c) in containers(&pod).iter().enumerate() {
            assert_eq!(c.name, format!("All-service-ltystore-10k-p1-c{}", i + 1));
            for which in ["requests", "limits"] {
                assert_eq!(quantity(c, which, "cpu"), "400m");
                assert_eq!(quantity(c, which, "memory"), "3200Mi");
            }
            assert_eq!(env(c, "WAVE_AGENTS"), Some("1"));
            assert_eq!(env(c, "WAVE_CONTAINER_INDEX"), Some(i.to_string().as_str()));
        }
    }

    /// Sum of the pod's container requests: (millicores, bytes).
    fn pod_requests(pod: &Pod) -> (u64, u64) {
        containers(pod).iter().fold((0, 0), |(cpu, mem), c| {
            (
                cpu + parse_cpu_millis(quantity(c, "requests", "cpu")).expect("cpu"),
                mem + parse_memory_bytes(quantity(c, "requests", "memory")).expect("memory"),
            )
        })
    }

    #[test]
    fn fit_pod_fits_r5_xlarge_allocatable_minus_overhead_with_one_or_ten_containers() {
        let config = Config::default();
        let machine = config.catalog.get("r5.xlarge").expect("r5.xlarge");
        let alloc = machine.allocatable();
        let budget_cpu = alloc.cpu_millis - config.daemonset_overhead.cpu_millis;
        let budget_mem = (alloc.memory_mib - config.daemonset_overhead.memory_mib) << 20;
        for n in [1, 10] {
            let (pod, warnings) = mutated(&mk_pod(n));
            assert!(warnings.is_empty(), "{warnings:?}");
            let (cpu, mem) = pod_requests(&pod);
            assert!(cpu <= budget_cpu, "{n} containers: {cpu}m > {budget_cpu}m");
            assert!(mem <= budget_mem, "{n} containers: {mem} > {budget_mem}");
            // Nothing worth a container's share is left over.
            assert!(budget_cpu - cpu < n as u64, "{n}: {cpu}m of {budget_cpu}m");
            for c in containers(&pod) {
                assert_eq!(quantity(c, "requests", "cpu"), quantity(c, "limits", "cpu"));
                assert_eq!(
                    quantity(c, "requests", "memory"),
                    quantity(c, "limits", "memory")
                );
            }
        }
        let (one, _) = mutated(&mk_pod(1));
        assert_eq!(quantity(&containers(&one)[0], "requests", "cpu"), "3795m");
    }

    #[test]
    fn resources_none_leaves_resources_alone() {
        let (pod, _) = mutated(&wave(mk_pod(2), "resources", "none"));
        assert!(containers(&pod).iter().all(|c| c.resources.is_none()));
    }

    #[test]
    fn users_requests_are_kept_with_a_warning() {
        let (pod, warnings) = mutated(&seed_pod());
        let c = &containers(&pod)[0];
        assert_eq!(quantity(c, "requests", "cpu"), "400m");
        assert_eq!(quantity(c, "limits", "memory"), "3200Mi");
        // The third is the grace period: the seed's pod has the API server's default 30 s.
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0]
                .contains("keeps its own cpu request 400m and limit 400m; wave would set 3795m"),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("memory"), "{warnings:?}");
    }

    #[test]
    fn each_container_gets_its_own_named_metrics_port() {
        let (pod, _) = mutated(&mk_pod(5));
        for (i, c) in containers(&pod).iter().enumerate() {
            let port = c.ports.as_ref().expect("ports").last().expect("port");
            let name = if i == 0 {
                "wave-metrics".to_string()
            } else {
                format!("wave-metrics-{i}")
            };
            assert_eq!(port.name.as_deref(), Some(name.as_str()));
            assert_eq!(port.container_port, 9102 + i as i32);
            assert_eq!(
                env(c, "WAVE_METRICS_PORT"),
                Some((9102 + i).to_string().as_str())
            );
            assert_eq!(
                env(c, "WAVE_STATSD_PORT"),
                Some((8125 + i).to_string().as_str())
            );
        }
    }

    #[test]
    fn prometheus_annotations_point_at_the_first_metrics_port() {
        let (pod, _) = mutated(&mk_pod(1));
        let a = pod.metadata.annotations.expect("annotations");
        assert_eq!(a["prometheus.io/scrape"], "true");
        assert_eq!(a["prometheus.io/port"], "9102");
        assert_eq!(a["prometheus.io/path"], "/metrics");
    }

    #[test]
    fn node_selector_gets_os_and_instance_type() {
        let (pod, warnings) = mutated(&seed_pod());
        assert_eq!(selector(&pod)["kubernetes.io/os"], "linux");
        assert_eq!(
            selector(&pod)["node.kubernetes.io/instance-type"],
            "r5.xlarge"
        );
        assert!(warnings.iter().all(|w| !w.contains("nodeSelector")));
    }

    #[test]
    fn instance_type_selector_can_be_turned_off() {
        let config = Config {
            instance_type_selector: false,
            ..Config::default()
        };
        let (pod, _) = admit(&mk_pod(1), OwnerReplicas::Known(1), &config);
        assert!(!selector(&pod).contains_key("node.kubernetes.io/instance-type"));
    }

    #[test]
    fn users_node_selector_is_kept_with_a_warning() {
        let mut pod = wave(mk_pod(1), "machine-type", "c5.xlarge");
        pod.spec
            .as_mut()
            .and_then(|s| s.node_selector.as_mut())
            .expect("selector")
            .insert("node.kubernetes.io/instance-type".into(), "m5.large".into());
        let (pod, warnings) = mutated(&pod);
        assert_eq!(
            selector(&pod)["node.kubernetes.io/instance-type"],
            "m5.large"
        );
        assert_eq!(
            warnings,
            [
                "nodeSelector node.kubernetes.io/instance-type keeps the pod's value \"m5.large\"; wave would set \"c5.xlarge\""
            ]
        );
    }

    #[test]
    fn windows_pod_gets_selector_toleration_and_private_ip_on_the_first_container() {
        let mut pod = wave(mk_pod(2), "os", "windows");
        pod.spec.as_mut().expect("spec").node_selector = None;
        let (pod, warnings) = mutated(&pod);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("not supervised"), "{warnings:?}");
        assert_eq!(selector(&pod)["kubernetes.io/os"], "windows");
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_ref())
            .expect("tolerations");
        assert_eq!(tolerations.len(), 1);
        assert_eq!(tolerations[0].key.as_deref(), Some("os"));
        assert_eq!(tolerations[0].value.as_deref(), Some("windows"));
        assert_eq!(tolerations[0].effect.as_deref(), Some("NoSchedule"));
        let [first, second] = containers(&pod) else {
            panic!("two containers")
        };
        assert_eq!(quantity(first, "requests", WINDOWS_IP_RESOURCE), "1");
        assert_eq!(quantity(first, "limits", WINDOWS_IP_RESOURCE), "1");
        let second_requests = second.resources.as_ref().and_then(|r| r.requests.as_ref());
        assert!(
            !second_requests
                .expect("requests")
                .contains_key(WINDOWS_IP_RESOURCE)
        );
    }

    #[test]
    fn os_defaults_to_the_pods_own_os_selector() {
        let mut pod = mk_pod(1);
        pod.spec
            .as_mut()
            .and_then(|s| s.node_selector.as_mut())
            .expect("selector")
            .insert("kubernetes.io/os".into(), "windows".into());
        let (pod, warnings) = mutated(&pod);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(pod.spec.and_then(|s| s.tolerations).is_some());
    }

    /// A one-container pod annotated `os: windows`, without the seed's linux selector.
    fn windows_pod() -> Pod {
        let mut pod = wave(mk_pod(1), "os", "windows");
        pod.spec.as_mut().expect("spec").node_selector = None;
        pod
    }

    #[test]
    fn windows_pods_default_to_no_supervisor_with_a_warning() {
        let (pod, warnings) = mutated(&windows_pod());
        let spec = pod.spec.as_ref().expect("spec");
        assert!(spec.init_containers.is_none() && spec.volumes.is_none());
        assert_eq!(
            spec.containers[0].command,
            mk_pod(1).spec.expect("spec").containers[0].command
        );
        assert_eq!(
            warnings,
            [
                "wave-agent is Linux-only: the agents of this Windows pod are not supervised \
              (no restarts, no result upload, no metrics from wave-agent)"
            ]
        );
    }

    #[test]
    fn denies_an_explicit_supervisor_on_a_windows_pod_saying_wave_agent_is_linux_only() {
        for mode in ["inject", "image"] {
            let pod = wave(windows_pod(), "supervisor", mode);
            assert_eq!(
                denied(&pod),
                format!(
                    "waveloadtest.io/supervisor: {mode:?} is not possible on a Windows pod: \
                     wave-agent is Linux-only; remove the annotation (Windows pods run \
                     unsupervised) or set it to off"
                )
            );
        }
        let off = wave(windows_pod(), "supervisor", "off");
        let (_, warnings) = mutated(&off);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn opted_out_pods_are_allowed_whatever_their_other_annotations_say() {
        let pod = wave(
            wave(
                wave(mk_pod(1), "inject", "false"),
                "machine-type",
                "r5.xlarg",
            ),
            "agentz",
            "3",
        );
        assert!(matches!(
            verdict(&pod, OwnerReplicas::NoOwner, &Config::default()),
            Verdict::Skip { .. }
        ));
    }

    fn grace_period(pod: &Pod) -> Option<i64> {
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
    }

    #[test]
    fn a_grace_period_below_twice_the_stop_timeout_plus_10_s_is_raised_with_a_warning() {
        let mut pod = mk_pod(1);
        pod.spec
            .as_mut()
            .expect("spec")
            .termination_grace_period_seconds = Some(30);
        let (out, warnings) = mutated(&pod);
        assert_eq!(grace_period(&out), Some(50));
        assert_eq!(
            warnings,
            [
                "terminationGracePeriodSeconds raised from 30 to 50: the supervisor needs up to \
              2 × its stop timeout (20 s) + 10 s to stop the agents and upload the results"
            ]
        );
        let config = Config {
            stop_timeout: Duration::from_secs(60),
            ..Config::default()
        };
        let (out, _) = admit(&pod, OwnerReplicas::Known(1), &config);
        assert_eq!(grace_period(&out), Some(130));
    }

    /// Sets `WAVE_STOP_TIMEOUT` in the pod's first container.
    fn with_own_stop_timeout(mut pod: Pod, value: &str) -> Pod {
        let container = &mut pod.spec.as_mut().expect("spec").containers[0];
        container.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: env::STOP_TIMEOUT.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        });
        pod
    }

    #[test]
    fn the_stop_timeout_annotation_is_injected_and_sizes_the_grace_period() {
        let (out, _) = mutated(&wave(mk_pod(1), "stop-timeout", "45s"));
        assert_eq!(env(&containers(&out)[0], "WAVE_STOP_TIMEOUT"), Some("45s"));
        assert_eq!(grace_period(&out), Some(100));
        let (out, _) = mutated(&mk_pod(1));
        assert_eq!(env(&containers(&out)[0], "WAVE_STOP_TIMEOUT"), Some("20s"));
    }

    #[test]
    fn a_containers_own_stop_timeout_sizes_the_grace_period() {
        let pod = with_own_stop_timeout(mk_pod(2), "60s");
        let (out, warnings) = mutated(&pod);
        assert_eq!(grace_period(&out), Some(130), "2 × 60 s + 10 s");
        assert_eq!(env(&containers(&out)[0], "WAVE_STOP_TIMEOUT"), Some("60s"));
        assert_eq!(env(&containers(&out)[1], "WAVE_STOP_TIMEOUT"), Some("20s"));
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("env WAVE_STOP_TIMEOUT keeps the pod's own value")),
            "{warnings:?}"
        );
        let (again, _) = mutated(&out);
        assert_eq!(grace_period(&again), Some(130), "idempotent");
    }

    #[test]
    fn denies_a_stop_timeout_that_is_not_a_positive_duration() {
        assert_eq!(
            denied(&wave(mk_pod(1), "stop-timeout", "0s")),
            "waveloadtest.io/stop-timeout: \"0s\" is not a duration (expected a positive duration such as 90s, 10m or 1h)"
        );
        let msg = denied(&with_own_stop_timeout(mk_pod(1), "soon"));
        assert!(
            msg.starts_with("container \"All-service-ltystore-10k-p1-c1\" env WAVE_STOP_TIMEOUT: \"soon\" is not a duration"),
            "{msg}"
        );
    }

    #[test]
    fn a_long_enough_grace_period_is_kept_and_unsupervised_pods_are_not_touched() {
        let (out, warnings) = mutated(&mk_pod(1));
        assert_eq!(grace_period(&out), Some(60));
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut off = wave(mk_pod(1), "supervisor", "off");
        off.spec
            .as_mut()
            .expect("spec")
            .termination_grace_period_seconds = Some(30);
        let (out, warnings) = mutated(&off);
        assert_eq!(grace_period(&out), Some(30));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn native_sidecars_requests_come_out_of_the_fit_budget() {
        let (plain, _) = mutated(&mk_pod(1));
        let mut pod = mk_pod(1);
        let requests = BTreeMap::from([
            ("cpu".to_string(), Quantity("500m".to_string())),
            ("memory".to_string(), Quantity("1Gi".to_string())),
        ]);
        let sidecar = |restart: Option<&str>| Container {
            name: "log-shipper".to_string(),
            image: Some("fluent-bit:3".to_string()),
            restart_policy: restart.map(str::to_string),
            resources: Some(ResourceRequirements {
                requests: Some(requests.clone()),
                ..ResourceRequirements::default()
            }),
            ..Container::default()
        };
        pod.spec.as_mut().expect("spec").init_containers = Some(vec![sidecar(Some("Always"))]);
        let (with_sidecar, _) = mutated(&pod);
        let cpu = |p: &Pod| quantity(&containers(p)[0], "requests", "cpu").to_string();
        let memory = |p: &Pod| quantity(&containers(p)[0], "requests", "memory").to_string();
        let millis = |q: String| q.trim_end_matches('m').parse::<u64>().expect("millicores");
        let mib = |q: String| q.trim_end_matches("Mi").parse::<u64>().expect("MiB");
        assert_eq!(millis(cpu(&plain)) - millis(cpu(&with_sidecar)), 500);
        assert_eq!(mib(memory(&plain)) - mib(memory(&with_sidecar)), 1024);
        // An ordinary init container runs before the others and shares nothing with them.
        pod.spec.as_mut().expect("spec").init_containers = Some(vec![sidecar(None)]);
        let (with_init, _) = mutated(&pod);
        assert_eq!(cpu(&with_init), cpu(&plain));
    }

    #[test]
    fn linux_pod_gets_no_private_ip_or_default_tolerations() {
        let (pod, _) = mutated(&mk_pod(1));
        assert!(
            pod.spec
                .as_ref()
                .and_then(|s| s.tolerations.as_ref())
                .is_none()
        );
        let r = containers(&pod)[0].resources.as_ref().expect("resources");
        assert!(
            !r.requests
                .as_ref()
                .expect("requests")
                .contains_key(WINDOWS_IP_RESOURCE)
        );
    }

    #[test]
    fn inject_mode_installs_the_supervisor_and_wraps_command_and_args() {
        let pod = with_command(mk_pod(2), Some(&["/bin/sh", "-c"]), Some(&["exec ./run"]));
        let (pod, _) = mutated(&pod);
        let spec = pod.spec.as_ref().expect("spec");
        let [first, second] = &spec.containers[..] else {
            panic!("two containers")
        };
        assert_eq!(
            first.command.as_deref().expect("command"),
            [
                "/wave/bin/wave-agent",
                "run",
                "--",
                "/bin/sh",
                "-c",
                "exec ./run"
            ]
        );
        assert_eq!(first.args, None);
        // No command: the supervisor runs <work>/script/run.
        assert_eq!(
            second.command.as_deref().expect("command"),
            ["/wave/bin/wave-agent", "run"]
        );
        for c in [first, second] {
            let mounts = c.volume_mounts.as_ref().expect("mounts");
            let bin = mounts
                .iter()
                .find(|m| m.name == BIN_VOLUME)
                .expect("wave-bin");
            assert_eq!(
                (bin.mount_path.as_str(), bin.read_only),
                ("/wave/bin", Some(true))
            );
            let work = mounts
                .iter()
                .find(|m| m.name == WORK_VOLUME)
                .expect("wave-work");
            assert_eq!(work.mount_path, "/wave/work");
        }
        let volumes = spec.volumes.as_ref().expect("volumes");
        for name in [BIN_VOLUME, WORK_VOLUME] {
            let v = volumes.iter().find(|v| v.name == name).expect("volume");
            assert!(v.empty_dir.is_some(), "{name} is an emptyDir");
        }
        let init = spec.init_containers.as_ref().expect("init containers");
        let install = init
            .iter()
            .find(|c| c.name == INSTALL_CONTAINER)
            .expect("wave-install");
        assert_eq!(
            install.image.as_deref(),
            Some(crate::config::DEFAULT_SUPERVISOR_IMAGE)
        );
        assert_eq!(
            install.command.as_deref().expect("command"),
            ["wave-agent", "install", "/wave/bin"]
        );
        assert_eq!(
            install.volume_mounts.as_ref().expect("mounts")[0].name,
            BIN_VOLUME
        );
    }

    #[test]
    fn image_mode_wraps_with_wave_agent_from_path_and_adds_no_init_container() {
        let pod = with_command(
            wave(mk_pod(1), "supervisor", "image"),
            Some(&["./game"]),
            None,
        );
        let (pod, _) = mutated(&pod);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            spec.containers[0].command.as_deref().expect("command"),
            ["wave-agent", "run", "--", "./game"]
        );
        assert!(spec.init_containers.is_none());
        let volumes = spec.volumes.as_ref().expect("volumes");
        assert!(volumes.iter().all(|v| v.name != BIN_VOLUME));
    }

    #[test]
    fn off_mode_leaves_commands_and_volumes_alone() {
        let pod = with_command(
            wave(mk_pod(1), "supervisor", "off"),
            Some(&["./game"]),
            Some(&["-x"]),
        );
        let (pod, _) = mutated(&pod);
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(
            spec.containers[0].command.as_deref(),
            Some(&["./game".to_string()][..])
        );
        assert_eq!(
            spec.containers[0].args.as_deref(),
            Some(&["-x".to_string()][..])
        );
        assert!(spec.init_containers.is_none() && spec.volumes.is_none());
        assert!(spec.containers[0].volume_mounts.is_none());
    }

    #[test]
    fn a_command_that_already_runs_the_supervisor_is_not_wrapped_twice() {
        let command = ["/opt/wave-agent", "run", "--", "./game"];
        let pod = with_command(mk_pod(1), Some(&command), None);
        let (pod, _) = mutated(&pod);
        assert_eq!(
            containers(&pod)[0].command.as_deref().expect("command"),
            command
        );
    }

    #[test]
    fn denies_args_without_command_under_the_supervisor() {
        let pod = with_command(mk_pod(1), None, Some(&["--level", "3"]));
        let msg = denied(&pod);
        assert!(msg.starts_with("waveloadtest.io/supervisor: container \"All-service-ltystore-10k-p1-c1\" sets args but no command"), "{msg}");
    }

    #[test]
    fn default_script_and_results_urls_use_the_config_bucket_and_test_id() {
        let (pod, _) = mutated(&mk_pod(1));
        let c = &containers(&pod)[0];
        assert_eq!(
            env(c, "WAVE_SCRIPT_URL"),
            Some(format!("s3://wave-loadtest/scripts/{TEST_ID}/").as_str())
        );
        assert_eq!(
            env(c, "WAVE_RESULTS_URL"),
            Some(format!("s3://wave-loadtest/results/{TEST_ID}/").as_str())
        );
    }

    #[test]
    fn annotated_urls_are_used_when_valid() {
        let pod = wave(mk_pod(1), "script", "s3://team-bucket/game/v2/");
        let pod = wave(pod, "results", "s3://team-results/");
        let (pod, _) = mutated(&pod);
        let c = &containers(&pod)[0];
        assert_eq!(env(c, "WAVE_SCRIPT_URL"), Some("s3://team-bucket/game/v2/"));
        assert_eq!(env(c, "WAVE_RESULTS_URL"), Some("s3://team-results/"));
    }

    #[test]
    fn test_id_label_without_part_gives_an_empty_part() {
        let mut pod = mk_pod(1);
        pod.metadata
            .labels
            .as_mut()
            .expect("labels")
            .insert(TEST_ID_LABEL.into(), "abc.1".into());
        let (pod, _) = mutated(&pod);
        assert_eq!(env(&containers(&pod)[0], "TEST_ID"), Some("abc.1"));
        assert_eq!(env(&containers(&pod)[0], "WAVE_TEST_PART"), Some(""));
    }

    #[test]
    fn denies_agents_not_divisible_by_the_container_count() {
        let msg = denied(&mk_pod(3));
        assert_eq!(
            msg,
            "waveloadtest.io/agents: 10 agents cannot be spread evenly over 3 containers (agents must be a multiple of the container count)"
        );
    }

    #[test]
    fn denies_a_share_under_the_floor() {
        let msg = denied(&wave(mk_pod(400), "agents", "400"));
        assert_eq!(
            msg,
            "waveloadtest.io/agents: 400 agents in 400 containers leave 9m cpu per container, below the 10m floor (too many agents for the machine) on r5.xlarge (fit resources)"
        );
    }

    #[test]
    fn denies_underivable_total_players_without_an_owner() {
        match verdict(&mk_pod(1), OwnerReplicas::NoOwner, &Config::default()) {
            Verdict::Deny(d) => {
                assert_eq!(d.subject, "waveloadtest.io/total-players");
                assert!(
                    d.problem
                        .contains("no Deployment, ReplicaSet, StatefulSet or Job owner"),
                    "{d}"
                );
            }
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn denies_total_players_when_the_owner_cannot_be_read_and_says_why() {
        let why = "no API server reachable".to_string();
        match verdict(
            &mk_pod(1),
            OwnerReplicas::Unavailable(why),
            &Config::default(),
        ) {
            Verdict::Deny(d) => {
                assert_eq!(d.subject, "waveloadtest.io/total-players");
                assert!(d.problem.contains("no API server reachable"), "{d}");
            }
            other => panic!("expected a denial, got {other:?}"),
        }
    }

    #[test]
    fn total_players_annotation_needs_no_owner() {
        let pod = wave(mk_pod(1), "total-players", "1234");
        let config = Config::default();
        let Ok(Reading::Mutate(settings)) = Settings::read(&pod, &config) else {
            panic!("a pod to mutate");
        };
        assert!(settings.needs_owner_replicas(), "for WAVE_MACHINES");
        let (pod, _) = admit(&pod, OwnerReplicas::NoOwner, &config);
        assert_eq!(env(&containers(&pod)[0], "TOTAL_PLAYERS"), Some("1234"));
    }

    #[test]
    fn skips_pods_without_the_label() {
        let mut pod = mk_pod(1);
        pod.metadata
            .labels
            .as_mut()
            .expect("labels")
            .remove(TEST_ID_LABEL);
        assert!(matches!(
            verdict(&pod, OwnerReplicas::Known(1), &Config::default()),
            Verdict::Skip { .. }
        ));
    }

    #[test]
    fn skips_pods_that_opt_out() {
        let pod = wave(wave(mk_pod(3), "inject", "false"), "agents", "junk");
        assert!(matches!(
            verdict(&pod, OwnerReplicas::NoOwner, &Config::default()),
            Verdict::Skip { .. }
        ));
    }

    /// Admits a pod, admits the result again, and checks the second patch is empty and the
    /// second pass warns about nothing the first did not.
    fn assert_idempotent(pod: Pod) {
        let config = Config::default();
        let (once, first) = admit(&pod, OwnerReplicas::Known(480), &config);
        match verdict(&once, OwnerReplicas::Known(480), &config) {
            Verdict::Patch { patch, warnings } => {
                assert!(patch.is_empty(), "second pass patched: {patch:?}");
                for w in &warnings {
                    assert!(first.contains(w), "new warning on the second pass: {w}");
                }
            }
            other => panic!("expected an empty patch, got {other:?}"),
        }
    }

    #[test]
    fn mutation_is_idempotent() {
        assert_idempotent(seed_pod());
        assert_idempotent(mk_pod(10));
        assert_idempotent(wave(mk_pod(2), "os", "windows"));
        assert_idempotent(wave(
            with_command(mk_pod(1), Some(&["./game"]), Some(&["-x"])),
            "supervisor",
            "image",
        ));
        assert_idempotent(wave(mk_pod(5), "resources", "nominal"));
    }

    #[test]
    fn idempotent_after_the_api_server_defaults_and_drops_empty_values() {
        let config = Config::default();
        let (once, _) = admit(&mk_pod(1), OwnerReplicas::Known(480), &config);
        // The API server drops an empty env value, defaults fieldRef.apiVersion and the
        // port protocol before a reinvocation.
        let mut value = serde_json::to_value(&once).expect("json");
        let container = &mut value["spec"]["containers"][0];
        for e in container["env"].as_array_mut().expect("env") {
            if e["value"] == json!("") {
                e.as_object_mut().expect("object").remove("value");
            }
            if let Some(field) = e.pointer_mut("/valueFrom/fieldRef") {
                field["apiVersion"] = json!("v1");
            }
        }
        container["ports"][0]["protocol"] = json!("TCP");
        let defaulted: Pod = serde_json::from_value(value).expect("pod");
        match verdict(&defaulted, OwnerReplicas::Known(480), &config) {
            Verdict::Patch { patch, warnings } => {
                assert!(patch.is_empty(), "{patch:?}");
                assert!(warnings.is_empty(), "{warnings:?}");
            }
            other => panic!("expected an empty patch, got {other:?}"),
        }
    }

    #[test]
    fn patch_applies_to_the_raw_pod_and_keeps_fields_the_types_do_not_know() {
        let pod = mk_pod(2);
        let mut raw = serde_json::to_value(&pod).expect("json");
        raw["spec"]["someFutureField"] = json!({"keep": true});
        raw["spec"]["containers"][1]["futureContainerField"] = json!(7);
        let typed: Pod = serde_json::from_value(raw.clone()).expect("pod");
        let Verdict::Patch { patch, .. } =
            verdict(&typed, OwnerReplicas::Known(480), &Config::default())
        else {
            panic!("expected a patch")
        };
        json_patch::patch(&mut raw, &patch.operations()).expect("patch applies to the raw pod");
        assert_eq!(raw["spec"]["someFutureField"], json!({"keep": true}));
        assert_eq!(
            raw["spec"]["containers"][1]["futureContainerField"],
            json!(7)
        );
        let patched: Pod = serde_json::from_value(raw).expect("still a Pod");
        assert_eq!(
            env(&containers(&patched)[1], "WAVE_CONTAINER_INDEX"),
            Some("1")
        );
    }

    /// The field-by-field patch must turn the pod into exactly the mutated typed copy (the
    /// oracle in [`verdict`] checks it).
    fn assert_patch_builds_the_mutated_pod(pod: Pod) {
        admit(&pod, OwnerReplicas::Known(480), &Config::default());
    }

    #[test]
    fn patch_builds_exactly_the_mutated_pod() {
        assert_patch_builds_the_mutated_pod(seed_pod());
        assert_patch_builds_the_mutated_pod(mk_pod(10));
        assert_patch_builds_the_mutated_pod(wave(mk_pod(2), "os", "windows"));
        assert_patch_builds_the_mutated_pod(with_command(
            mk_pod(1),
            Some(&["sh", "-c"]),
            Some(&["x"]),
        ));
        assert_patch_builds_the_mutated_pod(with_command(mk_pod(1), Some(&[]), Some(&[])));
        let mut existing = mk_pod(2);
        let spec = existing.spec.as_mut().expect("spec");
        spec.init_containers = Some(vec![Container {
            name: "setup".into(),
            ..Container::default()
        }]);
        spec.volumes = Some(vec![Volume {
            name: "data".into(),
            ..Volume::default()
        }]);
        spec.tolerations = Some(vec![Toleration {
            key: Some("k".into()),
            ..Toleration::default()
        }]);
        existing = annotate(existing, "team", "games");
        let c = &mut existing.spec.as_mut().expect("spec").containers[1];
        c.ports = Some(vec![ContainerPort {
            container_port: 80,
            ..ContainerPort::default()
        }]);
        c.volume_mounts = Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]);
        c.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                "nvidia.com/gpu".to_string(),
                Quantity("1".into()),
            )])),
            ..ResourceRequirements::default()
        });
        assert_patch_builds_the_mutated_pod(wave(existing, "os", "windows"));
    }

    #[test]
    fn sidecar_proxies_get_no_agents_and_their_requests_come_out_of_the_fit_budget() {
        let pod = with_container(mk_pod(10), "istio-proxy", "100m", "128Mi");
        let (pod, warnings) = mutated(&pod);
        assert!(warnings.is_empty(), "{warnings:?}");
        let all = containers(&pod);
        let proxy = &all[10];
        assert_eq!(proxy.name, "istio-proxy");
        assert!(proxy.env.is_none() && proxy.ports.is_none() && proxy.command.is_none());
        // (3920m - 125m - 100m) / 10 and (29808Mi - 128Mi) / 10
        assert_eq!(quantity(&all[0], "requests", "cpu"), "369m");
        assert_eq!(quantity(&all[0], "requests", "memory"), "2968Mi");
        assert_eq!(env(&all[9], "WAVE_CONTAINER_INDEX"), Some("9"));
    }

    #[test]
    fn a_container_added_after_wave_is_left_alone_on_reinvocation() {
        let config = Config::default();
        let (once, _) = admit(&mk_pod(2), OwnerReplicas::Known(480), &config);
        let later = with_container(once, "log-shipper", "50m", "64Mi");
        match verdict(&later, OwnerReplicas::Known(480), &config) {
            Verdict::Patch { patch, .. } => assert!(patch.is_empty(), "{patch:?}"),
            other => panic!("expected an empty patch, got {other:?}"),
        }
    }

    #[test]
    fn denies_a_pod_whose_only_containers_are_sidecars() {
        let mut pod = with_container(mk_pod(1), "linkerd-proxy", "10m", "20Mi");
        pod.spec.as_mut().expect("spec").containers.remove(0);
        assert_eq!(
            denied(&pod),
            "waveloadtest.io/agents: the pod has no test containers"
        );
    }

    #[test]
    fn init_containers_are_left_alone() {
        let mut pod = mk_pod(1);
        pod.spec.as_mut().expect("spec").init_containers = Some(vec![Container {
            name: "setup".into(),
            image: Some("busybox".into()),
            ..Container::default()
        }]);
        let (pod, _) = mutated(&pod);
        let init = pod.spec.and_then(|s| s.init_containers).expect("init");
        assert_eq!(init[0].env, None);
        assert_eq!(init[0].resources, None);
        assert_eq!(init[1].name, INSTALL_CONTAINER);
    }
}
