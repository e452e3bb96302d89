//! Separate, isolated namespaces per environment (CLD-20): the namespace, under Pod Security
//! `restricted`, its quota and its container defaults.
//!
//! Checked by `controls/isolation.rs` (ISO-1, ISO-2; CLS-1 for the labels of `meta.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation,
};
use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::{Environment, FranceTravailTenant, labels};
use crate::meta::{control_annotation, fixed_meta, object_meta};

pub const QUOTA: &str = "ft-quota";
pub const LIMITS: &str = "ft-limits";

pub fn namespace(name: &str, labels: &BTreeMap<String, String>) -> Namespace {
    let mut labels = labels.clone();
    // Pod Security Admission, `restricted` in all three modes (CLD-20).
    for mode in ["enforce", "audit", "warn"] {
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}"),
            "restricted".into(),
        );
        labels.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".into(),
        );
    }
    Namespace {
        metadata: object_meta(name, None, &labels, BTreeMap::new()),
        ..Default::default()
    }
}

pub fn resource_quota(
    env: &Environment,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> ResourceQuota {
    let q = &env.quota;
    let hard = BTreeMap::from([
        ("requests.cpu".to_string(), q.cpu.clone()),
        ("limits.cpu".to_string(), q.cpu.clone()),
        ("requests.memory".to_string(), q.memory.clone()),
        ("limits.memory".to_string(), q.memory.clone()),
        ("requests.storage".to_string(), q.storage.clone()),
        ("pods".to_string(), Quantity(q.pods.to_string())),
        (
            "persistentvolumeclaims".to_string(),
            Quantity(q.persistent_volume_claims.to_string()),
        ),
    ]);
    ResourceQuota {
        metadata: object_meta(QUOTA, Some(ns), labels, control_annotation("CLD-20")),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn limit_range(
    tenant: &FranceTravailTenant,
    env: &Environment,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> LimitRange {
    let d = &env.container_defaults;
    let mut limits = vec![LimitRangeItem {
        type_: "Container".into(),
        default: Some(BTreeMap::from([
            ("cpu".into(), d.limit_cpu.clone()),
            ("memory".into(), d.limit_memory.clone()),
        ])),
        default_request: Some(BTreeMap::from([
            ("cpu".into(), d.request_cpu.clone()),
            ("memory".into(), d.request_memory.clone()),
        ])),
        ..Default::default()
    }];
    if let Some(max) = tenant
        .spec
        .storage
        .as_ref()
        .and_then(|s| s.max_volume_size.clone())
    {
        limits.push(LimitRangeItem {
            type_: "PersistentVolumeClaim".into(),
            max: Some(BTreeMap::from([("storage".into(), max)])),
            ..Default::default()
        });
    }
    LimitRange {
        metadata: object_meta(LIMITS, Some(ns), labels, control_annotation("CLD-20")),
        spec: Some(LimitRangeSpec { limits }),
    }
}

/// The policy that keeps a namespace with the tenant that owns it, and its binding.
pub const NAMESPACE_OWNERSHIP: &str = "ft-namespace-ownership";

/// Refuses, for anyone, the operator included, to change a namespace's tenant label from one
/// tenant to another (CLD-20). Two tenants whose names and environments compose the same
/// namespace (`a` + `b-c`, `a-b` + `c`) cannot both take it: the second is refused here even
/// when both passes race, and reports the namespace as another tenant's.
pub fn namespace_ownership() -> (ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding) {
    let tenant = format!("'{}'", labels::TENANT);
    (
        ValidatingAdmissionPolicy {
            metadata: fixed_meta(NAMESPACE_OWNERSHIP),
            spec: Some(ValidatingAdmissionPolicySpec {
                failure_policy: Some("Fail".into()),
                match_constraints: Some(MatchResources {
                    resource_rules: Some(vec![NamedRuleWithOperations {
                        api_groups: Some(vec![String::new()]),
                        api_versions: Some(vec!["v1".into()]),
                        operations: Some(vec!["UPDATE".into()]),
                        resources: Some(vec!["namespaces".into()]),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                validations: Some(vec![Validation {
                    expression: format!(
                        "!has(oldObject.metadata.labels) || !({tenant} in oldObject.metadata.labels) || !has(object.metadata.labels) || !({tenant} in object.metadata.labels) || object.metadata.labels[{tenant}] == oldObject.metadata.labels[{tenant}]"
                    ),
                    message_expression: Some(format!(
                        "'namespace ' + object.metadata.name + ' belongs to tenant ' + oldObject.metadata.labels[{tenant}] + ': it cannot be handed to tenant ' + object.metadata.labels[{tenant}] + ' (CLD-20)'"
                    )),
                    reason: Some("Forbidden".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        },
        ValidatingAdmissionPolicyBinding {
            metadata: fixed_meta(NAMESPACE_OWNERSHIP),
            spec: ValidatingAdmissionPolicyBindingSpec {
                policy_name: NAMESPACE_OWNERSHIP.into(),
                validation_actions: vec!["Deny".into()],
                ..Default::default()
            },
        },
    )
}

/// The namespaces `wanted` that another tenant already owns, as (namespace, owner), from the
/// tenant label of the namespaces the cluster holds. The tenant then takes none of them over.
pub fn taken_namespaces<'a>(
    tenant: &str,
    wanted: impl IntoIterator<Item = &'a String>,
    owner_of: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    wanted
        .into_iter()
        .filter_map(|ns| {
            owner_of(ns)
                .filter(|owner| owner != tenant)
                .map(|owner| (ns.clone(), owner))
        })
        .collect()
}
