//! The shared vocabulary of every capability: the names of a tenant's namespaces, the labels
//! and annotations its children carry, the key that names an object, and who owns it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, ParamKind, ParamRef, Validation,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use kube::{Resource, ResourceExt};

use crate::api::{
    ENVIRONMENT_POLICY, Environment, FIELD_MANAGER, FranceTravailTenant, GROUP, annotations, labels,
};

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

/// Every tenant namespace, by the label the operator keeps on it, and nothing else.
pub fn tenant_namespace_selector() -> MatchResources {
    MatchResources {
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: labels::TENANT.into(),
                operator: "Exists".into(),
                values: None,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The EnvironmentPolicy kind, the policies' `paramKind`.
pub fn environment_policy_kind() -> ParamKind {
    ParamKind {
        api_version: Some(format!("{GROUP}/v1alpha1")),
        kind: Some("EnvironmentPolicy".into()),
    }
}

/// The request's namespace's EnvironmentPolicy; none there, and the request is refused.
pub fn environment_policy_ref() -> ParamRef {
    ParamRef {
        name: Some(ENVIRONMENT_POLICY.into()),
        parameter_not_found_action: Some("Deny".into()),
        ..Default::default()
    }
}

/// The metadata of a fixed admission object.
pub fn fixed_meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(BTreeMap::from([(
            labels::MANAGED_BY.into(),
            labels::MANAGED_BY_VALUE.into(),
        )])),
        ..Default::default()
    }
}

/// Who set `annotation` on the tenant, as the API server recorded it: the field manager that
/// owns it, its operation and when; `unrecorded` when no manager does.
pub fn annotation_set_by(tenant: &FranceTravailTenant, annotation: &str) -> String {
    let field = format!("f:{annotation}");
    tenant
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains(&field))
        })
        .map(|m| {
            format!(
                "field manager {} ({}) at {}",
                m.manager.as_deref().unwrap_or("unknown"),
                m.operation.as_deref().unwrap_or("unknown"),
                m.time
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(|| "an unrecorded time".into())
            )
        })
        .unwrap_or_else(|| "unrecorded".into())
}

/// A validation of a fixed admission policy that reads an EnvironmentPolicy: refuses what
/// `expression` does not hold, with `message` (a CEL string expression) after the tenant's name.
pub fn refuse_for_tenant(expression: impl Into<String>, message: &str) -> Validation {
    Validation {
        expression: expression.into(),
        message_expression: Some(format!("'tenant ' + params.spec.tenant + {message}")),
        reason: Some("Forbidden".into()),
        ..Default::default()
    }
}
