//! A kube-apiserver stand-in for tests: real HTTP/1.1 on 127.0.0.1, JSON only, built from
//! the Kubernetes API documentation (API concepts, Status, ownerReferences and garbage
//! collection, Pod termination, Lease) so kube-rs clients, reflectors and controllers run
//! against the same wire behaviour as in a cluster. There is no kube-apiserver on these
//! machines; this is what the webhook's owner lookup and the agent's Leases are tested
//! against.
//!
//! # What it serves
//! - Types: core `v1` pods, secrets, configmaps, events; `events.k8s.io/v1` events;
//!   `coordination.k8s.io/v1` leases;
//!   `apps/v1` replicasets, deployments, statefulsets; `batch/v1` jobs;
//!   `admissionregistration.k8s.io/v1` mutatingwebhookconfigurations (cluster-scoped).
//!   Paths as the real server's: `/api/v1/namespaces/{ns}/pods/{name}`,
//!   `/apis/{group}/{version}/namespaces/{ns}/{resource}`, cluster-wide lists
//!   (`/apis/apps/v1/replicasets`), the `status` subresource of pods, replicasets,
//!   deployments, statefulsets and jobs (a write to the main resource keeps the old status).
//!   The all-namespaces paths serve list and watch only (other verbs: 405).
//! - Pod updates may change only container images, `activeDeadlineSeconds`, tolerations
//!   and `terminationGracePeriodSeconds` of the spec (422 `Forbidden` cause otherwise, as
//!   the real pod validation; whether tolerations were only added is not checked).
//! - Secrets as stored by the real server: `stringData` folded into base64 `data`, `data`
//!   that is not base64 refused (400), `type` defaulted to `Opaque`, `kubernetes.io/tls`
//!   Secrets needing `tls.crt` and `tls.key` (422). ConfigMaps and Secrets marked
//!   `immutable: true` refuse changes to their data (422).
//! - One global resourceVersion counter (etcd's revision): every write bumps it; objects get
//!   `uid`, `resourceVersion`, `creationTimestamp`, and `generation` for the types that have
//!   one (bumped when anything but metadata and status changes). A write that changes
//!   nothing writes nothing (same rv, no event), as the real server does.
//! - create (201; `generateName`; 409 `AlreadyExists`; 422 `Invalid` for a name that is not
//!   a DNS-1123 subdomain or bad label keys/values, with `details.causes`; 400 for a body of
//!   another kind or apiVersion), get (404 `NotFound`), update (409 `Conflict` on a stale
//!   `metadata.resourceVersion`; none means an unconditional update; 404 when missing),
//!   patch (`application/merge-patch+json`, `application/json-patch+json`, and see below
//!   for strategic merge and server-side apply), delete (with
//!   `preconditions`, `propagationPolicy`, `gracePeriodSeconds`, in the body or the query),
//!   deletecollection. Failures are `Status` objects with apimachinery's `reason`, `code`,
//!   `details` and message (`leases.coordination.k8s.io "x" not found`).
//! - list: typed lists with `metadata.resourceVersion`; `labelSelector` (`=`, `==`, `!=`,
//!   `in`, `notin`, exists, `!`exists, `>`/`<`), `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`, and per type e.g. pods' `spec.nodeName`, `status.phase`);
//!   `limit`/`continue` with an opaque token (400 for a malformed one, 410 `Expired` once
//!   its rv is older than the kept history) and `remainingItemCount`.
//! - watch (`watch=true` or `1`): from `resourceVersion` (events after it; `0` or absent:
//!   synthetic ADDED for the current state first), ADDED/MODIFIED/DELETED with the object;
//!   an object leaving the selectors is DELETED, one entering is ADDED;
//!   `allowWatchBookmarks=true` gives a BOOKMARK at once and then every second
//!   ([`ApiServer::set_bookmark_interval`]); `sendInitialEvents=true` ends the initial
//!   state with a bookmark annotated `k8s.io/initial-events-end`; `timeoutSeconds` ends the
//!   stream; a start older than the kept history (10,000 events by default,
//!   [`ApiServer::set_history_limit`]) gets an `ERROR` event with a 410 `Expired` Status.
//! - Metadata-only: `Accept: application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1`
//!   (lists, watches) and `as=PartialObjectMetadata` (get, watch) answer `meta.k8s.io/v1`
//!   PartialObjectMetadata(List), as kube-rs `Api::list_metadata`/`metadata_watcher` expect.
//! - Deletion and garbage collection: pods on a node (`spec.nodeName` set, not finished)
//!   deleted with a non-zero grace period (the request's, else the pod's
//!   `terminationGracePeriodSeconds`, else 30) get `deletionTimestamp` and
//!   `deletionGracePeriodSeconds` and stay (MODIFIED) until [`ApiServer::finish_termination`]
//!   (the kubelet's part) or a `gracePeriodSeconds: 0` delete; unscheduled or finished pods
//!   go at once, as the real pod strategy decides. Objects with `metadata.finalizers` stay
//!   with a deletionTimestamp until an update empties them. A few milliseconds after an
//!   object is really gone, every object whose ownerReferences all name uids that no longer
//!   exist is deleted too (pods gracefully), cascading; one with some owners left loses the
//!   dangling references. Objects created naming an owner uid that does not exist are
//!   collected the same way ([`ApiServer::set_garbage_collection`] turns this off).
//!   `propagationPolicy: Orphan` (the default for batch/v1 Jobs, as on the real server)
//!   removes the references from dependents instead; `Foreground` keeps the owner (with a
//!   deletionTimestamp and the `foregroundDeletion` finalizer) until its dependents are
//!   gone, then removes it.
//! - Users and RBAC: [`ApiServer::kubeconfig`] gives each user a bearer token; a missing or
//!   unknown token is 401 `Unauthorized`. [`ApiServer::deny`] makes matching requests 403
//!   `Forbidden` with the real authorizer's message. Every request is recorded
//!   ([`ApiServer::requests`]).
//! - Outages: [`ApiServer::stop`] closes the listener and every connection (clients get
//!   connection refused), [`ApiServer::resume`] listens again on the same port;
//!   [`ApiServer::fail_next`] answers the next requests with 500/503/429 `Status` bodies
//!   (`Retry-After: 1` for 429 and 503).
//! - The cache-miss race: [`ApiServer::hold_watch_events`] stops watches from delivering
//!   anything written afterwards (bookmarks stay at the held version) until
//!   [`ApiServer::release_watch_events`], while GET and LIST see the new state: an object
//!   a direct GET finds but a watch-backed cache has not seen yet.
//!
//! # Where it differs from a real API server, on purpose
//! - Plain HTTP (no TLS), JSON only (no protobuf, no `as=Table`: 406), HTTP/1.1.
//! - `application/strategic-merge-patch+json` is served as a JSON merge patch (lists are
//!   replaced, not merged by key). Server-side apply (`application/apply-patch+yaml`,
//!   `fieldManager` required) creates a missing object and otherwise merges the applied
//!   configuration like a merge patch: no field ownership, so no manager conflicts and no
//!   removal of fields a later apply leaves out, no managedFields.
//! - `dryRun` is refused with 400 (so a dry run never writes). No admission, no defaulting
//!   beyond metadata (a POSTed pod's status becomes `{"phase": "Pending"}`, other statuses
//!   `{}`).
//! - A write to the `status` subresource changes the status only (the real pod status
//!   strategy also lets label and annotation changes through).
//! - The GC controller's orphaning is done at once, inside the DELETE; a foreground
//!   deletion waits for every dependent, whatever its `blockOwnerDeletion`.
//! - Later pages of a chunked list are read from the current state (the token's rv is
//!   reported, but objects changed meanwhile show their new state); a list ignores
//!   `resourceVersion`/`resourceVersionMatch` and always serves the latest state.
//! - Namespaces are not objects: any namespace name is accepted and none is created.
//! - A watch started from `0` while events are held sees the current state.
//! - Tokens are fixed per user name ([`ApiServer::token`]); there is no authorizer besides
//!   the denials a test sets (everything else is allowed).
//!
//! # Use
//! `ApiServer::start().await`, then `seed` objects, point a kube client at
//! `kubeconfig("system:serviceaccount:NS:SA")`, and assert on the client's results, on
//! `get`/`list`, and on `requests()`. The `it::apiserver` tests show each feature in use.
//!
//! # Threads
//! The server runs on its own thread with its own tokio runtime, so the methods here are
//! plain blocking calls, usable from sync tests ([`ApiServer::start_blocking`]) and from
//! `#[tokio::test]`s alike; each returns once the change is visible to clients.

