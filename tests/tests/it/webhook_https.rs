//! The webhook server over real TLS: `wave_webhook::run` in-process on 127.0.0.1:0, a client
//! that trusts only the test CA, patches applied with json-patch and read back as k8s-openapi
//! Pods; certificate and config reloads; HTTP-level bad input; metrics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{
    TEST_ID, captured_review, deployment, env_value, owner_reference, patched_pod, replica_set,
};
use bytes::Bytes;
use futures::channel::oneshot;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use wave_tests::apiserver::{ApiRequest, ApiServer};
use wave_tests::tls::{
    ClientOptions, HttpsClient, SERVER_CERT_NOT_AFTER, TestCa, TlsFiles, replace_file,
};
use wave_tests::wait_for;
use wave_webhook::owners::KubeAccess;
use wave_webhook::reload::TlsFiles as ServedFiles;
use wave_webhook::{Limits, ServeError, ServeOptions, Tls};

const NAMESPACE: &str = "eks-sample-app";
const REPLICA_SET: &str = "eks-sample-linux-deployment-6d4b9c7f58";
const REPLICA_SET_UID: &str = "8e1f2a3b-4c5d-4e6f-9a0b-1c2d3e4f5a6b";
const DEPLOYMENT: &str = "eks-sample-linux-deployment";
const DEPLOYMENT_UID: &str = "0d9c8b7a-6f5e-4d3c-2b1a-098765432100";

/// The fixture with `waveloadtest.io/total-players` set, so no owner lookup is needed.
fn fixture_with_total_players() -> Value {
    let mut review = captured_review();
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"waveloadtest.io/total-players": "480000"});
    review
}

fn body(review: &Value) -> Vec<u8> {
    serde_json::to_vec(review).expect("review serializes")
}

