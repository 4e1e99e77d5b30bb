//! `--tls-self-managed` (docs/webhook-server.md) against the API stand-in: webhook processes keep their CA
//! in a Secret, serve certificates issued in memory, and keep the MutatingWebhookConfiguration's
//! caBundle current, as a client calling the webhook with that bundle (the API server) sees it.

use std::collections::{BTreeSet, VecDeque};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use wave_tests::apiserver::{ApiRequest, ApiServer};
use wave_tests::tls::client_config;
use wave_tests::webhook::WebhookProcess;
use wave_tests::{poll_blocking, workspace_root};

const NAMESPACE: &str = "wave-system";
const USER: &str = "system:serviceaccount:wave-system:wave-webhook";
const SERVER_NAME: &str = "wave-webhook.wave-system.svc";
const ADMISSION: &str = "admissionregistration.k8s.io/v1";

/// The shipped MutatingWebhookConfiguration, without cert-manager's annotation and bundle.
fn seed_configuration(api: &ApiServer) {
    let text =
        std::fs::read_to_string(workspace_root().join("manifests/base/mutatingwebhook.yaml"))
            .expect("manifests/base/mutatingwebhook.yaml");
    let mut configuration: Value = serde_saphyr::from_str(&text).expect("YAML");
    configuration["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("annotations");
    api.seed(configuration);
}

fn configuration(api: &ApiServer) -> Value {
    api.get(
        ADMISSION,
        "MutatingWebhookConfiguration",
        None,
        "wave-webhook",
    )
    .expect("the webhook configuration exists")
}

/// The caBundle of the configuration's (one) webhook, PEM.
fn bundle(api: &ApiServer) -> Option<Vec<u8>> {
    let encoded = configuration(api)["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()?
        .to_string();
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("caBundle is base64"),
    )
}

fn certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("the bundle is PEM certificates")
}

fn issuer(leaf: &CertificateDer<'_>) -> String {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).expect("X.509 leaf");
    parsed.issuer().to_string()
}

/// Connects to `addr` as the API server would: trusting only `bundle`, checking the name of
/// the Service, and asking for `/healthz`. Returns the issuer of the certificate served.
fn call(addr: SocketAddr, bundle: &[u8]) -> Result<String, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(bundle) {
        roots.add(cert).map_err(|e| format!("bundle: {e}"))?;
    }
    let config = client_config(roots);
    let name = ServerName::try_from(SERVER_NAME).expect("DNS name");
    let connection = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: wave-webhook\r\nconnection: close\r\n\r\n")
        .map_err(|e| format!("handshake or request: {e}"))?;
    let mut answer = Vec::new();
    // A peer closing without close_notify after `connection: close` still gave its answer.
    let _ = stream.read_to_end(&mut answer);
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!(
            "answer: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(80)])
        ));
    }
    let leaf = stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer certificate")?;
    Ok(issuer(leaf))
}

fn succeeded(requests: &[ApiRequest], verb: &str, resource: &str) -> usize {
    requests
        .iter()
        .filter(|r| r.verb == verb && r.resource == resource && r.status < 300)
        .count()
}

fn start(api: &ApiServer, dir: &std::path::Path, name: &str, extra: &[&str]) -> WebhookProcess {
    let mut args = vec!["--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    WebhookProcess::start_self_managed(
        &api.kubeconfig(USER),
        &args,
        &dir.join(format!("{name}.log")),
    )
}

#[test]
fn two_replicas_share_one_ca_and_write_the_bundle_once() {
    let api = ApiServer::start_blocking();
    seed_configuration(&api);
    let dir = tempfile::tempdir().expect("tempdir");
    let fast = ["--tls-check-interval", "200ms"];
    // Both start at once against an empty namespace: both try to create the CA.
    let a = start(&api, dir.path(), "a", &fast);
    let b = start(&api, dir.path(), "b", &fast);
    a.wait_ready();
    b.wait_ready();
    // Several check intervals go by: neither rewrites what the other wrote.
    std::thread::sleep(Duration::from_secs(2));

    let requests = api.requests();
    assert_eq!(
        succeeded(&requests, "create", "secrets"),
        1,
        "{requests:#?}"
    );
    assert_eq!(
        succeeded(&requests, "update", "mutatingwebhookconfigurations"),
        1,
        "the bundle is written once: {requests:#?}"
    );
    assert_eq!(succeeded(&requests, "update", "secrets"), 0);
    let secret = api
        .get("v1", "Secret", Some(NAMESPACE), "wave-webhook-ca")
        .expect("the CA Secret");
    assert!(secret["data"]["ca.key"].is_string());
    let served = bundle(&api).expect("a caBundle");
    assert_eq!(certificates(&served).len(), 1);
    let issuers: BTreeSet<_> = [&a, &b]
        .iter()
        .map(|w| call(w.https, &served).unwrap_or_else(|e| panic!("{e}\n{}", w.output())))
        .collect();
    assert_eq!(issuers.len(), 1, "both sign with the one CA: {issuers:?}");

    // A third replica adopts the CA: no create succeeds, no bundle is written.
    let c = start(&api, dir.path(), "c", &fast);
    c.wait_ready();
    assert_eq!(
        call(c.https, &served).expect("the third replica is trusted"),
        *issuers.first().expect("one issuer")
    );
    let requests = api.requests();
    assert_eq!(succeeded(&requests, "create", "secrets"), 1);
    assert_eq!(
        succeeded(&requests, "update", "mutatingwebhookconfigurations"),
        1
    );

    // Someone re-applies the configuration without a bundle: it is put back, once.
    let mut overwritten = configuration(&api);
    overwritten["webhooks"][0]["clientConfig"]
        .as_object_mut()
        .expect("clientConfig")
        .remove("caBundle");
    api.update(overwritten);
    let restored =
        poll_blocking(Duration::from_secs(10), || bundle(&api)).expect("the bundle is put back");
    assert_eq!(restored, served);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        succeeded(&api.requests(), "update", "mutatingwebhookconfigurations"),
        2
    );
}

