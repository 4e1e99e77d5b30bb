//! What a cluster admin applies: every file under `manifests/` is checked by the tool made
//! for it (kubernetes-validate, kubectl kustomize, promtool, the webhook itself), and the
//! rendered webhook configuration carries the selectors and policies of manifests/.

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodSpec, Service};
use serde_json::Value;
use wave_tests::prometheus::Prometheus;
use wave_tests::{tool, workspace_bin, workspace_root};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("manifests/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(&workspace_root().join("manifests"), &mut files);
    files.sort();
    files
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .expect("valid YAML")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Files whose every document is a Kubernetes object (apiVersion + kind).
fn kubernetes_files() -> Vec<PathBuf> {
    manifest_files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            let docs = yaml_documents(&std::fs::read_to_string(p).expect("readable manifest"));
            !docs.is_empty()
                && docs
                    .iter()
                    .all(|d| d.get("apiVersion").is_some() && d.get("kind").is_some())
        })
        .collect()
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn every_file_under_manifests_is_checked_by_some_test() {
    let kubernetes = kubernetes_files();
    let root = workspace_root().join("manifests");
    let others: Vec<_> = manifest_files()
        .into_iter()
        .filter(|p| !kubernetes.contains(p))
        .map(|p| {
            p.strip_prefix(&root)
                .expect("under manifests/")
                .to_path_buf()
        })
        .collect();
    // Each of these has its own test below; a new kind of file needs one too.
    let known = [
        "base/config.yaml",
        "examples/iam-policy.json",
        "examples/prometheus-scrape.yml",
        "grafana/wave-test.json",
        "prometheus/wave-alerts.test.yml",
    ];
    let unknown: Vec<_> = others
        .iter()
        .filter(|p| !known.iter().any(|k| Path::new(k) == *p))
        .collect();
    assert!(
        unknown.is_empty(),
        "files under manifests/ that no test checks: {unknown:?}"
    );
    assert!(
        kubernetes.len() >= 12,
        "expected the manifests/ set, found {kubernetes:?}"
    );
}

#[test]
fn every_kubernetes_manifest_passes_kubernetes_validate_strict() {
    let validate = tool("kubernetes-validate");
    let files = kubernetes_files();
    // The oldest version the webhook is built against (k8s-openapi v1_33) and the newest
    // the validator ships.
    for version in ["1.33.0", "1.37.0"] {
        let output = run(Command::new(&validate)
            .args(["--strict", "--kubernetes-version", version])
            .args(&files));
        assert!(
            !output.contains("ERROR") && !output.contains("FAIL"),
            "{output}"
        );
        for built_in in [
            "deployment/wave-webhook",
            "mutatingwebhookconfiguration/wave-webhook",
            "deployment/ltystore-10k-p1",
        ] {
            assert!(
                output.contains(&format!("passed for resource {built_in}")),
                "{built_in} was not validated:\n{output}"
            );
        }
    }
}

/// `kubectl kustomize` of the cert-manager flavour, `manifests/`.
fn rendered() -> Vec<Value> {
    rendered_at("manifests")
}

/// `kubectl kustomize` of a kustomization under the workspace root.
fn rendered_at(dir: &str) -> Vec<Value> {
    yaml_documents(&render_text(dir))
}

fn render_text(dir: &str) -> String {
    let root = workspace_root();
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join(dir))
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 YAML")
}

fn object<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str, name: &str) -> T {
    let doc = docs
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("kustomize output has no {kind} {name}"));
    serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{kind} {name} does not deserialize: {e}"))
}