/// A webhook served in-process; stopped (gracefully) on drop.
struct Webhook {
    https: SocketAddr,
    metrics: SocketAddr,
    tls: TlsFiles,
    client: HttpsClient,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Webhook {
    async fn start(config: Option<PathBuf>, kube: KubeAccess) -> Self {
        Self::start_with(TlsFiles::new(), config, kube).await
    }

    async fn start_with(tls: TlsFiles, config: Option<PathBuf>, kube: KubeAccess) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind https");
        let metrics_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        let https = listener.local_addr().expect("https address");
        let metrics = metrics_listener.local_addr().expect("metrics address");
        let options = ServeOptions {
            config,
            tls: Tls::Files(ServedFiles {
                cert: tls.cert_path(),
                key: tls.key_path(),
            }),
            kube,
            drain: Duration::ZERO,
            limits: Limits::default(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(wave_webhook::run(
            listener,
            metrics_listener,
            options,
            async {
                let _ = stopped.await;
            },
        ));
        let client = HttpsClient::trusting(&tls.ca);
        let webhook = Webhook {
            https,
            metrics,
            tls,
            client,
            stop: Some(stop),
            task: Some(task),
        };
        webhook.wait_ready().await;
        webhook
    }

    async fn wait_ready(&self) {
        let readyz = self.metrics_url("/readyz");
        wait_for(
            "the webhook to be ready",
            Duration::from_secs(20),
            || async { plain_get(&readyz).await.map(|r| r.0) == Ok(StatusCode::OK) },
        )
        .await;
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.https.port())
    }

    fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics)
    }

    /// Posts `review` to /mutate and returns the AdmissionReview response object.
    async fn admit(&self, review: &Value) -> Value {
        let reply = self
            .client
            .post(&self.url("/mutate"), body(review))
            .await
            .expect("webhook answers");
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        let answer = reply.json();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        answer["response"].clone()
    }

    async fn metrics_text(&self) -> String {
        let (status, headers, body) = plain_get(&self.metrics_url("/metrics"))
            .await
            .expect("metrics answer");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        String::from_utf8(body.to_vec()).expect("metrics are UTF-8")
    }

    /// Polls `/metrics` until `series` reads `value` (20 s at most, then fails with `what`).
    async fn wait_for_sample(&self, series: &str, value: f64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.metrics_text().await;
            if sample(&text, series) == Some(value) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("webhook stops within 30 s")
            .expect("webhook task did not panic")
            .expect("webhook ran without error");
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

/// `GET url` over plain HTTP.
async fn plain_get(url: &str) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .get(url.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| format!("{e}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| format!("{e}"))?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

fn env_field(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.clone())
}

/// Everything docs/webhook-reference.md promises on the fixture's single-container pod.
fn assert_test_machine(pod: &Pod, total_players: &str) {
    let spec = pod.spec.as_ref().expect("spec");
    let container = &spec.containers[0];
    assert_eq!(env_value(container, "TEST_ID").as_deref(), Some(TEST_ID));
    assert_eq!(
        env_value(container, "TOTAL_PLAYERS").as_deref(),
        Some(total_players)
    );
    assert_eq!(
        env_value(container, "PLAYERS_PER_AGENT").as_deref(),
        Some("100")
    );
    assert_eq!(
        env_value(container, "WAVE_TEST_PART").as_deref(),
        Some("p1")
    );
    assert_eq!(env_value(container, "WAVE_AGENTS").as_deref(), Some("10"));
    assert_eq!(
        env_value(container, "WAVE_CONTAINER_INDEX").as_deref(),
        Some("0")
    );
    assert_eq!(
        env_value(container, "WAVE_MACHINE_TYPE").as_deref(),
        Some("r5.xlarge")
    );
    assert_eq!(
        env_value(container, "WAVE_SCRIPT_URL").as_deref(),
        Some(format!("s3://wave-loadtest/scripts/{TEST_ID}/").as_str())
    );
    assert_eq!(
        env_value(container, "WAVE_RESULTS_URL").as_deref(),
        Some(format!("s3://wave-loadtest/results/{TEST_ID}/").as_str())
    );
    assert_eq!(
        env_value(container, "WAVE_METRICS_PORT").as_deref(),
        Some("9102")
    );
    assert_eq!(
        env_field(container, "POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        env_field(container, "POD_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    assert_eq!(
        env_field(container, "POD_UID").as_deref(),
        Some("metadata.uid")
    );
    assert_eq!(
        env_field(container, "NODE_NAME").as_deref(),
        Some("spec.nodeName")
    );

    let resources = container.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    assert!(requests.contains_key("cpu") && requests.contains_key("memory"));
    assert_eq!(
        resources.limits.as_ref(),
        Some(requests),
        "Guaranteed QoS: limits = requests"
    );

    let port = container
        .ports
        .as_ref()
        .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("wave-metrics")))
        .expect("wave-metrics port");
    assert_eq!(port.container_port, 9102);

    let selector = spec.node_selector.as_ref().expect("nodeSelector");
    assert_eq!(selector["kubernetes.io/os"], "linux");
    assert_eq!(selector["node.kubernetes.io/instance-type"], "r5.xlarge");

    let annotations = pod.metadata.annotations.as_ref().expect("annotations");
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9102");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Supervisor in `inject` mode: init container, shared volumes, wrapped command.
    let init = spec.init_containers.as_ref().expect("init containers");
    assert!(init.iter().any(|c| c.name == "wave-install"), "{init:?}");
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(
        volumes.contains(&"wave-bin") && volumes.contains(&"wave-work"),
        "{volumes:?}"
    );
    // The fixture's container has no command of its own: the supervisor runs the script.
    let command = container.command.as_ref().expect("wrapped command");
    assert_eq!(command, &["/wave/bin/wave-agent", "run"]);
    let mounts: Vec<(&str, &str)> = container
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert!(mounts.contains(&("wave-bin", "/wave/bin")), "{mounts:?}");
    assert!(mounts.contains(&("wave-work", "/wave/work")), "{mounts:?}");
}

/// The fixture pod's ReplicaSet (1 replica of its own, as during a rollout) and Deployment
/// (480 replicas, the seed's test).
/// The seed's owners, labelled `testId` as in the seed (a ReplicaSet carries its pod
/// template's labels), which is what the webhook's owner watches select on.
fn seed_owners() -> (ReplicaSet, Deployment) {
    let owner = owner_reference("Deployment", DEPLOYMENT, DEPLOYMENT_UID, Some(true));
    let mut replica_set = replica_set(
        NAMESPACE,
        REPLICA_SET,
        REPLICA_SET_UID,
        Some(1),
        Some(owner),
    );
    let mut deployment = deployment(NAMESPACE, DEPLOYMENT, DEPLOYMENT_UID, Some(480));
    let labels =
        || std::collections::BTreeMap::from([("testId".to_string(), format!("{TEST_ID}--p1"))]);
    replica_set.metadata.labels = Some(labels());
    deployment.metadata.labels = Some(labels());
    (replica_set, deployment)
}

/// The service account the webhook runs as (manifests/base/rbac.yaml).
const WEBHOOK_USER: &str = "system:serviceaccount:wave-system:wave-webhook";

/// A cluster holding the fixture's ReplicaSet and Deployment.
async fn seeded_api(replica_set: &ReplicaSet, deployment: &Deployment) -> ApiServer {
    let api = ApiServer::start().await;
    api.seed_typed(deployment);
    api.seed_typed(replica_set);
    api
}

#[tokio::test]
async fn captured_review_gets_total_players_from_the_owning_deployment_over_https() {
    let (replica_set, deployment) = seed_owners();
    let api = seeded_api(&replica_set, &deployment).await;
    let webhook = Webhook::start(None, KubeAccess::Kubeconfig(api.kubeconfig(WEBHOOK_USER))).await;
    let review = captured_review();
    let response = webhook.admit(&review).await;
    assert_test_machine(&patched_pod(&review, &response), "480000");
    webhook.stop().await;
}

#[tokio::test]
async fn a_replica_set_the_cache_has_not_seen_yet_is_fetched_directly() {
    let (replica_set, deployment) = seed_owners();
    let api = ApiServer::start().await;
    api.seed_typed(&deployment);
    let webhook = Webhook::start(None, KubeAccess::Kubeconfig(api.kubeconfig(WEBHOOK_USER))).await;
    wait_for("both watches", Duration::from_secs(20), || async {
        api.watching("replicasets") && api.watching("deployments")
    })
    .await;
    // Created after the caches listed, and its watch event not delivered yet.
    api.hold_watch_events();
    api.seed_typed(&replica_set);
    let review = captured_review();
    let response = webhook.admit(&review).await;
    assert_test_machine(&patched_pod(&review, &response), "480000");
    let fetched = |r: &ApiRequest| {
        r.verb == "get"
            && r.resource == "replicasets"
            && r.namespace.as_deref() == Some(NAMESPACE)
            && r.name.as_deref() == Some(REPLICA_SET)
            && r.status == 200
    };
    assert!(
        api.requests().iter().any(fetched),
        "no direct GET of the ReplicaSet in {:?}",
        api.requests()
            .iter()
            .map(ApiRequest::line)
            .collect::<Vec<_>>()
    );
    api.release_watch_events();
    webhook.stop().await;
}

#[tokio::test]
async fn without_api_access_only_pods_that_need_the_lookup_are_denied() {
    let webhook = Webhook::start(
        None,
        KubeAccess::Disabled("no API server in this test".into()),
    )
    .await;
    let denied = webhook.admit(&captured_review()).await;
    assert_eq!(denied["allowed"], false);
    assert_eq!(denied["status"]["code"], 400);
    let message = denied["status"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("waveloadtest.io/total-players:"),
        "{message}"
    );
    assert!(message.contains("no API server in this test"), "{message}");

    let review = fixture_with_total_players();
    let response = webhook.admit(&review).await;
    assert_test_machine(&patched_pod(&review, &response), "480000");
    webhook.stop().await;
}

#[tokio::test]
async fn http_level_bad_input_gets_a_clear_answer_every_time() {
    let webhook = Webhook::start(None, KubeAccess::Disabled("none".into())).await;
    let client = &webhook.client;

    let not_json = client
        .post(&webhook.url("/mutate"), "{not json")
        .await
        .expect("answer");
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_json.headers["content-type"], "application/json");
    let review = not_json.json();
    assert_eq!(review["response"]["allowed"], false);
    assert!(
        review["response"]["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not an AdmissionReview")),
        "{review}"
    );

    let not_review = client
        .post(
            &webhook.url("/mutate"),
            r#"{"apiVersion": "v1", "kind": "Pod"}"#,
        )
        .await
        .expect("answer");
    assert_eq!(not_review.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_review.json()["response"]["allowed"], false);

    let huge = vec![b' '; 4 * 1024 * 1024];
    let too_large = client
        .post(&webhook.url("/mutate"), huge)
        .await
        .expect("answer");
    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(too_large.json()["code"], 413);

    let wrong_method = client.get(&webhook.url("/mutate")).await.expect("answer");
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers["allow"], "POST");
    assert_eq!(wrong_method.json()["code"], 405);

    let put = client
        .request(
            Method::PUT,
            &webhook.url("/mutate"),
            body(&captured_review()),
        )
        .await
        .expect("answer");
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);

    let wrong_path = client
        .post(&webhook.url("/validate"), body(&captured_review()))
        .await
        .expect("answer");
    assert_eq!(wrong_path.status, StatusCode::NOT_FOUND);
    assert_eq!(wrong_path.json()["code"], 404);

    for probe in ["/healthz", "/readyz"] {
        let reply = client.get(&webhook.url(probe)).await.expect("answer");
        assert_eq!(reply.status, StatusCode::OK, "{probe}");
    }

    // After all of that the same connection pool still serves admissions.
    let review = fixture_with_total_players();
    let response = webhook.admit(&review).await;
    assert_test_machine(&patched_pod(&review, &response), "480000");
    webhook.stop().await;
}

