//! Pod placement (CLD-74, CLD-25): the regions a tenant's pods may run in, resolved from the
//! cluster's nodes and the region catalogue; the production pool each environment must use or
//! avoid; the JSON patch that confines a pod, the judgement that refuses one, and the admission
//! policies built from them.
//!
//! Patched pods are judged by where Kubernetes would let them run: an independent model of
//! required node affinity, evaluated over a grid of nodes, against the rules as written (a node
//! in an allowed region; on the production pool in production, off it elsewhere).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ft_core::api::{Country, EnvironmentKind, FranceTravailTenant, NodePool};
use ft_core::placement::admission::Confinement;
use ft_core::placement::regions::RegionCatalogue;
use ft_core::placement::{PodPlacement, Pool, allowed_regions, placements};
use ft_core::placement::{environment_policy, placement_mutation, placement_validation};
use k8s_openapi::api::admissionregistration::v1::{MatchResources, ParamKind, ParamRef};
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const FIXTURES: &str = "core/tests/fixtures/placement";
const REGION: &str = "topology.kubernetes.io/region";
const POOL: &str = "node-pool.example.org/name";
const TIER: &str = "node-pool.example.org/tier";
const TENANT: &str = "offres-emploi";
const TENANT_LABEL: &str = "hosting.francetravail.fr/tenant";
const ENVIRONMENT_LABEL: &str = "hosting.francetravail.fr/environment";
/// The allowed regions of the patch and validation tests.
const ALLOWED: [&str; 3] = ["eu-central-1", "eu-west-3", "francecentral"];

type Labels = BTreeMap<String, String>;

/// The documents of a fixture file.
fn documents(file: &str) -> Vec<Value> {
    let text = common::read(&format!("{FIXTURES}/{file}"));
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

fn nodes(file: &str) -> Vec<Arc<Node>> {
    documents(file)
        .into_iter()
        .map(|d| Arc::new(serde_json::from_value(d).unwrap_or_else(|e| panic!("{file}: {e}"))))
        .collect()
}

/// Every pod of `pods.yaml`, by name, as JSON (what a JSON patch applies to).
fn pods() -> Vec<(String, Value)> {
    documents("pods.yaml")
        .into_iter()
        .map(|d| {
            let name = d["metadata"]["name"]
                .as_str()
                .expect("a named pod")
                .to_string();
            // Every fixture must be a valid Pod.
            typed(&d);
            (name, d)
        })
        .collect()
}

fn pod(name: &str) -> Value {
    pods()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no pod {name} in pods.yaml"))
        .1
}

fn typed(pod: &Value) -> Pod {
    serde_json::from_value(pod.clone()).unwrap_or_else(|e| panic!("not a Pod: {e}: {pod}"))
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// examples/tenant.yaml: prod on the pool `node-pool.example.org/name: production`, dev;
/// allowed countries FR and DE.
fn tenant() -> FranceTravailTenant {
    common::tenant("examples/tenant.yaml")
}

fn resolve(tenant: &FranceTravailTenant, file: &str, provider: Option<&str>) -> BTreeSet<String> {
    let catalogue = RegionCatalogue::embedded().expect("the embedded catalogue is valid");
    allowed_regions(tenant, &nodes(file), &catalogue, provider)
}

fn placement(environment: &str, regions: &[&str], pool: Pool) -> PodPlacement {
    PodPlacement {
        tenant: TENANT.into(),
        environment: environment.into(),
        regions: set(regions),
        pool,
    }
}

fn production_pool() -> Labels {
    labels(&[(POOL, "production")])
}

fn prod() -> PodPlacement {
    placement("prod", &ALLOWED, Pool::Required(production_pool()))
}

fn dev() -> PodPlacement {
    placement("dev", &ALLOWED, Pool::Excluded(vec![production_pool()]))
}

fn paris_only() -> PodPlacement {
    placement("dev", &["eu-west-3"], Pool::Any)
}

/// A production pool told apart by two labels: a node is off it when either differs.
fn dev_two_labels() -> PodPlacement {
    placement(
        "dev",
        &ALLOWED,
        Pool::Excluded(vec![labels(&[(POOL, "production"), (TIER, "gold")])]),
    )
}

/// Two production environments, two pools to avoid.
fn dev_two_pools() -> PodPlacement {
    placement(
        "dev",
        &ALLOWED,
        Pool::Excluded(vec![production_pool(), labels(&[(TIER, "gold")])]),
    )
}

fn every_placement() -> Vec<PodPlacement> {
    vec![
        prod(),
        dev(),
        paris_only(),
        dev_two_labels(),
        dev_two_pools(),
    ]
}

/// The pod once `operations` are applied.
fn apply(pod: &Value, operations: Vec<Value>) -> Value {
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(operations))
        .unwrap_or_else(|e| panic!("not a JSON patch: {e}"));
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| panic!("the patch fails: {e}"));
    patched
}

/// The pod as the placement's patch leaves it.
fn patched(placement: &PodPlacement, pod: &Value) -> Value {
    apply(pod, placement.patch(&typed(pod)))
}

fn required_terms(pod: &Value) -> Vec<Value> {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no required node selector terms: {pod}"))
}

