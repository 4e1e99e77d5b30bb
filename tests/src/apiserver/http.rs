//! The HTTP side: routes the real server's paths to the store, authenticates bearer tokens,
//! applies RBAC denials and injected failures, records every request, and writes the
//! answers (objects, typed lists, PartialObjectMetadata, `Status` failures, watch streams).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::access::ApiRequest;
use super::cluster::Cluster;
use super::object::{Key, Stored};
use super::resources::{RESOURCES, ResourceType};
use super::route::{Query, Route, route};
use super::selectors::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{DeleteOptions, Deleted, Part, Propagation, Store};
use super::watch::{self, WatchRequest};

/// The real server's limit on request bodies.
const MAX_BODY: usize = 3 * 1024 * 1024;

pub type Body = BoxBody<Bytes, Infallible>;

/// How the client asked for objects: whole, or as PartialObjectMetadata.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Full,
    Metadata,
}

fn shape(headers: &HeaderMap) -> Result<Shape, ApiError> {
    let Some(accept) = headers.get(http::header::ACCEPT) else {
        return Ok(Shape::Full);
    };
    let accept = accept.to_str().unwrap_or_default();
    if accept.contains("as=PartialObjectMetadata") {
        Ok(Shape::Metadata)
    } else if accept.contains("as=") {
        Err(ApiError::not_acceptable(accept))
    } else {
        Ok(Shape::Full)
    }
}

fn json_response(status: u16, body: String) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = json_response(error.code, error.to_status().to_string());
    if let Some(seconds) = error.retry_after {
        response
            .headers_mut()
            .insert(http::header::RETRY_AFTER, seconds.into());
    }
    response
}

fn object_response(status: u16, object: &Stored, shape: Shape) -> Response<Body> {
    let body = match shape {
        Shape::Full => object.full_json(),
        Shape::Metadata => object.metadata_json(),
    };
    json_response(status, body)
}

fn verb_of(method: &Method, route: &Route, query: &Query) -> &'static str {
    match (method, route.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if query.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => "unknown",
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// RBAC's reason, worded as the real authorizer words it.
fn forbidden(user: &str, verb: &str, r: &ResourceType, route: &Route) -> ApiError {
    let resource = if route.status {
        format!("{}/status", r.plural)
    } else {
        r.plural.to_string()
    };
    let scope = match &route.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    ApiError::forbidden(
        r,
        route.name.as_deref().unwrap_or_default(),
        &format!(
            "User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            r.group
        ),
    )
}

/// Serves one request.
pub async fn handle(cluster: Arc<Cluster>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let raw_query = request.uri().query().unwrap_or_default().to_string();
    let Some(route) = route(&path) else {
        return non_resource(&path);
    };
    let query = Query::parse(&raw_query);
    let verb = verb_of(&method, &route, &query);
    let r = &RESOURCES[route.resource];
    let user = bearer(request.headers()).and_then(|t| cluster.access().authenticate(t));
    let mut record = ApiRequest {
        user: user.clone(),
        verb: verb.to_string(),
        group: r.group.to_string(),
        resource: r.plural.to_string(),
        subresource: route.status.then(|| "status".to_string()),
        namespace: route.namespace.clone(),
        name: route.name.clone(),
        status: 0,
        method: method.to_string(),
        path,
        query: raw_query,
    };
    let response = match user {
        None => error_response(&ApiError::unauthorized()),
        Some(user) => authorized(&cluster, request, &route, &query, verb, &user).await,
    };
    record.status = response.status().as_u16();
    cluster.access().record(record);
    response
}

async fn authorized(
    cluster: &Arc<Cluster>,
    request: Request<Incoming>,
    route: &Route,
    query: &Query,
    verb: &str,
    user: &str,
) -> Response<Body> {
    let r = &RESOURCES[route.resource];
    let injected = cluster.access().take_failure(verb, r.plural);
    if let Some(code) = injected {
        return error_response(&ApiError::injected(code));
    }
    if cluster.access().is_denied(user, verb, r.group, r.plural) {
        return error_response(&forbidden(user, verb, r, route));
    }
    let shape = match shape(request.headers()) {
        Ok(shape) => shape,
        Err(e) => return error_response(&e),
    };
    let content_type = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return error_response(&ApiError::too_large()),
    };
    let dry_run = query.get("dryRun").is_some()
        || serde_json::from_slice::<Value>(&body)
            .is_ok_and(|b| b.get("dryRun").is_some_and(|d| d != &json!([])));
    if dry_run && !matches!(verb, "get" | "list" | "watch") {
        return error_response(&ApiError::not_served("dryRun"));
    }
    if r.namespaced && route.namespace.is_none() && !matches!(verb, "list" | "watch") {
        // The all-namespaces path serves reads only, as on the real server.
        return error_response(&ApiError::method_not_allowed(verb, r));
    }
    let result = match verb {
        "get" => get(cluster, route, shape),
        "list" => list(cluster, route, query, shape),
        "watch" => return watch(cluster, route, query, shape),
        "create" => create(cluster, route, &body, shape),
        "update" => update(cluster, route, &body, shape),
        "patch" => patch(cluster, route, query, &content_type, &body, shape),
        "delete" => delete(cluster, route, query, &body, shape),
        "deletecollection" => delete_collection(cluster, route, query, &body),
        _ => Err(ApiError::method_not_allowed(verb, r)),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

/// `/version`, `/healthz`, `/readyz`, `/livez`; anything else is the real 404.
fn non_resource(path: &str) -> Response<Body> {
    match path {
        "/version" => json_response(
            200,
            json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-wave-standin",
                   "platform": "linux/amd64"})
            .to_string(),
        ),
        "/healthz" | "/readyz" | "/livez" => Response::builder()
            .header(http::header::CONTENT_TYPE, "text/plain")
            .body(Full::new(Bytes::from_static(b"ok")).boxed())
            .expect("static response parts are valid"),
        _ => error_response(&ApiError::no_route()),
    }
}

