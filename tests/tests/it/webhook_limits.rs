//! Slow and hostile clients against the `wave-webhook` binary: bodies that trickle get 408
//! and hold only what they sent, bodies below the config's minimum rate are cut with 408
//! over either HTTP version, the API server's own reviews are still answered meanwhile, and
//! connections past the bound wait in the backlog.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::captured_review;
use bytes::Bytes;
use futures::SinkExt;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wave_tests::http_get;
use wave_tests::tls::{HttpsClient, TestCa, TlsFiles, client_config};
use wave_tests::webhook::WebhookProcess;

/// The manifest's memory limit for the webhook container.
const MEMORY_LIMIT_KIB: u64 = 128 * 1024;

fn connector(ca: &TestCa) -> TlsConnector {
    connector_offering(ca, &[])
}

/// A client trusting `ca` that offers these ALPN protocols.
fn connector_offering(ca: &TestCa, protocols: &[&[u8]]) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der().clone()).expect("test CA is a root");
    let mut config = (*client_config(roots)).clone();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(std::sync::Arc::new(config))
}

async fn connect(connector: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    connector
        .connect(ServerName::try_from("127.0.0.1").expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

/// Announces a 3 MiB review, sends its first `burst` bytes at once, then 1 KiB every 100 ms
/// (what a slow or stalled client does: the body never completes);
/// returns the status the server answered with (0 if the connection ended without one).
async fn slow_body(connector: TlsConnector, addr: SocketAddr, burst: usize) -> u16 {
    let mut tls = connect(&connector, addr).await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        3 * 1024 * 1024
    );
    if tls.write_all(head.as_bytes()).await.is_err()
        || tls.write_all(&vec![b' '; burst]).await.is_err()
    {
        return 0;
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        tokio::select! {
            read = tls.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buffer[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if tls.write_all(&[b' '; 1024]).await.is_err() {
                    // The server may close while we write; its answer is still readable.
                    let _ = tls.read_to_end(&mut answer).await;
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn review_body() -> Vec<u8> {
    let mut review = captured_review();
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"waveloadtest.io/total-players": "480000"});
    serde_json::to_vec(&review).expect("review serializes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_trickling_bodies_get_408_while_reviews_are_answered_within_the_memory_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    let server = WebhookProcess::start(&tls, &[], &dir.path().join("webhook.log"));
    server.wait_ready();
    let idle_kib = server.peak_rss_kib();

    let connector = connector(&tls.ca);
    let slow: Vec<_> = (0..100)
        .map(|_| tokio::spawn(slow_body(connector.clone(), server.https, 64 * 1024)))
        .collect();

    // A well-behaved client keeps posting while the slow ones hold their connections open.
    let client = HttpsClient::trusting(&tls.ca);
    let url = format!("https://127.0.0.1:{}/mutate", server.https.port());
    let body = bytes::Bytes::from(review_body());
    let mut latencies = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let sent = Instant::now();
        let reply = client
            .post(&url, body.clone())
            .await
            .expect("the normal client is answered while slow bodies trickle");
        latencies.push(sent.elapsed());
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["response"]["allowed"], true);
    }

    let mut statuses = Vec::new();
    for task in slow {
        statuses.push(task.await.expect("slow client task"));
    }
    let peak_kib = server.peak_rss_kib();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    println!(
        "normal client: {} reviews, p50 {:?}, p99 {p99:?}; webhook VmHWM {} KiB idle, {peak_kib} KiB with 100 slow bodies",
        latencies.len(),
        latencies[latencies.len() / 2],
        idle_kib,
    );
    assert!(
        statuses.iter().all(|&s| s == 408),
        "every trickling body gets 408: {statuses:?}"
    );
    assert!(
        peak_kib < MEMORY_LIMIT_KIB,
        "peak RSS {peak_kib} KiB is over the 128 MiB limit"
    );
}

#[tokio::test]
async fn bodies_over_the_budget_wait_then_get_503_and_the_budget_comes_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    // The budget alone: no minimum rate cuts the bodies that hold it.
    let config = config_file(dir.path(), "body-min-rate:\n  bytes-per-second: 0\n");
    // The smallest budget, 6 MiB (twice the largest body): eight bodies of 1.1 MiB overfill it.
    let server = WebhookProcess::start(
        &tls,
        &[
            "--body-budget",
            "6291456",
            "--body-timeout",
            "3s",
            "--config",
            config.to_str().expect("UTF-8 path"),
        ],
        &dir.path().join("webhook.log"),
    );
    server.wait_ready();
    let connector = connector(&tls.ca);
    let slow: Vec<_> = (0..8)
        .map(|_| tokio::spawn(slow_body(connector.clone(), server.https, 1100 * 1024)))
        .collect();
    let mut statuses = Vec::new();
    for task in slow {
        statuses.push(task.await.expect("slow client task"));
    }
    statuses.sort_unstable();
    assert!(
        statuses.contains(&503) && statuses.iter().all(|&s| s == 408 || s == 503),
        "bodies past the budget get 503, the others 408: {statuses:?}"
    );
    // Every body's share was given back: a normal review is answered at once.
    let client = HttpsClient::trusting(&tls.ca);
    let reply = client
        .post(
            &format!("https://127.0.0.1:{}/mutate", server.https.port()),
            review_body(),
        )
        .await
        .expect("answered");
    assert_eq!(reply.status, 200);
}

/// A config file in `dir` with `yaml`.
fn config_file(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).expect("write the config");
    path
}

/// A minimum rate of 64 KiB in every 1 s after a 1 s grace, and a whole-body deadline of 10
/// minutes: a body cut before then was cut for its rate.
const MIN_RATE_ONLY: &str =
    "body-min-rate:\n  grace: 1s\n  bytes-per-second: 65536\n  window: 1s\n";

fn start_with_min_rate(tls: &TlsFiles, dir: &Path) -> WebhookProcess {
    let config = config_file(dir, MIN_RATE_ONLY);
    let server = WebhookProcess::start(
        tls,
        &[
            "--body-timeout",
            "10m",
            "--config",
            config.to_str().expect("UTF-8 path"),
        ],
        &dir.join("webhook.log"),
    );
    server.wait_ready();
    server
}

/// The value of `series` on the webhook's metrics port.
fn sample(server: &WebhookProcess, series: &str) -> Option<f64> {
    let metrics = http_get(server.metrics.port(), "/metrics")?;
    metrics
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

const TOO_SLOW: &str = "wave_webhook_refused_bodies_total{reason=\"too_slow\"}";
const TIMED_OUT: &str = "wave_webhook_refused_bodies_total{reason=\"timed_out\"}";

#[tokio::test]
async fn an_http1_body_below_the_minimum_rate_is_cut_with_408_while_a_review_is_admitted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    let server = start_with_min_rate(&tls, dir.path());
    assert_eq!(sample(&server, TOO_SLOW), Some(0.0));

    // 1 KiB every 100 ms, 10 KiB/s, against the 64 KiB/s of the config.
    let slow = tokio::spawn(slow_body(connector(&tls.ca), server.https, 0));
    let client = HttpsClient::trusting(&tls.ca);
    let reply = client
        .post(
            &format!("https://127.0.0.1:{}/mutate", server.https.port()),
            review_body(),
        )
        .await
        .expect("the normal client is answered");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["response"]["allowed"], true);

    assert_eq!(slow.await.expect("slow client task"), 408);
    assert_eq!(sample(&server, TOO_SLOW), Some(1.0), "{}", server.output());
    assert_eq!(sample(&server, TIMED_OUT), Some(0.0));
    assert_eq!(
        sample(&server, "wave_webhook_admissions_total{outcome=\"error\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_http2_stream_below_the_minimum_rate_is_cut_with_408_while_a_review_on_the_same_connection_is_admitted()
 {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    let server = start_with_min_rate(&tls, dir.path());

    // One HTTP/2 connection, as kube-apiserver multiplexes its calls over one.
    let stream = connect(&connector_offering(&tls.ca, &[b"h2"]), server.https).await;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    let connection = tokio::spawn(connection);
    let request = |body| {
        http::Request::post("https://127.0.0.1/mutate")
            .header("content-type", "application/json")
            .body(body)
            .expect("request")
    };

    let (mut pieces, body) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let slow = tokio::spawn(
        sender
            .clone()
            .send_request(request(StreamBody::new(body).boxed())),
    );
    let trickle = tokio::spawn(async move {
        // 1 KiB every 100 ms until the server stops reading.
        while pieces
            .send(Ok(Frame::data(Bytes::from(vec![b' '; 1024]))))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let reply = sender
        .clone()
        .send_request(request(Full::new(Bytes::from(review_body())).boxed()))
        .await
        .expect("the review on the same connection is answered");
    assert_eq!(reply.status(), 200);
    let answer = reply.into_body().collect().await.expect("body").to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
    assert_eq!(answer["response"]["allowed"], true);

    let cut = slow
        .await
        .expect("slow stream task")
        .expect("the slow stream is answered");
    assert_eq!(cut.status(), 408);
    let status = cut.into_body().collect().await.expect("body").to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&status).expect("a Status JSON");
    assert_eq!(status["reason"], "Timeout");
    let message = status["message"].as_str().expect("a message");
    assert!(
        message.contains("slower than 65536 bytes/s"),
        "the message says why: {message}"
    );
    assert_eq!(sample(&server, TOO_SLOW), Some(1.0), "{}", server.output());
    // Only the stream was cut: the connection still carries reviews.
    let after = sender
        .clone()
        .send_request(request(Full::new(Bytes::from(review_body())).boxed()))
        .await
        .expect("a review after the cut, on the same connection");
    assert_eq!(after.status(), 200);
    trickle.abort();
    connection.abort();
}

#[tokio::test]
async fn connections_past_the_bound_wait_until_one_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    let server = WebhookProcess::start(
        &tls,
        &["--max-connections", "2"],
        &dir.path().join("webhook.log"),
    );
    server.wait_ready();
    let connector = connector(&tls.ca);
    let first = connect(&connector, server.https).await;
    let _second = connect(&connector, server.https).await;
    let third = tokio::spawn({
        let connector = connector.clone();
        let addr = server.https;
        async move { connect(&connector, addr).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served past --max-connections 2"
    );
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(20), third)
        .await
        .expect("the third connection is served once the first closed")
        .expect("task");
    drop(third);
}

/// The webhook's deadline for a request's headers, which also bounds an idle connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads until the server closes the connection, or `within` passes; true if it closed.
async fn closed_within(mut tls: TlsStream<TcpStream>, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let read_to_end = async {
        loop {
            match tls.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    let server = WebhookProcess::start(&tls, &[], &dir.path().join("webhook.log"));
    server.wait_ready();
    // One connection offers no ALPN protocol, one http/1.1 and one h2; none sends a byte after
    // the handshake (no request, no HTTP/2 preface), as a stalled or hostile client would not.
    let silent_without_alpn = connect(&connector(&tls.ca), server.https).await;
    let silent_http1 = connect(&connector_offering(&tls.ca, &[b"http/1.1"]), server.https).await;
    let silent_h2 = connect(&connector_offering(&tls.ca, &[b"h2"]), server.https).await;
    assert_eq!(
        silent_h2.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the webhook chose HTTP/2 for the client offering h2"
    );
    let within = HEADER_TIMEOUT + Duration::from_secs(15);
    let (without_alpn, http1, h2) = tokio::join!(
        closed_within(silent_without_alpn, within),
        closed_within(silent_http1, within),
        closed_within(silent_h2, within)
    );
    assert!(
        without_alpn,
        "a connection without ALPN that sent nothing was still open after {within:?}"
    );
    assert!(
        http1,
        "an http/1.1 connection that sent nothing was still open after {within:?}"
    );
    assert!(
        h2,
        "an h2 connection that never sent its preface was still open after {within:?}"
    );
}