/// A term's match expressions as `(key, operator, values)`.
fn expressions(term: &Value) -> Vec<(String, String, BTreeSet<String>)> {
    term["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let values = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| v.as_str().expect("a string value").to_string())
                .collect();
            (
                e["key"].as_str().expect("a key").to_string(),
                e["operator"].as_str().expect("an operator").to_string(),
                values,
            )
        })
        .collect()
}

fn expression(key: &str, operator: &str, values: &[&str]) -> (String, String, BTreeSet<String>) {
    (key.into(), operator.into(), set(values))
}

/// The pod without its required node affinity, and without the `nodeAffinity` and `affinity`
/// objects that would be left empty: what a placement patch must not change.
fn without_required(pod: &Value) -> Value {
    let mut pod = pod.clone();
    let spec = pod["spec"].as_object_mut().expect("a spec");
    if let Some(affinity) = spec.get_mut("affinity").and_then(Value::as_object_mut) {
        if let Some(node) = affinity
            .get_mut("nodeAffinity")
            .and_then(Value::as_object_mut)
        {
            node.remove("requiredDuringSchedulingIgnoredDuringExecution");
            if node.is_empty() {
                affinity.remove("nodeAffinity");
            }
        }
        if affinity.is_empty() {
            spec.remove("affinity");
        }
    }
    pod
}

// ---------------------------------------------------------------------------------------------
// Where Kubernetes would let a pod run, and where the rules say it may
// ---------------------------------------------------------------------------------------------

/// What node affinity sees of a node: its name and labels.
#[derive(Debug)]
struct NodeView {
    name: String,
    labels: Labels,
}

fn view(node: &Node) -> NodeView {
    NodeView {
        name: node.metadata.name.clone().expect("a named node"),
        labels: node.metadata.labels.clone().unwrap_or_default(),
    }
}

/// Nodes of every combination of the labels the fixtures use, region label absent included.
fn grid() -> Vec<NodeView> {
    let regions = [
        Some("eu-west-3"),
        Some("eu-central-1"),
        Some("francecentral"),
        Some("eu-west-2"),
        Some("us-east-1"),
        None,
    ];
    let pools = [Some("production"), Some("general"), None];
    let tiers = [Some("gold"), None];
    let disks = [Some("ssd"), None];
    let gpus = [Some("1"), None];
    let mut grid = Vec::new();
    for region in regions {
        for pool in pools {
            for tier in tiers {
                for disk in disks {
                    for gpu in gpus {
                        for name in ["node-x", "node-y"] {
                            let labels = [
                                (REGION, region),
                                (POOL, pool),
                                (TIER, tier),
                                ("disktype", disk),
                                ("gpu", gpu),
                            ]
                            .into_iter()
                            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v.to_string())))
                            .collect();
                            grid.push(NodeView {
                                name: name.into(),
                                labels,
                            });
                        }
                    }
                }
            }
        }
    }
    grid
}

/// One node selector requirement against a node's value for its key (Kubernetes semantics).
fn holds(requirement: &Value, value: Option<&str>) -> bool {
    let values: Vec<&str> = requirement["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match requirement["operator"].as_str() {
        Some("In") => value.is_some_and(|v| values.contains(&v)),
        Some("NotIn") => value.is_none_or(|v| !values.contains(&v)),
        Some("Exists") => value.is_some(),
        Some("DoesNotExist") => value.is_none(),
        Some(operator @ ("Gt" | "Lt")) => {
            let bound: i64 = values[0].parse().expect("an integer bound");
            value.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| {
                if operator == "Gt" {
                    v > bound
                } else {
                    v < bound
                }
            })
        }
        other => panic!("unknown operator {other:?}"),
    }
}

