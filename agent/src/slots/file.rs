//! `file:///dir/` slots (docs/coordination.md) for local runs and tests: one file per slot in a shared
//! folder, held by an exclusive lock (`flock`) for as long as the supervisor runs. The kernel
//! drops the lock when the holding process is gone, so a slot whose owner died is free again
//! without guessing from pids; the file says who holds it, so a restarted supervisor of the
//! same pod takes its own slot back first. The start object is a file created exclusively
//! (the first writer wins), and a `.stop` file next to it stops the part.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Part, probe_order};

/// What a slot file records about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    pod: String,
    /// The pod UID (or the pod name outside a cluster): who may take the slot back.
    identity: String,
    pid: u32,
    #[serde(default)]
    ready: bool,
}

/// The slots of one test part in one folder.
#[derive(Debug, Clone)]
pub struct FileSlots {
    dir: PathBuf,
    part: Part,
    pod: String,
    identity: String,
}

/// A held slot: the lock lasts as long as this value (and so the process).
#[derive(Debug)]
pub struct FileSlot {
    pub index: u32,
    file: File,
    holder: Holder,
}

impl FileSlot {
    /// Marks the slot ready (script fetched, waiting for the start).
    pub fn mark_ready(&mut self) -> io::Result<()> {
        self.holder.ready = true;
        write_holder(&mut self.file, &self.holder)
    }
}

fn write_holder(file: &mut File, holder: &Holder) -> io::Result<()> {
    let mut text = serde_json::to_vec(holder).expect("a holder always serializes");
    text.push(b'\n');
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&text)?;
    file.sync_data()
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

fn with_path(path: &Path, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{}: {err}", path.display()))
}

impl FileSlots {
    pub fn new(dir: PathBuf, part: Part, pod: String, identity: String) -> FileSlots {
        FileSlots {
            dir,
            part,
            pod,
            identity,
        }
    }

    fn slot_path(&self, index: u32) -> PathBuf {
        self.dir.join(self.part.slot_name(index))
    }

