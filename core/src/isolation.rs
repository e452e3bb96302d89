//! Separate, isolated namespaces per environment (CLD-20): the namespace, under Pod Security
//! `restricted`, its quota and its container defaults.
//!
//! Checked by `controls/isolation.rs` (ISO-1, ISO-2; CLS-1 for the labels of `meta.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, Namespace, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::{Environment, FranceTravailTenant};
use crate::meta::{control_annotation, object_meta};

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