/// Whether the scheduler may put the pod on `node`: `spec.nodeSelector` matches and, when the
/// pod has required node affinity, one of its terms holds. Terms are ORed, a term's
/// requirements ANDed; `matchFields` test `metadata.name`; an empty term matches no node.
fn admits(pod: &Value, node: &NodeView) -> bool {
    let spec = &pod["spec"];
    let selected = spec["nodeSelector"].as_object().is_none_or(|selector| {
        selector
            .iter()
            .all(|(k, v)| node.labels.get(k).map(String::as_str) == v.as_str())
    });
    let required =
        &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    if required.is_null() {
        return selected;
    }
    let terms = required["nodeSelectorTerms"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    selected
        && terms.iter().any(|term| {
            let on_labels: Vec<&Value> = term["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            let on_fields: Vec<&Value> = term["matchFields"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            (!on_labels.is_empty() || !on_fields.is_empty())
                && on_labels.iter().all(|r| {
                    let key = r["key"].as_str().expect("a key");
                    holds(r, node.labels.get(key).map(String::as_str))
                })
                && on_fields.iter().all(|r| {
                    assert_eq!(
                        r["key"], "metadata.name",
                        "the only field a node selector knows"
                    );
                    holds(r, Some(&node.name))
                })
        })
}

/// Where the placement lets a pod run, from the rules: a node in one of the regions; in
/// production, carrying every label of the pool; elsewhere, off every production pool, that is
/// missing or differing on at least one of its labels.
fn may_run_on(placement: &PodPlacement, node: &NodeView) -> bool {
    let in_region = node
        .labels
        .get(REGION)
        .is_some_and(|r| placement.regions.contains(r));
    let in_pool = |pool: &Labels| pool.iter().all(|(k, v)| node.labels.get(k) == Some(v));
    let pool = match &placement.pool {
        Pool::Any => true,
        Pool::Required(pool) => in_pool(pool),
        Pool::Excluded(pools) => !pools.iter().any(in_pool),
    };
    in_region && pool
}

// ---------------------------------------------------------------------------------------------
// Resolution: allowed_regions
// ---------------------------------------------------------------------------------------------

#[test]
fn the_allowed_regions_are_those_of_the_nodes_in_the_allowed_countries() {
    // FR and DE: AWS Paris and Frankfurt, Azure France Central. Not London (GB), not
    // N. Virginia (US), not the node without a region label nor the one in an unknown region.
    assert_eq!(
        resolve(&tenant(), "nodes.yaml", None),
        set(&["eu-central-1", "eu-west-3", "francecentral"])
    );
}

#[test]
fn the_tenants_regions_narrow_its_countries() {
    let mut tenant = tenant();
    tenant.spec.placement.allowed_countries = vec![Country::FR];
    tenant.spec.placement.regions = vec!["francecentral".into()];
    assert_eq!(
        resolve(&tenant, "nodes.yaml", None),
        set(&["francecentral"])
    );

    // Compared ignoring case; the value kept is the nodes' label, which affinity matches exactly.
    tenant.spec.placement.regions = vec!["FranceCentral".into()];
    assert_eq!(
        resolve(&tenant, "nodes.yaml", None),
        set(&["francecentral"])
    );

    // Naming a region does not bring back a country the tenant does not allow.
    tenant.spec.placement.regions = vec!["francecentral".into(), "eu-central-1".into()];
    assert_eq!(
        resolve(&tenant, "nodes.yaml", None),
        set(&["francecentral"])
    );
}

#[test]
fn a_country_with_an_adequacy_decision_counts_only_once_the_tenant_lists_it() {
    let mut tenant = tenant();
    assert!(!resolve(&tenant, "nodes.yaml", None).contains("eu-west-2"));
    tenant.spec.placement.allowed_countries.push(Country::GB);
    assert_eq!(
        resolve(&tenant, "nodes.yaml", None),
        set(&["eu-central-1", "eu-west-2", "eu-west-3", "francecentral"])
    );
}

#[test]
fn the_provider_flag_places_every_node_for_that_provider() {
    // The catalogue itself: Outscale's eu-west-2 is in France, AWS's in Great Britain.
    let catalogue = RegionCatalogue::embedded().expect("the embedded catalogue is valid");
    let outscale: BTreeMap<&str, &str> = catalogue
        .regions_of("outscale")
        .expect("outscale is in the catalogue")
        .collect();
    assert_eq!(outscale.get("eu-west-2"), Some(&"FR"));
    let aws: BTreeMap<&str, &str> = catalogue.regions_of("aws").expect("aws").collect();
    assert_eq!(aws.get("eu-west-2"), Some(&"GB"));

    // With --provider outscale, the eu-west-2 node is in France; the AWS and Azure codes are not
    // Outscale regions, so those nodes cannot be placed.
    let mut tenant = tenant();
    assert_eq!(
        resolve(&tenant, "nodes.yaml", Some("outscale")),
        set(&["eu-west-2"])
    );
    tenant.spec.placement.allowed_countries = vec![Country::FR];
    assert_eq!(
        resolve(&tenant, "nodes.yaml", Some("outscale")),
        set(&["eu-west-2"])
    );

    // And the same node is no longer in Great Britain.
    tenant.spec.placement.allowed_countries = vec![Country::GB];
    assert!(resolve(&tenant, "nodes.yaml", Some("outscale")).is_empty());
    assert_eq!(resolve(&tenant, "nodes.yaml", None), set(&["eu-west-2"]));
}

#[test]
fn nodes_whose_location_cannot_be_established_never_count() {
    // Every country the API knows: only the unlabelled node and the unknown region stay out.
    let mut tenant = tenant();
    tenant.spec.placement.allowed_countries = Country::ALL.to_vec();
    assert_eq!(
        resolve(&tenant, "nodes.yaml", None),
        set(&[
            "eu-central-1",
            "eu-west-2",
            "eu-west-3",
            "francecentral",
            "us-east-1"
        ])
    );
    // A provider the catalogue does not know places nothing.
    assert!(resolve(&tenant, "nodes.yaml", Some("nimbus")).is_empty());
    // No nodes, no regions.
    let catalogue = RegionCatalogue::embedded().expect("the embedded catalogue is valid");
    assert!(allowed_regions(&tenant, &Vec::<Arc<Node>>::new(), &catalogue, None).is_empty());
}

#[test]
fn a_region_is_allowed_only_if_every_node_carrying_it_is_in_an_allowed_country() {
    // paris-1 (AWS eu-west-3, FR) and hetzner-1 (Hetzner, labelled eu-west-3, a code Hetzner
    // does not have: its country is unknown) both carry eu-west-3. The admission policies
    // confine pods with `topology.kubernetes.io/region In [eu-west-3]`, which hetzner-1
    // satisfies: allowing eu-west-3 lets pods land on a node CLD-74 cannot vouch for.
    let mut tenant = tenant();
    tenant.spec.placement.allowed_countries = Country::ALL.to_vec();
    let regions = resolve(&tenant, "nodes-shared-region.yaml", None);
    assert!(
        regions.is_empty(),
        "eu-west-3 is also the label of a node whose country is unknown: {regions:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Resolution: placements
// ---------------------------------------------------------------------------------------------

#[test]
fn production_requires_its_pool_and_the_other_environments_avoid_it() {
    let regions = set(&ALLOWED);
    assert_eq!(
        placements(&tenant(), &regions, &[]),
        vec![
            PodPlacement {
                tenant: TENANT.into(),
                environment: "prod".into(),
                regions: regions.clone(),
                pool: Pool::Required(production_pool()),
            },
            PodPlacement {
                tenant: TENANT.into(),
                environment: "dev".into(),
                regions: regions.clone(),
                pool: Pool::Excluded(vec![production_pool()]),
            },
        ]
    );
}

#[test]
fn without_production_there_is_no_pool() {
    let mut tenant = tenant();
    tenant
        .spec
        .environments
        .retain(|e| e.kind != EnvironmentKind::Production);
    let found = placements(&tenant, &set(&ALLOWED), &[]);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].environment, "dev");
    assert_eq!(found[0].pool, Pool::Any);
}

#[test]
fn every_production_pool_is_avoided() {
    let mut tenant = tenant();
    let mut second = tenant.spec.environments[0].clone();
    assert_eq!(second.kind, EnvironmentKind::Production);
    second.name = "prod-de".into();
    second.node_pool = Some(NodePool {
        match_labels: labels(&[(POOL, "production-de")]),
    });
    tenant.spec.environments.push(second);
    let found = placements(&tenant, &set(&ALLOWED), &[]);
    let dev = found.iter().find(|p| p.environment == "dev").expect("dev");
    let Pool::Excluded(pools) = &dev.pool else {
        panic!("dev must avoid the production pools: {:?}", dev.pool);
    };
    let pools: BTreeSet<&Labels> = pools.iter().collect();
    assert_eq!(
        pools,
        BTreeSet::from([&production_pool(), &labels(&[(POOL, "production-de")])])
    );
    let prod_de = found
        .iter()
        .find(|p| p.environment == "prod-de")
        .expect("prod-de");
    assert_eq!(
        prod_de.pool,
        Pool::Required(labels(&[(POOL, "production-de")]))
    );
}

#[test]
fn no_allowed_region_is_carried_to_every_environment() {
    let found = placements(&tenant(), &BTreeSet::new(), &[]);
    assert_eq!(found.len(), 2);
    assert!(found.iter().all(|p| p.regions.is_empty()));
}

// ---------------------------------------------------------------------------------------------
// The patch
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pod_without_affinity_is_confined_to_the_regions_and_the_pool() {
    for (placement, operator) in [(prod(), "In"), (dev(), "NotIn")] {
        let pod = patched(&placement, &pod("bare"));
        let terms = required_terms(&pod);
        assert_eq!(terms.len(), 1, "{}: {terms:?}", placement.environment);
        let found = expressions(&terms[0]);
        assert!(
            found.contains(&expression(REGION, "In", &ALLOWED)),
            "{found:?}"
        );
        assert!(
            found.contains(&expression(POOL, operator, &["production"])),
            "{}: {found:?}",
            placement.environment
        );
        for node in grid() {
            assert_eq!(
                admits(&pod, &node),
                may_run_on(&placement, &node),
                "{node:?}"
            );
        }
    }
}

#[test]
fn pod_anti_affinity_is_kept_when_node_affinity_is_added() {
    let original = pod("anti-affinity-only");
    let pod = patched(&prod(), &original);
    assert_eq!(
        pod["spec"]["affinity"]["podAntiAffinity"],
        original["spec"]["affinity"]["podAntiAffinity"]
    );
    assert!(!pod["spec"]["affinity"]["podAntiAffinity"].is_null());
    assert_eq!(required_terms(&pod).len(), 1);
    for node in grid() {
        assert_eq!(admits(&pod, &node), may_run_on(&prod(), &node), "{node:?}");
    }
}

#[test]
fn preferred_node_affinity_is_kept() {
    let original = pod("preferred-only");
    let pod = patched(&dev(), &original);
    let preferred = "preferredDuringSchedulingIgnoredDuringExecution";
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"][preferred],
        json!([{
            "weight": 50,
            "preference": {"matchExpressions": [{"key": "disktype", "operator": "In", "values": ["ssd"]}]},
        }])
    );
    assert_eq!(required_terms(&pod).len(), 1);
    for node in grid() {
        assert_eq!(admits(&pod, &node), may_run_on(&dev(), &node), "{node:?}");
    }
}

#[test]
fn each_declared_term_keeps_its_own_requirements_and_gains_ours() {
    let original = pod("two-terms");
    let pod = patched(&prod(), &original);
    let terms = required_terms(&pod);
    assert_eq!(terms.len(), 2, "{terms:?}");

    let first = expressions(&terms[0]);
    assert!(
        first.contains(&expression("disktype", "In", &["ssd"])),
        "{first:?}"
    );
    assert_eq!(
        terms[0]["matchFields"],
        json!([{"key": "metadata.name", "operator": "NotIn", "values": ["node-x"]}])
    );
    let second = expressions(&terms[1]);
    assert!(
        second.contains(&expression("gpu", "Exists", &[])),
        "{second:?}"
    );
    assert!(terms[1]["matchFields"].is_null(), "{:?}", terms[1]);
    assert!(
        !first.iter().any(|(k, _, _)| k == "gpu"),
        "terms stay apart: {first:?}"
    );
    assert!(
        !second.iter().any(|(k, _, _)| k == "disktype"),
        "terms stay apart: {second:?}"
    );
    for term in [&first, &second] {
        assert!(
            term.contains(&expression(REGION, "In", &ALLOWED)),
            "{term:?}"
        );
        assert!(
            term.contains(&expression(POOL, "In", &["production"])),
            "{term:?}"
        );
    }

    for node in grid() {
        assert_eq!(
            admits(&pod, &node),
            admits(&original, &node) && may_run_on(&prod(), &node),
            "{node:?}"
        );
    }
}

#[test]
fn a_confined_pod_is_not_patched() {
    for (placement, name) in [
        (prod(), "confined-prod"),
        (dev(), "confined-dev"),
        (dev_two_labels(), "confined-dev"),
        (paris_only(), "subset"),
        (paris_only(), "confined-prod"),
    ] {
        assert_eq!(
            placement.patch(&typed(&pod(name))),
            Vec::<Value>::new(),
            "{name} in {placement:?}"
        );
    }
}

#[test]
fn a_pool_of_two_labels_to_avoid_splits_every_term_in_two() {
    let placement = dev_two_labels();
    let off_pool = [
        expression(POOL, "NotIn", &["production"]),
        expression(TIER, "NotIn", &["gold"]),
    ];

    let bare = patched(&placement, &pod("bare"));
    let terms = required_terms(&bare);
    assert_eq!(terms.len(), 2, "{terms:?}");
    for (term, wanted) in terms.iter().zip(&off_pool) {
        let found = expressions(term);
        assert!(
            found.contains(&expression(REGION, "In", &ALLOWED)),
            "{found:?}"
        );
        assert_eq!(
            found.iter().filter(|e| e.1 == "NotIn").collect::<Vec<_>>(),
            vec![wanted],
            "one label of the pool per term"
        );
    }

    let original = pod("two-terms");
    let pod = patched(&placement, &original);
    let terms = required_terms(&pod);
    assert_eq!(terms.len(), 4, "{terms:?}");
    for own in [
        expression("disktype", "In", &["ssd"]),
        expression("gpu", "Exists", &[]),
    ] {
        let with: Vec<_> = terms
            .iter()
            .map(expressions)
            .filter(|t| t.contains(&own))
            .collect();
        assert_eq!(with.len(), 2, "{own:?} in two terms: {terms:?}");
        for wanted in &off_pool {
            assert_eq!(
                with.iter().filter(|t| t.contains(wanted)).count(),
                1,
                "{wanted:?}"
            );
        }
    }

    // A node in the production pool by one label only is off the pool.
    let half = NodeView {
        name: "node-y".into(),
        labels: labels(&[
            (REGION, "eu-west-3"),
            (POOL, "production"),
            ("disktype", "ssd"),
        ]),
    };
    assert!(admits(&pod, &half));
    for node in grid() {
        assert_eq!(
            admits(&pod, &node),
            admits(&original, &node) && may_run_on(&placement, &node),
            "{node:?}"
        );
    }
}

#[test]
fn tolerating_the_production_taint_does_not_put_a_development_pod_on_the_pool() {
    let original = pod("tolerates-production");
    let pod = patched(&dev(), &original);
    assert_eq!(pod["spec"]["tolerations"], original["spec"]["tolerations"]);
    let terms = required_terms(&pod);
    assert_eq!(terms.len(), 1);
    assert!(expressions(&terms[0]).contains(&expression(POOL, "NotIn", &["production"])));

    let cluster: BTreeMap<String, NodeView> = nodes("nodes.yaml")
        .iter()
        .map(|n| view(n))
        .map(|v| (v.name.clone(), v))
        .collect();
    assert!(
        admits(&original, &cluster["paris-prod-1"]),
        "the toleration lets it there"
    );
    assert!(
        !admits(&pod, &cluster["paris-prod-1"]),
        "the patch keeps it off the pool"
    );
    assert!(admits(&pod, &cluster["paris-1"]));
    assert!(!admits(&pod, &cluster["london-1"]));
    assert!(!admits(&pod, &cluster["unlabelled-1"]));
}

#[test]
fn the_patch_always_satisfies_the_validation_and_only_ever_narrows() {
    let grid = grid();
    for placement in every_placement() {
        for (name, original) in pods() {
            let context = format!("{name} in {placement:?}");
            let once = patched(&placement, &original);

            let problems = placement.violations(&typed(&once));
            if original["spec"]["nodeName"].is_null() {
                assert!(problems.is_empty(), "{context}: {problems:?}");
            } else {
                // Only the bypassed scheduler remains, which no patch of the affinity can cure.
                assert_eq!(problems.len(), 1, "{context}: {problems:?}");
                assert!(
                    problems[0].contains("spec.nodeName"),
                    "{context}: {problems:?}"
                );
            }

            // Where the patched pod can run: where it asked to, within its placement.
            for node in &grid {
                assert_eq!(
                    admits(&once, node),
                    admits(&original, node) && may_run_on(&placement, node),
                    "{context}: {node:?}"
                );
            }

            // Nothing but the required node affinity changes.
            assert_eq!(
                without_required(&once),
                without_required(&original),
                "{context}"
            );

            // Idempotent: a confined pod is not patched again. (A pod on a named node is: see
            // `patching_a_pod_on_a_named_node_twice_is_patching_it_once`; it still reaches the
            // same nodes.)
            let twice = patched(&placement, &once);
            if original["spec"]["nodeName"].is_null() {
                assert!(placement.patch(&typed(&once)).is_empty(), "{context}");
                assert_eq!(twice, once, "{context}");
            } else {
                for node in &grid {
                    assert_eq!(
                        admits(&twice, node),
                        admits(&once, node),
                        "{context}: {node:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn patching_a_pod_on_a_named_node_twice_is_patching_it_once() {
    // `patch` is empty only when `violations` is, and `spec.nodeName` is a violation no patch
    // cures; `confine` then crosses each already-confined term with each of our terms again.
    // With one term of ours that is a no-op (requirements are not repeated), with two it
    // doubles the terms at each pass; the webhook is registered with reinvocationPolicy
    // IfNeeded, so a pod can go through it twice.
    for placement in every_placement() {
        let once = patched(&placement, &pod("node-name"));
        let twice = patched(&placement, &once);
        assert_eq!(
            required_terms(&twice).len(),
            required_terms(&once).len(),
            "{placement:?}"
        );
        assert_eq!(twice, once, "{placement:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Violations
// ---------------------------------------------------------------------------------------------

fn violations(placement: &PodPlacement, pod: &Value) -> Vec<String> {
    placement.violations(&typed(pod))
}

#[test]
fn a_pod_on_a_named_node_is_refused_naming_the_tenant() {
    let problems = violations(&paris_only(), &pod("node-name"));
    let named: Vec<&String> = problems
        .iter()
        .filter(|p| p.contains("spec.nodeName"))
        .collect();
    assert_eq!(named.len(), 1, "{problems:?}");
    assert!(named[0].contains(TENANT), "{named:?}");
    assert!(named[0].contains("paris-prod-1"), "{named:?}");

    // Even with an affinity that confines it.
    let mut confined = pod("subset");
    confined["spec"]["nodeName"] = json!("paris-1");
    let problems = violations(&paris_only(), &confined);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("spec.nodeName") && problems[0].contains(TENANT));
}

#[test]
fn a_pod_without_affinity_is_refused_naming_the_regions_and_the_rule() {
    let placement = placement("dev", &ALLOWED, Pool::Any);
    let problems = violations(&placement, &pod("bare"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    for region in ALLOWED {
        assert!(problems[0].contains(region), "{problems:?}");
    }
    assert!(problems[0].contains("CLD-74"), "{problems:?}");
    assert!(
        !problems[0].contains("CLD-25"),
        "no pool, no CLD-25: {problems:?}"
    );

    // Nor is a preferred affinity, or a nodeSelector on other labels, a confinement.
    for name in [
        "preferred-only",
        "anti-affinity-only",
        "with-node-selector",
        "tolerates-production",
    ] {
        assert_eq!(violations(&placement, &pod(name)).len(), 1, "{name}");
    }
}

#[test]
fn a_term_outside_the_regions_is_refused() {
    for placement in [placement("dev", &ALLOWED, Pool::Any), prod(), dev()] {
        let problems = violations(&placement, &pod("us-east"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("eu-west-3"), "{problems:?}");
    }
    // One term outside is enough: terms are alternatives.
    let mut mixed = pod("subset");
    mixed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array_mut()
        .expect("terms")
        .push(json!({"matchExpressions": [{"key": REGION, "operator": "In", "values": ["us-east-1"]}]}));
    assert_eq!(
        violations(&placement("dev", &ALLOWED, Pool::Any), &mixed).len(),
        1
    );
    // So is a term that widens with NotIn: it lets the pod anywhere but one region.
    let not_in = json!({"spec": {"containers": [{"name": "app", "image": "app"}], "affinity": {"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": REGION, "operator": "NotIn", "values": ["us-east-1"]}]}
    ]}}}}});
    assert_eq!(
        violations(&placement("dev", &ALLOWED, Pool::Any), &not_in).len(),
        1
    );
}

#[test]
fn a_term_within_the_regions_is_accepted() {
    for regions in [&ALLOWED[..], &["eu-west-3"][..]] {
        let placement = placement("dev", regions, Pool::Any);
        assert_eq!(violations(&placement, &pod("subset")), Vec::<String>::new());
    }
    // The same regions in another order.
    assert_eq!(
        violations(&placement("dev", &ALLOWED, Pool::Any), &pod("confined-dev")),
        Vec::<String>::new()
    );
}

#[test]
fn a_production_pod_off_its_pool_is_refused_citing_cld_25() {
    let problems = violations(&prod(), &pod("subset"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("CLD-74, CLD-25"), "{problems:?}");
    assert!(
        problems[0].contains("node-pool.example.org/name=production"),
        "{problems:?}"
    );
    // And a development pod asking for the production pool.
    let problems = violations(&dev(), &pod("in-the-pool"));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("CLD-74, CLD-25"), "{problems:?}");
}

#[test]
fn a_development_pod_pinned_to_another_pool_is_off_the_production_pool() {
    let pod = json!({"spec": {"containers": [{"name": "app", "image": "app"}], "affinity": {"nodeAffinity": {
    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [
            {"key": REGION, "operator": "In", "values": ["eu-west-3"]},
            {"key": POOL, "operator": "In", "values": ["general"]},
        ]}
    ]}}}}});
    assert_eq!(violations(&dev(), &pod), Vec::<String>::new());
    assert_eq!(violations(&dev_two_labels(), &pod), Vec::<String>::new());
    assert_eq!(
        violations(&dev_two_pools(), &pod).len(),
        1,
        "the gold tier is not excluded"
    );
}

#[test]
fn no_allowed_region_refuses_every_pod() {
    let placement = placement("dev", &[], Pool::Any);
    for (name, pod) in pods() {
        let problems = violations(&placement, &pod);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("no node of the cluster is in a region") && p.contains(TENANT)),
            "{name}: {problems:?}"
        );
    }
}

