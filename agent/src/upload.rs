//! Shipping what the agents write (docs/agent-storage.md).
//!
//! The [`Uploader`] mirrors `<work>/results/` to `<results URL><pod>/c<container>/`, keeping
//! relative paths. What goes over the wire is what is new: a file that only grew since the
//! store confirmed it is extended in the store (see [`crate::ledger`] for how "only grew"
//! is told apart from "rewritten"), a new or rewritten file goes up whole. Each upload
//! stores a snapshot length read before it starts, so the stored object is always a
//! complete prefix of the local file. A file counts as confirmed as soon as its own upload
//! is, and the [`Ledger`] of confirmations is saved in the work directory. Failed uploads
//! are retried at the next sync; a permanent refusal (wrong credentials, no such bucket,
//! no permission) is logged once with what to fix and retried with a growing delay instead
//! of at every sync. Local files are never deleted.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::time::Instant;

use crate::ledger::{self, Confirmed, Ledger, Plan, Seen};
use crate::store::{CutOff, CutOffSetter, Refusal, Store, StoreError, StoreUrl, UploadRequest};
use crate::summary::SUMMARY_FILE;

/// Why an upload failed, as `wave_results_upload_failures_total{reason}` counts it: a
/// permanent refusal by its S3 code, anything else (network, 5xx, a local read) as `other`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum FailureReason {
    Refused(Refusal),
    Other,
}

impl EncodeLabelValue for FailureReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            FailureReason::Refused(refusal) => refusal.code(),
            FailureReason::Other => "other",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: FailureReason,
}

/// Upload metrics (docs/agent-supervisor.md).
#[derive(Clone, Debug, Default)]
pub struct UploadMetrics {
    uploaded_bytes: Counter,
    failures: Family<ReasonLabels, Counter>,
    pending_bytes: Gauge,
}

impl UploadMetrics {
    /// Registers `wave_results_uploaded_bytes_total`, `wave_results_upload_failures_total`
    /// (by reason, every reason present from the start) and `wave_results_pending_bytes`.
    pub fn register(registry: &mut Registry) -> UploadMetrics {
        let metrics = UploadMetrics::default();
        registry.register_with_unit(
            "wave_results_uploaded",
            "Bytes of result files sent to the store and confirmed (an extension of a stored object counts only its new bytes)",
            Unit::Bytes,
            metrics.uploaded_bytes.clone(),
        );
        registry.register(
            "wave_results_upload_failures",
            "Result file uploads that failed, by reason: the S3 code of a permanent refusal, or other",
            metrics.failures.clone(),
        );
        for reason in Refusal::ALL
            .map(FailureReason::Refused)
            .into_iter()
            .chain([FailureReason::Other])
        {
            let _ = metrics.failures.get_or_create(&ReasonLabels { reason });
        }
        registry.register_with_unit(
            "wave_results_pending",
            "Bytes of result files new or changed since the store last confirmed them",
            Unit::Bytes,
            metrics.pending_bytes.clone(),
        );
        metrics
    }

    fn failed(&self, reason: FailureReason) {
        self.failures.get_or_create(&ReasonLabels { reason }).inc();
    }
}

/// What one [`Uploader::sync`] did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Files the store confirmed in this sync.
    pub uploaded_files: usize,
    /// Bytes sent for them.
    pub uploaded_bytes: u64,
    /// Files whose upload failed (retried at the next sync).
    pub failed_files: usize,
    /// Files not confirmed in their current state after this sync: failed, held back by a
    /// refusal, or changed while they were going up.
    pub pending_files: usize,
    /// Their bytes not in the store yet.
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

/// A local result file found by a scan.
#[derive(Debug)]
struct LocalFile {
    rel: String,
    path: PathBuf,
    seen: Seen,
}

/// Files uploaded at once (each large one also moves several parts at once).
const PARALLEL_FILES: usize = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a permanent refusal; it doubles at every refused retry.
const FIRST_REFUSAL_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait between retries of a refused upload.
const MAX_REFUSAL_BACKOFF: Duration = Duration::from_secs(300);
/// Shortest time between two ledger writes within a sync (it is always written at the end).
const LEDGER_SAVE_EVERY: Duration = Duration::from_secs(1);
/// Longest a small growing file waits between whole sends (see [`ledger::Pacing`]).
const MAX_STALE: Duration = Duration::from_secs(60);

