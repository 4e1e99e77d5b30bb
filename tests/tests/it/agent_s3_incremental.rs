//! Results that cost one copy (docs/agent-storage.md on real S3 servers: a file growing across
//! many syncs is extended in the store instead of being sent again, a SIGTERM in the middle
//! of a large upload finishes it without starting over, and a store that refuses writes is
//! reported once and retried less and less often. What went over the wire is counted by a
//! proxy in front of the server, not by the uploader.
//!
//! The process tests need the workspace binaries: `cargo build --workspace --bins` first.

use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use prometheus_client::registry::Registry;
use wave_agent::store::MIN_PART_SIZE;
use wave_agent::upload::{UploadMetrics, Uploader};
use wave_tests::process::Running;
use wave_tests::proxy::CountingProxy;
use wave_tests::s3::{Garage, S3Access, S3sFs};
use wave_tests::workspace_bin;

const KIB: usize = 1024;
const MIB: u64 = 1024 * 1024;

/// Bytes that do not compress and differ per `seed`.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text
}

/// A log growing by 512 KiB between syncs up to 12 MiB, then rewritten. After every sync
/// the stored object is a complete prefix of the file; below the 5 MiB minimum part size
/// the file goes up whole, but only when it has grown fourfold (or crossed 5 MiB), and from
/// there on only the new bytes go over the wire (plus the requests' headers).
async fn a_growing_file_is_extended_not_sent_again(s3: &S3Access) {
    let proxy = CountingProxy::start(s3.address());
    let through_proxy = s3.with(Some(&proxy.endpoint()), None);
    let work = tempfile::tempdir().expect("temp dir");
    let results = work.path().join("results");
    fs::create_dir_all(results.join("agent-0")).expect("mkdir");
    let mut registry = Registry::default();
    let mut uploader = Uploader::new(
        through_proxy.store().await,
        &results,
        Uploader::destination(&s3.url("results/grow/"), "pod-g", 0),
        UploadMetrics::register(&mut registry),
    );
    let key = "results/grow/pod-g/c0/agent-0/stdout.log";
    let path = results.join("agent-0/stdout.log");
    let mut log = fs::File::create(&path).expect("create");
    let mut written: Vec<u8> = Vec::new();
    let (mut whole_phase, mut extension_sent, mut extension_new) = (0u64, 0u64, 0u64);
    let mut stored_sizes = Vec::new();
    let mut stored_len = 0u64;
    for round in 0..24 {
        let chunk = pseudo_random(512 * KIB, round);
        log.write_all(&chunk).expect("append");
        written.extend_from_slice(&chunk);
        let before = proxy.sent();
        uploader.sync().await.expect("sync");
        let sent = proxy.sent() - before;
        let stored = s3.get_unvalidated(key).await;
        assert!(
            written.starts_with(&stored),
            "round {round}: the stored object is not a prefix of the file"
        );
        if stored_len < MIN_PART_SIZE {
            whole_phase += sent;
        } else {
            extension_sent += sent;
            extension_new += stored.len() as u64 - stored_len;
        }
        stored_len = stored.len() as u64;
        stored_sizes.push(stored_len / (512 * KIB as u64));
    }
    assert_eq!(
        stored_sizes,
        [
            1, 1, 1, 4, 4, 4, 4, 4, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24
        ],
        "stored size after each sync, in 512 KiB"
    );
    assert!(s3.get_unvalidated(key).await == written, "stored whole");
    assert!(
        extension_sent as f64 <= 1.1 * extension_new as f64,
        "extensions sent {extension_sent} bytes for {extension_new} new bytes"
    );
    // 0.5 + 2 + 5 MiB sent whole.
    assert!(
        whole_phase as f64 <= 1.1 * (15 * 512 * KIB) as f64,
        "the whole sends below 5 MiB cost {whole_phase} bytes"
    );
    let total = proxy.sent();
    assert!(
        total as f64 <= 1.1 * written.len() as f64 + whole_phase as f64,
        "{total} bytes sent for a {} byte file",
        written.len()
    );
    let text = metrics_text(&registry);
    assert!(
        text.contains(&format!(
            "wave_results_uploaded_bytes_total {}",
            (1 + 4 + 10 + 14) * 512 * KIB
        )),
        "the counter agrees with what was stored: {text}"
    );

    // Rewritten (same inode, different start, longer): sent whole, stored as it is now.
    drop(log);
    let mut rewritten = pseudo_random(13 * MIB as usize, 99);
    rewritten[..3].copy_from_slice(b"new");
    fs::write(&path, &rewritten).expect("rewrite");
    let before = proxy.sent();
    uploader.sync().await.expect("sync");
    assert!(
        proxy.sent() - before >= rewritten.len() as u64,
        "sent whole"
    );
    assert!(
        s3.get_unvalidated(key).await == rewritten,
        "the rewritten file is stored as it is"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_growing_file_is_extended_not_sent_again_on_s3s_fs() {
    let s3 = S3sFs::start().await;
    a_growing_file_is_extended_not_sent_again(&s3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_growing_file_is_extended_not_sent_again_on_garage() {
    let garage = Garage::start().await;
    a_growing_file_is_extended_not_sent_again(&garage).await;
}

/// `wave-agent run` with one agent running `script`, results every 200 ms to `s3` through
/// `endpoint`; its output goes to `<work>.log`.
fn start_supervisor(
    s3: &S3Access,
    endpoint: &str,
    work: &Path,
    script: &str,
    extra: &[(&str, &str)],
) -> Running {
    fs::create_dir_all(work).expect("work dir");
    let run = work.with_extension("run");
    fs::write(&run, script).expect("write the agent script");
    let mut command = Command::new(workspace_bin("wave-agent"));
    command
        .arg("run")
        .envs(s3.agent_env())
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("TEST_ID", "t-inc")
        .env("POD_NAME", "pod-i")
        .env("WAVE_CONTAINER_INDEX", "0")
        .env("WAVE_AGENTS", "1")
        .env("PLAYERS_PER_AGENT", "1")
        .env("WAVE_WORK_DIR", work)
        .env("WAVE_RESULTS_URL", s3.url("results/t-inc/").to_string())
        .env("WAVE_METRICS_PORT", "0")
        .env("WAVE_UPLOAD_INTERVAL", "200ms")
        .env("WAVE_STOP_TIMEOUT", "30s")
        .envs(extra.iter().copied())
        .arg("--")
        .arg("sh")
        .arg(&run);
    Running::spawn(&mut command, work.with_extension("log"))
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

/// SIGTERM while a 200 MiB result file is half-way up: the final flush goes on with the
/// multipart upload under way, so the server receives each of its 13 parts once (give or
/// take a part the SDK retried) and about 200 MiB in all (starting over would send half of
/// it again).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_half_way_through_a_200_mib_upload_finishes_it_without_resending_parts() {
    let s3 = S3sFs::start().await;
    // 40 MiB/s: the upload takes about 5 s, long enough to be caught half-way.
    let proxy = CountingProxy::start_throttled(s3.address(), Some(40 * MIB));
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    // Written beside the results and moved in at once, so the first sync sees it whole.
    let script = "head -c 209715200 /dev/urandom > big.tmp\n\
                  mv big.tmp \"$WAVE_OUTPUT_DIR/big.bin\"\nexec sleep 600\n";
    let mut agent = start_supervisor(&s3, &proxy.endpoint(), &work, script, &[]);
    let started = Instant::now();
    while proxy.sent() < 100 * MIB {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the upload did not get half-way:\n{}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(proxy.sent() < 190 * MIB, "caught half-way");
    signal::kill(agent.pid(), Signal::SIGTERM).expect("SIGTERM the supervisor");
    let status = agent.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}:\n{}", agent.output());

    let local = fs::read(work.join("results/agent-0/big.bin")).expect("local file");
    let stored = s3.get("results/t-inc/pod-i/c0/agent-0/big.bin").await;
    assert_eq!(stored.len(), local.len(), "{}", agent.output());
    assert_eq!(hash(&stored), hash(&local), "stored byte for byte");
    // Starting over would send the 6 or more parts finished before SIGTERM again (20 or
    // more in all); the SDK may retry a single part that stalled on a loaded machine.
    let parts = proxy.parts();
    assert!(
        parts <= 15,
        "{parts} part uploads for a 13-part file: finished parts were sent again\n{}",
        agent.output()
    );
    let sent = proxy.sent();
    assert!(
        sent as f64 <= 1.1 * (200 * MIB) as f64,
        "{sent} bytes sent for 200 MiB of results"
    );
}

/// A key that may read the bucket but not write to it: the refusal is logged once with what
/// to fix, counted as AccessDenied, and retried after 2 s, 4 s, … instead of at every
/// 200 ms sync; the test still runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upload_is_logged_once_counted_by_reason_and_retried_with_backoff() {
    let garage = Garage::start().await;
    let (id, secret) = garage.read_only_key();
    let read_only = garage.with(None, Some((&id, &secret)));
    let proxy = CountingProxy::start(garage.address());
    let tmp = tempfile::tempdir().expect("temp dir");
    let work = tmp.path().join("work");
    let script = "echo result > \"$WAVE_OUTPUT_DIR/result.txt\"\nexec sleep 600\n";
    let mut agent = start_supervisor(
        &read_only,
        &proxy.endpoint(),
        &work,
        script,
        &[("WAVE_STOP_TIMEOUT", "3s")],
    );
    let port = agent.metrics_port(Duration::from_secs(30));
    let metric = |text: &str, reason: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("wave_results_upload_failures_total{")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let scrape = || {
        wave_tests::http_get(port, "/metrics")
            .map(|r| r.body)
            .unwrap_or_default()
    };
    let started = Instant::now();
    while metric(&scrape(), "AccessDenied").unwrap_or(0) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no refusal counted:\n{}",
            agent.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The files of the first sync that were already on their way fail too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let first_refusal = Instant::now();
    let refused_at_first = metric(&scrape(), "AccessDenied").expect("the series exists");
    let requests_at_first = proxy.requests();
    // At 200 ms a sync, 7 s are 35 syncs (each sending every file again). With 2 s, then
    // 4 s between retries, and one file per retry, they are 1 to 3 requests.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let text = scrape();
    let retried = metric(&text, "AccessDenied").expect("the series exists") - refused_at_first;
    assert!(
        (1..=3).contains(&retried),
        "{retried} refused retries in the {:?} after the first refusal: {text}",
        first_refusal.elapsed()
    );
    assert_eq!(metric(&text, "NoSuchBucket"), Some(0), "{text}");
    let requests = proxy.requests() - requests_at_first;
    assert!(
        requests <= 3,
        "{requests} requests in the 7 s after the first refusal"
    );
    let output = agent.output();
    let lines: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("refuses uploads"))
        .collect();
    assert_eq!(lines.len(), 1, "one log line for the cause:\n{output}");
    assert!(lines[0].contains("AccessDenied"), "{}", lines[0]);
    assert!(
        lines[0].contains("s3:PutObject"),
        "says what to fix: {}",
        lines[0]
    );
    assert!(agent.try_wait().is_none(), "the test goes on:\n{output}");
    signal::kill(agent.pid(), Signal::SIGINT).expect("stop");
    agent.wait(Duration::from_secs(30)).await;
}