#[test]
fn a_pod_the_validation_accepts_reaches_only_nodes_its_placement_allows() {
    let grid = grid();
    let mut accepted = 0;
    for placement in every_placement() {
        for (name, pod) in pods() {
            if !violations(&placement, &pod).is_empty() {
                continue;
            }
            accepted += 1;
            for node in &grid {
                assert!(
                    !admits(&pod, node) || may_run_on(&placement, node),
                    "{name} accepted in {placement:?} but may run on {node:?}"
                );
            }
        }
    }
    assert!(
        accepted >= 5,
        "the fixtures must exercise accepted pods: {accepted}"
    );
}

// ---------------------------------------------------------------------------------------------
// The admission policies
// ---------------------------------------------------------------------------------------------

const NAMESPACE: &str = "offres-emploi-prod";

fn object_labels() -> Labels {
    labels(&[
        ("app.kubernetes.io/managed-by", "ft-operator"),
        (TENANT_LABEL, TENANT),
    ])
}

fn namespace_labels(tenant: &str, environment: &str) -> Labels {
    labels(&[
        (TENANT_LABEL, tenant),
        (ENVIRONMENT_LABEL, environment),
        (
            "kubernetes.io/metadata.name",
            &format!("{tenant}-{environment}"),
        ),
    ])
}

