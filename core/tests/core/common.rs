//! Helpers shared by the test modules of both crates: loading fixtures, evaluating label
//! selectors, and what the operator applies for a tenant on a cluster in Paris.
#![allow(dead_code)] // each test binary uses its own part

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ft_core::api::FranceTravailTenant;
use ft_core::desired::{Desired, Facts, desired};
use ft_core::placement::regions::RegionCatalogue;
use ft_core::plan::{PlanError, parse_tenants};
use ft_core::settings::BuildSettings;
use ft_core::validate::validate_for_cluster;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

pub fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The single tenant of a YAML file, relative to the repository root.
pub fn tenant(relative: &str) -> FranceTravailTenant {
    let mut tenants = parse_tenants(&read(relative)).expect("fixture parses");
    assert_eq!(tenants.len(), 1, "{relative} holds one tenant");
    tenants.remove(0)
}

/// Kubernetes label-selector semantics, written independently of the code under test.
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expression = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown operator {other}"),
        }
    });
    by_label && by_expression
}

/// A node in Paris (AWS `eu-west-3`), where the example tenants may run.
pub fn paris_node() -> std::sync::Arc<k8s_openapi::api::core::v1::Node> {
    let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "paris-1", "labels": {"topology.kubernetes.io/region": "eu-west-3"}},
        "spec": {"providerID": "aws:///eu-west-3a/i-0123456789"},
    }))
    .expect("a node");
    std::sync::Arc::new(node)
}

/// Calls `with` with the facts of a cluster whose nodes are all in Paris.
fn in_paris<T>(
    settings: &BuildSettings,
    velero: Option<bool>,
    restoring: &BTreeSet<String>,
    with: impl FnOnce(&Facts<'_>) -> T,
) -> T {
    let catalogue = RegionCatalogue::embedded().expect("the embedded catalogue");
    with(&Facts {
        settings,
        nodes: &[paris_node()],
        catalogue: &catalogue,
        provider: None,
        velero,
        restoring,
        production_pools: &[],
    })
}

/// What the operator applies for `tenant` on a cluster whose nodes are all in Paris, through
/// the one `desired` that `run` and `plan` call. The tenant must be valid.
pub fn desired_with(
    tenant: &FranceTravailTenant,
    settings: &BuildSettings,
    velero: Option<bool>,
    now: jiff::Timestamp,
) -> Desired {
    desired_restoring(tenant, settings, velero, &BTreeSet::new(), now)
}

/// `desired_with`, with a restore test in progress in the `restoring` environments.
pub fn desired_restoring(
    tenant: &FranceTravailTenant,
    settings: &BuildSettings,
    velero: Option<bool>,
    restoring: &BTreeSet<String>,
    now: jiff::Timestamp,
) -> Desired {
    let valid =
        validate_for_cluster(tenant, settings).unwrap_or_else(|invalid| panic!("{invalid}"));
    in_paris(settings, velero, restoring, |facts| {
        desired(valid, facts, now)
    })
}

/// `plan` on a cluster whose nodes are in Paris, without Velero, now.
pub fn plan(yaml: &str) -> Result<String, PlanError> {
    plan_with(yaml, &BuildSettings::default())
}

/// `plan` with these settings, on a cluster whose nodes are in Paris, without Velero, now.
pub fn plan_with(yaml: &str, settings: &BuildSettings) -> Result<String, PlanError> {
    in_paris(settings, Some(false), &BTreeSet::new(), |facts| {
        ft_core::plan::plan(yaml, facts, jiff::Timestamp::now())
    })
}
