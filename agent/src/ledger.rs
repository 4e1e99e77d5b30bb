//! What the store has confirmed of each result file (docs/agent-storage.md, kept in the work
//! directory so that a restarted supervisor sends only what changed.
//!
//! An entry records the size the store holds, the file's modification time and inode at
//! that size, and a fingerprint of the confirmed bytes. [`plan`] decides from it, without
//! I/O, whether a file is unchanged, only grew (the store's copy can be extended) or was
//! rewritten (it goes up whole). The fingerprint samples the first and the last
//! [`WINDOW`] bytes of the confirmed prefix rather than hashing all of it: reading a
//! multi-GiB log again at every sync would cost what the incremental upload saves. A file
//! rewritten in place to a larger size with the same bytes in both windows and the same
//! inode is taken as grown; agents that rewrite a file (`>` in a shell, a rename into
//! place) change a window or the inode.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Bytes sampled at each end of the confirmed prefix.
pub const WINDOW: u64 = 64 * 1024;

/// What the store holds of one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmed {
    /// Bytes stored: the local file's first `size` bytes.
    pub size: u64,
    /// Modification time (nanoseconds since the epoch) when those bytes were read.
    pub modified_ns: u64,
    /// Inode of the local file.
    pub inode: u64,
    /// [`fingerprint`] of the first `size` bytes.
    pub fingerprint: u64,
    /// When the store confirmed them (seconds since the epoch).
    #[serde(default)]
    pub confirmed_at_s: u64,
}

/// A local file as a scan sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    pub modified_ns: u64,
    pub inode: u64,
}

/// What to do with a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The store has it as it is.
    Unchanged,
    /// Send it whole: new, rewritten, or shrunk.
    Whole,
    /// It is longer than what the store confirmed: extend the stored object if the
    /// confirmed prefix still has its fingerprint (check it, then [`Plan::Extend`] or
    /// [`Plan::Whole`]).
    CheckPrefix { stored: Confirmed },
    /// The first `stored` bytes are in the store: send the rest.
    Extend { stored: u64 },
}

/// The first decision, from the scan alone.
pub fn plan(confirmed: Option<&Confirmed>, seen: &Seen) -> Plan {
    let Some(c) = confirmed else {
        return Plan::Whole;
    };
    if c.inode != seen.inode || seen.size < c.size {
        return Plan::Whole;
    }
    if seen.size == c.size {
        // Same size with a new modification time: rewritten in place (a grown file
        // changes size).
        return if seen.modified_ns == c.modified_ns {
            Plan::Unchanged
        } else {
            Plan::Whole
        };
    }
    Plan::CheckPrefix { stored: *c }
}

/// How often a grown file is sent whole again while its stored copy is too small to be
/// extended (below S3's minimum part size): each such send costs the whole file, so it
/// waits until the file has grown [`GROWTH`]-fold, crossed the minimum, stopped growing, or
/// waited `max_stale_s`. That bounds the cost of the small phase to a few times the
/// minimum part size per file instead of one copy per sync.
#[derive(Clone, Copy, Debug)]
pub struct Pacing {
    /// The smallest stored copy the store can extend (S3: 5 MiB; a directory: 0).
    pub min_extend: u64,
    pub now_s: u64,
    pub max_stale_s: u64,
}

/// Growth factor between two whole sends of a small growing file.
pub const GROWTH: u64 = 4;

/// Whether the whole send of a grown file can wait for a later sync (see [`Pacing`]);
/// `still` says the file did not change since the previous scan.
pub fn defer_resend(stored: &Confirmed, seen: &Seen, still: bool, pacing: &Pacing) -> bool {
    stored.size < pacing.min_extend
        && seen.size < pacing.min_extend
        && seen.size < stored.size.saturating_mul(GROWTH)
        && !still
        && pacing.now_s < stored.confirmed_at_s.saturating_add(pacing.max_stale_s)
}