fn key_of(route: &Route) -> Key {
    (
        route.resource,
        route.namespace.clone().unwrap_or_default(),
        route.name.clone().unwrap_or_default(),
    )
}

fn part_of(route: &Route) -> Part {
    if route.status {
        Part::Status
    } else {
        Part::Main
    }
}

fn parse_body(r: &ResourceType, body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {e}",
            r.kind
        ))
    })
}

fn get(cluster: &Cluster, route: &Route, shape: Shape) -> Result<Response<Body>, ApiError> {
    let key = key_of(route);
    let object = cluster.read().get(&key);
    match object {
        Some(object) => Ok(object_response(200, &object, shape)),
        None => Err(ApiError::not_found(&RESOURCES[route.resource], &key.2)),
    }
}

/// A continue token: the list's rv and the last key served, as the real server's
/// base64 JSON.
fn encode_continue(rv: u64, last: &Stored) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{}/{}", last.namespace, last.name)});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("invalid continue token: {why}"));
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid("not base64"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not JSON"))?;
    let rv = value["rv"]
        .as_u64()
        .ok_or_else(|| invalid("no resourceVersion"))?;
    let (ns, name) = value["start"]
        .as_str()
        .and_then(|s| s.split_once('/'))
        .ok_or_else(|| invalid("no start key"))?;
    Ok((rv, ns.to_string(), name.to_string()))
}

fn selectors(r: &ResourceType, query: &Query) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels =
        LabelSelector::parse(query.get("labelSelector").unwrap_or_default()).map_err(|why| {
            ApiError::bad_request(format!(
                "unable to parse labelSelector {:?}: {why}",
                query.get("labelSelector").unwrap_or_default()
            ))
        })?;
    let mut supported = vec!["metadata.name", "metadata.namespace"];
    supported.extend_from_slice(r.fields);
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default(), &supported)
        .map_err(ApiError::bad_request)?;
    Ok((labels, fields))
}

fn list(
    cluster: &Cluster,
    route: &Route,
    query: &Query,
    shape: Shape,
) -> Result<Response<Body>, ApiError> {
    let r = &RESOURCES[route.resource];
    let (labels, fields) = selectors(r, query)?;
    let limit: Option<usize> = query.number("limit")?.filter(|l| *l > 0);
    let cont = query
        .get("continue")
        .filter(|c| !c.is_empty())
        .map(decode_continue)
        .transpose()?;
    let store = cluster.read();
    let rv = match &cont {
        Some((rv, _, _)) if *rv < store.compacted() => {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.",
            ));
        }
        Some((rv, _, _)) => *rv,
        None => store.resource_version(),
    };
    let after = cont
        .as_ref()
        .map(|(_, ns, name)| (ns.as_str(), name.as_str()));
    let (items, remaining) = store.list(
        route.resource,
        route.namespace.as_deref(),
        after,
        limit,
        |o| labels.matches(&o.labels) && fields.matches(&o.fields),
    );
    drop(store);
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let (Some(remaining), Some(last)) = (remaining, items.last()) {
        metadata["continue"] = json!(encode_continue(rv, last));
        if labels.is_empty() && fields.is_empty() {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    let (api_version, kind) = match shape {
        Shape::Full => (r.api_version(), r.list_kind()),
        Shape::Metadata => (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        ),
    };
    let mut body = format!(
        "{{\"kind\":\"{kind}\",\"apiVersion\":\"{api_version}\",\"metadata\":{metadata},\"items\":["
    );
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        match shape {
            Shape::Full => body.push_str(&item.body),
            Shape::Metadata => body.push_str(&item.metadata_json()),
        }
    }
    body.push_str("]}");
    Ok(json_response(200, body))
}

