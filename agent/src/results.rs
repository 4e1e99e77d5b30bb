//! Shipping what the agents write (SPEC 2.2 step 6).
//!
//! The [`Uploader`] mirrors `<work>/results/` to `<results URL><pod>/c<container>/`, keeping
//! relative paths. A file counts as uploaded once the store confirmed the size and
//! modification time it had when the upload started; a file that changes afterwards (an
//! agent still writing its log) goes up again at the next sync. Failed uploads are retried
//! at the next sync; local files are never deleted.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::time::Instant;

use crate::store::{Store, StoreError, StoreUrl};

/// Upload metrics (SPEC 2.3).
#[derive(Clone, Debug, Default)]
pub struct UploadMetrics {
    uploaded_bytes: Counter,
    failures: Counter,
    pending_bytes: Gauge,
}

impl UploadMetrics {
    /// Registers `wave_results_uploaded_bytes_total`, `wave_results_upload_failures_total`
    /// and `wave_results_pending_bytes`.
    pub fn register(registry: &mut Registry) -> UploadMetrics {
        let metrics = UploadMetrics::default();
        registry.register_with_unit(
            "wave_results_uploaded",
            "Bytes of result files the store confirmed",
            Unit::Bytes,
            metrics.uploaded_bytes.clone(),
        );
        registry.register(
            "wave_results_upload_failures",
            "Result file uploads that failed (each is retried at the next sync)",
            metrics.failures.clone(),
        );
        registry.register_with_unit(
            "wave_results_pending",
            "Bytes of result files new or changed since the store last confirmed them",
            Unit::Bytes,
            metrics.pending_bytes.clone(),
        );
        metrics
    }
}

/// What one [`Uploader::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Files the store confirmed in this sync.
    pub uploaded_files: usize,
    /// Their bytes.
    pub uploaded_bytes: u64,
    /// Files whose upload failed (retried at the next sync).
    pub failed_files: usize,
    /// Files not confirmed in their current state after this sync: failed, or changed
    /// while they were going up.
    pub pending_files: usize,
    /// Their bytes.
    pub pending_bytes: u64,
    /// The first failure, for the log.
    pub first_error: Option<StoreError>,
}

impl SyncReport {
    /// Whether every file is in the store as it is on disk now.
    pub fn is_complete(&self) -> bool {
        self.pending_files == 0
    }
}

/// Why results could not be shipped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The results directory could not be read.
    #[error("cannot read the results directory {}", path.display())]
    Scan {
        /// The directory or the entry that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The deadline passed with files still unconfirmed.
    #[error(
        "{pending_files} result files ({pending_bytes} bytes) were not confirmed by {destination} before the deadline"
    )]
    Incomplete {
        /// The results destination.
        destination: String,
        /// Files not confirmed.
        pending_files: usize,
        /// Their bytes.
        pending_bytes: u64,
        /// The last failure seen, if any.
        #[source]
        last_error: Option<Box<StoreError>>,
    },
}

/// Size and modification time: what the store confirmed of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    modified: SystemTime,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            size: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

/// A local result file found by a scan.
#[derive(Debug)]
struct LocalFile {
    rel: String,
    path: PathBuf,
    stamp: Stamp,
}

/// Files uploaded at once (each large one also moves several parts at once).
const PARALLEL_FILES: usize = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Mirrors a local results directory to a store prefix.
#[derive(Debug)]
pub struct Uploader {
    store: Store,
    local: PathBuf,
    remote: StoreUrl,
    confirmed: HashMap<String, Stamp>,
    metrics: UploadMetrics,
}

impl Uploader {
    /// An uploader of `local` (`<work>/results`) to `remote` (see [`Uploader::destination`]).
    pub fn new(
        store: Store,
        local: impl Into<PathBuf>,
        remote: StoreUrl,
        metrics: UploadMetrics,
    ) -> Uploader {
        Uploader {
            store,
            local: local.into(),
            remote,
            confirmed: HashMap::new(),
            metrics,
        }
    }

    /// `<results URL><pod>/c<container>/`, where a container's results go (SPEC 3).
    pub fn destination(results_url: &StoreUrl, pod: &str, container: u32) -> StoreUrl {
        results_url.join(&format!("{pod}/c{container}/"))
    }

