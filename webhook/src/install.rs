//! The `wave-install` init container that copies `wave-agent` into the pod (docs/webhook-reference.md,
//! `supervisor: inject`).
//!
//! What wave adds must never make a pod less secure than its user wrote it: in a namespace
//! that enforces the `restricted` Pod Security Standard, one container without the restricted
//! settings gets the whole pod forbidden. So the container meets `restricted` on its own, and
//! it runs as the numeric non-root user of `Dockerfile.agent` (kubelet can only check
//! `runAsNonRoot` against a numeric user).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use wave_contract::names::{BIN_DIR, BIN_VOLUME, INSTALL_CONTAINER};

/// The user and group `Dockerfile.agent` runs as (distroless `nonroot`).
pub const INSTALL_USER: i64 = 65532;

/// Appends the install container to the pod's init containers, unless it is already there.
pub fn add_install_container(spec: &mut PodSpec, image: &str) {
    let init = spec.init_containers.get_or_insert_with(Vec::new);
    if init.iter().any(|c| c.name == INSTALL_CONTAINER) {
        return;
    }
    let small = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    init.push(Container {
        name: INSTALL_CONTAINER.to_string(),
        image: Some(image.to_string()),
        command: Some(vec![
            "wave-agent".to_string(),
            "install".to_string(),
            BIN_DIR.to_string(),
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(small("100m", "64Mi")),
            limits: Some(small("100m", "64Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted_security_context()),
        volume_mounts: Some(vec![VolumeMount {
            name: BIN_VOLUME.to_string(),
            mount_path: BIN_DIR.to_string(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    });
}

/// Everything the `restricted` profile asks of a container, and a read-only root filesystem
/// (the install writes only to its volume).
fn restricted_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            add: None,
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(INSTALL_USER),
        run_as_group: Some(INSTALL_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

/// One test per control of the `restricted` Pod Security Standard (kubernetes.io, "Pod
/// Security Standards": the Baseline controls plus Restricted's own), each checked over the
/// seed's pod made restricted-compliant by its user and then mutated by wave: the mutated pod
/// must still pass. Pod-level settings count for every container unless the container sets
/// its own, as the admission plugin evaluates them.
#[cfg(test)]
mod restricted {
    use k8s_openapi::api::core::v1::{
        Container, Pod, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
    };

    use super::*;
    use crate::config::Config;
    use crate::mutate::{Verdict, admit};
    use crate::part::OwnerReplicas;
    use crate::test_pods::{apply_patch, seed_pod};

    /// What the user wrote: the seed's container with the restricted settings of its own.
    fn user_pod() -> Pod {
        let mut pod = seed_pod();
        let container = &mut pod.spec.as_mut().expect("spec").containers[0];
        container.command = Some(vec!["/app/loadtest".to_string()]);
        container.security_context = Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: Some(vec!["NET_BIND_SERVICE".to_string()]),
            }),
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_string(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        });
        pod
    }

    /// The user's pod as wave admits it (default config: `supervisor: inject`).
    fn mutated() -> Pod {
        let pod = user_pod();
        match admit(&pod, OwnerReplicas::Known(480), &Config::default()) {
            Verdict::Patch { patch, .. } => apply_patch(&pod, &patch),
            other => panic!("expected a patch, got {other:?}"),
        }
    }

    fn spec(pod: &Pod) -> &PodSpec {
        pod.spec.as_ref().expect("spec")
    }

    /// Every container the admission plugin checks (containers and init containers).
    fn all_containers(pod: &Pod) -> Vec<&Container> {
        let spec = spec(pod);
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .collect()
    }

    fn pod_context(pod: &Pod) -> Option<&PodSecurityContext> {
        spec(pod).security_context.as_ref()
    }

    fn context(c: &Container) -> Option<&SecurityContext> {
        c.security_context.as_ref()
    }

    #[test]
    fn the_install_container_is_there_and_the_users_container_keeps_its_security_context() {
        let pod = mutated();
        let init = spec(&pod)
            .init_containers
            .as_ref()
            .expect("init containers");
        assert!(init.iter().any(|c| c.name == INSTALL_CONTAINER));
        assert_eq!(
            spec(&pod).containers[0].security_context,
            spec(&user_pod()).containers[0].security_context
        );
    }

    #[test]
    fn baseline_host_process_is_not_requested() {
        let pod = mutated();
        let windows = |w: Option<&k8s_openapi::api::core::v1::WindowsSecurityContextOptions>| {
            w.and_then(|w| w.host_process) == Some(true)
        };
        assert!(!windows(
            pod_context(&pod).and_then(|p| p.windows_options.as_ref())
        ));
        for c in all_containers(&pod) {
            assert!(
                !windows(context(c).and_then(|s| s.windows_options.as_ref())),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn baseline_host_namespaces_are_not_shared() {
        let spec = spec(&mutated()).clone();
        assert_ne!(spec.host_network, Some(true));
        assert_ne!(spec.host_pid, Some(true));
        assert_ne!(spec.host_ipc, Some(true));
    }

    #[test]
    fn baseline_no_container_is_privileged() {
        for c in all_containers(&mutated()) {
            assert_ne!(
                context(c).and_then(|s| s.privileged),
                Some(true),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn baseline_no_hostpath_volume() {
        let pod = mutated();
        for v in spec(&pod).volumes.iter().flatten() {
            assert!(v.host_path.is_none(), "{}", v.name);
        }
    }

    #[test]
    fn baseline_no_host_port() {
        for c in all_containers(&mutated()) {
            for port in c.ports.iter().flatten() {
                assert!(
                    port.host_port.is_none_or(|p| p == 0),
                    "{}: {port:?}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn baseline_apparmor_is_not_unconfined() {
        let pod = mutated();
        let unconfined = |p: Option<&k8s_openapi::api::core::v1::AppArmorProfile>| {
            p.is_some_and(|p| p.type_ == "Unconfined")
        };
        assert!(!unconfined(
            pod_context(&pod).and_then(|p| p.app_armor_profile.as_ref())
        ));
        for c in all_containers(&pod) {
            assert!(!unconfined(
                context(c).and_then(|s| s.app_armor_profile.as_ref())
            ));
        }
        for key in pod.metadata.annotations.iter().flatten().map(|(k, _)| k) {
            assert!(
                !key.starts_with("container.apparmor.security.beta.kubernetes.io/"),
                "{key}"
            );
        }
    }

    #[test]
    fn baseline_selinux_type_and_user_are_left_alone() {
        let pod = mutated();
        let allowed = |o: Option<&k8s_openapi::api::core::v1::SELinuxOptions>| {
            o.is_none_or(|o| {
                o.user.is_none()
                    && o.role.is_none()
                    && o.type_.as_deref().is_none_or(|t| {
                        ["container_t", "container_init_t", "container_kvm_t"].contains(&t)
                    })
            })
        };
        assert!(allowed(
            pod_context(&pod).and_then(|p| p.se_linux_options.as_ref())
        ));
        for c in all_containers(&pod) {
            assert!(
                allowed(context(c).and_then(|s| s.se_linux_options.as_ref())),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn baseline_proc_mount_is_default() {
        for c in all_containers(&mutated()) {
            let proc_mount = context(c).and_then(|s| s.proc_mount.as_deref());
            assert!(proc_mount.is_none_or(|p| p == "Default"), "{}", c.name);
        }
    }

    #[test]
    fn baseline_no_sysctls_beyond_the_safe_set() {
        let pod = mutated();
        assert!(
            pod_context(&pod)
                .and_then(|p| p.sysctls.as_ref())
                .is_none_or(Vec::is_empty)
        );
    }

    #[test]
    fn restricted_volume_types_are_only_the_allowed_kinds() {
        let pod = mutated();
        for v in spec(&pod).volumes.iter().flatten() {
            let allowed = v.config_map.is_some()
                || v.csi.is_some()
                || v.downward_api.is_some()
                || v.empty_dir.is_some()
                || v.ephemeral.is_some()
                || v.persistent_volume_claim.is_some()
                || v.projected.is_some()
                || v.secret.is_some();
            assert!(allowed, "volume {} is of a kind restricted forbids", v.name);
        }
    }

    #[test]
    fn restricted_privilege_escalation_is_off_in_every_container() {
        for c in all_containers(&mutated()) {
            assert_eq!(
                context(c).and_then(|s| s.allow_privilege_escalation),
                Some(false),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn restricted_every_container_runs_as_non_root() {
        let pod = mutated();
        let pod_level = pod_context(&pod).and_then(|p| p.run_as_non_root);
        for c in all_containers(&pod) {
            let own = context(c).and_then(|s| s.run_as_non_root);
            assert_eq!(own.or(pod_level), Some(true), "{}", c.name);
        }
    }

    #[test]
    fn restricted_no_container_runs_as_user_0() {
        let pod = mutated();
        let pod_level = pod_context(&pod).and_then(|p| p.run_as_user);
        assert_ne!(pod_level, Some(0));
        for c in all_containers(&pod) {
            assert_ne!(
                context(c).and_then(|s| s.run_as_user),
                Some(0),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn restricted_seccomp_is_runtime_default_or_localhost_everywhere() {
        let pod = mutated();
        let pod_level = pod_context(&pod)
            .and_then(|p| p.seccomp_profile.as_ref())
            .map(|p| p.type_.as_str());
        for c in all_containers(&pod) {
            let own = context(c)
                .and_then(|s| s.seccomp_profile.as_ref())
                .map(|p| p.type_.as_str());
            let effective = own.or(pod_level);
            assert!(
                matches!(effective, Some("RuntimeDefault" | "Localhost")),
                "{}: {effective:?}",
                c.name
            );
        }
    }

    #[test]
    fn restricted_capabilities_drop_all_and_add_at_most_net_bind_service() {
        for c in all_containers(&mutated()) {
            let caps = context(c).and_then(|s| s.capabilities.as_ref());
            let drops_all = caps
                .and_then(|k| k.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            assert!(drops_all, "{} does not drop ALL", c.name);
            for added in caps.and_then(|k| k.add.as_ref()).into_iter().flatten() {
                assert_eq!(added, "NET_BIND_SERVICE", "{}", c.name);
            }
        }
    }

    #[test]
    fn the_install_container_root_filesystem_is_read_only() {
        let pod = mutated();
        let install = all_containers(&pod)
            .into_iter()
            .find(|c| c.name == INSTALL_CONTAINER)
            .expect("install container");
        assert_eq!(
            context(install).and_then(|s| s.read_only_root_filesystem),
            Some(true)
        );
    }

    #[test]
    fn the_install_user_is_the_numeric_user_of_dockerfile_agent() {
        let dockerfile = include_str!("../../Dockerfile.agent");
        let user = dockerfile
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .expect("Dockerfile.agent sets USER");
        assert_eq!(user.trim(), format!("{INSTALL_USER}:{INSTALL_USER}"));
    }
}