    fn open(&self, index: u32) -> io::Result<File> {
        let path = self.slot_path(index);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| with_path(&path, err))
    }

    /// Takes slot `index` if nobody holds it.
    fn try_take(&self, index: u32, mut file: File) -> io::Result<Option<FileSlot>> {
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(err)) => return Err(with_path(&self.slot_path(index), err)),
        }
        let holder = Holder {
            pod: self.pod.clone(),
            identity: self.identity.clone(),
            pid: std::process::id(),
            ready: false,
        };
        write_holder(&mut file, &holder).map_err(|err| with_path(&self.slot_path(index), err))?;
        Ok(Some(FileSlot {
            index,
            file,
            holder,
        }))
    }

    /// One round of claiming among `machines` slots: this pod's own slot if a file says so
    /// (a restarted supervisor), else the first free one in probe order; `None` when every
    /// slot is held.
    pub fn try_claim(&self, machines: u32) -> io::Result<Option<FileSlot>> {
        std::fs::create_dir_all(&self.dir).map_err(|err| with_path(&self.dir, err))?;
        for index in 0..machines {
            let path = self.slot_path(index);
            let Ok(mut file) = File::open(&path) else {
                continue;
            };
            if read_holder(&mut file).is_some_and(|h| h.identity == self.identity) {
                drop(file);
                if let Some(slot) = self.try_take(index, self.open(index)?)? {
                    return Ok(Some(slot));
                }
            }
        }
        for index in probe_order(&self.identity, machines) {
            if let Some(slot) = self.try_take(index, self.open(index)?)? {
                return Ok(Some(slot));
            }
        }
        Ok(None)
    }

    /// How many of the `machines` slots are held and marked ready.
    pub fn ready_count(&self, machines: u32) -> u32 {
        let mut ready = 0;
        for index in 0..machines {
            let Ok(mut file) = File::open(self.slot_path(index)) else {
                continue;
            };
            // A shared lock we can take means nobody holds the slot.
            match file.try_lock_shared() {
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Error(_)) => continue,
            }
            if read_holder(&mut file).is_some_and(|h| h.ready) {
                ready += 1;
            }
        }
        ready
    }

    fn start_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", self.part.start_name()))
    }

    /// Creates the start object with `start_at` unless it exists; returns the start-at every
    /// supervisor of the part agrees on (the first writer's).
    pub fn create_start(&self, start_at: &str) -> io::Result<String> {
        let path = self.start_path();
        let tmp = self.dir.join(format!(
            ".{}.{}",
            self.part.start_name(),
            std::process::id()
        ));
        let body = serde_json::json!({"start_at": start_at, "by": self.pod}).to_string();
        std::fs::write(&tmp, body).map_err(|err| with_path(&tmp, err))?;
        // A hard link is created whole or not at all: readers never see a partial file.
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(start_at.to_owned()),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                self.start_at()?.ok_or_else(|| {
                    io::Error::other(format!("{} is not a start object", path.display()))
                })
            }
            Err(err) => Err(with_path(&path, err)),
        }
    }

    /// The agreed start-at, once some supervisor created the start object.
    pub fn start_at(&self) -> io::Result<Option<String>> {
        let path = self.start_path();
        match std::fs::read(&path) {
            Ok(text) => Ok(serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["start_at"].as_str().map(str::to_owned))),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(with_path(&path, err)),
        }
    }

    /// Path of the file whose presence stops the part; its content is the reason.
    pub fn stop_path(&self) -> PathBuf {
        self.dir.join(format!("{}.stop", self.part.start_name()))
    }

    /// The stop reason, once the part was stopped.
    pub fn stop_reason(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.stop_path()).ok()?;
        let reason = text.trim();
        Some(if reason.is_empty() {
            "stopped".to_owned()
        } else {
            reason.to_owned()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn slots(dir: &Path, pod: &str) -> FileSlots {
        FileSlots::new(
            dir.to_path_buf(),
            Part::from_label("t--p1"),
            pod.to_owned(),
            format!("uid-{pod}"),
        )
    }

    #[test]
    fn every_claimer_gets_a_distinct_slot_and_the_next_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held: Vec<FileSlot> = (0..8)
            .map(|i| {
                slots(dir.path(), &format!("pod-{i}"))
                    .try_claim(8)
                    .expect("claim")
                    .expect("a free slot")
            })
            .collect();
        let indices: BTreeSet<u32> = held.iter().map(|s| s.index).collect();
        assert_eq!(indices, (0..8).collect());
        assert!(
            slots(dir.path(), "pod-8")
                .try_claim(8)
                .expect("claim")
                .is_none()
        );
    }

    #[test]
    fn a_released_slot_is_taken_by_the_next_claimer_and_its_own_pod_comes_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = slots(dir.path(), "a")
            .try_claim(2)
            .expect("claim")
            .expect("slot");
        let b = slots(dir.path(), "b")
            .try_claim(2)
            .expect("claim")
            .expect("slot");
        let index_a = a.index;
        drop(a);
        // A restarted "a" finds its own slot again, even when it would probe b's first.
        let again = slots(dir.path(), "a")
            .try_claim(2)
            .expect("claim")
            .expect("slot");
        assert_eq!(again.index, index_a);
        drop(again);
        let c = slots(dir.path(), "c")
            .try_claim(2)
            .expect("claim")
            .expect("slot");
        assert_eq!(c.index, index_a, "the freed slot");
        drop(b);
    }

    #[test]
    fn ready_counts_only_held_slots_marked_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut a = slots(dir.path(), "a")
            .try_claim(3)
            .expect("claim")
            .expect("slot");
        let mut b = slots(dir.path(), "b")
            .try_claim(3)
            .expect("claim")
            .expect("slot");
        let counter = slots(dir.path(), "x");
        assert_eq!(counter.ready_count(3), 0);
        a.mark_ready().expect("mark");
        b.mark_ready().expect("mark");
        assert_eq!(counter.ready_count(3), 2);
        drop(b);
        assert_eq!(counter.ready_count(3), 1, "a released slot is not ready");
    }

    #[test]
    fn the_first_start_object_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = slots(dir.path(), "a");
        let b = slots(dir.path(), "b");
        assert_eq!(a.start_at().expect("read"), None);
        assert_eq!(
            a.create_start("2026-12-02T01:00:00.000Z").expect("create"),
            "2026-12-02T01:00:00.000Z"
        );
        assert_eq!(
            b.create_start("2026-12-02T01:00:05.000Z").expect("create"),
            "2026-12-02T01:00:00.000Z"
        );
        assert_eq!(b.stop_reason(), None);
        std::fs::write(b.stop_path(), "enough\n").expect("stop");
        assert_eq!(a.stop_reason().as_deref(), Some("enough"));
    }
}
