//! Where scripts come from and results go: `s3://bucket/prefix/` or `file:///path/`.
//!
//! One small interface ([`Store`]) over S3 and a local directory, so the script fetch and
//! the results upload do not care which one a test uses. Transfers stream between the
//! store and local files (nothing is held whole in memory); large objects move in parts,
//! a few at a time. Errors name the URL and, for S3, the service's error code, and say
//! whether trying again can help ([`StoreError::is_transient`]).

mod file;
mod s3;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use s3::{ChecksumMode, MIN_PART_SIZE, OptionError, S3Options};

/// A location in a store: an S3 bucket and key (prefix), or a local path.
///
/// A URL ending with `/` names a "directory" (every object under it); without the slash it
/// may also name a single object (`s3://bucket/scripts/test.tar.gz`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StoreUrl {
    /// `s3://bucket/key`
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key or prefix inside the bucket, without a leading `/` (may be empty).
        key: String,
    },
    /// `file:///absolute/path`
    File {
        /// Absolute local path.
        path: PathBuf,
    },
}

/// Why a store URL could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid store URL {url:?}: {reason}")]
pub struct UrlError {
    url: String,
    reason: &'static str,
}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let err = |reason| UrlError {
            url: url.to_owned(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(err(
                    "the bucket name is missing (expected s3://bucket/prefix/)",
                ));
            }
            if !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
            {
                return Err(err(
                    "a bucket name has only lowercase letters, digits, '-', '.' and '_'",
                ));
            }
            if key.starts_with('/') || key.contains("//") {
                return Err(err("the key has an empty path segment ('//')"));
            }
            if key.split('/').any(|seg| seg == ".." || seg == ".") {
                return Err(err("the key has a '.' or '..' segment"));
            }
            Ok(StoreUrl::S3 {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
            })
        } else if let Some(rest) = url.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(err(
                    "a file URL needs an absolute path (file:///path/, three slashes)",
                ));
            }
            let path = Path::new(rest);
            if path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(err("the path has a '..' segment"));
            }
            Ok(StoreUrl::File {
                path: PathBuf::from(rest),
            })
        } else {
            Err(err("expected s3://bucket/prefix/ or file:///path/"))
        }
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            StoreUrl::File { path } => write!(f, "file://{}", path.display()),
        }
    }
}

impl StoreUrl {
    /// The location `rel` below this one, as if this URL were a directory: a `/` is put
    /// between them when this URL does not end with one. `rel` uses `/` separators.
    pub fn join(&self, rel: &str) -> StoreUrl {
        let rel = rel.trim_start_matches('/');
        match self {
            StoreUrl::S3 { bucket, key } => StoreUrl::S3 {
                bucket: bucket.clone(),
                key: if key.is_empty() || key.ends_with('/') {
                    format!("{key}{rel}")
                } else {
                    format!("{key}/{rel}")
                },
            },
            StoreUrl::File { path } => StoreUrl::File {
                path: rel.split('/').fold(path.clone(), |p, seg| p.join(seg)),
            },
        }
    }
}

/// One object found by [`Store::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// Where the object is.
    pub url: StoreUrl,
    /// Path relative to the listed URL, `/`-separated; for a URL naming a single object,
    /// its file name.
    pub rel: String,
    /// Size in bytes.
    pub size: u64,
}

/// What [`Store::put`] or [`Store::upload`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// Bytes sent to the store (an extension sends only the new bytes).
    pub bytes: u64,
    /// Size of the object now stored.
    pub stored: u64,
    /// Number of parts for a multipart upload, `None` for a single request.
    pub parts: Option<usize>,
}

/// One upload of a local file: its first `len` bytes (a snapshot length read before the
/// upload, so a file still growing is stored as a complete prefix, never a mix), on top of
/// what the store already holds.
#[derive(Clone, Debug)]
pub struct UploadRequest {
    /// Bytes of the local file to store, from its start.
    pub len: u64,
    /// Bytes the stored object already holds and that equal the local file's first bytes:
    /// the upload extends the object with the rest instead of sending it whole (S3:
    /// server-side copy of the stored object as the first part, once it is at least the
    /// minimum part size; `file://`: an append).
    pub stored: Option<u64>,
    /// When a transfer still running has to stop; a multipart upload cut off then is
    /// aborted (awaited) so no orphaned parts are left.
    pub cutoff: CutOff,
}

