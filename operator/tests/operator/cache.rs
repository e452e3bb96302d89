//! The caches a pass reads: filed by namespace and tenant so that a pass reads only its own
//! tenant's objects; the echoes of the operator's own writes, which wake nobody; the changes
//! that do wake a tenant; and a pass waiting until the caches show its writes.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::Event;
use serde_json::json;

use ft_core::applied::Awaited;
use ft_operator::observe::{Echoes, cache, empty_stores};
use ft_operator::watch::{changes, content};

fn policy(namespace: &str, name: &str, tenant: &str, version: &str) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": namespace, "resourceVersion": version,
            "labels": {"hosting.francetravail.fr/tenant": tenant},
        },
        "spec": {"podSelector": {}},
    }))
    .unwrap()
}

fn names(objects: Vec<std::sync::Arc<NetworkPolicy>>) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    names.sort();
    names
}

#[test]
fn objects_are_found_by_namespace_and_tenant_through_changes_and_relists() {
    let (policies, mut writer) = cache::<NetworkPolicy>();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitApply(policy("a-prod", "deny", "a", "1")));
    writer.apply_watcher_event(&Event::InitApply(policy("b-prod", "deny", "b", "2")));
    writer.apply_watcher_event(&Event::InitDone);
    writer.apply_watcher_event(&Event::Apply(policy("a-dev", "deny", "a", "3")));

    let a = ["a-prod".to_string(), "a-dev".to_string()];
    assert_eq!(
        names(policies.in_namespaces(&a)),
        ["a-dev/deny", "a-prod/deny"]
    );
    assert_eq!(
        names(policies.of_tenant("a")),
        ["a-dev/deny", "a-prod/deny"]
    );
    assert_eq!(names(policies.of_tenant("b")), ["b-prod/deny"]);

    // Relabelled to another tenant: filed under it, and no longer under the first.
    writer.apply_watcher_event(&Event::Apply(policy("a-dev", "deny", "b", "4")));
    assert_eq!(names(policies.of_tenant("a")), ["a-prod/deny"]);
    assert_eq!(
        names(policies.of_tenant("b")),
        ["a-dev/deny", "b-prod/deny"]
    );
    // The namespace index holds the new version only.
    let filed = policies.in_namespaces(&["a-dev".to_string()]);
    assert_eq!(filed.len(), 1);
    assert_eq!(filed[0].metadata.resource_version.as_deref(), Some("4"));

    writer.apply_watcher_event(&Event::Delete(policy("a-prod", "deny", "a", "5")));
    assert!(policies.of_tenant("a").is_empty());

    // A relist that no longer holds b's policy: gone from the index too, once complete; until
    // then a pass still reads what the cache held.
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitApply(policy("a-dev", "deny", "b", "4")));
    assert_eq!(
        names(policies.of_tenant("b")),
        ["a-dev/deny", "b-prod/deny"]
    );
    writer.apply_watcher_event(&Event::InitDone);
    assert_eq!(names(policies.of_tenant("b")), ["a-dev/deny"]);
    assert!(policies.in_namespaces(&["b-prod".to_string()]).is_empty());
}

#[test]
fn the_echo_of_a_write_is_recognised_once_and_only_at_its_version() {
    let echoes = Echoes::default();
    echoes.expect("NetworkPolicy/a-prod/deny".into(), "7".into());
    // An older event of the same object is news.
    assert!(!echoes.of(&policy("a-prod", "deny", "a", "6")));
    assert!(echoes.of(&policy("a-prod", "deny", "a", "7")));
    // Only once: the same version again, from a relist, is not taken for a second echo.
    assert!(!echoes.of(&policy("a-prod", "deny", "a", "7")));
    // Another object at the same version is news.
    echoes.expect("NetworkPolicy/a-prod/deny".into(), "8".into());
    assert!(!echoes.of(&policy("a-dev", "deny", "a", "8")));
}

#[tokio::test]
async fn a_status_written_by_someone_else_wakes_nobody_a_deletion_does() {
    let quota = |version: &str, used: &str, hard: &str| -> ResourceQuota {
        serde_json::from_value(json!({
            "metadata": {"name": "q", "namespace": "a-prod", "resourceVersion": version},
            "spec": {"hard": {"pods": hard}},
            "status": {"used": {"pods": used}},
        }))
        .unwrap()
    };
    let events = futures::stream::iter(
        [
            Event::Apply(quota("1", "0", "10")),
            // The quota controller counts pods: status only.
            Event::Apply(quota("2", "3", "10")),
            Event::Apply(quota("3", "3", "20")),
            Event::Delete(quota("4", "3", "20")),
        ]
        .map(Ok),
    );
    let woken: Vec<String> = changes(events, content)
        .map(|o| o.unwrap().metadata.resource_version.unwrap())
        .collect()
        .await;
    assert_eq!(woken, ["1", "3", "4"]);
}

