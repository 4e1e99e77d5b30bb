//! Labels, node selectors, volumes, containers, paths and ports that the webhook writes into
//! a pod and the supervisor (or a user's manifest) relies on.

use std::time::Duration;

/// The label that marks a pod as a test machine: `<test-id>` or `<test-id>--<part>`.
pub const TEST_ID_LABEL: &str = "testId";
/// Node label of the OS; also where `waveloadtest.io/os` is read from when not annotated.
pub const OS_SELECTOR: &str = "kubernetes.io/os";
/// Node label of the EC2 instance type.
pub const INSTANCE_TYPE_SELECTOR: &str = "node.kubernetes.io/instance-type";

/// Volume holding the injected `wave-agent` binary.
pub const BIN_VOLUME: &str = "wave-bin";
/// Where [`BIN_VOLUME`] is mounted in every container.
pub const BIN_DIR: &str = "/wave/bin";
/// Volume holding the supervisor's work dir (script, results); survives container restarts.
pub const WORK_VOLUME: &str = "wave-work";
/// Where [`WORK_VOLUME`] is mounted in every container; `WAVE_WORK_DIR`'s default.
pub const WORK_DIR: &str = "/wave/work";
/// The init container that copies the supervisor into [`BIN_VOLUME`].
pub const INSTALL_CONTAINER: &str = "wave-install";

/// First container's metrics port (`WAVE_METRICS_PORT`); container i gets base + i.
pub const METRICS_PORT_BASE: u16 = 9102;
/// First container's StatsD port (`WAVE_STATSD_PORT`); container i gets base + i, because
/// the containers of a pod share its network namespace.
pub const STATSD_PORT_BASE: u16 = 8125;
/// Name of container i's metrics port: `wave-metrics`, then `wave-metrics-<i>`.
pub fn metrics_port_name(index: u32) -> String {
    if index == 0 {
        "wave-metrics".to_string()
    } else {
        format!("wave-metrics-{index}")
    }
}

/// The supervisor's stop timeout when neither the container, the annotation nor the
/// webhook config sets one: agents get this long after SIGTERM, the final upload as long.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// What the grace period needs beyond twice the stop timeout (process exit, the last
/// summary write).
pub const GRACE_MARGIN: Duration = Duration::from_secs(10);

/// The termination grace period a supervisor with this stop timeout needs: the agents'
/// grace, then the final upload, then [`GRACE_MARGIN`].
pub fn grace_period(stop_timeout: Duration) -> Duration {
    stop_timeout.saturating_mul(2).saturating_add(GRACE_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_stop_timeout_needs_fifty_seconds_of_grace() {
        assert_eq!(grace_period(DEFAULT_STOP_TIMEOUT), Duration::from_secs(50));
        assert_eq!(
            grace_period(Duration::from_secs(60)),
            Duration::from_secs(130)
        );
    }

    #[test]
    fn metrics_ports_are_named_by_container_index() {
        assert_eq!(metrics_port_name(0), "wave-metrics");
        assert_eq!(metrics_port_name(3), "wave-metrics-3");
    }
}
