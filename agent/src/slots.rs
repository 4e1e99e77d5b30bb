//! Machine slots (docs/coordination.md), the pure part: which names a test part's slots and start object
//! have, in which order a pod probes the slots, and what each agent of a pod that holds slot
//! m gets (its agent number and player range). The claims themselves are in [`file`]
//! (a shared folder) and [`kube`] (Kubernetes Leases).

pub mod file;
pub mod kube;

use std::fmt;

/// Label of a slot or start Lease: the test id (or its hash when it is not a valid label value).
pub const TEST_ID_LABEL: &str = "waveloadtest.io/test-id";
/// Label of a slot or start Lease: the test part (or its hash).
pub const PART_LABEL: &str = "waveloadtest.io/part";
/// Label of a slot Lease: its machine index.
pub const SLOT_LABEL: &str = "waveloadtest.io/slot";
/// Annotation of a slot Lease: M, the part's machine count when it was claimed.
pub const MACHINES_ANNOTATION: &str = "waveloadtest.io/machines";
/// Annotation of the start object: the agreed start time (RFC 3339, UTC, milliseconds).
pub const START_AT_ANNOTATION: &str = "waveloadtest.io/start-at";
/// Annotation of the start object that stops the test part (docs/coordination.md); its value is the reason.
pub const STOP_ANNOTATION: &str = "waveloadtest.io/stop";

/// Longest object name wave makes (a DNS label, so it also fits where a label is needed).
const MAX_NAME: usize = 63;

/// One test part: the unit slots are counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub test_id: String,
    /// The label's text after `--`; may be empty.
    pub part: String,
}

impl Part {
    /// The part of a `testId` label value `<test-id>[--<part>]`.
    pub fn from_label(label: &str) -> Part {
        let (test_id, part) = label.split_once("--").unwrap_or((label, ""));
        Part {
            test_id: test_id.to_owned(),
            part: part.to_owned(),
        }
    }

    /// Name of the Lease (or file) of slot `index`: `wave-<readable>-<hash>-<index>`.
    pub fn slot_name(&self, index: u32) -> String {
        self.name(&index.to_string())
    }

    /// Name of the `-<mark>` object of slot `index` (`ready`, `done`).
    pub fn slot_name_with(&self, index: u32, mark: &str) -> String {
        self.name(&format!("{index}-{mark}"))
    }

    /// Name of the part's start object.
    pub fn start_name(&self) -> String {
        self.name("start")
    }

    /// A valid DNS label whatever the test id: lowercase letters, digits and `-`, ending in
    /// `suffix`. The hash of the exact test id and part keeps two ids that read the same
    /// once lowercased (or cut short) apart.
    fn name(&self, suffix: &str) -> String {
        let hash = format!("{:016x}", fnv1a(&[&self.test_id, "\0", &self.part]));
        let tail = format!("-{}-{suffix}", &hash[..12]);
        let room = MAX_NAME - "wave-".len() - tail.len();
        let readable: String = format!("{}-{}", self.test_id, self.part)
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9') => c,
                _ => '-',
            })
            .take(room)
            .collect();
        let readable = readable.trim_matches('-');
        let mut name = String::with_capacity(MAX_NAME);
        name.push_str("wave-");
        if !readable.is_empty() {
            name.push_str(readable);
        }
        name.push_str(&tail);
        collapse_dashes(&name)
    }

    /// The label selector of every slot and start object of this part.
    pub fn selector(&self) -> String {
        format!(
            "{TEST_ID_LABEL}={},{PART_LABEL}={}",
            label_value(&self.test_id),
            label_value(&self.part)
        )
    }

    /// The labels a slot or start object carries.
    pub fn labels(&self) -> [(&'static str, String); 2] {
        [
            (TEST_ID_LABEL, label_value(&self.test_id)),
            (PART_LABEL, label_value(&self.part)),
        ]
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.part.is_empty() {
            write!(f, "test {}", self.test_id)
        } else {
            write!(f, "test {} part {}", self.test_id, self.part)
        }
    }
}

fn collapse_dashes(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    out
}

/// `value` when it is a valid label value (≤ 63 of `[A-Za-z0-9._-]`, alphanumeric at both
/// ends, or empty), else `h-<hash>`: the labels still select exactly this part.
pub fn label_value(value: &str) -> String {
    let valid = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if valid {
        value.to_owned()
    } else {
        format!("h-{:016x}", fnv1a(&[value]))
    }
}

/// FNV-1a, 64 bits, with a final avalanche (MurmurHash3's fmix64) so that inputs that differ
/// in one character differ in every digit: stable across builds and machines (names must
/// agree between pods).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The order in which a pod tries the slots: every index of `0..machines` once, ranked by a
/// hash of its identity (the pod UID) and the slot, so that pods arriving together each try
/// the slots in an order of their own instead of all trying slot 0 (or one neighbourhood)
/// first: two pods working from the same stale list rarely want the same free slot.
pub fn probe_order(identity: &str, machines: u32) -> impl Iterator<Item = u32> {
    let mut order: Vec<(u64, u32)> = (0..machines.max(1))
        .map(|m| (fnv1a(&[identity, "\0", &m.to_string()]), m))
        .collect();
    order.sort_unstable();
    order.into_iter().map(|(_, m)| m)
}

/// Where one container's agents sit in the test part: what makes their agent numbers and
/// player ranges unique across all the part's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// m, the pod's slot.
    pub machine_index: u32,
    /// M, the part's machine count.
    pub machines: u32,
    /// Agents of the whole pod (all its containers).
    pub pod_agents: u32,
    /// Agents of this pod in earlier containers.
    pub earlier_agents: u32,
    /// First player number of the test part.
    pub part_player_offset: u64,
    pub players_per_agent: u64,
}