#[tokio::test]
async fn a_pass_waits_until_the_caches_show_its_writes_and_no_longer() {
    let (observed, mut writers) = empty_stores();
    let written = [
        Awaited {
            key: "NetworkPolicy/a-prod/deny".into(),
            version: Some("10".into()),
        },
        Awaited {
            key: "NetworkPolicy/a-prod/retired".into(),
            version: None,
        },
    ];
    writers
        .network_policies
        .apply_watcher_event(&Event::Apply(policy("a-prod", "retired", "a", "3")));
    // Nothing shows the writes: the wait ends at its limit.
    assert!(!observed.show(&written, Duration::from_millis(50)).await);

    let shown = tokio::spawn({
        let observed = observed.clone();
        let written = written.clone();
        async move { observed.show(&written, Duration::from_secs(30)).await }
    });
    writers
        .network_policies
        .apply_watcher_event(&Event::Apply(policy("a-prod", "deny", "a", "10")));
    writers
        .network_policies
        .apply_watcher_event(&Event::Delete(policy("a-prod", "retired", "a", "11")));
    assert!(shown.await.unwrap());
}

#[test]
fn a_cached_tenant_keeps_who_set_its_annotations_and_no_other_field_set() {
    use ft_operator::watch::trim::annotation_managers_only;
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/tenant.yaml"
    ))
    .unwrap();
    let mut tenant = ft_core::plan::parse_tenants(&yaml).unwrap().remove(0);
    tenant.metadata.managed_fields = serde_json::from_value(json!([
        {"manager": "kubectl", "operation": "Apply", "time": "2026-12-07T10:00:00Z",
         "fieldsType": "FieldsV1", "fieldsV1": {
            "f:metadata": {"f:annotations": {"f:hosting.francetravail.fr/confirm-deletion": {}}},
            "f:spec": {"f:environments": {}}}},
        {"manager": "ft-operator", "operation": "Apply", "subresource": "status",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}}}},
    ]))
    .unwrap();
    annotation_managers_only(&mut tenant.metadata);

    let entries = tenant.metadata.managed_fields.clone().unwrap();
    assert_eq!(
        entries[0].fields_v1.as_ref().unwrap().0,
        json!({"f:metadata": {"f:annotations": {"f:hosting.francetravail.fr/confirm-deletion": {}}}})
    );
    assert!(entries[1].fields_v1.is_none(), "the status set is dropped");
    assert_eq!(
        ft_core::meta::annotation_set_by(&tenant, "hosting.francetravail.fr/confirm-deletion"),
        "field manager kubectl (Apply) at 2026-12-07T10:00:00Z"
    );
}

/// A policy as the operator makes many of: selectors and rules naming its tenant.
fn rich_policy(namespace: &str, name: &str, tenant: &str, version: u32) -> NetworkPolicy {
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": namespace, "resourceVersion": version.to_string(),
            "uid": format!("00000000-0000-0000-0000-{version:012}"),
            "labels": {
                "hosting.francetravail.fr/tenant": tenant,
                "app.kubernetes.io/managed-by": "ft-operator",
            },
            "managedFields": [{"manager": "ft-operator", "operation": "Apply"}],
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": format!("{tenant}-{name}"),
            }}}], "ports": [{"port": 8000 + version % 100, "protocol": "TCP"}]}],
        },
    }))
    .unwrap()
}

#[test]
fn a_packed_cache_gives_back_exactly_what_was_filed_however_many_it_holds() {
    let (policies, mut writer) = cache::<NetworkPolicy>();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    // Enough objects that the first ones make the kind's dictionary and the others are
    // compressed against it.
    let mut filed = Vec::new();
    for i in 0..200u32 {
        let tenant = format!("tenant-{i}");
        let object = rich_policy(&format!("{tenant}-prod"), "allow-web", &tenant, i);
        writer.apply_watcher_event(&Event::Apply(object.clone()));
        filed.push(object);
    }
    assert_eq!(policies.len(), 200);
    for object in &filed {
        let key = kube::runtime::reflector::ObjectRef::from_obj(object);
        assert_eq!(policies.get(&key).as_deref(), Some(object));
        assert_eq!(policies.get_json(&key), Some(json!(object)));
        let tenant = &object.metadata.labels.as_ref().unwrap()["hosting.francetravail.fr/tenant"];
        assert_eq!(
            policies
                .of_tenant(tenant)
                .iter()
                .map(|o| (**o).clone())
                .collect::<Vec<_>>(),
            std::slice::from_ref(object)
        );
    }
    // A changed object is given back as it is now.
    let changed = rich_policy("tenant-7-prod", "allow-web", "tenant-7", 9999);
    writer.apply_watcher_event(&Event::Apply(changed.clone()));
    assert_eq!(
        policies.in_namespaces(&["tenant-7-prod".to_string()]),
        [std::sync::Arc::new(changed)]
    );
}

