//! The offline benchmark: the pure parts of the pipeline, with no cluster and no clock.
//!
//! - `plan`: `plan::plan` on `examples/tenant.yaml` (parse, validate, build, render YAML), and
//!   `desired::desired` alone, on a cluster with one node in Paris and Velero; throughput in
//!   objects rendered or built.
//! - `controls`: `controls::evaluate` for the tenant of `examples/tenant.yaml` with 100 pods on
//!   10 nodes in Paris (AWS eu-west-3), 10 bound encrypted volumes, everything built in place
//!   (every control this version evaluates passes); throughput in pods. Then
//!   `controls::next_report` over the 18 evaluations; throughput in controls.
//! - `regions`: `RegionCatalogue::locate_node` and `placement::allowed_regions` over 1,000 nodes
//!   of four providers; throughput in nodes.
//!
//! Run with `cargo bench -p ft-core --bench offline`.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ft_core::api::{ControlResult, FIELD_MANAGER, FranceTravailTenant};
use ft_core::controls::{
    Catalogue, ClusterFacts, Evaluation, Inputs, NOT_IN_THIS_VERSION, TenantView, evaluate,
    next_report,
};
use ft_core::desired::{Desired, Facts, desired};
use ft_core::placement::allowed_regions;
use ft_core::placement::regions::{Location, RegionCatalogue};
use ft_core::plan::{parse_tenants, plan};
use ft_core::settings::BuildSettings;
use ft_core::validate::validate_for_cluster;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const TENANT_YAML: &str = include_str!("../../examples/tenant.yaml");

/// Pods, nodes and volumes of the evaluation case.
const PODS: usize = 100;
const NODES: usize = 10;
/// Nodes of the production pool, among `NODES`.
const POOL_NODES: usize = 4;
const VOLUMES: usize = 10;
/// Nodes of the region benchmarks.
const CLUSTER_NODES: usize = 1_000;

/// The tenant's own encrypted class, which the operator makes and its volumes use (ENC-1, ENC-2).
const TENANT_CLASS: &str = "ft-offres-emploi-encrypted";
const POOL_LABEL: &str = "node-pool.example.org/name";
const NAMESPACES: [&str; 2] = ["offres-emploi-prod", "offres-emploi-dev"];

fn tenant() -> FranceTravailTenant {
    let mut tenants = parse_tenants(TENANT_YAML).expect("examples/tenant.yaml parses");
    assert_eq!(tenants.len(), 1, "examples/tenant.yaml holds one tenant");
    tenants.remove(0)
}

fn catalogue() -> RegionCatalogue {
    RegionCatalogue::embedded().expect("embedded region catalogue")
}

fn object<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).expect("a valid object")
}

// ---------------------------------------------------------------------------------------------
// plan
// ---------------------------------------------------------------------------------------------

/// The instant every case is judged at: the example's grants are in force.
fn now() -> Timestamp {
    "2026-11-22T12:00:00Z".parse().expect("a valid timestamp")
}

