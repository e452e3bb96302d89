//! What is kept of each watched object: only what the controls read.

use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Keeps who manages an object, and through which subresource, which ownership needs, and
/// drops the rest of each entry (its field set is the bulk of a cached object's metadata).
pub fn managers_only(meta: &mut ObjectMeta) {
    for entry in meta.managed_fields.iter_mut().flatten() {
        entry.fields_v1 = None;
        entry.fields_type = None;
        entry.api_version = None;
        entry.operation = None;
        entry.time = None;
    }
}

/// Keeps, of each field manager's set, only the annotations it owns: who set a tenant's
/// confirmation annotation is all the operator reads there (`meta::annotation_set_by`). The
/// sets of the spec and the status are most of a tenant's cached size.
pub fn annotation_managers_only(meta: &mut ObjectMeta) {
    for entry in meta.managed_fields.iter_mut().flatten() {
        let annotations = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:metadata")?.get("f:annotations").cloned());
        entry.fields_v1 = annotations.map(|a| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                serde_json::json!({"f:metadata": {"f:annotations": a}}),
            )
        });
    }
}

pub fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    meta.owner_references = None;
}

/// A pod as the controls see it: where it is bound, nothing else.
pub fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    pod.spec = Some(PodSpec {
        node_name,
        ..Default::default()
    });
    pod.status = None;
}

/// A node as the controls see it: its labels, provider id and whether it takes pods.
pub fn trim_node(node: &mut Node) {
    trim_meta(&mut node.metadata);
    node.status = None;
    if let Some(spec) = &mut node.spec {
        spec.taints = None;
        spec.pod_cidr = None;
        spec.pod_cidrs = None;
    }
}

pub fn node_placement(node: &Node) -> Option<u64> {
    Some(crate::digest((
        &node.metadata.labels,
        node.spec
            .as_ref()
            .map(|s| (&s.provider_id, s.unschedulable)),
    )))
}

/// A quota as the controls see it: its limits, not the usage the quota controller counts.
pub fn trim_quota(quota: &mut ResourceQuota) {
    managers_only(&mut quota.metadata);
    quota.status = None;
}
