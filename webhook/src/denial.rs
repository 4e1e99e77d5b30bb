//! Why a pod is refused: the annotation or label at fault and what is wrong with it, written
//! for the person reading `kubectl` output (docs/webhook-reference.md, "Denials").

use wave_contract::Annotation;
use wave_contract::names::TEST_ID_LABEL;

/// Why a pod is refused: the annotation (or label) at fault and the problem with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject}: {problem}")]
pub struct Denial {
    /// The annotation, label or field the user has to change, e.g. `waveloadtest.io/agents`.
    pub subject: String,
    /// What is wrong, written for the person reading kubectl output.
    pub problem: String,
}

/// A denial about a `waveloadtest.io/*` annotation.
pub(crate) fn deny(annotation: Annotation, problem: impl Into<String>) -> Denial {
    Denial {
        subject: annotation.key().to_string(),
        problem: problem.into(),
    }
}

/// A denial about a `waveloadtest.io/*` name that is not a known annotation.
pub(crate) fn deny_unknown(name: &str) -> Denial {
    Denial {
        subject: format!("{}{name}", wave_contract::annotation::PREFIX),
        problem: Annotation::unknown(name),
    }
}

/// A denial about the `testId` label.
pub(crate) fn deny_label(problem: impl Into<String>) -> Denial {
    Denial {
        subject: format!("label {TEST_ID_LABEL}"),
        problem: problem.into(),
    }
}