/// The second decision, once the fingerprint of the confirmed prefix was read again.
pub fn after_check(stored: &Confirmed, fingerprint_now: u64) -> Plan {
    if fingerprint_now == stored.fingerprint {
        Plan::Extend {
            stored: stored.size,
        }
    } else {
        Plan::Whole
    }
}

/// FNV-1a over the length and the first and last [`WINDOW`] bytes of `file`'s first `len`
/// bytes. A file shorter than `len` has no such prefix: an error.
pub fn fingerprint(path: &Path, len: u64) -> io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Fnv::default();
    hash.write(&len.to_le_bytes());
    let head = len.min(WINDOW);
    let tail_start = len.saturating_sub(WINDOW).max(head);
    let mut buf = vec![0u8; WINDOW as usize];
    for (start, end) in [(0, head), (tail_start, len)] {
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        hash.write(&buf[..n]);
    }
    Ok(hash.0)
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The ledger file's content.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// The store prefix the entries are about: a ledger for another destination is ignored.
    destination: String,
    files: HashMap<String, Confirmed>,
}

/// Why the ledger could not be saved.
#[derive(Debug, thiserror::Error)]
#[error("failed to save the upload ledger {}", path.display())]
pub struct LedgerError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Confirmed state of every file, by path relative to the results directory.
#[derive(Debug, Default)]
pub struct Ledger {
    path: Option<PathBuf>,
    saved: Saved,
    dirty: bool,
}

impl Ledger {
    /// A ledger kept in memory only.
    pub fn in_memory(destination: String) -> Ledger {
        Ledger {
            path: None,
            saved: Saved {
                destination,
                files: HashMap::new(),
            },
            dirty: false,
        }
    }