mod access;
mod cluster;
mod http;
mod object;
mod resources;
mod route;
mod selectors;
mod status;
mod store;
mod validate;
mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use access::ApiRequest;

use cluster::Cluster;
use store::{DeleteOptions, Origin};

/// Events a watch can replay by default before a start is `Expired`.
pub const DEFAULT_HISTORY: usize = 10_000;

/// How often a watch that allows bookmarks gets one by default (real servers: about a
/// minute; short here so tests are quick).
pub const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// What the test thread asks of the server thread.
enum Command {
    Listen(std::sync::mpsc::Sender<std::io::Result<SocketAddr>>),
    Stop(std::sync::mpsc::Sender<()>),
}

/// A running stand-in kube-apiserver on 127.0.0.1; stops on drop.
pub struct ApiServer {
    cluster: Arc<Cluster>,
    addr: SocketAddr,
    commands: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// An empty cluster, listening on a free port.
    pub async fn start() -> ApiServer {
        Self::start_blocking()
    }

    /// [`ApiServer::start`] for tests without a runtime.
    pub fn start_blocking() -> ApiServer {
        let cluster = Arc::new(Cluster::new(DEFAULT_HISTORY, DEFAULT_BOOKMARK_INTERVAL));
        let (commands, receiver) = mpsc::unbounded_channel();
        let served = cluster.clone();
        let thread = std::thread::Builder::new()
            .name("apiserver".to_string())
            .spawn(move || serve(served, receiver))
            .expect("spawn the apiserver thread");
        let mut server = ApiServer {
            cluster,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            commands: Some(commands),
            thread: Some(thread),
            dir: tempfile::tempdir().expect("temp dir for kubeconfigs"),
        };
        server.addr = server.listen();
        server
    }