fn bench_plan(c: &mut Criterion) {
    let settings = BuildSettings::default();
    let tenant = tenant();
    let catalogue = catalogue();
    let nodes = vec![Arc::new(paris_node(0))];
    let restoring = BTreeSet::new();
    let facts = Facts {
        settings: &settings,
        nodes: &nodes,
        catalogue: &catalogue,
        provider: None,
        velero: Some(true),
        restoring: &restoring,
        production_pools: &[],
    };
    let valid = validate_for_cluster(&tenant, &settings).expect("examples/tenant.yaml is valid");
    let objects = desired(valid, &facts, now())
        .to_values()
        .expect("renders")
        .len() as u64;
    // The bench measures the successful path.
    plan(TENANT_YAML, &facts, now()).expect("examples/tenant.yaml plans");

    let mut group = c.benchmark_group("plan");
    group.throughput(Throughput::Elements(objects));
    group.bench_function("plan(examples/tenant.yaml)", |b| {
        b.iter(|| plan(black_box(TENANT_YAML), black_box(&facts), now()))
    });
    group.bench_function("desired(examples/tenant.yaml)", |b| {
        b.iter(|| desired(black_box(valid), black_box(&facts), now()))
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// controls
// ---------------------------------------------------------------------------------------------

/// A namespace as the API server returns it after the operator applied it.
fn applied(ns: &Namespace) -> PartialObjectMeta<Namespace> {
    let mut meta = ns.metadata.clone();
    meta.managed_fields = Some(vec![ManagedFieldsEntry {
        manager: Some(FIELD_MANAGER.into()),
        operation: Some("Apply".into()),
        api_version: Some("v1".into()),
        ..Default::default()
    }]);
    meta.into_response_partial()
}

fn arcs<T: Clone>(items: &[T]) -> Vec<Arc<T>> {
    items.iter().cloned().map(Arc::new).collect()
}

fn paris_node(i: usize) -> Node {
    let name = format!("paris-{i}");
    let zone = ["eu-west-3a", "eu-west-3b", "eu-west-3c"][i % 3];
    let pool = if i < POOL_NODES {
        "production"
    } else {
        "general"
    };
    object(json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/region": "eu-west-3",
                "topology.kubernetes.io/zone": zone,
                POOL_LABEL: pool,
            },
        },
        "spec": { "providerID": format!("aws:///{zone}/{name}") },
    }))
}

/// Half the pods in production on its pool, half in development on the general nodes.
fn pod(i: usize) -> Pod {
    let production = i.is_multiple_of(2);
    let (namespace, node) = if production {
        (NAMESPACES[0], i % POOL_NODES)
    } else {
        (NAMESPACES[1], POOL_NODES + i % (NODES - POOL_NODES))
    };
    let component = if production { "frontend" } else { "backend" };
    object(json!({
        "metadata": {
            "name": format!("web-{i}"),
            "namespace": namespace,
            "labels": { "app.kubernetes.io/component": component },
        },
        "spec": {
            "nodeName": format!("paris-{node}"),
            "containers": [{
                "name": "web",
                "image": "registry.example.org/offres/web:1.4.2",
            }],
        },
    }))
}

fn claim(i: usize) -> PersistentVolumeClaim {
    object(json!({
        "metadata": { "name": format!("data-{i}"), "namespace": NAMESPACES[i % 2] },
        "spec": {
            "storageClassName": TENANT_CLASS,
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": "20Gi" } },
            "volumeName": format!("pv-{i}"),
        },
    }))
}

fn volume(i: usize) -> PersistentVolume {
    object(json!({
        "metadata": { "name": format!("pv-{i}") },
        "spec": {
            "capacity": { "storage": "20Gi" },
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": TENANT_CLASS,
            "csi": { "driver": "driver.longhorn.io", "volumeHandle": format!("vol-{i:017x}") },
            "nodeAffinity": { "required": { "nodeSelectorTerms": [{
                "matchExpressions": [{
                    "key": "topology.kubernetes.io/region",
                    "operator": "In",
                    "values": ["eu-west-3"],
                }],
            }]}},
        },
    }))
}

fn storage_class() -> StorageClass {
    object(json!({
        "metadata": {
            "name": "gp3-encrypted",
            "annotations": { "storageclass.kubernetes.io/is-default-class": "true" },
        },
        "provisioner": "ebs.csi.aws.com",
        "parameters": { "type": "gp3", "encrypted": "true" },
    }))
}

/// A workload's own binding: a ServiceAccount of its namespace.
fn workload_binding(namespace: &str) -> RoleBinding {
    object(json!({
        "metadata": { "name": "web-workload", "namespace": namespace },
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "web-config-reader",
        },
        "subjects": [{ "kind": "ServiceAccount", "name": "web", "namespace": namespace }],
    }))
}

/// The tenant of examples/tenant.yaml, everything built for it in place and unchanged.
struct Case {
    tenant: FranceTravailTenant,
    desired: Desired,
    view: TenantView,
    facts: ClusterFacts,
    now: Timestamp,
}