#[test]
fn kustomize_renders_the_webhook_configuration_of_spec_4() {
    let docs = rendered();
    let config: MutatingWebhookConfiguration =
        object(&docs, "MutatingWebhookConfiguration", "wave-webhook");
    let annotations = config.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("cert-manager.io/inject-ca-from")
            .map(String::as_str),
        Some("wave-system/wave-webhook")
    );
    let webhooks = config.webhooks.expect("one webhook");
    assert_eq!(webhooks.len(), 1);
    let hook = &webhooks[0];
    assert_eq!(hook.admission_review_versions, vec!["v1".to_string()]);
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(hook.timeout_seconds, Some(5));
    assert_eq!(hook.reinvocation_policy.as_deref(), Some("IfNeeded"));

    let rules = hook.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pods".to_string()][..])
    );
    assert_eq!(rules[0].api_groups.as_deref(), Some(&[String::new()][..]));

    let objects = hook.object_selector.as_ref().expect("objectSelector");
    let expressions = objects
        .match_expressions
        .as_ref()
        .expect("matchExpressions");
    assert!(
        expressions
            .iter()
            .any(|e| e.key == "testId" && e.operator == "Exists"),
        "{expressions:?}"
    );

    let namespaces = hook.namespace_selector.as_ref().expect("namespaceSelector");
    let excluded = namespaces
        .match_expressions
        .iter()
        .flatten()
        .find(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .expect("a NotIn on the namespace name");
    for ns in ["wave-system", "kube-system"] {
        assert!(
            excluded.values.iter().flatten().any(|v| v == ns),
            "{ns} not excluded"
        );
    }

    let service_ref = hook
        .client_config
        .service
        .as_ref()
        .expect("service reference");
    assert_eq!(service_ref.name, "wave-webhook");
    assert_eq!(service_ref.namespace, "wave-system");
    assert_eq!(service_ref.path.as_deref(), Some("/mutate"));
    assert_eq!(service_ref.port, Some(443));
}

#[test]
fn kustomize_renders_a_hardened_webhook_deployment_behind_its_service() {
    let docs = rendered();
    let deployment: Deployment = object(&docs, "Deployment", "wave-webhook");
    assert_eq!(
        deployment.metadata.namespace.as_deref(),
        Some("wave-system")
    );
    let spec = deployment.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.expect("pod spec");
    assert!(
        pod.topology_spread_constraints
            .as_ref()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(
        pod.security_context
            .as_ref()
            .and_then(|s| s.run_as_non_root),
        Some(true)
    );
    let container = &pod.containers[0];
    let security = container
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert!(container.readiness_probe.is_some() && container.liveness_probe.is_some());
    assert!(
        container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some()
    );

    // Service 443 → the container port the webhook listens on.
    let service: Service = object(&docs, "Service", "wave-webhook");
    let port = service
        .spec
        .and_then(|s| s.ports)
        .and_then(|ports| ports.into_iter().find(|p| p.port == 443))
        .expect("port 443");
    let target = match port.target_port.expect("targetPort") {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => name,
        other => panic!("targetPort should name the container port, got {other:?}"),
    };
    let container_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(target.as_str()))
        .expect("the Service's targetPort names a container port");
    let args = container.args.clone().unwrap_or_default();
    assert!(
        args.iter()
            .any(|a| *a == format!("--listen=0.0.0.0:{}", container_port.container_port)),
        "the webhook listens where the Service sends: {args:?}"
    );

    // The pieces refer to each other by the names kustomize produced.
    assert!(docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
    let certificate = docs
        .iter()
        .find(|d| d["kind"] == "Certificate")
        .expect("a cert-manager Certificate");
    let secret = certificate["spec"]["secretName"]
        .as_str()
        .expect("secretName");
    let volumes = pod.volumes.expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))
    );
    let config_map = volumes
        .iter()
        .find_map(|v| v.config_map.as_ref())
        .expect("a ConfigMap volume");
    let rendered_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == config_map.name.as_str())
        .expect("the ConfigMap the Deployment mounts is rendered");
    assert!(rendered_map["data"]["config.yaml"].is_string());
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let resources = role["rules"][0]["resources"].to_string();
    assert!(
        resources.contains("replicasets") && resources.contains("deployments"),
        "{resources}"
    );
}

#[test]
fn shipped_webhook_config_is_accepted_by_the_webhook() {
    let root = workspace_root();
    let output = run(Command::new(workspace_bin("wave-webhook"))
        .arg("inject")
        .arg("--config")
        .arg(root.join("manifests/base/config.yaml"))
        .arg("-f")
        .arg(root.join("manifests/examples/loadtest-linux.yaml")));
    assert!(output.contains("TOTAL_PLAYERS"), "{output}");
}

#[test]
fn webhook_deployment_args_are_accepted_by_the_cli() {
    let help = run(Command::new(workspace_bin("wave-webhook")).args(["serve", "--help"]));
    for flavour in ["manifests", "manifests/self-managed"] {
        let docs = rendered_at(flavour);
        let args = webhook_pod(&docs).containers[0].args.clone().expect("args");
        assert_eq!(args[0], "serve");
        for arg in &args[1..] {
            let flag = arg.split('=').next().expect("a flag");
            assert!(
                help.contains(flag),
                "{flavour}: wave-webhook serve does not accept {flag}:\n{help}"
            );
        }
    }
}

