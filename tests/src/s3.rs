//! Real S3 servers on 127.0.0.1: s3s-fs (strict SigV4, behaves like AWS with the SDK's
//! defaults) and Garage (a production S3-compatible store that rejects the SDK's default
//! aws-chunked uploads, hence `WAVE_S3_CHECKSUM=when-required`).
//!
//! Each server gets random credentials, a temporary data directory, a free port and a
//! bucket, and is killed on Drop. [`S3Access`] (reached through `Deref`) has what a test
//! needs: an aws-sdk-s3 client for assertions, a [`Store`] built the way the supervisor
//! builds it, and the environment to hand a `wave-agent` process.

use std::fs;
use std::io::Read;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_smithy_http_client::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wave_agent::store::{ChecksumMode, S3Options, Store, StoreUrl};

use crate::{free_port, tool};

/// How long a server may take to answer after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Endpoint, credentials and bucket of a running S3 server.
#[derive(Clone, Debug)]
pub struct S3Access {
    endpoint: String,
    access_key: String,
    secret_key: String,
    region: String,
    bucket: String,
    checksum: ChecksumMode,
    client: Client,
}

impl S3Access {
    fn new(
        endpoint: String,
        access_key: String,
        secret_key: String,
        region: &str,
        bucket: &str,
        checksum: ChecksumMode,
    ) -> S3Access {
        let client = sdk_client(&endpoint, &access_key, &secret_key, region, checksum);
        S3Access {
            endpoint,
            access_key,
            secret_key,
            region: region.to_owned(),
            bucket: bucket.to_owned(),
            checksum,
            client,
        }
    }

    /// The same server and bucket reached through another endpoint (a proxy in front of
    /// it), or with other credentials.
    pub fn with(&self, endpoint: Option<&str>, keys: Option<(&str, &str)>) -> S3Access {
        let (access_key, secret_key) = keys.unwrap_or((&self.access_key, &self.secret_key));
        S3Access::new(
            endpoint.unwrap_or(&self.endpoint).to_owned(),
            access_key.to_owned(),
            secret_key.to_owned(),
            &self.region,
            &self.bucket,
            self.checksum,
        )
    }

    /// `127.0.0.1:<port>` of the S3 API.
    pub fn address(&self) -> &str {
        self.endpoint
            .strip_prefix("http://")
            .expect("test servers speak plain http")
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The access key id.
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret access key.
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The bucket created at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// An aws-sdk-s3 client (path style; request checksums as the server needs) for
    /// putting fixtures and checking what the supervisor stored.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A client with the SDK's default checksum behaviour, whatever the server needs.
    pub fn client_with_sdk_defaults(&self) -> Client {
        sdk_client(
            &self.endpoint,
            &self.access_key,
            &self.secret_key,
            &self.region,
            ChecksumMode::WhenSupported,
        )
    }

    /// `s3://<bucket>/<key>`.
    pub fn url(&self, key: &str) -> StoreUrl {
        format!("s3://{}/{key}", self.bucket)
            .parse()
            .expect("bucket and key make a valid URL")
    }

    /// The store options the supervisor would use against this server.
    pub fn options(&self) -> S3Options {
        S3Options {
            path_style: true,
            checksum: self.checksum,
            ..S3Options::default()
        }
    }

    /// A supervisor [`Store`] talking to this server with `options`.
    pub async fn store_with(&self, options: &S3Options) -> Store {
        self.store_with_keys(options, &self.access_key, &self.secret_key)
            .await
    }

    /// A supervisor [`Store`] talking to this server, built like the supervisor builds it.
    pub async fn store(&self) -> Store {
        self.store_with(&self.options()).await
    }

    /// A store presenting other credentials (to check how refusals are reported).
    pub async fn store_with_keys(
        &self,
        options: &S3Options,
        access_key: &str,
        secret_key: &str,
    ) -> Store {
        let credentials = Credentials::new(access_key, secret_key, None, None, "wave-tests");
        let endpoint = self.endpoint.clone();
        let region = Region::new(self.region.clone());
        Store::open_with(&self.url(""), options, move |loader| {
            loader
                .endpoint_url(endpoint)
                .credentials_provider(credentials)
                .region(region)
        })
        .await
        .expect("opening an S3 store does not fail")
    }

    /// Environment for a `wave-agent` process using this server. Instance metadata is
    /// turned off so a missing credential fails at once instead of after IMDS timeouts.
    pub fn agent_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
            ("WAVE_S3_PATH_STYLE", "true".to_owned()),
        ];
        if self.checksum == ChecksumMode::WhenRequired {
            env.push(("WAVE_S3_CHECKSUM", "when-required".to_owned()));
        }
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// Every key under `prefix` with its size, sorted.
    pub async fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.expect("listing the test bucket works");
            for object in page.contents() {
                keys.push((
                    object.key().unwrap_or_default().to_owned(),
                    object.size().unwrap_or(0) as u64,
                ));
            }
        }
        keys.sort();
        keys
    }

    /// The content of an object.
    pub async fn get(&self, key: &str) -> Vec<u8> {
        self.get_with(&self.client, key).await
    }

    /// The content of an object, without checking the checksum the server returns: s3s-fs
    /// 0.14 keeps the full-object CRC32 of a PutObject when a multipart upload replaces the
    /// object (it updates only the ETag), so a validating GET of a replaced object fails
    /// although its bytes are right.
    pub async fn get_unvalidated(&self, key: &str) -> Vec<u8> {
        let client = sdk_client(
            &self.endpoint,
            &self.access_key,
            &self.secret_key,
            &self.region,
            ChecksumMode::WhenRequired,
        );
        self.get_with(&client, key).await
    }

    async fn get_with(&self, client: &aws_sdk_s3::Client, key: &str) -> Vec<u8> {
        client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))
            .body
            .collect()
            .await
            .expect("reading the object body")
            .to_vec()
    }

    /// Stores `body` at `key`.
    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body.into().into())
            .send()
            .await
            .unwrap_or_else(|e| panic!("PUT {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)));
    }
}

