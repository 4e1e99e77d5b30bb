//! The kube-apiserver stand-in (`wave_tests::apiserver`) answers as the real API server does,
//! checked through the workspace's kube client (as the webhook and agent use it) and, where
//! the client hides the wire, with raw HTTP: `Status` bodies, conflicts, preconditions,
//! selectors and paging, watches with bookmarks and 410, pod termination and garbage
//! collection, metadata-only requests, RBAC, authentication and outages.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config, Error};
use serde_json::{Value, json};
use wave_tests::apiserver::ApiServer;
use wave_tests::wait_for;

const NS: &str = "wave-tests";
const USER: &str = "system:serviceaccount:wave-tests:wave-agent";
const WAIT: Duration = Duration::from_secs(10);

async fn client(api: &ApiServer, user: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig(user)).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("client config");
    Client::try_from(config).expect("client")
}

async fn leases(api: &ApiServer) -> Api<Lease> {
    Api::namespaced(client(api, USER).await, NS)
}

fn lease(name: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("machine-0".to_string()),
            ..Default::default()
        }),
    }
}

/// The failure a kube call ended in.
fn status_of<T: std::fmt::Debug>(result: Result<T, Error>) -> kube::core::Status {
    match result {
        Err(Error::Api(status)) => *status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// An answer read off the wire.
struct Raw {
    status: u16,
    head: String,
    body: Value,
}

/// One HTTP/1.1 request with `Connection: close`; `token` as the bearer token.
fn raw(
    api: &ApiServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Raw {
    send(api, method, path, token, "application/json", body)
}

/// [`raw`] with a body of another media type (patches).
fn raw_typed(
    api: &ApiServer,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    body: &Value,
) -> Raw {
    send(api, method, path, Some(token), content_type, Some(body))
}

fn send(
    api: &ApiServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: Option<&Value>,
) -> Raw {
    let mut stream = TcpStream::connect(api.addr()).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        api.addr(),
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("header block");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    Raw {
        status,
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/wave-tests/leases";

#[tokio::test]
async fn create_answers_201_and_a_second_create_409_already_exists() {
    let api = ApiServer::start().await;
    let token = api.token(USER);
    let body = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": "slot-0"}, "spec": {"holderIdentity": "m0"}});
    let created = raw(&api, "POST", LEASES, Some(&token), Some(&body));
    assert_eq!(created.status, 201);
    let meta = &created.body["metadata"];
    assert_eq!(meta["namespace"], NS);
    assert!(
        meta["uid"].as_str().is_some_and(|u| u.len() == 36),
        "{meta}"
    );
    assert!(meta["creationTimestamp"].is_string(), "{meta}");
    assert_eq!(
        meta["resourceVersion"],
        api.resource_version().to_string(),
        "the write bumped the one counter"
    );

    let again = raw(&api, "POST", LEASES, Some(&token), Some(&body));
    assert_eq!(again.status, 409);
    assert_eq!(
        again.body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "leases.coordination.k8s.io \"slot-0\" already exists",
               "reason": "AlreadyExists", "code": 409,
               "details": {"name": "slot-0", "group": "coordination.k8s.io", "kind": "leases"}})
    );

    // The kube client sees the same Status.
    let status = status_of(
        leases(&api)
            .await
            .create(&PostParams::default(), &lease("slot-0"))
            .await,
    );
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
}

#[tokio::test]
async fn generate_name_gives_each_create_its_own_name() {
    let api = ApiServer::start().await;
    let leases = leases(&api).await;
    let mut named = lease("");
    named.metadata.name = None;
    named.metadata.generate_name = Some("slot-".to_string());
    let a = leases
        .create(&PostParams::default(), &named)
        .await
        .expect("created");
    let b = leases
        .create(&PostParams::default(), &named)
        .await
        .expect("created");
    let (a, b) = (
        a.metadata.name.expect("name"),
        b.metadata.name.expect("name"),
    );
    assert!(
        a.starts_with("slot-") && a.len() == "slot-".len() + 5,
        "{a}"
    );
    assert_ne!(a, b);
}

#[tokio::test]
async fn get_of_a_missing_object_is_404_not_found() {
    let api = ApiServer::start().await;
    let answer = raw(
        &api,
        "GET",
        &format!("{LEASES}/x"),
        Some(&api.token(USER)),
        None,
    );
    assert_eq!(answer.status, 404);
    assert_eq!(answer.body["reason"], "NotFound");
    assert_eq!(
        answer.body["message"],
        "leases.coordination.k8s.io \"x\" not found"
    );
    assert_eq!(
        answer.body["details"],
        json!({"name": "x", "group": "coordination.k8s.io", "kind": "leases"})
    );
    let pods: Api<Pod> = Api::namespaced(client(&api, USER).await, NS);
    let status = status_of(pods.get("p").await);
    assert_eq!(status.message, "pods \"p\" not found");
}

#[tokio::test]
async fn bad_names_and_labels_are_422_invalid_with_causes() {
    let api = ApiServer::start().await;
    let token = api.token(USER);
    let body = json!({"metadata": {"name": "Slot_0", "labels": {"bad key": "v"}}});
    let answer = raw(&api, "POST", LEASES, Some(&token), Some(&body));
    assert_eq!(answer.status, 422);
    assert_eq!(answer.body["reason"], "Invalid");
    let message = answer.body["message"].as_str().expect("message");
    assert!(
        message.starts_with(
            "Lease.coordination.k8s.io \"Slot_0\" is invalid: [metadata.name: Invalid value: \"Slot_0\": a lowercase RFC 1123 subdomain"
        ),
        "{message}"
    );
    let fields: Vec<&str> = answer.body["details"]["causes"]
        .as_array()
        .expect("causes")
        .iter()
        .map(|c| c["field"].as_str().expect("field"))
        .collect();
    assert_eq!(fields, ["metadata.name", "metadata.labels"]);
    assert!(
        api.list("coordination.k8s.io/v1", "Lease", Some(NS))
            .is_empty()
    );
}

#[tokio::test]
async fn a_body_of_another_kind_is_400_bad_request() {
    let api = ApiServer::start().await;
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    let answer = raw(&api, "POST", LEASES, Some(&api.token(USER)), Some(&body));
    assert_eq!(answer.status, 400);
    assert_eq!(answer.body["reason"], "BadRequest");
    assert_eq!(
        answer.body["message"],
        "the API version in the data (v1) does not match the expected API version (coordination.k8s.io/v1)"
    );
    let not_json = raw(
        &api,
        "POST",
        LEASES,
        Some(&api.token(USER)),
        Some(&json!("text")),
    );
    assert_eq!(not_json.status, 400);
}

#[tokio::test]
async fn an_update_from_a_stale_resource_version_is_409_conflict() {
    let api = ApiServer::start().await;
    let leases = leases(&api).await;
    let first = leases
        .create(&PostParams::default(), &lease("slot-0"))
        .await
        .expect("created");
    let mut renewed = first.clone();
    renewed
        .spec
        .get_or_insert_with(Default::default)
        .lease_duration_seconds = Some(15);
    let second = leases
        .replace("slot-0", &PostParams::default(), &renewed)
        .await
        .expect("replaced from the current version");
    assert_ne!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );

    // A second holder still has the first version.
    let mut stale = first.clone();
    stale
        .spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("machine-1".to_string());
    let status = status_of(
        leases
            .replace("slot-0", &PostParams::default(), &stale)
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        status.message,
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"slot-0\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let kept = leases.get("slot-0").await.expect("still there");
    assert_eq!(
        kept.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("machine-0")
    );

    let missing = status_of(
        leases
            .replace("slot-9", &PostParams::default(), &lease("slot-9"))
            .await,
    );
    assert_eq!(missing.code, 404);
}

#[tokio::test]
async fn patches_merge_or_apply_json_patch_and_keep_system_fields() {
    let api = ApiServer::start().await;
    let leases = leases(&api).await;
    let created = leases
        .create(&PostParams::default(), &lease("slot-0"))
        .await
        .expect("created");
    let merged = leases
        .patch(
            "slot-0",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"labels": {"slot": "0"}, "uid": "forged"},
                                 "spec": {"holderIdentity": "machine-1"}}),
            ),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        merged.metadata.uid, created.metadata.uid,
        "uid is the server's"
    );
    assert_eq!(
        merged
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref()),
        Some("machine-1")
    );
    let ops = json!([
        {"op": "test", "path": "/spec/holderIdentity", "value": "machine-1"},
        {"op": "replace", "path": "/spec/holderIdentity", "value": "machine-2"}
    ]);
    let path = format!("{LEASES}/slot-0");
    let token = api.token(USER);
    let patched = raw_typed(
        &api,
        "PATCH",
        &path,
        &token,
        "application/json-patch+json",
        &ops,
    );
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body["spec"]["holderIdentity"], "machine-2");
    let failed = raw_typed(
        &api,
        "PATCH",
        &path,
        &token,
        "application/json-patch+json",
        &ops,
    );
    assert_eq!(failed.status, 422, "the test operation no longer holds");
    // A merge patch carrying an old resourceVersion is a conflicting update.
    let stale =
        Patch::Merge(json!({"metadata": {"resourceVersion": created.metadata.resource_version}}));
    let status = status_of(
        leases
            .patch("slot-0", &PatchParams::default(), &stale)
            .await,
    );
    assert_eq!(status.reason, "Conflict");
    let apply = leases
        .patch(
            "slot-0",
            &PatchParams::apply("wave"),
            &Patch::Apply(lease("slot-0")),
        )
        .await;
    assert_eq!(
        status_of(apply).code,
        415,
        "server-side apply is not served"
    );
}

