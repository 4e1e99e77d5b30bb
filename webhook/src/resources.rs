//! Resource arithmetic: how much cpu and memory each container of a test machine gets,
//! and the Kubernetes quantity strings those amounts are read from and written as.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::catalog::{Amount, MachineType};

/// How a test machine's containers are sized (annotation `waveloadtest.io/resources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourcePolicy {
    /// The whole pod fits one node of the machine type next to the DaemonSets.
    Fit,
    /// The seed's arithmetic: nominal vCPU and GB split over the agents.
    Nominal,
    /// Resources are left as the pod sets them.
    None,
}

impl ResourcePolicy {
    /// Accepted spellings, for error messages.
    pub const EXPECTED: &'static str = "fit, nominal or none";

    /// Lower-case name as written in annotations and config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fit => "fit",
            Self::Nominal => "nominal",
            Self::None => "none",
        }
    }
}

impl fmt::Display for ResourcePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ResourcePolicy {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "fit" => Ok(Self::Fit),
            "nominal" => Ok(Self::Nominal),
            "none" => Ok(Self::None),
            _ => Err(()),
        }
    }
}

/// Smallest cpu share (millicores) worth giving an agent container.
pub const CPU_FLOOR_MILLIS: u64 = 10;
/// Smallest memory share (MiB) worth giving an agent container.
pub const MEMORY_FLOOR_MIB: u64 = 32;

/// Why no share could be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// The agents cannot be spread evenly over the containers.
    #[error(
        "{agents} agents cannot be spread evenly over {containers} containers (agents must be a multiple of the container count)"
    )]
    NotDivisible {
        /// Agents per pod.
        agents: u32,
        /// Containers in the pod.
        containers: u32,
    },
    /// The pod has no (non-sidecar) container to give agents to.
    #[error("the pod has no test containers")]
    NoContainers,
    /// The DaemonSet overhead leaves nothing on the machine.
    #[error(
        "the daemonset overhead ({overhead}) leaves nothing of the machine's allocatable {allocatable}"
    )]
    OverheadTooLarge {
        /// Configured overhead.
        overhead: String,
        /// Allocatable of the machine type.
        allocatable: String,
    },
    /// A share falls under the floor.
    #[error(
        "{agents} agents in {containers} containers leave {share} per container, below the {floor} floor (too many agents for the machine)"
    )]
    BelowFloor {
        /// Agents per pod.
        agents: u32,
        /// Containers in the pod.
        containers: u64,
        /// The share as a quantity.
        share: String,
        /// The floor as a quantity.
        floor: String,
    },
}

/// Agents per container: `agents / containers`, which must divide evenly.
pub fn agents_per_container(agents: u32, containers: usize) -> Result<u32, ShareError> {
    let containers = u32::try_from(containers).unwrap_or(u32::MAX);
    if containers == 0 {
        return Err(ShareError::NoContainers);
    }
    if !agents.is_multiple_of(containers) {
        return Err(ShareError::NotDivisible { agents, containers });
    }
    Ok(agents / containers)
}

/// The cpu and memory one container running `per_container` of the pod's `agents` gets,
/// or `None` under [`ResourcePolicy::None`].
pub fn share(
    policy: ResourcePolicy,
    machine: &MachineType,
    overhead: Amount,
    agents: u32,
    per_container: u32,
) -> Result<Option<Amount>, ShareError> {
    let budget = match policy {
        ResourcePolicy::None => return Ok(None),
        ResourcePolicy::Nominal => Amount {
            cpu_millis: u64::from(machine.vcpu) * 1000,
            memory_mib: u64::from(machine.memory_gib) * 1000,
        },
        ResourcePolicy::Fit => {
            let alloc = machine.allocatable();
            match (
                alloc.cpu_millis.checked_sub(overhead.cpu_millis),
                alloc.memory_mib.checked_sub(overhead.memory_mib),
            ) {
                (Some(cpu_millis), Some(memory_mib)) if cpu_millis > 0 && memory_mib > 0 => {
                    Amount {
                        cpu_millis,
                        memory_mib,
                    }
                }
                _ => {
                    return Err(ShareError::OverheadTooLarge {
                        overhead: describe(overhead),
                        allocatable: describe(alloc),
                    });
                }
            }
        }
    };
    let agents_all = u64::from(agents.max(1));
    let part = u64::from(per_container);
    let containers = agents_all / part.max(1);
    // In u128: a budget from the config can be large enough for the product to overflow;
    // the quotient is at most the budget again.
    let split =
        |budget: u64| (u128::from(budget) * u128::from(part) / u128::from(agents_all)) as u64;
    let share = Amount {
        cpu_millis: split(budget.cpu_millis),
        memory_mib: split(budget.memory_mib),
    };
    if share.cpu_millis < CPU_FLOOR_MILLIS {
        return Err(ShareError::BelowFloor {
            agents,
            containers,
            share: format!("{} cpu", format_cpu(share.cpu_millis)),
            floor: format_cpu(CPU_FLOOR_MILLIS),
        });
    }
    if share.memory_mib < MEMORY_FLOOR_MIB {
        return Err(ShareError::BelowFloor {
            agents,
            containers,
            share: format!("{} memory", format_memory(share.memory_mib)),
            floor: format_memory(MEMORY_FLOOR_MIB),
        });
    }
    Ok(Some(share))
}

