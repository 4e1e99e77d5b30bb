//! The contract between `wave-webhook` and `wave-agent`, in one place: every label,
//! annotation, environment variable, container and volume name, port base and default the
//! two sides share, and the pure parsers both need. The webhook checks an annotation with
//! the same parser the supervisor later applies to the variable it becomes, so the two
//! cannot disagree about what a value means (docs/webhook-reference.md lists them all).
//!
//! No I/O and no heavy dependencies: this crate is linked into the static musl supervisor.

pub mod annotation;
pub mod env;
pub mod names;
pub mod part;
pub mod threshold;
pub mod value;

pub use annotation::Annotation;
pub use value::{Invalid, closest};
