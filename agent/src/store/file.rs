//! The `file://` store: a local directory (local runs, tests, the embedded default).

use std::path::{Path, PathBuf};

use std::io::{Read, Seek, SeekFrom, Write};

use super::{PutOutcome, StoreError, StoreUrl, StoredObject};

/// Every file under `root` (or `root` itself when it is a file); a missing root is empty,
/// like an S3 prefix with no objects.
pub(super) async fn list(root: &Path) -> Result<Vec<StoredObject>, StoreError> {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || list_blocking(&root))
        .await
        .expect("the listing task does not panic")
}

fn list_blocking(root: &Path) -> Result<Vec<StoredObject>, StoreError> {
    let meta = match std::fs::metadata(root) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io("read", root, e)),
    };
    if meta.is_file() {
        let rel = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(vec![StoredObject {
            url: StoreUrl::File {
                path: root.to_owned(),
            },
            rel,
            size: meta.len(),
        }]);
    }
    let mut objects = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(true) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_owned();
            StoreError::io("list", &path, e.into())
        })?;
        if !entry.file_type().is_file() || is_temp_name(entry.file_name()) {
            continue;
        }
        let rel = super::relative_key(root, entry.path());
        let size = entry
            .metadata()
            .map_err(|e| StoreError::io("read", entry.path(), e.into()))?
            .len();
        objects.push(StoredObject {
            url: StoreUrl::File {
                path: entry.path().to_owned(),
            },
            rel,
            size,
        });
    }
    Ok(objects)
}

const TEMP_PREFIX: &str = ".wave-tmp-";

fn is_temp_name(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with(TEMP_PREFIX)
}

/// A temporary path next to `dest`, on the same file system so a rename is atomic.
pub(super) fn temp_path_for(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let unique = format!(
        "{TEMP_PREFIX}{}-{}-{name}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    dest.with_file_name(unique)
}

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Copies `src` to `dest` through a temporary file and a rename, creating parent
/// directories: a reader of `dest` sees the old file or the whole new one.
pub(super) async fn copy_atomic(src: &Path, dest: &Path) -> Result<u64, StoreError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| StoreError::io("create directory", parent, e))?;
    }
    let tmp = temp_path_for(dest);
    let copied = match tokio::fs::copy(src, &tmp).await {
        Ok(n) => n,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            let path = if tokio::fs::metadata(src).await.is_err() {
                src
            } else {
                dest
            };
            return Err(StoreError::io("copy", path, e));
        }
    };
    if let Err(e) = tokio::fs::rename(&tmp, dest).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(StoreError::io("write", dest, e));
    }
    Ok(copied)
}

/// Stores the first `len` bytes of `src` at `dest`: appended when `dest` holds exactly the
/// `stored` bytes already confirmed (a reader sees a prefix of the local file at every
/// moment), else copied whole through a temporary file and a rename.
pub(super) async fn upload(
    src: &Path,
    dest: &Path,
    len: u64,
    stored: Option<u64>,
) -> Result<PutOutcome, StoreError> {
    let (src, dest) = (src.to_owned(), dest.to_owned());
    tokio::task::spawn_blocking(move || upload_blocking(&src, &dest, len, stored))
        .await
        .expect("the copy task does not panic")
}

