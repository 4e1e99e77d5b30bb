//! The owner chain pod → ReplicaSet → Deployment, resolved from k8s-openapi objects and from
//! kube-runtime reflector stores filled by hand (no API server: a cache miss must not be
//! answered from anywhere else).

use crate::support::{deployment, owner_reference, replica_set};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use wave_webhook::owners::{OwnerLookup, owning_deployment, owning_replica_set, test_replicas};
use wave_webhook::part::OwnerReplicas;

const NS: &str = "loadtest";

fn mk_pod(owners: Vec<OwnerReference>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            generate_name: Some("game-7d9f-".to_string()),
            namespace: Some(NS.to_string()),
            owner_references: Some(owners),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn the_controlling_replica_set_is_the_pods_owner() {
    let pod = mk_pod(vec![
        owner_reference("ReplicaSet", "other", "u0", Some(false)),
        owner_reference("ReplicaSet", "game-7d9f", "u1", Some(true)),
    ]);
    assert_eq!(
        owning_replica_set(&pod).map(|r| r.name.as_str()),
        Some("game-7d9f")
    );
}

#[test]
fn pods_of_other_controllers_or_without_owner_have_no_replica_set() {
    assert!(owning_replica_set(&mk_pod(vec![])).is_none());
    assert!(owning_replica_set(&Pod::default()).is_none());
    let stateful = mk_pod(vec![owner_reference("StatefulSet", "db", "u2", Some(true))]);
    assert!(owning_replica_set(&stateful).is_none());
    let not_controller = mk_pod(vec![owner_reference("ReplicaSet", "rs", "u3", None)]);
    assert!(owning_replica_set(&not_controller).is_none());
    let mut foreign = owner_reference("ReplicaSet", "rs", "u4", Some(true));
    foreign.api_version = "example.com/v1".to_string();
    assert!(owning_replica_set(&mk_pod(vec![foreign])).is_none());
}

#[test]
fn a_replica_set_names_its_deployment() {
    let owned = replica_set(
        NS,
        "rs",
        "u1",
        Some(3),
        Some(owner_reference("Deployment", "game", "d1", Some(true))),
    );
    assert_eq!(
        owning_deployment(&owned).map(|r| r.name.as_str()),
        Some("game")
    );
    assert!(owning_deployment(&replica_set(NS, "rs", "u1", Some(3), None)).is_none());
}

#[test]
fn the_deployments_replicas_win_over_the_replica_sets() {
    let replica_set = replica_set(NS, "rs", "u1", Some(1), None);
    assert_eq!(
        test_replicas(&replica_set, Some(&deployment(NS, "d", "d1", Some(480)))),
        480
    );
    assert_eq!(test_replicas(&replica_set, None), 1);
}

#[test]
fn unset_replicas_default_to_one_as_kubernetes_does() {
    assert_eq!(
        test_replicas(&replica_set(NS, "rs", "u1", None, None), None),
        1
    );
    assert_eq!(
        test_replicas(
            &replica_set(NS, "rs", "u1", Some(5), None),
            Some(&deployment(NS, "d", "d1", None))
        ),
        1
    );
    assert_eq!(
        test_replicas(&replica_set(NS, "rs", "u1", Some(-2), None), None),
        0
    );
}

/// A lookup over stores holding exactly these objects, with a client that cannot connect
/// (port 9 on 127.0.0.1 refuses), so every cache miss ends in `Unavailable`.
fn lookup(replica_sets: &[ReplicaSet], deployments: &[Deployment]) -> OwnerLookup {
    let mut rs_writer = Writer::<ReplicaSet>::default();
    for rs in replica_sets {
        rs_writer.apply_watcher_event(&Event::Apply(rs.clone()));
    }
    let mut d_writer = Writer::<Deployment>::default();
    for d in deployments {
        d_writer.apply_watcher_event(&Event::Apply(d.clone()));
    }
    let config = kube::Config::new("http://127.0.0.1:9".parse().expect("valid URL"));
    let client = kube::Client::try_from(config).expect("client for an unreachable server");
    OwnerLookup::from_parts(client, rs_writer.as_reader(), d_writer.as_reader())
}

#[tokio::test]
async fn cached_owners_give_the_deployments_replicas() {
    let lookup = lookup(
        &[replica_set(
            NS,
            "game-7d9f",
            "u1",
            Some(2),
            Some(owner_reference("Deployment", "game", "d1", Some(true))),
        )],
        &[deployment(NS, "game", "d1", Some(480))],
    );
    let pod = mk_pod(vec![owner_reference(
        "ReplicaSet",
        "game-7d9f",
        "u1",
        Some(true),
    )]);
    assert_eq!(lookup.replicas(&pod, NS).await, OwnerReplicas::Known(480));
}

#[tokio::test]
async fn a_replica_set_without_deployment_gives_its_own_replicas() {
    let lookup = lookup(&[replica_set(NS, "plain", "u1", Some(7), None)], &[]);
    let pod = mk_pod(vec![owner_reference(
        "ReplicaSet",
        "plain",
        "u1",
        Some(true),
    )]);
    assert_eq!(lookup.replicas(&pod, NS).await, OwnerReplicas::Known(7));
}

#[tokio::test]
async fn a_pod_without_replica_set_has_no_owner_and_needs_no_api() {
    let lookup = OwnerLookup::unavailable("no API");
    assert_eq!(
        lookup.replicas(&mk_pod(vec![]), NS).await,
        OwnerReplicas::NoOwner
    );
}

#[tokio::test]
async fn a_cache_miss_that_the_api_cannot_answer_is_unavailable_with_the_reason() {
    let lookup = lookup(&[], &[]);
    let pod = mk_pod(vec![owner_reference(
        "ReplicaSet",
        "game-7d9f",
        "u1",
        Some(true),
    )]);
    match lookup.replicas(&pod, NS).await {
        OwnerReplicas::Unavailable(why) => {
            assert!(
                why.contains("cannot read ReplicaSet loadtest/game-7d9f"),
                "{why}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cached_object_with_another_uid_is_not_the_owner() {
    // Same name, but recreated: the pod's owner is gone from the cache, so it is looked up.
    let lookup = lookup(
        &[replica_set(NS, "game-7d9f", "new-uid", Some(2), None)],
        &[],
    );
    let pod = mk_pod(vec![owner_reference(
        "ReplicaSet",
        "game-7d9f",
        "old-uid",
        Some(true),
    )]);
    assert!(matches!(
        lookup.replicas(&pod, NS).await,
        OwnerReplicas::Unavailable(_)
    ));
}

#[tokio::test]
async fn a_replica_set_in_another_namespace_is_not_the_owner() {
    let lookup = lookup(&[replica_set(NS, "game-7d9f", "u1", Some(2), None)], &[]);
    let pod = mk_pod(vec![owner_reference(
        "ReplicaSet",
        "game-7d9f",
        "u1",
        Some(true),
    )]);
    assert!(matches!(
        lookup.replicas(&pod, "elsewhere").await,
        OwnerReplicas::Unavailable(_)
    ));
}

#[tokio::test]
async fn without_api_access_the_lookup_says_why() {
    let lookup = OwnerLookup::unavailable("no Kubernetes API configuration found");
    let pod = mk_pod(vec![owner_reference(
        "ReplicaSet",
        "game-7d9f",
        "u1",
        Some(true),
    )]);
    assert_eq!(
        lookup.replicas(&pod, NS).await,
        OwnerReplicas::Unavailable("no Kubernetes API configuration found".to_string())
    );
}