/// Retries held back after a permanent refusal.
#[derive(Debug)]
struct Refused {
    until: Instant,
}

/// The wait after refusal number `n + 1` in a row: 2 s doubling up to 5 minutes.
pub fn refusal_backoff(refusals_in_a_row: u32) -> Duration {
    FIRST_REFUSAL_BACKOFF
        .checked_mul(2u32.saturating_pow(refusals_in_a_row))
        .map_or(MAX_REFUSAL_BACKOFF, |d| d.min(MAX_REFUSAL_BACKOFF))
}

/// Mirrors a local results directory to a store prefix.
#[derive(Debug)]
pub struct Uploader {
    store: Store,
    local: PathBuf,
    remote: StoreUrl,
    ledger: Ledger,
    metrics: UploadMetrics,
    cutoff: CutOff,
    cutoff_setter: Arc<CutOffSetter>,
    refused: Option<Refused>,
    refusals_in_a_row: u32,
    /// Refusals already logged with what to fix (until uploads work again).
    logged: HashSet<Refusal>,
    /// Every file as the previous scan saw it (to tell a file that stopped growing).
    last_seen: HashMap<String, Seen>,
}

/// How one file's upload ended.
enum FileResult {
    Confirmed {
        confirmed: Confirmed,
        sent: u64,
    },
    /// Removed between the scan and the upload: nothing left to ship.
    Vanished,
    /// Not tried: a refusal earlier in this sync holds uploads back.
    HeldBack,
    Failed(StoreError),
}

impl Uploader {
    /// An uploader of `local` (`<work>/results`) to `remote` (see [`Uploader::destination`]),
    /// keeping its confirmations in memory (see [`Uploader::with_ledger`]).
    pub fn new(
        store: Store,
        local: impl Into<PathBuf>,
        remote: StoreUrl,
        metrics: UploadMetrics,
    ) -> Uploader {
        let (setter, cutoff) = CutOff::new();
        Uploader {
            store,
            local: local.into(),
            ledger: Ledger::in_memory(remote.to_string()),
            remote,
            metrics,
            cutoff,
            cutoff_setter: Arc::new(setter),
            refused: None,
            refusals_in_a_row: 0,
            logged: HashSet::new(),
            last_seen: HashMap::new(),
        }
    }

    /// Keeps the confirmations in the ledger file `path` (read now, written as uploads are
    /// confirmed), so that a restarted supervisor does not send them again.
    pub fn with_ledger(mut self, path: PathBuf) -> Uploader {
        self.ledger = Ledger::load(path, self.remote.to_string());
        self
    }

    /// `<results URL><pod>/c<container>/`, where a container's results go (docs/agent-storage.md).
    pub fn destination(results_url: &StoreUrl, pod: &str, container: u32) -> StoreUrl {
        results_url.join(&format!("{pod}/c{container}/"))
    }

    /// Sets the shutdown deadline of the uploads running now and later, from outside a
    /// sync in progress: when it passes they are cut off (multipart uploads aborted).
    pub fn cutoff(&self) -> Arc<CutOffSetter> {
        self.cutoff_setter.clone()
    }

    /// Uploads every file that is new or changed since the store last confirmed it, but
    /// for small growing files whose whole send can wait (see [`ledger::Pacing`]).
    ///
    /// A failed file is counted and left for the next sync; only an unreadable results
    /// directory is an error. While a permanent refusal holds uploads back, nothing is sent.
    pub async fn sync(&mut self) -> Result<SyncReport, UploadError> {
        self.sync_paced(true).await
    }

