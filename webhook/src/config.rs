//! The webhook's configuration: defaults for every annotation, the machine catalog and
//! cluster facts (DaemonSet overhead, taints). One YAML file whose keys override the
//! built-in defaults; an unknown key is an error so a typo never passes silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Toleration;
use serde::Deserialize;
use wave_contract::part::Coordination;

use crate::body_rate::MinBodyRate;
use crate::catalog::{Amount, Catalog, MachineType};
use crate::resources::{ResourcePolicy, parse_cpu_millis, parse_memory_mib};

/// How the supervisor is wired into a test machine (annotation `waveloadtest.io/supervisor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupervisorMode {
    /// An init container copies `wave-agent` into a shared volume; commands are wrapped.
    Inject,
    /// The image already has `wave-agent` on its PATH; commands are wrapped.
    Image,
    /// Commands are left alone.
    Off,
}

impl SupervisorMode {
    /// Accepted spellings, for error messages.
    pub const EXPECTED: &'static str = "inject, image or off";

    /// Parses the lower-case name used in annotations and config.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inject" => Some(Self::Inject),
            "image" => Some(Self::Image),
            "off" => Some(Self::Off),
            _ => None,
        }
    }
}

/// Node operating system of a test machine (annotation `waveloadtest.io/os`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    /// `kubernetes.io/os: linux`.
    Linux,
    /// `kubernetes.io/os: windows`.
    Windows,
}

impl Os {
    /// Parses the `kubernetes.io/os` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "linux" => Some(Self::Linux),
            "windows" => Some(Self::Windows),
            _ => None,
        }
    }

    /// The `kubernetes.io/os` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linux => "linux",
            Self::Windows => "windows",
        }
    }
}

/// The webhook's effective configuration: built-in defaults with the file's overrides.
///
/// Read straight from the file (kebab-case keys; a key left out keeps its default), except
/// the values of the two keys that [`Config::from_yaml`] checks and merges itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Bucket of the default script and results URLs.
    pub bucket: String,
    /// Default `PLAYERS_PER_AGENT`.
    pub players_per_agent: u32,
    /// Default agents per test machine.
    pub agents: u32,
    /// Default machine type (a catalog key).
    pub machine_type: String,
    /// Default resource policy.
    pub resources: ResourcePolicy,
    /// Default supervisor mode.
    pub supervisor: SupervisorMode,
    /// Image of the `wave-install` init container (it must contain `wave-agent` on its PATH).
    pub supervisor_image: String,
    /// `WAVE_METRICS_PORT` of container 0; container `i` gets base + i.
    pub metrics_port_base: u16,
    /// `WAVE_STATSD_PORT` of container 0; container `i` gets base + i (docs/load-metrics.md).
    pub statsd_port_base: u16,
    /// What the DaemonSets take from every node (subtracted under `fit`).
    #[serde(deserialize_with = "shape_only::<OverheadFile, _, _>")]
    pub daemonset_overhead: Amount,
    /// Whether to add the `node.kubernetes.io/instance-type` nodeSelector.
    pub instance_type_selector: bool,
    /// Whether Windows pods get the `vpc.amazonaws.com/PrivateIPv4Address` request.
    pub windows_private_ipv4_address: bool,
    /// Tolerations added to test machines, per OS.
    pub tolerations: Tolerations,
    /// Containers that are not test containers when the pod arrives with them: service-mesh
    /// proxies injected before wave. They get no agents, env, resources or wrapping.
    pub sidecar_containers: Vec<String>,
    /// Default `WAVE_COORDINATION`: how pods claim their slot (docs/coordination.md).
    #[serde(deserialize_with = "coordination")]
    pub coordination: Coordination,
    /// The supervisor's stop timeout (docs/agent-supervisor.md); pods get a termination grace period of at
    /// least twice this plus 10 s (the agents' grace, then the final upload).
    #[serde(deserialize_with = "duration")]
    pub stop_timeout: std::time::Duration,
    /// Machine types by name.
    #[serde(deserialize_with = "shape_only::<BTreeMap<String, CatalogEntryFile>, _, _>")]
    pub catalog: Catalog,
    /// The slowest a request body may arrive before it is cut with 408.
    pub body_min_rate: MinBodyRate,
}

