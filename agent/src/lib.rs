//! `wave-agent`: the supervisor inside every load-test container. It fetches the test
//! script, runs the agents that simulate players, restarts them when they fail, captures
//! their output, uploads their results and exposes metrics for Prometheus (SPEC section 2).

pub mod cli;
pub mod logs;
pub mod metrics;
pub mod reap;
pub mod shutdown;
pub mod summary;
pub mod supervise;
pub mod results;
pub mod script;
pub mod store;
