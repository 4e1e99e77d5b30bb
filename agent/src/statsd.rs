//! The StatsD server of a container's agents (docs/load-metrics.md): UDP on `127.0.0.1:WAVE_STATSD_PORT`
//! and a Unix datagram socket, lines aggregated in-process ([`aggregate`]), exposed on
//! `/metrics` as `wave_load_*` and written every window to `load-metrics.jsonl`.
//!
//! Each socket has its own thread doing blocking reads: datagrams are parsed as they
//! arrive, so the kernel's receive buffer (sized large at bind) only has to absorb bursts.
//! Nothing is dropped silently: lines that are not aggregated are counted by reason, and
//! the datagrams the kernel dropped are read from `/proc/net/udp`.

pub mod aggregate;
pub mod distinct;
pub mod parse;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::load_metrics::{self, SCHEMA_VERSION, Window};
use crate::procfs;
use aggregate::{AggregateConfig, Aggregator, Class, DropReason, SeriesValue};

/// Receive buffer asked of the kernel for the UDP socket: about a second of 500,000 lines/s.
pub const RECEIVE_BUFFER: usize = 16 << 20;

/// Largest datagram read whole; a longer one (only possible on the Unix socket) is dropped.
const MAX_DATAGRAM: usize = 64 * 1024;

/// How often the receive threads look at the stop flag.
const POLL: Duration = Duration::from_millis(100);