    async fn sync_paced(&mut self, paced: bool) -> Result<SyncReport, UploadError> {
        let files = scan(&self.local).await?;
        let pacing = ledger::Pacing {
            min_extend: Store::min_extend_size(&self.remote),
            now_s: unix_seconds(SystemTime::now()),
            max_stale_s: MAX_STALE.as_secs(),
        };
        let mut deferred_bytes = 0;
        let mut seen_now = HashMap::with_capacity(files.len());
        let mut changed: Vec<(LocalFile, Plan)> = Vec::new();
        for f in files {
            let still = self.last_seen.get(&f.rel) == Some(&f.seen);
            seen_now.insert(f.rel.clone(), f.seen);
            match ledger::plan(self.ledger.get(&f.rel), &f.seen) {
                Plan::Unchanged => {}
                Plan::CheckPrefix { stored }
                    if paced && ledger::defer_resend(&stored, &f.seen, still, &pacing) =>
                {
                    deferred_bytes += f.seen.size - stored.size;
                }
                plan => changed.push((f, plan)),
            }
        }
        self.last_seen = seen_now;
        let pending_of = |file: &LocalFile, plan: &Plan| match plan {
            Plan::CheckPrefix { stored } => file.seen.size - stored.size,
            _ => file.seen.size,
        };
        self.metrics.pending_bytes.set(gauge_value(
            deferred_bytes + changed.iter().map(|(f, p)| pending_of(f, p)).sum::<u64>(),
        ));
        let mut report = SyncReport::default();
        if let Some(refused) = &self.refused
            && Instant::now() < refused.until
        {
            report.pending_files = changed.len();
            report.pending_bytes = changed.iter().map(|(f, p)| pending_of(f, p)).sum();
            return Ok(report);
        }

        // summary.json goes last, once every other file of this sync is in the store: a
        // summary in the store means what it accounts for is there too.
        let summary = changed
            .iter()
            .position(|(f, _)| f.rel == SUMMARY_FILE)
            .map(|i| changed.remove(i));
        let store = &self.store;
        let remote = &self.remote;
        let cutoff = &self.cutoff;
        let holding = AtomicBool::new(false);
        let holding = &holding;
        let incomplete = AtomicBool::new(false);
        let incomplete = &incomplete;
        let upload = move |(file, plan): (LocalFile, Plan)| async move {
            if holding.load(Ordering::Relaxed) {
                incomplete.store(true, Ordering::Relaxed);
                return (file, FileResult::HeldBack);
            }
            let result = upload_file(store, remote, cutoff, &file, plan).await;
            if let FileResult::Failed(e) = &result {
                incomplete.store(true, Ordering::Relaxed);
                if e.refusal().is_some() {
                    holding.store(true, Ordering::Relaxed);
                }
            }
            (file, result)
        };
        let uploads = futures::stream::iter(changed)
            .map(upload)
            // After a refusal, one file at a time: the first one still refused holds the
            // others back, so a retry costs one request.
            .buffer_unordered(if self.refused.is_some() {
                1
            } else {
                PARALLEL_FILES
            })
            .chain(
                futures::stream::iter(summary).then(move |(file, plan)| async move {
                    if incomplete.load(Ordering::Relaxed) {
                        (file, FileResult::HeldBack)
                    } else {
                        upload((file, plan)).await
                    }
                }),
            );
        let mut uploads = Box::pin(uploads);

        let mut refusal = None;
        let mut last_save = Instant::now();
        while let Some((file, result)) = uploads.next().await {
            match result {
                FileResult::Confirmed { confirmed, sent } => {
                    self.metrics.uploaded_bytes.inc_by(sent);
                    report.uploaded_files += 1;
                    report.uploaded_bytes += sent;
                    if confirmed.size != file.seen.size {
                        report.pending_files += 1;
                        report.pending_bytes += file.seen.size.saturating_sub(confirmed.size);
                    }
                    self.ledger.confirm(file.rel, confirmed);
                    if last_save.elapsed() >= LEDGER_SAVE_EVERY {
                        save_ledger(&mut self.ledger);
                        last_save = Instant::now();
                    }
                }
                FileResult::Vanished => {}
                FileResult::HeldBack => {
                    report.pending_files += 1;
                    report.pending_bytes += file.seen.size;
                }
                FileResult::Failed(e) => {
                    let reason = match e.refusal() {
                        Some(refused) => {
                            refusal.get_or_insert(refused);
                            FailureReason::Refused(refused)
                        }
                        None => {
                            tracing::warn!(
                                file = %file.path.display(),
                                error = %crate::error_chain::ErrorChain(&e),
                                "result upload failed, retrying at the next sync"
                            );
                            FailureReason::Other
                        }
                    };
                    self.metrics.failed(reason);
                    report.failed_files += 1;
                    report.pending_files += 1;
                    report.pending_bytes += file.seen.size;
                    report.first_error.get_or_insert(e);
                }
            }
        }
        drop(uploads);
        save_ledger(&mut self.ledger);
        self.note_refusal(refusal, &report);
        self.metrics
            .pending_bytes
            .set(gauge_value(report.pending_bytes + deferred_bytes));
        Ok(report)
    }

