//! A stand-in for the part of kube-apiserver the webhook reads: `apps/v1` ReplicaSets and
//! Deployments, listed, watched and fetched one by one, in the exact JSON the real server
//! sends (typed lists with a resourceVersion, newline-delimited watch events with a
//! BOOKMARK, `Status` objects for 404s). There is no kube-apiserver on these machines; this
//! lets the webhook's real kube client, reflectors and GET fallback run against the wire.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const RESOURCE_VERSION: &str = "1000";

#[derive(Default)]
struct State {
    /// Objects the list/watch (and so the webhook's cache) sees.
    listed: Vec<Value>,
    /// Objects only a direct GET finds: created after the cache's last list.
    unlisted: Vec<Value>,
    /// Every request as `METHOD path?query`, for assertions.
    requests: Vec<String>,
}

/// A running stand-in apiserver on 127.0.0.1, with a kubeconfig pointing at it.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl FakeApiServer {
    /// Starts the server with the objects its lists and watches return.
    pub async fn start(replica_sets: &[ReplicaSet], deployments: &[Deployment]) -> Self {
        let mut state = State::default();
        state
            .listed
            .extend(replica_sets.iter().map(|rs| typed(rs, "ReplicaSet")));
        state
            .listed
            .extend(deployments.iter().map(|d| typed(d, "Deployment")));
        let state = Arc::new(Mutex::new(state));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        let served = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = served.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req)) }
                    });
                    // Connections end when the client (or the test) goes away.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n"
        );
        std::fs::write(dir.path().join("kubeconfig"), kubeconfig).expect("write kubeconfig");
        Self {
            addr,
            state,
            task,
            dir,
        }
    }

    /// A kubeconfig file that points a kube client at this server.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a ReplicaSet that a direct GET finds but the caches never saw (it was created
    /// after their last list: the race SPEC 1.2 names).
    pub fn add_unlisted_replica_set(&self, replica_set: &ReplicaSet) {
        self.state
            .lock()
            .expect("state lock")
            .unlisted
            .push(typed(replica_set, "ReplicaSet"));
    }

    /// The requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.state.lock().expect("state lock").requests.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn typed<T: serde::Serialize>(object: &T, kind: &str) -> Value {
    let mut value = serde_json::to_value(object).expect("k8s objects serialize");
    value["apiVersion"] = json!("apps/v1");
    value["kind"] = json!(kind);
    value["metadata"]["resourceVersion"] = json!(RESOURCE_VERSION);
    value
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("valid response")
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    full(
        StatusCode::NOT_FOUND,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{kind}.apps \"{name}\" not found"), "reason": "NotFound",
            "details": {"name": name, "group": "apps", "kind": kind}, "code": 404
        }),
    )
}

fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut state = state.lock().expect("state lock");
    state
        .requests
        .push(format!("{} {path}?{query}", req.method()));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (kind, namespace, name) = match segments.as_slice() {
        ["apis", "apps", "v1", resource] => (resource_kind(resource), None, None),
        ["apis", "apps", "v1", "namespaces", ns, resource] => {
            (resource_kind(resource), Some(*ns), None)
        }
        ["apis", "apps", "v1", "namespaces", ns, resource, name] => {
            (resource_kind(resource), Some(*ns), Some(*name))
        }
        _ => (None, None, None),
    };
    let Some(kind) = kind else {
        return not_found("Unknown", &path);
    };
    let matches = |o: &&Value| {
        o["kind"] == kind && namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns)
    };
    if let Some(name) = name {
        let found = state
            .listed
            .iter()
            .chain(state.unlisted.iter())
            .filter(matches)
            .find(|o| o["metadata"]["name"] == name)
            .cloned();
        return match found {
            Some(object) => full(StatusCode::OK, &object),
            None => not_found(kind, name),
        };
    }
    let items: Vec<Value> = state.listed.iter().filter(matches).cloned().collect();
    if query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1")
    {
        // The list already gave every object; the watch confirms the version with a
        // bookmark and then stays open, as a quiet cluster's watch does.
        let bookmark = json!({
            "type": "BOOKMARK",
            "object": {"kind": kind, "apiVersion": "apps/v1", "metadata": {"resourceVersion": RESOURCE_VERSION}}
        });
        let chunk = Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{bookmark}\n"))));
        let events = stream::once(async move { chunk }).chain(stream::pending());
        return Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed(StreamBody::new(events)))
            .expect("valid response");
    }
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut o| {
            // Items of a typed list carry no apiVersion/kind on the wire.
            if let Some(map) = o.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            o
        })
        .collect();
    full(
        StatusCode::OK,
        &json!({
            "kind": format!("{kind}List"), "apiVersion": "apps/v1",
            "metadata": {"resourceVersion": RESOURCE_VERSION}, "items": items
        }),
    )
}

fn resource_kind(resource: &str) -> Option<&'static str> {
    match resource {
        "replicasets" => Some("ReplicaSet"),
        "deployments" => Some("Deployment"),
        _ => None,
    }
}
