//! The resource types the stand-in serves, with what the real server knows of each: URL
//! group/version and plural, kind, scope, whether it has `metadata.generation` and a
//! `status` subresource, and which field selectors it accepts.

/// One served resource type.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    /// The plural in URLs and RBAC (`leases`).
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// The real server sets and bumps `metadata.generation` (spec changes).
    pub generation: bool,
    /// Has a `status` subresource: a write to the main resource keeps the old status.
    pub status_subresource: bool,
    /// Field selectors besides `metadata.name` and `metadata.namespace`.
    pub fields: &'static [&'static str],
    /// Default `propagationPolicy` of a DELETE without one (batch/v1 Jobs orphan their
    /// pods unless told otherwise, as the real Job REST strategy does).
    pub orphans_by_default: bool,
}

impl ResourceType {
    /// `apiVersion` as written in objects (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `leases.coordination.k8s.io`, or `pods` for the core group, as error messages
    /// name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Lease.coordination.k8s.io`, or `Pod`: how `Invalid` messages name the kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    /// The list kind (`LeaseList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const fn resource(
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    generation: bool,
    status_subresource: bool,
) -> ResourceType {
    ResourceType {
        group,
        version: "v1",
        plural,
        kind,
        namespaced: true,
        generation,
        status_subresource,
        fields: &[],
        orphans_by_default: false,
    }
}

/// Every served type; a [`ResourceId`] is an index into it.
pub static RESOURCES: [ResourceType; 9] = [
    ResourceType {
        fields: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ..resource("", "pods", "Pod", false, true)
    },
    ResourceType {
        fields: &["type"],
        ..resource("", "secrets", "Secret", false, false)
    },
    resource("", "configmaps", "ConfigMap", false, false),
    resource("coordination.k8s.io", "leases", "Lease", false, false),
    resource("apps", "replicasets", "ReplicaSet", true, true),
    resource("apps", "deployments", "Deployment", true, true),
    resource("apps", "statefulsets", "StatefulSet", true, true),
    ResourceType {
        fields: &["status.successful"],
        orphans_by_default: true,
        ..resource("batch", "jobs", "Job", true, true)
    },
    ResourceType {
        namespaced: false,
        ..resource(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            true,
            false,
        )
    },
];

/// Index of a type in [`RESOURCES`].
pub type ResourceId = usize;

/// The type served at `group`/`version`/`plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<ResourceId> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The type of objects with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<ResourceId> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_types_are_named_without_group() {
        let pods = &RESOURCES[by_plural("", "v1", "pods").expect("pods")];
        assert_eq!(pods.api_version(), "v1");
        assert_eq!(pods.qualified(), "pods");
        assert_eq!(pods.qualified_kind(), "Pod");
    }

    #[test]
    fn grouped_types_are_qualified_by_group() {
        let id = by_kind("coordination.k8s.io/v1", "Lease").expect("leases");
        assert_eq!(RESOURCES[id].qualified(), "leases.coordination.k8s.io");
        assert_eq!(RESOURCES[id].qualified_kind(), "Lease.coordination.k8s.io");
        assert_eq!(RESOURCES[id].list_kind(), "LeaseList");
        assert_eq!(by_kind("apps/v1", "Lease"), None);
    }
}
