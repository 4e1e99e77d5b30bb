//! Unpacking a script archive into the script directory (docs/agent-storage.md, "Script
//! fetch").
//!
//! Nothing may land outside: entries with `..`, absolute paths, links pointing out, and
//! writes through a link are refused with the entry named. Only files, directories and
//! links are unpacked, with their rwx modes (setuid and setgid dropped).

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// Why an archive could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// An entry would land outside the script directory.
    #[error("refusing script {origin}: entry {entry:?} {problem}")]
    Unsafe {
        /// The archive's URL.
        origin: String,
        /// The entry's name as written in the archive.
        entry: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The archive could not be read (corrupt, truncated, not really an archive).
    #[error("cannot unpack script archive {archive}")]
    Unreadable {
        /// The archive's URL.
        archive: String,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
}

/// The archive formats a single script object may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArchiveKind {
    TarGz,
    Zip,
}

impl ArchiveKind {
    /// The format `name` (an object key) says the archive has, if any.
    pub(crate) fn of(name: &str) -> Option<ArchiveKind> {
        let name = name.to_ascii_lowercase();
        if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(ArchiveKind::TarGz)
        } else if name.ends_with(".zip") {
            Some(ArchiveKind::Zip)
        } else {
            None
        }
    }
}

/// Unpacks the `kind` archive read from `reader` (named `origin` in errors) into `root`.
pub(crate) fn unpack(
    kind: ArchiveKind,
    reader: impl Read + io::Seek,
    root: &Path,
    origin: &str,
) -> Result<(), ArchiveError> {
    match kind {
        ArchiveKind::TarGz => unpack_tar(flate2::read::GzDecoder::new(reader), root, origin),
        ArchiveKind::Zip => unpack_zip(reader, root, origin),
    }
}

/// `path` as a relative path that stays inside the directory it is joined to, or why not.
pub(crate) fn safe_relative(path: &Path) -> Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("goes up with '..'"),
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path"),
        }
    }
    Ok(out)
}

/// Checks that a symbolic link at `rel` with `target` resolves inside the root.
///
/// Only leading `..` segments are accepted, followed by names: then the lexical answer is
/// the real one, because every link in the tree obeys the same rule (a `..` after a name
/// that is itself a link could otherwise climb out).
fn check_link_target(rel: &Path, target: &Path) -> Result<(), String> {
    let outside = || {
        format!(
            "is a link to {} which points outside the script directory",
            target.display()
        )
    };
    let mut depth = rel.components().count().saturating_sub(1);
    let mut seen_name = false;
    for component in target.components() {
        match component {
            Component::Normal(_) => seen_name = true,
            Component::CurDir => {}
            Component::ParentDir if !seen_name && depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside());
            }
        }
    }
    Ok(())
}

