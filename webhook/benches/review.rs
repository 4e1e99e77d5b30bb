//! Speed of one admission inside the process, split the way the server spends it: decoding
//! the review into a `Pod`, deciding and building the patch, and encoding the answer. The
//! same body as `admission_load` (the captured pod CREATE with `total-players`), so what the
//! load bench measures beyond `review/whole` is TLS and HTTP.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse};
use wave_webhook::admission::{self, Answer};
use wave_webhook::annotations::Settings;
use wave_webhook::config::Config;
use wave_webhook::metrics::Outcome;
use wave_webhook::mutate::{self, Verdict};
use wave_webhook::owners::OwnerLookup;
use wave_webhook::part::OwnerReplicas;

mod support;

use support::review_body;

fn decode(body: &[u8]) -> AdmissionRequest<Pod> {
    admission::decode(body).expect("the fixture is a pod review")
}

fn bench(c: &mut Criterion) {
    let body = review_body();
    let config = Config::default();
    let owners = OwnerLookup::unavailable("no API server in a benchmark");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let run =
        |body: &[u8]| -> Answer { runtime.block_on(admission::review(body, &config, &owners)) };
    assert!(
        matches!(run(&body).outcome, Outcome::Mutated),
        "the benchmark's review is answered with a patch"
    );

    let request = decode(&body);
    let pod = request.object.clone().expect("the fixture carries a pod");
    let decide = |pod: &Pod| match mutate::decide(
        pod,
        Settings::read(pod, &config),
        OwnerReplicas::NoOwner,
        &config,
    ) {
        Verdict::Patch { patch, .. } => patch,
        _ => panic!("the benchmark's pod is mutated"),
    };
    let mut response = AdmissionResponse::from(&request);
    response.patch = Some(decide(&pod).into_json());

    c.bench_function("review/whole", |b| b.iter(|| run(black_box(&body))));
    c.bench_function("review/decode", |b| b.iter(|| decode(black_box(&body))));
    c.bench_function("review/decide", |b| b.iter(|| decide(black_box(&pod))));
    c.bench_function("review/encode", |b| {
        b.iter(|| admission::encode(black_box(&response)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