/// The value of the sample line starting with `series ` in an OpenMetrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_count_admissions_by_outcome_and_show_the_certificate_expiry() {
    let webhook = Webhook::start(None, KubeAccess::Disabled("none".into())).await;
    let before = webhook.metrics_text().await;
    for outcome in ["mutated", "skipped", "denied", "error"] {
        assert_eq!(
            sample(
                &before,
                &format!("wave_webhook_admissions_total{{outcome=\"{outcome}\"}}")
            ),
            Some(0.0),
            "{before}"
        );
    }
    webhook.admit(&fixture_with_total_players()).await;
    webhook.admit(&fixture_with_total_players()).await;
    webhook.admit(&captured_review()).await;
    let mut unlabelled = captured_review();
    unlabelled["request"]["object"]["metadata"]["labels"] = json!({});
    webhook.admit(&unlabelled).await;
    let _ = webhook
        .client
        .post(&webhook.url("/mutate"), "nope")
        .await
        .expect("answer");

    let text = webhook.metrics_text().await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    let count = |outcome: &str| {
        sample(
            &text,
            &format!("wave_webhook_admissions_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("mutated"), Some(2.0), "{text}");
    assert_eq!(count("denied"), Some(1.0), "{text}");
    assert_eq!(count("skipped"), Some(1.0), "{text}");
    assert_eq!(count("error"), Some(1.0), "{text}");
    assert!(
        text.contains("# TYPE wave_webhook_admission_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "wave_webhook_admission_duration_seconds_count"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "wave_webhook_cert_expiry_timestamp_seconds"),
        Some(SERVER_CERT_NOT_AFTER as f64),
        "{text}"
    );
    webhook.stop().await;
}

#[tokio::test]
async fn tls_1_2_and_tls_1_3_clients_are_both_served() {
    let webhook = Webhook::start(None, KubeAccess::Disabled("none".into())).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let client = HttpsClient::with_options(&ClientOptions {
            trust: &[&webhook.tls.ca],
            versions: &[version],
            keep_alive: true,
        });
        let reply = client
            .post(&webhook.url("/mutate"), body(&fixture_with_total_players()))
            .await
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(reply.status, StatusCode::OK, "{version:?}");
    }
    webhook.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_serves_concurrent_admissions_on_one_connection() {
    let webhook = Webhook::start(None, KubeAccess::Disabled("none".into())).await;
    let client = Arc::new(HttpsClient::http2_trusting(&webhook.tls.ca));
    let review = fixture_with_total_players();
    let posts: Vec<_> = (0..20)
        .map(|_| {
            let (client, url, body) = (client.clone(), webhook.url("/mutate"), body(&review));
            tokio::spawn(async move { client.post(&url, body).await })
        })
        .collect();
    for post in posts {
        let reply = post.await.expect("task").expect("answered over HTTP/2");
        assert_eq!(reply.version, http::Version::HTTP_2);
        assert_eq!(reply.status, StatusCode::OK);
        let pod = patched_pod(&review, &reply.json()["response"]);
        assert_test_machine(&pod, "480000");
    }
    let readyz = client.get(&webhook.url("/readyz")).await.expect("readyz");
    assert_eq!(
        (readyz.version, readyz.status),
        (http::Version::HTTP_2, StatusCode::OK)
    );
    // HTTP/1.1 clients are still served on the same port.
    let http1 = webhook
        .client
        .post(&webhook.url("/mutate"), body(&review))
        .await
        .expect("answered over HTTP/1.1");
    assert_eq!(
        (http1.version, http1.status),
        (http::Version::HTTP_11, StatusCode::OK)
    );
    webhook.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_serving_ca_is_refused() {
    let webhook = Webhook::start(None, KubeAccess::Disabled("none".into())).await;
    let stranger = TestCa::new("some other CA");
    let client = HttpsClient::trusting(&stranger);
    let result = client.get(&webhook.url("/healthz")).await;
    assert!(
        result.is_err(),
        "a certificate from an untrusted CA was accepted"
    );
    webhook.stop().await;
}

/// Posts reviews on new connections until `stop`, counting answers and failures.
fn keep_posting(
    webhook: &Webhook,
    client: Arc<HttpsClient>,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, JoinHandle<Vec<String>>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let url = webhook.url("/mutate");
    let review = body(&fixture_with_total_players());
    let task = tokio::spawn({
        let (ok, failed) = (ok.clone(), failed.clone());
        async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match client.post(&url, review.clone()).await {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(reply) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("status {}", reply.status));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.push(e);
                    }
                }
            }
            errors
        }
    });
    (ok, failed, task)
}

