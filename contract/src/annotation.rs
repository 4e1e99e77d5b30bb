//! The `waveloadtest.io/*` annotations a test pod may carry (docs/webhook-reference.md has a
//! row for each; a test keeps the two in step).

use std::fmt;

use crate::value::closest;

/// Prefix of every annotation wave reads.
pub const PREFIX: &str = "waveloadtest.io/";

macro_rules! annotations {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)+) => {
        /// One `waveloadtest.io/*` annotation.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Annotation {
            $($(#[$doc])* $variant,)+
        }

        impl Annotation {
            /// Every annotation, in the order docs/webhook-reference.md lists them.
            pub const ALL: &'static [Annotation] = &[$(Annotation::$variant,)+];

            /// The name after the prefix, e.g. `total-players`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Annotation::$variant => $name,)+
                }
            }

            /// The whole key, e.g. `waveloadtest.io/total-players`.
            pub const fn key(self) -> &'static str {
                match self {
                    $(Annotation::$variant => concat!("waveloadtest.io/", $name),)+
                }
            }
        }
    };
}

annotations! {
    /// `"false"` opts a labelled pod out; read before any other.
    Inject => "inject",
    /// `TOTAL_PLAYERS`; derived from the owner's replicas when absent.
    TotalPlayers => "total-players",
    PlayersPerAgent => "players-per-agent",
    /// Agents per machine (pod), spread evenly over its containers.
    Agents => "agents",
    MachineType => "machine-type",
    Os => "os",
    Resources => "resources",
    Script => "script",
    Results => "results",
    Supervisor => "supervisor",
    Coordination => "coordination",
    Start => "start",
    StartQuorum => "start-quorum",
    StartTimeout => "start-timeout",
    PlayerOffset => "player-offset",
    /// The supervisor's stop timeout (`WAVE_STOP_TIMEOUT`); sizes the grace period.
    StopTimeout => "stop-timeout",
}

impl Annotation {
    /// The annotation a key under [`PREFIX`] names, by its name after the prefix.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|a| a.name() == name)
    }

    /// The problem with an unknown name under the prefix: a "did you mean" hint, or the list.
    pub fn unknown(name: &str) -> String {
        let names = Self::ALL.iter().map(|a| a.name());
        let hint = closest(name, names.clone())
            .map(|s| format!("did you mean {PREFIX}{s}?"))
            .unwrap_or_else(|| {
                format!("known: {PREFIX}{{{}}}", names.collect::<Vec<_>>().join(","))
            });
        format!("unknown annotation ({hint})")
    }
}

impl fmt::Display for Annotation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_the_prefix_and_the_name_and_names_are_unique() {
        let mut names = std::collections::BTreeSet::new();
        for a in Annotation::ALL {
            assert_eq!(a.key(), format!("{PREFIX}{}", a.name()));
            assert!(names.insert(a.name()), "{} twice", a.name());
            assert_eq!(Annotation::from_name(a.name()), Some(*a));
        }
    }

    #[test]
    fn an_unknown_name_gets_the_closest_known_one() {
        assert_eq!(
            Annotation::unknown("total-player"),
            "unknown annotation (did you mean waveloadtest.io/total-players?)"
        );
        assert!(Annotation::unknown("zzz").contains("known: waveloadtest.io/{inject,"));
    }
}