#[tokio::test]
async fn delete_preconditions_that_do_not_match_are_409_conflict() {
    let api = ApiServer::start().await;
    let leases = leases(&api).await;
    let created = leases
        .create(&PostParams::default(), &lease("slot-0"))
        .await
        .expect("created");
    let uid = created.metadata.uid.clone().expect("uid");
    let with = |uid: Option<&str>, rv: Option<&str>| DeleteParams {
        preconditions: Some(Preconditions {
            uid: uid.map(str::to_string),
            resource_version: rv.map(str::to_string),
        }),
        ..DeleteParams::default()
    };
    let status = status_of(
        leases
            .delete("slot-0", &with(Some("other-uid"), None))
            .await,
    );
    assert_eq!(status.code, 409);
    assert_eq!(
        status.message,
        format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"slot-0\": Precondition failed: UID in precondition: other-uid, UID in object meta: {uid}"
        )
    );
    let status = status_of(leases.delete("slot-0", &with(None, Some("1"))).await);
    assert_eq!(status.reason, "Conflict");
    assert!(
        status
            .message
            .contains("ResourceVersion in precondition: 1"),
        "{}",
        status.message
    );

    let rv = created.metadata.resource_version.clone();
    let deleted = leases
        .delete("slot-0", &with(Some(&uid), rv.as_deref()))
        .await
        .expect("preconditions hold");
    let gone = deleted
        .right()
        .expect("a lease is gone at once: a Status answers");
    assert_eq!(gone.details.map(|d| d.uid), Some(uid));
    assert_eq!(status_of(leases.get("slot-0").await).code, 404);
}