/// The deadline of a shutdown, shared with uploads already running: set once the final
/// flush has its budget, it cuts off whatever is still going when the deadline passes.
#[derive(Clone, Debug)]
pub struct CutOff(tokio::sync::watch::Receiver<Option<tokio::time::Instant>>);

/// Sets the deadline of the [`CutOff`]s it made.
#[derive(Debug)]
pub struct CutOffSetter(tokio::sync::watch::Sender<Option<tokio::time::Instant>>);

impl CutOff {
    /// A cut-off with no deadline yet, and the handle that sets it.
    pub fn new() -> (CutOffSetter, CutOff) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (CutOffSetter(tx), CutOff(rx))
    }

    /// A cut-off that never comes.
    pub fn never() -> CutOff {
        CutOff::new().1
    }

    /// The deadline, once set.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        *self.0.borrow()
    }

    /// Resolves when the deadline is set and has passed.
    pub async fn reached(&self) {
        let mut rx = self.0.clone();
        loop {
            let deadline = *rx.borrow_and_update();
            match deadline {
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => return,
                        changed = rx.changed() => if changed.is_err() {
                            tokio::time::sleep_until(deadline).await;
                            return;
                        },
                    }
                }
                None => {
                    if rx.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }
}

impl CutOffSetter {
    /// Sets (or moves) the deadline.
    pub fn set(&self, deadline: tokio::time::Instant) {
        self.0.send_replace(Some(deadline));
    }
}

/// A refusal that trying again does not fix until someone changes the bucket, the policy
/// or the credentials (docs/agent-storage.md: what `wave_results_upload_failures_total{reason}`
/// counts besides transient failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The credentials are valid but not allowed to write there.
    AccessDenied,
    /// The bucket does not exist.
    NoSuchBucket,
    /// The access key is unknown (or the session token expired).
    InvalidAccessKeyId,
    /// The secret does not match the access key.
    SignatureDoesNotMatch,
}

impl Refusal {
    /// Every refusal, for pre-registered metric labels.
    pub const ALL: [Refusal; 4] = [
        Refusal::AccessDenied,
        Refusal::NoSuchBucket,
        Refusal::InvalidAccessKeyId,
        Refusal::SignatureDoesNotMatch,
    ];

    /// The S3 error code, also the metric label.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::AccessDenied => "AccessDenied",
            Refusal::NoSuchBucket => "NoSuchBucket",
            Refusal::InvalidAccessKeyId => "InvalidAccessKeyId",
            Refusal::SignatureDoesNotMatch => "SignatureDoesNotMatch",
        }
    }

    /// What the person reading the log has to change.
    pub fn what_to_fix(self) -> &'static str {
        match self {
            Refusal::AccessDenied => {
                "allow s3:PutObject (and the multipart actions) on the results prefix in the IAM or bucket policy of these credentials"
            }
            Refusal::NoSuchBucket => "create the bucket or fix WAVE_RESULTS_URL / AWS_ENDPOINT_URL",
            Refusal::InvalidAccessKeyId => {
                "the access key is unknown to the store: fix AWS_ACCESS_KEY_ID or the pod's IRSA / Pod Identity role"
            }
            Refusal::SignatureDoesNotMatch => {
                "the secret does not match the access key: fix AWS_SECRET_ACCESS_KEY"
            }
        }
    }

    fn from_code(code: &str) -> Option<Refusal> {
        match code {
            "AccessDenied" | "AllAccessDisabled" => Some(Refusal::AccessDenied),
            "NoSuchBucket" => Some(Refusal::NoSuchBucket),
            "InvalidAccessKeyId" | "InvalidToken" | "ExpiredToken" => {
                Some(Refusal::InvalidAccessKeyId)
            }
            "SignatureDoesNotMatch" => Some(Refusal::SignatureDoesNotMatch),
            _ => None,
        }
    }
}