    /// Holds retries back after a refusal (logging a new cause once, with what to fix),
    /// or lifts the hold once an upload went through again.
    fn note_refusal(&mut self, refusal: Option<Refusal>, report: &SyncReport) {
        match refusal {
            Some(refusal) => {
                let backoff = refusal_backoff(self.refusals_in_a_row);
                self.refusals_in_a_row = self.refusals_in_a_row.saturating_add(1);
                self.refused = Some(Refused {
                    until: Instant::now() + backoff,
                });
                let error = report
                    .first_error
                    .as_ref()
                    .map(|e| crate::error_chain::ErrorChain(e).to_string())
                    .unwrap_or_default();
                if self.logged.insert(refusal) {
                    tracing::error!(
                        reason = refusal.code(),
                        "the results store refuses uploads to {}: {}; retrying in {}, then less and less often (up to every {}). {error}",
                        self.remote,
                        refusal.what_to_fix(),
                        humantime::format_duration(backoff),
                        humantime::format_duration(MAX_REFUSAL_BACKOFF),
                    );
                } else {
                    tracing::debug!(
                        reason = refusal.code(),
                        "still refused; next retry in {}",
                        humantime::format_duration(backoff)
                    );
                }
            }
            None if report.uploaded_files > 0 && self.refused.is_some() => {
                tracing::info!("the results store accepts uploads again");
                self.refused = None;
                self.refusals_in_a_row = 0;
                self.logged.clear();
            }
            None => {}
        }
    }