/// The pod template of the rendered webhook Deployment.
fn webhook_pod(docs: &[Value]) -> PodSpec {
    let deployment: Deployment = object(docs, "Deployment", "wave-webhook");
    deployment
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec")
}

#[test]
fn the_self_managed_flavour_needs_no_cert_manager_and_grants_only_its_secret_and_configuration() {
    let text = render_text("manifests/self-managed");
    let docs = yaml_documents(&text);
    assert!(
        docs.iter().all(|d| !d["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .starts_with("cert-manager.io")),
        "no cert-manager object"
    );
    let config: MutatingWebhookConfiguration =
        object(&docs, "MutatingWebhookConfiguration", "wave-webhook");
    assert!(
        config
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .all(|k| !k.starts_with("cert-manager.io")),
        "no CA injection annotation"
    );
    let pod = webhook_pod(&docs);
    let container = &pod.containers[0];
    let args = container.args.clone().expect("args");
    assert!(args.iter().any(|a| a == "--tls-self-managed"), "{args:?}");
    assert!(
        args.iter().all(|a| !a.starts_with("--tls-cert")),
        "{args:?}"
    );
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("--{name} in {args:?}"))
            .to_string()
    };
    let namespace = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "WAVE_WEBHOOK_NAMESPACE")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone());
    assert_eq!(namespace.as_deref(), Some("metadata.namespace"));
    assert!(
        pod.volumes.iter().flatten().all(|v| v.secret.is_none()),
        "no certificate volume"
    );

    // RBAC: reading and changing by name only; create (which resourceNames cannot limit) in
    // the webhook's namespace only.
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "wave-webhook-ca")
        .expect("the CA Role");
    assert_eq!(role["metadata"]["namespace"], "wave-system");
    for rule in role["rules"].as_array().expect("rules") {
        assert_eq!(rule["resources"], serde_json::json!(["secrets"]));
        if rule["verbs"] == serde_json::json!(["create"]) {
            assert!(rule.get("resourceNames").is_none());
        } else {
            assert_eq!(
                rule["resourceNames"],
                serde_json::json!([flag("tls-ca-secret")])
            );
        }
    }
    let cluster_role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "wave-webhook-cabundle")
        .expect("the caBundle ClusterRole");
    assert_eq!(
        cluster_role["rules"][0]["resourceNames"],
        serde_json::json!([flag("tls-webhook-configuration")])
    );
    assert_eq!(
        config.metadata.name.as_deref(),
        Some(flag("tls-webhook-configuration").as_str())
    );
    let service: Service = object(&docs, "Service", &flag("tls-service"));
    assert_eq!(service.metadata.namespace.as_deref(), Some("wave-system"));
    // Each is bound to the webhook's service account.
    for (binding, granted) in [("RoleBinding", role), ("ClusterRoleBinding", cluster_role)] {
        let bound = docs
            .iter()
            .find(|d| d["kind"] == binding && d["roleRef"]["name"] == granted["metadata"]["name"])
            .unwrap_or_else(|| panic!("a {binding} of {}", granted["metadata"]["name"]));
        assert_eq!(bound["subjects"][0]["name"], "wave-webhook");
        assert_eq!(bound["subjects"][0]["namespace"], "wave-system");
    }
    assert_eq!(pod.service_account_name.as_deref(), Some("wave-webhook"));

    // The rendered flavour passes the same strict validation as the files.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("self-managed.yaml");
    std::fs::write(&file, &text).expect("write render");
    let output = run(Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", "1.33.0"])
        .arg(&file));
    assert!(
        !output.contains("ERROR") && !output.contains("FAIL"),
        "{output}"
    );
    assert!(
        output.contains("passed for resource deployment/wave-webhook"),
        "{output}"
    );
}