/// Tolerations added to test machines of each OS (Windows node groups are usually tainted).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tolerations {
    /// For Linux test machines.
    pub linux: Vec<Toleration>,
    /// For Windows test machines.
    pub windows: Vec<Toleration>,
}

impl Default for Tolerations {
    fn default() -> Self {
        Self {
            linux: Vec::new(),
            windows: vec![Toleration {
                key: Some("os".to_string()),
                operator: Some("Equal".to_string()),
                value: Some("windows".to_string()),
                effect: Some("NoSchedule".to_string()),
                toleration_seconds: None,
            }],
        }
    }
}

/// Default image of the `wave-install` init container.
pub const DEFAULT_SUPERVISOR_IMAGE: &str = "ghcr.io/waveloadtest/wave-agent:0.1.0";

impl Default for Config {
    fn default() -> Self {
        Self {
            bucket: "wave-loadtest".to_string(),
            players_per_agent: 100,
            agents: 10,
            machine_type: "r5.xlarge".to_string(),
            resources: ResourcePolicy::Fit,
            supervisor: SupervisorMode::Inject,
            supervisor_image: DEFAULT_SUPERVISOR_IMAGE.to_string(),
            metrics_port_base: 9102,
            statsd_port_base: 8125,
            daemonset_overhead: Amount {
                cpu_millis: 125,
                memory_mib: 0,
            },
            instance_type_selector: true,
            windows_private_ipv4_address: true,
            tolerations: Tolerations::default(),
            sidecar_containers: vec!["istio-proxy".to_string(), "linkerd-proxy".to_string()],
            coordination: Coordination::Kubernetes,
            stop_timeout: wave_contract::names::DEFAULT_STOP_TIMEOUT,
            catalog: Catalog::builtin(),
            body_min_rate: MinBodyRate::default(),
        }
    }
}

/// A config file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not YAML, an unknown key or a value of the wrong type.
    #[error("invalid webhook config: {0}")]
    Syntax(String),
    /// A key with a value that makes no sense.
    #[error("invalid webhook config: {key}: {problem}")]
    Invalid {
        /// The offending key, as written in the file.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The keys whose values [`Config::from_yaml`] checks itself, so an error names the key,
/// and merges over the defaults (a catalog entry over a built-in one, one quantity of the
/// overhead over the other); read in a second pass over the same text.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
struct Merged {
    daemonset_overhead: Option<OverheadFile>,
    catalog: BTreeMap<String, CatalogEntryFile>,
}

/// For the first pass: checks that the value has the shape `T` (so a typo or a wrong type is
/// reported with its line by the YAML reader) and leaves the value to [`Merged`].
/// A duration such as `20s` or `1m 30s`.
fn duration<'de, D: serde::Deserializer<'de>>(value: D) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(value)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration (e.g. 20s): {e}"))
    })
}