impl Placement {
    /// g of agent `k` of this container: m × agents-per-pod + agents in earlier containers + k.
    pub fn agent_number(&self, k: u32) -> u64 {
        u64::from(self.machine_index) * u64::from(self.pod_agents)
            + u64::from(self.earlier_agents)
            + u64::from(k)
    }

    /// M × agents-per-pod: every agent number of the part is below it.
    pub fn total_agents(&self) -> u64 {
        u64::from(self.machines) * u64::from(self.pod_agents)
    }

    /// First player of agent `k`: it plays `[offset, offset + players_per_agent)`.
    pub fn player_offset(&self, k: u32) -> u64 {
        self.part_player_offset
            .saturating_add(self.agent_number(k).saturating_mul(self.players_per_agent))
    }

    /// The variables agent `k` gets (docs/coordination.md).
    pub fn agent_env(&self, k: u32) -> [(&'static str, String); 5] {
        [
            ("WAVE_MACHINE_INDEX", self.machine_index.to_string()),
            ("WAVE_MACHINES", self.machines.to_string()),
            ("WAVE_AGENT_NUMBER", self.agent_number(k).to_string()),
            ("WAVE_TOTAL_AGENTS", self.total_agents().to_string()),
            ("WAVE_PLAYER_OFFSET", self.player_offset(k).to_string()),
        ]
    }
}

/// A valid DNS label: what the Kubernetes API accepts as a Lease name.
#[cfg(test)]
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn slot_names_are_dns_labels_whatever_the_test_id() {
        for label in [
            "2e9103ae-3268-11ed-b5cf-0242ac110033--p1",
            "UPPER_case.Test--Part/With Spaces",
            "--",
            "-",
            "x--",
            &"a".repeat(300),
            "ünïcødé--🎮",
        ] {
            let part = Part::from_label(label);
            for name in [part.slot_name(0), part.slot_name(479), part.start_name()] {
                assert!(is_dns_label(&name), "{name:?} from {label:?}");
            }
        }
        assert_eq!(
            Part::from_label("2e9103ae-3268-11ed-b5cf-0242ac110033--p1").slot_name(7),
            "wave-2e9103ae-3268-11ed-b5cf-0242ac110033-p1-0051c46ae325-7"
        );
    }

    #[test]
    fn two_test_ids_or_parts_never_share_a_name() {
        let names: BTreeSet<String> = ["Abc", "abc", "abc--x", "abc--X", "ab--c", "a.bc", "abc--y"]
            .into_iter()
            .map(|l| Part::from_label(l).slot_name(0))
            .collect();
        assert_eq!(names.len(), 7, "{names:?}");
    }

    #[test]
    fn label_values_are_kept_when_valid_and_hashed_otherwise() {
        assert_eq!(label_value("p1"), "p1");
        assert_eq!(label_value(""), "");
        assert_eq!(
            label_value("2e9103ae-3268-11ed-b5cf-0242ac110033"),
            "2e9103ae-3268-11ed-b5cf-0242ac110033"
        );
        let hashed = label_value("eu west/1");
        assert!(hashed.starts_with("h-") && hashed.len() == 18, "{hashed}");
        assert_ne!(label_value("-a"), label_value("a-"));
        assert_eq!(
            Part::from_label("t--eu west/1").selector(),
            format!("waveloadtest.io/test-id=t,waveloadtest.io/part={hashed}")
        );
    }

    #[test]
    fn probe_order_visits_every_slot_once_in_an_order_of_the_pods_own() {
        let order: Vec<u32> = probe_order("0e9f8a7b-6c5d-4e3f-8a1b-2c3d4e5f6a7b", 480).collect();
        assert_eq!(order.len(), 480);
        assert_eq!(order.iter().copied().collect::<BTreeSet<_>>().len(), 480);
        let firsts: BTreeSet<u32> = (0..480)
            .map(|i| {
                probe_order(&format!("uid-{i}"), 480)
                    .next()
                    .expect("a first slot")
            })
            .collect();
        assert!(
            firsts.len() > 200,
            "480 pods start at {} distinct slots",
            firsts.len()
        );
        assert_eq!(probe_order("x", 0).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn agent_numbers_and_player_ranges_tile_the_part() {
        // 3 machines × 2 containers × 5 agents, 100 players each, part offset 1000.
        let mut numbers = BTreeSet::new();
        let mut players = Vec::new();
        for m in 0..3 {
            for container in 0..2 {
                let placement = Placement {
                    machine_index: m,
                    machines: 3,
                    pod_agents: 10,
                    earlier_agents: container * 5,
                    part_player_offset: 1000,
                    players_per_agent: 100,
                };
                for k in 0..5 {
                    assert!(numbers.insert(placement.agent_number(k)));
                    assert_eq!(placement.total_agents(), 30);
                    players.push(placement.player_offset(k));
                }
            }
        }
        assert_eq!(numbers, (0..30).collect());
        players.sort_unstable();
        assert_eq!(players, (0..30).map(|g| 1000 + g * 100).collect::<Vec<_>>());
        let env = Placement {
            machine_index: 2,
            machines: 3,
            pod_agents: 10,
            earlier_agents: 5,
            part_player_offset: 0,
            players_per_agent: 100,
        }
        .agent_env(4);
        assert_eq!(
            env.map(|(_, v)| v),
            ["2", "3", "29", "30", "2900"].map(String::from)
        );
    }
}
