//! Deletion as the real server does it: preconditions, propagation policies, the grace
//! period of a pod on a node, finalizers, and the garbage collector that deletes (or frees)
//! the dependents of a deleted owner through their ownerReferences.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::{Part, Store};
use crate::apiserver::object::{Key, Stored};
use crate::apiserver::resources::RESOURCES;
use crate::apiserver::status::ApiError;

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
    /// Dependents are deleted by the garbage collector afterwards.
    Background,
    /// The owner stays (deletionTimestamp, `foregroundDeletion` finalizer) until the
    /// garbage collector has deleted its dependents.
    Foreground,
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

/// The finalizer that holds an owner deleted in the foreground.
const FOREGROUND: &str = "foregroundDeletion";

/// The finalizers an object had, as JSON.
fn old_meta_finalizers(object: &Stored) -> Value {
    object.to_value()["metadata"]["finalizers"].clone()
}

/// Whether an object is being deleted in the foreground (waiting for its dependents).
fn in_foreground_deletion(object: &Stored) -> bool {
    object.metadata.contains("\"deletionTimestamp\"")
        && object.metadata.contains(&format!("\"{FOREGROUND}\""))
}

impl Store {
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
        let dependents: Vec<Key> = self
            .dependents
            .get(&old.uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        if propagation == Propagation::Foreground && !dependents.is_empty() {
            let finalizers = &mut value["metadata"]["finalizers"];
            if !finalizers.is_array() {
                *finalizers = json!([]);
            }
            if let Some(list) = finalizers.as_array_mut()
                && !list.contains(&json!(FOREGROUND))
            {
                list.push(json!(FOREGROUND));
            }
            self.gc_queue.extend(dependents);
        }
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
        if current.is_some_and(|c| c <= grace) && meta["finalizers"] == old_meta_finalizers(&old) {
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
            if in_foreground_deletion(&object) && !self.dependents.contains_key(&object.uid) {
                self.release_foreground(&key);
                continue;
            }
            if object.owners.is_empty() {
                continue;
            }
            let (mut dangling, mut deleting) = (HashSet::new(), 0);
            for uid in &object.owners {
                match self.uids.get(uid).and_then(|k| self.objects.get(k)) {
                    None => {
                        dangling.insert(uid.clone());
                    }
                    Some(owner) if in_foreground_deletion(owner) => deleting += 1,
                    Some(_) => {}
                }
            }
            if dangling.len() + deleting == object.owners.len() {
                let background = DeleteOptions {
                    propagation: Some(Propagation::Background),
                    ..DeleteOptions::default()
                };
                // Only NotFound can fail here, and the object was just found.
                let _ = self.delete(&key, &background);
            } else if !dangling.is_empty() {
                self.strip_owners(&key, |uid| dangling.contains(uid));
            }
        }
    }

    /// Removes the `foregroundDeletion` finalizer of an owner whose dependents are gone;
    /// with no other finalizer left, the owner goes too.
    fn release_foreground(&mut self, key: &Key) {
        let Some(owner) = self.objects.get(key).cloned() else {
            return;
        };
        let mut value = owner.to_value();
        if let Some(list) = value["metadata"]["finalizers"].as_array_mut() {
            list.retain(|f| f != FOREGROUND);
        }
        // The value is the stored one less a finalizer: nothing to refuse.
        let _ = self.update(key, value, Part::Whole);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_kind;
    use crate::apiserver::store::Origin;
    use crate::apiserver::store::tests::{lease, leases};

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
    fn a_foreground_deletion_waits_for_the_dependents() {
        let mut store = Store::new(100);
        let owner = store
            .create(leases(), Some("ns"), lease("owner"), Origin::Client)
            .expect("created");
        let mut dependent = lease("dependent");
        dependent["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "X", "name": "owner", "uid": owner.uid}]);
        let dependent = store
            .create(leases(), Some("ns"), dependent, Origin::Client)
            .expect("created");
        let foreground = DeleteOptions {
            propagation: Some(Propagation::Foreground),
            ..DeleteOptions::default()
        };
        let Ok(Deleted::Pending(pending)) = store.delete(&owner.key(), &foreground) else {
            panic!("the owner waits for its dependents");
        };
        assert!(in_foreground_deletion(&pending));
        store.collect_garbage();
        assert!(
            store.get(&dependent.key()).is_none(),
            "the dependent went first"
        );
        assert!(store.get(&owner.key()).is_some());
        store.collect_garbage();
        assert!(store.get(&owner.key()).is_none(), "then the owner");
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