/// The bundle the API server would use: the configuration as it was `lag` ago.
struct LaggingView {
    lag: Duration,
    seen: VecDeque<(Instant, Vec<u8>)>,
}

impl LaggingView {
    /// Records the live `bundle` and returns the one in force `lag` ago (the first one seen
    /// until then).
    fn observe(&mut self, bundle: Vec<u8>) -> &[u8] {
        let now = Instant::now();
        if self.seen.back().is_none_or(|(_, b)| *b != bundle) {
            self.seen.push_back((now, bundle));
        }
        // An entry is out of force once its successor has been live for the lag.
        while self.seen.len() > 1 && now - self.seen[1].0 >= self.lag {
            self.seen.pop_front();
        }
        &self.seen[0].1
    }
}

#[test]
fn a_ca_rotation_fails_no_handshake_and_the_replicas_never_fight() {
    let api = ApiServer::start_blocking();
    seed_configuration(&api);
    let dir = tempfile::tempdir().expect("tempdir");
    // A 12 s CA: the rotation starts with 4 s left, the bundle holds both CAs for 1 s before
    // the new one signs and 1 s after.
    let fast = [
        "--tls-ca-validity",
        "12s",
        "--tls-rotation-overlap",
        "1s",
        "--tls-check-interval",
        "100ms",
        "--tls-cert-validity",
        "3s",
    ];
    let a = start(&api, dir.path(), "a", &fast);
    let b = start(&api, dir.path(), "b", &fast);
    a.wait_ready();
    b.wait_ready();

    let mut view = LaggingView {
        lag: Duration::from_millis(300),
        seen: VecDeque::new(),
    };
    let first = bundle(&api).expect("a first bundle");
    let mut issuers = BTreeSet::new();
    let mut failures = Vec::new();
    let mut calls = 0;
    let mut most_cas = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let rotated = loop {
        assert!(
            Instant::now() < deadline,
            "no full rotation within 40 s\n{}\n{}",
            a.output(),
            b.output()
        );
        let live = bundle(&api).expect("the bundle stays");
        most_cas = most_cas.max(certificates(&live).len());
        if issuers.len() >= 2 && certificates(&live).len() == 1 && live != first {
            break live;
        }
        let trusted = view.observe(live).to_vec();
        for webhook in [&a, &b] {
            calls += 1;
            match call(webhook.https, &trusted) {
                Ok(issuer) => {
                    issuers.insert(issuer);
                }
                Err(e) => failures.push(e),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };

    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:?}",
        failures.len()
    );
    assert_eq!(
        issuers.len(),
        2,
        "served by the old CA, then the new: {issuers:?}"
    );
    assert_eq!(most_cas, 2, "both CAs were in the bundle during the change");
    assert_ne!(certificates(&rotated), certificates(&first));
    let requests = api.requests();
    // Next CA added, promoted, previous dropped: three Secret states after the first, each
    // written by one replica and its bundle written once.
    assert_eq!(succeeded(&requests, "create", "secrets"), 1);
    assert_eq!(
        succeeded(&requests, "update", "secrets"),
        3,
        "{requests:#?}"
    );
    assert_eq!(
        succeeded(&requests, "update", "mutatingwebhookconfigurations"),
        4,
        "{requests:#?}"
    );
    assert_eq!(
        configuration(&api)["metadata"]["annotations"]["waveloadtest.io/ca-generation"],
        "4"
    );
}

#[test]
fn without_permission_to_create_the_secret_the_log_says_which_and_it_is_not_ready() {
    let api = ApiServer::start_blocking();
    seed_configuration(&api);
    api.deny(Some(USER), "create", "", "secrets");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(&api, dir.path(), "a", &["--tls-check-interval", "200ms"]);
    let logged = poll_blocking(Duration::from_secs(20), || {
        let log = a.output();
        log.contains("cannot create Secret wave-system/wave-webhook-ca")
            .then_some(log)
    })
    .unwrap_or_else(|| panic!("no line about the Secret:\n{}", a.output()));
    assert!(logged.contains("forbidden"), "{logged}");
    assert_eq!(a.readyz(), Some(503));
    // The same failure every retry is logged once.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.output()
            .matches("cannot create Secret wave-system/wave-webhook-ca")
            .count(),
        1
    );
    // Granted: it creates the CA and becomes ready.
    api.allow_all();
    a.wait_ready();
    assert!(bundle(&api).is_some());
}

#[test]
fn a_webhook_configuration_created_later_gets_the_bundle_and_its_absence_is_logged_once() {
    let api = ApiServer::start_blocking();
    let dir = tempfile::tempdir().expect("tempdir");
    let a = start(&api, dir.path(), "a", &["--tls-check-interval", "100ms"]);
    // It serves meanwhile: the configuration may be applied after the Deployment.
    a.wait_ready();
    std::thread::sleep(Duration::from_secs(1));
    let missing = "MutatingWebhookConfiguration not found";
    assert_eq!(a.output().matches(missing).count(), 1, "{}", a.output());
    seed_configuration(&api);
    let served = poll_blocking(Duration::from_secs(10), || bundle(&api))
        .expect("the bundle is written once the configuration exists");
    call(a.https, &served).expect("trusted through the written bundle");
}