/// Every tenant namespace, and no other.
fn assert_binds_tenant_namespaces(resources: Option<&MatchResources>) {
    let selector = resources
        .and_then(|r| r.namespace_selector.as_ref())
        .expect("a namespace selector");
    assert!(common::selects(selector, &namespace_labels(TENANT, "prod")));
    assert!(common::selects(
        selector,
        &namespace_labels("billing", "dev")
    ));
    for other in ["default", "kube-system", "ft-system"] {
        assert!(!common::selects(
            selector,
            &labels(&[("kubernetes.io/metadata.name", other)])
        ));
    }
}

/// Pods, on creation only.
fn assert_matches_pod_creation(constraints: Option<&MatchResources>) {
    let rules = constraints
        .and_then(|c| c.resource_rules.as_ref())
        .expect("resource rules");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    assert_eq!(rule.api_groups, Some(vec![String::new()]));
    assert_eq!(rule.api_versions, Some(vec!["v1".to_string()]));
    assert_eq!(rule.operations, Some(vec!["CREATE".to_string()]));
    assert_eq!(rule.resources, Some(vec!["pods".to_string()]));
}

/// The request namespace's EnvironmentPolicy, refusing where there is none.
fn assert_reads_the_environment_policy(kind: Option<&ParamKind>, reference: Option<&ParamRef>) {
    let kind = kind.expect("a paramKind");
    assert_eq!(
        kind.api_version.as_deref(),
        Some("hosting.francetravail.fr/v1alpha1")
    );
    assert_eq!(kind.kind.as_deref(), Some("EnvironmentPolicy"));
    let reference = reference.expect("a paramRef");
    assert_eq!(reference.name.as_deref(), Some("ft-environment"));
    assert_eq!(reference.namespace, None, "the request's namespace");
    assert_eq!(
        reference.parameter_not_found_action.as_deref(),
        Some("Deny")
    );
}

