//! wave's mutating admission webhook: turns `testId`-labelled pods into sized test machines.

pub mod catalog;
pub mod config;
pub mod inject;
pub mod mutate;
pub mod resources;