#[tokio::test]
async fn label_selected_lists_come_in_pages_with_continue_tokens() {
    let api = ApiServer::start().await;
    for i in 0..5 {
        api.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("game-{i}"), "namespace": NS,
                                     "labels": {"app": "game", "tier": if i % 2 == 0 { "a" } else { "b" }}}}));
    }
    api.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "db", "namespace": NS, "labels": {"app": "db"}}}));
    api.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "elsewhere", "namespace": "other", "labels": {"app": "game"}}}));
    let maps: Api<ConfigMap> = Api::namespaced(client(&api, USER).await, NS);
    let names = |list: &kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        list.items
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect()
    };

    let selected = maps
        .list(&ListParams::default().labels("app=game,tier in (a)"))
        .await
        .expect("list");
    assert_eq!(names(&selected), ["game-0", "game-2", "game-4"]);
    let excluded = maps
        .list(&ListParams::default().labels("app!=game"))
        .await
        .expect("list");
    assert_eq!(names(&excluded), ["db"]);
    let by_name = maps
        .list(&ListParams::default().fields("metadata.name=db"))
        .await
        .expect("list");
    assert_eq!(names(&by_name), ["db"]);
    let all: Api<ConfigMap> = Api::all(client(&api, USER).await);
    assert_eq!(
        all.list(&ListParams::default().labels("app=game"))
            .await
            .expect("list")
            .items
            .len(),
        6
    );

    let mut pages = Vec::new();
    let mut params = ListParams::default().labels("app=game").limit(2);
    loop {
        let page = maps.list(&params).await.expect("page");
        pages.push((names(&page), page.metadata.resource_version.clone()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    let served: Vec<Vec<String>> = pages.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        served,
        [
            vec!["game-0", "game-1"],
            vec!["game-2", "game-3"],
            vec!["game-4"]
        ]
    );
    assert!(
        pages.iter().all(|(_, rv)| *rv == pages[0].1),
        "one list, one resourceVersion"
    );

    let bad = maps
        .list(&ListParams::default().limit(2).continue_token("not-a-token"))
        .await;
    assert_eq!(status_of(bad).code, 400);
    let selector = maps.list(&ListParams::default().labels("tier in (a")).await;
    assert_eq!(status_of(selector).code, 400);
}

#[tokio::test]
async fn a_continue_token_older_than_the_history_is_410_expired() {
    let api = ApiServer::start().await;
    for i in 0..3 {
        api.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("c{i}"), "namespace": NS}}));
    }
    let maps: Api<ConfigMap> = Api::namespaced(client(&api, USER).await, NS);
    let first = maps
        .list(&ListParams::default().limit(1))
        .await
        .expect("page");
    let token = first.metadata.continue_.expect("more pages");
    api.set_history_limit(2);
    for i in 0..3 {
        api.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("later{i}"), "namespace": NS}}));
    }
    let status = status_of(
        maps.list(&ListParams::default().limit(1).continue_token(&token))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn watches_replay_changes_send_bookmarks_and_follow_selectors() {
    let api = ApiServer::start().await;
    api.set_bookmark_interval(Duration::from_millis(200));
    let maps: Api<ConfigMap> = Api::namespaced(client(&api, USER).await, NS);
    let listed = maps.list(&ListParams::default()).await.expect("list");
    let from = listed.metadata.resource_version.expect("list rv");
    let mut events = maps
        .watch(&WatchParams::default().labels("app=game"), &from)
        .await
        .expect("watch")
        .boxed();

    let mut map = ConfigMap {
        metadata: ObjectMeta {
            name: Some("c".to_string()),
            labels: Some([("app".to_string(), "game".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let created = maps
        .create(&PostParams::default(), &map)
        .await
        .expect("created");
    map.metadata.resource_version = created.metadata.resource_version.clone();
    map.data = Some([("k".to_string(), "v".to_string())].into());
    maps.replace("c", &PostParams::default(), &map)
        .await
        .expect("updated");
    maps.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}})),
    )
    .await
    .expect("relabelled");

    let mut seen = Vec::new();
    let mut bookmark_rv = None;
    while bookmark_rv.is_none() || seen.len() < 3 {
        let event = tokio::time::timeout(WAIT, events.try_next())
            .await
            .expect("an event within the wait")
            .expect("a watch event")
            .expect("the stream is open");
        match event {
            WatchEvent::Added(c) => seen.push(("ADDED", c.data.is_some())),
            WatchEvent::Modified(c) => seen.push(("MODIFIED", c.data.is_some())),
            WatchEvent::Deleted(c) => seen.push(("DELETED", c.data.is_some())),
            WatchEvent::Bookmark(b) if seen.len() == 3 => {
                bookmark_rv = Some(b.metadata.resource_version)
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    // Leaving the selector is a DELETED for this watch.
    assert_eq!(
        seen,
        [("ADDED", false), ("MODIFIED", true), ("DELETED", true)]
    );
    assert_eq!(bookmark_rv, Some(api.resource_version().to_string()));
}

#[tokio::test]
async fn a_watch_from_0_starts_with_the_current_state() {
    let api = ApiServer::start().await;
    api.seed(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "old", "namespace": NS}}));
    let maps: Api<ConfigMap> = Api::namespaced(client(&api, USER).await, NS);
    let mut events = maps
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(WAIT, events.try_next()).await {
        Ok(Ok(Some(WatchEvent::Added(c)))) => assert_eq!(c.metadata.name.as_deref(), Some("old")),
        other => panic!("expected a synthetic ADDED, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_from_before_the_history_gets_a_410_expired_error_event() {
    let api = ApiServer::start().await;
    let start = api.resource_version();
    api.set_history_limit(3);
    for i in 0..5 {
        api.seed(json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": format!("c{i}"), "namespace": NS}}));
    }
    let maps: Api<ConfigMap> = Api::namespaced(client(&api, USER).await, NS);
    let mut events = maps
        .watch(&WatchParams::default(), &start.to_string())
        .await
        .expect("the watch itself starts")
        .boxed();
    match tokio::time::timeout(WAIT, events.try_next()).await {
        Ok(Ok(Some(WatchEvent::Error(status)))) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
            assert!(
                status.message.starts_with("too old resource version"),
                "{}",
                status.message
            );
        }
        other => panic!("expected an ERROR event, got {other:?}"),
    }
    // A watch from a kept version still works.
    let recent = (api.resource_version() - 1).to_string();
    let mut events = maps
        .watch(&WatchParams::default(), &recent)
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(WAIT, events.try_next()).await {
        Ok(Ok(Some(WatchEvent::Added(c)))) => assert_eq!(c.metadata.name.as_deref(), Some("c4")),
        other => panic!("expected the last ADDED, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reflector_lists_then_follows_creates_and_deletes() {
    let api = ApiServer::start().await;
    api.seed(
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "seeded", "namespace": NS}}),
    );
    let leases = leases(&api).await;
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(leases.clone(), watcher::Config::default()))
        .applied_objects()
        .boxed();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.expect("the cache fills");
    leases
        .create(&PostParams::default(), &lease("new"))
        .await
        .expect("created");
    leases
        .delete("seeded", &DeleteParams::default())
        .await
        .expect("deleted");
    let names = || {
        let mut names: Vec<String> = reader
            .state()
            .iter()
            .filter_map(|l| l.metadata.name.clone())
            .collect();
        names.sort();
        names
    };
    wait_for("the cache to follow", WAIT, || async { names() == ["new"] }).await;
    task.abort();
}

/// The next event that is not a bookmark.
async fn next_change<K>(
    events: &mut BoxStream<'static, kube::Result<WatchEvent<K>>>,
) -> WatchEvent<K> {
    loop {
        match tokio::time::timeout(WAIT, events.try_next()).await {
            Ok(Ok(Some(WatchEvent::Bookmark(_)))) => continue,
            Ok(Ok(Some(event))) => return event,
            Ok(other) => panic!(
                "expected a watch event, got {:?}",
                other.map(|e| e.is_some())
            ),
            Err(_) => panic!("no watch event within {WAIT:?}"),
        }
    }
}

fn running_pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": NS},
           "spec": {"nodeName": "node-1", "terminationGracePeriodSeconds": 30,
                    "containers": [{"name": "wave", "image": "wave-agent"}]},
           "status": {"phase": "Running"}})
}