/// A failed store operation, written for the person reading the pod log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// S3 answered with an error or could not be reached.
    #[error("cannot {op} {url}: {detail}")]
    S3 {
        /// What was being done ("list", "download", "upload").
        op: &'static str,
        /// The URL it was done to.
        url: String,
        /// The S3 error code (`NoSuchBucket`, `SignatureDoesNotMatch`), if S3 answered.
        code: Option<String>,
        /// Code, message and hint, or the connection error with its causes.
        detail: String,
        /// Whether trying again later can help.
        transient: bool,
    },
    /// A local file or directory could not be read or written.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A transfer ended with a different number of bytes than announced.
    #[error(
        "{url}: expected {expected} bytes, got {actual} (the object changed or the transfer was cut)"
    )]
    ShortTransfer {
        /// The object.
        url: String,
        /// Bytes announced by the store.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// The shutdown deadline passed while the upload was still running.
    #[error("the upload of {url} was cut off by the shutdown deadline")]
    CutOff {
        /// The object.
        url: String,
    },
    /// An `s3://` URL was used with a store opened for local files only.
    #[error("{url}: this store was opened for file:// URLs and has no S3 client")]
    NoS3Client {
        /// The URL.
        url: String,
    },
}

impl StoreError {
    /// Whether trying again later can help (a network error, a timeout, a 5xx or throttling
    /// answer, a cut transfer), as opposed to a wrong bucket, wrong credentials or a local
    /// file that cannot be written.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::S3 { transient, .. } => *transient,
            StoreError::ShortTransfer { .. } | StoreError::CutOff { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::TimedOut
            ),
            StoreError::NoS3Client { .. } => false,
        }
    }

    /// The S3 error code, when S3 answered with one.
    pub fn s3_code(&self) -> Option<&str> {
        match self {
            StoreError::S3 { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The permanent refusal this is, if it is one.
    pub fn refusal(&self) -> Option<Refusal> {
        self.s3_code().and_then(Refusal::from_code)
    }

    fn io(op: &'static str, path: &Path, source: io::Error) -> StoreError {
        StoreError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// A handle on the stores: cheap to clone and share between tasks.
#[derive(Clone, Debug)]
pub struct Store {
    s3: Option<s3::S3Store>,
}

/// The `/`-separated key of `path` below `root`, the same on every platform: how a local
/// file under a synced folder is named in a store.
pub(crate) fn relative_key(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .expect("walkdir yields paths under its root")
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

impl Store {
    /// Opens the store for `url`: for `s3://` this builds the S3 client from the standard
    /// AWS configuration (credential chain, `AWS_ENDPOINT_URL`, region) and `options`; for
    /// `file://` nothing is needed. The returned store also serves `file://` URLs.
    pub async fn open(url: &StoreUrl, options: &S3Options) -> Result<Store, StoreError> {
        Store::open_with(url, options, |loader| loader).await
    }

    /// Like [`Store::open`], letting `customize` adjust the AWS configuration loader
    /// (explicit credentials or endpoint) before it reads the environment: for programs that
    /// embed the supervisor's storage and for tests that talk to several servers at once.
    pub async fn open_with(
        url: &StoreUrl,
        options: &S3Options,
        customize: impl FnOnce(aws_config::ConfigLoader) -> aws_config::ConfigLoader,
    ) -> Result<Store, StoreError> {
        let s3 = match url {
            StoreUrl::S3 { .. } => Some(s3::S3Store::connect(options, customize).await),
            StoreUrl::File { .. } => None,
        };
        Ok(Store { s3 })
    }

    /// A store for local `file://` URLs only.
    #[cfg(test)]
    pub(crate) fn local() -> Store {
        Store { s3: None }
    }

    fn s3(&self, url: &StoreUrl) -> Result<&s3::S3Store, StoreError> {
        self.s3.as_ref().ok_or_else(|| StoreError::NoS3Client {
            url: url.to_string(),
        })
    }

    /// Every object under `url` (recursively), with sizes, sorted by relative path.
    ///
    /// A URL without a trailing `/` that names one object lists that object; keys ending
    /// with `/` (folder markers made by consoles) are left out.
    pub async fn list(&self, url: &StoreUrl) -> Result<Vec<StoredObject>, StoreError> {
        let mut objects = match url {
            StoreUrl::S3 { bucket, key } => self.s3(url)?.list(bucket, key).await?,
            StoreUrl::File { path } => file::list(path).await?,
        };
        objects.retain(|o| !o.rel.is_empty() && !o.rel.ends_with('/'));
        objects.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(objects)
    }

    /// Downloads `object` to the local file `dest` (replaced atomically: a reader never sees
    /// a half-written file). Large objects are fetched in ranges, a few at a time.
    /// Returns the bytes written.
    pub async fn get(&self, object: &StoredObject, dest: &Path) -> Result<u64, StoreError> {
        match &object.url {
            StoreUrl::S3 { bucket, key } => {
                self.s3(&object.url)?
                    .get(bucket, key, object.size, dest)
                    .await
            }
            StoreUrl::File { path } => file::copy_atomic(path, dest).await,
        }
    }

    /// Uploads the local file `src` to `url` (an object, not a prefix). Files above the
    /// multipart threshold go up in parts, a few in parallel; a failed multipart upload is
    /// aborted so no orphaned parts are left to pay for.
    pub async fn put(&self, src: &Path, url: &StoreUrl) -> Result<PutOutcome, StoreError> {
        let len = tokio::fs::metadata(src)
            .await
            .map_err(|e| StoreError::io("read", src, e))?
            .len();
        let request = UploadRequest {
            len,
            stored: None,
            cutoff: CutOff::never(),
        };
        self.upload(src, url, &request).await
    }

    /// The smallest stored object an upload to `url` can extend without sending it again
    /// (S3: the minimum part size, since the stored copy becomes the first part; a
    /// directory appends to anything).
    pub fn min_extend_size(url: &StoreUrl) -> u64 {
        match url {
            StoreUrl::S3 { .. } => MIN_PART_SIZE,
            StoreUrl::File { .. } => 0,
        }
    }

    /// Stores the first `request.len` bytes of `src` at `url`, extending what the store
    /// already holds when `request.stored` says so (see [`UploadRequest`]).
    pub async fn upload(
        &self,
        src: &Path,
        url: &StoreUrl,
        request: &UploadRequest,
    ) -> Result<PutOutcome, StoreError> {
        match url {
            StoreUrl::S3 { bucket, key } => self.s3(url)?.upload(src, bucket, key, request).await,
            StoreUrl::File { path } => file::upload(src, path, request.len, request.stored).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<StoreUrl, UrlError> {
        s.parse()
    }

    #[test]
    fn parses_s3_urls_with_and_without_prefix() {
        assert_eq!(
            parse("s3://wave/scripts/t1/"),
            Ok(StoreUrl::S3 {
                bucket: "wave".into(),
                key: "scripts/t1/".into()
            })
        );
        assert_eq!(
            parse("s3://wave"),
            Ok(StoreUrl::S3 {
                bucket: "wave".into(),
                key: String::new()
            })
        );
        assert_eq!(
            parse("s3://wave/scripts/t1/").map(|u| u.to_string()),
            Ok("s3://wave/scripts/t1/".to_owned())
        );
    }

    #[test]
    fn parses_file_urls() {
        assert_eq!(
            parse("file:///tmp/store/"),
            Ok(StoreUrl::File {
                path: "/tmp/store/".into()
            })
        );
    }

    #[test]
    fn rejects_malformed_urls_with_a_reason() {
        for (url, reason) in [
            ("http://x/y", "expected s3://"),
            ("s3:///prefix/", "bucket name is missing"),
            ("s3://Wave/x", "lowercase"),
            ("s3://wave//x", "empty path segment"),
            ("s3://wave/a/../b", "'..' segment"),
            ("file://relative/path", "absolute path"),
            ("file:///a/../b", "'..' segment"),
            ("", "expected s3://"),
        ] {
            let err = parse(url).expect_err(url).to_string();
            assert!(err.contains(reason), "{url}: {err}");
            assert!(err.contains(&format!("{url:?}")), "{url}: {err}");
        }
    }

    #[test]
    fn join_puts_one_slash_between_segments() {
        let with = parse("s3://b/results/t1/").expect("valid");
        let without = parse("s3://b/results/t1").expect("valid");
        let root = parse("s3://b").expect("valid");
        assert_eq!(
            with.join("pod/c0/").to_string(),
            "s3://b/results/t1/pod/c0/"
        );
        assert_eq!(
            without.join("pod/c0/").to_string(),
            "s3://b/results/t1/pod/c0/"
        );
        assert_eq!(root.join("x/y").to_string(), "s3://b/x/y");
        let dir = parse("file:///tmp/r/").expect("valid");
        assert_eq!(
            dir.join("p/c0/a.txt").to_string(),
            "file:///tmp/r/p/c0/a.txt"
        );
    }
}
