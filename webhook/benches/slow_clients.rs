//! A normal admission client while a flood of slow clients trickles bodies, against the
//! release `wave-webhook` binary with its defaults (docs/webhook-server.md, "Slow and hostile
//! clients"):
//!
//! - the flood, a child process of this bench: 100 connections, each announcing a 3 MiB
//!   review over HTTP/1.1 and sending 10 KB every 100 ms (100 KB/s) until the server answers
//!   or closes, then starting over on a new connection;
//! - the measuring client, this process: after 5 s of flood, 100 admissions/s on a fixed
//!   schedule over 4 keep-alive connections for 30 s, latency counted from each request's
//!   scheduled start; a connection whose admission failed is replaced;
//! - the server's peak resident memory (`VmHWM`) idle, and after the flood.
//!
//! The two clients are separate processes so that neither's runtime delays the other. The
//! server is pinned to CPU 0 with `taskset`, both clients to CPU 1.
//!
//! Run with `cargo bench -p wave-webhook --bench slow_clients` (`-- h2`: the measuring client
//! over HTTP/2, as kube-apiserver calls); `WAVE_WEBHOOK_BIN` names another `wave-webhook`
//! binary (an earlier build, to compare).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod https;
mod support;

use https::{
    admit, connect, connector, free_addr, image_environment, ms, peak_rss_kib, pin_self_to_cpu,
    start_server, wait_ready, write_certificates,
};
use support::review_body;

/// Slow connections open at once.
const FLOOD_CONNECTIONS: usize = 100;
/// The body each slow client announces.
const ANNOUNCED: usize = 3 * 1024 * 1024;
/// Each slow client sends this much every [`TICK`]: 100 KB/s.
const CHUNK: usize = 10_000;
const TICK: Duration = Duration::from_millis(100);
/// Flood before the measurement starts.
const RAMP: Duration = Duration::from_secs(5);
const MEASURE: Duration = Duration::from_secs(30);
const MEASURE_RATE: u64 = 100;
const MEASURE_CONNECTIONS: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("flood") {
        flood_main(&args[2..]);
        return;
    }
    let h2 = args.iter().any(|a| a == "h2");
    pin_self_to_cpu(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = write_certificates(dir.path());
    let ca_file = dir.path().join("ca.der");
    std::fs::write(&ca_file, ca.as_ref()).expect("write the CA");
    let https = free_addr();
    let metrics = free_addr();
    let mut server = start_server(dir.path(), https, metrics);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(wait_ready(&connector(&ca, h2), https));
    let idle_kib = peak_rss_kib(server.id());

    let flood_seconds = (RAMP + MEASURE + Duration::from_secs(1)).as_secs();
    let flood = Command::new(std::env::current_exe().expect("this bench's path"))
        .arg("flood")
        .arg(https.to_string())
        .arg(&ca_file)
        .arg(flood_seconds.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the flood process");
    std::thread::sleep(RAMP);
    let measured = runtime.block_on(measure(&connector(&ca, h2), https));
    let flood = flood.wait_with_output().expect("the flood process ends");
    let flooded_kib = peak_rss_kib(server.id());
    let counters = scrape(metrics);
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();

    println!(
        "slow_clients: server pinned to CPU 0 (taskset -c 0), flood and measuring client on CPU 1, separate processes"
    );
    for (name, value) in image_environment() {
        println!("  server environment from Dockerfile.webhook: {name}={value}");
    }
    print!("  {}", String::from_utf8_lossy(&flood.stdout));
    println!(
        "  measuring client over {}, {MEASURE_RATE}/s for {} s on {MEASURE_CONNECTIONS} keep-alive connections, after {} s of flood: {} sent, {} failed; latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        if h2 { "HTTP/2" } else { "HTTP/1.1" },
        MEASURE.as_secs(),
        RAMP.as_secs(),
        measured.histogram.len() + measured.failed,
        measured.failed,
        ms(measured.histogram.value_at_quantile(0.50)),
        ms(measured.histogram.value_at_quantile(0.99)),
        ms(measured.histogram.value_at_quantile(0.999)),
        ms(measured.histogram.max()),
    );
    println!(
        "  server peak RSS (VmHWM): {:.1} MiB idle, {:.1} MiB after the flood",
        idle_kib as f64 / 1024.0,
        flooded_kib as f64 / 1024.0
    );
    for line in counters {
        println!("  server {line}");
    }
}

struct Measured {
    histogram: Histogram<u64>,
    failed: u64,
}

/// Admissions on a fixed schedule of [`MEASURE_RATE`] per second for [`MEASURE`], taken by
/// whichever connection is free; each latency counts from the scheduled start, in
/// microseconds. A failed admission is counted and its connection replaced.
async fn measure(connector: &TlsConnector, addr: SocketAddr) -> Measured {
    let body = Bytes::from(review_body());
    let total = MEASURE_RATE * MEASURE.as_secs();
    let interval = Duration::from_nanos(1_000_000_000 / MEASURE_RATE);
    let start = Instant::now() + Duration::from_millis(50);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut tasks = Vec::new();
    for _ in 0..MEASURE_CONNECTIONS {
        let (connector, rx, body) = (connector.clone(), rx.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut failed = 0;
            let mut sender = None;
            loop {
                let next = rx.lock().await.recv().await;
                let Some(scheduled) = next else { break };
                if sender.is_none() {
                    sender = connect(&connector, addr).await.ok();
                }
                let ok = match sender.as_mut() {
                    Some(sender) => admit(sender, body.clone()).await,
                    None => false,
                };
                let latency = Instant::now().saturating_duration_since(scheduled);
                if ok {
                    histogram
                        .record(latency.as_micros().max(1) as u64)
                        .expect("within bounds");
                } else {
                    failed += 1;
                    sender = None;
                }
            }
            (histogram, failed)
        }));
    }
    // A thread sleeping to each start keeps the schedule (tokio's timer ticks in ms).
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
        let (h, f) = task.await.expect("measuring task");
        histogram.add(&h).expect("same bounds");
        failed += f;
    }
    schedule.join().expect("schedule thread");
    Measured { histogram, failed }
}

