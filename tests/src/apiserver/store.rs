//! The cluster state: every object keyed by type, namespace and name, one global
//! resourceVersion counter (etcd's revision), the bounded event history that watches read,
//! and the owner index the garbage collector walks. Pure state transitions: no I/O, no
//! clock other than timestamps written into objects.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::resources::{RESOURCES, ResourceId, ResourceType};
use super::status::ApiError;
use super::validate;

/// Where an object lives: type, namespace ("" for cluster-scoped types) and name.
pub type Key = (ResourceId, String, String);

/// An object as stored: its JSON once serialized, and what selectors and the garbage
/// collector read from it, so lists and watches of thousands of objects parse nothing.
#[derive(Debug)]
pub struct Stored {
    pub resource: ResourceId,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub rv: u64,
    pub labels: BTreeMap<String, String>,
    /// Every selectable field (`metadata.name`, `spec.nodeName`...), absent ones as "".
    pub fields: BTreeMap<String, String>,
    /// uids named in `metadata.ownerReferences`.
    pub owners: Vec<String>,
    /// The object without `apiVersion` and `kind`, as items of a typed list are sent.
    pub body: String,
    /// `metadata` alone, for PartialObjectMetadata answers.
    pub metadata: String,
}

impl Stored {
    fn new(resource: ResourceId, mut value: Value) -> Self {
        let meta = &value["metadata"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let labels = meta["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), text(v)))
                    .collect::<BTreeMap<_, _>>()
            })
            .unwrap_or_default();
        let owners = meta["ownerReferences"]
            .as_array()
            .map(|refs| refs.iter().map(|r| text(&r["uid"])).collect())
            .unwrap_or_default();
        let mut fields = BTreeMap::new();
        for path in RESOURCES[resource].fields {
            let found = path.split('.').try_fold(&value, |v, part| v.get(part));
            let shown = match found {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            fields.insert((*path).to_string(), shown);
        }
        let namespace = text(&meta["namespace"]);
        let name = text(&meta["name"]);
        fields.insert("metadata.name".to_string(), name.clone());
        fields.insert("metadata.namespace".to_string(), namespace.clone());
        let uid = text(&meta["uid"]);
        let rv = text(&meta["resourceVersion"]).parse().unwrap_or_default();
        let metadata = meta.to_string();
        if let Some(map) = value.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
        }
        Stored {
            resource,
            namespace,
            name,
            uid,
            rv,
            labels,
            fields,
            owners,
            body: value.to_string(),
            metadata,
        }
    }

    pub fn key(&self) -> Key {
        (self.resource, self.namespace.clone(), self.name.clone())
    }

    pub fn resource_type(&self) -> &'static ResourceType {
        &RESOURCES[self.resource]
    }

    /// The whole object, `apiVersion` and `kind` first.
    pub fn full_json(&self) -> String {
        let r = self.resource_type();
        let rest = self.body.strip_prefix('{').unwrap_or("}");
        let sep = if rest == "}" { "" } else { "," };
        format!(
            "{{\"apiVersion\":\"{}\",\"kind\":\"{}\"{sep}{rest}",
            r.api_version(),
            r.kind
        )
    }

    /// The object as a PartialObjectMetadata.
    pub fn metadata_json(&self) -> String {
        format!(
            "{{\"apiVersion\":\"meta.k8s.io/v1\",\"kind\":\"PartialObjectMetadata\",\"metadata\":{}}}",
            self.metadata
        )
    }

    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.full_json()).expect("stored objects are valid JSON")
    }
}

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

/// `DeleteOptions` as far as the stand-in honours them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation: Option<Propagation>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted by the garbage collector afterwards (Foreground is served
    /// the same way).
    Background,
    /// Dependents lose their reference to the deleted owner and stay.
    Orphan,
}

/// What a DELETE did.
#[derive(Debug)]
pub enum Deleted {
    /// Gone now; the object's last state.
    Gone(Arc<Stored>),
    /// Still there, marked for deletion (a terminating pod, pending finalizers).
    Pending(Arc<Stored>),
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
            return Err(ApiError {
                code: 500,
                reason: "InternalError",
                message: "resourceVersion should not be set on objects to be created".to_string(),
                details: None,
                retry_after: None,
            });
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

