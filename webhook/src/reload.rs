//! Watches the certificate, key and config files and reloads them when they change.
//!
//! The parent directories are watched rather than the files: Kubernetes updates Secret and
//! ConfigMap volumes by swapping a `..data` symlink inside the directory, which replaces the
//! files without writing to them. A change is only taken when the new content is usable;
//! otherwise the previous certificate or config stays in force and the problem is logged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, parse_config};
use crate::errors::error_chain;
use crate::metrics::{Metrics, Reloaded};
use crate::tls::{self, CertResolver};

/// Events arriving within this window are handled as one change (writers often touch a file
/// several times, and cert-manager writes the certificate and the key one after the other).
const SETTLE: Duration = Duration::from_millis(100);

/// Re-reads the files this often even without a file event, in case an event was missed.
const POLL: Duration = Duration::from_secs(30);

/// What a reload replaces, shared with the server that serves from it.
pub struct Live {
    /// The config in force, swapped whole on reload.
    pub config: ArcSwap<Config>,
    /// The certificate in force.
    pub resolver: Arc<CertResolver>,
    /// Metric handles (reload outcomes, certificate expiry).
    pub metrics: Metrics,
}

/// The files to follow.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Serving certificate and key, unless the webhook issues its own (`--tls-self-managed`).
    pub tls: Option<TlsFiles>,
    /// Configuration YAML, if one was given.
    pub config: Option<PathBuf>,
}

/// A serving certificate kept in files (cert-manager or a Secret volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Serving certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// What was last read from each file, so unchanged content is not reloaded or logged again.
#[derive(Debug, Default)]
pub struct Seen {
    /// Certificate and key bytes last tried.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// Config bytes last tried.
    pub config: Option<Vec<u8>>,
}

/// Loads the certificate pair if its files changed since `seen`; on success it is served to
/// every new connection. Returns whether a new pair was taken.
pub fn check_tls(files: &TlsFiles, live: &Live, seen: &mut Seen) -> bool {
    let read = |p: &Path| std::fs::read(p);
    let (cert, key) = match (read(&files.cert), read(&files.key)) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) | (_, Err(e)) => {
            if live.resolver.is_loaded() {
                warn!(error = %e, "cannot read the certificate files; keeping the previous certificate");
            } else {
                warn!(error = %e, cert = %files.cert.display(), key = %files.key.display(), "cannot read the certificate files; not ready until they can be read");
            }
            return false;
        }
    };
    if seen
        .tls
        .as_ref()
        .is_some_and(|(c, k)| *c == cert && *k == key)
    {
        return false;
    }
    let loaded = tls::pair_from_pem(&files.cert, &cert, &files.key, &key);
    seen.tls = Some((cert, key));
    match loaded {
        Ok(loaded) => {
            live.resolver.set(loaded.certified);
            live.metrics.set_cert_expiry(loaded.not_after);
            live.metrics.observe_reload(Reloaded::Tls, true);
            info!(cert = %files.cert.display(), not_after = loaded.not_after, "serving certificate loaded");
            true
        }
        Err(e) => {
            live.metrics.observe_reload(Reloaded::Tls, false);
            warn!(error = %error_chain(&e), "new certificate not usable; keeping the previous one");
            false
        }
    }
}

/// Reloads the config if its file changed since `seen`. Returns whether a new one was taken.
pub fn check_config(path: &Path, live: &Live, seen: &mut Seen) -> bool {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, config = %path.display(), "cannot read the config file; keeping the previous config");
            return false;
        }
    };
    if seen.config.as_deref() == Some(bytes.as_slice()) {
        return false;
    }
    let parsed = parse_config(path, &bytes);
    seen.config = Some(bytes);
    match parsed {
        Ok(config) => {
            live.config.store(Arc::new(config));
            live.metrics.observe_reload(Reloaded::Config, true);
            info!(config = %path.display(), "config reloaded");
            true
        }
        Err(e) => {
            live.metrics.observe_reload(Reloaded::Config, false);
            warn!(error = %error_chain(&e), "new config not usable; keeping the previous config");
            false
        }
    }
}

/// Whether a file event may have changed what the files hold. Opening and reading them does
/// not: inotify reports the reload's own reads, and taking those for changes made every check
/// schedule the next one, re-reading the files ten times a second for good. A writer closing
/// its file (inotify's CLOSE_WRITE, reported as an access) does.
fn may_change_content(kind: &notify::EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Follows the files until `stop` is cancelled.
pub async fn follow(watched: Watched, live: Arc<Live>, mut seen: Seen, stop: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut dirs = BTreeSet::new();
    let tls_files = watched.tls.iter().flat_map(|f| [&f.cert, &f.key]);
    for file in tls_files.chain(watched.config.as_ref()) {
        dirs.insert(
            file.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf(),
        );
    }
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| may_change_content(&e.kind)) {
            // A full channel already holds a pending change: nothing is lost.
            let _ = tx.try_send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => {
            for dir in &dirs {
                if let Err(e) = w.watch(dir, RecursiveMode::NonRecursive) {
                    warn!(dir = %dir.display(), error = %e, "cannot watch directory; changes there are noticed every {}s", POLL.as_secs());
                }
            }
            Some(w)
        }
        Err(e) => {
            warn!(error = %e, "cannot watch files; changes are noticed every {}s", POLL.as_secs());
            None
        }
    };
    let mut poll = tokio::time::interval(POLL);
    poll.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = poll.tick() => {}
            Some(()) = rx.recv() => {
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
            }
        }
        let watched = watched.clone();
        let live = live.clone();
        let mut taken = std::mem::take(&mut seen);
        let checked = tokio::task::spawn_blocking(move || {
            if let Some(files) = &watched.tls {
                check_tls(files, &live, &mut taken);
            }
            if let Some(path) = &watched.config {
                check_config(path, &live, &mut taken);
            }
            taken
        })
        .await;
        match checked {
            Ok(s) => seen = s,
            Err(e) => warn!(error = %e, "file reload check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn the_reloads_own_reads_are_not_taken_for_changes() {
        for kind in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Read),
        ] {
            assert!(!may_change_content(&kind), "{kind:?}");
        }
    }

    #[test]
    fn writes_renames_and_the_secret_volumes_symlink_swap_are_changes() {
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(may_change_content(&kind), "{kind:?}");
        }
    }
}
