//! Rolling restarts of the `wave-webhook` binary under load: two replicas behind a TCP
//! balancer that, like kube-proxy, keeps sending new connections to a terminating replica for
//! 2 s after its SIGTERM; a client posting reviews without pause sees no failed admission.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::captured_review;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use wave_tests::balancer::Balancer;
use wave_tests::tls::{HttpsClient, TlsFiles};
use wave_tests::webhook::WebhookProcess;
use wave_tests::{poll_blocking, wait_for};

/// How long the balancer keeps a terminating replica in rotation (endpoint removal lag).
const ENDPOINT_LAG: Duration = Duration::from_secs(2);

/// The captured review with total-players set, so it is mutated without an API server.
fn review_body() -> Vec<u8> {
    let mut review = captured_review();
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"waveloadtest.io/total-players": "480000"});
    serde_json::to_vec(&review).expect("review serializes")
}

/// What the posting clients saw.
#[derive(Default)]
struct Tally {
    admitted: usize,
    failures: Vec<String>,
}

/// `clients` keep-alive clients, each posting the next review as soon as the last is
/// answered, until `stop`.
fn keep_posting(
    url: String,
    tls: &TlsFiles,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Tally>> {
    let body = bytes::Bytes::from(review_body());
    (0..clients)
        .map(|_| {
            let client = HttpsClient::trusting(&tls.ca);
            let (url, body, stop) = (url.clone(), body.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    match client.post(&url, body.clone()).await {
                        Ok(reply) if reply.status == 200 => {
                            let answer: Value = reply.json();
                            if answer["response"]["allowed"] == true {
                                tally.admitted += 1;
                            } else {
                                tally.failures.push(answer.to_string());
                            }
                        }
                        Ok(reply) => tally.failures.push(format!(
                            "{}: {}",
                            reply.status,
                            String::from_utf8_lossy(&reply.body)
                        )),
                        Err(e) => tally.failures.push(e),
                    }
                }
                tally
            })
        })
        .collect()
}

/// Takes `old` out of service as a Deployment rollout does: SIGTERM, `/readyz` 503 while it
/// still serves, out of the balancer [`ENDPOINT_LAG`] later; returns how many connections the
/// balancer sent it after its SIGTERM.
async fn terminate_behind_lagging_balancer(old: &mut WebhookProcess, balancer: &Balancer) -> usize {
    let before = balancer.connections_to(old.https);
    old.signal(Signal::SIGTERM);
    let readyz = poll_blocking(Duration::from_secs(2), || {
        (old.readyz() == Some(503)).then_some(503)
    });
    assert_eq!(
        readyz,
        Some(503),
        "/readyz must turn 503 at once after SIGTERM:\n{}",
        old.output()
    );
    tokio::time::sleep(ENDPOINT_LAG).await;
    let during_lag = balancer.connections_to(old.https) - before;
    balancer.remove(old.https);
    let status = old.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "exit status {status}:\n{}", old.output());
    during_lag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_a_lagging_balancer_fails_no_admission() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    let start = |name: &str| {
        let server = WebhookProcess::start(&tls, &["--drain", "5s"], &dir.path().join(name));
        server.wait_ready();
        server
    };
    let mut first = start("first.log");
    let mut second = start("second.log");
    let balancer = Balancer::start().await;
    balancer.add(first.https);
    balancer.add(second.https);

    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("https://127.0.0.1:{}/mutate", balancer.addr().port());
    let posters = keep_posting(url, &tls, 4, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The rollout: a replacement for the first replica, then the second replaced.
    let to_first = terminate_behind_lagging_balancer(&mut first, &balancer).await;
    let third = start("third.log");
    balancer.add(third.https);
    let to_second = terminate_behind_lagging_balancer(&mut second, &balancer).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    let mut admitted = 0;
    let mut failures = Vec::new();
    for poster in posters {
        let tally = poster.await.expect("poster task");
        admitted += tally.admitted;
        failures.extend(tally.failures);
    }
    assert!(
        failures.is_empty(),
        "{} failed admissions of {}; first: {:?}",
        failures.len(),
        failures.len() + admitted,
        &failures[..failures.len().min(5)]
    );
    assert!(admitted > 100, "only {admitted} admissions were posted");
    assert!(
        to_first > 0 && to_second > 0,
        "the balancer must have sent new connections to the terminating replicas \
         (first {to_first}, second {to_second})"
    );
    assert_eq!(third.readyz(), Some(200));
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once_without_waiting_for_the_drain() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = TlsFiles::new();
    let mut server =
        WebhookProcess::start(&tls, &["--drain", "10m"], &dir.path().join("webhook.log"));
    server.wait_ready();
    server.signal(Signal::SIGTERM);
    wait_for("/readyz to answer 503", Duration::from_secs(5), || {
        let readyz = server.readyz();
        async move { readyz == Some(503) }
    })
    .await;
    // Still serving during the drain: the HTTPS port answers.
    let client = HttpsClient::trusting(&tls.ca);
    let reply = client
        .post(
            &format!("https://127.0.0.1:{}/mutate", server.https.port()),
            review_body(),
        )
        .await
        .expect("admissions are answered while draining");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["response"]["allowed"], true);

    server.signal(Signal::SIGTERM);
    // Far less than the 10-minute drain: the second signal does not wait for it.
    let status = server.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success(), "exit status {status}");
    assert!(
        server.output().contains("second signal"),
        "{}",
        server.output()
    );
}
