//! `wave-agent`: the supervisor inside every load-test container. It fetches the test
//! script, runs the agents that simulate players, restarts them when they fail, captures
//! their output, uploads their results and exposes metrics for Prometheus (docs/agent-supervisor.md).

pub mod archive;
pub mod cli;
pub mod coordination;
pub mod error_chain;
pub mod install;
pub mod ledger;
pub mod load_metrics;
pub mod logs;
pub mod metrics;
pub mod process;
pub mod procfs;
pub mod reap;
pub mod report;
pub mod resume;
pub mod run;
pub mod script;
pub mod shutdown;
pub mod sketch;
pub mod slots;
pub mod start;
pub mod statsd;
pub mod status;
pub mod store;
pub mod summary;
pub mod supervise;
pub mod upload;