#[tokio::test]
async fn a_deleted_pod_terminates_until_finished_then_its_leases_are_collected() {
    let api = ApiServer::start().await;
    let pod = api.seed(running_pod("machine-0"));
    let owner = OwnerReference {
        api_version: "v1".to_string(),
        kind: "Pod".to_string(),
        name: "machine-0".to_string(),
        uid: pod["metadata"]["uid"].as_str().expect("uid").to_string(),
        ..Default::default()
    };
    let mut slot = lease("slot-0");
    slot.metadata.namespace = Some(NS.to_string());
    slot.metadata.owner_references = Some(vec![owner]);
    api.seed_typed(&slot);
    let client = client(&api, USER).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let leases: Api<Lease> = Api::namespaced(client, NS);
    let from = api.resource_version().to_string();
    let mut events = pods
        .watch(&WatchParams::default(), &from)
        .await
        .expect("watch")
        .boxed();

    let answer = pods
        .delete("machine-0", &DeleteParams::default())
        .await
        .expect("deleted");
    let terminating = answer
        .left()
        .expect("a terminating pod is answered with the pod");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    assert!(
        matches!(next_change(&mut events).await, WatchEvent::Modified(p) if p.metadata.deletion_timestamp.is_some())
    );
    assert!(
        pods.get("machine-0").await.is_ok(),
        "the pod stays while terminating"
    );
    assert!(
        leases.get("slot-0").await.is_ok(),
        "its lease stays while the pod exists"
    );

    api.finish_termination(NS, "machine-0");
    assert!(matches!(
        next_change(&mut events).await,
        WatchEvent::Deleted(_)
    ));
    wait_for("the lease to be garbage-collected", WAIT, || async {
        api.get("coordination.k8s.io/v1", "Lease", Some(NS), "slot-0")
            .is_none()
    })
    .await;
}

