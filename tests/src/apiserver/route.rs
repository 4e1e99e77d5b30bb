//! What a request names: a resource path in the real server's URL scheme
//! (`/api/v1/...`, `/apis/{group}/{version}/...`) and the decoded query parameters.

use super::resources::{RESOURCES, ResourceId, by_plural};
use super::status::ApiError;

/// What a resource path names.
pub(super) struct Route {
    pub(super) resource: ResourceId,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) status: bool,
}

/// Parses `/api/v1/...` and `/apis/{group}/{version}/...` paths.
pub(super) fn route(path: &str) -> Option<Route> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, more @ ..] => (Some(*ns), {
            let mut r = vec![*plural];
            r.extend_from_slice(more);
            r
        }),
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return None,
    };
    let resource = by_plural(group, version, plural)?;
    let r = &RESOURCES[resource];
    // Named requests of namespaced types need a namespace; cluster types take none.
    if (!r.namespaced && namespace.is_some())
        || (r.namespaced && name.is_some() && namespace.is_none())
    {
        return None;
    }
    let status = match sub {
        None => false,
        Some("status") if r.status_subresource => true,
        Some(_) => return None,
    };
    Some(Route {
        resource,
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
        status,
    })
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Query parameters, decoded; the last of repeated names wins.
pub(super) struct Query(Vec<(String, String)>);

impl Query {
    pub(super) fn parse(raw: &str) -> Self {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    pub(super) fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid value for {name}: {v:?}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_real_servers() {
        let lease = route("/apis/coordination.k8s.io/v1/namespaces/ns/leases/x").expect("lease");
        assert_eq!(RESOURCES[lease.resource].plural, "leases");
        assert_eq!(lease.namespace.as_deref(), Some("ns"));
        assert_eq!(lease.name.as_deref(), Some("x"));
        let status = route("/api/v1/namespaces/ns/pods/p/status").expect("pod status");
        assert!(status.status);
        let all = route("/apis/apps/v1/replicasets").expect("all replica sets");
        assert!(all.namespace.is_none() && all.name.is_none());
        let webhooks =
            route("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/w")
                .expect("cluster-scoped");
        assert_eq!(webhooks.name.as_deref(), Some("w"));
        for bad in [
            "/api/v1/pods/p",
            "/apis/apps/v1/namespaces/ns/leases",
            "/api/v1/namespaces/ns/configmaps/c/status",
            "/apis/admissionregistration.k8s.io/v1/namespaces/ns/mutatingwebhookconfigurations",
            "/metrics",
        ] {
            assert!(route(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let q = Query::parse("labelSelector=app%3Dgame%2Ctier+in+(a)&watch=1&x=%zz");
        assert_eq!(q.get("labelSelector"), Some("app=game,tier in (a)"));
        assert!(q.flag("watch"));
        assert_eq!(q.get("x"), Some("%zz"));
    }
}