    /// The ledger saved at `path` for `destination`; empty when there is none, when it is
    /// for another destination, or when it cannot be read (then everything is sent again,
    /// which is safe).
    pub fn load(path: PathBuf, destination: String) -> Ledger {
        let saved = match std::fs::read(&path) {
            Ok(text) => match serde_json::from_slice::<Saved>(&text) {
                Ok(saved) if saved.destination == destination => Some(saved),
                Ok(saved) => {
                    tracing::info!(
                        "upload ledger {} is for {}, not {destination}: sending every result file",
                        path.display(),
                        saved.destination
                    );
                    None
                }
                Err(err) => {
                    tracing::warn!(
                        "upload ledger {} is unreadable ({err}): sending every result file",
                        path.display()
                    );
                    None
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                tracing::warn!(
                    "cannot read the upload ledger {} ({err}): sending every result file",
                    path.display()
                );
                None
            }
        };
        if let Some(saved) = &saved {
            tracing::info!(
                "upload ledger: {} result files already confirmed by the store",
                saved.files.len()
            );
        }
        Ledger {
            path: Some(path),
            saved: saved.unwrap_or(Saved {
                destination,
                files: HashMap::new(),
            }),
            dirty: false,
        }
    }

    pub fn get(&self, rel: &str) -> Option<&Confirmed> {
        self.saved.files.get(rel)
    }

    pub fn confirm(&mut self, rel: String, confirmed: Confirmed) {
        self.saved.files.insert(rel, confirmed);
        self.dirty = true;
    }

    /// Writes the ledger if it changed: a temporary file renamed over the old one, so a
    /// crash leaves the old or the new ledger, never half of one.
    pub fn save(&mut self) -> Result<(), LedgerError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty {
            return Ok(());
        }
        let err = |source| LedgerError {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec(&self.saved).expect("a ledger always serializes");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, &text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Confirmed = Confirmed {
        size: 100,
        modified_ns: 7,
        inode: 42,
        fingerprint: 9,
        confirmed_at_s: 1000,
    };

    fn seen(size: u64, modified_ns: u64, inode: u64) -> Seen {
        Seen {
            size,
            modified_ns,
            inode,
        }
    }

    #[test]
    fn a_new_file_goes_whole_and_an_untouched_one_not_at_all() {
        assert_eq!(plan(None, &seen(5, 1, 1)), Plan::Whole);
        assert_eq!(plan(Some(&C), &seen(100, 7, 42)), Plan::Unchanged);
    }

    #[test]
    fn a_shrunk_replaced_or_same_size_rewritten_file_goes_whole() {
        assert_eq!(plan(Some(&C), &seen(50, 8, 42)), Plan::Whole);
        assert_eq!(plan(Some(&C), &seen(200, 8, 43)), Plan::Whole);
        assert_eq!(plan(Some(&C), &seen(100, 8, 42)), Plan::Whole);
    }

    #[test]
    fn a_grown_file_is_extended_only_if_its_prefix_is_unchanged() {
        assert_eq!(
            plan(Some(&C), &seen(150, 8, 42)),
            Plan::CheckPrefix { stored: C }
        );
        assert_eq!(after_check(&C, 9), Plan::Extend { stored: 100 });
        assert_eq!(after_check(&C, 10), Plan::Whole);
    }

    #[test]
    fn a_small_growing_file_is_resent_whole_only_when_it_is_worth_it() {
        let pacing = Pacing {
            min_extend: 1000,
            now_s: 1010,
            max_stale_s: 60,
        };
        let grown = |size| seen(size, 8, 42);
        assert!(defer_resend(&C, &grown(150), false, &pacing));
        assert!(
            !defer_resend(&C, &grown(400), false, &pacing),
            "grown fourfold"
        );
        assert!(
            !defer_resend(&C, &grown(1000), false, &pacing),
            "extendable next"
        );
        assert!(
            !defer_resend(&C, &grown(150), true, &pacing),
            "stopped growing"
        );
        let later = Pacing {
            now_s: 1060,
            ..pacing
        };
        assert!(
            !defer_resend(&C, &grown(150), false, &later),
            "waited long enough"
        );
        let empty = Confirmed { size: 0, ..C };
        assert!(!defer_resend(&empty, &grown(1), false, &pacing));
        let directory = Pacing {
            min_extend: 0,
            ..pacing
        };
        assert!(
            !defer_resend(&C, &grown(150), false, &directory),
            "appends are cheap"
        );
    }

    #[test]
    fn the_fingerprint_sees_both_ends_of_the_prefix_and_ignores_what_follows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        let mut data = vec![1u8; 300 * 1024];
        std::fs::write(&path, &data).expect("write");
        let len = 200 * 1024;
        let before = fingerprint(&path, len).expect("fingerprint");
        data.extend_from_slice(b"more");
        data[250 * 1024] = 2;
        std::fs::write(&path, &data).expect("write");
        assert_eq!(fingerprint(&path, len).expect("fingerprint"), before);
        for changed_at in [10, len as usize - 1] {
            let mut rewritten = data.clone();
            rewritten[changed_at] = 3;
            std::fs::write(&path, &rewritten).expect("write");
            assert_ne!(fingerprint(&path, len).expect("fingerprint"), before);
        }
        assert!(fingerprint(&path, 10 * 1024 * 1024).is_err(), "too short");
        assert_ne!(
            fingerprint(&path, 0).expect("empty prefix"),
            fingerprint(&path, 1).expect("one byte")
        );
    }

    #[test]
    fn a_saved_ledger_is_read_back_only_for_its_destination() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state/uploads.json");
        let mut ledger = Ledger::load(path.clone(), "s3://b/r/p/c0/".into());
        ledger.confirm("agent-0/stdout.log".into(), C);
        ledger.save().expect("save");
        let again = Ledger::load(path.clone(), "s3://b/r/p/c0/".into());
        assert_eq!(again.get("agent-0/stdout.log"), Some(&C));
        let other = Ledger::load(path.clone(), "s3://b/r/p/c1/".into());
        assert_eq!(other.get("agent-0/stdout.log"), None);
        std::fs::write(&path, b"{not json").expect("write");
        assert_eq!(
            Ledger::load(path, "s3://b/r/p/c0/".into()).get("agent-0/stdout.log"),
            None
        );
    }
}