fn describe(amount: Amount) -> String {
    format!(
        "cpu {}, memory {}",
        format_cpu(amount.cpu_millis),
        format_memory(amount.memory_mib)
    )
}

/// A cpu amount as the API server writes it canonically: whole cores plainly, else millicores.
pub fn format_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// A memory amount as the API server writes it canonically: `Gi` when whole, else `Mi`.
pub fn format_memory(mib: u64) -> String {
    if mib == 0 {
        "0".to_string()
    } else if mib.is_multiple_of(1024) {
        format!("{}Gi", mib / 1024)
    } else {
        format!("{mib}Mi")
    }
}

/// A Kubernetes quantity (`125m`, `0.5`, `3200Mi`, `31792000Ki`, `1e3`) in nano-units,
/// or `None` when it is not one.
fn quantity_nanos(q: &str) -> Option<u128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number = number.strip_prefix('+').unwrap_or(number);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() {
        return None;
    }
    if !whole
        .chars()
        .chain(frac.chars())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut frac_nanos: u128 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        frac_nanos += u128::from(digit - b'0') * 10u128.pow(8 - i as u32);
    }
    let base = whole.checked_mul(1_000_000_000)?.checked_add(frac_nanos)?;
    let (num, den): (u128, u128) = match suffix {
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "" => (1, 1),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        exp => {
            let exp: u32 = exp.strip_prefix(['e', 'E'])?.parse().ok()?;
            (10u128.checked_pow(exp)?, 1)
        }
    };
    Some(base.checked_mul(num)? / den)
}

/// A cpu quantity in millicores, rounded up as the API server does; `None` if malformed.
pub fn parse_cpu_millis(q: &str) -> Option<u64> {
    u64::try_from(quantity_nanos(q)?.div_ceil(1_000_000)).ok()
}

/// A memory quantity in bytes, rounded up; `None` if malformed.
pub fn parse_memory_bytes(q: &str) -> Option<u64> {
    u64::try_from(quantity_nanos(q)?.div_ceil(1_000_000_000)).ok()
}