#[tokio::test]
async fn replaced_certificate_files_are_served_to_new_connections_without_a_failed_request() {
    let webhook = Webhook::start(None, KubeAccess::Disabled("none".into())).await;
    let new_ca = TestCa::new("renewed CA");
    let new_cert = new_ca.issue_server_cert();
    let client = Arc::new(HttpsClient::with_options(&ClientOptions {
        trust: &[&webhook.tls.ca, &new_ca],
        versions: rustls::ALL_VERSIONS,
        keep_alive: false,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed, task) = keep_posting(&webhook, client.clone(), stop.clone());
    wait_for(
        "requests with the first certificate",
        Duration::from_secs(20),
        || async { ok.load(Ordering::SeqCst) >= 20 },
    )
    .await;
    assert_eq!(
        client.last_server_cert().as_ref(),
        Some(&webhook.tls.server.der)
    );

    webhook.tls.write(&new_cert);
    wait_for(
        "the renewed certificate",
        Duration::from_secs(20),
        || async { client.last_server_cert().as_ref() == Some(&new_cert.der) },
    )
    .await;
    let after_swap = ok.load(Ordering::SeqCst);
    wait_for(
        "requests with the renewed certificate",
        Duration::from_secs(20),
        || async { ok.load(Ordering::SeqCst) >= after_swap + 20 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let errors = task.await.expect("poster task");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests: {errors:?}"
    );
    assert_eq!(client.last_server_cert().as_ref(), Some(&new_cert.der));
    let text = webhook.metrics_text().await;
    assert_eq!(
        sample(
            &text,
            "wave_webhook_reloads_total{what=\"tls\",result=\"success\"}"
        ),
        Some(2.0),
        "{text}"
    );
    webhook.stop().await;
}

#[tokio::test]
async fn a_certificate_without_its_matching_key_is_not_taken_until_the_key_arrives() {
    let webhook = Webhook::start(None, KubeAccess::Disabled("none".into())).await;
    let new_ca = TestCa::new("renewed CA");
    let new_cert = new_ca.issue_server_cert();
    let client = HttpsClient::with_options(&ClientOptions {
        trust: &[&webhook.tls.ca, &new_ca],
        versions: rustls::ALL_VERSIONS,
        keep_alive: false,
    });
    replace_file(&webhook.tls.cert_path(), new_cert.cert_pem.as_bytes());
    webhook
        .wait_for_sample(
            "wave_webhook_reloads_total{what=\"tls\",result=\"failure\"}",
            1.0,
            "mismatched pair never noticed",
        )
        .await;
    let reply = client
        .get(&webhook.url("/healthz"))
        .await
        .expect("still served");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        client.last_server_cert().as_ref(),
        Some(&webhook.tls.server.der)
    );

    replace_file(&webhook.tls.key_path(), new_cert.key_pem.as_bytes());
    wait_for(
        "the completed pair to be served",
        Duration::from_secs(20),
        || async {
            client.get(&webhook.url("/healthz")).await.expect("served");
            client.last_server_cert().as_ref() == Some(&new_cert.der)
        },
    )
    .await;
    webhook.stop().await;
}

/// Lays out `dir` as the kubelet does for a Secret volume: the files are symlinks through
/// `..data`, which points at a timestamped directory.
fn write_secret_volume(dir: &Path, generation: &str, cert_pem: &str, key_pem: &str) {
    let target = dir.join(generation);
    std::fs::create_dir(&target).expect("create generation dir");
    std::fs::write(target.join("tls.crt"), cert_pem).expect("write cert");
    std::fs::write(target.join("tls.key"), key_pem).expect("write key");
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(generation, &tmp).expect("symlink ..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).expect("file symlink");
        }
    }
}

#[tokio::test]
async fn a_secret_volume_update_through_the_data_symlink_is_picked_up() {
    let tls = TlsFiles::new();
    let volume = tempfile::tempdir().expect("temp dir");
    write_secret_volume(
        volume.path(),
        "..2026_11_22_00_00_00.1",
        &tls.server.cert_pem,
        &tls.server.key_pem,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let https = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(wave_webhook::run(
        listener,
        metrics_listener,
        ServeOptions {
            config: None,
            tls: Tls::Files(ServedFiles {
                cert: volume.path().join("tls.crt"),
                key: volume.path().join("tls.key"),
            }),
            kube: KubeAccess::Disabled("none".into()),
            drain: Duration::ZERO,
            limits: Limits::default(),
        },
        async {
            let _ = stopped.await;
        },
    ));
    let new_ca = TestCa::new("renewed CA");
    let new_cert = new_ca.issue_server_cert();
    let client = HttpsClient::with_options(&ClientOptions {
        trust: &[&tls.ca, &new_ca],
        versions: rustls::ALL_VERSIONS,
        keep_alive: false,
    });
    let url = format!("https://127.0.0.1:{}/healthz", https.port());
    wait_for("the webhook to serve", Duration::from_secs(20), || async {
        client.get(&url).await.is_ok()
    })
    .await;
    assert_eq!(client.last_server_cert().as_ref(), Some(&tls.server.der));

    write_secret_volume(
        volume.path(),
        "..2026_11_22_01_00_00.2",
        &new_cert.cert_pem,
        &new_cert.key_pem,
    );
    wait_for(
        "the swapped Secret volume to be served",
        Duration::from_secs(20),
        || async {
            client.get(&url).await.expect("served during the swap");
            client.last_server_cert().as_ref() == Some(&new_cert.der)
        },
    )
    .await;
    let _ = stop.send(());
    task.await.expect("no panic").expect("clean stop");
}

#[tokio::test]
async fn a_changed_config_is_applied_and_a_broken_one_keeps_the_previous() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "bucket: first-bucket\n").expect("write config");
    let webhook = Webhook::start(Some(config.clone()), KubeAccess::Disabled("none".into())).await;
    let review = fixture_with_total_players();
    let script_url = |response: &Value| {
        let pod = patched_pod(&review, response);
        env_value(&pod.spec.expect("spec").containers[0], "WAVE_SCRIPT_URL")
    };
    assert_eq!(
        script_url(&webhook.admit(&review).await).as_deref(),
        Some(format!("s3://first-bucket/scripts/{TEST_ID}/").as_str())
    );

    replace_file(&config, b"bucket: second-bucket\n");
    let wanted = format!("s3://second-bucket/scripts/{TEST_ID}/");
    wait_for(
        "the new config to be applied",
        Duration::from_secs(20),
        || async { script_url(&webhook.admit(&review).await).as_deref() == Some(wanted.as_str()) },
    )
    .await;

    replace_file(&config, b"bukket: typo\n");
    webhook
        .wait_for_sample(
            "wave_webhook_reloads_total{what=\"config\",result=\"failure\"}",
            1.0,
            "the broken config was never read",
        )
        .await;
    assert_eq!(
        script_url(&webhook.admit(&review).await).as_deref(),
        Some(wanted.as_str())
    );
    webhook.stop().await;
}

