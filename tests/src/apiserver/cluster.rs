//! The state the HTTP side and the test's own calls share: the store and access rules
//! behind locks, the tick that wakes watches after each write, and the garbage collector
//! that runs a few milliseconds after a deletion, as the GC controller does.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::access::Access;
use super::store::Store;

/// How long the garbage collector waits after a deletion before it looks at dependents.
const GC_DELAY: Duration = Duration::from_millis(5);

/// The shared cluster.
pub struct Cluster {
    store: Mutex<Store>,
    pub access: Mutex<Access>,
    /// Bumped after every change a watch may care about.
    changed: watch::Sender<u64>,
    gc_wake: Notify,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Mutex<Duration>,
}

impl Cluster {
    pub fn new(history_limit: usize, bookmark_interval: Duration) -> Self {
        Cluster {
            store: Mutex::new(Store::new(history_limit)),
            access: Mutex::new(Access::default()),
            changed: watch::channel(0).0,
            gc_wake: Notify::new(),
            bookmark_interval: Mutex::new(bookmark_interval),
        }
    }

    /// Reads the store.
    pub fn read(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn access(&self) -> MutexGuard<'_, Access> {
        self.access.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn bookmark_interval(&self) -> Duration {
        *self
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the store, then wakes watches and, when needed, the garbage collector.
    pub fn write<T>(&self, change: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.read();
        let out = change(&mut store);
        let gc = store.gc_pending();
        drop(store);
        self.changed.send_modify(|n| *n += 1);
        if gc {
            self.gc_wake.notify_one();
        }
        out
    }

    /// A receiver that sees every later [`Cluster::write`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The garbage collector: runs until the server's runtime ends.
    pub async fn collect_garbage(&self) {
        loop {
            self.gc_wake.notified().await;
            tokio::time::sleep(GC_DELAY).await;
            self.write(Store::collect_garbage);
        }
    }
}
