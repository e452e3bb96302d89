//! The shared vocabulary of every capability: the names of a tenant's namespaces, the labels
//! and annotations its children carry, the key that names an object, and who owns it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use crate::api::{Environment, FIELD_MANAGER, FranceTravailTenant, annotations, labels};

pub fn namespace_name(tenant: &str, environment: &str) -> String {
    format!("{tenant}-{environment}")
}

/// The namespaces of every environment the tenant declares.
pub fn tenant_namespaces(tenant: &FranceTravailTenant) -> BTreeSet<String> {
    let name = tenant.name_any();
    tenant
        .spec
        .environments
        .iter()
        .map(|e| namespace_name(&name, &e.name))
        .collect()
}

/// The labels every child of an environment carries: who owns it and how sensitive it is.
pub fn child_labels(tenant: &FranceTravailTenant, env: &Environment) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::TENANT.into(), tenant.name_any()),
        (labels::ENVIRONMENT.into(), env.name.clone()),
        (labels::ENVIRONMENT_KIND.into(), env.kind.as_str().into()),
        (
            labels::DATA_CLASSIFICATION.into(),
            tenant.spec.data_classification.as_str().into(),
        ),
        (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
    ])
}

pub fn object_meta(
    name: &str,
    namespace: Option<&str>,
    labels: &BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: Some(labels.clone()),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..Default::default()
    }
}

pub fn control_annotation(controls: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(annotations::CONTROL.into(), controls.into())])
}

/// Whether the operator made this object for this tenant: its labels say so, and its field
/// manager is among the object's managers (a look-alike made by hand is never pruned).
pub fn owned_by(meta: &ObjectMeta, tenant: &str) -> bool {
    let labels = meta.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    label(labels::TENANT) == Some(tenant)
        && label(labels::MANAGED_BY) == Some(labels::MANAGED_BY_VALUE)
        && meta
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
}

pub fn object_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    key_of(
        K::kind(&()).as_ref(),
        object.meta().namespace.as_deref(),
        object.meta().name.as_deref().unwrap_or_default(),
    )
}

pub fn key_of(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}