    /// Syncs again and again, with backoff, until every file is confirmed or `deadline`
    /// passes (or the earlier deadline set through [`Uploader::cutoff`], also while the
    /// flush runs). The deadline also cuts off uploads still running then (a multipart
    /// upload is aborted, and the abort awaited).
    pub async fn flush(&mut self, deadline: Instant) -> Result<SyncReport, UploadError> {
        if self.cutoff.deadline().is_none_or(|set| deadline < set) {
            self.cutoff_setter.set(deadline);
        }
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = None;
        loop {
            // A shutdown may have moved the deadline since the flush started.
            let deadline = self.cutoff.deadline().unwrap_or(deadline);
            let report = self.sync_paced(false).await?;
            if report.is_complete() {
                return Ok(report);
            }
            if report.uploaded_files > 0 {
                backoff = FIRST_BACKOFF;
            }
            if let Some(e) = report.first_error {
                last_error = Some(Box::new(e));
            }
            let mut wait = backoff;
            if let Some(refused) = &self.refused {
                wait = wait.max(refused.until.saturating_duration_since(Instant::now()));
            }
            if Instant::now() + wait >= deadline {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.cutoff.reached() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let pending: Vec<(LocalFile, Plan)> = scan(&self.local)
            .await?
            .into_iter()
            .filter_map(|f| match ledger::plan(self.ledger.get(&f.rel), &f.seen) {
                Plan::Unchanged => None,
                plan => Some((f, plan)),
            })
            .collect();
        let pending_bytes = pending
            .iter()
            .map(|(f, p)| match p {
                Plan::CheckPrefix { stored } => f.seen.size - stored.size,
                _ => f.seen.size,
            })
            .sum();
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

fn save_ledger(ledger: &mut Ledger) {
    if let Err(err) = ledger.save() {
        tracing::warn!(
            "{} (confirmed uploads may be sent again after a restart)",
            crate::error_chain::ErrorChain(&err)
        );
    }
}

/// Uploads one file as `plan` says, from a snapshot of its length taken now.
async fn upload_file(
    store: &Store,
    remote: &StoreUrl,
    cutoff: &CutOff,
    file: &LocalFile,
    plan: Plan,
) -> FileResult {
    let path = file.path.clone();
    let len = file.seen.size;
    let checked = tokio::task::spawn_blocking(move || {
        let plan = match plan {
            Plan::CheckPrefix { stored } => match ledger::fingerprint(&path, stored.size) {
                Ok(now) => ledger::after_check(&stored, now),
                Err(_) => Plan::Whole,
            },
            plan => plan,
        };
        ledger::fingerprint(&path, len).map(|fingerprint| (plan, fingerprint))
    })
    .await
    .expect("the fingerprint task does not panic");
    let (plan, fingerprint) = match checked {
        Ok(checked) => checked,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return FileResult::Vanished,
        // Shrunk since the scan: the next sync sees it as rewritten.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return FileResult::Failed(StoreError::ShortTransfer {
                url: remote.join(&file.rel).to_string(),
                expected: len,
                actual: 0,
            });
        }
        Err(source) => {
            return FileResult::Failed(StoreError::Io {
                op: "read",
                path: file.path.clone(),
                source,
            });
        }
    };
    let request = UploadRequest {
        len,
        stored: match plan {
            Plan::Extend { stored } => Some(stored),
            _ => None,
        },
        cutoff: cutoff.clone(),
    };
    match store
        .upload(&file.path, &remote.join(&file.rel), &request)
        .await
    {
        Ok(outcome) => FileResult::Confirmed {
            confirmed: Confirmed {
                size: outcome.stored,
                modified_ns: file.seen.modified_ns,
                inode: file.seen.inode,
                fingerprint,
                confirmed_at_s: unix_seconds(SystemTime::now()),
            },
            sent: outcome.bytes,
        },
        Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            FileResult::Vanished
        }
        Err(e) => FileResult::Failed(e),
    }
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn seen_of(meta: &std::fs::Metadata) -> Seen {
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Seen {
        size: meta.len(),
        modified_ns,
        inode: meta.ino(),
    }
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
            seen: seen_of(&meta),
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
    async fn uploads_new_files_once_and_only_the_new_bytes_of_grown_ones() {
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
            text.contains("wave_results_uploaded_bytes_total 16"),
            "the second sync sent the 7 new bytes only: {text}"
        );
        assert!(text.contains("wave_results_pending_bytes 0"), "{text}");
        assert!(
            text.contains("wave_results_upload_failures_total{reason=\"other\"} 0"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_rewritten_file_goes_up_whole() {
        let mut f = fixture();
        let log = f.results.join("agent-0/players.csv");
        fs::write(&log, b"header\nrow 1\n").expect("write");
        f.uploader.sync().await.expect("sync");
        fs::write(&log, b"header\nrow A\nrow B\n").expect("rewrite, longer");
        let report = f.uploader.sync().await.expect("sync");
        assert_eq!(report.uploaded_bytes, 19, "sent whole");
        assert_eq!(
            fs::read(f.store_root.join("agent-0/players.csv")).expect("stored"),
            b"header\nrow A\nrow B\n"
        );
    }

    #[tokio::test]
    async fn a_restarted_uploader_sends_only_what_changed_since_its_ledger() {
        let f = fixture();
        let ledger = f.results.parent().expect("work").join("state/uploads.json");
        fs::write(f.results.join("agent-0/stdout.log"), b"before\n").expect("write");
        fs::write(f.results.join("agent-0/done"), b"x").expect("write");
        let base = f.uploader.remote.clone();
        let metrics = UploadMetrics::default();
        let mut first = Uploader::new(Store::local(), &f.results, base.clone(), metrics.clone())
            .with_ledger(ledger.clone());
        first.sync().await.expect("sync");
        drop(first);
        let mut log = fs::OpenOptions::new()
            .append(true)
            .open(f.results.join("agent-0/stdout.log"))
            .expect("open");
        std::io::Write::write_all(&mut log, b"after\n").expect("append");
        let mut second =
            Uploader::new(Store::local(), &f.results, base, metrics).with_ledger(ledger);
        let report = second.sync().await.expect("sync");
        assert_eq!((report.uploaded_files, report.uploaded_bytes), (1, 6));
        assert_eq!(
            fs::read(f.store_root.join("agent-0/stdout.log")).expect("stored"),
            b"before\nafter\n"
        );
    }

    #[test]
    fn refused_retries_wait_longer_and_longer_up_to_five_minutes() {
        let waits: Vec<u64> = (0..10).map(|n| refusal_backoff(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
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
            text.contains("wave_results_upload_failures_total{reason=\"other\"} 1"),
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