    /// Uploads every file that is new or changed since the store last confirmed it.
    ///
    /// A failed file is counted and left for the next sync; only an unreadable results
    /// directory is an error.
    pub async fn sync(&mut self) -> Result<SyncReport, UploadError> {
        let files = scan(&self.local).await?;
        let changed: Vec<LocalFile> = files
            .into_iter()
            .filter(|f| self.confirmed.get(&f.rel) != Some(&f.stamp))
            .collect();
        self.metrics
            .pending_bytes
            .set(gauge_value(changed.iter().map(|f| f.stamp.size).sum()));

        let store = &self.store;
        let remote = &self.remote;
        let mut uploads = futures::stream::iter(changed)
            .map(|file| async move {
                let result = store.put(&file.path, &remote.join(&file.rel)).await;
                (file, result)
            })
            .buffer_unordered(PARALLEL_FILES);

        let mut report = SyncReport::default();
        let mut uploaded = Vec::new();
        while let Some((file, result)) = uploads.next().await {
            match result {
                Ok(outcome) => {
                    self.metrics.uploaded_bytes.inc_by(outcome.bytes);
                    report.uploaded_files += 1;
                    report.uploaded_bytes += outcome.bytes;
                    uploaded.push(file);
                }
                // Removed between the scan and the upload: nothing left to ship.
                Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(
                        file = %file.path.display(),
                        error = %crate::error_chain::ErrorChain(&e),
                        "result upload failed, retrying at the next sync"
                    );
                    self.metrics.failures.inc();
                    report.failed_files += 1;
                    report.pending_files += 1;
                    report.pending_bytes += file.stamp.size;
                    report.first_error.get_or_insert(e);
                }
            }
        }
        drop(uploads);
        for file in uploaded {
            // A file that changed while going up is pending again.
            if let Ok(meta) = tokio::fs::metadata(&file.path).await
                && Stamp::of(&meta) != file.stamp
            {
                report.pending_files += 1;
                report.pending_bytes += meta.len();
            }
            self.confirmed.insert(file.rel, file.stamp);
        }
        self.metrics
            .pending_bytes
            .set(gauge_value(report.pending_bytes));
        Ok(report)
    }

    /// Syncs again and again, with backoff, until every file is confirmed or `deadline`
    /// passes (an upload still running then is cut off).
    pub async fn flush(&mut self, deadline: Instant) -> Result<SyncReport, UploadError> {
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = None;
        loop {
            match tokio::time::timeout_at(deadline, self.sync()).await {
                Ok(Ok(report)) if report.is_complete() => return Ok(report),
                Ok(Ok(report)) => {
                    if report.uploaded_files > 0 {
                        backoff = FIRST_BACKOFF;
                    }
                    if let Some(e) = report.first_error {
                        last_error = Some(Box::new(e));
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_elapsed) => break,
            }
            if Instant::now() + backoff >= deadline {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let pending: Vec<LocalFile> = scan(&self.local)
            .await?
            .into_iter()
            .filter(|f| self.confirmed.get(&f.rel) != Some(&f.stamp))
            .collect();
        let pending_bytes = pending.iter().map(|f| f.stamp.size).sum();
        self.metrics.pending_bytes.set(gauge_value(pending_bytes));
        if pending.is_empty() {
            return Ok(SyncReport::default());
        }
        Err(UploadError::Incomplete {
            destination: self.remote.to_string(),
            pending_files: pending.len(),
            pending_bytes,
            last_error,
        })
    }
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// Every regular file under `root` with its stamp; a missing root has none.
async fn scan(root: &Path) -> Result<Vec<LocalFile>, UploadError> {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || scan_blocking(&root))
        .await
        .expect("the scan task does not panic")
}

/// A file removed while the scan walked past it (an agent's temporary file): not an error.
fn vanished(e: &walkdir::Error) -> bool {
    e.io_error()
        .is_some_and(|e| e.kind() == io::ErrorKind::NotFound)
}

fn scan_blocking(root: &Path) -> Result<Vec<LocalFile>, UploadError> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if vanished(&e) => continue,
            Err(e) => {
                return Err(UploadError::Scan {
                    path: e.path().unwrap_or(root).to_owned(),
                    source: e.into(),
                });
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(meta) => meta,
            Err(e) if vanished(&e) => continue,
            Err(e) => {
                return Err(UploadError::Scan {
                    path: entry.path().to_owned(),
                    source: e.into(),
                });
            }
        };
        let rel = crate::store::relative_key(root, entry.path());
        files.push(LocalFile {
            rel,
            path: entry.path().to_owned(),
            stamp: Stamp::of(&meta),
        });
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    struct Fixture {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        results: PathBuf,
        store_root: PathBuf,
        uploader: Uploader,
        registry: Registry,
    }

    fn fixture() -> Fixture {
        let local = tempfile::tempdir().expect("temp dir");
        let remote = tempfile::tempdir().expect("temp dir");
        let results = local.path().join("results");
        fs::create_dir_all(results.join("agent-0")).expect("mkdir");
        let base: StoreUrl = format!("file://{}/", remote.path().display())
            .parse()
            .expect("url");
        let mut registry = Registry::default();
        let metrics = UploadMetrics::register(&mut registry);
        let uploader = Uploader::new(
            Store::local(),
            &results,
            Uploader::destination(&base, "pod-1", 0),
            metrics,
        );
        Fixture {
            store_root: remote.path().join("pod-1/c0"),
            results,
            uploader,
            registry,
            _dirs: (local, remote),
        }
    }

    fn metrics_text(registry: &Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
        text
    }

    #[tokio::test]
    async fn uploads_new_files_once_and_changed_files_again() {
        let mut f = fixture();
        fs::write(f.results.join("agent-0/stdout.log"), b"line 1\n").expect("write");
        fs::write(f.results.join("summary.json"), b"{}").expect("write");
        let report = f.uploader.sync().await.expect("sync");
        assert_eq!((report.uploaded_files, report.uploaded_bytes), (2, 9));
        assert!(report.is_complete());
        assert_eq!(
            fs::read(f.store_root.join("agent-0/stdout.log")).expect("uploaded"),
            b"line 1\n"
        );

        let again = f.uploader.sync().await.expect("sync");
        assert_eq!(
            again.uploaded_files, 0,
            "unchanged files are not uploaded again"
        );

        fs::write(f.results.join("agent-0/stdout.log"), b"line 1\nline 2\n").expect("append");
        let changed = f.uploader.sync().await.expect("sync");
        assert_eq!(changed.uploaded_files, 1);
        assert_eq!(
            fs::read(f.store_root.join("agent-0/stdout.log")).expect("uploaded"),
            b"line 1\nline 2\n"
        );
        assert!(f.results.join("summary.json").exists(), "local files stay");
        let text = metrics_text(&f.registry);
        assert!(
            text.contains("wave_results_uploaded_bytes_total 23"),
            "{text}"
        );
        assert!(text.contains("wave_results_pending_bytes 0"), "{text}");
        assert!(
            text.contains("wave_results_upload_failures_total 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_failed_upload_is_counted_and_retried_at_the_next_sync() {
        let mut f = fixture();
        fs::write(f.results.join("agent-0/out.bin"), b"12345").expect("write");
        // The destination directory is a file: the store cannot write under it.
        fs::create_dir_all(f.store_root.parent().expect("pod dir")).expect("mkdir");
        fs::write(&f.store_root, b"in the way").expect("write");
        let failed = f.uploader.sync().await.expect("sync runs");
        assert_eq!((failed.failed_files, failed.pending_bytes), (1, 5));
        assert!(failed.first_error.is_some());
        let text = metrics_text(&f.registry);
        assert!(
            text.contains("wave_results_upload_failures_total 1"),
            "{text}"
        );
        assert!(text.contains("wave_results_pending_bytes 5"), "{text}");

        fs::remove_file(&f.store_root).expect("clear the way");
        let retried = f.uploader.sync().await.expect("sync");
        assert_eq!(retried.uploaded_files, 1);
        assert_eq!(
            fs::read(f.store_root.join("agent-0/out.bin")).expect("up"),
            b"12345"
        );
    }

    #[tokio::test]
    async fn flush_reports_what_is_left_when_the_deadline_passes() {
        let mut f = fixture();
        fs::write(f.results.join("agent-0/out.bin"), b"12345").expect("write");
        fs::create_dir_all(f.store_root.parent().expect("pod dir")).expect("mkdir");
        fs::write(&f.store_root, b"in the way").expect("write");
        let err = f
            .uploader
            .flush(Instant::now() + Duration::from_millis(700))
            .await
            .expect_err("the store cannot take the file");
        let text = crate::error_chain::ErrorChain(&err).to_string();
        assert!(
            text.contains("1 result files (5 bytes) were not confirmed"),
            "{text}"
        );
        assert!(text.contains("pod-1/c0"), "{text}");
    }

    #[tokio::test]
    async fn flush_returns_once_everything_is_confirmed() {
        let mut f = fixture();
        fs::write(f.results.join("agent-0/a"), b"a").expect("write");
        let report = f
            .uploader
            .flush(Instant::now() + Duration::from_secs(10))
            .await
            .expect("flush");
        assert!(report.is_complete());
        assert!(f.store_root.join("agent-0/a").is_file());
    }

    #[tokio::test]
    async fn a_missing_results_directory_is_nothing_to_do() {
        let mut f = fixture();
        fs::remove_dir_all(&f.results).expect("remove");
        let report = f.uploader.sync().await.expect("sync");
        assert_eq!(report.uploaded_files, 0);
    }

    #[test]
    fn destination_follows_the_s3_layout() {
        let base: StoreUrl = "s3://wave/results/t1/".parse().expect("url");
        assert_eq!(
            Uploader::destination(&base, "game-7f9c", 2).to_string(),
            "s3://wave/results/t1/game-7f9c/c2/"
        );
    }
}
