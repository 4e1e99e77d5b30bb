//! Whole admissions over HTTPS against the release `wave-webhook` binary, the server pinned
//! to CPU 0 with `taskset` and this load generator pinned to CPU 1, over keep-alive TLS
//! connections:
//!
//! 1. closed loop: as many admissions per second as the pinned server answers;
//! 2. open loop: a fixed 5,000 admissions/s schedule, latency measured from each request's
//!    scheduled start (so a stalled server cannot hide its queueing delay);
//! 3. the server's peak resident memory (`VmHWM`) after both.
//!
//! Run with `cargo bench -p wave-webhook --bench admission_load` (needs `taskset` and 2 CPUs);
//! `cargo bench -p wave-webhook --bench admission_load -- h2` does the same over HTTP/2
//! (negotiated by ALPN, one request at a time on each of the connections, as above).
//! `WAVE_WEBHOOK_BIN` names another `wave-webhook` binary to load (an earlier build, to
//! compare two versions in one sitting); by default it is the one built with this bench.
//!
//! The server gets the environment `Dockerfile.webhook` sets (`ENV` lines: glibc's allocator
//! tunables), so the figures are those of the binary as the image runs it.
//!
//! Instructions instead of seconds, which this machine's noise does not move: `closed-only`
//! skips the open loop (a server under valgrind cannot keep 5,000/s), and `WAVE_WEBHOOK_WRAP`
//! is put before the server's command, e.g.
//! `WAVE_WEBHOOK_WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out" cargo bench
//! -p wave-webhook --bench admission_load -- closed-only`; the bench prints how many
//! admissions the server answered in all, to divide the instruction count by.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio_rustls::TlsConnector;

mod https;
mod support;

use https::{
    admit, connect, connector, free_addr, image_environment, ms, peak_rss_kib, pin_self_to_cpu,
    start_server, wait_ready, write_certificates,
};
use support::review_body;

const CONNECTIONS: usize = 16;
const WARMUP: Duration = Duration::from_secs(2);
const CLOSED_LOOP: Duration = Duration::from_secs(10);
const OPEN_LOOP: Duration = Duration::from_secs(10);
const OPEN_LOOP_RATE: u64 = 5_000;

