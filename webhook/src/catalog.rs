//! The machine catalog: EC2 instance types a test machine (pod) can be sized like.
//!
//! Each entry knows what the EKS AMI bootstrap needs to compute a node's allocatable
//! resources (vCPU, memory, max-pods from EKS's `eni-max-pods.txt`), and may carry the
//! allocatable measured on a real node instead (`kubectl get node -o jsonpath='{.status.allocatable}'`).

use std::collections::BTreeMap;

use wave_contract::closest;

/// CPU in millicores and memory in MiB: the units every share is computed in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    /// Millicores.
    pub cpu_millis: u64,
    /// Mebibytes.
    pub memory_mib: u64,
}

/// One instance type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineType {
    /// vCPUs of the instance.
    pub vcpu: u32,
    /// Nominal memory in GiB, as EC2 advertises it.
    pub memory_gib: u32,
    /// Pods a node of this type may run (EKS `eni-max-pods.txt`).
    pub max_pods: u32,
    /// Allocatable measured on a node; when absent it is computed as the AMI does.
    pub allocatable: Option<Amount>,
}

/// Percent of nominal memory the kernel leaves to a node: a conservative capacity
/// (the real figure varies with the AMI and instance, usually 95–97 %).
const CAPACITY_PERCENT: u64 = 94;
/// Kubelet eviction-hard threshold reserved by the EKS AMI.
const EVICTION_HARD_MIB: u64 = 100;

impl MachineType {
    /// Allocatable cpu and memory of one node of this type, as the EKS AMI bootstrap
    /// computes kube-reserved (or the measured value when the catalog gives one).
    pub fn allocatable(&self) -> Amount {
        if let Some(measured) = self.allocatable {
            return measured;
        }
        Amount {
            cpu_millis: u64::from(self.vcpu) * 1000 - cpu_reserved_millis(self.vcpu),
            memory_mib: self
                .capacity_mib()
                .saturating_sub(255 + 11 * u64::from(self.max_pods) + EVICTION_HARD_MIB),
        }
    }

    /// Conservative node memory capacity in MiB.
    fn capacity_mib(&self) -> u64 {
        u64::from(self.memory_gib) * 1024 * CAPACITY_PERCENT / 100
    }
}

/// kube-reserved cpu of the EKS AMI: 6 % of the first core, 1 % of the second,
/// 0.5 % of the 3rd and 4th, 0.25 % of every core above 4 (in millicores).
fn cpu_reserved_millis(vcpu: u32) -> u64 {
    let vcpu = u64::from(vcpu);
    // Hundredths of a millicore, so that 0.25 % of a core (2.5m) stays exact.
    let centi = 6000 * vcpu.min(1)
        + 1000 * vcpu.saturating_sub(1).min(1)
        + 500 * vcpu.saturating_sub(2).min(2)
        + 250 * vcpu.saturating_sub(4);
    centi / 100
}

/// Instance types by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    entries: BTreeMap<String, MachineType>,
}

/// The built-in families and their sizes: vCPU and GiB per size.
const FAMILIES: [(&str, [u32; 4]); 6] = [
    ("m5", [8, 16, 32, 64]),
    ("m6i", [8, 16, 32, 64]),
    ("c5", [4, 8, 16, 32]),
    ("c6i", [4, 8, 16, 32]),
    ("r5", [16, 32, 64, 128]),
    ("r6i", [16, 32, 64, 128]),
];
/// Size name, vCPU and max-pods (identical for these six families in `eni-max-pods.txt`).
const SIZES: [(&str, u32, u32); 4] = [
    ("large", 2, 29),
    ("xlarge", 4, 58),
    ("2xlarge", 8, 58),
    ("4xlarge", 16, 234),
];

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The shipped catalog: m5, m6i, c5, c6i, r5 and r6i from large to 4xlarge.
    pub fn builtin() -> Self {
        let mut entries = BTreeMap::new();
        for (family, memory) in FAMILIES {
            for ((size, vcpu, max_pods), memory_gib) in SIZES.into_iter().zip(memory) {
                entries.insert(
                    format!("{family}.{size}"),
                    MachineType {
                        vcpu,
                        memory_gib,
                        max_pods,
                        allocatable: None,
                    },
                );
            }
        }
        Self { entries }
    }

    /// The entry for `name`, if the catalog has it.
    pub fn get(&self, name: &str) -> Option<&MachineType> {
        self.entries.get(name)
    }

    /// Adds an entry or replaces the one with the same name.
    pub fn insert(&mut self, name: String, machine: MachineType) {
        self.entries.insert(name, machine);
    }

    /// Every machine type name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The closest known name to a misspelt one, for "did you mean" hints.
    pub fn suggest(&self, name: &str) -> Option<&str> {
        closest(name, self.names())
    }
}

/// The candidate most similar to `given`, if any is similar enough to be a likely typo.
#[cfg(test)]
mod tests {
    use super::*;

    fn machine(name: &str) -> MachineType {
        Catalog::builtin()
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} is in the built-in catalog"))
    }

    #[test]
    fn builtin_catalog_covers_six_families_from_large_to_4xlarge() {
        let catalog = Catalog::builtin();
        assert_eq!(catalog.names().count(), 24);
        for family in ["m5", "m6i", "c5", "c6i", "r5", "r6i"] {
            for size in ["large", "xlarge", "2xlarge", "4xlarge"] {
                assert!(catalog.get(&format!("{family}.{size}")).is_some());
            }
        }
    }

    #[test]
    fn r5_xlarge_matches_ec2_and_eni_max_pods() {
        assert_eq!(
            machine("r5.xlarge"),
            MachineType {
                vcpu: 4,
                memory_gib: 32,
                max_pods: 58,
                allocatable: None
            }
        );
        assert_eq!(machine("c6i.large").memory_gib, 4);
        assert_eq!(machine("m6i.4xlarge").max_pods, 234);
        assert_eq!(machine("r6i.2xlarge").vcpu, 8);
    }

    #[test]
    fn cpu_kube_reserved_follows_the_eks_ami_steps() {
        assert_eq!(cpu_reserved_millis(1), 60);
        assert_eq!(cpu_reserved_millis(2), 70);
        assert_eq!(cpu_reserved_millis(4), 80);
        assert_eq!(cpu_reserved_millis(8), 90);
        assert_eq!(cpu_reserved_millis(16), 110);
        assert_eq!(cpu_reserved_millis(96), 310);
    }

    #[test]
    fn r5_xlarge_allocatable_is_3920m_and_capacity_minus_reservations() {
        let alloc = machine("r5.xlarge").allocatable();
        assert_eq!(alloc.cpu_millis, 3920);
        // 32 GiB × 94 % = 30801 MiB; minus 255 + 11 × 58 = 893 kube-reserved, minus 100 eviction.
        assert_eq!(alloc.memory_mib, 30801 - 893 - 100);
    }

    #[test]
    fn measured_allocatable_overrides_the_computation() {
        let mut m = machine("r5.xlarge");
        m.allocatable = Some(Amount {
            cpu_millis: 3900,
            memory_mib: 30000,
        });
        assert_eq!(m.allocatable().cpu_millis, 3900);
        assert_eq!(m.allocatable().memory_mib, 30000);
    }

    #[test]
    fn suggests_the_closest_machine_type() {
        let catalog = Catalog::builtin();
        assert_eq!(catalog.suggest("r5.xlarg"), Some("r5.xlarge"));
        assert_eq!(catalog.suggest("m6i.2xlrage"), Some("m6i.2xlarge"));
        assert_eq!(catalog.suggest("zzzzzzzz"), None);
    }
}
