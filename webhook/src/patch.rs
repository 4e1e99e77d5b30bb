//! Building the JSON Patch (RFC 6902) that turns a pod into its mutated copy.
//!
//! The mutation only appends to lists, adds map keys, sets `command` and
//! `terminationGracePeriodSeconds` and removes `args`,
//! so the patch is built field by field from exactly those changes (parents before children).
//! That costs a fraction of serializing both pods and diffing them, and applies to the pod
//! exactly as the API server sent it, fields unknown to the typed pod included.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde::Serialize;
use serde_json::{Map, Value};

/// The JSON Patch that turns `before` into `after`, its copy changed by the mutation.
/// `after` is taken so the new env entries, most of the patch, move into it uncopied.
pub fn build(before: &Pod, mut after: Pod) -> json_patch::Patch {
    // About six operations per container and a few for the pod: one allocation up front.
    let containers = after.spec.as_ref().map_or(0, |s| s.containers.len());
    let mut ops = Ops(Vec::with_capacity(8 + 6 * containers));
    let mut path = PointerBuf::from_tokens(["metadata", "annotations"]);
    ops.map(
        &mut path,
        before.metadata.annotations.as_ref(),
        after.metadata.annotations.as_ref(),
    );
    if let (Some(b), Some(a)) = (&before.spec, &mut after.spec) {
        let mut path = PointerBuf::from_tokens(["spec", "containers"]);
        for (i, (bc, ac)) in b.containers.iter().zip(&mut a.containers).enumerate() {
            path.push_back(i);
            ops.container(&mut path, bc, ac);
            path.pop_back();
        }
        let mut path = PointerBuf::from_tokens(["spec"]);
        ops.field(&mut path, "initContainers", |ops, path| {
            ops.list(path, b.init_containers.as_ref(), a.init_containers.as_ref())
        });
        ops.field(&mut path, "volumes", |ops, path| {
            ops.list(path, b.volumes.as_ref(), a.volumes.as_ref())
        });
        ops.field(&mut path, "nodeSelector", |ops, path| {
            ops.map(path, b.node_selector.as_ref(), a.node_selector.as_ref())
        });
        ops.field(&mut path, "tolerations", |ops, path| {
            ops.list(path, b.tolerations.as_ref(), a.tolerations.as_ref())
        });
        if a.termination_grace_period_seconds != b.termination_grace_period_seconds {
            ops.field(&mut path, "terminationGracePeriodSeconds", |ops, path| {
                ops.add(path, &a.termination_grace_period_seconds)
            });
        }
    }
    json_patch::Patch(ops.0)
}

