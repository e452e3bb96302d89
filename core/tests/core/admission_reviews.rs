//! AdmissionReviews of pods, and what to read in the answers: shared by the tests of the
//! webhook's review (`review.rs`) and of its server (the operator's `webhook.rs`).
#![allow(dead_code)] // each test binary uses its own part

use ft_core::placement::{PlacementIndex, PodPlacement, Pool};
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use serde_json::{Value, json};

pub const REGION: &str = "topology.kubernetes.io/region";

pub const TENANT_NS: &str = "billing-prod";

pub const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

pub fn placement(regions: &[&str], pool: Pool) -> PodPlacement {
    PodPlacement {
        tenant: "billing".into(),
        environment: "prod".into(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        pool,
    }
}

pub fn index(placement: PodPlacement) -> PlacementIndex {
    let index = PlacementIndex::default();
    index.set(TENANT_NS.into(), placement);
    index
}

pub fn pod(spec_extra: Value) -> Value {
    let mut spec = json!({"containers": [{"name": "app", "image": "registry.example/app:1"}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "web-"},
        "spec": spec,
    })
}

pub fn admission_json(namespace: &str, operation: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
        },
    })
}

pub fn admission(namespace: &str, pod: &Value) -> AdmissionReview<Pod> {
    serde_json::from_value(admission_json(namespace, "CREATE", pod.clone())).unwrap()
}

pub fn answered(answer: AdmissionReview<DynamicObject>) -> AdmissionResponse {
    answer.response.expect("the answer carries a response")
}

/// The pod once the response's patch is applied, and the patch operations; the pod unchanged
/// when there is no patch.
pub fn apply(pod: &Value, response: &AdmissionResponse) -> (Value, Option<json_patch::Patch>) {
    let mut patched = pod.clone();
    let patch = response.patch.as_ref().map(|bytes| {
        let patch: json_patch::Patch = serde_json::from_slice(bytes).unwrap();
        json_patch::patch(&mut patched, &patch).unwrap();
        patch
    });
    (patched, patch)
}

pub fn required_terms(pod: &Value) -> Vec<NodeSelectorTerm> {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    pod.spec
        .unwrap()
        .affinity
        .unwrap()
        .node_affinity
        .unwrap()
        .required_during_scheduling_ignored_during_execution
        .unwrap()
        .node_selector_terms
}

pub fn requirement(key: &str, operator: &str, values: &[&str]) -> NodeSelectorRequirement {
    NodeSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    }
}

pub fn expressions(term: &NodeSelectorTerm) -> Vec<NodeSelectorRequirement> {
    term.match_expressions.clone().unwrap_or_default()
}
