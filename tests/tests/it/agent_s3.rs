//! The supervisor's storage against real S3 servers (s3s-fs, Garage) with the real
//! aws-sdk-s3: script fetch (prefix, .tar.gz, .zip, hostile archives), result uploads
//! (multipart, outages) and the errors a user sees.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use wave_agent::error_chain::ErrorChain;
use wave_agent::script::{self, ScriptError, ScriptMetrics};
use wave_agent::store::{CutOff, S3Options, Store, StoreError, UploadRequest};
use wave_agent::upload::{UploadMetrics, Uploader};
use wave_tests::s3::{Garage, S3sFs};

const MIB: usize = 1024 * 1024;

/// Bytes that do not compress and differ per `seed`, so a mixed-up part shows.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder);
    let tar = builder.into_inner().expect("tar in memory");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip in memory");
    gz.finish().expect("gzip in memory")
}

fn file_entry(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_path(path).expect("a safe path");
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).expect("append");
}

/// An entry written byte for byte, as a hostile archive carries it (the tar builder itself
/// refuses `..` and absolute names).
fn raw_entry(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_cksum();
    builder.append(&header, data).expect("append");
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

async fn fetch_into(
    s3: &S3sFs,
    key: &str,
    work: &Path,
) -> Result<script::FetchedScript, ScriptError> {
    let store = s3.store().await;
    script::fetch(
        &store,
        &s3.url(key),
        &work.join("script"),
        &ScriptMetrics::default(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn script_prefix_lands_with_nested_paths_and_run_made_executable() {
    let s3 = S3sFs::start().await;
    s3.put("scripts/t1/run", "#!/bin/sh\necho playing\n").await;
    s3.put("scripts/t1/levels/1/map.json", "{\"level\":1}")
        .await;
    s3.put("scripts/t1/levels/", "").await; // a console's folder marker
    s3.put("scripts/t10/other", "not part of t1").await;
    let work = tempfile::tempdir().expect("temp dir");
    let mut registry = Registry::default();
    let metrics = ScriptMetrics::register(&mut registry);
    let fetched = script::fetch(
        &s3.store().await,
        &s3.url("scripts/t1/"),
        &work.path().join("script"),
        &metrics,
    )
    .await
    .expect("the script is fetched");
    let dir = work.path().join("script");
    assert_eq!(fetched.objects, 2);
    assert_eq!(
        fs::read(dir.join("levels/1/map.json")).expect("nested"),
        b"{\"level\":1}"
    );
    assert_eq!(mode(&dir.join("run")) & 0o111, 0o111, "run is executable");
    assert!(!dir.join("other").exists() && !dir.join("levels/1/other").exists());
    let out = std::process::Command::new(dir.join("run"))
        .output()
        .expect("run runs");
    assert_eq!(out.stdout, b"playing\n");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(&format!("wave_script_bytes {}", fetched.bytes)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn script_tar_gz_is_unpacked_keeping_its_modes() {
    let s3 = S3sFs::start().await;
    let archive = tar_gz(|b| {
        file_entry(b, "run", 0o755, b"#!/bin/sh\necho from-archive\n");
        file_entry(b, "data/secret.txt", 0o600, b"s3cr3t");
        file_entry(b, "data/plain.txt", 0o644, b"plain");
        raw_entry(b, "bin", tar::EntryType::Symlink, Some("data"), b"");
    });
    s3.put("scripts/t2/bundle.tar.gz", archive).await;
    let work = tempfile::tempdir().expect("temp dir");
    let fetched = fetch_into(&s3, "scripts/t2/", work.path())
        .await
        .expect("unpacked");
    assert_eq!(fetched.archive.as_deref(), Some("bundle.tar.gz"));
    let dir = work.path().join("script");
    assert_eq!(mode(&dir.join("run")), 0o755);
    assert_eq!(mode(&dir.join("data/secret.txt")), 0o600);
    assert_eq!(mode(&dir.join("data/plain.txt")), 0o644);
    assert_eq!(
        fs::read(dir.join("bin/plain.txt")).expect("via link"),
        b"plain"
    );
    assert!(
        !dir.join("bundle.tar.gz").exists(),
        "the archive itself is not left in the script"
    );
    let out = std::process::Command::new(dir.join("run"))
        .output()
        .expect("run runs");
    assert_eq!(out.stdout, b"from-archive\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn script_url_may_name_the_archive_object_itself() {
    let s3 = S3sFs::start().await;
    s3.put(
        "scripts/t3.tgz",
        tar_gz(|b| file_entry(b, "run", 0o700, b"#!/bin/sh\n")),
    )
    .await;
    let work = tempfile::tempdir().expect("temp dir");
    fetch_into(&s3, "scripts/t3.tgz", work.path())
        .await
        .expect("unpacked");
    assert_eq!(mode(&work.path().join("script/run")), 0o700);
}

#[tokio::test(flavor = "multi_thread")]
async fn script_zip_is_unpacked_keeping_its_modes() {
    let s3 = S3sFs::start().await;
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut buf);
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("run", options.unix_permissions(0o755))
        .expect("zip");
    zip.write_all(b"#!/bin/sh\necho zipped\n").expect("zip");
    zip.start_file("cfg/game.toml", options.unix_permissions(0o640))
        .expect("zip");
    zip.write_all(b"players = 100\n").expect("zip");
    zip.finish().expect("zip");
    s3.put("scripts/t4/bundle.zip", buf.into_inner()).await;
    let work = tempfile::tempdir().expect("temp dir");
    fetch_into(&s3, "scripts/t4/", work.path())
        .await
        .expect("unpacked");
    let dir = work.path().join("script");
    assert_eq!(mode(&dir.join("cfg/game.toml")), 0o640);
    let out = std::process::Command::new(dir.join("run"))
        .output()
        .expect("run runs");
    assert_eq!(out.stdout, b"zipped\n");
}

/// Fetches an archive that must be refused; checks the message names the entry and the
/// archive, that nothing escaped, and that no script was left in place.
async fn assert_archive_refused(archive: Vec<u8>, entry: &str, problem: &str) {
    let s3 = S3sFs::start().await;
    s3.put("scripts/evil/bundle.tar.gz", archive).await;
    let work = tempfile::tempdir().expect("temp dir");
    let err = fetch_into(&s3, "scripts/evil/", &work.path().join("w"))
        .await
        .expect_err("the archive is unsafe");
    let text = ErrorChain(&err).to_string();
    assert!(text.contains(&format!("entry {entry:?}")), "{text}");
    assert!(text.contains(problem), "{text}");
    assert!(
        text.contains("s3://wave/scripts/evil/bundle.tar.gz"),
        "{text}"
    );
    assert!(
        !work.path().join("escaped").exists(),
        "an entry escaped the script directory"
    );
    assert!(
        !work.path().join("w/script").exists(),
        "no half-unpacked script is left"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_with_a_parent_dir_entry_is_refused_naming_it() {
    let archive = tar_gz(|b| {
        file_entry(b, "run", 0o755, b"#!/bin/sh\n");
        raw_entry(b, "../../escaped", tar::EntryType::Regular, None, b"evil");
    });
    assert_archive_refused(archive, "../../escaped", "goes up with '..'").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_with_an_absolute_path_is_refused_naming_it() {
    let archive = tar_gz(|b| {
        raw_entry(
            b,
            "/tmp/wave-escaped",
            tar::EntryType::Regular,
            None,
            b"evil",
        );
    });
    assert_archive_refused(archive, "/tmp/wave-escaped", "absolute path").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_with_an_outward_symlink_is_refused_naming_it() {
    let archive = tar_gz(|b| {
        raw_entry(b, "data", tar::EntryType::Symlink, Some("../../.."), b"");
    });
    assert_archive_refused(archive, "data", "points outside the script directory").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_script_is_an_error_naming_the_url() {
    let s3 = S3sFs::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let err = fetch_into(&s3, "scripts/nothing-here/", work.path())
        .await
        .expect_err("no objects");
    assert!(matches!(err, ScriptError::Missing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("s3://wave/scripts/nothing-here/"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_give_a_clear_error_at_once() {
    let s3 = S3sFs::start().await;
    s3.put("scripts/t5/run", "#!/bin/sh\n").await;
    let store = s3
        .store_with_keys(&s3.options(), s3.access_key(), "not-the-secret")
        .await;
    let work = tempfile::tempdir().expect("temp dir");
    let started = std::time::Instant::now();
    let err = script::fetch(
        &store,
        &s3.url("scripts/t5/"),
        &work.path().join("script"),
        &ScriptMetrics::default(),
    )
    .await
    .expect_err("the secret is wrong");
    let text = ErrorChain(&err).to_string();
    assert!(text.contains("s3://wave/scripts/t5/"), "{text}");
    assert!(text.contains("SignatureDoesNotMatch"), "{text}");
    assert!(text.contains("check AWS_ACCESS_KEY_ID"), "{text}");
    assert!(!text.contains("ServiceError {"), "no Debug dump: {text}");
    // Permanent: not retried through the whole backoff schedule (about 15 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_bucket_is_reported_with_its_code() {
    let s3 = S3sFs::start().await;
    let store = s3.store().await;
    let url = "s3://no-such-bucket/scripts/".parse().expect("url");
    let err = store.list(&url).await.expect_err("no bucket");
    assert_eq!(err.s3_code(), Some("NoSuchBucket"));
    assert!(!err.is_transient());
    let text = err.to_string();
    assert!(
        text.contains("s3://no-such-bucket/scripts/") && text.contains("does not exist"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_endpoint_is_transient_and_names_the_endpoint() {
    let mut s3 = S3sFs::start().await;
    let store = s3.store().await;
    s3.stop();
    let err = store
        .list(&s3.url("scripts/"))
        .await
        .expect_err("server is down");
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(s3.endpoint()) && text.contains("s3://wave/scripts/"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn script_fetch_retries_until_the_server_is_back() {
    let mut s3 = S3sFs::start().await;
    s3.put("scripts/t6/run", "#!/bin/sh\n").await;
    let store = s3.store().await;
    s3.stop();
    let work = tempfile::tempdir().expect("temp dir");
    let dest = work.path().join("script");
    let url = s3.url("scripts/t6/");
    let fetch =
        tokio::spawn(
            async move { script::fetch(&store, &url, &dest, &ScriptMetrics::default()).await },
        );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!fetch.is_finished(), "the fetch waits for the server");
    s3.start_again().await;
    fetch
        .await
        .expect("task")
        .expect("fetched after the outage");
    assert!(work.path().join("script/run").is_file());
}

#[tokio::test(flavor = "multi_thread")]
async fn large_script_archive_comes_down_in_ranges_intact() {
    let s3 = S3sFs::start().await;
    let big = pseudo_random(40 * MIB + 123, 7);
    let archive = tar_gz(|b| file_entry(b, "assets.bin", 0o644, &big));
    s3.put("scripts/t7/bundle.tar.gz", archive).await;
    let options = S3Options {
        part_size: 8 * MIB as u64,
        multipart_threshold: 8 * MIB as u64,
        ..s3.options()
    };
    let store = s3.store_with(&options).await;
    let work = tempfile::tempdir().expect("temp dir");
    script::fetch(
        &store,
        &s3.url("scripts/t7/"),
        &work.path().join("script"),
        &ScriptMetrics::default(),
    )
    .await
    .expect("fetched");
    assert!(fs::read(work.path().join("script/assets.bin")).expect("asset") == big);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mib_result_file_goes_up_in_multipart() {
    let s3 = S3sFs::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let results = work.path().join("results");
    fs::create_dir_all(results.join("agent-0")).expect("mkdir");
    let data = pseudo_random(100 * MIB, 3);
    fs::write(results.join("agent-0/capture.bin"), &data).expect("write");
    fs::write(results.join("summary.json"), b"{\"agents\":[]}").expect("write");
    let mut registry = Registry::default();
    let mut uploader = Uploader::new(
        s3.store().await,
        &results,
        Uploader::destination(&s3.url("results/t1/"), "pod-a", 0),
        UploadMetrics::register(&mut registry),
    );
    let report = uploader.sync().await.expect("sync");
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(
        s3.list("results/t1/").await,
        [
            (
                "results/t1/pod-a/c0/agent-0/capture.bin".to_owned(),
                100 * MIB as u64
            ),
            ("results/t1/pod-a/c0/summary.json".to_owned(), 13),
        ]
    );
    let head = s3
        .client()
        .head_object()
        .bucket(s3.bucket())
        .key("results/t1/pod-a/c0/agent-0/capture.bin")
        .send()
        .await
        .expect("head");
    let etag = head.e_tag().unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with("-7"),
        "a 7-part upload: ETag {etag}"
    );
    assert!(s3.get("results/t1/pod-a/c0/agent-0/capture.bin").await == data);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(
        text.contains(&format!(
            "wave_results_uploaded_bytes_total {}",
            100 * MIB + 13
        )),
        "{text}"
    );
    assert!(
        results.join("agent-0/capture.bin").is_file(),
        "local files are kept"
    );
}

/// Agents keep writing while the server goes away and comes back: every byte ends up in
/// S3, as on disk.
#[tokio::test(flavor = "multi_thread")]
async fn results_written_during_an_outage_all_reach_s3() {
    let mut s3 = S3sFs::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let results = work.path().join("results");
    let mut registry = Registry::default();
    let mut uploader = Uploader::new(
        s3.store().await,
        &results,
        Uploader::destination(&s3.url("results/t9/"), "pod-b", 1),
        UploadMetrics::register(&mut registry),
    );

    // Four "agents" append a line to their log every 10 ms and drop a new file every
    // 100 ms, for 3 s; meanwhile the uploader syncs every 150 ms.
    let writers: Vec<_> = (0..4)
        .map(|agent| {
            let dir = results.join(format!("agent-{agent}"));
            std::thread::spawn(move || {
                fs::create_dir_all(&dir).expect("mkdir");
                let mut log = fs::File::create(dir.join("stdout.log")).expect("log");
                for i in 0..300 {
                    writeln!(log, "agent {agent} line {i}").expect("append");
                    if i % 10 == 0 {
                        fs::write(
                            dir.join(format!("frame-{i:03}.bin")),
                            pseudo_random(64 * 1024, i),
                        )
                        .expect("frame");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();

    let started = Instant::now();
    let mut failures_seen = 0;
    let mut stopped = false;
    let mut restarted = false;
    while writers.iter().any(|w| !w.is_finished()) {
        let elapsed = started.elapsed();
        if !stopped && elapsed > Duration::from_millis(800) {
            s3.stop();
            stopped = true;
        }
        if stopped && !restarted && elapsed > Duration::from_millis(2000) {
            s3.start_again().await;
            restarted = true;
        }
        let report = uploader
            .sync()
            .await
            .expect("the results directory is readable");
        failures_seen += report.failed_files;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for writer in writers {
        writer.join().expect("writer");
    }
    if !restarted {
        s3.start_again().await;
    }
    assert!(failures_seen > 0, "the outage was seen by the uploader");
    uploader
        .flush(Instant::now() + Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{}", ErrorChain(&e)));

    let mut expected = Vec::new();
    for entry in walk(&results) {
        let rel = entry.strip_prefix(&results).expect("under results");
        expected.push((
            format!("results/t9/pod-b/c1/{}", rel.display()),
            fs::read(&entry).expect("local file"),
        ));
    }
    expected.sort();
    let stored: Vec<String> = s3
        .list("results/t9/")
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let expected_keys: Vec<&String> = expected.iter().map(|(k, _)| k).collect();
    assert_eq!(stored.iter().collect::<Vec<_>>(), expected_keys);
    assert_eq!(expected.len(), 4 * (1 + 30));
    for (key, content) in &expected {
        assert!(
            &s3.get(key).await == content,
            "{key} differs from the local file"
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    assert!(text.contains("wave_results_pending_bytes 0"), "{text}");
    assert!(
        !text.contains("wave_results_upload_failures_total{reason=\"other\"} 0"),
        "{text}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Garage with `WAVE_S3_CHECKSUM=when-required`: everything the supervisor does works.
#[tokio::test(flavor = "multi_thread")]
async fn garage_works_with_checksums_when_required() {
    let garage = Garage::start().await;
    let store = garage.store().await;
    let work = tempfile::tempdir().expect("temp dir");

    // put: small and multipart
    let small = work.path().join("small.txt");
    fs::write(&small, b"hello garage").expect("write");
    let big = work.path().join("big.bin");
    let big_data = pseudo_random(40 * MIB, 11);
    fs::write(&big, &big_data).expect("write");
    store
        .put(&small, &garage.url("results/g/small.txt"))
        .await
        .expect("put small");
    let outcome = store
        .put(&big, &garage.url("results/g/big.bin"))
        .await
        .expect("multipart put");
    assert_eq!(outcome.parts, Some(3));

    // list
    let listed = store.list(&garage.url("results/g/")).await.expect("list");
    let found: Vec<_> = listed.iter().map(|o| (o.rel.as_str(), o.size)).collect();
    assert_eq!(found, [("big.bin", 40 * MIB as u64), ("small.txt", 12)]);

    // get: whole and in ranges
    for object in &listed {
        let dest = work.path().join("down").join(&object.rel);
        store.get(object, &dest).await.expect("get");
    }
    assert_eq!(
        fs::read(work.path().join("down/small.txt")).expect("read"),
        b"hello garage"
    );
    assert!(fs::read(work.path().join("down/big.bin")).expect("read") == big_data);

    // and a whole script fetch
    garage.put("scripts/g/run", "#!/bin/sh\n").await;
    script::fetch(
        &store,
        &garage.url("scripts/g/"),
        &work.path().join("script"),
        &ScriptMetrics::default(),
    )
    .await
    .expect("script from Garage");
}

/// Why `WAVE_S3_CHECKSUM` exists: with the SDK's default request checksums, a streaming
/// upload (aws-chunked body with a CRC32 trailer) is refused by Garage.
#[tokio::test(flavor = "multi_thread")]
async fn garage_rejects_the_sdks_default_streaming_upload() {
    let garage = Garage::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let file = work.path().join("f.txt");
    fs::write(&file, b"streamed").expect("write");

    let err = garage
        .client_with_sdk_defaults()
        .put_object()
        .bucket(garage.bucket())
        .key("plain-sdk/f.txt")
        .body(ByteStream::from_path(&file).await.expect("body"))
        .send()
        .await
        .expect_err("Garage refuses aws-chunked uploads with trailers");
    let status = err.raw_response().map(|r| r.status().as_u16());
    assert_eq!(
        status,
        Some(400),
        "{}",
        aws_sdk_s3::error::DisplayErrorContext(&err)
    );

    let default_store = garage
        .store_with(&S3Options {
            checksum: wave_agent::store::ChecksumMode::WhenSupported,
            ..garage.options()
        })
        .await;
    let err = default_store
        .put(&file, &garage.url("store-default/f.txt"))
        .await
        .expect_err("the same through the supervisor's store without the switch");
    assert!(matches!(err, StoreError::S3 { .. }), "{err}");
    assert!(
        err.to_string().contains("s3://wave/store-default/f.txt"),
        "{err}"
    );
}

/// A store handle is cheap to clone and serves both schemes; its uploads run in spawned tasks.
#[tokio::test(flavor = "multi_thread")]
async fn one_store_serves_file_and_s3_urls() {
    let s3 = S3sFs::start().await;
    let store: Store = s3.store().await;
    let local = tempfile::tempdir().expect("temp dir");
    fs::write(local.path().join("run"), b"#!/bin/sh\n").expect("write");
    let url = format!("file://{}/", local.path().display())
        .parse()
        .expect("url");
    let listed = store.clone().list(&url).await.expect("file listing");
    assert_eq!(listed.len(), 1);
    store
        .put(&local.path().join("run"), &s3.url("copied/run"))
        .await
        .expect("put");
    assert_eq!(s3.get("copied/run").await, b"#!/bin/sh\n");

    // The uploader runs in its own task in the supervisor.
    let mut uploader = Uploader::new(
        store,
        local.path(),
        s3.url("spawned/"),
        UploadMetrics::default(),
    );
    let report = tokio::spawn(async move {
        uploader
            .flush(Instant::now() + Duration::from_secs(30))
            .await
    })
    .await
    .expect("task")
    .expect("flushed");
    assert_eq!(report.uploaded_files, 1);
    assert_eq!(s3.get("spawned/run").await, b"#!/bin/sh\n");
}

/// A multipart upload cut off half-way (a flush reaching its shutdown deadline) is aborted
/// before the upload returns: no orphaned parts stay in the bucket, and no task is left to
/// do it after the runtime is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_multipart_upload_is_aborted_before_it_returns() {
    let garage = Garage::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let big = work.path().join("big.bin");
    fs::write(&big, pseudo_random(200 * MIB, 5)).expect("write");
    let options = S3Options {
        part_concurrency: 1,
        ..garage.options()
    };
    let store = garage.store_with(&options).await;
    let url = garage.url("results/cut/big.bin");
    let (cutoff, cut) = CutOff::new();
    let request = UploadRequest {
        len: 200 * MIB as u64,
        stored: None,
        cutoff: cut,
    };
    let upload = tokio::spawn(async move { store.upload(&big, &url, &request).await });

    let in_progress = || async {
        garage
            .client()
            .list_multipart_uploads()
            .bucket(garage.bucket())
            .send()
            .await
            .expect("list multipart uploads")
            .uploads()
            .len()
    };
    let started = Instant::now();
    while in_progress().await == 0 {
        assert!(
            !upload.is_finished(),
            "the upload ended before it could be cut"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no multipart upload started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cutoff.set(Instant::now());
    let err = upload
        .await
        .expect("the upload task does not panic")
        .expect_err("cut off");
    assert!(matches!(err, StoreError::CutOff { .. }), "{err}");
    assert_eq!(
        in_progress().await,
        0,
        "the multipart upload was left behind"
    );
    assert!(garage.list("results/cut/").await.is_empty());
}
