//! Helpers shared by the test files: loading fixtures and evaluating label selectors.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use ft_operator::api::FranceTravailTenant;
use ft_operator::plan::parse_tenants;
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