fn watch(cluster: &Arc<Cluster>, route: &Route, query: &Query, shape: Shape) -> Response<Body> {
    let r = &RESOURCES[route.resource];
    let parsed = selectors(r, query).and_then(|(labels, fields)| {
        let start = query
            .number::<u64>("resourceVersion")?
            .filter(|rv| *rv != 0);
        let timeout = query.number::<u64>("timeoutSeconds")?;
        Ok(WatchRequest {
            resource: route.resource,
            namespace: route.namespace.clone(),
            labels,
            fields,
            start,
            initial_events: query.flag("sendInitialEvents"),
            bookmarks: query.flag("allowWatchBookmarks"),
            timeout: timeout.map(Duration::from_secs),
            metadata_only: shape == Shape::Metadata,
        })
    });
    match parsed {
        Ok(request) => Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::TRANSFER_ENCODING, "chunked")
            .body(BodyExt::boxed(StreamBody::new(watch::start(
                cluster.clone(),
                request,
            ))))
            .expect("static response parts are valid"),
        Err(e) => error_response(&e),
    }
}

fn create(
    cluster: &Cluster,
    route: &Route,
    body: &[u8],
    shape: Shape,
) -> Result<Response<Body>, ApiError> {
    let r = &RESOURCES[route.resource];
    if route.name.is_some() {
        return Err(ApiError::method_not_allowed("create", r));
    }
    let value = parse_body(r, body)?;
    let created = cluster.write(|s| {
        s.create(
            route.resource,
            route.namespace.as_deref(),
            value,
            super::store::Origin::Client,
        )
    })?;
    Ok(object_response(201, &created, shape))
}

fn update(
    cluster: &Cluster,
    route: &Route,
    body: &[u8],
    shape: Shape,
) -> Result<Response<Body>, ApiError> {
    let value = parse_body(&RESOURCES[route.resource], body)?;
    let key = key_of(route);
    let updated = cluster.write(|s| s.update(&key, value, part_of(route)))?;
    Ok(object_response(200, &updated, shape))
}

/// Applies a patch document to `object`.
fn apply_patch(object: &mut Value, content_type: &str, body: &[u8]) -> Result<(), ApiError> {
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            json_patch::merge(object, &patch);
            Ok(())
        }
        "application/json-patch+json" => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(object, &patch).map_err(|e| ApiError {
                code: 422,
                reason: "Invalid",
                message: format!(
                    "the server rejected our request due to an error in our request: {e}"
                ),
                details: None,
                retry_after: None,
            })
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn patch(
    cluster: &Cluster,
    route: &Route,
    query: &Query,
    content_type: &str,
    body: &[u8],
    shape: Shape,
) -> Result<Response<Body>, ApiError> {
    let r = &RESOURCES[route.resource];
    let key = key_of(route);
    if content_type.split(';').next().map(str::trim) == Some("application/apply-patch+yaml") {
        return apply(cluster, route, query, body, shape);
    }
    let patched = cluster.write(|s: &mut Store| {
        let current = s.get(&key).ok_or_else(|| ApiError::not_found(r, &key.2))?;
        let mut value = current.to_value();
        apply_patch(&mut value, content_type, body)?;
        s.update(&key, value, part_of(route))
    })?;
    Ok(object_response(200, &patched, shape))
}