    fn command(&self, command: Command) {
        self.commands
            .as_ref()
            .expect("commands stay open until drop")
            .send(command)
            .unwrap_or_else(|_| panic!("the apiserver thread has stopped"));
    }

    fn listen(&self) -> SocketAddr {
        let (reply, answer) = std::sync::mpsc::channel();
        self.command(Command::Listen(reply));
        answer
            .recv()
            .expect("the apiserver thread answers")
            .unwrap_or_else(|e| panic!("the apiserver cannot listen on {}: {e}", self.addr))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bearer token that authenticates as `user` (for raw HTTP requests).
    pub fn token(&self, user: &str) -> String {
        self.cluster.access().register(user)
    }

    /// A kubeconfig file with this server's URL and a bearer token for `user`
    /// (namespace `default`).
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        let token = self.token(user);
        let file: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = self.dir.path().join(format!("{file}.kubeconfig"));
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {url}\n\
             users:\n- name: \"{user}\"\n  user:\n    token: {token}\ncontexts:\n- name: standin\n  context:\n    \
             cluster: standin\n    user: \"{user}\"\n    namespace: default\ncurrent-context: standin\n",
            url = self.url(),
        );
        std::fs::write(&path, kubeconfig).expect("write kubeconfig");
        path
    }

    /// Seeds many objects under one lock, without returning them: the fast way to fill
    /// a cluster with thousands of objects. Panics on what the server would refuse.
    pub fn seed_all(&self, objects: impl IntoIterator<Item = Value>) {
        self.cluster.write(|s| {
            for object in objects {
                let resource = resource_of(&object);
                let namespace = namespace_of(resource, &object);
                s.create(resource, namespace.as_deref(), object, Origin::Seed)
                    .unwrap_or_else(|e| panic!("cannot seed: {}", e.message));
            }
        });
    }

    /// Stores `object` as if a client had created it (uid, resourceVersion, timestamps
    /// assigned; a uid, creationTimestamp or status it carries is kept) and returns it as
    /// stored. Watches see it as any write. Panics on what the server would refuse.
    pub fn seed(&self, object: Value) -> Value {
        let resource = resource_of(&object);
        let namespace = namespace_of(resource, &object);
        self.cluster
            .write(|s| s.create(resource, namespace.as_deref(), object, Origin::Seed))
            .unwrap_or_else(|e| panic!("cannot seed: {}", e.message))
            .to_value()
    }

    /// [`ApiServer::seed`] for a k8s-openapi object.
    pub fn seed_typed<K>(&self, object: &K) -> K
    where
        K: k8s_openapi::Resource + Serialize + DeserializeOwned,
    {
        let mut value = serde_json::to_value(object).expect("k8s objects serialize");
        value["apiVersion"] = Value::String(K::API_VERSION.to_string());
        value["kind"] = Value::String(K::KIND.to_string());
        serde_json::from_value(self.seed(value)).expect("stored objects deserialize")
    }

    /// Replaces a stored object, status included, in one write (as a client PUT of the
    /// object and then of its status would, with one event); its resourceVersion, if set,
    /// must be current. Returns it as stored. Panics on what the server would refuse.
    pub fn update(&self, object: Value) -> Value {
        let resource = resource_of(&object);
        let key = (
            resource,
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        self.cluster
            .write(|s| s.update(&key, object, store::Part::Whole))
            .unwrap_or_else(|e| panic!("cannot update: {}", e.message))
            .to_value()
    }

    /// The object as stored now.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let key = key(api_version, kind, namespace, name);
        self.cluster.read().get(&key).map(|o| o.to_value())
    }

    /// Every stored object of the type (in `namespace` if given), in name order.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let resource = resources::by_kind(api_version, kind)
            .unwrap_or_else(|| panic!("the stand-in does not serve {api_version} {kind}"));
        let (items, _) = self
            .cluster
            .read()
            .list(resource, namespace, None, None, |_| true);
        items.iter().map(|o| o.to_value()).collect()
    }

    /// Deletes as a client DELETE with default options (pods on a node terminate
    /// gracefully; dependents are garbage-collected). Does nothing if it does not exist.
    pub fn delete(&self, api_version: &str, kind: &str, namespace: Option<&str>, name: &str) {
        let key = key(api_version, kind, namespace, name);
        // NotFound is the only failure of a delete without preconditions.
        let _ = self
            .cluster
            .write(|s| s.delete(&key, &DeleteOptions::default()));
    }

    /// The kubelet's part of a pod deletion: the terminating pod is removed (DELETED; its
    /// dependents are then garbage-collected). Panics if the pod is not terminating.
    pub fn finish_termination(&self, namespace: &str, pod: &str) {
        let key = key("v1", "Pod", Some(namespace), pod);
        self.cluster
            .write(|s| s.finish_termination(&key))
            .unwrap_or_else(|why| panic!("cannot finish termination: {why}"));
    }

    /// Denies `verb` (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or `*`) on `resource` (plural, or `*`) in `group` ("" for core,
    /// or `*`) to `user` (`None`: everyone): 403 `Forbidden`.
    pub fn deny(&self, user: Option<&str>, verb: &str, group: &str, resource: &str) {
        self.cluster.access().deny(user, verb, group, resource);
    }

    /// Removes every denial.
    pub fn allow_all(&self) {
        self.cluster.access().allow_all();
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<ApiRequest> {
        self.cluster.access().requests()
    }

    /// Whether a watch of `resource` (plural) has started; a client's cache has listed
    /// and is watching once this holds.
    pub fn watching(&self, resource: &str) -> bool {
        self.cluster
            .access()
            .requests()
            .iter()
            .any(|r| r.verb == "watch" && r.resource == resource && r.status == 200)
    }

    /// How many requests were served so far (to look only at later ones).
    pub fn request_count(&self) -> usize {
        self.cluster.access().request_count()
    }

    /// Answers the next `n` requests with `status` (500, 503, 429...) and a `Status` body.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.cluster.access().fail_next(n, status, None, None);
    }

    /// [`ApiServer::fail_next`] for requests with this verb and resource plural only.
    pub fn fail_next_matching(&self, n: usize, status: u16, verb: &str, resource: &str) {
        self.cluster
            .access()
            .fail_next(n, status, Some(verb), Some(resource));
    }

    /// From now on watches deliver no event (and bookmark no later version) until
    /// [`ApiServer::release_watch_events`]; GET and LIST still see every write.
    pub fn hold_watch_events(&self) {
        self.cluster.write(store::Store::hold_watches);
    }

    /// Delivers the held watch events.
    pub fn release_watch_events(&self) {
        self.cluster.write(store::Store::release_watches);
    }

    /// How many events watches can replay; older starts get 410 `Expired`.
    pub fn set_history_limit(&self, events: usize) {
        self.cluster.write(|s| s.set_history_limit(events));
    }

    /// How often watches that allow bookmarks get one.
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self
            .cluster
            .bookmark_interval
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = interval;
    }

    /// Turns the garbage collector on or off (on at start).
    pub fn set_garbage_collection(&self, enabled: bool) {
        self.cluster.write(|s| s.gc_enabled = enabled);
    }

    /// The cluster's current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.cluster.read().resource_version()
    }

    /// Closes the listener and every open connection: clients get connection refused
    /// until [`ApiServer::resume`]. The stored state is kept.
    pub fn stop(&self) {
        let (reply, done) = std::sync::mpsc::channel();
        self.command(Command::Stop(reply));
        done.recv().expect("the apiserver thread answers");
    }

    /// Listens again on the same port.
    pub fn resume(&self) {
        let addr = self.listen();
        assert_eq!(addr, self.addr, "the apiserver came back on another port");
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn resource_of(object: &Value) -> resources::ResourceId {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    resources::by_kind(api_version, kind).unwrap_or_else(|| {
        panic!("the stand-in does not serve apiVersion {api_version:?} kind {kind:?}")
    })
}

/// The namespace a seeded object goes to: its own, else `default`; none for
/// cluster-scoped types.
fn namespace_of(resource: resources::ResourceId, object: &Value) -> Option<String> {
    resources::RESOURCES[resource].namespaced.then(|| {
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    })
}

fn key(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> object::Key {
    let resource = resources::by_kind(api_version, kind)
        .unwrap_or_else(|| panic!("the stand-in does not serve {api_version} {kind}"));
    (
        resource,
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

/// The server thread: runs the garbage collector and, while listening, the HTTP server;
/// ends when the [`ApiServer`] is dropped.
fn serve(cluster: Arc<Cluster>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the apiserver");
    runtime.block_on(async move {
        let gc = cluster.clone();
        tokio::spawn(async move { gc.collect_garbage().await });
        let mut port = 0;
        let mut listening: Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )> = None;
        while let Some(command) = commands.recv().await {
            match command {
                Command::Listen(reply) => {
                    if listening.is_some() {
                        let _ = reply.send(Ok(SocketAddr::from(([127, 0, 0, 1], port))));
                        continue;
                    }
                    match TcpListener::bind(("127.0.0.1", port)).await {
                        Ok(listener) => {
                            let addr = listener.local_addr();
                            if let Ok(addr) = &addr {
                                port = addr.port();
                            }
                            let (stop, stopped) = tokio::sync::oneshot::channel();
                            let task = tokio::spawn(accept(listener, cluster.clone(), stopped));
                            listening = Some((stop, task));
                            let _ = reply.send(addr);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Stop(reply) => {
                    if let Some((stop, task)) = listening.take() {
                        let _ = stop.send(());
                        let _ = task.await;
                    }
                    let _ = reply.send(());
                }
            }
        }
    });
}

/// Accepts connections until `stopped`, then closes the listener and every connection.
async fn accept(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let cluster = cluster.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let cluster = cluster.clone();
                        async move { Ok::<_, Infallible>(http::handle(cluster, request).await) }
                    });
                    // A connection ends when the client goes away; nothing to report.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut stopped => break,
        }
    }
    drop(listener);
    connections.shutdown().await;
}