/// Debian's Prometheus is built without Kubernetes service discovery, so the shipped job
/// runs here with its discovery swapped for static targets that carry the meta labels pod
/// discovery gives; everything else (its relabeling above all) is the shipped text.
fn scrape_job_on_static_targets(targets: &[(&str, &[(&str, &str)])]) -> String {
    let root = workspace_root();
    let mut config: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root.join("manifests/examples/prometheus-scrape.yml"))
            .expect("scrape config"),
    )
    .expect("the scrape config is YAML");
    let job = &mut config["scrape_configs"][0];
    let discovery = job
        .as_object_mut()
        .expect("a job")
        .remove("kubernetes_sd_configs");
    assert!(discovery.is_some(), "the shipped job discovers pods");
    job["static_configs"] = Value::Array(
        targets
            .iter()
            .map(|(address, labels)| {
                let labels: serde_json::Map<String, Value> = labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), Value::from(*v)))
                    .collect();
                serde_json::json!({"targets": [address], "labels": labels})
            })
            .collect(),
    );
    config["global"] = serde_json::json!({"scrape_interval": "1s"});
    serde_json::to_string(&config).expect("JSON is YAML")
}

#[test]
fn prometheus_scrape_config_keeps_every_wave_metrics_port_of_labelled_pods() {
    let meta = |port: &'static str, test_id: &'static str| -> Vec<(&'static str, &'static str)> {
        let mut labels = vec![
            ("__meta_kubernetes_namespace", "wave-tests"),
            (
                "__meta_kubernetes_pod_name",
                "ltystore-10k-p1-7c9d8f6b5d-x7k2p",
            ),
            ("__meta_kubernetes_pod_container_name", "c1"),
            ("__meta_kubernetes_pod_container_port_name", port),
        ];
        if !test_id.is_empty() {
            labels.push(("__meta_kubernetes_pod_label_testId", test_id));
        }
        labels
    };
    let kept = [
        meta("wave-metrics", "t1--p1"),
        meta("wave-metrics-3", "t1--p1"),
    ];
    let dropped = [
        meta("http", "t1--p1"),
        meta("wave-metrics", ""),
        meta("wave-metricsx", "t1"),
    ];
    let targets: Vec<(&str, &[(&str, &str)])> = [
        ("127.0.0.1:19102", &kept[0][..]),
        ("127.0.0.1:19105", &kept[1][..]),
        ("127.0.0.1:18080", &dropped[0][..]),
        ("127.0.0.1:19202", &dropped[1][..]),
        ("127.0.0.1:19302", &dropped[2][..]),
    ]
    .into_iter()
    .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prometheus.yml");
    let scrape_config = scrape_job_on_static_targets(&targets);
    std::fs::write(&config, &scrape_config).expect("write config");
    run(Command::new(tool("promtool"))
        .args(["check", "config", "--syntax-only"])
        .arg(&config));

    let prometheus = Prometheus::with_config(&scrape_config);
    let targets = (0..150).find_map(|_| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let answer = prometheus.get_json("/api/v1/targets?state=any")?;
        let active = answer["data"]["activeTargets"].as_array()?.len();
        let dropped = answer["data"]["droppedTargets"].as_array()?.len();
        (active + dropped == 5).then_some(answer)
    });
    drop(prometheus);
    let targets = targets.expect("Prometheus lists all five targets within 30 s");
    let mut active: Vec<String> = targets["data"]["activeTargets"]
        .as_array()
        .expect("active targets")
        .iter()
        .map(|t| {
            format!(
                "{} {} {}",
                t["labels"]["instance"], t["labels"]["container"], t["labels"]["pod"]
            )
        })
        .collect();
    active.sort();
    assert_eq!(
        active,
        vec![
            "\"127.0.0.1:19102\" \"c1\" \"ltystore-10k-p1-7c9d8f6b5d-x7k2p\"".to_string(),
            "\"127.0.0.1:19105\" \"c1\" \"ltystore-10k-p1-7c9d8f6b5d-x7k2p\"".to_string(),
        ],
        "only wave-metrics* ports of testId pods are scraped, labelled with pod and container"
    );
}

#[test]
fn podmonitor_and_scrape_config_keep_every_wave_metrics_port() {
    let root = workspace_root();
    let monitor = yaml_documents(
        &std::fs::read_to_string(root.join("manifests/examples/podmonitor.yaml"))
            .expect("podmonitor"),
    );
    let endpoint = &monitor[0]["spec"]["podMetricsEndpoints"][0];
    assert!(
        endpoint.get("port").is_none(),
        "a named port would scrape only one container"
    );
    let scrape = std::fs::read_to_string(root.join("manifests/examples/prometheus-scrape.yml"))
        .expect("scrape config");
    for text in [endpoint.to_string(), scrape] {
        assert!(text.contains("wave-metrics(-[0-9]+)?"), "{text}");
    }
}