fn main() {
    let h2 = std::env::args().any(|a| a == "h2");
    let closed_only = std::env::args().any(|a| a == "closed-only");
    pin_self_to_cpu(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = write_certificates(dir.path());
    let https = free_addr();
    let metrics = free_addr();
    let mut server = start_server(dir.path(), https, metrics);
    let server_pid = server.id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = runtime.block_on(async {
        let connector = connector(&ca, h2);
        wait_ready(&connector, https).await;
        let body = Bytes::from(review_body());
        let (warmup, _) = closed_loop(&connector, https, body.clone(), WARMUP).await;
        let cpu_before = cpu_seconds(server_pid);
        let (count, elapsed) = closed_loop(&connector, https, body.clone(), CLOSED_LOOP).await;
        let cpu = cpu_seconds(server_pid).minus(cpu_before);
        let open = if closed_only {
            None
        } else {
            Some(open_loop(&connector, https, body, OPEN_LOOP_RATE, OPEN_LOOP).await)
        };
        (warmup, count, elapsed, cpu, open)
    });
    let (warmup, count, elapsed, cpu, open) = result;
    let hwm = peak_rss_kib(server.id());
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();

    println!(
        "admission_load over {}: server pinned to CPU 0 (taskset -c 0), client on CPU 1",
        if h2 { "HTTP/2" } else { "HTTP/1.1" }
    );
    for (name, value) in image_environment() {
        println!("  server environment from Dockerfile.webhook: {name}={value}");
    }
    println!(
        "  body: the captured pod CREATE review with waveloadtest.io/total-players (answered with a patch)"
    );
    println!(
        "  closed loop, {CONNECTIONS} keep-alive connections: {count} admissions in {:.1} s = {:.0} admissions/s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
    let total = cpu.user + cpu.system;
    println!(
        "  server CPU time in the closed loop: {total:.2} s ({:.0}% of CPU 0), {:.1} us per admission ({:.1} user, {:.1} kernel) = {:.0} admissions per CPU-second",
        100.0 * total / elapsed.as_secs_f64(),
        1e6 * total / count as f64,
        1e6 * cpu.user / count as f64,
        1e6 * cpu.system / count as f64,
        count as f64 / total
    );
    if let Some(open) = open {
        println!(
            "  open loop at {OPEN_LOOP_RATE}/s for {} s: {} sent, {} failed; latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            OPEN_LOOP.as_secs(),
            open.histogram.len() + open.failed,
            open.failed,
            ms(open.histogram.value_at_quantile(0.50)),
            ms(open.histogram.value_at_quantile(0.99)),
            ms(open.histogram.value_at_quantile(0.999)),
            ms(open.histogram.max()),
        );
        println!(
            "  admissions answered in all (warm-up, closed and open loops): {}",
            warmup + count + open.histogram.len()
        );
    } else {
        println!(
            "  admissions answered in all (warm-up and closed loop): {}",
            warmup + count
        );
    }
    println!("  server peak RSS (VmHWM): {:.1} MiB", hwm as f64 / 1024.0);
}

/// Every connection sends its next request as soon as the previous answer is read.
async fn closed_loop(
    connector: &TlsConnector,
    addr: SocketAddr,
    body: Bytes,
    duration: Duration,
) -> (u64, Duration) {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..CONNECTIONS {
        let mut sender = connect(connector, addr)
            .await
            .unwrap_or_else(|e| panic!("connect {i} after {:?}: {e}", start.elapsed()));
        let (count, body) = (count.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                assert!(admit(&mut sender, body.clone()).await, "admission failed");
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("load task");
    }
    (count.load(Ordering::Relaxed), start.elapsed())
}

struct OpenLoop {
    histogram: Histogram<u64>,
    failed: u64,
}

/// Requests start on a fixed schedule of `rate` per second over the connections, whatever
/// the server's pace; each latency counts from the scheduled start, in microseconds.
async fn open_loop(
    connector: &TlsConnector,
    addr: SocketAddr,
    body: Bytes,
    rate: u64,
    duration: Duration,
) -> OpenLoop {
    let total = rate * duration.as_secs();
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now() + Duration::from_millis(50);
    // Whichever connection is free takes the next scheduled request.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut sender = connect(connector, addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let rx = rx.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut failed = 0;
            loop {
                let next = rx.lock().await.recv().await;
                let Some(scheduled) = next else { break };
                let ok = admit(&mut sender, body.clone()).await;
                let latency = Instant::now().saturating_duration_since(scheduled);
                if ok {
                    histogram
                        .record(latency.as_micros().max(1) as u64)
                        .expect("within bounds");
                } else {
                    failed += 1;
                }
            }
            (histogram, failed)
        }));
    }
    // tokio's timer ticks in milliseconds, which would send the requests in bursts of five;
    // a thread sleeping to each start (nanosleep, tens of microseconds late at worst) keeps
    // the schedule.
    let schedule = std::thread::spawn(move || {
        for i in 0..total {
            let scheduled = start + interval * i as u32;
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            tx.send(scheduled).expect("workers are running");
        }
    });
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut failed = 0;
    for task in tasks {
        let (h, f) = task.await.expect("load task");
        histogram.add(&h).expect("same bounds");
        failed += f;
    }
    schedule.join().expect("schedule thread");
    OpenLoop { histogram, failed }
}

/// CPU time of a process, in seconds.
#[derive(Clone, Copy)]
struct Cpu {
    user: f64,
    system: f64,
}

impl Cpu {
    fn minus(self, earlier: Cpu) -> Cpu {
        Cpu {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// User and system CPU time of `pid` so far.
fn cpu_seconds(pid: u32) -> Cpu {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server running");
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat has a command name")
        .1
        .split_whitespace()
        .collect();
    // Linux reports these in USER_HZ, 100 on every supported architecture.
    Cpu {
        user: fields[11].parse::<f64>().expect("utime") / 100.0,
        system: fields[12].parse::<f64>().expect("stime") / 100.0,
    }
}
