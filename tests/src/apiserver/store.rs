//! The cluster state: every object keyed by type, namespace and name, one global
//! resourceVersion counter (etcd's revision), the bounded event history that watches read,
//! and the owner index the garbage collector walks; deletion and the collector itself are in
//! [`deletion`]. Pure state transitions: no I/O, no clock other than timestamps written into
//! objects.

mod deletion;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::object::{Key, Stored};
use super::resources::{RESOURCES, ResourceId, ResourceType};
use super::status::ApiError;
use super::validate;
pub use deletion::{DeleteOptions, Deleted, Propagation};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One write, as watches replay it.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub kind: EventType,
    /// The object after the write (for DELETED: its last state, at the deletion's rv).
    pub object: Arc<Stored>,
    /// The object before a MODIFIED, so a watch can tell it entering or leaving its
    /// selector.
    pub previous: Option<Arc<Stored>>,
}

/// What an update replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The main resource: the status is kept where the type has a status subresource.
    Main,
    /// The `status` subresource: only the status changes.
    Status,
    /// Both at once (the test's own updates).
    Whole,
}

/// How a create treats system fields the caller set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client's POST: uid, timestamps and status are the server's.
    Client,
    /// A test seeding state: its uid, creationTimestamp and status are kept.
    Seed,
}

/// Everything the stand-in knows.
pub struct Store {
    objects: BTreeMap<Key, Arc<Stored>>,
    uids: HashMap<String, Key>,
    /// Owner uid → objects naming it in their ownerReferences.
    dependents: HashMap<String, HashSet<Key>>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    /// Events after this rv are all in `history`.
    compacted: u64,
    /// While set, watches deliver no event past this rv.
    watch_hold: Option<u64>,
    /// Objects the garbage collector must look at.
    gc_queue: Vec<Key>,
    pub gc_enabled: bool,
    /// Seed for uids and generated names.
    entropy: u64,
}

/// The first resourceVersion handed out; clients must treat them as opaque anyway.
const FIRST_RV: u64 = 1000;

fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let entropy = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed)
            | 1;
        Store {
            objects: BTreeMap::new(),
            uids: HashMap::new(),
            dependents: HashMap::new(),
            rv: FIRST_RV,
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: FIRST_RV,
            watch_hold: None,
            gc_queue: Vec::new(),
            gc_enabled: true,
            entropy,
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest rv a watch or continue token may start from.
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit.max(1);
        self.trim_history();
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: enough for unique-looking uids and names.
        self.entropy ^= self.entropy >> 12;
        self.entropy ^= self.entropy << 25;
        self.entropy ^= self.entropy >> 27;
        self.entropy.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn new_uid(&mut self) -> String {
        let (a, b) = (self.random(), self.random());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    fn trim_history(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    fn record(&mut self, kind: EventType, object: Arc<Stored>, previous: Option<Arc<Stored>>) {
        self.history.push_back(Arc::new(Event {
            rv: object.rv,
            kind,
            object,
            previous,
        }));
        self.trim_history();
    }

    fn index_owners(&mut self, object: &Stored, add: bool) {
        let key = object.key();
        for owner in &object.owners {
            if add {
                self.dependents
                    .entry(owner.clone())
                    .or_default()
                    .insert(key.clone());
            } else if let Some(set) = self.dependents.get_mut(owner) {
                set.remove(&key);
                if set.is_empty() {
                    self.dependents.remove(owner);
                }
            }
        }
    }

    /// Stores `value` (metadata already final but for the rv) as a new revision.
    fn put(&mut self, resource: ResourceId, mut value: Value) -> Arc<Stored> {
        self.rv += 1;
        value["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let stored = Arc::new(Stored::new(resource, value));
        let key = stored.key();
        let previous = self.objects.insert(key.clone(), stored.clone());
        if let Some(previous) = &previous {
            self.index_owners(previous, false);
        }
        self.index_owners(&stored, true);
        self.uids.insert(stored.uid.clone(), key.clone());
        if stored.owners.iter().any(|o| !self.uids.contains_key(o)) {
            self.gc_queue.push(key);
        }
        let kind = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(kind, stored.clone(), previous);
        stored
    }

    /// Removes an object for good: DELETED at a new rv, dependents queued for the GC.
    fn remove(&mut self, key: &Key) -> Option<Arc<Stored>> {
        let old = self.objects.remove(key)?;
        self.index_owners(&old, false);
        self.uids.remove(&old.uid);
        if let Some(dependents) = self.dependents.get(&old.uid) {
            self.gc_queue.extend(dependents.iter().cloned());
        }
        for owner in &old.owners {
            if let Some(owner_key) = self.uids.get(owner) {
                self.gc_queue.push(owner_key.clone());
            }
        }
        self.rv += 1;
        let mut last = old.to_value();
        last["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let last = Arc::new(Stored::new(old.resource, last));
        self.record(EventType::Deleted, last.clone(), None);
        Some(last)
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Stored>> {
        self.objects.get(key).cloned()
    }

    /// Objects of `resource` (in `namespace` if given) after `after` (a `namespace/name`
    /// cursor), in key order, at most `limit` of those `keep` accepts; and whether more
    /// remain.
    pub fn list(
        &self,
        resource: ResourceId,
        namespace: Option<&str>,
        after: Option<(&str, &str)>,
        limit: Option<usize>,
        mut keep: impl FnMut(&Stored) -> bool,
    ) -> (Vec<Arc<Stored>>, Option<usize>) {
        let start: Key = match (after, namespace) {
            (Some((ns, name)), _) => (resource, ns.to_string(), format!("{name}\0")),
            (None, Some(ns)) => (resource, ns.to_string(), String::new()),
            (None, None) => (resource, String::new(), String::new()),
        };
        let mut items = Vec::new();
        let mut remaining = 0;
        let candidates = self
            .objects
            .range(start..)
            .take_while(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, o)| o)
            .filter(|o| keep(o));
        for object in candidates {
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
            } else {
                items.push(object.clone());
            }
        }
        (items, (remaining > 0).then_some(remaining))
    }

    /// The events a watch that has seen everything up to `cursor` gets next (at most
    /// `max`), and its new cursor; `Err` with the oldest usable rv when `cursor` is older
    /// than the history.
    pub fn events_after(&self, cursor: u64, max: usize) -> Result<(Vec<Arc<Event>>, u64), u64> {
        if cursor < self.compacted {
            return Err(self.compacted);
        }
        let visible = self.watch_hold.map_or(self.rv, |h| h.min(self.rv));
        let start = self.history.partition_point(|e| e.rv <= cursor);
        let events: Vec<Arc<Event>> = self
            .history
            .range(start..)
            .take_while(|e| e.rv <= visible)
            .take(max)
            .cloned()
            .collect();
        let new_cursor = match events.last() {
            Some(last) if events.len() == max => last.rv,
            _ => visible.max(cursor),
        };
        Ok((events, new_cursor))
    }

    /// Watches deliver nothing written from now on until [`Store::release_watches`].
    pub fn hold_watches(&mut self) {
        self.watch_hold.get_or_insert(self.rv);
    }

    pub fn release_watches(&mut self) {
        self.watch_hold = None;
    }

    /// POST: a new object of `resource` in `namespace` (the URL's).
    pub fn create(
        &mut self,
        resource: ResourceId,
        namespace: Option<&str>,
        mut value: Value,
        origin: Origin,
    ) -> Result<Arc<Stored>, ApiError> {
        let r = &RESOURCES[resource];
        check_type(r, &mut value)?;
        if !value["metadata"].is_object() {
            value["metadata"] = json!({});
        }
        let meta = &mut value["metadata"];
        match (namespace, meta["namespace"].as_str()) {
            (Some(url), Some(body)) if url != body => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            (Some(url), _) => meta["namespace"] = json!(url),
            (None, _) if r.namespaced => {
                return Err(ApiError::bad_request(
                    "the namespace of the object is required",
                ));
            }
            (None, _) => {
                if let Some(m) = meta.as_object_mut() {
                    m.remove("namespace");
                }
            }
        }
        let namespace = meta["namespace"].as_str().unwrap_or_default().to_string();
        if meta["name"].as_str().is_none_or(str::is_empty)
            && let Some(prefix) = meta["generateName"].as_str().map(str::to_string)
        {
            let name = loop {
                const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                let mut n = self.random();
                let suffix: String = (0..5)
                    .map(|_| {
                        let c = CHARS[(n % CHARS.len() as u64) as usize] as char;
                        n /= CHARS.len() as u64;
                        c
                    })
                    .collect();
                let name = format!("{prefix}{suffix}");
                if !self
                    .objects
                    .contains_key(&(resource, namespace.clone(), name.clone()))
                {
                    break name;
                }
            };
            value["metadata"]["name"] = json!(name);
        }
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let causes = validate::metadata_causes(&value);
        if !causes.is_empty() {
            return Err(ApiError::invalid(r, &name, causes));
        }
        if r.kind == "Secret" {
            validate::normalize_secret(r, &mut value)?;
        }
        if self
            .objects
            .contains_key(&(resource, namespace.clone(), name.clone()))
        {
            return Err(ApiError::already_exists(r, &name));
        }
        let meta = &mut value["metadata"];
        if origin == Origin::Client
            && meta["resourceVersion"]
                .as_str()
                .is_some_and(|rv| !rv.is_empty())
        {
            return Err(ApiError::internal(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        if origin == Origin::Client || meta["uid"].as_str().is_none_or(str::is_empty) {
            meta["uid"] = json!(self.new_uid());
        }
        if origin == Origin::Client || meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = json!(now());
        }
        if let Some(m) = meta.as_object_mut() {
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            if r.generation {
                m.insert("generation".to_string(), json!(1));
            } else {
                m.remove("generation");
            }
        }
        if origin == Origin::Client && r.status_subresource {
            value["status"] = if r.kind == "Pod" {
                json!({"phase": "Pending"})
            } else {
                json!({})
            };
        }
        Ok(self.put(resource, value))
    }

    /// PUT (and the end of PATCH): `value` replaces `part` of the object. An rv in `value`
    /// must be the current one; none means an unconditional update, as the real server
    /// allows for these types.
    pub fn update(
        &mut self,
        key: &Key,
        mut value: Value,
        part: Part,
    ) -> Result<Arc<Stored>, ApiError> {
        let status_only = part == Part::Status;
        let r = &RESOURCES[key.0];
        let old = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, &key.2))?;
        check_type(r, &mut value)?;
        if !value["metadata"].is_object() {
            value["metadata"] = json!({});
        }
        let meta = &value["metadata"];
        if meta["name"].as_str() != Some(key.2.as_str()) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                meta["name"].as_str().unwrap_or_default(),
                key.2
            )));
        }
        if let Some(ns) = meta["namespace"].as_str()
            && ns != key.1
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        match meta["resourceVersion"].as_str() {
            Some(rv) if !rv.is_empty() && rv != old.rv.to_string() => {
                return Err(ApiError::modified(r, &key.2));
            }
            _ => {}
        }
        let old_value = old.to_value();
        if status_only {
            let status = value.get("status").cloned();
            value = old_value.clone();
            match status {
                Some(status) => value["status"] = status,
                None => {
                    if let Some(m) = value.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else if r.status_subresource && part == Part::Main {
            match old_value.get("status") {
                Some(status) => value["status"] = status.clone(),
                None => {
                    if let Some(m) = value.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
        let causes = validate::metadata_causes(&value);
        if !causes.is_empty() {
            return Err(ApiError::invalid(r, &key.2, causes));
        }
        if matches!(r.kind, "ConfigMap" | "Secret") && old_value["immutable"] == json!(true) {
            let causes = validate::immutable_causes(&old_value, &value);
            if !causes.is_empty() {
                return Err(ApiError::invalid(r, &key.2, causes));
            }
        }
        if r.kind == "Pod" && !status_only && pod_spec_changed(&old_value, &value) {
            return Err(ApiError::invalid(
                r,
                &key.2,
                vec![validate::pod_update_forbidden()],
            ));
        }
        if r.kind == "Secret" {
            validate::normalize_secret(r, &mut value)?;
        }
        let old_meta = &old_value["metadata"];
        let meta = &mut value["metadata"];
        for system in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
        ] {
            match old_meta.get(system) {
                Some(v) => meta[system] = v.clone(),
                None => {
                    if let Some(m) = meta.as_object_mut() {
                        m.remove(system);
                    }
                }
            }
        }
        meta["resourceVersion"] = json!(old.rv.to_string());
        if value == old_value {
            return Ok(old);
        }
        if r.generation && !status_only && spec_changed(&old_value, &value) {
            let generation = old_meta["generation"].as_i64().unwrap_or(0) + 1;
            value["metadata"]["generation"] = json!(generation);
        }
        let finished = !value["metadata"]["deletionTimestamp"].is_null()
            && value["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
            && value["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .is_none_or(|g| g == 0);
        let stored = self.put(key.0, value);
        if finished {
            self.remove(key);
        }
        Ok(stored)
    }
}

/// Whether a pod update changes its spec beyond what the real server lets change after
/// creation: container images, `activeDeadlineSeconds`, tolerations and
/// `terminationGracePeriodSeconds`.
fn pod_spec_changed(old: &Value, new: &Value) -> bool {
    let mutable_stripped = |pod: &Value| {
        let mut spec = pod["spec"].clone();
        for list in ["containers", "initContainers"] {
            if let Some(containers) = spec[list].as_array_mut() {
                for container in containers {
                    if let Some(c) = container.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        if let Some(m) = spec.as_object_mut() {
            for field in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
            ] {
                m.remove(field);
            }
        }
        spec
    };
    mutable_stripped(old) != mutable_stripped(new)
}

/// Whether anything but metadata and status changed (what bumps `generation`).
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}

/// Checks a body's `apiVersion` and `kind` against the URL's type, filling them in when
/// absent (the real server decodes into the URL's type by default).
fn check_type(r: &ResourceType, value: &mut Value) -> Result<(), ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: expected an object",
            r.kind
        )));
    }
    let api_version = r.api_version();
    match value["apiVersion"].as_str() {
        None => value["apiVersion"] = json!(api_version),
        Some(v) if v == api_version => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match value["kind"].as_str() {
        None => value["kind"] = json!(r.kind),
        Some(k) if k == r.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "{k} in version \"{}\" cannot be handled as a {}: the object provided is unrecognized (must be of type {})",
                r.version, r.kind, r.kind
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_kind;

    pub(super) fn lease(name: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name, "namespace": "ns"}})
    }

    pub(super) fn leases() -> ResourceId {
        by_kind("coordination.k8s.io/v1", "Lease").expect("leases")
    }

    #[test]
    fn every_write_bumps_the_one_counter() {
        let mut store = Store::new(100);
        let a = store
            .create(leases(), Some("ns"), lease("a"), Origin::Client)
            .expect("created");
        let b = store
            .create(leases(), Some("ns"), lease("b"), Origin::Client)
            .expect("created");
        assert_eq!(b.rv, a.rv + 1);
        assert_eq!(store.resource_version(), b.rv);
        assert!(!a.uid.is_empty() && a.uid != b.uid);
    }

    #[test]
    fn an_unchanged_update_writes_nothing() {
        let mut store = Store::new(100);
        let a = store
            .create(leases(), Some("ns"), lease("a"), Origin::Client)
            .expect("created");
        let again = store
            .update(&a.key(), a.to_value(), Part::Main)
            .expect("updated");
        assert_eq!(again.rv, a.rv);
        assert_eq!(store.resource_version(), a.rv);
    }

    #[test]
    fn history_beyond_the_limit_is_compacted() {
        let mut store = Store::new(2);
        let first = store.resource_version();
        for name in ["a", "b", "c"] {
            store
                .create(leases(), Some("ns"), lease(name), Origin::Client)
                .expect("created");
        }
        assert!(store.events_after(first, 10).is_err());
        let (events, cursor) = store.events_after(first + 1, 10).expect("kept");
        assert_eq!(events.len(), 2);
        assert_eq!(cursor, store.resource_version());
    }

    #[test]
    fn held_watches_see_nothing_new_until_released() {
        let mut store = Store::new(100);
        let start = store.resource_version();
        store.hold_watches();
        store
            .create(leases(), Some("ns"), lease("a"), Origin::Client)
            .expect("created");
        assert_eq!(store.events_after(start, 10).expect("kept").0.len(), 0);
        store.release_watches();
        assert_eq!(store.events_after(start, 10).expect("kept").0.len(), 1);
    }
}
