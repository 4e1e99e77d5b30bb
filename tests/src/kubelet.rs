//! Plays the kubelet for one pod on this machine: turns a (patched) Pod into the commands
//! and environments its init containers and containers would run with.
//!
//! What the kubelet does and this module does too: env entries in order, `$(VAR)`
//! references expanded against the entries before them (`$$` escapes), downward-API
//! `fieldRef`s filled from the pod's identity, `command` + `args` expanded the same way.
//! What differs because there are no container images or mount namespaces here: each
//! `emptyDir` volume is a folder under a root, and any path in the command, its arguments
//! or env values that lies under a container's `mountPath` is rewritten to that folder; a
//! bare program name is looked up in the folders given as the image's PATH.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, Pod};

/// The fields the API server and scheduler fill in, which the downward API exposes.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub node_name: String,
}

/// One container's process, ready to spawn.
#[derive(Debug, Clone)]
pub struct Launch {
    pub container: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Launch {
    /// A `Command` with exactly this environment (plus the host's PATH, which the image
    /// would otherwise provide) and nothing inherited from the test process.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args).env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// The value the container sees for `name`.
    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (or replaces) a variable, as a local-run override of what the pod says.
    pub fn set_env(&mut self, name: &str, value: impl Into<String>) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.into()));
    }
}

/// The kubelet's view of one pod: its spec, identity and where its volumes live.
pub struct LocalPod<'a> {
    pub pod: &'a Pod,
    pub identity: PodIdentity,
    /// Each `emptyDir` volume `v` is the folder `volumes_root/v`.
    pub volumes_root: PathBuf,
    /// Folders searched for a bare program name (the image's PATH).
    pub image_path: Vec<PathBuf>,
}

impl LocalPod<'_> {
    /// Launches of the init containers, in order (each must finish before the next).
    pub fn init_containers(&self) -> Result<Vec<Launch>> {
        let spec = self.pod.spec.as_ref().context("pod has no spec")?;
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| self.launch(c))
            .collect()
    }

    /// Launches of the regular containers.
    pub fn containers(&self) -> Result<Vec<Launch>> {
        let spec = self.pod.spec.as_ref().context("pod has no spec")?;
        spec.containers.iter().map(|c| self.launch(c)).collect()
    }

    /// Creates the folders of the pod's volumes.
    pub fn create_volumes(&self) -> Result<()> {
        let spec = self.pod.spec.as_ref().context("pod has no spec")?;
        for volume in spec.volumes.iter().flatten() {
            if volume.empty_dir.is_none() {
                bail!(
                    "volume {} is not an emptyDir; only emptyDir volumes run locally",
                    volume.name
                );
            }
            let dir = self.volumes_root.join(&volume.name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    fn launch(&self, container: &Container) -> Result<Launch> {
        let mut env: Vec<(String, String)> = vec![("HOSTNAME".into(), self.identity.name.clone())];
        for var in container.env.iter().flatten() {
            let value = match (&var.value, &var.value_from) {
                (_, Some(from)) => {
                    let field = from.field_ref.as_ref().with_context(|| {
                        format!(
                            "env {} of {}: only fieldRef sources run locally",
                            var.name, container.name
                        )
                    })?;
                    self.field(&field.field_path)?
                }
                (Some(value), None) => expand(value, &env),
                (None, None) => String::new(),
            };
            env.push((var.name.clone(), self.map_path(container, &value)));
        }
        let mut words = container
            .command
            .iter()
            .flatten()
            .chain(container.args.iter().flatten())
            .map(|w| self.map_path(container, &expand(w, &env)));
        let Some(program) = words.next() else {
            bail!(
                "container {} has no command: it would run its image's entrypoint, which does not exist here",
                container.name
            );
        };
        Ok(Launch {
            container: container.name.clone(),
            program: self.resolve(&program)?,
            args: words.collect(),
            env,
        })
    }

    fn field(&self, path: &str) -> Result<String> {
        let id = &self.identity;
        Ok(match path {
            "metadata.name" => id.name.clone(),
            "metadata.namespace" => id.namespace.clone(),
            "metadata.uid" => id.uid.clone(),
            "spec.nodeName" => id.node_name.clone(),
            "spec.serviceAccountName" => self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            "status.podIP" | "status.hostIP" => "127.0.0.1".into(),
            other => bail!("downward API field {other} is not supported locally"),
        })
    }

    /// Rewrites a path under one of the container's mounts to the volume's local folder.
    fn map_path(&self, container: &Container, value: &str) -> String {
        for mount in container.volume_mounts.iter().flatten() {
            let mount_path = mount.mount_path.trim_end_matches('/');
            if let Some(rest) = value.strip_prefix(mount_path)
                && (rest.is_empty() || rest.starts_with('/'))
            {
                let local = self.volumes_root.join(&mount.name);
                return format!("{}{rest}", local.display());
            }
        }
        value.to_string()
    }

    fn resolve(&self, program: &str) -> Result<PathBuf> {
        if program.contains('/') {
            return Ok(PathBuf::from(program));
        }
        self.image_path
            .iter()
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "program {program} is not in the image path {:?}",
                    self.image_path
                )
            })
    }
}

/// Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`,
/// anything else is left as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let defined: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = defined.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A Pod made from a workload's pod template the way its controller makes one.
pub fn pod_from_template(
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    name: &str,
    namespace: &str,
) -> Pod {
    let mut metadata = template.metadata.clone().unwrap_or_default();
    metadata.name = Some(name.to_string());
    metadata.namespace = Some(namespace.to_string());
    Pod {
        metadata,
        spec: template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_defined_references_and_keeps_the_rest() {
        let env = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("x$(A)-$(B)", &env), "x1-two");
        assert_eq!(expand("$(C) stays", &env), "$(C) stays");
        assert_eq!(expand("$$(A) is escaped", &env), "$(A) is escaped");
        assert_eq!(expand("cost: 5$", &env), "cost: 5$");
    }
}

/// How a container ended when the kubelet stopped it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// It exited by itself within the grace period, with this status.
    Exited(std::process::ExitStatus),
    /// The grace period ran out: it and every process it started were SIGKILLed.
    Killed,
}

/// Stops a container the way the kubelet does when its pod is deleted: SIGTERM to its main
/// process, then, if it is still running when `grace` (the pod's
/// `terminationGracePeriodSeconds`) ends, SIGKILL to it and to every process it started
/// (the container's cgroup: agents in process groups of their own included).
pub async fn stop_container(
    container: &mut crate::process::Running,
    grace: std::time::Duration,
) -> Stopped {
    use nix::sys::signal::{Signal, kill};
    let main = container.pid();
    let deadline = std::time::Instant::now() + grace;
    let _ = kill(main, Signal::SIGTERM);
    loop {
        if let Some(status) = container.try_wait() {
            return Stopped::Exited(status);
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for pid in descendants(main.as_raw())
        .into_iter()
        .chain([main.as_raw()])
    {
        let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    }
    container.wait(std::time::Duration::from_secs(10)).await;
    Stopped::Killed
}

/// Every process below `root` in the process tree.
fn descendants(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = wave_agent::procfs::all_processes()
        .map(|(pid, stat)| (pid, stat.ppid))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, _) in parents.iter().filter(|(_, ppid)| *ppid == parent) {
            found.push(*pid);
            frontier.push(*pid);
        }
    }
    found
}