    /// PUT (and the end of PATCH): `value` replaces the object; `status_only` for the
    /// `status` subresource. An rv in `value` must be the current one; none means an
    /// unconditional update, as the real server allows for these types.
    pub fn update(
        &mut self,
        key: &Key,
        mut value: Value,
        status_only: bool,
    ) -> Result<Arc<Stored>, ApiError> {
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
        } else if r.status_subresource {
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

    /// DELETE.
    pub fn delete(&mut self, key: &Key, options: &DeleteOptions) -> Result<Deleted, ApiError> {
        let r = &RESOURCES[key.0];
        let old = self
            .objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(r, &key.2))?;
        if let Some(uid) = &options.precondition_uid
            && *uid != old.uid
        {
            return Err(ApiError::conflict(
                r,
                &key.2,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old.uid
                ),
            ));
        }
        if let Some(rv) = &options.precondition_rv
            && *rv != old.rv.to_string()
        {
            return Err(ApiError::conflict(
                r,
                &key.2,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    old.rv
                ),
            ));
        }
        let propagation = options.propagation.unwrap_or(if r.orphans_by_default {
            Propagation::Orphan
        } else {
            Propagation::Background
        });
        if propagation == Propagation::Orphan {
            self.orphan_dependents(&old.uid);
        }
        let mut value = old.to_value();
        let grace = if r.kind == "Pod" {
            pod_grace_period(&value, options.grace_period_seconds)
        } else {
            0
        };
        let has_finalizers = value["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if grace == 0 && !has_finalizers {
            let gone = self.remove(key).expect("the object was just found");
            return Ok(Deleted::Gone(gone));
        }
        let meta = &mut value["metadata"];
        let current = meta["deletionGracePeriodSeconds"].as_i64();
        if current.is_some_and(|c| c <= grace) {
            return Ok(Deleted::Pending(old));
        }
        let at = Timestamp::now()
            .checked_add(SignedDuration::from_secs(grace))
            .unwrap_or_else(|_| Timestamp::now());
        if meta["deletionTimestamp"].is_null() || current.is_some_and(|c| c > grace) {
            meta["deletionTimestamp"] = json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        }
        meta["deletionGracePeriodSeconds"] = json!(grace);
        Ok(Deleted::Pending(self.put(key.0, value)))
    }

    /// Removes references to `owner_uid` from every object naming it (Orphan deletion).
    fn orphan_dependents(&mut self, owner_uid: &str) {
        let dependents: Vec<Key> = self
            .dependents
            .get(owner_uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for key in dependents {
            self.strip_owners(&key, |uid| uid == owner_uid);
        }
    }

    fn strip_owners(&mut self, key: &Key, drop: impl Fn(&str) -> bool) {
        let Some(object) = self.objects.get(key).cloned() else {
            return;
        };
        let mut value = object.to_value();
        if let Some(refs) = value["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| !drop(r["uid"].as_str().unwrap_or_default()));
            if refs.is_empty()
                && let Some(m) = value["metadata"].as_object_mut()
            {
                m.remove("ownerReferences");
            }
        }
        self.put(key.0, value);
    }

    /// Whether the garbage collector has work queued.
    pub fn gc_pending(&self) -> bool {
        self.gc_enabled && !self.gc_queue.is_empty()
    }

    /// One pass of the garbage collector over the queued objects: those whose owners are
    /// all gone are deleted (in the background; pods terminate gracefully), those with
    /// some gone lose the dangling references. Deletions queue their own dependents.
    pub fn collect_garbage(&mut self) {
        if !self.gc_enabled {
            return;
        }
        let mut queued = std::mem::take(&mut self.gc_queue);
        queued.sort();
        queued.dedup();
        for key in queued {
            let Some(object) = self.objects.get(&key).cloned() else {
                continue;
            };
            if object.owners.is_empty() {
                continue;
            }
            let dangling: Vec<&String> = object
                .owners
                .iter()
                .filter(|uid| !self.uids.contains_key(*uid))
                .collect();
            if dangling.len() == object.owners.len() {
                let background = DeleteOptions {
                    propagation: Some(Propagation::Background),
                    ..DeleteOptions::default()
                };
                // Only NotFound can fail here, and the object was just found.
                let _ = self.delete(&key, &background);
            } else if !dangling.is_empty() {
                let uids = &self.uids;
                let dangling: HashSet<String> = dangling
                    .into_iter()
                    .filter(|d| !uids.contains_key(*d))
                    .cloned()
                    .collect();
                self.strip_owners(&key, |uid| dangling.contains(uid));
            }
        }
    }

    /// The kubelet's part of a pod deletion: the terminating pod goes away.
    pub fn finish_termination(&mut self, key: &Key) -> Result<Deleted, String> {
        let pod = self
            .objects
            .get(key)
            .ok_or_else(|| format!("no pod {}/{}", key.1, key.2))?;
        if pod.metadata.contains("\"deletionTimestamp\"") {
            let now = DeleteOptions {
                grace_period_seconds: Some(0),
                ..DeleteOptions::default()
            };
            self.delete(key, &now).map_err(|e| e.message)
        } else {
            Err(format!("pod {}/{} is not terminating", key.1, key.2))
        }
    }
}