#[tokio::test]
async fn a_missing_certificate_makes_the_server_not_ready_until_it_appears() {
    let tls = TlsFiles::new();
    std::fs::remove_file(tls.cert_path()).expect("remove cert");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics = metrics_listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(wave_webhook::run(
        listener,
        metrics_listener,
        ServeOptions {
            config: None,
            tls: Tls::Files(ServedFiles {
                cert: tls.cert_path(),
                key: tls.key_path(),
            }),
            kube: KubeAccess::Disabled("none".into()),
            drain: Duration::ZERO,
            limits: Limits::default(),
        },
        async {
            let _ = stopped.await;
        },
    ));
    let readyz = format!("http://{metrics}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok((status, _, _)) = plain_get(&readyz).await {
            break status;
        }
        assert!(Instant::now() < deadline, "metrics port never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    tls.write(&tls.server);
    wait_for(
        "readiness after the certificate appeared",
        Duration::from_secs(20),
        || async { plain_get(&readyz).await.map(|r| r.0) == Ok(StatusCode::OK) },
    )
    .await;
    let _ = stop.send(());
    task.await.expect("no panic").expect("clean stop");
}

#[tokio::test]
async fn an_invalid_config_at_start_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "bukket: typo\n").expect("write config");
    let tls = TlsFiles::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let result = wave_webhook::run(
        listener,
        metrics_listener,
        ServeOptions {
            config: Some(config.clone()),
            tls: Tls::Files(ServedFiles {
                cert: tls.cert_path(),
                key: tls.key_path(),
            }),
            kube: KubeAccess::Disabled("none".into()),
            drain: Duration::ZERO,
            limits: Limits::default(),
        },
        std::future::pending(),
    )
    .await;
    let error = result.expect_err("a broken config must stop the start");
    let chain = format!("{:?}", anyhow::Error::from(error));
    assert!(chain.contains(&config.display().to_string()), "{chain}");
    assert!(chain.contains("bukket"), "{chain}");
}

