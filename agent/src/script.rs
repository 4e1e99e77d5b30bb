//! Fetching the test script (docs/agent-storage.md).
//!
//! Every object under the script URL lands in `<work>/script/` with its relative path, or,
//! when the URL holds a single `.tar.gz`/`.tgz`/`.zip` object, that archive is unpacked there
//! by [`crate::archive`]. Nothing may land outside: an object key with `..` or an absolute
//! path is refused with the key named, as the archive's unsafe entries are. The script is
//! assembled in a staging directory and moved into place at the end, so a failed fetch
//! never leaves a half-written script behind.

use std::fs;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::archive::{self, ArchiveError, ArchiveKind};
use crate::store::{Store, StoreError, StoreUrl, StoredObject};

/// Script metrics (docs/agent-supervisor.md).
#[derive(Clone, Debug, Default)]
pub struct ScriptMetrics {
    duration: Gauge<f64, AtomicU64>,
    bytes: Gauge,
}

impl ScriptMetrics {
    /// Registers `wave_script_fetch_duration_seconds` and `wave_script_bytes`.
    pub fn register(registry: &mut Registry) -> ScriptMetrics {
        let metrics = ScriptMetrics::default();
        registry.register_with_unit(
            "wave_script_fetch_duration",
            "Time the last script fetch took, retries and unpacking included",
            Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register_with_unit(
            "wave_script",
            "Bytes of script objects downloaded by the last fetch",
            Unit::Bytes,
            metrics.bytes.clone(),
        );
        metrics
    }
}

/// What [`fetch`] put in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedScript {
    /// Objects downloaded (1 for an archive).
    pub objects: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// The archive's name, when the script came as one archive that was unpacked.
    pub archive: Option<String>,
}

