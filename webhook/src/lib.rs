//! wave's mutating admission webhook: turns every pod labelled `testId` into a sized,
//! configured wave test machine (docs/webhook-reference.md).
//!
//! The pure mutation reads the pod in [`annotations`], changes it in [`mutate`] and writes
//! the JSON Patch in [`patch`] (with [`config`], [`catalog`] and [`resources`]);
//! [`run`] serves it over HTTPS with the owner lookup ([`owners`]), file reloads
//! ([`reload`], [`tls`]) or its own CA ([`self_managed`]) and metrics ([`metrics`]) around it.

pub mod admission;
pub mod annotations;
pub mod body;
pub mod body_rate;
pub mod catalog;
pub mod config;
pub mod denial;
mod errors;
pub mod inject;
pub mod install;
pub mod metrics;
pub mod mutate;
pub mod owners;
pub mod part;
pub mod patch;
mod prune;
pub mod reload;
pub mod resources;
pub mod self_managed;
pub mod server;
pub mod tls;

#[cfg(test)]
mod test_pods;

pub use server::{Limits, ServeError, ServeOptions, Tls, run};
