//! wave's integration tests: one binary, a module per flow. Each module starts the real
//! parts it needs (S3 servers, Prometheus, TLS, the workspace binaries) through the
//! `wave_tests` helpers; [`support`] holds what several flows build the same way.

mod support;

mod agent_prometheus;
mod agent_s3;
mod agent_s3_incremental;
mod agent_s3_run;
mod apiserver;
mod architecture;
mod contract;
mod dashboard;
mod e2e;
mod grace_period;
mod manifests;
mod report;
mod slots_file;
mod slots_kube;
mod statsd;
mod supervisor;
mod supervisor_resume;
mod webhook_admission;
mod webhook_binary;
mod webhook_drain;
mod webhook_https;
mod webhook_limits;
mod webhook_owners;
mod webhook_self_managed;
mod webhook_workloads;