/// Why the script could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// No object under the URL.
    #[error(
        "no script at {url}: there is no object under it (upload the script there or point WAVE_SCRIPT_URL at it)"
    )]
    Missing {
        /// The script URL.
        url: String,
    },
    /// The store failed (after retries, when the failure was transient).
    #[error("cannot fetch the script from {url}")]
    Store {
        /// The script URL.
        url: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// An object key would land outside the script directory.
    #[error("refusing script {origin}: entry {entry:?} {problem}")]
    Unsafe {
        /// The script URL.
        origin: String,
        /// The object's key relative to the script URL.
        entry: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The archive is unsafe or could not be read.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// A local directory or file could not be prepared.
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
}

impl ScriptError {
    fn is_transient(&self) -> bool {
        matches!(self, ScriptError::Store { source, .. } if source.is_transient())
    }

    fn io(op: &'static str, path: &Path, source: io::Error) -> ScriptError {
        ScriptError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Attempts at a fetch that keeps failing transiently, and the backoff between them
/// (0.5 s doubling to 8 s: about 15 s in all before giving up).
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Objects of a prefix downloaded at once.
const PARALLEL_OBJECTS: usize = 8;

/// Fetches the script at `url` into `dest` (`<work>/script`), replacing what was there.
///
/// Transient store errors are retried with backoff; permanent ones (wrong credentials,
/// missing bucket, an unsafe archive) fail at once.
pub async fn fetch(
    store: &Store,
    url: &StoreUrl,
    dest: &Path,
    metrics: &ScriptMetrics,
) -> Result<FetchedScript, ScriptError> {
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let result = loop {
        match fetch_once(store, url, dest).await {
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tracing::warn!(
                    %url, attempt, retry_in = ?backoff,
                    error = %crate::error_chain::ErrorChain(&e),
                    "script fetch failed, retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
            other => break other,
        }
    };
    metrics.duration.set(started.elapsed().as_secs_f64());
    if let Ok(fetched) = &result {
        metrics
            .bytes
            .set(i64::try_from(fetched.bytes).unwrap_or(i64::MAX));
    }
    result
}

async fn fetch_once(
    store: &Store,
    url: &StoreUrl,
    dest: &Path,
) -> Result<FetchedScript, ScriptError> {
    let store_err = |source| ScriptError::Store {
        url: url.to_string(),
        source,
    };
    let objects = store.list(url).await.map_err(store_err)?;
    if objects.is_empty() {
        return Err(ScriptError::Missing {
            url: url.to_string(),
        });
    }
    let staging = sibling(dest, "partial");
    remove_dir_if_present(&staging)?;
    fs::create_dir_all(&staging).map_err(|e| ScriptError::io("create", &staging, e))?;
    let result = match objects.as_slice() {
        [single] if ArchiveKind::of(&single.rel).is_some() => {
            fetch_archive(store, single, &staging).await
        }
        _ => fetch_prefix(store, url, &objects, &staging).await,
    };
    let fetched = match result {
        Ok(fetched) => fetched,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    remove_dir_if_present(dest)?;
    fs::rename(&staging, dest).map_err(|e| ScriptError::io("move into place", dest, e))?;
    Ok(fetched)
}

async fn fetch_prefix(
    store: &Store,
    url: &StoreUrl,
    objects: &[StoredObject],
    staging: &Path,
) -> Result<FetchedScript, ScriptError> {
    let mut targets = Vec::with_capacity(objects.len());
    for object in objects {
        let rel = archive::safe_relative(Path::new(&object.rel)).map_err(|problem| {
            ScriptError::Unsafe {
                origin: url.to_string(),
                entry: object.rel.clone(),
                problem: problem.to_owned(),
            }
        })?;
        targets.push((object.clone(), staging.join(rel)));
    }
    let bytes: u64 = futures::stream::iter(targets)
        .map(|(object, path): (StoredObject, PathBuf)| async move {
            store
                .get(&object, &path)
                .await
                .map_err(|source| ScriptError::Store {
                    url: url.to_string(),
                    source,
                })
        })
        .buffer_unordered(PARALLEL_OBJECTS)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await?;
    // Objects carry no file mode: the supervisor makes the entry point runnable itself.
    let run = staging.join("run");
    if let Ok(meta) = fs::metadata(&run) {
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) | 0o755;
        fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| ScriptError::io("make executable", &run, e))?;
    }
    Ok(FetchedScript {
        objects: objects.len(),
        bytes,
        archive: None,
    })
}

async fn fetch_archive(
    store: &Store,
    object: &StoredObject,
    staging: &Path,
) -> Result<FetchedScript, ScriptError> {
    let kind = ArchiveKind::of(&object.rel).expect("the caller checked the name");
    let download = sibling(staging, "archive");
    let bytes = store
        .get(object, &download)
        .await
        .map_err(|source| ScriptError::Store {
            url: object.url.to_string(),
            source,
        })?;
    let origin = object.url.to_string();
    let unpack_into = staging.to_owned();
    let archive_path = download.clone();
    let result = tokio::task::spawn_blocking(move || {
        let file =
            fs::File::open(&archive_path).map_err(|e| ScriptError::io("open", &archive_path, e))?;
        let reader = BufReader::with_capacity(1024 * 1024, file);
        archive::unpack(kind, reader, &unpack_into, &origin).map_err(ScriptError::from)
    })
    .await
    .expect("the unpacking task does not panic");
    let _ = fs::remove_file(&download);
    result?;
    Ok(FetchedScript {
        objects: 1,
        bytes,
        archive: Some(object.rel.clone()),
    })
}

/// `<dir>/.<name>.<suffix>`, next to `path` so a rename stays on one file system.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "script".to_owned());
    path.with_file_name(format!(".{name}.{suffix}"))
}

fn remove_dir_if_present(path: &Path) -> Result<(), ScriptError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(ScriptError::io("remove the old", path, e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn fetches_a_prefix_from_a_file_store_and_makes_run_executable() {
        let src = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(src.path().join("lib/deep")).expect("mkdir");
        fs::write(src.path().join("run"), b"#!/bin/sh\necho hi\n").expect("write");
        fs::write(src.path().join("lib/deep/x.txt"), b"x").expect("write");
        let work = tempfile::tempdir().expect("temp dir");
        let dest = work.path().join("script");
        fs::create_dir_all(&dest).expect("mkdir");
        fs::write(dest.join("stale"), b"old").expect("write");
        let url: StoreUrl = format!("file://{}/", src.path().display())
            .parse()
            .expect("url");
        let mut registry = Registry::default();
        let metrics = ScriptMetrics::register(&mut registry);
        let fetched = fetch(&Store::local(), &url, &dest, &metrics)
            .await
            .expect("fetch");
        assert_eq!(fetched.objects, 2);
        assert_eq!(fetched.bytes, 19);
        assert_eq!(fs::read(dest.join("lib/deep/x.txt")).expect("x"), b"x");
        let mode = fs::metadata(dest.join("run"))
            .expect("run")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "run is executable: {mode:o}");
        assert!(!dest.join("stale").exists(), "the old script is replaced");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("wave_script_bytes 19"), "{text}");
        assert!(
            text.contains("wave_script_fetch_duration_seconds "),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_missing_script_names_the_url_and_keeps_the_old_one() {
        let src = tempfile::tempdir().expect("temp dir");
        let work = tempfile::tempdir().expect("temp dir");
        let dest = work.path().join("script");
        fs::create_dir_all(&dest).expect("mkdir");
        fs::write(dest.join("run"), b"old").expect("write");
        let url: StoreUrl = format!("file://{}/none/", src.path().display())
            .parse()
            .expect("url");
        let err = fetch(&Store::local(), &url, &dest, &ScriptMetrics::default())
            .await
            .expect_err("nothing there");
        assert!(matches!(err, ScriptError::Missing { .. }));
        assert!(err.to_string().contains(&url.to_string()), "{err}");
        assert_eq!(fs::read(dest.join("run")).expect("old run"), b"old");
    }

    #[tokio::test]
    async fn an_unsafe_object_key_is_refused() {
        let objects = [StoredObject {
            url: "s3://b/s/x".parse().expect("url"),
            rel: "../x".into(),
            size: 1,
        }];
        let dir = tempfile::tempdir().expect("temp dir");
        let url: StoreUrl = "s3://b/s/".parse().expect("url");
        let err = fetch_prefix(&Store::local(), &url, &objects, dir.path())
            .await
            .expect_err("unsafe key");
        assert!(err.to_string().contains("\"../x\" goes up"), "{err}");
    }
}