/// `kubernetes`, `off` or `file:///dir/`, checked by the parser the supervisor uses.
fn coordination<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Coordination, D::Error> {
    let text = String::deserialize(value)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn shape_only<'de, T: Deserialize<'de>, V: Default, D: serde::Deserializer<'de>>(
    value: D,
) -> Result<V, D::Error> {
    T::deserialize(value).map(|_| V::default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverheadFile {
    cpu: Option<String>,
    memory: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CatalogEntryFile {
    vcpu: Option<u32>,
    memory_gib: Option<u32>,
    max_pods: Option<u32>,
    allocatable: Option<AllocatableFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllocatableFile {
    cpu: String,
    memory: String,
}

impl Config {
    /// Reads a config file: its keys override the built-in defaults, catalog entries are
    /// added or merged over the built-in ones, and the result is checked as a whole.
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        let syntax = |e: serde_saphyr::Error| ConfigError::Syntax(e.to_string());
        let Some(mut config) = serde_saphyr::from_str::<Option<Self>>(yaml).map_err(syntax)? else {
            return Ok(Self::default());
        };
        let merged: Option<Merged> = serde_saphyr::from_str(yaml).map_err(syntax)?;
        let merged = merged.unwrap_or_default();
        let defaults = Self::default();
        config.daemonset_overhead = defaults.daemonset_overhead;
        config.catalog = defaults.catalog;
        if let Some(overhead) = merged.daemonset_overhead {
            if let Some(cpu) = overhead.cpu {
                config.daemonset_overhead.cpu_millis = parse_cpu_millis(&cpu).ok_or_else(|| {
                    invalid(
                        "daemonset-overhead.cpu",
                        format!("{cpu:?} is not a cpu quantity (e.g. 125m)"),
                    )
                })?;
            }
            if let Some(memory) = overhead.memory {
                config.daemonset_overhead.memory_mib =
                    parse_memory_mib(&memory).ok_or_else(|| {
                        invalid(
                            "daemonset-overhead.memory",
                            format!("{memory:?} is not a memory quantity (e.g. 256Mi)"),
                        )
                    })?;
            }
        }
        for (name, entry) in merged.catalog {
            let machine = merge_entry(&config.catalog, &name, entry)?;
            config.catalog.insert(name, machine);
        }
        config.validate()?;
        Ok(config)
    }

    /// Tolerations for test machines of one OS.
    pub fn tolerations(&self, os: Os) -> &[Toleration] {
        match os {
            Os::Linux => &self.tolerations.linux,
            Os::Windows => &self.tolerations.windows,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Err(problem) = check_bucket(&self.bucket) {
            return Err(invalid("bucket", problem));
        }
        if self.players_per_agent == 0 {
            return Err(invalid("players-per-agent", "must be a positive integer"));
        }
        if self.agents == 0 {
            return Err(invalid("agents", "must be a positive integer"));
        }
        if self.catalog.get(&self.machine_type).is_none() {
            let hint = self
                .catalog
                .suggest(&self.machine_type)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            return Err(invalid(
                "machine-type",
                format!(
                    "unknown machine type {:?}{hint}; add it under catalog",
                    self.machine_type
                ),
            ));
        }
        if self.supervisor_image.trim().is_empty() {
            return Err(invalid("supervisor-image", "must not be empty"));
        }
        if self.statsd_port_base == 0 {
            return Err(invalid(
                "statsd-port-base",
                "must be a port number (1-65535)",
            ));
        }
        if self.metrics_port_base == 0 {
            return Err(invalid(
                "metrics-port-base",
                "must be a port number (1-65535)",
            ));
        }
        if let Some(problem) = self.body_min_rate.problem() {
            return Err(invalid("body-min-rate.window", problem));
        }
        Ok(())
    }
}

/// A catalog entry from the file: complete on its own for a new name; over a built-in
/// entry, only the keys it sets change.
fn merge_entry(
    catalog: &Catalog,
    name: &str,
    entry: CatalogEntryFile,
) -> Result<MachineType, ConfigError> {
    let key = |field: &str| format!("catalog.{name}.{field}");
    let base = catalog.get(name);
    let field = |given: Option<u32>, builtin: Option<u32>, field: &str| match given.or(builtin) {
        Some(0) => Err(invalid(key(field), "must be a positive integer")),
        Some(n) => Ok(n),
        None => Err(invalid(
            key(field),
            format!("required for a machine type that is not built in ({name})"),
        )),
    };
    let allocatable = match entry.allocatable {
        Some(a) => Some(Amount {
            cpu_millis: parse_cpu_millis(&a.cpu).ok_or_else(|| {
                invalid(
                    key("allocatable.cpu"),
                    format!("{:?} is not a cpu quantity", a.cpu),
                )
            })?,
            memory_mib: parse_memory_mib(&a.memory).ok_or_else(|| {
                invalid(
                    key("allocatable.memory"),
                    format!("{:?} is not a memory quantity", a.memory),
                )
            })?,
        }),
        None => base.and_then(|b| b.allocatable),
    };
    Ok(MachineType {
        vcpu: field(entry.vcpu, base.map(|b| b.vcpu), "vcpu")?,
        memory_gib: field(entry.memory_gib, base.map(|b| b.memory_gib), "memory-gib")?,
        max_pods: field(entry.max_pods, base.map(|b| b.max_pods), "max-pods")?,
        allocatable,
    })
}

/// Checks an S3 bucket name (it ends up in every default URL).
pub fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    if (3..=63).contains(&bucket.len()) && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "{bucket:?} is not an S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')"
        ))
    }
}