/// Server-side apply, approximated: the applied configuration (JSON or YAML) creates the
/// object when it is missing (201) and is merged into it otherwise, as a merge patch.
/// Field ownership is not tracked: no manager conflicts, and fields left out of a later
/// apply are not removed.
fn apply(
    cluster: &Cluster,
    route: &Route,
    query: &Query,
    body: &[u8],
    shape: Shape,
) -> Result<Response<Body>, ApiError> {
    let r = &RESOURCES[route.resource];
    if query.get("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::invalid_options(
            "fieldManager",
            "Required value: is required for apply patch",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("error decoding YAML: the body is not UTF-8"))?;
    let applied: Value = serde_json::from_str(text)
        .or_else(|_| serde_saphyr::from_str(text))
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
    if applied["apiVersion"].as_str().is_none() || applied["kind"].as_str().is_none() {
        return Err(ApiError::bad_request(
            "invalid object type: apiVersion and kind are required for apply",
        ));
    }
    let key = key_of(route);
    cluster.write(|s: &mut Store| {
        let Some(current) = s.get(&key) else {
            if route.status {
                return Err(ApiError::not_found(r, &key.2));
            }
            let created = s.create(
                route.resource,
                route.namespace.as_deref(),
                applied,
                super::store::Origin::Client,
            )?;
            return Ok(object_response(201, &created, shape));
        };
        let mut value = current.to_value();
        json_patch::merge(&mut value, &applied);
        let updated = s.update(&key, value, part_of(route))?;
        Ok(object_response(200, &updated, shape))
    })
}

fn delete_options(query: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let value: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let policy = value["propagationPolicy"]
        .as_str()
        .or_else(|| query.get("propagationPolicy"))
        .map(|p| match p {
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            ))),
        })
        .transpose()?;
    let orphan = value["orphanDependents"]
        .as_bool()
        .or_else(|| query.get("orphanDependents").map(|v| v == "true"))
        .map(|o| {
            if o {
                Propagation::Orphan
            } else {
                Propagation::Background
            }
        });
    let grace = match value["gracePeriodSeconds"].as_i64() {
        Some(g) => Some(g),
        None => query.number("gracePeriodSeconds")?,
    };
    let text = |v: &Value| v.as_str().map(str::to_string);
    Ok(DeleteOptions {
        grace_period_seconds: grace,
        propagation: policy.or(orphan),
        precondition_uid: text(&value["preconditions"]["uid"]),
        precondition_rv: text(&value["preconditions"]["resourceVersion"]),
    })
}

/// The answer to a deletion, as the real server gives it: the object when it is still
/// there (terminating) or for pods; otherwise a `Status` Success naming it.
fn deleted_response(deleted: &Deleted, shape: Shape) -> Response<Body> {
    match deleted {
        Deleted::Pending(object) => object_response(200, object, shape),
        Deleted::Gone(object) if object.resource_type().kind == "Pod" => {
            object_response(200, object, shape)
        }
        Deleted::Gone(object) => {
            let r = object.resource_type();
            let mut details = json!({"name": object.name, "kind": r.plural, "uid": object.uid});
            if !r.group.is_empty() {
                details["group"] = json!(r.group);
            }
            json_response(
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                       "status": "Success", "details": details})
                .to_string(),
            )
        }
    }
}

fn delete(
    cluster: &Cluster,
    route: &Route,
    query: &Query,
    body: &[u8],
    shape: Shape,
) -> Result<Response<Body>, ApiError> {
    let options = delete_options(query, body)?;
    let key = key_of(route);
    let deleted = cluster.write(|s| s.delete(&key, &options))?;
    Ok(deleted_response(&deleted, shape))
}

fn delete_collection(
    cluster: &Cluster,
    route: &Route,
    query: &Query,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let r = &RESOURCES[route.resource];
    let (labels, fields) = selectors(r, query)?;
    let options = delete_options(query, body)?;
    let deleted = cluster.write(|s| {
        let (items, _) = s.list(
            route.resource,
            route.namespace.as_deref(),
            None,
            None,
            |o| labels.matches(&o.labels) && fields.matches(&o.fields),
        );
        items
            .iter()
            .filter_map(|o| match s.delete(&o.key(), &options) {
                Ok(Deleted::Gone(o) | Deleted::Pending(o)) => Some(o),
                Err(_) => None,
            })
            .collect::<Vec<_>>()
    });
    let rv = cluster.read().resource_version();
    let items: Vec<&str> = deleted.iter().map(|o| o.body.as_str()).collect();
    Ok(json_response(
        200,
        format!(
            "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"}},\"items\":[{}]}}",
            r.list_kind(),
            r.api_version(),
            items.join(",")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let mut store = Store::new(10);
        let leases = by_plural("coordination.k8s.io", "v1", "leases").expect("leases");
        let lease = json!({"metadata": {"name": "b"}});
        let stored = store
            .create(
                leases,
                Some("ns"),
                lease,
                super::super::store::Origin::Client,
            )
            .expect("created");
        let token = encode_continue(1234, &stored);
        assert_eq!(
            decode_continue(&token).expect("valid"),
            (1234, "ns".to_string(), "b".to_string())
        );
        assert_eq!(decode_continue("%%%").map_err(|e| e.code), Err(400));
    }
}