/// Unpacks entries into `root`, enforcing the rules of the module docs.
struct Unpacker<'a> {
    root: &'a Path,
    origin: &'a str,
    /// Directory modes applied at the end, so a read-only directory does not block the
    /// entries inside it.
    dir_modes: Vec<(PathBuf, u32)>,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, origin: &'a str) -> Self {
        Unpacker {
            root,
            origin,
            dir_modes: Vec::new(),
        }
    }

    fn unsafe_entry(&self, entry: &str, problem: impl Into<String>) -> ArchiveError {
        ArchiveError::Unsafe {
            origin: self.origin.to_owned(),
            entry: entry.to_owned(),
            problem: problem.into(),
        }
    }

    fn io_err(&self, e: io::Error) -> ArchiveError {
        ArchiveError::Unreadable {
            archive: self.origin.to_owned(),
            source: e,
        }
    }

    /// Validates `name` and prepares the place of a new entry: parents created, nothing on
    /// the way is a link, an old link at the place itself removed. Returns the full path, or
    /// `None` for the root itself (`./`).
    fn place(&self, name: &str, raw: &Path) -> Result<Option<(PathBuf, PathBuf)>, ArchiveError> {
        let rel = safe_relative(raw).map_err(|p| self.unsafe_entry(name, p))?;
        if rel.as_os_str().is_empty() {
            return Ok(None);
        }
        let mut at = self.root.to_owned();
        let mut components = rel.components().peekable();
        while let Some(component) = components.next() {
            at.push(component);
            let last = components.peek().is_none();
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if last {
                        fs::remove_file(&at).map_err(|e| self.io_err(e))?;
                    } else {
                        return Err(self.unsafe_entry(name, "would be written through a link"));
                    }
                }
                Ok(meta) if !last && !meta.is_dir() => {
                    return Err(
                        self.unsafe_entry(name, "is inside something that is not a directory")
                    );
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !last {
                        fs::create_dir(&at).map_err(|e| self.io_err(e))?;
                    }
                }
                Err(e) => return Err(self.io_err(e)),
            }
        }
        Ok(Some((rel, at)))
    }

    fn dir(&mut self, name: &str, raw: &Path, mode: Option<u32>) -> Result<(), ArchiveError> {
        if let Some((_, path)) = self.place(name, raw)? {
            match fs::create_dir(&path) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(self.io_err(e));
                }
                _ => {}
            }
            if let Some(mode) = mode {
                self.dir_modes.push((path, mode & 0o777));
            }
        }
        Ok(())
    }

    fn file(
        &self,
        name: &str,
        raw: &Path,
        mode: Option<u32>,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let Some((_, path)) = self.place(name, raw)? else {
            return Err(self.unsafe_entry(name, "is a file where the script directory should be"));
        };
        let mut out = fs::File::create(&path).map_err(|e| self.io_err(e))?;
        io::copy(data, &mut out).map_err(|e| self.io_err(e))?;
        if let Some(mode) = mode {
            out.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode & 0o777))
                .map_err(|e| self.io_err(e))?;
        }
        Ok(())
    }

    fn symlink(&self, name: &str, raw: &Path, target: &Path) -> Result<(), ArchiveError> {
        let rel = safe_relative(raw).map_err(|p| self.unsafe_entry(name, p))?;
        check_link_target(&rel, target).map_err(|p| self.unsafe_entry(name, p))?;
        if let Some((_, path)) = self.place(name, raw)? {
            std::os::unix::fs::symlink(target, &path).map_err(|e| self.io_err(e))?;
        }
        Ok(())
    }

    fn hard_link(&self, name: &str, raw: &Path, target: &Path) -> Result<(), ArchiveError> {
        let outside = || {
            self.unsafe_entry(
                name,
                format!(
                    "is a hard link to {} outside the script directory",
                    target.display()
                ),
            )
        };
        let target_rel = safe_relative(target).map_err(|_| outside())?;
        let target_path = self.root.join(&target_rel);
        // A hard link to a symbolic link would move the link's relative target elsewhere.
        match fs::symlink_metadata(&target_path) {
            Ok(meta) if meta.is_file() => {}
            _ => {
                return Err(self.unsafe_entry(
                    name,
                    format!(
                        "is a hard link to {}, which is not a file unpacked before it",
                        target.display()
                    ),
                ));
            }
        }
        if let Some((_, path)) = self.place(name, raw)? {
            let _ = fs::remove_file(&path);
            fs::hard_link(&target_path, &path).map_err(|e| self.io_err(e))?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), ArchiveError> {
        // Deepest first, so a parent's mode never blocks changing a child's.
        self.dir_modes
            .sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, mode) in &self.dir_modes {
            fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(*mode))
                .map_err(|e| self.io_err(e))?;
        }
        Ok(())
    }
}

fn unpack_tar(reader: impl Read, root: &Path, origin: &str) -> Result<(), ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    let mut unpacker = Unpacker::new(root, origin);
    let entries = archive.entries().map_err(|e| unpacker.io_err(e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| unpacker.io_err(e))?;
        let raw = entry.path().map_err(|e| unpacker.io_err(e))?.into_owned();
        let name = raw.to_string_lossy().into_owned();
        let mode = entry.header().mode().ok();
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => unpacker.dir(&name, &raw, mode)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                unpacker.file(&name, &raw, mode, &mut entry)?
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| unpacker.io_err(e))?
                    .map(|t| t.into_owned())
                    .ok_or_else(|| unpacker.unsafe_entry(&name, "is a link without a target"))?;
                if kind == tar::EntryType::Symlink {
                    unpacker.symlink(&name, &raw, &target)?;
                } else {
                    unpacker.hard_link(&name, &raw, &target)?;
                }
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
            _ => {
                return Err(unpacker.unsafe_entry(
                    &name,
                    "is a device, FIFO or other special file (only files, directories and links are unpacked)",
                ));
            }
        }
    }
    unpacker.finish()
}