/// Why the config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("invalid config file {}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: ConfigError,
    },
}

/// Reads and parses the config file.
pub fn load_config(path: &Path) -> Result<(Config, Vec<u8>), LoadConfigError> {
    let bytes = std::fs::read(path).map_err(|source| LoadConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = parse_config(path, &bytes)?;
    Ok((config, bytes))
}

pub(crate) fn parse_config(path: &Path, bytes: &[u8]) -> Result<Config, LoadConfigError> {
    let text = String::from_utf8_lossy(bytes);
    Config::from_yaml(&text).map_err(|source| LoadConfigError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::default();
        assert_eq!(c.players_per_agent, 100);
        assert_eq!(c.agents, 10);
        assert_eq!(c.machine_type, "r5.xlarge");
        assert_eq!(c.resources, ResourcePolicy::Fit);
        assert_eq!(c.supervisor, SupervisorMode::Inject);
        assert_eq!(c.metrics_port_base, 9102);
        assert_eq!(
            c.daemonset_overhead,
            Amount {
                cpu_millis: 125,
                memory_mib: 0
            }
        );
        assert!(c.instance_type_selector);
        assert!(c.windows_private_ipv4_address);
        assert_eq!(c.coordination, Coordination::Kubernetes);
        assert!(c.tolerations.linux.is_empty());
        assert_eq!(c.tolerations.windows.len(), 1);
        assert_eq!(
            c.tolerations.windows[0].effect.as_deref(),
            Some("NoSchedule")
        );
    }

    #[test]
    fn shipped_manifest_config_reads_as_the_defaults() {
        let shipped = include_str!("../../manifests/base/config.yaml");
        assert_eq!(Config::from_yaml(shipped), Ok(Config::default()));
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        assert_eq!(Config::from_yaml(""), Ok(Config::default()));
        assert_eq!(Config::from_yaml("# nothing\n"), Ok(Config::default()));
    }

    #[test]
    fn file_overrides_merge_over_defaults() {
        let c = Config::from_yaml(
            "bucket: my-tests\nagents: 4\nresources: nominal\nsupervisor: image\n\
             metrics-port-base: 9200\ndaemonset-overhead:\n  cpu: 200m\n  memory: 256Mi\n\
             instance-type-selector: false\nsidecar-containers: [envoy]\n",
        )
        .expect("valid config");
        assert_eq!(c.bucket, "my-tests");
        assert_eq!(c.agents, 4);
        assert_eq!(c.players_per_agent, 100);
        assert_eq!(c.resources, ResourcePolicy::Nominal);
        assert_eq!(c.supervisor, SupervisorMode::Image);
        assert_eq!(c.metrics_port_base, 9200);
        assert_eq!(
            c.daemonset_overhead,
            Amount {
                cpu_millis: 200,
                memory_mib: 256
            }
        );
        assert!(!c.instance_type_selector);
        assert!(c.windows_private_ipv4_address);
        assert_eq!(c.sidecar_containers, ["envoy"]);
    }

    #[test]
    fn coordination_default_is_read_and_checked() {
        let c = Config::from_yaml("coordination: file:///var/wave/slots/\n").expect("valid");
        assert_eq!(
            c.coordination,
            Coordination::File("file:///var/wave/slots/".into())
        );
        let err = Config::from_yaml("coordination: kube\n").expect_err("invalid");
        assert!(
            err.to_string().contains("unknown coordination \"kube\""),
            "{err}"
        );
    }

    #[test]
    fn body_min_rate_is_read_over_its_defaults() {
        let c = Config::from_yaml("body-min-rate:\n  bytes-per-second: 0\n").expect("valid");
        assert!(!c.body_min_rate.is_on());
        assert_eq!(c.body_min_rate.grace, MinBodyRate::default().grace);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Config::from_yaml("bucket: my-tests\nplayers-per-agnet: 5\n")
            .expect_err("typo must not pass");
        assert!(err.to_string().contains("players-per-agnet"), "{err}");
    }

    #[test]
    fn unknown_nested_key_is_an_error_naming_it() {
        let err = Config::from_yaml("daemonset-overhead:\n  cpus: 100m\n").expect_err("typo");
        assert!(err.to_string().contains("cpus"), "{err}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = Config::from_yaml("agents: ten\n").expect_err("not a number");
        assert!(matches!(err, ConfigError::Syntax(_)), "{err}");
        let err = Config::from_yaml("resources: fitt\n").expect_err("unknown policy");
        assert!(err.to_string().contains("fitt"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            ("agents: 0\n", "agents"),
            ("players-per-agent: 0\n", "players-per-agent"),
            ("bucket: Not_A_Bucket\n", "bucket"),
            ("machine-type: r5.xlarg\n", "machine-type"),
            (
                "daemonset-overhead:\n  cpu: lots\n",
                "daemonset-overhead.cpu",
            ),
            ("metrics-port-base: 0\n", "metrics-port-base"),
            ("body-min-rate:\n  window: 0s\n", "body-min-rate.window"),
        ] {
            match Config::from_yaml(yaml) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{yaml}"),
                other => panic!("{yaml}: expected an error naming {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_default_machine_type_suggests_a_name() {
        let err = Config::from_yaml("machine-type: r5.xlarg\n").expect_err("unknown");
        assert!(err.to_string().contains("did you mean r5.xlarge?"), "{err}");
    }

    #[test]
    fn catalog_entries_are_added_and_merged_over_builtins() {
        let c = Config::from_yaml(
            "machine-type: m7i.xlarge\ncatalog:\n  m7i.xlarge:\n    vcpu: 4\n    memory-gib: 16\n    max-pods: 58\n  \
             r5.xlarge:\n    allocatable:\n      cpu: 3920m\n      memory: 31792000Ki\n",
        )
        .expect("valid config");
        let m7i = c.catalog.get("m7i.xlarge").expect("added");
        assert_eq!((m7i.vcpu, m7i.memory_gib, m7i.max_pods), (4, 16, 58));
        let r5 = c.catalog.get("r5.xlarge").expect("built in");
        assert_eq!(r5.vcpu, 4);
        assert_eq!(
            r5.allocatable(),
            Amount {
                cpu_millis: 3920,
                memory_mib: 31046
            }
        );
    }

    #[test]
    fn new_catalog_entry_must_be_complete() {
        let err =
            Config::from_yaml("catalog:\n  x9.large:\n    vcpu: 2\n").expect_err("incomplete");
        assert_eq!(
            err,
            ConfigError::Invalid {
                key: "catalog.x9.large.memory-gib".to_string(),
                problem: "required for a machine type that is not built in (x9.large)".to_string()
            }
        );
    }

    #[test]
    fn tolerations_per_os_replace_the_defaults() {
        let c = Config::from_yaml(
            "tolerations:\n  linux:\n    - key: dedicated\n      operator: Equal\n      value: wave\n      effect: NoSchedule\n  windows: []\n",
        )
        .expect("valid config");
        assert_eq!(c.tolerations(Os::Linux).len(), 1);
        assert_eq!(
            c.tolerations(Os::Linux)[0].key.as_deref(),
            Some("dedicated")
        );
        assert!(c.tolerations(Os::Windows).is_empty());
    }
}
