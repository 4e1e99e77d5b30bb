//! An object as the stand-in stores it: serialized once, with what selectors, watches and
//! the garbage collector read from it taken out beforehand.

use std::collections::BTreeMap;

use serde_json::Value;

use super::resources::{RESOURCES, ResourceId, ResourceType};

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
    pub(super) fn new(resource: ResourceId, mut value: Value) -> Self {
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