/// The server's counters of admissions and of refused bodies, from its metrics port.
fn scrape(metrics: SocketAddr) -> Vec<String> {
    let mut text = String::new();
    let read = std::net::TcpStream::connect(metrics).and_then(|mut stream| {
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        stream.read_to_string(&mut text)
    });
    if let Err(e) = read {
        return vec![format!("metrics not read: {e}")];
    }
    text.lines()
        .filter(|l| {
            l.starts_with("wave_webhook_admissions_total")
                || l.starts_with("wave_webhook_refused_bodies_total")
        })
        .map(str::to_string)
        .collect()
}

/// The flood process: `flood ADDR CA_FILE SECONDS`. Prints one line of what the server
/// answered the slow bodies.
fn flood_main(args: &[String]) {
    let [addr, ca_file, seconds] = args else {
        panic!("usage: slow_clients flood ADDR CA_FILE SECONDS");
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is host:port");
    let ca = CertificateDer::from(std::fs::read(ca_file).expect("CA_FILE is readable"));
    let duration = Duration::from_secs(seconds.parse().expect("SECONDS is a number"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let outcomes = runtime.block_on(flood(connector(&ca, false), addr, duration));
    let mut statuses: Vec<_> = outcomes.iter().filter_map(|o| o.status).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let by_status: Vec<String> = statuses
        .iter()
        .map(|&s| {
            let n = outcomes.iter().filter(|o| o.status == Some(s)).count();
            format!("{s} x{n}")
        })
        .collect();
    let unanswered = outcomes.iter().filter(|o| o.status.is_none()).count();
    let sent: usize = outcomes.iter().map(|o| o.sent).sum();
    let answered: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.status.is_some())
        .map(|o| o.lasted)
        .collect();
    let mean =
        answered.iter().sum::<Duration>() / u32::try_from(answered.len().max(1)).unwrap_or(1);
    println!(
        "flood over HTTP/1.1, {FLOOD_CONNECTIONS} connections at {} KB/s each announcing {} MiB, for {} s: {} bodies ended ({}; {unanswered} closed without an answer), {:.1} MB sent, a body lasted {:.2} s on average",
        CHUNK as u64 * 1000 / TICK.as_millis() as u64 / 1000,
        ANNOUNCED / (1024 * 1024),
        duration.as_secs(),
        outcomes.len(),
        if by_status.is_empty() {
            "no answer".to_string()
        } else {
            by_status.join(", ")
        },
        sent as f64 / 1e6,
        mean.as_secs_f64(),
    );
}

/// What became of one slow body.
struct Outcome {
    /// The status the server answered, `None` if the connection ended without one.
    status: Option<u16>,
    /// Body bytes sent.
    sent: usize,
    /// From the connection to the answer or the end.
    lasted: Duration,
}

/// [`FLOOD_CONNECTIONS`] slow bodies at a time, each replaced when it ends, for `duration`.
async fn flood(connector: TlsConnector, addr: SocketAddr, duration: Duration) -> Vec<Outcome> {
    let deadline = tokio::time::Instant::now() + duration;
    let tasks: Vec<_> = (0..FLOOD_CONNECTIONS)
        .map(|_| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                loop {
                    match tokio::time::timeout_at(deadline, slow_body(&connector, addr)).await {
                        Ok(outcome) => outcomes.push(outcome),
                        Err(_) => return outcomes,
                    }
                }
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.expect("flood task"));
    }
    outcomes
}

/// One connection announcing [`ANNOUNCED`] bytes and trickling them until the server answers
/// or closes.
async fn slow_body(connector: &TlsConnector, addr: SocketAddr) -> Outcome {
    let started = Instant::now();
    let ended = |status, sent| Outcome {
        status,
        sent,
        lasted: started.elapsed(),
    };
    let Ok(tls) = raw_connect(connector, addr).await else {
        // Refused or reset at once: wait a tick rather than spin.
        tokio::time::sleep(TICK).await;
        return ended(None, 0);
    };
    let (reader, mut writer) = tokio::io::split(tls);
    let mut reader = BufReader::new(reader);
    let mut status_line = String::new();
    let mut sent = 0;
    let trickle = async {
        let head = format!(
            "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
             content-length: {ANNOUNCED}\r\n\r\n"
        );
        writer.write_all(head.as_bytes()).await?;
        let chunk = [b' '; CHUNK];
        let mut tick = tokio::time::interval(TICK);
        while sent < ANNOUNCED {
            tick.tick().await;
            let n = CHUNK.min(ANNOUNCED - sent);
            writer.write_all(&chunk[..n]).await?;
            sent += n;
        }
        std::future::pending::<std::io::Result<()>>().await
    };
    let answered = tokio::select! {
        read = reader.read_line(&mut status_line) => read.is_ok(),
        // The server closed while we wrote: its answer may still be readable.
        _ = trickle => reader.read_line(&mut status_line).await.is_ok(),
    };
    let status = answered
        .then(|| status_line.split(' ').nth(1)?.parse().ok())
        .flatten();
    ended(status, sent)
}

async fn raw_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("IP name");
    connector.connect(name, tcp).await
}