/// A memory quantity in whole MiB, rounded down (a budget never grows by rounding).
pub fn parse_memory_mib(q: &str) -> Option<u64> {
    Some(parse_memory_bytes(q)? >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    const OVERHEAD: Amount = Amount {
        cpu_millis: 125,
        memory_mib: 0,
    };

    fn r5_xlarge() -> MachineType {
        Catalog::builtin()
            .get("r5.xlarge")
            .cloned()
            .expect("r5.xlarge is built in")
    }

    #[test]
    fn nominal_r5_xlarge_one_agent_per_container_is_the_seeds_400m_3200mi() {
        let got = share(ResourcePolicy::Nominal, &r5_xlarge(), OVERHEAD, 10, 1);
        assert_eq!(
            got,
            Ok(Some(Amount {
                cpu_millis: 400,
                memory_mib: 3200
            }))
        );
    }

    #[test]
    fn fit_shares_never_exceed_allocatable_minus_overhead() {
        let machine = r5_xlarge();
        let alloc = machine.allocatable();
        for (agents, containers) in [(10, 1), (10, 10), (10, 5), (7, 7), (12, 3), (100, 10)] {
            let per = agents_per_container(agents, containers as usize).expect("divisible");
            let s = share(ResourcePolicy::Fit, &machine, OVERHEAD, agents, per)
                .expect("fits")
                .expect("fit gives a share");
            assert!(s.cpu_millis * containers <= alloc.cpu_millis - 125);
            assert!(s.memory_mib * containers <= alloc.memory_mib);
        }
    }

    #[test]
    fn fit_single_container_gets_the_whole_budget() {
        let machine = r5_xlarge();
        let s = share(ResourcePolicy::Fit, &machine, OVERHEAD, 10, 10)
            .expect("fits")
            .expect("share");
        assert_eq!(s.cpu_millis, 3920 - 125);
        assert_eq!(s.memory_mib, machine.allocatable().memory_mib);
    }

    #[test]
    fn none_policy_gives_no_share() {
        assert_eq!(
            share(ResourcePolicy::None, &r5_xlarge(), OVERHEAD, 10, 1),
            Ok(None)
        );
    }

    #[test]
    fn denies_a_cpu_share_below_the_floor() {
        let err = share(ResourcePolicy::Fit, &r5_xlarge(), OVERHEAD, 400, 1)
            .expect_err("9m per container is under the floor");
        assert_eq!(
            err.to_string(),
            "400 agents in 400 containers leave 9m cpu per container, below the 10m floor (too many agents for the machine)"
        );
    }

    #[test]
    fn denies_a_memory_share_below_the_floor() {
        let mut machine = r5_xlarge();
        machine.vcpu = 64;
        let err = share(ResourcePolicy::Nominal, &machine, OVERHEAD, 1001, 1)
            .expect_err("under the memory floor");
        assert!(err.to_string().contains("31Mi memory"), "{err}");
    }

    #[test]
    fn denies_agents_not_divisible_by_containers() {
        assert_eq!(
            agents_per_container(10, 3),
            Err(ShareError::NotDivisible {
                agents: 10,
                containers: 3
            })
        );
        assert_eq!(agents_per_container(10, 0), Err(ShareError::NoContainers));
    }

    #[test]
    fn overhead_larger_than_the_machine_is_an_error() {
        let big = Amount {
            cpu_millis: 5000,
            memory_mib: 0,
        };
        assert!(matches!(
            share(ResourcePolicy::Fit, &r5_xlarge(), big, 10, 1),
            Err(ShareError::OverheadTooLarge { .. })
        ));
    }

    #[test]
    fn huge_machines_from_the_config_do_not_overflow() {
        let machine = MachineType {
            vcpu: u32::MAX,
            memory_gib: u32::MAX,
            max_pods: u32::MAX,
            allocatable: None,
        };
        let s = share(ResourcePolicy::Fit, &machine, OVERHEAD, u32::MAX, u32::MAX)
            .expect("fits")
            .expect("share");
        assert_eq!(s.cpu_millis, machine.allocatable().cpu_millis - 125);
    }

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(parse_cpu_millis("125m"), Some(125));
        assert_eq!(parse_cpu_millis("0.5"), Some(500));
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_cpu_millis(".1"), Some(100));
        assert_eq!(parse_cpu_millis("1e3"), Some(1_000_000));
        assert_eq!(parse_cpu_millis("100u"), Some(1));
        assert_eq!(parse_memory_mib("3200Mi"), Some(3200));
        assert_eq!(parse_memory_mib("1Gi"), Some(1024));
        assert_eq!(parse_memory_mib("31792000Ki"), Some(31046));
        assert_eq!(parse_memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_memory_bytes("0"), Some(0));
        for bad in ["", "m", "-1", "abc", "1.2.3", "5 Mi", "1Zi", "1e"] {
            assert_eq!(parse_cpu_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_quantities_canonically() {
        assert_eq!(format_cpu(400), "400m");
        assert_eq!(format_cpu(4000), "4");
        assert_eq!(format_memory(3200), "3200Mi");
        assert_eq!(format_memory(2048), "2Gi");
        assert_eq!(format_memory(0), "0");
    }
}