impl Case {
    fn healthy() -> Self {
        let tenant = tenant();
        let settings = BuildSettings::default();
        let regions = catalogue();
        let nodes: Vec<Arc<Node>> = (0..NODES).map(|i| Arc::new(paris_node(i))).collect();
        let restoring = BTreeSet::new();
        let facts = Facts {
            settings: &settings,
            nodes: &nodes,
            catalogue: &regions,
            // No Schedule, as before Velero is known: the backup controls judge as cheaply.
            provider: None,
            velero: None,
            restoring: &restoring,
            production_pools: &[],
        };
        let valid = validate_for_cluster(&tenant, &settings).expect("a valid tenant");
        let desired = desired(valid, &facts, now());
        let fixed = ft_core::admission::fixed();
        let view = TenantView {
            namespaces: desired
                .namespaces
                .iter()
                .map(|ns| Arc::new(applied(ns)))
                .collect(),
            network_policies: arcs(&desired.network_policies),
            resource_quotas: arcs(&desired.resource_quotas),
            limit_ranges: arcs(&desired.limit_ranges),
            pods: (0..PODS).map(|i| Arc::new(pod(i))).collect(),
            pool_pods: Vec::new(),
            persistent_volume_claims: (0..VOLUMES).map(|i| Arc::new(claim(i))).collect(),
            persistent_volumes: (0..VOLUMES).map(|i| Arc::new(volume(i))).collect(),
            // The workloads' own bindings, and the access grants the operator applied.
            role_bindings: NAMESPACES
                .iter()
                .map(|ns| Arc::new(workload_binding(ns)))
                .chain(arcs(&desired.role_bindings))
                .collect(),
            nodes: (0..NODES).map(|i| Arc::new(paris_node(i))).collect(),
            // The tenant's class as applied, and the cluster's default one.
            storage_classes: arcs(&desired.storage_classes)
                .into_iter()
                .chain([Arc::new(storage_class())])
                .collect(),
            // What the cluster-wide admission policies enforce, and the policies as installed.
            environment_policies: arcs(&desired.environment_policies),
            validating_admission_policies: arcs(&fixed.validating_admission_policies),
            validating_admission_policy_bindings: arcs(&fixed.validating_admission_policy_bindings),
            mutating_admission_policies: arcs(&fixed.mutating_admission_policies),
            mutating_admission_policy_bindings: arcs(&fixed.mutating_admission_policy_bindings),
            key_fingerprint: Some("sha256:0123456789abcdef".into()),
            // No location nor Schedule: the backup controls judge, and fail, as cheaply as ever.
            velero: Default::default(),
        };
        let facts = ClusterFacts {
            regions: Arc::new(regions),
            provider: None,
            backup_engine: Some(true),
            confinement: Default::default(),
        };
        Self {
            tenant,
            desired,
            view,
            facts,
            now: now(),
        }
    }

    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            tenant: &self.tenant,
            desired: Ok(&self.desired),
            observed: &self.view,
            facts: &self.facts,
            now: self.now,
        }
    }
}

