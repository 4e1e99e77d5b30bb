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

pub use s3::{ChecksumMode, OptionError, S3Options};

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

/// What [`Store::put`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// Bytes stored.
    pub bytes: u64,
    /// Number of parts for a multipart upload, `None` for a single request.
    pub parts: Option<usize>,
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
            StoreError::ShortTransfer { .. } => true,
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
        match url {
            StoreUrl::S3 { bucket, key } => self.s3(url)?.put(src, bucket, key).await,
            StoreUrl::File { path } => {
                let bytes = file::copy_atomic(src, path).await?;
                Ok(PutOutcome { bytes, parts: None })
            }
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