#[tokio::test]
async fn a_zero_grace_period_or_an_unscheduled_pod_goes_at_once() {
    let api = ApiServer::start().await;
    api.seed(running_pod("machine-0"));
    api.seed(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pending", "namespace": NS},
                    "spec": {"containers": [{"name": "wave", "image": "wave-agent"}]}}),
    );
    let pods: Api<Pod> = Api::namespaced(client(&api, USER).await, NS);
    let now = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    pods.delete("machine-0", &now).await.expect("deleted");
    pods.delete("pending", &DeleteParams::default())
        .await
        .expect("deleted");
    assert!(api.list("v1", "Pod", Some(NS)).is_empty());
}

#[tokio::test]
async fn orphaned_dependents_lose_the_reference_and_stay() {
    let api = ApiServer::start().await;
    let owner = api.seed(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                "metadata": {"name": "rs", "namespace": NS}, "spec": {"replicas": 1}}));
    let owned = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": NS, "ownerReferences": [
                   {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs",
                    "uid": owner["metadata"]["uid"]}]}})
    };
    api.seed(owned("kept"));
    let sets: Api<ReplicaSet> = Api::namespaced(client(&api, USER).await, NS);
    let orphan = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    sets.delete("rs", &orphan).await.expect("deleted");
    let kept = api
        .get("v1", "ConfigMap", Some(NS), "kept")
        .expect("an orphan stays");
    assert!(kept["metadata"].get("ownerReferences").is_none(), "{kept}");
}