fn bench_controls(c: &mut Criterion) {
    let case = Case::healthy();
    let evaluations: Vec<Evaluation> = evaluate(&case.inputs());
    // The bench measures a healthy tenant: every control this version evaluates passes (none is
    // skipped as not applicable, so the pods, nodes and volumes are all looked at), but the
    // controls of backups and exports (BAK-1, BAK-2, REV-1): they find no Velero object, and
    // judge so.
    for e in &evaluations {
        let expected = e.finding.result == ControlResult::Pass
            || (e.finding.result == ControlResult::Unknown
                && e.finding.reason == NOT_IN_THIS_VERSION)
            || (["BAK-1", "BAK-2", "REV-1"].contains(&e.id)
                && e.finding.result != ControlResult::NotApplicable);
        assert!(
            expected,
            "{} is {:?} ({}) on the benchmark's healthy case: {}",
            e.id, e.finding.result, e.finding.reason, e.finding.message
        );
    }
    let catalogue = Catalogue::embedded().expect("embedded catalogue");
    let now = Time(case.now);
    let previous = next_report(
        &catalogue,
        &evaluations,
        None,
        Some(1),
        &now,
        None,
        Vec::new(),
    );

    let mut group = c.benchmark_group("controls");
    group.throughput(Throughput::Elements(PODS as u64));
    group.bench_function("evaluate(100 pods, 10 nodes, 10 volumes)", |b| {
        b.iter(|| evaluate(black_box(&case.inputs())))
    });
    group.throughput(Throughput::Elements(evaluations.len() as u64));
    group.bench_function("next_report(first, None)", |b| {
        b.iter(|| {
            next_report(
                black_box(&catalogue),
                black_box(&evaluations),
                None,
                Some(1),
                &now,
                None,
                Vec::new(),
            )
        })
    });
    group.bench_function("next_report(unchanged, None)", |b| {
        b.iter(|| {
            next_report(
                black_box(&catalogue),
                black_box(&evaluations),
                Some(black_box(&previous)),
                Some(1),
                &now,
                None,
                Vec::new(),
            )
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------------------------
// regions
// ---------------------------------------------------------------------------------------------

/// A node of a large cluster spread over four providers and eight regions, six of them in the
/// tenant's allowed countries (FR, DE).
fn cluster_node(i: usize) -> Node {
    const AZURE: &str = "azure:///subscriptions/0000/resourceGroups/ft/providers/Microsoft.Compute/virtualMachines/";
    const PLACES: [(&str, &str); 8] = [
        ("aws:///eu-west-3a/", "eu-west-3"),
        ("aws:///eu-central-1a/", "eu-central-1"),
        ("aws:///eu-west-1a/", "eu-west-1"),
        ("aws:///us-east-1a/", "us-east-1"),
        (AZURE, "francecentral"),
        (AZURE, "germanywestcentral"),
        ("gce://offres/europe-west9-a/", "europe-west9"),
        ("openstack:///", "GRA7"),
    ];
    let (prefix, region) = PLACES[i % PLACES.len()];
    let name = format!("node-{i}");
    object(json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/region": region,
            },
        },
        "spec": { "providerID": format!("{prefix}{name}") },
    }))
}

fn bench_regions(c: &mut Criterion) {
    let catalogue = catalogue();
    let tenant = tenant();
    let nodes: Vec<Arc<Node>> = (0..CLUSTER_NODES)
        .map(|i| Arc::new(cluster_node(i)))
        .collect();
    // Every node is placed, and six regions of the eight are allowed.
    assert!(
        nodes
            .iter()
            .all(|n| matches!(catalogue.locate_node(n, None), Location::Placed(_)))
    );
    assert_eq!(
        allowed_regions(&tenant, &nodes, &catalogue, None),
        BTreeSet::from(
            [
                "GRA7",
                "eu-central-1",
                "eu-west-3",
                "europe-west9",
                "francecentral",
                "germanywestcentral",
            ]
            .map(String::from)
        )
    );

    let mut group = c.benchmark_group("regions");
    group.throughput(Throughput::Elements(CLUSTER_NODES as u64));
    group.bench_function("locate_node(1000 nodes)", |b| {
        b.iter(|| {
            for node in &nodes {
                black_box(catalogue.locate_node(black_box(node), None));
            }
        })
    });
    group.bench_function("allowed_regions(1000 nodes)", |b| {
        b.iter(|| allowed_regions(black_box(&tenant), black_box(&nodes), &catalogue, None))
    });
    group.finish();
}

criterion_group! {
    name = offline;
    // Shorter than the defaults (3 s warm-up, 5 s measurement) so the whole run stays short on
    // a small machine; each function still gets 100 samples.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench_plan, bench_controls, bench_regions
}
criterion_main!(offline);