#[test]
fn the_placement_policies_are_fixed_and_read_each_namespaces_environment_policy() {
    let (validating, validating_binding) = placement_validation();
    let (mutating, mutating_binding) = placement_mutation();
    for meta in [
        &validating.metadata,
        &validating_binding.metadata,
        &mutating.metadata,
        &mutating_binding.metadata,
    ] {
        assert_eq!(meta.name.as_deref(), Some("ft-placement"));
    }

    // The validating policy fails closed and denies, with the tenant, the placement and the
    // rule in its messages.
    let spec = validating.spec.as_ref().expect("a spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    assert_matches_pod_creation(spec.match_constraints.as_ref());
    let validations = spec.validations.as_ref().expect("validations");
    assert_eq!(validations[0].expression, "size(params.spec.regions) > 0");
    assert!(
        validations
            .iter()
            .any(|v| v.expression.ends_with("!has(object.spec.nodeName)")),
        "{validations:?}"
    );
    for validation in validations {
        let message = validation.message_expression.as_deref().unwrap_or_default();
        assert!(
            message.contains("params.spec.tenant") && message.contains("params.spec.rules"),
            "{message}"
        );
    }
    assert_eq!(validating_binding.spec.policy_name, "ft-placement");
    assert_eq!(validating_binding.spec.validation_actions, ["Deny"]);
    assert_binds_tenant_namespaces(validating_binding.spec.match_resources.as_ref());
    assert_reads_the_environment_policy(
        spec.param_kind.as_ref(),
        validating_binding.spec.param_ref.as_ref(),
    );

    // The mutating policy does not block on itself: the validating one catches what it misses.
    // It holds no tenant's values: they come from the parameter.
    let spec = mutating.spec.as_ref().expect("a spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Ignore"));
    assert_matches_pod_creation(spec.match_constraints.as_ref());
    let mutations = spec.mutations.as_ref().expect("mutations");
    assert_eq!(mutations.len(), 1);
    assert_eq!(mutations[0].patch_type, "JSONPatch");
    let expression = mutations[0]
        .json_patch
        .as_ref()
        .and_then(|p| p.expression.as_deref())
        .expect("a JSON patch expression");
    assert!(expression.contains("params.spec.terms"), "{expression}");
    for value in ALLOWED.iter().chain([&POOL, &"production"]) {
        assert!(!expression.contains(value), "{value} in {expression}");
    }
    let binding = mutating_binding.spec.as_ref().expect("a binding spec");
    assert_eq!(binding.policy_name.as_deref(), Some("ft-placement"));
    assert_binds_tenant_namespaces(binding.match_resources.as_ref());
    assert_reads_the_environment_policy(spec.param_kind.as_ref(), binding.param_ref.as_ref());
}