#[tokio::test]
async fn a_review_of_exactly_3_mib_is_answered_and_one_byte_more_is_413() {
    let webhook = Webhook::start(None, KubeAccess::Disabled("none".into())).await;
    let limit = 3 * 1024 * 1024;
    // JSON allows trailing whitespace: the review arrives in many TLS records and frames.
    let mut padded = body(&fixture_with_total_players());
    padded.resize(limit, b' ');
    let reply = webhook
        .client
        .post(&webhook.url("/mutate"), padded.clone())
        .await
        .expect("answer");
    assert_eq!(reply.status, StatusCode::OK);
    let response = reply.json()["response"].clone();
    assert_test_machine(
        &patched_pod(&fixture_with_total_players(), &response),
        "480000",
    );

    padded.push(b' ');
    let reply = webhook
        .client
        .post(&webhook.url("/mutate"), padded)
        .await
        .expect("answer");
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    webhook.stop().await;
}

#[tokio::test]
async fn once_the_caches_are_filled_an_admission_makes_no_api_request() {
    let (replica_set, deployment) = seed_owners();
    let api = seeded_api(&replica_set, &deployment).await;
    let webhook = Webhook::start(None, KubeAccess::Kubeconfig(api.kubeconfig(WEBHOOK_USER))).await;
    // Every owner reflector (ReplicaSets, Deployments, StatefulSets, Jobs) has listed and
    // started watching; a watch that opens during the admission is not the admission's.
    wait_for("every owner watch", Duration::from_secs(20), || async {
        ["replicasets", "deployments", "statefulsets", "jobs"]
            .iter()
            .all(|resource| api.watching(resource))
    })
    .await;
    let before = api.request_count();
    let review = captured_review();
    let response = webhook.admit(&review).await;
    assert_test_machine(&patched_pod(&review, &response), "480000");
    let later: Vec<String> = api.requests()[before..]
        .iter()
        .map(ApiRequest::line)
        .collect();
    assert_eq!(
        later,
        [] as [String; 0],
        "the admission asked the API server"
    );
    webhook.stop().await;
}
