//! Speed of the pure mutation: the seed's pod (one container, as the seed's Deployment
//! creates it) and the same test machine with ten agent containers.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use wave_webhook::config::Config;
use wave_webhook::mutate::{Verdict, admit};
use wave_webhook::part::OwnerReplicas;

const SEED: &str = include_str!("../tests/fixtures/seed-deployment.yaml");

fn seed_pod() -> Pod {
    let deployment: Deployment = serde_saphyr::from_str(SEED).expect("seed fixture parses");
    let template = deployment.spec.expect("seed has a spec").template;
    Pod {
        metadata: template.metadata.expect("seed template has metadata"),
        spec: template.spec,
        status: None,
    }
}

fn ten_container_pod() -> Pod {
    let mut pod = seed_pod();
    let spec = pod.spec.as_mut().expect("seed pod has a spec");
    let template = spec.containers[0].clone();
    spec.containers = (1..=10)
        .map(|i| Container {
            name: format!("All-service-ltystore-10k-p1-c{i}"),
            env: None,
            resources: None,
            ..template.clone()
        })
        .collect();
    pod
}

fn bench(c: &mut Criterion) {
    let config = Config::default();
    for (name, pod) in [
        ("mutate/seed_pod", seed_pod()),
        ("mutate/ten_containers", ten_container_pod()),
    ] {
        assert!(
            matches!(
                admit(&pod, OwnerReplicas::Known(480), &config),
                Verdict::Patch { .. }
            ),
            "{name} is mutated"
        );
        c.bench_function(name, |b| {
            b.iter(|| {
                admit(
                    black_box(&pod),
                    OwnerReplicas::Known(480),
                    black_box(&config),
                )
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