#[test]
fn the_environment_policy_carries_the_placement_of_its_namespace() {
    let policy = environment_policy(
        &prod(),
        NAMESPACE,
        &object_labels(),
        EnvironmentKind::Production,
        Some("ft-offres-emploi-encrypted".into()),
        Vec::new(),
    );
    assert_eq!(policy.metadata.name.as_deref(), Some("ft-environment"));
    assert_eq!(policy.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert_eq!(policy.metadata.labels.as_ref(), Some(&object_labels()));
    let spec = &policy.spec;
    assert_eq!(
        (spec.tenant.as_str(), spec.environment.as_str()),
        (TENANT, "prod")
    );
    assert_eq!(spec.regions, ALLOWED);
    assert_eq!(spec.rules, "CLD-74, CLD-25");
    assert_eq!(
        spec.storage_class.as_deref(),
        Some("ft-offres-emploi-encrypted")
    );
    // One term: the allowed regions, on the production pool.
    let terms: Vec<Vec<(&str, &str, Vec<&str>)>> = spec
        .terms
        .iter()
        .map(|t| {
            t.iter()
                .map(|r| {
                    (
                        r.key.as_str(),
                        r.operator.as_str(),
                        r.values.iter().map(String::as_str).collect(),
                    )
                })
                .collect()
        })
        .collect();
    assert_eq!(
        terms,
        [vec![
            (REGION, "In", ALLOWED.to_vec()),
            (POOL, "In", vec!["production"]),
        ]]
    );
    assert!(spec.placement.contains("eu-west-3"), "{}", spec.placement);

    // Without an allowed region the policy says so, and the validating policy refuses.
    let nowhere = PodPlacement {
        regions: BTreeSet::new(),
        ..dev()
    };
    let policy = environment_policy(
        &nowhere,
        "offres-emploi-dev",
        &object_labels(),
        EnvironmentKind::Development,
        None,
        Vec::new(),
    );
    assert!(policy.spec.regions.is_empty());
    assert_eq!(policy.spec.rules, "CLD-74, CLD-25");
    assert_eq!(policy.spec.storage_class, None);
}

#[test]
fn confinement_follows_what_the_api_server_serves() {
    assert_eq!(
        Confinement::from_resources([
            "validatingadmissionpolicies",
            "validatingadmissionpolicies/status",
            "validatingadmissionpolicybindings",
            "mutatingadmissionpolicies",
            "mutatingadmissionpolicybindings",
        ]),
        Confinement::Native
    );
    assert_eq!(
        Confinement::from_resources([
            "validatingadmissionpolicies",
            "validatingadmissionpolicies/status",
            "validatingadmissionpolicybindings",
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
        ]),
        Confinement::Webhook
    );
    assert_eq!(Confinement::from_resources([]), Confinement::Webhook);
}