#[tokio::test]
async fn metadata_only_lists_and_gets_answer_partial_object_metadata() {
    let api = ApiServer::start().await;
    for i in 0..3 {
        api.seed(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                        "metadata": {"name": format!("rs-{i}"), "namespace": NS, "labels": {"testId": "t1"}},
                        "spec": {"replicas": 480}}));
    }
    let sets: Api<ReplicaSet> = Api::all(client(&api, USER).await);
    let list = sets
        .list_metadata(&ListParams::default().labels("testId=t1"))
        .await
        .expect("metadata list");
    assert_eq!(list.items.len(), 3);
    assert_eq!(list.items[0].metadata.name.as_deref(), Some("rs-0"));
    assert_eq!(list.types.kind, "PartialObjectMetadataList");

    let answer = raw(
        &api,
        "GET",
        "/apis/apps/v1/namespaces/wave-tests/replicasets/rs-1",
        Some(&api.token(USER)),
        None,
    );
    assert!(answer.body["spec"].is_object(), "a plain GET has the spec");
    let namespaced: Api<ReplicaSet> = Api::namespaced(client(&api, USER).await, NS);
    let meta = namespaced.get_metadata("rs-1").await.expect("metadata get");
    assert_eq!(
        meta.types.map(|t| t.kind),
        Some("PartialObjectMetadata".to_string())
    );
    assert_eq!(
        meta.metadata
            .labels
            .and_then(|l| l.get("testId").cloned())
            .as_deref(),
        Some("t1")
    );

    let mut events = namespaced
        .watch_metadata(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(WAIT, events.try_next()).await {
        Ok(Ok(Some(WatchEvent::Added(m)))) => assert_eq!(m.metadata.name.as_deref(), Some("rs-0")),
        other => panic!("expected a metadata ADDED, got {other:?}"),
    }
}