/// The grace period a pod's deletion gets: the request's, else the pod's
/// `terminationGracePeriodSeconds` (default 30); 0 for a pod no node runs (unscheduled or
/// finished), as the real pod strategy decides.
fn pod_grace_period(pod: &Value, requested: Option<i64>) -> i64 {
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    let unscheduled = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    if unscheduled || matches!(phase, "Succeeded" | "Failed") {
        return 0;
    }
    requested
        .or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
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

    fn lease(name: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": name, "namespace": "ns"}})
    }

    fn leases() -> ResourceId {
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
            .update(&a.key(), a.to_value(), false)
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

    #[test]
    fn objects_whose_owners_are_all_gone_are_collected() {
        let mut store = Store::new(100);
        let owner = store
            .create(leases(), Some("ns"), lease("owner"), Origin::Client)
            .expect("created");
        let other = store
            .create(leases(), Some("ns"), lease("other"), Origin::Client)
            .expect("created");
        let owned_by = |name: &str, uids: &[&str]| {
            let mut l = lease(name);
            l["metadata"]["ownerReferences"] = uids
                .iter()
                .map(|u| json!({"apiVersion": "v1", "kind": "X", "name": "o", "uid": u}))
                .collect();
            l
        };
        let only = store
            .create(
                leases(),
                Some("ns"),
                owned_by("only", &[&owner.uid]),
                Origin::Client,
            )
            .expect("created");
        let both = store
            .create(
                leases(),
                Some("ns"),
                owned_by("both", &[&owner.uid, &other.uid]),
                Origin::Client,
            )
            .expect("created");
        store
            .delete(&owner.key(), &DeleteOptions::default())
            .expect("deleted");
        assert!(store.gc_pending());
        store.collect_garbage();
        assert!(store.get(&only.key()).is_none());
        let kept = store.get(&both.key()).expect("one owner is left");
        assert_eq!(kept.owners, std::slice::from_ref(&other.uid));
    }

    #[test]
    fn a_scheduled_pod_terminates_before_it_is_gone() {
        let mut store = Store::new(100);
        let pods = by_kind("v1", "Pod").expect("pods");
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"},
                         "spec": {"nodeName": "n1", "containers": []}});
        let pod = store
            .create(pods, Some("ns"), pod, Origin::Client)
            .expect("created");
        let Ok(Deleted::Pending(terminating)) = store.delete(&pod.key(), &DeleteOptions::default())
        else {
            panic!("a running pod terminates first");
        };
        assert!(terminating.metadata.contains("deletionTimestamp"));
        assert!(matches!(
            store.finish_termination(&pod.key()),
            Ok(Deleted::Gone(_))
        ));
        assert!(store.get(&pod.key()).is_none());
    }
}