#[test]
fn slots_role_grants_the_supervisor_its_lease_and_pod_calls_to_the_test_pods() {
    let root = workspace_root();
    let docs = yaml_documents(
        &std::fs::read_to_string(root.join("manifests/examples/slots-rbac.yaml"))
            .expect("slots-rbac.yaml"),
    );
    let role = docs.iter().find(|d| d["kind"] == "Role").expect("a Role");
    let verbs = |group: &str, resource: &str| -> Vec<String> {
        role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .filter(|r| {
                r["apiGroups"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|g| g == group))
                    && r["resources"]
                        .as_array()
                        .is_some_and(|rs| rs.iter().any(|r| r == resource))
            })
            .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        verbs("coordination.k8s.io", "leases"),
        ["get", "list", "watch", "create", "delete"]
    );
    assert_eq!(verbs("", "pods"), ["get"]);
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "RoleBinding")
        .expect("a RoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    // Bound to the ServiceAccount the example test pods run as.
    let example: Value = yaml_documents(
        &std::fs::read_to_string(root.join("manifests/examples/loadtest-linux.yaml"))
            .expect("example"),
    )
    .remove(0);
    let account = &example["spec"]["template"]["spec"]["serviceAccountName"];
    assert_eq!(binding["subjects"][0]["name"], *account);
    assert_eq!(
        binding["subjects"][0]["namespace"],
        example["metadata"]["namespace"]
    );
    assert_eq!(
        example["spec"]["template"]["metadata"]["annotations"]["waveloadtest.io/start"],
        "together"
    );
}

#[test]
fn iam_policy_reads_scripts_and_writes_results_only() {
    let root = workspace_root();
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("manifests/examples/iam-policy.json"))
            .expect("policy file"),
    )
    .expect("the policy is JSON");
    let statements = policy["Statement"].as_array().expect("statements");
    for statement in statements {
        assert_eq!(statement["Effect"], "Allow");
        let actions: Vec<&str> = match &statement["Action"] {
            Value::String(a) => vec![a.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            other => panic!("unexpected Action {other}"),
        };
        let resource = statement["Resource"]
            .as_str()
            .expect("one resource per statement");
        for action in actions {
            assert!(!action.contains('*'), "wildcard action {action}");
            match action {
                "s3:GetObject" => assert!(resource.ends_with("/scripts/*"), "{resource}"),
                "s3:PutObject" | "s3:AbortMultipartUpload" => {
                    assert!(resource.ends_with("/results/*"), "{resource}")
                }
                "s3:ListBucket" => {
                    assert!(statement["Condition"].to_string().contains("scripts/*"))
                }
                other => panic!("the supervisor does not need {other}"),
            }
        }
    }
}

#[test]
fn dockerfiles_package_the_binaries_the_build_produces() {
    let root = workspace_root();
    for (dockerfile, bin) in [
        ("Dockerfile.webhook", "wave-webhook"),
        ("Dockerfile.agent", "wave-agent"),
    ] {
        let text = std::fs::read_to_string(root.join(dockerfile)).expect("Dockerfile");
        assert!(
            text.contains(&format!("-p {bin} --bin {bin}")),
            "{dockerfile} builds {bin}"
        );
        assert!(
            text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")),
            "{dockerfile} runs {bin}"
        );
        assert!(
            text.contains("nonroot") && text.contains("USER 65532"),
            "{dockerfile} runs as non-root"
        );
        // The binary exists under that name in this build and answers its CLI.
        run(Command::new(workspace_bin(bin)).arg("--help"));
    }
    // The agent image's default command is what the webhook's init container runs.
    let agent = std::fs::read_to_string(root.join("Dockerfile.agent")).expect("Dockerfile.agent");
    assert!(agent.contains("CMD [\"install\", \"/wave/bin\"]"));
    let dir = tempfile::tempdir().expect("temp dir");
    run(Command::new(workspace_bin("wave-agent"))
        .arg("install")
        .arg(dir.path()));
    run(Command::new(dir.path().join("wave-agent")).arg("--help"));
}