#[tokio::test]
async fn denied_requests_get_the_authorizers_403_message() {
    let api = ApiServer::start().await;
    api.deny(Some(USER), "create", "coordination.k8s.io", "leases");
    api.deny(None, "list", "", "pods");
    let status = status_of(
        leases(&api)
            .await
            .create(&PostParams::default(), &lease("slot-0"))
            .await,
    );
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "leases.coordination.k8s.io is forbidden: User \"system:serviceaccount:wave-tests:wave-agent\" cannot create resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"wave-tests\""
    );
    let pods: Api<Pod> = Api::all(client(&api, "alice").await);
    let status = status_of(pods.list(&ListParams::default()).await);
    assert_eq!(
        status.message,
        "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" at the cluster scope"
    );
    let other: Api<Lease> = Api::namespaced(client(&api, "alice").await, NS);
    other
        .create(&PostParams::default(), &lease("slot-0"))
        .await
        .expect("alice may create");
    let denied = api
        .requests()
        .into_iter()
        .find(|r| r.status == 403)
        .expect("recorded");
    assert_eq!(
        (
            denied.user.as_deref(),
            denied.verb.as_str(),
            denied.resource.as_str(),
            denied.namespace.as_deref()
        ),
        (Some(USER), "create", "leases", Some(NS))
    );
    api.allow_all();
    leases(&api)
        .await
        .create(&PostParams::default(), &lease("slot-1"))
        .await
        .expect("allowed again");
}

#[tokio::test]
async fn requests_without_a_known_token_are_401() {
    let api = ApiServer::start().await;
    let none = raw(&api, "GET", LEASES, None, None);
    assert_eq!(none.status, 401);
    assert_eq!(none.body["reason"], "Unauthorized");
    let forged = raw(&api, "GET", LEASES, Some("forged"), None);
    assert_eq!(forged.status, 401);
    assert!(
        api.requests()
            .iter()
            .all(|r| r.user.is_none() && r.status == 401)
    );
    assert_eq!(
        raw(&api, "GET", LEASES, Some(&api.token(USER)), None).status,
        200
    );
}

#[tokio::test]
async fn stop_refuses_connections_and_resume_serves_the_same_state() {
    let api = ApiServer::start().await;
    let leases = leases(&api).await;
    leases
        .create(&PostParams::default(), &lease("slot-0"))
        .await
        .expect("created");
    let mut events = leases
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    assert!(matches!(
        events.try_next().await,
        Ok(Some(WatchEvent::Added(_)))
    ));

    api.stop();
    assert!(
        TcpStream::connect(api.addr()).is_err(),
        "connections are refused"
    );
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(Ok(WatchEvent::Bookmark(_))) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("the open watch ends");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    assert!(leases.get("slot-0").await.is_err());

    api.resume();
    let back = leases.get("slot-0").await.expect("served again");
    assert_eq!(back.metadata.name.as_deref(), Some("slot-0"));
}

#[tokio::test]
async fn injected_failures_answer_a_status_and_then_pass() {
    let api = ApiServer::start().await;
    let token = api.token(USER);
    api.fail_next(1, 429);
    let throttled = raw(&api, "GET", LEASES, Some(&token), None);
    assert_eq!(throttled.status, 429);
    assert!(
        throttled.head.contains("retry-after: 1"),
        "{}",
        throttled.head
    );
    assert_eq!(throttled.body["reason"], "TooManyRequests");
    assert_eq!(raw(&api, "GET", LEASES, Some(&token), None).status, 200);

    api.fail_next_matching(1, 503, "create", "leases");
    assert_eq!(raw(&api, "GET", LEASES, Some(&token), None).status, 200);
    let unavailable = raw(
        &api,
        "POST",
        LEASES,
        Some(&token),
        Some(&json!({"metadata": {"name": "a"}})),
    );
    assert_eq!(unavailable.status, 503);
    assert_eq!(unavailable.body["reason"], "ServiceUnavailable");
    assert!(
        unavailable.head.contains("retry-after: 1"),
        "{}",
        unavailable.head
    );

    // The kube client retries a 503 on its own (its default retry policy).
    api.fail_next_matching(1, 503, "create", "leases");
    leases(&api)
        .await
        .create(&PostParams::default(), &lease("slot-0"))
        .await
        .expect("created on the retry");
    let creates: Vec<u16> = api
        .requests()
        .iter()
        .filter(|r| r.verb == "create" && r.name.is_none())
        .map(|r| r.status)
        .collect();
    assert_eq!(creates, [503, 503, 201]);
}
