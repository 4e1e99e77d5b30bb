//! Building the JSON Patch (RFC 6902) that turns a pod into its mutated copy.
//!
//! The mutation only appends to lists, adds map keys, sets `command` and
//! `terminationGracePeriodSeconds` and removes `args`,
//! so the patch is built field by field from exactly those changes (parents before children).
//! That costs a fraction of serializing both pods and diffing them, and applies to the pod
//! exactly as the API server sent it, fields unknown to the typed pod included.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::Serialize;

/// A JSON Patch already encoded: the admission answer carries the bytes, so the operations
/// are written straight into them rather than built as `serde_json::Value`s first.
#[derive(Clone, PartialEq, Eq)]
pub struct Patch {
    json: Vec<u8>,
}

impl Patch {
    /// No operation: the pod is already as wave would make it.
    pub fn is_empty(&self) -> bool {
        self.json == b"[]"
    }

    /// The encoded JSON array of operations.
    pub fn into_json(self) -> Vec<u8> {
        self.json
    }

    /// The operations, decoded, for applying the patch to a document.
    pub fn operations(&self) -> json_patch::Patch {
        serde_json::from_slice(&self.json).expect("the patch writer writes valid JSON Patch")
    }
}

impl fmt::Debug for Patch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.json))
    }
}

/// The JSON Patch that turns `before` into `after`, its copy changed by the mutation.
pub fn build(before: &Pod, after: &Pod) -> Patch {
    // About six operations of ~150 bytes per container and a few for the pod.
    let containers = after.spec.as_ref().map_or(0, |s| s.containers.len());
    let mut ops = Ops {
        json: Vec::with_capacity(1024 + 1024 * containers),
        count: 0,
    };
    let mut path = Pointer::from_tokens(&["metadata", "annotations"]);
    ops.map(
        &mut path,
        before.metadata.annotations.as_ref(),
        after.metadata.annotations.as_ref(),
    );
    if let (Some(b), Some(a)) = (&before.spec, &after.spec) {
        let mut path = Pointer::from_tokens(&["spec", "containers"]);
        for (i, (bc, ac)) in b.containers.iter().zip(&a.containers).enumerate() {
            path.push_index(i);
            ops.container(&mut path, bc, ac);
            path.pop();
        }
        let mut path = Pointer::from_tokens(&["spec"]);
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
    ops.finish()
}

/// A JSON Pointer (RFC 6901) grown and shrunk a token at a time as the builder walks the pod:
/// the text is kept whole, so writing an operation's path copies it once.
struct Pointer {
    text: String,
    /// Where each token's `/` starts, to remove the last token.
    starts: Vec<usize>,
}

impl Pointer {
    fn from_tokens(tokens: &[&str]) -> Self {
        let mut pointer = Pointer {
            text: String::with_capacity(128),
            starts: Vec::with_capacity(8),
        };
        for token in tokens {
            pointer.push(token);
        }
        pointer
    }

    /// Appends a key, escaped as RFC 6901 says (`~` as `~0`, `/` as `~1`).
    fn push(&mut self, token: &str) {
        self.starts.push(self.text.len());
        self.text.push('/');
        let mut rest = token;
        while let Some(at) = rest.find(['~', '/']) {
            self.text.push_str(&rest[..at]);
            self.text.push_str(if rest.as_bytes()[at] == b'~' {
                "~0"
            } else {
                "~1"
            });
            rest = &rest[at + 1..];
        }
        self.text.push_str(rest);
    }

    /// Appends an array index.
    fn push_index(&mut self, index: usize) {
        self.starts.push(self.text.len());
        write!(self.text, "/{index}").expect("writing to a String cannot fail");
    }

    /// Removes the last token.
    fn pop(&mut self) {
        if let Some(start) = self.starts.pop() {
            self.text.truncate(start);
        }
    }

    fn as_str(&self) -> &str {
        &self.text
    }
}

/// The operations written so far.
struct Ops {
    json: Vec<u8>,
    count: usize,
}

impl Ops {
    /// Opens the object of one operation, up to its path.
    fn begin(&mut self, op: &str, path: &Pointer) {
        self.json.push(if self.count == 0 { b'[' } else { b',' });
        self.count += 1;
        self.json.extend_from_slice(b"{\"op\":\"");
        self.json.extend_from_slice(op.as_bytes());
        self.json.extend_from_slice(b"\",\"path\":");
        serde_json::to_writer(&mut self.json, path.as_str()).expect("a string always encodes");
    }

    fn add<T: Serialize>(&mut self, path: &Pointer, value: &T) {
        self.begin("add", path);
        self.json.extend_from_slice(b",\"value\":");
        serde_json::to_writer(&mut self.json, value)
            .expect("Kubernetes types always serialize to JSON");
        self.json.push(b'}');
    }

    fn remove(&mut self, path: &Pointer) {
        self.begin("remove", path);
        self.json.push(b'}');
    }

    fn finish(mut self) -> Patch {
        if self.count == 0 {
            self.json.push(b'[');
        }
        self.json.push(b']');
        Patch { json: self.json }
    }

    /// Runs `f` on `path/name`.
    fn field(&mut self, path: &mut Pointer, name: &str, f: impl FnOnce(&mut Self, &mut Pointer)) {
        path.push(name);
        f(self, path);
        path.pop();
    }

    /// A list that is new, or that got elements appended.
    fn list<T: Serialize>(
        &mut self,
        path: &mut Pointer,
        before: Option<&Vec<T>>,
        after: Option<&Vec<T>>,
    ) {
        match (before, after) {
            (None, Some(after)) => self.add(path, after),
            (Some(before), Some(after)) => {
                for (i, item) in after.iter().enumerate().skip(before.len()) {
                    path.push_index(i);
                    self.add(path, item);
                    path.pop();
                }
            }
            (_, None) => {}
        }
    }

    /// A map that is new, or that got keys added.
    fn map<V: Serialize>(
        &mut self,
        path: &mut Pointer,
        before: Option<&BTreeMap<String, V>>,
        after: Option<&BTreeMap<String, V>>,
    ) {
        match (before, after) {
            (None, Some(after)) => self.add(path, after),
            (Some(before), Some(after)) => {
                for (key, value) in after {
                    if !before.contains_key(key) {
                        path.push(key);
                        self.add(path, value);
                        path.pop();
                    }
                }
            }
            (_, None) => {}
        }
    }

    /// What wave changes in one container.
    fn container(&mut self, path: &mut Pointer, before: &Container, after: &Container) {
        self.field(path, "env", |ops, path| {
            ops.list(path, before.env.as_ref(), after.env.as_ref())
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
            self.field(path, "args", |ops, path| ops.remove(path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_pods::{annotate, mk_pod, with_command};
    use k8s_openapi::api::core::v1::{ContainerPort, EnvVar, Volume};

    fn applied(before: &Pod, after: &Pod) -> serde_json::Value {
        let mut doc = serde_json::to_value(before).expect("pod to json");
        json_patch::patch(&mut doc, &build(before, after).operations()).expect("the patch applies");
        doc
    }

    #[test]
    fn pointers_escape_tilde_and_slash_and_shrink_back() {
        let mut path = Pointer::from_tokens(&["metadata", "annotations"]);
        path.push("example.com/a~b/c");
        assert_eq!(path.as_str(), "/metadata/annotations/example.com~1a~0b~1c");
        path.pop();
        path.push_index(12);
        assert_eq!(path.as_str(), "/metadata/annotations/12");
        path.pop();
        path.pop();
        assert_eq!(path.as_str(), "/metadata");
        let pointer: json_patch::jsonptr::PointerBuf = "/metadata/annotations/example.com~1a~0b~1c"
            .parse()
            .expect("a valid pointer");
        assert_eq!(
            pointer.last().map(|t| t.decoded().into_owned()),
            Some("example.com/a~b/c".to_string()),
            "json-patch reads the token back"
        );
    }

    #[test]
    fn an_unchanged_pod_gets_an_empty_patch() {
        let pod = mk_pod(2);
        let patch = build(&pod, &pod);
        assert!(patch.is_empty(), "{patch:?}");
        assert_eq!(patch.into_json(), b"[]");
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