fn sdk_client(
    endpoint: &str,
    access_key: &str,
    secret_key: &str,
    region: &str,
    checksum: ChecksumMode,
) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .endpoint_url(endpoint)
        .region(Region::new(region.to_owned()))
        .credentials_provider(Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "wave-tests",
        ))
        .force_path_style(true);
    if checksum == ChecksumMode::WhenRequired {
        config = config
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    Client::from_conf(config.build())
}

/// `n` random bytes as lowercase hex.
fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until `127.0.0.1:port` accepts connections, or panics with the server's log.
async fn wait_for_port(port: u16, child: &mut Child, log: &Path, what: &str) {
    let started = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before answering:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "{what} did not open port {port} within {READY_TIMEOUT:?}:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_logged(command: &mut Command, log: &Path) -> Child {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("the server log is writable");
    let err = out.try_clone().expect("log file handle");
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", command.get_program()))
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An s3s-fs server with one bucket.
pub struct S3sFs {
    access: S3Access,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl S3sFs {
    /// Starts s3s-fs on a free port with random credentials and creates the bucket `wave`.
    pub async fn start() -> S3sFs {
        let dir = tempfile::tempdir().expect("temp dir for s3s-fs");
        fs::create_dir_all(dir.path().join("data")).expect("s3s-fs data dir");
        let port = free_port();
        let access = S3Access::new(
            format!("http://127.0.0.1:{port}"),
            format!("AK{}", random_hex(8)).to_uppercase(),
            random_hex(20),
            "us-east-1",
            "wave",
            ChecksumMode::WhenSupported,
        );
        let mut server = S3sFs {
            access,
            port,
            dir,
            child: None,
        };
        server.start_again().await;
        server
            .access
            .client
            .create_bucket()
            .bucket(&server.access.bucket)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "creating the test bucket on s3s-fs: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        server
    }

    /// Stops the server (an outage); the data directory and port are kept.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same port and data, and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "s3s-fs is already running");
        let log = self.log_path();
        let mut child = spawn_logged(
            Command::new(tool("s3s-fs"))
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
                .args(["--access-key", &self.access.access_key])
                .args(["--secret-key", &self.access.secret_key])
                .arg(self.data_dir()),
            &log,
        );
        wait_for_port(self.port, &mut child, &log, "s3s-fs").await;
        self.child = Some(child);
    }

    /// Where s3s-fs keeps the buckets (one directory each).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3s-fs.log")
    }
}

impl Deref for S3sFs {
    type Target = S3Access;

    fn deref(&self) -> &S3Access {
        &self.access
    }
}

impl Drop for S3sFs {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A single-node Garage server with one bucket, created by `--default-bucket`.
pub struct Garage {
    access: S3Access,
    config: PathBuf,
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Garage {
    /// Writes a single-node config (replication factor 1, sqlite metadata), starts
    /// `garage server --single-node --default-bucket` with a random key and waits until
    /// the admin API's `/health` answers 200.
    pub async fn start() -> Garage {
        let dir = tempfile::tempdir().expect("temp dir for Garage");
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let root = dir.path();
        let config = format!(
            r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3_port}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{token}"
"#,
            meta = root.join("meta").display(),
            data = root.join("data").display(),
            secret = random_hex(32),
            token = random_hex(16),
        );
        let config_path = root.join("garage.toml");
        fs::write(&config_path, config).expect("writing garage.toml");
        let access = S3Access::new(
            format!("http://127.0.0.1:{s3_port}"),
            format!("GK{}", random_hex(12)),
            random_hex(32),
            "garage",
            "wave",
            ChecksumMode::WhenRequired,
        );
        let log = root.join("garage.log");
        let mut child = spawn_logged(
            Command::new(tool("garage"))
                .arg("-c")
                .arg(&config_path)
                .args(["server", "--single-node", "--default-bucket"])
                .env("GARAGE_DEFAULT_ACCESS_KEY", &access.access_key)
                .env("GARAGE_DEFAULT_SECRET_KEY", &access.secret_key)
                .env("GARAGE_DEFAULT_BUCKET", &access.bucket)
                .env("RUST_LOG", "garage=warn"),
            &log,
        );
        let started = Instant::now();
        while !health_ok(admin_port).await {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "garage exited with {status} before it was healthy:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "garage was not healthy within {READY_TIMEOUT:?}:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Garage {
            access,
            config: config_path,
            _dir: dir,
            child: Some(child),
        }
    }

    /// A new key allowed to read the bucket but not to write to it (`garage key import`,
    /// `garage bucket allow --read`): the bucket policy of a misconfigured pod.
    pub fn read_only_key(&self) -> (String, String) {
        let (id, secret) = (format!("GK{}", random_hex(12)), random_hex(32));
        let garage = |args: &[&str]| {
            let out = Command::new(tool("garage"))
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .expect("run the garage CLI");
            assert!(
                out.status.success(),
                "garage {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        garage(&["key", "import", &id, &secret, "-n", "read-only", "--yes"]);
        garage(&[
            "bucket",
            "allow",
            "--read",
            &self.access.bucket,
            "--key",
            &id,
        ]);
        (id, secret)
    }
}

/// Whether Garage's admin API answers `GET /health` with 200.
async fn health_ok(admin_port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", admin_port)).await else {
        return false;
    };
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.is_ok()
        && (head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200"))
}

impl Deref for Garage {
    type Target = S3Access;

    fn deref(&self) -> &S3Access {
        &self.access
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