fn upload_blocking(
    src: &Path,
    dest: &Path,
    len: u64,
    stored: Option<u64>,
) -> Result<PutOutcome, StoreError> {
    let mut input = std::fs::File::open(src).map_err(|e| StoreError::io("read", src, e))?;
    if let Some(from) = stored.filter(|&from| from <= len)
        && let Ok(mut out) = std::fs::OpenOptions::new().write(true).open(dest)
        && out.metadata().is_ok_and(|m| m.len() == from)
    {
        input
            .seek(SeekFrom::Start(from))
            .map_err(|e| StoreError::io("read", src, e))?;
        out.seek(SeekFrom::End(0))
            .map_err(|e| StoreError::io("write", dest, e))?;
        let sent = copy_exactly(&mut input, len - from, &mut out, src, dest)?;
        out.flush().map_err(|e| StoreError::io("write", dest, e))?;
        return Ok(PutOutcome {
            bytes: sent,
            stored: len,
            parts: None,
        });
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::io("create directory", parent, e))?;
    }
    let tmp = temp_path_for(dest);
    let result = std::fs::File::create(&tmp)
        .map_err(|e| StoreError::io("write", dest, e))
        .and_then(|mut out| copy_exactly(&mut input, len, &mut out, src, dest))
        .and_then(|_| std::fs::rename(&tmp, dest).map_err(|e| StoreError::io("write", dest, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| PutOutcome {
        bytes: len,
        stored: len,
        parts: None,
    })
}

/// Copies exactly `len` bytes (a file that shrank under the copy is a short transfer).
fn copy_exactly(
    input: &mut std::fs::File,
    len: u64,
    out: &mut std::fs::File,
    src: &Path,
    dest: &Path,
) -> Result<u64, StoreError> {
    let copied = std::io::copy(&mut input.take(len), out).map_err(|e| {
        if out.metadata().is_err() {
            StoreError::io("write", dest, e)
        } else {
            StoreError::io("copy", src, e)
        }
    })?;
    if copied != len {
        return Err(StoreError::ShortTransfer {
            url: format!("file://{}", dest.display()),
            expected: len,
            actual: copied,
        });
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_nested_files_with_sizes_and_skips_temp_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/c.txt"), b"hello").expect("write");
        std::fs::write(dir.path().join("run"), b"#!/bin/sh\n").expect("write");
        std::fs::write(dir.path().join(".wave-tmp-1-x"), b"partial").expect("write");
        let mut objects = list(dir.path()).await.expect("list");
        objects.sort_by(|a, b| a.rel.cmp(&b.rel));
        let found: Vec<_> = objects.iter().map(|o| (o.rel.as_str(), o.size)).collect();
        assert_eq!(found, [("a/b/c.txt", 5), ("run", 10)]);
    }

    #[tokio::test]
    async fn a_missing_directory_lists_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(
            list(&dir.path().join("nope"))
                .await
                .expect("list")
                .is_empty()
        );
    }

    #[tokio::test]
    async fn copy_creates_parents_and_replaces_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = dir.path().join("src");
        std::fs::write(&src, b"new content").expect("write");
        let dest = dir.path().join("x/y/dest");
        std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
        std::fs::write(&dest, b"old").expect("write");
        assert_eq!(copy_atomic(&src, &dest).await.expect("copy"), 11);
        assert_eq!(std::fs::read(&dest).expect("read"), b"new content");
        let leftovers: Vec<_> = std::fs::read_dir(dest.parent().expect("parent"))
            .expect("read dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, ["dest"]);
    }

    #[tokio::test]
    async fn an_upload_appends_to_the_confirmed_prefix_and_copies_whole_otherwise() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = dir.path().join("log");
        let dest = dir.path().join("store/log");
        std::fs::write(&src, b"first\nsecond\nthird (still being written)").expect("write");
        let whole = upload(&src, &dest, 6, None).await.expect("whole");
        assert_eq!((whole.bytes, whole.stored), (6, 6));
        let appended = upload(&src, &dest, 13, Some(6)).await.expect("append");
        assert_eq!((appended.bytes, appended.stored), (7, 13));
        assert_eq!(std::fs::read(&dest).expect("read"), b"first\nsecond\n");
        // The stored object is not what the caller thinks: sent whole instead.
        let mismatch = upload(&src, &dest, 13, Some(3)).await.expect("whole again");
        assert_eq!(mismatch.bytes, 13);
        assert_eq!(std::fs::read(&dest).expect("read"), b"first\nsecond\n");
    }

    #[tokio::test]
    async fn a_file_shorter_than_its_snapshot_is_a_short_transfer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let src = dir.path().join("log");
        std::fs::write(&src, b"abc").expect("write");
        let err = upload(&src, &dir.path().join("d"), 10, None)
            .await
            .expect_err("shrunk");
        assert!(matches!(err, StoreError::ShortTransfer { .. }), "{err}");
        assert!(!dir.path().join("d").exists(), "nothing half-written");
    }

    #[tokio::test]
    async fn copying_a_missing_file_names_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = copy_atomic(&dir.path().join("missing"), &dir.path().join("d"))
            .await
            .expect_err("source is missing");
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(!err.is_transient());
    }
}