#[test]
fn a_namespace_s_objects_are_its_own_and_not_those_of_a_namespace_it_prefixes() {
    let (policies, mut writer) = cache::<NetworkPolicy>();
    writer.apply_watcher_event(&Event::Init);
    for ns in ["a", "a-b", "a.b", "a0", "ab", "b"] {
        writer.apply_watcher_event(&Event::InitApply(policy(ns, "deny", "t", "1")));
    }
    writer.apply_watcher_event(&Event::InitApply(policy("a", "allow", "t", "1")));
    writer.apply_watcher_event(&Event::InitDone);
    assert_eq!(
        names(policies.in_namespaces(&["a".to_string()])),
        ["a/allow", "a/deny"]
    );
    assert_eq!(
        names(policies.in_namespaces(&["a0".to_string(), "b".to_string()])),
        ["a0/deny", "b/deny"]
    );
}

#[test]
fn a_tenant_s_view_holds_its_own_class_those_its_claims_name_and_the_default_one() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use k8s_openapi::api::storage::v1::StorageClass;
    use kube::ResourceExt;

    let class = |name: &str, default: bool| -> StorageClass {
        let annotations = if default {
            json!({"storageclass.kubernetes.io/is-default-class": "true"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": "1", "annotations": annotations},
            "provisioner": "example.org/disk",
        }))
        .expect("a StorageClass")
    };
    let claim = |name: &str, class: Option<&str>| -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "t-prod", "resourceVersion": "1"},
            "spec": {"storageClassName": class},
        }))
        .expect("a PersistentVolumeClaim")
    };
    let own = ft_core::encryption::class_name("t");
    let (observed, mut w) = empty_stores();
    w.storage_classes.apply_watcher_event(&Event::Init);
    for c in [
        class(&own, false),
        class(&ft_core::encryption::class_name("u"), false),
        class("fast", false),
        class("slow", false),
        class("standard", true),
    ] {
        w.storage_classes.apply_watcher_event(&Event::InitApply(c));
    }
    w.storage_classes.apply_watcher_event(&Event::InitDone);
    w.persistent_volume_claims.apply_watcher_event(&Event::Init);
    for c in [claim("data", Some("fast")), claim("logs", None)] {
        w.persistent_volume_claims
            .apply_watcher_event(&Event::InitApply(c));
    }
    w.persistent_volume_claims
        .apply_watcher_event(&Event::InitDone);

    let view = observed.view("t", &["t-prod".to_string()].into());
    let mut names: Vec<String> = view.storage_classes.iter().map(|c| c.name_any()).collect();
    names.sort();
    let mut expected = vec![own, "fast".to_string(), "standard".to_string()];
    expected.sort();
    assert_eq!(
        names, expected,
        "another tenant's class and an unnamed one stay out"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pass_reads_a_tenant_first_listed_in_a_relist_once_the_relist_completes() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/tenant.yaml"
    ))
    .unwrap();
    let tenant = ft_core::plan::parse_tenants(&yaml).unwrap().remove(0);
    let name = tenant.metadata.name.clone().unwrap();
    let (observed, mut writers) = empty_stores();
    writers.mark_all_listed();

    // The tenants are listed again, and the controller hears of this one before the relist
    // is complete: its pass waits until the cache files it.
    writers.tenants.apply_watcher_event(&Event::Init);
    writers
        .tenants
        .apply_watcher_event(&Event::InitApply(tenant.clone()));
    let pass = tokio::spawn({
        let (observed, name) = (observed.clone(), name.clone());
        async move { observed.tenant(&name, Duration::from_secs(30)).await }
    });
    tokio::task::yield_now().await;
    assert!(!pass.is_finished(), "read before the relist completed");
    writers.tenants.apply_watcher_event(&Event::InitDone);
    let read = pass
        .await
        .unwrap()
        .expect("filed once the relist completed");
    assert_eq!(
        serde_json::to_value(&*read).unwrap(),
        serde_json::to_value(&tenant).unwrap(),
        "the tenant as listed, unpacked"
    );

    // A tenant the cache never files: none, once the wait is over.
    assert!(
        observed
            .tenant("gone", Duration::from_secs(30))
            .await
            .is_none()
    );
}