/// The operations built so far.
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn add<T: Serialize>(&mut self, path: &PointerBuf, value: &T) {
        let value = serde_json::to_value(value).expect("Kubernetes types always serialize to JSON");
        self.add_json(path, value);
    }

    /// An `add` of a value already in JSON form.
    fn add_json(&mut self, path: &PointerBuf, value: Value) {
        self.0.push(PatchOperation::Add(AddOperation {
            path: path.clone(),
            value,
        }));
    }

    /// Runs `f` on `path/name`.
    fn field(
        &mut self,
        path: &mut PointerBuf,
        name: &str,
        f: impl FnOnce(&mut Self, &mut PointerBuf),
    ) {
        path.push_back(name);
        f(self, path);
        path.pop_back();
    }

    /// The env list of `len` entries (`None`: absent) that became `after`.
    fn env(&mut self, path: &mut PointerBuf, len: Option<usize>, after: Option<Vec<EnvVar>>) {
        let Some(after) = after else {
            return;
        };
        let Some(len) = len else {
            self.add_json(
                path,
                Value::Array(after.into_iter().map(env_json).collect()),
            );
            return;
        };
        for (i, entry) in after.into_iter().enumerate().skip(len) {
            path.push_back(i);
            self.add_json(path, env_json(entry));
            path.pop_back();
        }
    }

    /// A list that is new, or that got elements appended.
    fn list<T: Serialize>(
        &mut self,
        path: &mut PointerBuf,
        before: Option<&Vec<T>>,
        after: Option<&Vec<T>>,
    ) {
        match (before, after) {
            (None, Some(after)) => self.add(path, after),
            (Some(before), Some(after)) => {
                for (i, item) in after.iter().enumerate().skip(before.len()) {
                    path.push_back(i);
                    self.add(path, item);
                    path.pop_back();
                }
            }
            (_, None) => {}
        }
    }

    /// A map that is new, or that got keys added.
    fn map<V: Serialize>(
        &mut self,
        path: &mut PointerBuf,
        before: Option<&BTreeMap<String, V>>,
        after: Option<&BTreeMap<String, V>>,
    ) {
        match (before, after) {
            (None, Some(after)) => self.add(path, after),
            (Some(before), Some(after)) => {
                for (key, value) in after {
                    if !before.contains_key(key) {
                        path.push_back(key);
                        self.add(path, value);
                        path.pop_back();
                    }
                }
            }
            (_, None) => {}
        }
    }

    /// What wave changes in one container.
    fn container(&mut self, path: &mut PointerBuf, before: &Container, after: &mut Container) {
        self.field(path, "env", |ops, path| {
            ops.env(path, before.env.as_ref().map(Vec::len), after.env.take())
        });
        match (&before.resources, &after.resources) {
            (None, Some(after)) => self.field(path, "resources", |ops, path| ops.add(path, after)),
            (Some(b), Some(a)) => self.field(path, "resources", |ops, path| {
                ops.field(path, "requests", |ops, path| {
                    ops.map(path, b.requests.as_ref(), a.requests.as_ref())
                });
                ops.field(path, "limits", |ops, path| {
                    ops.map(path, b.limits.as_ref(), a.limits.as_ref())
                });
            }),
            (_, None) => {}
        }
        self.field(path, "ports", |ops, path| {
            ops.list(path, before.ports.as_ref(), after.ports.as_ref())
        });
        self.field(path, "volumeMounts", |ops, path| {
            ops.list(
                path,
                before.volume_mounts.as_ref(),
                after.volume_mounts.as_ref(),
            )
        });
        if let Some(command) = &after.command
            && before.command.as_ref() != Some(command)
        {
            self.field(path, "command", |ops, path| ops.add(path, command));
        }
        if before.args.is_some() && after.args.is_none() {
            self.field(path, "args", |ops, path| {
                ops.0.push(PatchOperation::Remove(RemoveOperation {
                    path: path.clone(),
                }))
            });
        }
    }
}

/// An env entry as JSON. A plain value, most of what wave adds, is moved into the JSON rather
/// than serialized (which copies every string); anything else goes through serde.
fn env_json(entry: EnvVar) -> Value {
    match entry {
        EnvVar {
            name,
            value: Some(value),
            value_from: None,
        } => Value::Object(Map::from_iter([
            ("name".to_string(), Value::String(name)),
            ("value".to_string(), Value::String(value)),
        ])),
        other => serde_json::to_value(other).expect("Kubernetes types always serialize to JSON"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pods::{annotate, mk_pod, with_command};
    use k8s_openapi::api::core::v1::{ContainerPort, EnvVar, Volume};

    fn applied(before: &Pod, after: &Pod) -> serde_json::Value {
        let mut doc = serde_json::to_value(before).expect("pod to json");
        json_patch::patch(&mut doc, &build(before, after.clone())).expect("the patch applies");
        doc
    }

    #[test]
    fn an_unchanged_pod_gets_an_empty_patch() {
        let pod = mk_pod(2);
        assert!(build(&pod, pod.clone()).0.is_empty());
    }

    #[test]
    fn appended_elements_added_keys_a_set_command_and_removed_args_give_the_changed_pod() {
        let before = annotate(
            with_command(mk_pod(2), Some(&["./game"]), Some(&["-x"])),
            "team",
            "games",
        );
        let mut after = annotate(before.clone(), "prometheus.io/scrape", "true");
        let spec = after.spec.as_mut().expect("spec");
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "wave-work".into(),
            ..Volume::default()
        });
        spec.node_selector
            .get_or_insert_with(BTreeMap::new)
            .insert("kubernetes.io/os".into(), "linux".into());
        let c = &mut spec.containers[1];
        c.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: "TEST_ID".into(),
            value: Some("t".into()),
            value_from: None,
        });
        c.ports.get_or_insert_with(Vec::new).push(ContainerPort {
            container_port: 9103,
            ..ContainerPort::default()
        });
        c.command = Some(vec!["wave-agent".into(), "run".into()]);
        c.args = None;
        assert_eq!(
            applied(&before, &after),
            serde_json::to_value(&after).expect("pod to json")
        );
    }
}
