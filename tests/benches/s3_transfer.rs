//! S3 transfers of the supervisor against a local s3s-fs, side by side with the AWS CLI
//! (`aws s3 cp --recursive`) against the same server in the same run:
//! - a 100 MiB script archive downloaded (ours: `Store::get` alone, and the whole
//!   `script::fetch` with unpacking);
//! - a 1 GiB results directory (64 × 16 MiB files) uploaded (ours: `Uploader::sync`).
//!
//! Run: `cargo bench -p wave-tests --bench s3_transfer` (release build). Prints one line
//! per measurement with the median of the runs; no assertion on timings.

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use wave_agent::script::{self, ScriptMetrics};
use wave_agent::store::StoredObject;
use wave_agent::upload::{UploadMetrics, Uploader};
use wave_tests::s3::S3sFs;
use wave_tests::tool;

const MIB: u64 = 1024 * 1024;
const RUNS: usize = 3;
const RESULT_FILES: u64 = 64;
const RESULT_FILE_SIZE: u64 = 16 * MIB;

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn report(what: &str, bytes: u64, samples: Vec<Duration>) {
    let all: Vec<String> = samples
        .iter()
        .map(|d| format!("{:.2}s", d.as_secs_f64()))
        .collect();
    let m = median(samples);
    println!(
        "{what:<52} median {:>6.2} s  {:>7.1} MiB/s   (runs: {})",
        m.as_secs_f64(),
        bytes as f64 / MIB as f64 / m.as_secs_f64(),
        all.join(", ")
    );
}

fn aws(s3: &S3sFs, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = Command::new(tool("aws"))
        .args(args)
        .args(["--endpoint-url", s3.endpoint(), "--only-show-errors"])
        .env("AWS_ACCESS_KEY_ID", s3.access_key())
        .env("AWS_SECRET_ACCESS_KEY", s3.secret_key())
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .output()
        .expect("the AWS CLI runs");
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "aws {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// Removes what a run stored, straight from s3s-fs's data directory, so the disk does
/// not fill up over the runs.
fn drop_prefix(s3: &S3sFs, prefix: &str) {
    let _ = fs::remove_dir_all(s3.data_dir().join(s3.bucket()).join(prefix));
}

#[tokio::main]
async fn main() {
    let s3 = S3sFs::start().await;
    let work = tempfile::tempdir().expect("temp dir");
    let store = s3.store().await;

    // A 100 MiB script archive (incompressible content, so it stays 100 MiB).
    let archive = work.path().join("bundle.tar.gz");
    {
        let file = fs::File::create(&archive).expect("archive");
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::none());
        let mut tar = tar::Builder::new(gz);
        let data = pseudo_random(100 * MIB as usize, 1);
        let mut header = tar::Header::new_gnu();
        header.set_path("assets.bin").expect("path");
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append(&header, &data[..]).expect("append");
        tar.into_inner()
            .expect("tar")
            .finish()
            .expect("gzip")
            .flush()
            .expect("flush");
    }
    let archive_size = fs::metadata(&archive).expect("archive").len();
    store
        .put(&archive, &s3.url("scripts/bench/bundle.tar.gz"))
        .await
        .expect("upload the archive");
    let object = StoredObject {
        url: s3.url("scripts/bench/bundle.tar.gz"),
        rel: "bundle.tar.gz".into(),
        size: archive_size,
    };

    let mut get = Vec::new();
    let mut fetch = Vec::new();
    let mut cli_get = Vec::new();
    for run in 0..RUNS {
        let dest = work.path().join(format!("get-{run}"));
        let started = Instant::now();
        store.get(&object, &dest).await.expect("get");
        get.push(started.elapsed());
        fs::remove_file(&dest).expect("cleanup");

        let script_dir = work.path().join(format!("script-{run}"));
        let started = Instant::now();
        script::fetch(
            &store,
            &s3.url("scripts/bench/"),
            &script_dir,
            &ScriptMetrics::default(),
        )
        .await
        .expect("fetch");
        fetch.push(started.elapsed());
        fs::remove_dir_all(&script_dir).expect("cleanup");

        let cli_dir = work.path().join(format!("cli-get-{run}"));
        let s3_url = format!("s3://{}/scripts/bench/", s3.bucket());
        cli_get.push(aws(
            &s3,
            &[
                "s3",
                "cp",
                "--recursive",
                &s3_url,
                &cli_dir.display().to_string(),
            ],
        ));
        fs::remove_dir_all(&cli_dir).expect("cleanup");
    }
    println!("s3s-fs {} on 127.0.0.1, {RUNS} runs each", s3.endpoint());
    report("script archive 100 MiB: wave Store::get", archive_size, get);
    report(
        "script archive 100 MiB: wave script::fetch",
        archive_size,
        fetch,
    );
    report(
        "script archive 100 MiB: aws s3 cp --recursive",
        archive_size,
        cli_get,
    );

    // A 1 GiB results directory: 64 files of 16 MiB.
    let results = work.path().join("results");
    fs::create_dir_all(&results).expect("results dir");
    for i in 0..RESULT_FILES {
        let dir = results.join(format!("agent-{}", i % 8));
        fs::create_dir_all(&dir).expect("agent dir");
        fs::write(
            dir.join(format!("frames-{i:02}.bin")),
            pseudo_random(RESULT_FILE_SIZE as usize, i + 100),
        )
        .expect("result file");
    }
    let total = RESULT_FILES * RESULT_FILE_SIZE;
    let mut up = Vec::new();
    let mut cli_up = Vec::new();
    for run in 0..RUNS {
        let prefix = format!("results/bench-wave-{run}/");
        let mut uploader = Uploader::new(
            store.clone(),
            &results,
            s3.url(&prefix),
            UploadMetrics::default(),
        );
        let started = Instant::now();
        let report = uploader.sync().await.expect("sync");
        up.push(started.elapsed());
        assert!(report.is_complete(), "{report:?}");
        assert_eq!(report.uploaded_bytes, total);
        drop_prefix(&s3, &prefix);

        let prefix = format!("results/bench-cli-{run}/");
        let s3_url = format!("s3://{}/{prefix}", s3.bucket());
        cli_up.push(aws(
            &s3,
            &[
                "s3",
                "cp",
                "--recursive",
                &results.display().to_string(),
                &s3_url,
            ],
        ));
        drop_prefix(&s3, &prefix);
    }
    report(
        "results 1 GiB (64 x 16 MiB): wave Uploader::sync",
        total,
        up,
    );
    report(
        "results 1 GiB (64 x 16 MiB): aws s3 cp --recursive",
        total,
        cli_up,
    );
}