fn unpack_zip(reader: impl Read + io::Seek, root: &Path, origin: &str) -> Result<(), ArchiveError> {
    let mut unpacker = Unpacker::new(root, origin);
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| unpacker.io_err(e.into()))?;
    for index in 0..archive.len() {
        let mut entry = archive
            .by_index(index)
            .map_err(|e| unpacker.io_err(e.into()))?;
        let name = entry
            .name()
            .map_err(|e| unpacker.io_err(e.into()))?
            .into_owned();
        let raw = PathBuf::from(&name);
        let mode = entry.unix_mode();
        if entry.is_dir() {
            unpacker.dir(&name, &raw, mode)?;
        } else if entry.is_symlink() {
            let mut target = String::new();
            entry
                .read_to_string(&mut target)
                .map_err(|e| unpacker.io_err(e))?;
            unpacker.symlink(&name, &raw, Path::new(&target))?;
        } else {
            unpacker.file(&name, &raw, mode, &mut entry)?;
        }
    }
    unpacker.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        let tar = builder.into_inner().expect("tar in memory");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &tar).expect("gzip in memory");
        gz.finish().expect("gzip in memory")
    }

    /// A header with a raw name, bypassing the builder's own path checks (which refuse
    /// `..`), as a hostile archive would have.
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

    fn unpack_tar_gz(archive: &[u8]) -> (tempfile::TempDir, Result<(), ArchiveError>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let result = unpack_tar(
            flate2::read::GzDecoder::new(archive),
            dir.path(),
            "s3://b/s.tar.gz",
        );
        (dir, result)
    }

    fn refused(archive: &[u8], entry: &str, problem: &str) {
        let (dir, result) = unpack_tar_gz(archive);
        let err = result.expect_err("the archive is unsafe").to_string();
        assert!(err.contains(&format!("{entry:?}")), "{err}");
        assert!(err.contains(problem), "{err}");
        assert!(err.contains("s3://b/s.tar.gz"), "{err}");
        let escaped = dir.path().parent().expect("parent").join("escaped");
        assert!(
            !escaped.exists(),
            "an entry escaped to {}",
            escaped.display()
        );
    }

    #[test]
    fn unpacks_files_dirs_links_and_keeps_modes() {
        let archive = tar_gz(|b| {
            raw_entry(b, "bin/", tar::EntryType::Directory, None, b"");
            let mut header = tar::Header::new_gnu();
            header.set_path("bin/run").expect("path");
            header.set_mode(0o750);
            header.set_size(10);
            header.set_cksum();
            b.append(&header, &b"#!/bin/sh\n"[..]).expect("append");
            raw_entry(b, "data/levels.json", tar::EntryType::Regular, None, b"{}");
            raw_entry(b, "run", tar::EntryType::Symlink, Some("bin/run"), b"");
            raw_entry(
                b,
                "data/copy.json",
                tar::EntryType::Link,
                Some("data/levels.json"),
                b"",
            );
            raw_entry(b, "data/up", tar::EntryType::Symlink, Some("../bin"), b"");
        });
        let (dir, result) = unpack_tar_gz(&archive);
        result.expect("a safe archive unpacks");
        let run = dir.path().join("bin/run");
        assert_eq!(fs::read(&run).expect("run"), b"#!/bin/sh\n");
        assert_eq!(
            fs::metadata(&run).expect("meta").permissions().mode() & 0o777,
            0o750
        );
        assert_eq!(
            fs::read(dir.path().join("run")).expect("via link"),
            b"#!/bin/sh\n"
        );
        assert_eq!(
            fs::read(dir.path().join("data/copy.json")).expect("hard link"),
            b"{}"
        );
        assert!(dir.path().join("data/up/run").is_file());
    }

    #[test]
    fn refuses_parent_dir_entries() {
        let archive = tar_gz(|b| {
            raw_entry(b, "ok.txt", tar::EntryType::Regular, None, b"fine");
            raw_entry(b, "../escaped", tar::EntryType::Regular, None, b"evil");
        });
        refused(&archive, "../escaped", "goes up with '..'");
    }

    #[test]
    fn refuses_absolute_entries() {
        let archive = tar_gz(|b| {
            raw_entry(b, "/tmp/escaped", tar::EntryType::Regular, None, b"evil");
        });
        refused(&archive, "/tmp/escaped", "absolute path");
    }

    #[test]
    fn refuses_symlinks_pointing_outside() {
        for target in ["../escaped", "/etc", "a/../../escaped", "sub/../.."] {
            let archive = tar_gz(|b| {
                raw_entry(b, "link", tar::EntryType::Symlink, Some(target), b"");
            });
            refused(&archive, "link", "points outside");
        }
    }

    #[test]
    fn refuses_writing_through_a_symlink() {
        let archive = tar_gz(|b| {
            raw_entry(b, "sub/", tar::EntryType::Directory, None, b"");
            raw_entry(b, "sub/up", tar::EntryType::Symlink, Some(".."), b"");
            raw_entry(b, "sub/up/file", tar::EntryType::Regular, None, b"x");
        });
        refused(&archive, "sub/up/file", "through a link");
    }

    #[test]
    fn refuses_hard_links_outside_or_to_links() {
        let archive = tar_gz(|b| {
            raw_entry(b, "h", tar::EntryType::Link, Some("../escaped"), b"");
        });
        refused(&archive, "h", "hard link");
        let archive = tar_gz(|b| {
            raw_entry(b, "a/", tar::EntryType::Directory, None, b"");
            raw_entry(b, "a/s", tar::EntryType::Symlink, Some("../x"), b"");
            raw_entry(b, "h", tar::EntryType::Link, Some("a/s"), b"");
        });
        refused(&archive, "h", "not a file");
    }

    #[test]
    fn refuses_special_files() {
        let archive = tar_gz(|b| {
            raw_entry(b, "fifo", tar::EntryType::Fifo, None, b"");
        });
        refused(&archive, "fifo", "special file");
    }

    #[test]
    fn a_truncated_archive_is_an_error_naming_it() {
        let archive = tar_gz(|b| {
            raw_entry(b, "big", tar::EntryType::Regular, None, &[7u8; 100_000]);
        });
        let (_dir, result) = unpack_tar_gz(&archive[..archive.len() / 2]);
        let err = result.expect_err("truncated");
        assert!(err.to_string().contains("s3://b/s.tar.gz"), "{err}");
    }

    #[test]
    fn zip_entries_follow_the_same_rules() {
        let mut buf = io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        zip.start_file("run", opts).expect("start");
        io::Write::write_all(&mut zip, b"#!/bin/sh\n").expect("write");
        zip.add_directory("lib/", opts).expect("dir");
        zip.start_file("lib/a.txt", opts.unix_permissions(0o600))
            .expect("start");
        io::Write::write_all(&mut zip, b"a").expect("write");
        zip.add_symlink("lib/link", "a.txt", opts).expect("link");
        zip.finish().expect("finish");
        let dir = tempfile::tempdir().expect("temp dir");
        unpack_zip(
            io::Cursor::new(buf.into_inner()),
            dir.path(),
            "s3://b/s.zip",
        )
        .expect("safe zip");
        let run = fs::metadata(dir.path().join("run")).expect("run");
        assert_eq!(run.permissions().mode() & 0o777, 0o755);
        let a = fs::metadata(dir.path().join("lib/a.txt")).expect("a");
        assert_eq!(a.permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read(dir.path().join("lib/link")).expect("link"), b"a");

        for (name, problem) in [("../escaped", "'..'"), ("/abs", "absolute")] {
            let mut buf = io::Cursor::new(Vec::new());
            let mut zip = zip::ZipWriter::new(&mut buf);
            zip.start_file(name, opts).expect("start");
            zip.finish().expect("finish");
            let dir = tempfile::tempdir().expect("temp dir");
            let err = unpack_zip(
                io::Cursor::new(buf.into_inner()),
                dir.path(),
                "s3://b/s.zip",
            )
            .expect_err("unsafe zip")
            .to_string();
            assert!(
                err.contains(&format!("{name:?}")) && err.contains(problem),
                "{err}"
            );
        }
    }

    #[test]
    fn archive_kind_comes_from_the_name() {
        assert_eq!(ArchiveKind::of("s.tar.gz"), Some(ArchiveKind::TarGz));
        assert_eq!(ArchiveKind::of("S.TGZ"), Some(ArchiveKind::TarGz));
        assert_eq!(ArchiveKind::of("s.zip"), Some(ArchiveKind::Zip));
        assert_eq!(ArchiveKind::of("run"), None);
        assert_eq!(ArchiveKind::of("s.tar"), None);
    }
}