/// Where the server listens and how it aggregates.
#[derive(Debug, Clone)]
pub struct StatsdConfig {
    /// UDP port on 127.0.0.1; 0 binds a free one (the log line names it).
    pub port: u16,
    /// Whether the port was asked for (`WAVE_STATSD_PORT`): a default port that is taken
    /// falls back to a free one (the agents are told which), an asked-for one is an error.
    pub port_required: bool,
    /// Path of the Unix datagram socket.
    pub socket: PathBuf,
    pub aggregate: AggregateConfig,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StatsdError {
    #[error("failed to listen for StatsD on UDP 127.0.0.1:{port} (is WAVE_STATSD_PORT taken?)")]
    Udp {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("failed to listen for StatsD on the Unix socket {}", path.display())]
    Unix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to start a StatsD receive thread")]
    Thread(#[source] io::Error),
}

/// A running StatsD server; stops its threads when dropped.
pub struct Statsd {
    aggregator: Arc<Mutex<Aggregator>>,
    udp_address: SocketAddr,
    udp_inode: u64,
    receive_buffer: usize,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Statsd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statsd")
            .field("udp_address", &self.udp_address)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

fn lock(aggregator: &Mutex<Aggregator>) -> MutexGuard<'_, Aggregator> {
    aggregator.lock().unwrap_or_else(|p| p.into_inner())
}

impl Statsd {
    /// Binds both sockets, starts their threads and registers the `wave_load_*` and
    /// `wave_statsd_*` series on `registry`.
    pub fn start(config: StatsdConfig, registry: &mut Registry) -> Result<Statsd, StatsdError> {
        let udp_err = |source| StatsdError::Udp {
            port: config.port,
            source,
        };
        let udp = match UdpSocket::bind((Ipv4Addr::LOCALHOST, config.port)) {
            Ok(udp) => udp,
            Err(err) if !config.port_required && err.kind() == io::ErrorKind::AddrInUse => {
                warn!(
                    "StatsD port {} is taken; the agents get a free one instead",
                    config.port
                );
                UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(udp_err)?
            }
            Err(err) => return Err(udp_err(err)),
        };
        let receive_buffer = size_receive_buffer(&udp, RECEIVE_BUFFER);
        if receive_buffer < RECEIVE_BUFFER {
            warn!(
                "the StatsD receive buffer is {receive_buffer} bytes, not {RECEIVE_BUFFER}: \
                 bursts may be dropped by the kernel (raise net.core.rmem_max on the node, \
                 or give the container CAP_NET_ADMIN)"
            );
        }
        udp.set_read_timeout(Some(POLL)).map_err(udp_err)?;
        let udp_address = udp.local_addr().map_err(udp_err)?;
        let udp_inode = socket_inode(&udp).unwrap_or(0);

        let unix_err = |source| StatsdError::Unix {
            path: config.socket.clone(),
            source,
        };
        match std::fs::remove_file(&config.socket) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(unix_err(err)),
        }
        let unix = UnixDatagram::bind(&config.socket).map_err(unix_err)?;
        unix.set_read_timeout(Some(POLL)).map_err(unix_err)?;

        let aggregator = Arc::new(Mutex::new(Aggregator::new(config.aggregate)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let receive = {
            let (aggregator, stop) = (aggregator.clone(), stop.clone());
            move || receive_loop(|buf| udp.recv(buf), &aggregator, &stop)
        };
        threads.push(spawn("statsd-udp", receive)?);
        let receive = {
            let (aggregator, stop) = (aggregator.clone(), stop.clone());
            move || receive_loop(|buf| unix.recv(buf), &aggregator, &stop)
        };
        threads.push(spawn("statsd-unix", receive)?);

        let statsd = Statsd {
            aggregator,
            udp_address,
            udp_inode,
            receive_buffer,
            socket: config.socket,
            stop,
            threads,
        };
        registry.register_collector(Box::new(StatsdCollector {
            aggregator: statsd.aggregator.clone(),
            udp_inode,
        }));
        info!(
            "StatsD on udp://{udp_address} and unix://{} (receive buffer {receive_buffer} bytes)",
            statsd.socket.display()
        );
        Ok(statsd)
    }

    pub fn udp_address(&self) -> SocketAddr {
        self.udp_address
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The receive buffer the kernel granted the UDP socket, in bytes.
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffer
    }

    /// Datagrams the kernel dropped on the UDP socket so far.
    pub fn kernel_drops(&self) -> Option<u64> {
        procfs::udp_drops(self.udp_inode)
    }

    /// What the agents are told (docs/load-metrics.md): `STATSD_HOST`, `STATSD_PORT`, and the Unix socket
    /// as `WAVE_STATSD_SOCKET`.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        vec![
            ("STATSD_HOST".into(), self.udp_address.ip().to_string()),
            ("STATSD_PORT".into(), self.udp_address.port().to_string()),
            (
                "WAVE_STATSD_SOCKET".into(),
                self.socket.display().to_string(),
            ),
        ]
    }

    /// Takes the window that ends now and, when anything arrived in it, appends it to
    /// `<results>/load-metrics.jsonl`.
    pub fn flush_window(&self, meta: &WindowMeta, start_ms: i64, end_ms: i64) {
        let content = lock(&self.aggregator).take_window();
        if content.lines == 0 && content.gauges.is_empty() {
            return;
        }
        let window = Window {
            v: SCHEMA_VERSION,
            pod: meta.pod.clone(),
            container: meta.container,
            start_ms,
            end_ms,
            agents_running: (meta.agents_running)(),
            relative_error: crate::sketch::RELATIVE_ERROR,
            lines: content.lines,
            dropped: content.dropped,
            counters: content.counters,
            gauges: content.gauges,
            histograms: content.histograms,
            sets: content.sets,
        };
        if let Err(err) = load_metrics::append(&meta.results_dir, &window) {
            warn!("{}", crate::error_chain::ErrorChain(&err));
        }
    }

    /// Writes a window every `length`, aligned to the wall clock, until `stop`; then the
    /// last, partial one, so what arrived before the end is in the file for the final upload.
    pub async fn write_windows(&self, meta: WindowMeta, length: Duration, stop: CancellationToken) {
        let length_ms = i64::try_from(length.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut start_ms = now_ms();
        loop {
            let end_ms = next_boundary(start_ms, length_ms);
            let wait = Duration::from_millis(u64::try_from(end_ms - now_ms()).unwrap_or(0));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => break,
            }
            self.flush_window(&meta, start_ms, end_ms);
            start_ms = end_ms;
        }
        self.flush_window(&meta, start_ms, now_ms().max(start_ms));
    }
}

impl Drop for Statsd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// What a window line says about where it comes from.
pub struct WindowMeta {
    pub pod: String,
    pub container: u32,
    pub results_dir: PathBuf,
    /// Agents of the container running now.
    pub agents_running: Box<dyn Fn() -> u32 + Send + Sync>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The first multiple of `length_ms` after `after_ms`: where the window open at `after_ms`
/// ends, the same instant on every pod.
pub fn next_boundary(after_ms: i64, length_ms: i64) -> i64 {
    (after_ms.div_euclid(length_ms) + 1) * length_ms
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StatsdError> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(body)
        .map_err(StatsdError::Thread)
}

/// Reads datagrams until `stop` and aggregates them.
fn receive_loop(
    mut recv: impl FnMut(&mut [u8]) -> io::Result<usize>,
    aggregator: &Mutex<Aggregator>,
    stop: &AtomicBool,
) {
    // One byte more than the largest datagram kept whole, to tell a cut one.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    while !stop.load(Ordering::Acquire) {
        match recv(&mut buf) {
            Ok(n) if n > MAX_DATAGRAM => {
                lock(aggregator).drop_datagram(&buf[..n], DropReason::Overflow)
            }
            Ok(n) => lock(aggregator).ingest_datagram(&buf[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                warn!("StatsD receive failed: {err}");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Asks for `wanted` bytes of receive buffer, past `net.core.rmem_max` when the process may
/// (CAP_NET_ADMIN); returns what the kernel granted (it reports twice the usable size).
fn size_receive_buffer(socket: &impl AsFd, wanted: usize) -> usize {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if setsockopt(socket, sockopt::RcvBufForce, &wanted).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &wanted);
    }
    getsockopt(socket, sockopt::RcvBuf).map_or(0, |granted| granted / 2)
}

fn socket_inode(socket: &UdpSocket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|m| m.ino())
}

/// Encodes the aggregated series at scrape time.
#[derive(Debug)]
struct StatsdCollector {
    aggregator: Arc<Mutex<Aggregator>>,
    udp_inode: u64,
}

impl Collector for StatsdCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let kernel_drops = procfs::udp_drops(self.udp_inode).unwrap_or(0);
        let agg = lock(&self.aggregator);
        let totals = agg.totals();
        let lines = ConstCounter::new(totals.lines);
        let metric = encoder.encode_descriptor(
            "wave_statsd_lines",
            "StatsD lines received from the agents, dropped ones included",
            None,
            lines.metric_type(),
        )?;
        lines.encode(metric)?;
        let mut family = encoder.encode_descriptor(
            "wave_statsd_dropped_lines",
            "StatsD lines not aggregated, by reason: parse (malformed, or a name taken by another type), cardinality (past WAVE_STATSD_MAX_SERIES), overflow (datagram over 64 KiB), unsupported (DogStatsD events and service checks)",
            None,
            MetricType::Counter,
        )?;
        for reason in DropReason::ALL {
            let labels = [("reason", reason.as_str())];
            ConstCounter::new(totals.dropped[reason as usize])
                .encode(family.encode_family(&labels)?)?;
        }
        let drops = ConstCounter::new(kernel_drops);
        let metric = encoder.encode_descriptor(
            "wave_statsd_kernel_dropped_datagrams",
            "UDP datagrams the kernel dropped before the supervisor read them (receive buffer full), from /proc/net/udp",
            None,
            drops.metric_type(),
        )?;
        drops.encode(metric)?;
        let series = ConstGauge::new(agg.series().len() as i64);
        let metric = encoder.encode_descriptor(
            "wave_statsd_series",
            "Series made from StatsD lines (capped at WAVE_STATSD_MAX_SERIES)",
            None,
            series.metric_type(),
        )?;
        series.encode(metric)?;

        let bounds = &agg.config().buckets;
        for family in agg.families() {
            let name = format!("{}{}", aggregate::PREFIX, family.name);
            let (metric_type, help) = match family.class {
                Class::Counter => (MetricType::Counter, "StatsD counter from the agents"),
                Class::Gauge => (MetricType::Gauge, "StatsD gauge from the agents"),
                Class::Timer => (
                    MetricType::Histogram,
                    "StatsD timer from the agents, in seconds",
                ),
                Class::Histogram => (MetricType::Histogram, "StatsD histogram from the agents"),
                Class::Set => (
                    MetricType::Gauge,
                    "StatsD set from the agents: distinct values in the last load window (WAVE_LOAD_WINDOW)",
                ),
            };
            let mut out = encoder.encode_descriptor(&name, help, None, metric_type)?;
            for &index in &family.series {
                let series = &agg.series()[index];
                let labels: Vec<(&str, &str)> = series
                    .tags
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let mut metric = out.encode_family(&labels)?;
                match &series.value {
                    SeriesValue::Counter { total, .. } => {
                        metric.encode_counter::<NoLabelSet, _, f64>(total, None)?
                    }
                    SeriesValue::Gauge { value, .. } | SeriesValue::Set { last: value, .. } => {
                        metric.encode_gauge(value)?
                    }
                    SeriesValue::Histogram { buckets, sum, .. } => {
                        let rounded: Vec<(f64, u64)> = bounds
                            .iter()
                            .copied()
                            .chain([f64::INFINITY])
                            .zip(buckets.iter().map(|w| w.round() as u64))
                            .collect();
                        let count = rounded.iter().map(|(_, c)| c).sum();
                        metric.encode_histogram::<NoLabelSet>(*sum, count, &rounded, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_boundaries_are_multiples_of_the_length() {
        assert_eq!(next_boundary(0, 10_000), 10_000);
        assert_eq!(next_boundary(9_999, 10_000), 10_000);
        assert_eq!(next_boundary(10_000, 10_000), 20_000);
        assert_eq!(next_boundary(1_700_000_003_210, 10_000), 1_700_000_010_000);
    }

    fn server(dir: &Path) -> (Statsd, Registry) {
        let mut registry = crate::metrics::new_registry("t");
        let statsd = Statsd::start(
            StatsdConfig {
                port: 0,
                port_required: true,
                socket: dir.join("statsd.sock"),
                aggregate: AggregateConfig::default(),
            },
            &mut registry,
        )
        .expect("starts");
        (statsd, registry)
    }

    fn scrape(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
        text
    }

    #[test]
    fn lines_over_udp_and_the_unix_socket_reach_the_exposition() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (statsd, registry) = server(dir.path());
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        udp.send_to(b"req:2|c|#endpoint:login\nlat:250|ms", statsd.udp_address())
            .expect("send");
        let unix = UnixDatagram::unbound().expect("socket");
        unix.send_to(b"req:3|c|#endpoint:login\nplayers:7|g", statsd.socket())
            .expect("send");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = scrape(&registry);
            if text.contains("wave_statsd_lines_total{test_id=\"t\"} 4") {
                break text;
            }
            assert!(std::time::Instant::now() < deadline, "{text}");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            text.contains("wave_load_req_total{test_id=\"t\",endpoint=\"login\"} 5.0"),
            "{text}"
        );
        assert!(
            text.contains("wave_load_players{test_id=\"t\"} 7.0"),
            "{text}"
        );
        assert!(
            text.contains("wave_load_lat_bucket{test_id=\"t\",le=\"0.25\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wave_load_lat_bucket{test_id=\"t\",le=\"0.1\"} 0"),
            "{text}"
        );
        assert!(text.contains("wave_statsd_kernel_dropped_datagrams_total{test_id=\"t\"} 0"));
        assert!(statsd.receive_buffer() > 0);
        let env = statsd.agent_env();
        assert_eq!(env[1].1, statsd.udp_address().port().to_string());
    }
}
